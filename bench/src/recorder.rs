//! What a load run observed: latency histograms (HdrHistogram), counts per
//! status and error code, a timeline, and the orders acknowledged with 200.
//!
//! Each load thread owns one [`Recorder`]; they are merged once the run is
//! over ([`Recorder::merge`]) and turned into a serialisable [`Summary`].
//!
//! Two latencies are kept for every request:
//! - *corrected* (the one reported): from the request's intended send time
//!   on the open-loop schedule to the end of its response (wrk2's
//!   coordinated-omission correction; in closed loop the intended time is
//!   the actual send time);
//! - *service*: from the actual send to the end of the response — what an
//!   uncorrected generator would report. The gap between the two is the
//!   time requests waited for a free connection or a stalled server.
//!
//! A third histogram, *send lag* (actual send minus intended send), tells
//! whether the generator kept its schedule: a lag that is large while the
//! service latency is small means the generator, not the node, was late.
//!
//! Requests without an answer are counted, never dropped: *transport
//! errors* (connect refused, connection reset, broken pipe, closed by the
//! server, unreadable response), each by kind, and *timeouts* (no answer
//! within the run's timeout). A timeout's latency is recorded as the
//! timeout (corrected: plus its send lag), so a server that stops
//! answering pushes the percentiles up instead of vanishing from them.
//!
//! PERFORMANCE-CRITICAL PATH (of the load generator): [`Recorder::response`]
//! runs once per request. Allocation only for 200 purchase answers (one
//! order each, bounded by the stock), for a new error code, and for the
//! times of `sold_out` answers to purchases (16 bytes each, amortised, at
//! most [`MAX_SOLD_OUT_TIMES`] per thread: the false sold-out audit).

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::client::{error_code, ResponseHead};
use crate::scenario::RequestMeta;
use crate::user::User;

/// Highest latency a histogram holds exactly (longer ones are clamped).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// At most this many `sold_out` answer times are kept per load thread
/// (16 MiB); later ones are only counted ([`Recorder::sold_out_untimed`]).
pub const MAX_SOLD_OUT_TIMES: usize = 1 << 20;

/// When a purchase answered `410 sold_out` was sent and answered, Unix
/// milliseconds (the clock of the order log's `at`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoldOutAt {
    pub sent_ms: u64,
    pub answered_ms: u64,
}

/// An order the node acknowledged with 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckedOrder {
    pub order_id: String,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: u32,
    /// The Idempotency-Key the request carried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The answer carried `Idempotent-Replayed: true`.
    #[serde(default)]
    pub replayed: bool,
}

#[derive(Deserialize)]
struct OrderBody {
    order_id: String,
    sale_id: String,
    user_id: String,
    quantity: u32,
}

/// One timeline interval.
struct Bucket {
    /// Completions by class: 0 = transport error, 1..=5 = 1xx..5xx.
    by_class: [u64; 6],
    latency: Histogram<u64>,
}

impl Bucket {
    fn new() -> Self {
        Bucket {
            by_class: [0; 6],
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("valid bounds"),
        }
    }
}

/// The observations of one load thread (or, merged, of a run).
pub struct Recorder {
    start: Instant,
    /// `start` in Unix milliseconds.
    start_unix_ms: u64,
    interval: Duration,
    corrected: Histogram<u64>,
    service: Histogram<u64>,
    lag: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    /// (status, error code) → count.
    codes: Vec<(u16, Vec<u8>, u64)>,
    io_errors: u64,
    /// Transport errors by [`TransportError`] kind.
    io_errors_by_kind: [u64; TransportError::ALL.len()],
    first_io_error: Option<String>,
    /// Requests with no answer within the timeout.
    timeouts: u64,
    /// 200 answers to purchases whose body was not an order.
    bad_order_bodies: u64,
    timeline: Vec<Bucket>,
    acked: Vec<AckedOrder>,
    /// Users who got a decisive answer: an order, or `limit_exceeded`.
    holders: HashSet<User>,
    /// Purchases answered `sold_out`: when (at most [`MAX_SOLD_OUT_TIMES`]).
    sold_out_at: Vec<SoldOutAt>,
    /// Purchases answered `sold_out` beyond [`MAX_SOLD_OUT_TIMES`].
    sold_out_untimed: u64,
    last_done: Option<Instant>,
    /// Requests that were due or sent but had no answer when the run ended.
    pub unfinished: u64,
}

