//! The nodes' stats records in Redis, for the operator's view of a whole
//! cluster: each node publishes a small JSON record once a second under
//! `sk:{stats}:node:<id>` with a TTL, and reads back every live node's in
//! the same script (`scripts/stats.lua`). A node that stops publishing
//! drops out when its record expires.
//!
//! The record itself is opaque here: the node (the `seckill` crate) renders
//! it into a [`StatsBoard`], the cluster backend publishes the latest one
//! ([`exchange`], one call from its background loop), and the node reads
//! the other records from the board when asked. The board's locks are held
//! for a copy, never across a Redis call, and only on the stats path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::Script;

use super::RedisStore;
use crate::histogram::Buckets;
use crate::model::StockError;

/// How often a node publishes its record.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How long a record outlives its last publish.
pub const RECORD_TTL: Duration = Duration::from_secs(3);

const NODES_KEY: &str = "sk:{stats}:nodes";

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/stats.lua")));

/// What a node publishes and what it last read of the others; plus the
/// health of the exchange, the one Redis call whose latency it times.
#[derive(Default)]
pub struct StatsBoard {
    /// The record to publish next (JSON), set by the node.
    record: Mutex<Option<Arc<str>>>,
    /// Every live node's record as last read: (node id, JSON).
    nodes: Mutex<Arc<[(u32, String)]>>,
    /// Microseconds the last exchange took.
    last_latency_us: AtomicU64,
    publishes: AtomicU64,
    errors: AtomicU64,
    last: Mutex<Option<Instant>>,
    /// Latency of the backend's script calls (reserve, recall, transition).
    pub calls: CallLatency,
}

/// The backend's script calls whose latency [`CallLatency`] keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptCall {
    /// One pipeline of `reserve.lua` calls (a batch of reservations).
    Reserve,
    /// One pipeline of `recall.lua` key lookups.
    Recall,
    /// One `transition.lua` call (pay, cancel, expiry).
    Transition,
}

impl ScriptCall {
    pub const ALL: [ScriptCall; 3] = [
        ScriptCall::Reserve,
        ScriptCall::Recall,
        ScriptCall::Transition,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ScriptCall::Reserve => "reserve",
            ScriptCall::Recall => "recall",
            ScriptCall::Transition => "transition",
        }
    }
}

/// Upper bounds (seconds) of [`CallLatency`]'s buckets.
pub const CALL_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// [`CALL_BUCKETS`] as a [`Buckets`], for the quantiles and `/metrics`.
pub const CALL_HISTOGRAM: Buckets = Buckets::new(&CALL_BUCKETS);

/// A histogram per [`ScriptCall`] of how long the call took, from sending
/// to the answer (errors and timeouts included). Written by the backend's
/// thread, read by `/metrics` and `/admin/stats`: relaxed atomics, no
/// lock, nothing on the cores' path.
#[derive(Default)]
pub struct CallLatency {
    buckets: [[AtomicU64; CALL_BUCKETS.len() + 1]; 3],
    sum_us: [AtomicU64; 3],
}

impl CallLatency {
    /// Counts one `call` that took `elapsed`.
    pub fn record(&self, call: ScriptCall, elapsed: Duration) {
        let i = CALL_HISTOGRAM.index(elapsed.as_secs_f64());
        let c = call as usize;
        self.buckets[c][i].fetch_add(1, Ordering::Relaxed);
        self.sum_us[c].fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// The counts of `call` per bucket (the last is over every bound) and
    /// the sum of its latencies in microseconds.
    pub fn counts(&self, call: ScriptCall) -> ([u64; CALL_BUCKETS.len() + 1], u64) {
        let c = call as usize;
        (
            std::array::from_fn(|i| self.buckets[c][i].load(Ordering::Relaxed)),
            self.sum_us[c].load(Ordering::Relaxed),
        )
    }

    /// The `q` quantile (0..1) of `call`'s latency in milliseconds
    /// ([`Buckets::quantile_ms`]), and how many calls were measured.
    pub fn quantile_ms(&self, call: ScriptCall, q: f64) -> (f64, u64) {
        CALL_HISTOGRAM.quantile_ms(&self.counts(call).0, q)
    }
}

/// The health numbers of a node's exchanges with Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeHealth {
    pub last_latency_us: u64,
    pub publishes: u64,
    pub errors: u64,
}

impl StatsBoard {
    /// Sets the record the next exchange publishes.
    pub fn set_record(&self, json: &str) {
        *self.record.lock() = Some(Arc::from(json));
    }

