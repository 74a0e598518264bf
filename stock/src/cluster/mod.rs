//! The cluster stock authority: Redis (through the Lua scripts of
//! [`RedisStore`](crate::redis::RedisStore)) accounts for every unit; this
//! node sells from units it leases into its per-core shards.
//!
//! Backend I/O runs on a small tokio runtime on its own thread ("the
//! backend"), because the redis crate is built for tokio and the cores run
//! monoio. Cores hand it `Call`s through an unbounded channel and await a
//! tokio `oneshot` (runtime-agnostic); they never block and never hold a
//! lock across the hand-off. The backend drains the channel in batches:
//! the reservations gathered while at most two earlier batches were out go
//! to Redis as one pipeline (one `reserve.lua` call per sale).
//!
//! Redis work is bounded by the stock, not by the traffic:
//! - a request that finds a unit in its core's shard costs one EVALSHA
//!   (`reserve`), batched with others;
//! - a request that finds no unit asks for a lease only while the pool or
//!   other nodes' leases were last seen holding units, and concurrent
//!   askers share one lease call; with the pool empty, that call posts a
//!   want and the node holds its buyers (bounded) until a holder gives
//!   units back (`rebalance`);
//! - a request on a sale whose shards are dry, whose pool is empty and
//!   whose other leases are empty is answered 410 from the node's memory.
//!
//! Background work on the backend: a poller (sales created or switched on
//! other nodes, cluster-wide sold count, pool, other nodes' leases and
//! wants, due orders, units given back, top-up leases where buyers are),
//! heartbeats for held leases, reclaiming dead nodes' leases,
//! reconciling reservations whose outcome is undetermined, and (journal
//! mode) logging changes no node logged (`reconcile`). With the
//! heartbeats, the backend refreshes this process's claim on its node id
//! (`RedisStore::claim_node`, made in `connect`); a claim found taken by
//! another process makes every later call answer `Unavailable`.
//!
//! Layout:
//! - `options.rs`: [`ClusterOptions`], [`StockMode`].
//! - `authority.rs`: [`RedisAuthority`], the [`StockAuthority`](crate::StockAuthority)
//!   the node calls: memory first (known keys, sold out, lease slots), the
//!   rest handed to the backend as `Call`s; `connect` starts the backend.
//! - `backend.rs`: the backend's loop (`backend_main`): batches of
//!   reservations and key lookups, one task per other call, abandons
//!   retried until Redis answers.
//! - `leases.rs`: the per-sale lease slot, lease calls, lease resets and
//!   returns, idle leases given back, top-up leases.
//! - `poller.rs`: the background task: polls every sale, heartbeats,
//!   reclaims dead nodes' leases, refreshes the node id claim.
//! - `rebalance.rs`: wants, the bounded wait, units given back.
//! - `reconcile.rs`: journal mode, changes no node logged reach a journal.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::authority::Order;
use crate::redis::NodeClaim;
use crate::registry::Registry;
use crate::sale::Sale;
use crate::striped::Striped;

mod authority;
mod backend;
mod leases;
mod options;
mod poller;
mod rebalance;
mod reconcile;

pub use authority::{AppliedMove, PendingOrder, RedisAuthority};
pub use options::{ClusterOptions, StockMode};
pub use reconcile::{Change, ChangeLog, Relog};

use backend::LogThrottle;

struct Shared {
    opts: ClusterOptions,
    sales: Registry,
    /// Warnings of compensations waiting for Redis.
    retry_log: LogThrottle,
    /// Orders this node answered with an Idempotency-Key: replays of them
    /// need no Redis call. Each is forgotten when its key's TTL passes
    /// (`maintain`).
    keys: Striped<HashMap<Box<str>, KnownKey>>,
    /// Reserved orders found due by the poller, per shard.
    due: Box<[Mutex<Vec<String>>]>,
    /// This process's claim on its node id (refreshed with the heartbeats).
    claim: NodeClaim,
    /// Another process took the node id: this one sells nothing more.
    id_lost: AtomicBool,
    /// Key lookups (`recall_key`) waiting for Redis.
    recalls: AtomicUsize,
    /// This node's stats record and the other nodes' (`redis::stats`).
    stats: Arc<crate::redis::stats::StatsBoard>,
    /// The node is stopping: no lease call starts, and buyers who would
    /// wait for one are answered 503 (`Call::Stop`).
    stopping: AtomicBool,
    /// Lease calls running ([`LeaseRunning`](leases::LeaseRunning)); the stop returns the leases
    /// only once they are done, so none leases after the return.
    leasing: AtomicUsize,
    leases_done: Notify,
}

/// An Idempotency-Key this node answered: its fingerprint, its order, and
/// when the key expires (Unix s).
struct KnownKey {
    fingerprint: u64,
    order: Order,
    expires_at: u64,
}

impl Shared {
    /// When the key of `order` (made in `sale`) expires: `key_ttl_s` after
    /// the order was made (its payment deadline minus the payment timeout),
    /// as Redis counts it.
    fn key_expiry(&self, sale: &Sale, order: &Order) -> u64 {
        match self.opts.key_ttl_s {
            0 => u64::MAX,
            ttl => order
                .expires_at
                .saturating_sub(sale.spec().payment_timeout_s)
                .saturating_add(ttl),
        }
    }

    /// Remembers that `key` stands for `order`.
    fn remember_key(&self, sale: &Sale, key: Box<str>, fingerprint: u64, order: Order) {
        let expires_at = self.key_expiry(sale, &order);
        self.keys.get(&key).lock().insert(
            key,
            KnownKey {
                fingerprint,
                order,
                expires_at,
            },
        );
    }
}