impl Recorder {
    pub fn new(start: Instant, interval: Duration) -> Self {
        let since = start.elapsed();
        let start_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(since)
            .as_millis() as u64;
        Recorder {
            start,
            start_unix_ms,
            interval: interval.max(Duration::from_millis(10)),
            corrected: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds"),
            service: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds"),
            lag: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds"),
            statuses: BTreeMap::new(),
            codes: Vec::new(),
            io_errors: 0,
            io_errors_by_kind: [0; TransportError::ALL.len()],
            first_io_error: None,
            timeouts: 0,
            bad_order_bodies: 0,
            timeline: Vec::new(),
            acked: Vec::new(),
            holders: HashSet::new(),
            sold_out_at: Vec::new(),
            sold_out_untimed: 0,
            last_done: None,
            unfinished: 0,
        }
    }

    /// Accounts one response. `intended` is the schedule's send time (the
    /// actual send time in closed loop).
    pub fn response(
        &mut self,
        intended: Instant,
        sent: Instant,
        done: Instant,
        head: &ResponseHead,
        body: &[u8],
        meta: Option<RequestMeta>,
    ) {
        let corrected = micros(done.saturating_duration_since(intended));
        self.corrected.saturating_record(corrected);
        self.service
            .saturating_record(micros(done.saturating_duration_since(sent)));
        self.lag
            .saturating_record(micros(sent.saturating_duration_since(intended)));
        *self.statuses.entry(head.status).or_insert(0) += 1;
        let class = usize::from((head.status / 100).clamp(1, 5));
        let bucket = self.bucket(done);
        bucket.by_class[class] += 1;
        bucket.latency.saturating_record(corrected);
        if head.status >= 400 {
            if let Some(code) = error_code(body) {
                self.count_code(head.status, code);
            }
        }
        let Some(meta) = meta else { return };
        if head.status == 200 {
            match serde_json::from_slice::<OrderBody>(body) {
                Ok(order) => {
                    self.holders.insert(meta.user);
                    self.acked.push(AckedOrder {
                        order_id: order.order_id,
                        sale_id: order.sale_id,
                        user_id: order.user_id,
                        quantity: order.quantity,
                        key: meta.key_text(),
                        replayed: head.replayed,
                    });
                }
                Err(_) => self.bad_order_bodies += 1,
            }
        } else if head.status == 409 && error_code(body) == Some(b"limit_exceeded") {
            self.holders.insert(meta.user);
        } else if head.status == 410 && error_code(body) == Some(b"sold_out") {
            if self.sold_out_at.len() < MAX_SOLD_OUT_TIMES {
                let at = SoldOutAt {
                    sent_ms: self.unix_ms(sent),
                    answered_ms: self.unix_ms(done),
                };
                self.sold_out_at.push(at);
            } else {
                self.sold_out_untimed += 1;
            }
        }
    }

    /// Accounts a request that got no response (connect, write or read
    /// failed, or the server closed the connection).
    pub fn io_error(&mut self, error: &io::Error, done: Instant) {
        self.io_errors += 1;
        self.io_errors_by_kind[TransportError::of(error) as usize] += 1;
        if self.first_io_error.is_none() {
            self.first_io_error = Some(error.to_string());
        }
        self.bucket(done).by_class[0] += 1;
    }

    /// Accounts a request that had no answer `timeout` after it was sent
    /// (`done`: when that was noticed). Its latency is the timeout: the
    /// service latency exactly, the corrected one plus the send lag.
    pub fn timeout(&mut self, intended: Instant, sent: Instant, timeout: Duration, done: Instant) {
        self.timeouts += 1;
        let corrected = micros((sent + timeout).saturating_duration_since(intended));
        self.corrected.saturating_record(corrected);
        self.service.saturating_record(micros(timeout));
        self.lag
            .saturating_record(micros(sent.saturating_duration_since(intended)));
        let bucket = self.bucket(done);
        bucket.by_class[0] += 1;
        bucket.latency.saturating_record(corrected);
    }

