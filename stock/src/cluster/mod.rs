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
//! Layout (each file uses only the files below it, and this one):
//! - `mod.rs`: what the jobs share: `Shared` (the node's state), `Call`
//!   (work the cores hand to the backend), `LeaseSlot` (a sale's lease
//!   state, kept in the sale).
//! - `authority.rs`: [`RedisAuthority`], the [`StockAuthority`](crate::StockAuthority)
//!   the node calls: memory first (known keys, sold out, lease slots), the
//!   rest handed to the backend as `Call`s; `connect` starts the backend.
//! - `backend.rs`: the backend's loop (`backend_main`): batches of
//!   reservations and key lookups, one task per other call, abandons
//!   retried until Redis answers.
//! - `poller.rs`: the background task: polls every sale, heartbeats,
//!   reclaims dead nodes' leases, refreshes the node id claim.
//! - `leases.rs`: lease calls, lease resets and returns, idle leases given
//!   back, top-up leases.
//! - `rebalance.rs`: wants, the bounded wait, units given back.
//! - `reconcile.rs`: journal mode, changes no node logged reach a journal.
//! - `options.rs`: [`ClusterOptions`], [`StockMode`], lease sizes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::model::{Order, OrderStatus, SaleSpec, StockError, Switch};
use crate::redis::{Created, KeyRecall, Moved, NodeClaim, Recalled, ReserveCall, ReserveOutcome};
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

/// Work the cores hand to the backend.
enum Call {
    Reserve(
        ReserveCall,
        oneshot::Sender<Result<ReserveOutcome, StockError>>,
    ),
    Lease(Arc<Sale>, usize),
    Create(SaleSpec, oneshot::Sender<Result<Created, StockError>>),
    Switch(String, Switch, oneshot::Sender<Result<(), StockError>>),
    Move(
        String,
        String,
        OrderStatus,
        u64,
        oneshot::Sender<Result<Moved, StockError>>,
    ),
    Order(
        String,
        String,
        oneshot::Sender<Result<Option<Order>, StockError>>,
    ),
    /// A move's event is durable in the journal: drop its not-yet-logged
    /// entry (sale, order, status).
    Logged(String, String, OrderStatus),
    /// What an Idempotency-Key this node does not know stands for in Redis
    /// (batched like reservations: one pipeline per drain).
    Recall(KeyRecall, oneshot::Sender<Result<Recalled, StockError>>),
    /// Housekeeping: forget the Idempotency-Key records whose TTL passed.
    ExpireKeys,
    /// A reservation this node will not acknowledge (its log append
    /// failed, or its reply never came): release it if Redis recorded it,
    /// else tombstone its order id and return its units to the pool.
    Abandon(Abandon),
    /// Redis answered `no_lease`: this node's view of its lease and Redis's
    /// disagree; drain the shards and return whatever the lease still holds.
    ResetLease(Arc<Sale>),
    /// Journal mode: start the reconciler, logging into this log.
    Reconcile(Arc<dyn ChangeLog>),
    Stop(std::sync::mpsc::Sender<()>),
}

/// A reservation to abandon (see [`RedisStore::abandon`](crate::redis::RedisStore::abandon)).
struct Abandon {
    sale_id: String,
    order_id: String,
    quantity: u32,
    expires_at: u64,
}

/// One sale's lease state on this node, kept in the sale itself
/// ([`lease_slot`]): the hot path reaches it without a node-wide lock.
#[derive(Default)]
struct LeaseSlot {
    /// A lease call (or a lease reset) is running for this sale.
    in_flight: AtomicBool,
    failed: AtomicBool,
    /// A reset after `no_lease` is queued and has not started yet.
    reset_queued: AtomicBool,
    done: Notify,
    /// A buyer found the shards dry since the poller last looked: this
    /// node may lease ahead of demand (`TopUp`).
    demand: AtomicBool,
    /// Another node's want stood at the last poll: this node gives the
    /// units in its shards back and does not lease ahead of demand.
    wanted: AtomicBool,
    /// Units left the shards to be given back (not to buyers) since
    /// `TopUp` last looked.
    gave_back: AtomicBool,
}

/// The sale's lease slot, made on first use.
fn lease_slot(sale: &Sale) -> &LeaseSlot {
    sale.ext
        .get_or_init(|| Box::new(LeaseSlot::default()))
        .downcast_ref::<LeaseSlot>()
        .unwrap_or_else(|| unreachable!("only the cluster authority sets a sale's slot"))
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
