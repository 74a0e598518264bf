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
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;
use stock::histogram::Buckets;
use stock::redis::stats::StatsBoard;

/// Statuses counted by `seckill_responses_total{status}`.
const STATUSES: [u16; 15] = [
    200, 400, 401, 403, 404, 405, 409, 410, 413, 422, 429, 431, 500, 503, 0,
];
/// Purchase outcomes counted by `seckill_purchases_total{outcome}` and
/// shown by `/admin/stats`: the statuses an operator watches, then the rest.
pub const OUTCOMES: [&str; 6] = ["200", "410", "409", "429", "503", "other"];
/// Purchases failed by a backend, counted by
/// `seckill_purchase_backend_errors_total{kind}`: the stock authority
/// refused or could not be reached (nothing applied), its answer never came
/// (undetermined: the reservation is abandoned by order id), the order log
/// failed the append (Kafka: a failed or timed-out delivery).
pub const BACKEND_ERRORS: [&str; 3] = ["stock_unavailable", "undetermined", "log_failed"];
/// Upper bounds (seconds) of the purchase latency histogram.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const LATENCY: Buckets = Buckets::new(&BUCKETS);

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
    /// Purchases answered, by [`OUTCOMES`].
    purchases: [AtomicU64; OUTCOMES.len()],
    /// Gauges of the core's admission queue as of its last purchase.
    admission_in_use: AtomicU64,
    admission_waiting: AtomicU64,
    /// Purchases failed by a backend, by [`BACKEND_ERRORS`].
    backend_errors: [AtomicU64; BACKEND_ERRORS.len()],
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
        bump(
            &self.latency_buckets[LATENCY.index(elapsed_us as f64 / 1e6)],
            1,
        );
    }

    pub fn replay(&self) {
        bump(&self.replays, 1);
    }

    /// A purchase answered with `status`.
    pub fn purchase(&self, status: u16) {
        let i = match status {
            200 => 0,
            410 => 1,
            409 => 2,
            429 => 3,
            503 => 4,
            _ => 5,
        };
        bump(&self.purchases[i], 1);
    }

    /// A purchase failed by a backend: `kind` indexes [`BACKEND_ERRORS`].
    pub fn backend_error(&self, kind: usize) {
        bump(&self.backend_errors[kind], 1);
    }

    /// The core's admission tokens in use and requests waiting for one.
    pub fn admission(&self, in_use: usize, waiting: usize) {
        self.admission_in_use
            .store(in_use as u64, Ordering::Relaxed);
        self.admission_waiting
            .store(waiting as u64, Ordering::Relaxed);
    }
}

/// Purchase rates between the last two samples (taken at most once a
/// second, when the stats are read or published).
struct Sampler {
    at: Instant,
    counts: [u64; OUTCOMES.len()],
    rates: [f64; OUTCOMES.len()],
}

/// All cores' counters.
pub struct Metrics {
    cores: Box<[CoreMetrics]>,
    /// The stats path only (never a request's): a lock for a copy.
    sampler: Mutex<Sampler>,
    /// Cluster mode: this node's stats record and every live node's.
    pub board: OnceLock<Arc<StatsBoard>>,
    /// Kafka mode: the settlers' lag as last measured at the broker
    /// (`stats::start_lag_probe`). Locked on the stats path only.
    pub settler_lag: Mutex<Option<queue::kafka::Lag>>,
}

impl Metrics {
    pub fn new(cores: usize) -> Self {
        Metrics {
            cores: (0..cores).map(|_| CoreMetrics::default()).collect(),
            sampler: Mutex::new(Sampler {
                at: Instant::now(),
                counts: [0; OUTCOMES.len()],
                rates: [0.0; OUTCOMES.len()],
            }),
            board: OnceLock::new(),
            settler_lag: Mutex::new(None),
        }
    }

    /// Purchases answered, by [`OUTCOMES`], all cores.
    pub fn purchases(&self) -> [u64; OUTCOMES.len()] {
        std::array::from_fn(|i| self.sum(|c| &c.purchases[i]))
    }

    /// Purchases failed by a backend, by [`BACKEND_ERRORS`], all cores.
    pub fn backend_errors(&self) -> [u64; BACKEND_ERRORS.len()] {
        std::array::from_fn(|i| self.sum(|c| &c.backend_errors[i]))
    }

    /// Purchases a second by [`OUTCOMES`] between the last two samples. A
    /// sample is taken when the stats are read or published, at most once
    /// a second (each second in cluster mode, and while a dashboard polls;
    /// otherwise the first read averages over the time since the last).
    pub fn purchase_rates(&self) -> [f64; OUTCOMES.len()] {
        let now = self.purchases();
        let mut s = self.sampler.lock();
        let dt = s.at.elapsed().as_secs_f64();
        if dt >= 1.0 {
            s.rates = std::array::from_fn(|i| now[i].wrapping_sub(s.counts[i]) as f64 / dt);
            s.counts = now;
            s.at = Instant::now();
        }
        s.rates
    }

    /// Admission tokens in use and requests waiting, all cores.
    pub fn admission(&self) -> (u64, u64) {
        (
            self.sum(|c| &c.admission_in_use),
            self.sum(|c| &c.admission_waiting),
        )
    }