    /// Adds another thread's observations.
    pub fn merge(&mut self, other: Recorder) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.corrected.add(&other.corrected);
        let _ = self.lag.add(&other.lag);
        let _ = self.service.add(&other.service);
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_insert(0) += n;
        }
        for (status, code, n) in other.codes {
            match self
                .codes
                .iter_mut()
                .find(|(s, c, _)| *s == status && *c == code)
            {
                Some(entry) => entry.2 += n,
                None => self.codes.push((status, code, n)),
            }
        }
        self.io_errors += other.io_errors;
        for (mine, theirs) in self
            .io_errors_by_kind
            .iter_mut()
            .zip(other.io_errors_by_kind)
        {
            *mine += theirs;
        }
        if self.first_io_error.is_none() {
            self.first_io_error = other.first_io_error;
        }
        self.timeouts += other.timeouts;
        self.bad_order_bodies += other.bad_order_bodies;
        // Both recorders share the start instant, so buckets line up.
        for (i, b) in other.timeline.into_iter().enumerate() {
            if i >= self.timeline.len() {
                self.timeline.push(b);
            } else {
                let mine = &mut self.timeline[i];
                for c in 0..6 {
                    mine.by_class[c] += b.by_class[c];
                }
                let _ = mine.latency.add(&b.latency);
            }
        }
        self.acked.extend(other.acked);
        self.holders.extend(other.holders);
        self.sold_out_at.extend(other.sold_out_at);
        self.sold_out_untimed += other.sold_out_untimed;
        self.last_done = self.last_done.max(other.last_done);
        self.unfinished += other.unfinished;
    }

    /// Orders acknowledged with 200 (replays included).
    pub fn acked(&self) -> &[AckedOrder] {
        &self.acked
    }

    /// When purchases were answered `sold_out` (the first
    /// [`MAX_SOLD_OUT_TIMES`] of each thread).
    pub fn sold_out_at(&self) -> &[SoldOutAt] {
        &self.sold_out_at
    }

    /// Purchases answered `sold_out` whose times were not kept.
    pub fn sold_out_untimed(&self) -> u64 {
        self.sold_out_untimed
    }

    fn unix_ms(&self, at: Instant) -> u64 {
        self.start_unix_ms + at.saturating_duration_since(self.start).as_millis() as u64
    }

    /// Users known to hold at least one unit.
    pub fn holders(&self) -> &HashSet<User> {
        &self.holders
    }

    /// How many answers had this status.
    pub fn status_count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    /// How many answers carried this error code.
    pub fn code_count(&self, code: &str) -> u64 {
        self.codes
            .iter()
            .filter(|(_, c, _)| c == code.as_bytes())
            .map(|(_, _, n)| n)
            .sum()
    }

    /// Requests whose outcome is unknown: transport errors, timeouts, no
    /// answer by the end, 5xx answers, and 200s that were not orders.
    pub fn failures(&self) -> u64 {
        let server_errors: u64 = self.statuses.range(500..).map(|(_, n)| n).sum();
        self.io_errors + self.timeouts + self.unfinished + server_errors + self.bad_order_bodies
    }

    /// Transport errors so far (all kinds).
    pub fn io_errors(&self) -> u64 {
        self.io_errors
    }

    /// Transport errors of one kind so far.
    pub fn io_errors_of(&self, kind: TransportError) -> u64 {
        self.io_errors_by_kind[kind as usize]
    }

    /// Requests that timed out so far.
    pub fn timeouts(&self) -> u64 {
        self.timeouts
    }

    /// The corrected latency histogram, microseconds.
    pub fn corrected(&self) -> &Histogram<u64> {
        &self.corrected
    }

    /// Turns the observations into the run's summary. `configured` is the
    /// run's nominal duration.
    pub fn summary(&self, configured: Duration) -> Summary {
        let completed: u64 = self.statuses.values().sum();
        // Throughput over the time answers actually arrived, but never over
        // less than the configured duration.
        let elapsed = self
            .last_done
            .map(|d| d.saturating_duration_since(self.start))
            .unwrap_or_default()
            .max(configured)
            .as_secs_f64()
            .max(1e-9);
        let by_status: BTreeMap<String, u64> = self
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect();
        let rps_by_status = self
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), *n as f64 / elapsed))
            .collect();
        let mut by_code = BTreeMap::new();
        for (status, code, n) in &self.codes {
            *by_code
                .entry(format!("{status} {}", String::from_utf8_lossy(code)))
                .or_insert(0) += n;
        }
        let step = self.interval.as_secs_f64();
        let timeline = self
            .timeline
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let n = b.latency.len();
                TimelinePoint {
                    t_s: (i + 1) as f64 * step,
                    rps: b.by_class.iter().sum::<u64>() as f64 / step,
                    rps_by_class: [
                        ("errors", 0),
                        ("1xx", 1),
                        ("2xx", 2),
                        ("3xx", 3),
                        ("4xx", 4),
                        ("5xx", 5),
                    ]
                    .iter()
                    .filter(|(_, c)| b.by_class[*c] > 0)
                    .map(|(name, c)| (name.to_string(), b.by_class[*c] as f64 / step))
                    .collect(),
                    p50_ms: ms(if n > 0 {
                        b.latency.value_at_quantile(0.5)
                    } else {
                        0
                    }),
                    p99_ms: ms(if n > 0 {
                        b.latency.value_at_quantile(0.99)
                    } else {
                        0
                    }),
                    max_ms: ms(b.latency.max()),
                }
            })
            .collect();
        let io_errors_by_kind = TransportError::ALL
            .iter()
            .filter(|k| self.io_errors_by_kind[**k as usize] > 0)
            .map(|k| (k.label().to_string(), self.io_errors_by_kind[*k as usize]))
            .collect();
        Summary {
            sent: completed + self.io_errors + self.timeouts + self.unfinished,
            completed,
            io_errors: self.io_errors,
            io_errors_by_kind,
            first_io_error: self.first_io_error.clone(),
            timeouts: self.timeouts,
            unfinished: self.unfinished,
            bad_order_bodies: self.bad_order_bodies,
            elapsed_s: elapsed,
            throughput_rps: completed as f64 / elapsed,
            by_status,
            rps_by_status,
            by_code,
            latency_ms: Percentiles::of(&self.corrected),
            service_latency_ms: Percentiles::of(&self.service),
            send_lag_ms: Percentiles::of(&self.lag),
            spectrum: spectrum(&self.corrected),
            timeline,
            orders_acked: self.acked.iter().filter(|o| !o.replayed).count() as u64,
            replays_acked: self.acked.iter().filter(|o| o.replayed).count() as u64,
        }
    }

    fn bucket(&mut self, done: Instant) -> &mut Bucket {
        self.last_done = self.last_done.max(Some(done));
        let i = (done.saturating_duration_since(self.start).as_nanos()
            / self.interval.as_nanos().max(1)) as usize;
        while self.timeline.len() <= i {
            self.timeline.push(Bucket::new());
        }
        &mut self.timeline[i]
    }

    fn count_code(&mut self, status: u16, code: &[u8]) {
        match self
            .codes
            .iter_mut()
            .find(|(s, c, _)| *s == status && c.as_slice() == code)
        {
            Some(entry) => entry.2 += 1,
            None => self.codes.push((status, code.to_vec(), 1)),
        }
    }
}

