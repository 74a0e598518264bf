//! Fixed-bucket latency histograms, the one bucket and quantile code behind
//! the node's purchase latency (`seckill_purchase_seconds`, counted per core)
//! and the cluster backend's Redis call latency
//! ([`crate::redis::stats::CallLatency`]).
//!
//! [`Buckets`] holds the upper bounds and does the arithmetic; the counts
//! stay with the caller, in whatever atomics suit its writers (one slot per
//! core on the node, shared relaxed atomics on the backend thread). Finding
//! a bucket is a scan of a static slice: no lock, no allocation.

use std::io::Write;

/// The upper bounds (seconds, ascending) of a histogram's buckets; the
/// counts have one more slot, for what is over every bound.
#[derive(Debug, Clone, Copy)]
pub struct Buckets(&'static [f64]);

impl Buckets {
    pub const fn new(bounds: &'static [f64]) -> Self {
        Buckets(bounds)
    }

    /// The upper bounds, in seconds.
    pub const fn bounds(&self) -> &'static [f64] {
        self.0
    }

    /// The slot of a value of `secs` seconds: the first bound it does not
    /// exceed, or the last slot (`bounds().len()`) when it exceeds them all.
    pub fn index(&self, secs: f64) -> usize {
        self.0
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.0.len())
    }

    /// The `q` quantile (0..1) in milliseconds of the values `counts`
    /// holds (one per slot), interpolated within its bucket (as Prometheus's
    /// `histogram_quantile`), and how many values there are.
    pub fn quantile_ms(&self, counts: &[u64], q: f64) -> (f64, u64) {
        let bounds = self.0;
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return (0.0, 0);
        }
        let rank = q * total as f64;
        let mut below = 0u64;
        for (i, n) in counts.iter().enumerate() {
            if *n > 0 && (below + n) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
                let Some(&upper) = bounds.get(i) else {
                    return (lower * 1e3, total);
                };
                let within = (rank - below as f64) / *n as f64;
                return ((lower + (upper - lower) * within) * 1e3, total);
            }
            below += n;
        }
        (bounds[bounds.len() - 1] * 1e3, total)
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of histogram `name`
    /// in Prometheus text format. `labels` (`call="reserve"`, or empty) go
    /// before `le` on every line; `sum_secs` is the sum of the values.
    pub fn render(
        &self,
        out: &mut Vec<u8>,
        name: &str,
        labels: &str,
        counts: &[u64],
        sum_secs: f64,
    ) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in self.0.iter().zip(counts) {
            cumulative += n;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += counts.get(self.0.len()).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        if labels.is_empty() {
            let _ = writeln!(out, "{name}_sum {sum_secs}\n{name}_count {cumulative}");
        } else {
            let _ = writeln!(
                out,
                "{name}_sum{{{labels}}} {sum_secs}\n{name}_count{{{labels}}} {cumulative}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Buckets = Buckets::new(&[0.001, 0.002, 0.005]);

    #[test]
    fn indexes_by_upper_bound_with_an_overflow_slot() {
        assert_eq!(B.index(0.0), 0);
        assert_eq!(B.index(0.001), 0);
        assert_eq!(B.index(0.0015), 1);
        assert_eq!(B.index(0.005), 2);
        assert_eq!(B.index(9.0), 3);
    }

    #[test]
    fn interpolates_quantiles_within_a_bucket() {
        assert_eq!(B.quantile_ms(&[0, 0, 0, 0], 0.5), (0.0, 0));
        // Ten values between 1 and 2 ms: the median is halfway.
        let (p50, n) = B.quantile_ms(&[0, 10, 0, 0], 0.5);
        assert_eq!(n, 10);
        assert!((p50 - 1.5).abs() < 1e-9, "{p50}");
        // Over every bound: the last bound.
        assert_eq!(B.quantile_ms(&[0, 0, 0, 4], 0.99), (5.0, 4));
    }

    #[test]
    fn renders_cumulative_buckets_with_and_without_labels() {
        let mut out = Vec::new();
        B.render(&mut out, "h", "", &[1, 0, 2, 1], 0.25);
        B.render(&mut out, "h", "call=\"x\"", &[0, 1, 0, 0], 0.5);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "h_bucket{le=\"0.001\"} 1\nh_bucket{le=\"0.002\"} 1\nh_bucket{le=\"0.005\"} 3\n\
             h_bucket{le=\"+Inf\"} 4\nh_sum 0.25\nh_count 4\n\
             h_bucket{call=\"x\",le=\"0.001\"} 0\nh_bucket{call=\"x\",le=\"0.002\"} 1\n\
             h_bucket{call=\"x\",le=\"0.005\"} 1\nh_bucket{call=\"x\",le=\"+Inf\"} 1\n\
             h_sum{call=\"x\"} 0.5\nh_count{call=\"x\"} 1\n"
        );
    }
}
