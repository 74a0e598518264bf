//! The cluster authority's settings.

use std::time::Duration;

use crate::model::SaleSpec;

/// How the cluster authority takes units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StockMode {
    /// Lease chunks from the Redis pool into per-core shards; one Lua call
    /// per reservation, batched; sold-out answered locally. The default.
    Leased,
    /// The classic design, kept as a baseline: one Lua call per purchase
    /// request straight against the pool, sold-out ones included.
    PerRequest,
}

/// Settings of the cluster authority.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub node_id: u32,
    pub shards: usize,
    pub mode: StockMode,
    /// A lease whose heartbeat is older than this goes back to the pool.
    pub lease_ttl: Duration,
    /// Longest wait for one Redis reply; past it the outcome is undetermined.
    pub call_timeout: Duration,
    /// How often the poller reads sales, counts and due orders.
    pub poll_interval: Duration,
    /// Whether this node expires unpaid orders (its poller finds the due
    /// ones). `false` where the settler runs expiry (a Kafka order log).
    pub expiry: bool,
    /// Record every order change in Redis's not-yet-logged set, for the
    /// settler's reconciliation (a Kafka order log: see
    /// [`RedisStore::tracking_log`](crate::redis::RedisStore::tracking_log)).
    pub track_log: bool,
    /// The node's Kafka delivery timeout, published in its id claim for
    /// the settler (0: no Kafka order log).
    pub kafka_timeout_ms: u64,
    /// How long an Idempotency-Key stands for its order, from the order's
    /// making (0: for ever), in Redis and in this node's memory.
    pub key_ttl_s: u64,
    /// Journal mode (`track_log` false): a change Redis made that no node
    /// logged this long after is logged by some node's reconciler
    /// ([`RedisAuthority::reconcile_into`](super::RedisAuthority::reconcile_into)). Must be well above a journal
    /// append's worst time: a reservation still being appended when it
    /// passes would be released under its node.
    pub journal_grace: Duration,
    /// Replicas a batch of reservations must reach before any is answered
    /// ([`RedisStore::with_min_replicas`](crate::redis::RedisStore::with_min_replicas)); `None`: 1 when
    /// the primary has a replica at start, else 0
    /// ([`RedisStore::min_replicas_for`](crate::redis::RedisStore::min_replicas_for)).
    pub min_replicas: Option<u32>,
}

impl ClusterOptions {
    /// How old a sale's view of the cluster (its pool, the other nodes'
    /// leases) may be for this node to answer `sold_out` from it: two poll
    /// intervals and a Redis call's worth of slack (at least 500 ms). Past
    /// it, a dry node asks Redis for a lease and answers what it says, or
    /// 503.
    pub fn view_limit(&self) -> Duration {
        (self.poll_interval * 2 + Duration::from_millis(100)).max(Duration::from_millis(500))
    }

    pub fn new(node_id: u32, shards: usize) -> Self {
        ClusterOptions {
            node_id,
            shards: shards.max(1),
            mode: StockMode::Leased,
            lease_ttl: Duration::from_secs(5),
            call_timeout: Duration::from_millis(500),
            poll_interval: Duration::from_millis(200),
            expiry: true,
            track_log: false,
            kafka_timeout_ms: 0,
            key_ttl_s: crate::embedded::DEFAULT_KEY_TTL_S,
            journal_grace: Duration::from_secs(30),
            min_replicas: None,
        }
    }
}

pub(super) fn local_units(mode: StockMode, spec: &SaleSpec) -> u64 {
    match mode {
        StockMode::Leased => 0,
        // The classic design asks Redis about every unit: the shards never
        // run dry, so every request reaches the Lua call.
        StockMode::PerRequest => spec.stock.saturating_mul(4).max(1 << 40),
    }
}

/// How many units one lease asks for: a slice of the sale, so that no node
/// hoards it; Redis shrinks the grant further as the pool runs low.
pub(super) fn lease_want(spec: &SaleSpec) -> u64 {
    (spec.stock / 32).clamp(1, 256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_a_slice_of_the_sale() {
        let spec = |stock| SaleSpec {
            sale_id: "s".into(),
            stock,
            per_user_limit: 1,
            starts_at: 0,
            ends_at: None,
            payment_timeout_s: 900,
            ticket_required: false,
        };
        assert_eq!(lease_want(&spec(10)), 1);
        assert_eq!(lease_want(&spec(3_000)), 93);
        assert_eq!(lease_want(&spec(10_000_000)), 256);
    }
}