/// Why a request got no response, as counted in [`Summary::io_errors_by_kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportError {
    /// The connection could not be made (the node is down or not listening).
    ConnectRefused,
    /// The server reset the connection (`ECONNRESET`, `ECONNABORTED`): a
    /// killed node, or one closing with a request unread.
    Reset,
    /// Writing to a connection the server had already reset (`EPIPE`).
    BrokenPipe,
    /// The server closed the connection before the whole response.
    Closed,
    /// A response the harness cannot read (malformed, unframed, extra bytes).
    BadResponse,
    /// Anything else the OS said.
    Other,
}

impl TransportError {
    pub const ALL: [TransportError; 6] = [
        TransportError::ConnectRefused,
        TransportError::Reset,
        TransportError::BrokenPipe,
        TransportError::Closed,
        TransportError::BadResponse,
        TransportError::Other,
    ];

    /// The kind of an I/O error of the load client.
    pub fn of(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => TransportError::ConnectRefused,
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                TransportError::Reset
            }
            io::ErrorKind::BrokenPipe => TransportError::BrokenPipe,
            io::ErrorKind::UnexpectedEof | io::ErrorKind::WriteZero => TransportError::Closed,
            io::ErrorKind::InvalidData => TransportError::BadResponse,
            _ => TransportError::Other,
        }
    }

    /// The name used in the summary and the reports.
    pub fn label(self) -> &'static str {
        match self {
            TransportError::ConnectRefused => "connect refused",
            TransportError::Reset => "connection reset",
            TransportError::BrokenPipe => "broken pipe",
            TransportError::Closed => "closed by server",
            TransportError::BadResponse => "bad response",
            TransportError::Other => "other",
        }
    }
}

