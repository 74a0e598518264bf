//! Counters kept per core and summed only when `/metrics` is read.
//!
//! Each core writes only its own cache-line-aligned slot, with a plain
//! load + store (one writer), so counting costs no atomic read-modify-write
//! and no shared cache line on the hot path.
//!
//! PERFORMANCE-CRITICAL PATH: [`CoreMetrics`] counts every response.
//! Banned here: read-modify-write atomics, a cache line two cores write,
//! locks, allocation, logging.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Statuses counted by `seckill_responses_total{status}`.
const STATUSES: [u16; 15] = [
    200, 400, 401, 403, 404, 405, 409, 410, 413, 422, 429, 431, 500, 503, 0,
];
/// Upper bounds (seconds) of the purchase latency histogram.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// One core's counters.
#[repr(align(128))]
#[derive(Default)]
pub struct CoreMetrics {
    responses: [AtomicU64; STATUSES.len()],
    connections_open: AtomicU64,
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    orders: AtomicU64,
    replays: AtomicU64,
    latency_buckets: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
}

fn bump(c: &AtomicU64, by: u64) {
    // One writer per slot: a load and a store are enough.
    c.store(
        c.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

impl CoreMetrics {
    pub fn response(&self, status: u16) {
        let i = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len() - 1);
        bump(&self.responses[i], 1);
    }

    pub fn connection_opened(&self) {
        bump(&self.connections_open, 1);
        bump(&self.connections_total, 1);
    }

    pub fn connection_closed(&self) {
        bump(&self.connections_open, u64::MAX);
    }

    pub fn connection_refused(&self) {
        bump(&self.connections_refused, 1);
    }

    /// A new order answered 200, `elapsed_us` after its request was parsed.
    pub fn order(&self, elapsed_us: u64) {
        bump(&self.orders, 1);
        bump(&self.latency_sum_us, elapsed_us);
        let secs = elapsed_us as f64 / 1e6;
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        bump(&self.latency_buckets[i], 1);
    }

    pub fn replay(&self) {
        bump(&self.replays, 1);
    }
}

/// All cores' counters.
pub struct Metrics {
    cores: Box<[CoreMetrics]>,
}

impl Metrics {
    pub fn new(cores: usize) -> Self {
        Metrics {
            cores: (0..cores).map(|_| CoreMetrics::default()).collect(),
        }
    }

    pub fn core(&self, core: usize) -> &CoreMetrics {
        &self.cores[core]
    }

    fn sum(&self, f: impl Fn(&CoreMetrics) -> &AtomicU64) -> u64 {
        self.cores
            .iter()
            .map(|c| f(c).load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }

    /// Writes the counters in Prometheus text format.
    pub fn render(&self, out: &mut Vec<u8>) {
        let _ = writeln!(
            out,
            "# HELP seckill_responses_total HTTP responses by status (0: other)."
        );
        let _ = writeln!(out, "# TYPE seckill_responses_total counter");
        for (i, status) in STATUSES.iter().enumerate() {
            let n = self.sum(|c| &c.responses[i]);
            let _ = writeln!(out, "seckill_responses_total{{status=\"{status}\"}} {n}");
        }
        let gauges: [(&str, &str, &str, u64); 5] = [
            (
                "seckill_connections_open",
                "gauge",
                "Open client connections.",
                self.sum(|c| &c.connections_open),
            ),
            (
                "seckill_connections_total",
                "counter",
                "Accepted client connections.",
                self.sum(|c| &c.connections_total),
            ),
            (
                "seckill_connections_refused_total",
                "counter",
                "Connections refused over the connection cap.",
                self.sum(|c| &c.connections_refused),
            ),
            (
                "seckill_orders_total",
                "counter",
                "New orders answered 200.",
                self.sum(|c| &c.orders),
            ),
            (
                "seckill_idempotent_replays_total",
                "counter",
                "Purchases answered from an earlier order.",
                self.sum(|c| &c.replays),
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let name = "seckill_purchase_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Latency of purchases that made an order, parse to durable."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.sum(|c| &c.latency_buckets[i]);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.sum(|c| &c.latency_buckets[BUCKETS.len()]);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum(|c| &c.latency_sum_us) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_cores_and_renders_prometheus_text() {
        let m = Metrics::new(2);
        m.core(0).response(410);
        m.core(1).response(410);
        m.core(1).response(999);
        m.core(0).order(700);
        m.core(0).connection_opened();
        m.core(0).connection_closed();
        let mut out = Vec::new();
        m.render(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("seckill_responses_total{status=\"410\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("seckill_responses_total{status=\"0\"} 1\n"));
        assert!(text.contains("seckill_orders_total 1\n"));
        assert!(text.contains("seckill_connections_open 0\n"));
        assert!(text.contains("seckill_purchase_seconds_bucket{le=\"0.0005\"} 0\n"));
        assert!(text.contains("seckill_purchase_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(text.contains("seckill_purchase_seconds_count 1\n"));
    }
}