    /// Every live node's record as last read, this node's included.
    pub fn nodes(&self) -> Arc<[(u32, String)]> {
        self.nodes.lock().clone()
    }

    pub fn health(&self) -> ExchangeHealth {
        ExchangeHealth {
            last_latency_us: self.last_latency_us.load(Ordering::Relaxed),
            publishes: self.publishes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

/// Publishes the board's record and reads the others', at most once per
/// [`PUBLISH_EVERY`]; a no-op before the node has set a record. Called on
/// every tick of the cluster backend's loop.
pub async fn exchange(store: &RedisStore, board: &StatsBoard, node: u32) {
    {
        let mut last = board.last.lock();
        if last.is_some_and(|t| t.elapsed() < PUBLISH_EVERY) {
            return;
        }
        *last = Some(Instant::now());
    }
    let Some(record) = board.record.lock().clone() else {
        return;
    };
    let started = Instant::now();
    match store.publish_stats(node, &record, RECORD_TTL).await {
        Ok(nodes) => {
            board
                .last_latency_us
                .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            board.publishes.fetch_add(1, Ordering::Relaxed);
            *board.nodes.lock() = nodes.into();
        }
        Err(e) => {
            board.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "stats publish failed");
        }
    }
}

/// The settler's record: its lag behind the order topic, JSON, set by
/// `seckill settle` about once a second with a TTL (gone: no settler).
pub const SETTLER_KEY: &str = "sk:{stats}:settler";

impl RedisStore {
    /// Sets the settler's record ([`SETTLER_KEY`]), expiring after `ttl`.
    pub async fn publish_settler(&self, record: &str, ttl: Duration) -> Result<(), StockError> {
        let mut cmd = ::redis::cmd("SET");
        cmd.arg(SETTLER_KEY)
            .arg(record)
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        self.query::<()>(&cmd).await
    }

    /// Publishes `record` as node `node`'s stats (expiring after `ttl`) and
    /// returns every live node's record, sorted by node id.
    pub async fn publish_stats(
        &self,
        node: u32,
        record: &str,
        ttl: Duration,
    ) -> Result<Vec<(u32, String)>, StockError> {
        let mut inv = SCRIPT.prepare_invoke();
        inv.key(NODES_KEY)
            .arg(node)
            .arg(record)
            .arg(ttl.as_millis() as u64);
        let flat: Vec<String> = self.invoke(&inv).await?;
        let mut out: Vec<(u32, String)> = flat
            .chunks_exact(2)
            .filter_map(|p| Some((p[0].parse().ok()?, p[1].clone())))
            .collect();
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_latency_quantiles_come_from_the_buckets() {
        let calls = CallLatency::default();
        assert_eq!(calls.quantile_ms(ScriptCall::Reserve, 0.5), (0.0, 0));
        for _ in 0..98 {
            calls.record(ScriptCall::Reserve, Duration::from_micros(300));
        }
        calls.record(ScriptCall::Reserve, Duration::from_millis(40));
        calls.record(ScriptCall::Reserve, Duration::from_millis(40));
        calls.record(ScriptCall::Transition, Duration::from_secs(3));
        let (p50, n) = calls.quantile_ms(ScriptCall::Reserve, 0.5);
        assert_eq!(n, 100);
        assert!((0.25..=0.5).contains(&p50), "{p50}");
        let (p99, _) = calls.quantile_ms(ScriptCall::Reserve, 0.99);
        assert!((25.0..=50.0).contains(&p99), "{p99}");
        assert_eq!(calls.quantile_ms(ScriptCall::Recall, 0.99), (0.0, 0));
        let (counts, sum_us) = calls.counts(ScriptCall::Transition);
        assert_eq!(counts[CALL_BUCKETS.len()], 1);
        assert_eq!(sum_us, 3_000_000);
    }
    use seckill_testkit::RedisServer;

    #[tokio::test]
    async fn records_expire_and_are_read_back_by_every_node() {
        let redis = RedisServer::start();
        let store = RedisStore::connect(&redis.url(), Duration::from_secs(2))
            .await
            .unwrap();
        let ttl = Duration::from_millis(300);
        store.publish_stats(2, "{\"n\":2}", ttl).await.unwrap();
        let all = store.publish_stats(1, "{\"n\":1}", ttl).await.unwrap();
        assert_eq!(
            all,
            vec![(1, "{\"n\":1}".to_owned()), (2, "{\"n\":2}".to_owned())]
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let all = store
            .publish_stats(1, "{\"n\":1}", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(all, vec![(1, "{\"n\":1}".to_owned())]);
    }
}