/// A run's result, as written to the JSON file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub sent: u64,
    pub completed: u64,
    /// Requests that got no response because the connection failed.
    pub io_errors: u64,
    /// [`TransportError::label`] → count (kinds with none left out).
    #[serde(default)]
    pub io_errors_by_kind: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_io_error: Option<String>,
    /// Requests with no answer within the timeout (latency recorded as the
    /// timeout; the connection was replaced).
    #[serde(default)]
    pub timeouts: u64,
    pub unfinished: u64,
    pub bad_order_bodies: u64,
    pub elapsed_s: f64,
    /// Answers per second, all statuses.
    pub throughput_rps: f64,
    pub by_status: BTreeMap<String, u64>,
    pub rps_by_status: BTreeMap<String, f64>,
    /// `"<status> <code>"` → count, for error bodies.
    pub by_code: BTreeMap<String, u64>,
    /// Coordinated-omission-corrected latency.
    pub latency_ms: Percentiles,
    /// Latency from the actual send (uncorrected), for comparison.
    pub service_latency_ms: Percentiles,
    /// Actual send minus intended send: how late the generator (or a busy
    /// connection pool) sent. 1 µs floor.
    #[serde(default)]
    pub send_lag_ms: Percentiles,
    /// (percentile, ms) pairs of the corrected latency, for the plot.
    pub spectrum: Vec<(f64, f64)>,
    pub timeline: Vec<TimelinePoint>,
    /// Distinct 200 answers that were not replays.
    pub orders_acked: u64,
    pub replays_acked: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// Percentiles of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean: h.mean() / 1e3,
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One timeline interval: answers per second and latency of the answers
/// that completed in it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// End of the interval, seconds after the start.
    pub t_s: f64,
    pub rps: f64,
    /// "2xx", "4xx", "errors", ... → per second.
    pub rps_by_class: BTreeMap<String, f64>,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).max(1)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1e3
}