    /// The `q` quantile (0..1) of the purchase latency in milliseconds
    /// ([`Buckets::quantile_ms`]), and the number of purchases measured.
    pub fn latency_quantile_ms(&self, q: f64) -> (f64, u64) {
        LATENCY.quantile_ms(&self.latency_counts(), q)
    }

    /// The purchase latency histogram's counts, all cores.
    fn latency_counts(&self) -> [u64; BUCKETS.len() + 1] {
        std::array::from_fn(|i| self.sum(|c| &c.latency_buckets[i]))
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
        let _ = writeln!(
            out,
            "# HELP seckill_purchases_total Purchases answered, by outcome.\n# TYPE seckill_purchases_total counter"
        );
        for (outcome, n) in OUTCOMES.iter().zip(self.purchases()) {
            let _ = writeln!(out, "seckill_purchases_total{{outcome=\"{outcome}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP seckill_purchase_backend_errors_total Purchases failed by a backend, by kind.\n# TYPE seckill_purchase_backend_errors_total counter"
        );
        for (kind, n) in BACKEND_ERRORS.iter().zip(self.backend_errors()) {
            let _ = writeln!(
                out,
                "seckill_purchase_backend_errors_total{{kind=\"{kind}\"}} {n}"
            );
        }
        let (in_flight, waiting) = self.admission();
        let gauges: [(&str, &str, &str, u64); 7] = [
            (
                "seckill_admission_in_flight",
                "gauge",
                "Admission tokens held, all cores (each as of its last purchase).",
                in_flight,
            ),
            (
                "seckill_admission_waiting",
                "gauge",
                "Purchases waiting for an admission token, all cores (each as of its last purchase).",
                waiting,
            ),
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
        if let Some(board) = self.board.get() {
            let h = board.health();
            let _ = writeln!(
                out,
                "# HELP seckill_redis_stats_exchanges_total Stats records exchanged with Redis.\n\
                 # TYPE seckill_redis_stats_exchanges_total counter\n\
                 seckill_redis_stats_exchanges_total {}\n\
                 # HELP seckill_redis_stats_errors_total Stats exchanges with Redis that failed.\n\
                 # TYPE seckill_redis_stats_errors_total counter\n\
                 seckill_redis_stats_errors_total {}\n\
                 # HELP seckill_redis_last_call_seconds Round trip of the last stats exchange with Redis.\n\
                 # TYPE seckill_redis_last_call_seconds gauge\n\
                 seckill_redis_last_call_seconds {}",
                h.publishes,
                h.errors,
                h.last_latency_us as f64 / 1e6
            );
            render_call_latency(out, &board.calls);
        }
        if let Some(lag) = *self.settler_lag.lock() {
            let _ = writeln!(
                out,
                "# HELP seckill_settler_lag_events Order events past the settlers' committed offsets, measured at the broker.\n\
                 # TYPE seckill_settler_lag_events gauge\n\
                 seckill_settler_lag_events {}\n\
                 # HELP seckill_settler_lag_seconds Age of the oldest order event the settlers have not committed.\n\
                 # TYPE seckill_settler_lag_seconds gauge\n\
                 seckill_settler_lag_seconds {}",
                lag.events, lag.seconds
            );
        }
        let name = "seckill_purchase_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Latency of purchases that made an order, parse to durable."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let sum = self.sum(|c| &c.latency_sum_us) as f64 / 1e6;
        LATENCY.render(out, name, "", &self.latency_counts(), sum);
    }
}

/// `seckill_redis_call_seconds{call}`: the backend's script calls to Redis
/// (a reserve pipeline, a recall pipeline, a transition), timed by the
/// backend thread.
fn render_call_latency(out: &mut Vec<u8>, calls: &stock::redis::stats::CallLatency) {
    use stock::redis::stats::{ScriptCall, CALL_HISTOGRAM};
    let name = "seckill_redis_call_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Round trip of the backend's Redis script calls: a pipeline of reservations, of key recalls, one transition.\n# TYPE {name} histogram"
    );
    for call in ScriptCall::ALL {
        let (counts, sum_us) = calls.counts(call);
        let labels = format!("call=\"{}\"", call.as_str());
        CALL_HISTOGRAM.render(out, name, &labels, &counts, sum_us as f64 / 1e6);
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

    #[test]
    fn counts_purchases_by_outcome_and_interpolates_quantiles() {
        let m = Metrics::new(2);
        for status in [200, 200, 410, 409, 429, 503, 404, 403] {
            m.core(1).purchase(status);
        }
        assert_eq!(m.purchases(), [2, 1, 1, 1, 1, 2]);
        // Ten orders between 1 and 2 ms: the median is halfway.
        for _ in 0..10 {
            m.core(0).order(1500);
        }
        let (p50, n) = m.latency_quantile_ms(0.5);
        assert_eq!(n, 10);
        assert!((p50 - 1.5).abs() < 1e-9, "{p50}");
        let (p99, _) = m.latency_quantile_ms(0.99);
        assert!(p99 > 1.9 && p99 <= 2.0, "{p99}");
        m.core(0).backend_error(1);
        m.core(1).backend_error(1);
        m.core(1).backend_error(2);
        assert_eq!(m.backend_errors(), [0, 2, 1]);
        m.core(0).admission(3, 2);
        m.core(1).admission(1, 0);
        assert_eq!(m.admission(), (4, 2));
    }
}