/// The percentile spectrum (wrk2/HdrHistogram style): percentiles spaced
/// closer towards the tail.
fn spectrum(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut p = 0.0_f64;
    // 0, 50, 75, 87.5, ... each step halves the distance to 100.
    for _ in 0..20 {
        for k in 0..5 {
            let q = p + (1.0 - p) * 0.5 * f64::from(k) / 5.0;
            out.push((q * 100.0, ms(h.value_at_quantile(q))));
        }
        p += (1.0 - p) * 0.5;
        if (1.0 - p) * h.len() as f64 <= 0.5 {
            break;
        }
    }
    out.push((100.0, ms(h.max())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, body_len: usize) -> ResponseHead {
        ResponseHead {
            status,
            replayed: false,
            close: false,
            body: 0..body_len,
        }
    }

    #[test]
    fn corrected_latency_counts_from_the_intended_time() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0, Duration::from_secs(1));
        // Meant at t0, sent 90 ms late, answered in 10 ms.
        let sent = t0 + Duration::from_millis(90);
        let done = t0 + Duration::from_millis(100);
        r.response(t0, sent, done, &head(200, 0), b"", None);
        let s = r.summary(Duration::from_secs(1));
        assert!((s.latency_ms.max - 100.0).abs() < 0.2, "{:?}", s.latency_ms);
        assert!((s.service_latency_ms.max - 10.0).abs() < 0.1);
        assert_eq!(s.by_status["200"], 1);
    }

    #[test]
    fn counts_codes_orders_and_holders() {
        let t0 = Instant::now();
        let mut a = Recorder::new(t0, Duration::from_secs(1));
        let mut b = Recorder::new(t0, Duration::from_secs(1));
        let meta = RequestMeta {
            user: User {
                hot: true,
                index: 3,
            },
            key: None,
        };
        let sold_out = br#"{"error":"sold_out","message":"x"}"#;
        let limit = br#"{"error":"limit_exceeded","message":"x"}"#;
        let order = br#"{"order_id":"1-1","sale_id":"s","user_id":"h3","quantity":1,"status":"reserved","expires_at":9}"#;
        let at = t0 + Duration::from_millis(1500);
        a.response(t0, t0, at, &head(410, sold_out.len()), sold_out, Some(meta));
        b.response(t0, t0, at, &head(410, sold_out.len()), sold_out, Some(meta));
        b.response(t0, t0, at, &head(409, limit.len()), limit, Some(meta));
        b.response(t0, t0, at, &head(200, order.len()), order, Some(meta));
        b.response(t0, t0, at, &head(503, 2), b"{}", Some(meta));
        a.merge(b);
        assert_eq!(a.code_count("sold_out"), 2);
        // Both sold-out answers timed, in Unix ms, 1.5 s after sending.
        assert_eq!(a.sold_out_at().len(), 2);
        let first = a.sold_out_at()[0];
        assert_eq!(first.answered_ms - first.sent_ms, 1_500);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(
            first.sent_ms.abs_diff(now_ms) < 60_000,
            "{first:?} vs now {now_ms}"
        );
        assert_eq!(a.sold_out_untimed(), 0);
        assert_eq!(a.code_count("limit_exceeded"), 1);
        assert_eq!(a.acked().len(), 1);
        assert_eq!(a.acked()[0].user_id, "h3");
        assert_eq!(a.holders().len(), 1);
        assert_eq!(a.failures(), 1, "the 503");
        let s = a.summary(Duration::from_secs(2));
        assert_eq!(s.timeline.len(), 2);
        assert_eq!(s.timeline[1].rps, 5.0);
        assert_eq!(s.by_code["410 sold_out"], 2);
        assert_eq!(s.completed, 5);
        assert!((s.throughput_rps - 2.5).abs() < 1e-9);
    }

    #[test]
    fn transport_errors_by_kind_and_timeouts() {
        use std::io::{Error, ErrorKind};
        let t0 = Instant::now();
        let mut a = Recorder::new(t0, Duration::from_secs(1));
        let mut b = Recorder::new(t0, Duration::from_secs(1));
        let at = t0 + Duration::from_millis(10);
        a.io_error(&Error::from(ErrorKind::BrokenPipe), at);
        a.io_error(&Error::from(ErrorKind::ConnectionReset), at);
        b.io_error(&Error::from(ErrorKind::ConnectionReset), at);
        b.io_error(&Error::from(ErrorKind::ConnectionRefused), at);
        b.io_error(&Error::new(ErrorKind::UnexpectedEof, "closed"), at);
        b.io_error(&Error::new(ErrorKind::InvalidData, "garbage"), at);
        // Sent 5 ms late, no answer within 2 s.
        let sent = t0 + Duration::from_millis(5);
        b.timeout(
            t0,
            sent,
            Duration::from_secs(2),
            sent + Duration::from_millis(2003),
        );
        a.merge(b);
        assert_eq!(a.io_errors(), 6);
        assert_eq!(a.io_errors_of(TransportError::Reset), 2);
        assert_eq!(a.io_errors_of(TransportError::BrokenPipe), 1);
        assert_eq!(a.timeouts(), 1);
        assert_eq!(a.failures(), 7);
        let s = a.summary(Duration::from_secs(1));
        let kinds: Vec<(&str, u64)> = s
            .io_errors_by_kind
            .iter()
            .map(|(k, n)| (k.as_str(), *n))
            .collect();
        assert_eq!(
            kinds,
            [
                ("bad response", 1),
                ("broken pipe", 1),
                ("closed by server", 1),
                ("connect refused", 1),
                ("connection reset", 2),
            ]
        );
        assert_eq!((s.io_errors, s.timeouts, s.sent, s.completed), (6, 1, 7, 0));
        // The timeout's latency is the timeout (corrected: plus the lag).
        assert!(
            (s.service_latency_ms.max - 2000.0).abs() < 2.0,
            "{:?}",
            s.service_latency_ms
        );
        assert!(
            (s.latency_ms.max - 2005.0).abs() < 2.0,
            "{:?}",
            s.latency_ms
        );
        assert_eq!(
            s.timeline
                .iter()
                .map(|p| p.rps_by_class.get("errors").copied().unwrap_or(0.0))
                .sum::<f64>(),
            7.0
        );
        // Older run files (no kinds, no timeouts) still load.
        let mut json = serde_json::to_value(&s).unwrap();
        let obj = json.as_object_mut().unwrap();
        obj.remove("io_errors_by_kind");
        obj.remove("timeouts");
        let back: Summary = serde_json::from_value(json).unwrap();
        assert_eq!(back.timeouts, 0);
    }

    #[test]
    fn spectrum_is_monotone_and_ends_at_max() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0, Duration::from_secs(1));
        for i in 1..=10_000u64 {
            let done = t0 + Duration::from_micros(i);
            r.response(t0, t0, done, &head(200, 0), b"", None);
        }
        let s = r.summary(Duration::from_secs(1));
        assert!(s
            .spectrum
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(s.spectrum.last().unwrap().0, 100.0);
        assert!((s.latency_ms.p50 - 5.0).abs() < 0.05, "{:?}", s.latency_ms);
        assert!((s.latency_ms.p99 - 9.9).abs() < 0.05);
    }
}
