//! The cluster stock authority: Redis (through [`RedisStore`]'s Lua
//! scripts) accounts for every unit; this node sells from units it leases
//! into its per-core shards.
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

use std::collections::HashMap;
use std::future::{ready, Future};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, error, warn};

use crate::authority::{
    Attempt, KeyLookup, Order, OrderIds, OrderStatus, Reservation, SaleSpec, StockAuthority,
    StockError, Switch, Transition,
};
use crate::redis::{
    Abandoned, ClaimOutcome, Created, KeyRecall, Moved, NodeClaim, Recalled, RedisStore,
    ReserveCall, ReserveOutcome, SaleSwitchState,
};
use crate::registry::Registry;
use crate::sale::Sale;
use crate::striped::{fnv, Striped};
use crate::Units;

mod rebalance;
mod reconcile;

pub use reconcile::{Change, ChangeLog, Relog};

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
    /// [`RedisStore::tracking_log`]).
    pub track_log: bool,
    /// The node's Kafka delivery timeout, published in its id claim for
    /// the settler (0: no Kafka order log).
    pub kafka_timeout_ms: u64,
    /// How long an Idempotency-Key stands for its order, from the order's
    /// making (0: for ever), in Redis and in this node's memory.
    pub key_ttl_s: u64,
    /// Journal mode (`track_log` false): a change Redis made that no node
    /// logged this long after is logged by some node's reconciler
    /// ([`RedisAuthority::reconcile_into`]). Must be well above a journal
    /// append's worst time: a reservation still being appended when it
    /// passes would be released under its node.
    pub journal_grace: Duration,
    /// Replicas a batch of reservations must reach before any is answered
    /// ([`RedisStore::with_min_replicas`]); `None`: 1 when the primary has
    /// a replica at start, else 0 ([`min_replicas`]).
    pub min_replicas: Option<u32>,
}

impl ClusterOptions {
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

/// A reservation to abandon (see [`RedisStore::abandon`]).
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
    /// node may lease ahead of demand (`top_up`).
    demand: AtomicBool,
    /// Another node's want stood at the last poll: this node gives the
    /// units in its shards back and does not lease ahead of demand.
    wanted: AtomicBool,
    /// Units left the shards to be given back (not to buyers) since
    /// `top_up` last looked.
    gave_back: AtomicBool,
}

/// The sale's lease slot, made on first use.
fn lease_slot(sale: &Sale) -> &LeaseSlot {
    sale.ext
        .get_or_init(|| Box::new(LeaseSlot::default()))
        .downcast_ref::<LeaseSlot>()
        .unwrap_or_else(|| unreachable!("only the cluster authority sets a sale's slot"))
}

/// At most one `warn!` per second of a kind of message that an outage
/// repeats for every call; the rest go to `debug!` and are counted in the
/// next warning.
struct LogThrottle {
    start: Instant,
    /// Milliseconds since `start` of the last warning, plus one (0: none).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    fn new() -> Self {
        LogThrottle {
            start: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(messages suppressed since the last warning)` when this one
    /// may be a warning.
    fn warn_now(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.warn_at(now + 1)
    }

    /// [`LogThrottle::warn_now`] at `now` (milliseconds since `start`, plus
    /// one).
    fn warn_at(&self, now: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

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
    /// Lease calls running ([`LeaseRunning`]); the stop returns the leases
    /// only once they are done, so none leases after the return.
    leasing: AtomicUsize,
    leases_done: Notify,
}

/// A lease call counted in `Shared::leasing` until dropped.
struct LeaseRunning<'a>(&'a Shared);

impl<'a> LeaseRunning<'a> {
    fn enter(shared: &'a Shared) -> Self {
        // SeqCst, with `stopping`: either the stop sees this call running
        // and waits for it, or this call sees the stop and leases nothing.
        shared.leasing.fetch_add(1, Ordering::SeqCst);
        LeaseRunning(shared)
    }
}

impl Drop for LeaseRunning<'_> {
    fn drop(&mut self) {
        self.0.leasing.fetch_sub(1, Ordering::SeqCst);
        self.0.leases_done.notify_waiters();
    }
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

/// Most key lookups (`recall_key`) a node has waiting for Redis; more are
/// answered 503 at once, so that keyed requests refused by the gate cannot
/// pile unbounded work (memory, Redis) behind the backend.
const RECALLS_IN_FLIGHT: usize = 4096;

/// One key lookup counted in `Shared::recalls`, until dropped (answered, or
/// its request gone).
struct RecallSlot(Arc<Shared>);

impl Drop for RecallSlot {
    fn drop(&mut self) {
        self.0.recalls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The Redis stock authority of cluster mode.
pub struct RedisAuthority {
    shared: Arc<Shared>,
    calls: mpsc::UnboundedSender<Call>,
    ids: OrderIds,
    backend: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A reservation Redis has recorded, waiting for the order log.
pub struct PendingOrder<'a> {
    sale: &'a Sale,
    units: Units<'a>,
    order: Order,
    key: Option<(Box<str>, u64)>,
}

/// A transition Redis has applied, waiting for the order log.
pub struct AppliedMove {
    order: Order,
    /// Applied by this call (`false`: applied earlier, its event maybe
    /// never logged: only the log is left to do).
    fresh: bool,
}

impl RedisAuthority {
    /// Connects to Redis (failing fast if it does not answer) and starts the
    /// backend thread.
    pub fn connect(url: &str, opts: ClusterOptions, now_micros: u64) -> Result<Self, StockError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                StockError::Unavailable(format!("cannot start the backend runtime: {e}"))
            })?;
        let mut store = runtime.block_on(RedisStore::connect(url, opts.call_timeout))?;
        let ids = OrderIds::new(opts.node_id, now_micros);
        if opts.track_log {
            store = store.tracking_log();
        } else {
            store = store.tracking_moves();
        }
        runtime.block_on(store.persistence()).warn_if_at_risk();
        let min_replicas = runtime.block_on(store.min_replicas_for(opts.min_replicas));
        store = store.with_min_replicas(min_replicas);
        // One live process per node id: two would share a lease.
        let claim = NodeClaim::new(opts.node_id, opts.lease_ttl, opts.kafka_timeout_ms)?;
        // A process restarted right after a crash finds its predecessor's
        // claim: wait for it to lapse (a live duplicate keeps refreshing
        // its claim, so it is still refused, only later).
        let patience = Instant::now() + opts.lease_ttl + Duration::from_secs(1);
        let mut outcome = runtime.block_on(store.claim_node(&claim))?;
        if matches!(outcome, ClaimOutcome::InUse { .. }) {
            warn!(
                node = opts.node_id,
                "node id claimed by another process; waiting up to {:?} for the claim to lapse",
                opts.lease_ttl + Duration::from_secs(1)
            );
        }
        while matches!(outcome, ClaimOutcome::InUse { .. }) && Instant::now() < patience {
            std::thread::sleep(Duration::from_millis(200));
            outcome = runtime.block_on(store.claim_node(&claim))?;
        }
        if let ClaimOutcome::InUse { expires_at_ms } = outcome {
            return Err(StockError::Unavailable(format!(
                "node id {} is in use by another live node (its claim runs to {}, Unix ms, \
                 unless refreshed): give every node its own --node-id, or wait {:?} after \
                 the other one stopped",
                opts.node_id,
                expires_at_ms.map_or("?".into(), |t| t.to_string()),
                opts.lease_ttl
            )));
        }
        // The id is this process's now. Whatever Redis still counts in its
        // leases belonged to a predecessor that died (this process has no
        // units yet): give it back before serving, or it would sit in the
        // lease, unsold, while this node answers sold out.
        runtime.block_on(return_predecessors_leases(&store, opts.node_id))?;
        store = store.with_key_ttl(opts.key_ttl_s);
        let shared = Arc::new(Shared {
            due: (0..opts.shards).map(|_| Mutex::new(Vec::new())).collect(),
            opts,
            sales: Registry::default(),
            retry_log: LogThrottle::new(),
            keys: Striped::new(),
            claim,
            id_lost: AtomicBool::new(false),
            recalls: AtomicUsize::new(0),
            stats: Arc::default(),
            stopping: AtomicBool::new(false),
            leasing: AtomicUsize::new(0),
            leases_done: Notify::new(),
        });
        // Learn the sales that exist before serving.
        runtime.block_on(poll_once(&store, &shared));
        let (tx, rx) = mpsc::unbounded_channel();
        let backend_shared = shared.clone();
        let backend_tx = tx.clone();
        let backend = std::thread::Builder::new()
            .name("seckill-backend".into())
            .spawn(move || runtime.block_on(backend_main(store, backend_shared, rx, backend_tx)))
            .map_err(|e| {
                StockError::Unavailable(format!("cannot start the backend thread: {e}"))
            })?;
        Ok(RedisAuthority {
            shared,
            calls: tx,
            ids,
            backend: Mutex::new(Some(backend)),
        })
    }

    /// The node's stats record and the other nodes', as last exchanged.
    pub fn stats_board(&self) -> Arc<crate::redis::stats::StatsBoard> {
        self.shared.stats.clone()
    }

    /// Journal mode: runs the reconciler on the backend, logging changes
    /// no node logged within `journal_grace` into `log` (this node's
    /// journal); see `cluster/reconcile.rs`. A no-op with a Kafka log (the
    /// settler reconciles).
    pub fn reconcile_into(&self, log: Arc<dyn ChangeLog>) -> Result<(), StockError> {
        if self.shared.opts.track_log {
            return Ok(());
        }
        self.send(Call::Reconcile(log))
    }

    fn send(&self, call: Call) -> Result<(), StockError> {
        if self.shared.id_lost.load(Ordering::Relaxed) {
            return Err(StockError::Unavailable(
                "this node's id was taken by another node process".into(),
            ));
        }
        self.calls
            .send(call)
            .map_err(|_| StockError::Unavailable("the backend has stopped".into()))
    }

    /// Sends `call` and awaits its reply on `rx`, without borrowing `self`.
    fn ask<T: Send + 'static>(
        &self,
        call: Call,
        rx: oneshot::Receiver<Result<T, StockError>>,
    ) -> impl Future<Output = Result<T, StockError>> + use<T> {
        let sent = self.send(call);
        async move {
            sent?;
            rx.await.unwrap_or_else(|_| {
                Err(StockError::Undetermined(
                    "the backend dropped the call".into(),
                ))
            })
        }
    }
}

fn local_units(mode: StockMode, spec: &SaleSpec) -> u64 {
    match mode {
        StockMode::Leased => 0,
        // The classic design asks Redis about every unit: the shards never
        // run dry, so every request reaches the Lua call.
        StockMode::PerRequest => spec.stock.saturating_mul(4).max(1 << 40),
    }
}

/// The sale id inside an order id `{node}-{random}-{sale}` ([`OrderIds`];
/// ids of older nodes had a decimal sequence in the middle).
fn sale_of(order_id: &str) -> Option<&str> {
    let mut parts = order_id.splitn(3, '-');
    let node = parts.next()?;
    let middle = parts.next()?;
    let sale = parts.next()?;
    (!node.is_empty()
        && node.bytes().all(|b| b.is_ascii_digit())
        && !middle.is_empty()
        && middle
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        && !sale.is_empty())
    .then_some(sale)
}

impl StockAuthority for RedisAuthority {
    type PendingOrder<'a> = PendingOrder<'a>;
    type PendingTransition = AppliedMove;

    fn create_sale(&self, spec: SaleSpec) -> impl Future<Output = Result<Arc<Sale>, StockError>> {
        let created = {
            let (tx, rx) = oneshot::channel();
            self.ask(Call::Create(spec.clone(), tx), rx)
        };
        let shared = self.shared.clone();
        async move {
            created.await?;
            let units = local_units(shared.opts.mode, &spec);
            let shards = shared.opts.shards;
            let sale = shared.sales.insert_with(&spec, || {
                Sale::with_local_units(spec.clone(), shards, units)
            })?;
            if shared.opts.mode == StockMode::Leased {
                sale.set_pool_hint(spec.stock.saturating_sub(sale.sold()).max(1));
            }
            Ok(sale)
        }
    }

    fn switch(
        &self,
        sale_id: &str,
        switch: Switch,
    ) -> impl Future<Output = Result<Arc<Sale>, StockError>> {
        let done = {
            let (tx, rx) = oneshot::channel();
            self.ask(Call::Switch(sale_id.to_owned(), switch, tx), rx)
        };
        let sale = self.shared.sales.get(sale_id);
        async move {
            done.await?;
            let sale = sale.ok_or(StockError::SaleNotFound)?;
            sale.apply_switch(switch)?;
            Ok(sale)
        }
    }

    fn sale(&self, sale_id: &str) -> Option<Arc<Sale>> {
        self.shared.sales.get(sale_id)
    }

    fn sales_epoch(&self) -> u64 {
        self.shared.sales.epoch()
    }

    fn sales(&self) -> Vec<Arc<Sale>> {
        self.shared.sales.all()
    }

    fn lookup_key(
        &self,
        sale: &Sale,
        attempt: &Attempt<'_>,
    ) -> impl Future<Output = Result<KeyLookup, StockError>> {
        // Keys this node answered replay from memory; a key first used on
        // another node (or before a restart) is checked by the reserve
        // script itself, or by `recall_key` before a refusal.
        let found = attempt
            .idempotency_key
            .map_or(Ok(KeyLookup::Unused), |key| {
                let fingerprint = attempt.fingerprint(sale.id());
                match self.shared.keys.get(key).lock().get(key) {
                    None => Ok(KeyLookup::Unused),
                    Some(known) if known.expires_at <= attempt.now => Ok(KeyLookup::Unused),
                    Some(known) if known.fingerprint != fingerprint => Err(StockError::KeyReused),
                    Some(known) => Ok(KeyLookup::Replay(known.order.clone())),
                }
            });
        ready(found)
    }

    fn recall_key(
        &self,
        sale: &Sale,
        attempt: &Attempt<'_>,
    ) -> impl Future<Output = Result<KeyLookup, StockError>> {
        // Keyed requests on a sold-out sale each cost a lookup: bound what
        // waits for Redis, and answer the rest 503 (retry) at once.
        let admitted = self.shared.recalls.fetch_add(1, Ordering::AcqRel) < RECALLS_IN_FLIGHT;
        let slot = RecallSlot(self.shared.clone());
        let asked = attempt.idempotency_key.filter(|_| admitted).map(|key| {
            let (tx, rx) = oneshot::channel();
            let call = KeyRecall {
                sale_id: sale.id().to_owned(),
                key: key.to_owned(),
                fingerprint: attempt.fingerprint(sale.id()),
            };
            self.ask(Call::Recall(call, tx), rx)
        });
        let keyed = attempt.idempotency_key.is_some();
        async move {
            let _slot = slot;
            let Some(reply) = asked else {
                if keyed {
                    return Err(StockError::Unavailable(
                        "too many Idempotency-Key lookups waiting for Redis; retry".into(),
                    ));
                }
                return Ok(KeyLookup::Unused);
            };
            match reply.await? {
                Recalled::Unused => Ok(KeyLookup::Unused),
                Recalled::KeyReused => Err(StockError::KeyReused),
                // Remembered once it is logged (`replay_answered`).
                Recalled::Replay(order) => Ok(KeyLookup::Replay(order)),
            }
        }
    }

    async fn refill<'a>(
        &'a self,
        sale: &'a Sale,
        core: usize,
        qty: u32,
    ) -> Result<Units<'a>, StockError> {
        if self.shared.opts.mode == StockMode::PerRequest {
            return Err(StockError::SoldOut);
        }
        let slot = lease_slot(sale);
        // A buyer found the shards dry: this node has demand (see `top_up`).
        slot.demand.store(true, Ordering::Relaxed);
        let started = Instant::now();
        for _ in 0..4 {
            if sale.is_closed() || sale.nothing_elsewhere() {
                return Err(StockError::SoldOut);
            }
            if self.shared.stopping.load(Ordering::SeqCst) {
                return Err(StockError::Unavailable("the node is stopping".into()));
            }
            if slot.failed.load(Ordering::Acquire) && slot.in_flight.load(Ordering::Acquire) {
                // The last lease failed and its reset waits for Redis:
                // answer at once rather than wait out the outage.
                return Err(StockError::Unavailable(
                    "cannot lease stock from Redis".into(),
                ));
            }
            let done = slot.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !slot.in_flight.swap(true, Ordering::AcqRel) {
                let Some(owned) = self.shared.sales.get(sale.id()) else {
                    slot.in_flight.store(false, Ordering::Release);
                    return Err(StockError::SaleNotFound);
                };
                if let Err(e) = self.send(Call::Lease(owned, core)) {
                    slot.in_flight.store(false, Ordering::Release);
                    return Err(e);
                }
            }
            // A lease, or (the pool empty, units in other nodes' leases) a
            // bounded wait for one of them to come back: see `lease`.
            done.await;
            if let Some(units) = sale.stock.take(core, qty) {
                return Ok(units);
            }
            if slot.failed.load(Ordering::Acquire) {
                return Err(StockError::Unavailable(
                    "cannot lease stock from Redis".into(),
                ));
            }
            if started.elapsed() >= rebalance::wait(&self.shared.opts) {
                break;
            }
        }
        if sale.nothing_elsewhere() {
            return Err(StockError::SoldOut);
        }
        // Units remain, in other nodes' leases or going to other buyers
        // first: say so, and let the buyer retry rather than guess sold
        // out.
        Err(StockError::Unavailable(
            "stock is being moved between nodes; retry".into(),
        ))
    }

    fn reserve<'a>(
        &'a self,
        sale: &'a Sale,
        attempt: &Attempt<'_>,
        units: Units<'a>,
    ) -> impl Future<Output = Result<Reservation<PendingOrder<'a>>, StockError>> {
        let order = Order {
            order_id: self.ids.next(Some(sale.id())),
            sale_id: sale.id().to_owned(),
            user_id: attempt.user_id.to_owned(),
            quantity: units.qty(),
            status: OrderStatus::Reserved,
            expires_at: attempt.now.saturating_add(sale.spec().payment_timeout_s),
            shard: attempt.core % self.shared.opts.shards,
        };
        let fingerprint = attempt.fingerprint(sale.id());
        let key = attempt
            .idempotency_key
            .map(|k| (Box::<str>::from(k), fingerprint));
        let call = ReserveCall {
            sale_id: order.sale_id.clone(),
            node: self.shared.opts.node_id,
            order_id: order.order_id.clone(),
            user_id: order.user_id.clone(),
            quantity: order.quantity,
            idempotency_key: attempt.idempotency_key.map(str::to_owned),
            fingerprint,
            expires_at: order.expires_at,
            from_pool: self.shared.opts.mode == StockMode::PerRequest,
        };
        let reply = {
            let (tx, rx) = oneshot::channel();
            self.ask(Call::Reserve(call, tx), rx)
        };
        async move {
            match reply.await {
                Ok(ReserveOutcome::Reserved) => Ok(Reservation::New {
                    order: order.clone(),
                    pending: PendingOrder {
                        sale,
                        units,
                        order,
                        key,
                    },
                }),
                // Redis marked it acknowledged: never released now. It is
                // remembered once it is logged (`replay_answered`).
                Ok(ReserveOutcome::Replay(first)) => Ok(Reservation::Replay(first)),
                Ok(ReserveOutcome::LimitExceeded) => Err(StockError::LimitExceeded),
                Ok(ReserveOutcome::KeyReused) => Err(StockError::KeyReused),
                Ok(ReserveOutcome::SaleNotOpen) => Err(StockError::SaleNotOpen),
                Ok(ReserveOutcome::SoldOut) => Err(StockError::SoldOut),
                Ok(ReserveOutcome::NoLease) => {
                    // Redis took this node's lease back (a missed heartbeat),
                    // or holds less than this node thinks: the local units
                    // are not backed. Start from a clean slate.
                    units.commit();
                    sale.stock.drain();
                    let slot = lease_slot(sale);
                    if !slot.reset_queued.swap(true, Ordering::AcqRel) {
                        if let Some(owned) = self.shared.sales.get(sale.id()) {
                            let _ = self.send(Call::ResetLease(owned));
                        } else {
                            slot.reset_queued.store(false, Ordering::Release);
                        }
                    }
                    Err(StockError::Unavailable(
                        "this node's lease was reclaimed; retry".into(),
                    ))
                }
                Ok(ReserveOutcome::Gone) => {
                    // Redis charged nothing. A tombstone cannot be the cause
                    // (this node abandons an order only after its call
                    // answered, and a late copy's answer goes nowhere), so
                    // the order was judged too old: its expiry, made on this
                    // node's clock, is past Redis's time plus the grace.
                    // The units are still this node's lease: back to the
                    // shard. The 503's detail (logged) names the clock.
                    drop(units);
                    Err(StockError::Unavailable(
                        "the reservation was refused as too old: this node's clock is \
                         behind Redis's; retry"
                            .into(),
                    ))
                }
                Err(StockError::Undetermined(why)) => {
                    // Maybe recorded: never hand these units out again.
                    // Abandon the order: released if Redis has it, else
                    // tombstoned (a late copy is refused) and its units
                    // returned from the lease to the pool.
                    units.commit();
                    let _ = self.send(Call::Abandon(Abandon {
                        sale_id: order.sale_id.clone(),
                        order_id: order.order_id.clone(),
                        quantity: order.quantity,
                        expires_at: order.expires_at,
                    }));
                    Err(StockError::Undetermined(why))
                }
                Err(e) => Err(e),
            }
        }
    }

    fn confirm(&self, pending: PendingOrder<'_>) {
        let PendingOrder {
            sale,
            units,
            order,
            key,
        } = pending;
        sale.add_sold(units.qty());
        units.commit();
        if !self.shared.opts.track_log {
            // The journal has it: the reservation leaves the set.
            let _ = self.send(Call::Logged(
                order.sale_id.clone(),
                order.order_id.clone(),
                OrderStatus::Reserved,
            ));
        }
        if let Some((k, fp)) = key {
            self.shared.remember_key(sale, k, fp, order);
        }
    }

    fn replay_answered(&self, sale: &Sale, attempt: &Attempt<'_>, order: &Order) {
        if let Some(key) = attempt.idempotency_key {
            let fingerprint = attempt.fingerprint(sale.id());
            self.shared
                .remember_key(sale, key.into(), fingerprint, order.clone());
        }
    }

    fn abort(&self, pending: PendingOrder<'_>) {
        // Redis has charged the units to this node's lease; releasing the
        // order returns them to the pool, so the local copies are spent.
        let PendingOrder { units, order, .. } = pending;
        units.commit();
        let _ = self.send(Call::Abandon(Abandon {
            sale_id: order.sale_id,
            order_id: order.order_id,
            quantity: order.quantity,
            expires_at: order.expires_at,
        }));
    }

    fn order(&self, order_id: &str) -> impl Future<Output = Result<Order, StockError>> {
        let reply = sale_of(order_id).map(|sale| {
            let (tx, rx) = oneshot::channel();
            self.ask(Call::Order(sale.to_owned(), order_id.to_owned(), tx), rx)
        });
        async move {
            match reply {
                None => Err(StockError::OrderNotFound),
                Some(reply) => reply.await?.ok_or(StockError::OrderNotFound),
            }
        }
    }

    fn begin_transition(
        &self,
        order_id: &str,
        to: OrderStatus,
        now: u64,
    ) -> impl Future<Output = Result<Transition<AppliedMove>, StockError>> {
        let reply = sale_of(order_id).map(|sale| {
            let (tx, rx) = oneshot::channel();
            self.ask(
                Call::Move(sale.to_owned(), order_id.to_owned(), to, now, tx),
                rx,
            )
        });
        async move {
            let Some(reply) = reply else {
                return Err(StockError::OrderNotFound);
            };
            match reply.await? {
                Moved::Changed(order) => Ok(Transition::Pending {
                    order: order.clone(),
                    pending: AppliedMove { order, fresh: true },
                }),
                // Applied earlier, and its event may never have reached the
                // log (that append failed): log it now, before answering.
                Moved::Unlogged(order) => Ok(Transition::Pending {
                    order: order.clone(),
                    pending: AppliedMove {
                        order,
                        fresh: false,
                    },
                }),
                Moved::Unchanged(order) => Ok(Transition::Unchanged(order)),
                Moved::Invalid(status) => Err(StockError::InvalidState(match status {
                    OrderStatus::Paid => "the order is paid",
                    OrderStatus::Cancelled => "the order is cancelled",
                    OrderStatus::Expired => "the order has expired",
                    OrderStatus::Reserved => "the order is still reserved",
                })),
                Moved::NotFound => Err(StockError::OrderNotFound),
                // Only a release answers this.
                Moved::Kept(_) => Err(StockError::Unavailable(
                    "unexpected answer to a transition".into(),
                )),
            }
        }
    }

    fn finish_transition(&self, pending: AppliedMove) -> Order {
        let AppliedMove { order, fresh } = pending;
        if !self.shared.opts.track_log {
            // The journal has the event: the move leaves the set (with a
            // Kafka log, the settler removes what it reads).
            let _ = self.send(Call::Logged(
                order.sale_id.clone(),
                order.order_id.clone(),
                order.status,
            ));
        }
        if fresh && order.status.releases_stock() {
            if let Some(sale) = self.shared.sales.get(&order.sale_id) {
                // The poller corrects this from Redis; until then the node's
                // view moves at once. The unit went back to the pool.
                sale.sub_sold(order.quantity);
                sale.set_pool_hint(sale.pool_hint().saturating_add(u64::from(order.quantity)));
            }
        }
        order
    }

    fn abort_transition(&self, pending: AppliedMove) {
        // Redis applied the move before the log was asked; it stands, and
        // stays in the not-yet-logged set: a repeat of the move (the
        // caller's retry of its 503; the expiry sweep retries by itself)
        // finds it `Unlogged` and logs it before answering.
        warn!(
            order_id = pending.order.order_id,
            "a transition applied in Redis could not be logged"
        );
    }

    fn due_expiries(&self, shard: usize, _now: u64, out: &mut Vec<String>) {
        out.append(&mut self.shared.due[shard % self.shared.opts.shards].lock());
    }

    fn retry_expiry(&self, order_id: &str, _at: u64) {
        let shard = fnv(order_id.as_bytes()) as usize % self.shared.opts.shards;
        self.shared.due[shard].lock().push(order_id.to_owned());
    }

    fn maintain(&self, now: u64) -> usize {
        let mut forgotten = 0;
        for stripe in self.shared.keys.iter() {
            let mut map = stripe.lock();
            let before = map.len();
            map.retain(|_, known| known.expires_at > now);
            forgotten += before - map.len();
        }
        if self.shared.opts.key_ttl_s > 0 {
            let _ = self.send(Call::ExpireKeys);
        }
        forgotten
    }

    fn close(&self) {
        let Some(handle) = self.backend.lock().take() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        // Straight to the channel: `send` refuses calls once the id is lost.
        if self.calls.send(Call::Stop(tx)).is_ok() {
            // Lease returns take one round trip per sale.
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
        let _ = handle.join();
    }
}

// ----- the backend ---------------------------------------------------------

/// Reservation batches awaiting Redis at once. While they are out, new
/// reservations gather into the next batch, so under load the batches grow
/// instead of multiplying: fewer, larger `reserve.lua` calls (each call has
/// a fixed cost in Redis and one read and one write on both ends). Two, not
/// one, so that Redis is not idle while a reply travels back.
const RESERVE_BATCHES_IN_FLIGHT: usize = 2;

async fn backend_main(
    store: RedisStore,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Call>,
    tx: mpsc::UnboundedSender<Call>,
) {
    let background = tokio::spawn(background(store.clone(), shared.clone(), tx));
    let mut calls = Vec::with_capacity(512);
    let mut batch = Vec::new();
    let mut replies = Vec::new();
    let mut recalls = Vec::new();
    let mut logged: HashMap<String, Vec<(String, &'static str)>> = HashMap::new();
    let mut reconciler = None;
    let mut reserving = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            n = rx.recv_many(&mut calls, 512) => if n == 0 {
                break;
            },
            // A batch came back: room for the one that gathered meanwhile.
            Some(_) = reserving.join_next(), if !reserving.is_empty() => {}
        }
        for call in calls.drain(..) {
            match call {
                Call::Reserve(c, reply) if c.from_pool => {
                    // The classic baseline: one EVALSHA per request, on its
                    // own, as a request-scoped client would send it.
                    let store = store.clone();
                    tokio::spawn(async move {
                        let result = store.reserve_batch(std::slice::from_ref(&c)).await;
                        let _ = reply.send(result.into_iter().next().unwrap_or_else(|| {
                            Err(StockError::Undetermined("no reply for the call".into()))
                        }));
                    });
                }
                Call::Reserve(c, reply) => {
                    batch.push(c);
                    replies.push(reply);
                }
                Call::Recall(c, reply) => recalls.push((c, reply)),
                Call::Logged(sale, order, status) => {
                    logged
                        .entry(sale)
                        .or_default()
                        .push((order, status.as_str()));
                }
                Call::Reconcile(log) => {
                    if reconciler.is_none() {
                        let task = reconcile::run(
                            store.clone(),
                            shared.clone(),
                            log,
                            shared.opts.journal_grace,
                        );
                        reconciler = Some(tokio::spawn(task));
                    }
                }
                Call::Stop(done) => {
                    shared.stopping.store(true, Ordering::SeqCst);
                    background.abort();
                    if let Some(reconciler) = reconciler.take() {
                        // Its claims come due again after the grace.
                        reconciler.abort();
                    }
                    mark_logged(&store, std::mem::take(&mut logged)).await;
                    // Purchases in flight finish first: the batches out,
                    // then the one gathered meanwhile.
                    while reserving.join_next().await.is_some() {}
                    reserve_and_reply(&store, batch, replies).await;
                    // A node that lost its id leaves that id's lease to
                    // the process that holds it now. A lease call still
                    // running could lease after the return: wait for them
                    // (they stop early), then return.
                    if !shared.id_lost.load(Ordering::Relaxed) {
                        leases_settled(&shared).await;
                        return_leases(&store, &shared).await;
                        release_claim(&store, &shared).await;
                    }
                    let _ = done.send(());
                    return;
                }
                other => {
                    tokio::spawn(handle(store.clone(), shared.clone(), other));
                }
            }
        }
        if !logged.is_empty() {
            // One ZREM per sale for the events this drain saw logged.
            let store = store.clone();
            let logged = std::mem::take(&mut logged);
            tokio::spawn(async move { mark_logged(&store, logged).await });
        }
        if !recalls.is_empty() {
            // One pipeline for the key lookups of this drain.
            let store = store.clone();
            let recalls = std::mem::take(&mut recalls);
            tokio::spawn(async move { recall_and_reply(&store, recalls).await });
        }
        if !batch.is_empty() && reserving.len() < RESERVE_BATCHES_IN_FLIGHT {
            // One pipeline for every reservation gathered since the last.
            let store = store.clone();
            let calls = std::mem::take(&mut batch);
            let replies = std::mem::take(&mut replies);
            reserving.spawn(async move { reserve_and_reply(&store, calls, replies).await });
        }
    }
    // Every sender is gone: no one waits for an answer, but the batches out
    // are let finish rather than cut off mid-call.
    while reserving.join_next().await.is_some() {}
}

/// Sends one batch of reservations and answers each caller.
async fn reserve_and_reply(
    store: &RedisStore,
    calls: Vec<ReserveCall>,
    replies: Vec<oneshot::Sender<Result<ReserveOutcome, StockError>>>,
) {
    if calls.is_empty() {
        return;
    }
    let results = store.reserve_batch(&calls).await;
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

/// Removes the not-yet-logged entries of events now in the journal, one
/// command per sale. Lost: a repeat of the move, or the reconciler after
/// its grace, logs the event once more (consumers dedupe).
async fn mark_logged(store: &RedisStore, logged: HashMap<String, Vec<(String, &'static str)>>) {
    for (sale, entries) in logged {
        if let Err(e) = store.mark_logged(&sale, &entries).await {
            debug!(sale, error = %e, "changes not marked logged");
        }
    }
}

/// Looks up one drain's Idempotency-Keys and answers each caller.
async fn recall_and_reply(
    store: &RedisStore,
    recalls: Vec<(KeyRecall, oneshot::Sender<Result<Recalled, StockError>>)>,
) {
    let (keys, replies): (Vec<_>, Vec<_>) = recalls.into_iter().unzip();
    for (reply, result) in replies.into_iter().zip(store.recall_keys(&keys).await) {
        let _ = reply.send(result);
    }
}

/// Forgets every sale's Idempotency-Key records whose TTL passed, in
/// bounded batches.
async fn expire_keys(store: &RedisStore, shared: &Shared) {
    const BATCH: usize = 512;
    for sale in shared.sales.all() {
        for _ in 0..16 {
            match store.expire_keys(sale.id(), BATCH).await {
                Ok(n) if n == BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    debug!(sale = sale.id(), error = %e, "key expiry failed");
                    break;
                }
            }
        }
    }
}

async fn handle(store: RedisStore, shared: Arc<Shared>, call: Call) {
    match call {
        Call::Lease(sale, core) => lease(&store, &shared, &sale, core, true).await,
        Call::Create(spec, reply) => {
            let _ = reply.send(store.create_sale(&spec).await);
        }
        Call::Switch(id, to, reply) => {
            let result = store.switch(&id, to).await;
            if result.is_ok() && to == Switch::Close {
                if let Some(sale) = shared.sales.get(&id) {
                    sale.stock.drain();
                    let _ = store.return_lease(&id, shared.opts.node_id).await;
                }
            }
            let _ = reply.send(result);
        }
        Call::Move(sale, order, to, now, reply) => {
            let _ = reply.send(store.transition(&sale, &order, to, now).await);
        }
        Call::Order(sale, order, reply) => {
            let _ = reply.send(store.order(&sale, &order).await);
        }
        Call::Abandon(call) => release_until_known(&store, &shared, &call).await,
        Call::ResetLease(sale) => reset_after_no_lease(&store, &shared, &sale).await,
        Call::ExpireKeys => expire_keys(&store, &shared).await,
        Call::Reserve(..)
        | Call::Recall(..)
        | Call::Logged(..)
        | Call::Reconcile(_)
        | Call::Stop(_) => {}
    }
}

/// Abandons a reservation this node will not acknowledge, retrying until
/// Redis gives a definite answer: released (it was recorded), already
/// final, or never recorded (then a tombstone refuses a late copy of it,
/// and its units went from this node's lease back to the pool).
async fn release_until_known(store: &RedisStore, shared: &Shared, call: &Abandon) {
    let order = call.order_id.as_str();
    let mut wait = Duration::from_millis(100);
    loop {
        let result = store
            .abandon(
                &call.sale_id,
                order,
                shared.opts.node_id,
                call.quantity,
                call.expires_at,
            )
            .await;
        match result {
            Ok(Abandoned::NeverRecorded { returned }) => {
                debug!(
                    order,
                    returned, "abandoned a reservation Redis never recorded"
                );
                if returned > 0 {
                    if let Some(sale) = shared.sales.get(&call.sale_id) {
                        sale.set_pool_hint(sale.pool_hint().saturating_add(returned));
                    }
                }
                return;
            }
            Ok(Abandoned::Released(outcome)) => {
                debug!(order, ?outcome, "compensated");
                if !shared.opts.track_log {
                    // Released (or kept: a replay logged it): nothing is
                    // left for the reconciler to do.
                    let entry = [(call.order_id.clone(), "reserved")];
                    let _ = store.mark_logged(&call.sale_id, &entry).await;
                }
                return;
            }
            Err(e) => {
                match shared.retry_log.warn_now() {
                    Some(suppressed) => warn!(
                        order,
                        error = %e,
                        suppressed,
                        "compensation pending; retrying (suppressed: similar warnings since the last one)"
                    ),
                    None => debug!(order, error = %e, "compensation pending; retrying"),
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// After `no_lease`: waits for the sale's lease call in flight (if any),
/// then drains the shards and returns what Redis still counts in this
/// node's lease, so that neither side holds units the other does not.
async fn reset_after_no_lease(store: &RedisStore, shared: &Shared, sale: &Sale) {
    let slot = lease_slot(sale);
    loop {
        let done = slot.done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if !slot.in_flight.swap(true, Ordering::AcqRel) {
            break;
        }
        done.await;
    }
    slot.reset_queued.store(false, Ordering::Release);
    // Buyers meanwhile get 503 at once (see `refill`).
    slot.failed.store(true, Ordering::Release);
    slot.done.notify_waiters();
    reset_lease(store, shared, sale).await;
    slot.failed.store(false, Ordering::Release);
    slot.in_flight.store(false, Ordering::Release);
    slot.done.notify_waiters();
}

/// How many units one lease asks for: a slice of the sale, so that no node
/// hoards it; Redis shrinks the grant further as the pool runs low.
fn lease_want(spec: &SaleSpec) -> u64 {
    (spec.stock / 32).clamp(1, 256)
}

/// Leases units into `core`'s shard. For a buyer whose core found the
/// shards dry (`for_buyer`): with the pool empty while other nodes hold
/// leased units, posts this node's want and waits (bounded) for a holder
/// to give units back ([`rebalance`]). Ahead of demand (`top_up`): a plain
/// lease.
async fn lease(store: &RedisStore, shared: &Shared, sale: &Sale, core: usize, for_buyer: bool) {
    let slot = lease_slot(sale);
    let _running = LeaseRunning::enter(shared);
    if shared.stopping.load(Ordering::SeqCst) {
        // The stop returns the lease: lease nothing more. The buyers
        // waiting for this call get 503 now.
        slot.failed.store(true, Ordering::Release);
        slot.in_flight.store(false, Ordering::Release);
        slot.done.notify_waiters();
        return;
    }
    let leased = if for_buyer {
        rebalance::lease_or_wait(store, shared, sale, core).await
    } else {
        rebalance::lease_ahead(store, shared, sale, core).await
    };
    match leased {
        Ok(()) => slot.failed.store(false, Ordering::Release),
        Err(e) => {
            warn!(sale = sale.id(), error = %e, "lease failed; returning this node's lease");
            slot.failed.store(true, Ordering::Release);
            // The buyers waiting for this lease get their 503 now, not
            // when Redis is back.
            slot.done.notify_waiters();
            // A timed-out lease may still be granted later, to units this
            // node never receives. Start from a clean slate instead of
            // guessing: give every unit back, then lease again.
            reset_lease(store, shared, sale).await;
        }
    }
    slot.in_flight.store(false, Ordering::Release);
    slot.done.notify_waiters();
}

/// Returns to the pool every unit Redis counts in this node id's leases,
/// at start: they were leased by an earlier process under the same id.
async fn return_predecessors_leases(store: &RedisStore, node: u32) -> Result<(), StockError> {
    for id in store.sale_ids().await? {
        let units = store.return_lease(&id, node).await?;
        if units > 0 {
            warn!(
                sale = id,
                node, units, "returned units an earlier process under this node id had leased"
            );
        }
    }
    Ok(())
}

/// Drains the sale's shards and returns the node's whole lease to the
/// pool, retrying until Redis answers.
async fn reset_lease(store: &RedisStore, shared: &Shared, sale: &Sale) {
    let mut wait = Duration::from_millis(100);
    loop {
        sale.stock.drain();
        match store.return_lease(sale.id(), shared.opts.node_id).await {
            Ok(units) => {
                debug!(sale = sale.id(), units, "lease reset");
                sale.set_pool_hint(sale.pool_hint().saturating_add(units));
                return;
            }
            Err(e) => {
                debug!(sale = sale.id(), error = %e, "lease reset pending");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Waits until no lease call runs (they see `stopping` and end at their
/// next step; one in Redis ends within the call timeout), for at most a
/// few call timeouts.
async fn leases_settled(shared: &Shared) {
    let deadline = tokio::time::Instant::now() + shared.opts.call_timeout * 4;
    loop {
        let done = shared.leases_done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if shared.leasing.load(Ordering::SeqCst) == 0 {
            return;
        }
        if tokio::time::timeout_at(deadline, done).await.is_err() {
            warn!("lease calls still running at stop; their units will be reclaimed");
            return;
        }
    }
}

async fn return_leases(store: &RedisStore, shared: &Shared) {
    for sale in shared.sales.all() {
        let drained = sale.stock.drain();
        match store.return_lease(sale.id(), shared.opts.node_id).await {
            Ok(units) => debug!(sale = sale.id(), units, drained, "lease returned"),
            Err(e) => {
                warn!(sale = sale.id(), error = %e, "lease not returned; it will be reclaimed")
            }
        }
    }
}

async fn background(store: RedisStore, shared: Arc<Shared>, tx: mpsc::UnboundedSender<Call>) {
    let mut tick = tokio::time::interval(shared.opts.poll_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let heartbeat_every = (shared.opts.lease_ttl / 3).max(shared.opts.poll_interval);
    let mut last_heartbeat = tokio::time::Instant::now();
    let mut idle = IdleLeases::default();
    let mut top_up = TopUp::default();
    loop {
        tick.tick().await;
        poll_once(&store, &shared).await;
        rebalance::give_back_wanted(&store, &shared, &tx).await;
        idle.return_unused(&store, &shared, &tx).await;
        if last_heartbeat.elapsed() >= heartbeat_every {
            last_heartbeat = tokio::time::Instant::now();
            let ids: Vec<String> = shared
                .sales
                .all()
                .iter()
                .map(|s| s.id().to_owned())
                .collect();
            refresh_claim(&store, &shared).await;
            if let Err(e) = store
                .heartbeat(&ids, shared.opts.node_id, shared.opts.lease_ttl)
                .await
            {
                warn!(error = %e, "heartbeat failed");
            }
            for id in &ids {
                if let Err(e) = store.reclaim(id).await {
                    debug!(sale = id, error = %e, "reclaim failed");
                }
            }
        }
        if !shared.id_lost.load(Ordering::Relaxed) {
            top_up.run(&store, &shared);
            // A node that lost its id publishes nothing under it either.
            crate::redis::stats::exchange(&store, &shared.stats, shared.opts.node_id).await;
        }
    }
}

/// Refreshes this process's claim on its node id. Another process's claim
/// in its place means this one lost the id (it was cut off past the TTL
/// and another took it): it stops selling for good.
async fn refresh_claim(store: &RedisStore, shared: &Shared) {
    if shared.id_lost.load(Ordering::Relaxed) {
        return;
    }
    let node = shared.opts.node_id;
    match store.claim_node(&shared.claim).await {
        Ok(ClaimOutcome::Refreshed) => {}
        Ok(ClaimOutcome::Claimed) => {
            warn!(
                node,
                "this node's claim on its id had lapsed; claimed it again"
            );
        }
        Ok(ClaimOutcome::InUse { .. }) => {
            shared.id_lost.store(true, Ordering::Relaxed);
            error!(
                node,
                "node id {node} was taken by another node process: this node stops selling \
                 (503 to every purchase) and must be restarted with a free --node-id"
            );
        }
        Err(e) => warn!(node, error = %e, "cannot refresh the claim on the node id"),
    }
}

/// Gives the node id back on a clean stop.
async fn release_claim(store: &RedisStore, shared: &Shared) {
    if let Err(e) = store.release_node(&shared.claim).await {
        warn!(error = %e, "node id not released; its claim lapses by itself");
    }
}

/// Reads every sale's status from Redis into the local sales: new sales,
/// switches, the cluster-wide sold count and pool, due orders.
async fn poll_once(store: &RedisStore, shared: &Shared) {
    let ids = match store.sale_ids().await {
        Ok(ids) => ids,
        Err(e) => {
            debug!(error = %e, "poll failed");
            return;
        }
    };
    let now = now_s();
    for id in ids {
        let Ok(Some(status)) = store.status(&id).await else {
            continue;
        };
        let mode = shared.opts.mode;
        let shards = shared.opts.shards;
        let spec = status.spec.clone();
        let Ok(sale) = shared.sales.insert_with(&status.spec, || {
            Sale::with_local_units(spec.clone(), shards, local_units(mode, &spec))
        }) else {
            warn!(
                sale = id,
                "the sale's definition in Redis differs from this node's"
            );
            continue;
        };
        match status.switch {
            SaleSwitchState::Closed if !sale.is_closed() => {
                let _ = sale.apply_switch(Switch::Close);
                sale.stock.drain();
                let _ = store.return_lease(&id, shared.opts.node_id).await;
            }
            SaleSwitchState::Paused if !sale.is_paused() => {
                let _ = sale.apply_switch(Switch::Pause);
            }
            SaleSwitchState::Live if sale.is_paused() => {
                let _ = sale.apply_switch(Switch::Resume);
            }
            _ => {}
        }
        sale.set_sold(status.sold);
        if mode == StockMode::Leased {
            sale.set_pool_hint(status.pool);
            rebalance::read_tail(store, shared, &sale, &status).await;
        }
        if !shared.opts.expiry {
            continue;
        }
        if let Ok(due) = store.due(&id, now, 256).await {
            for order_id in due {
                let shard = fnv(order_id.as_bytes()) as usize % shards;
                shared.due[shard].lock().push(order_id);
            }
        }
    }
}

/// Units a node holds but does not sell strand the sale when the pool is
/// empty (other nodes see it sold out). A sale whose local units have not
/// moved for [`IDLE_LEASE`] while the pool is empty gives them back.
#[derive(Default)]
struct IdleLeases {
    /// Per sale: local units at the last look, and since when unchanged.
    seen: HashMap<String, (u64, tokio::time::Instant)>,
}

const IDLE_LEASE: Duration = Duration::from_secs(1);

impl IdleLeases {
    async fn return_unused(
        &mut self,
        store: &RedisStore,
        shared: &Shared,
        tx: &mpsc::UnboundedSender<Call>,
    ) {
        if shared.opts.mode != StockMode::Leased {
            return;
        }
        let now = tokio::time::Instant::now();
        for sale in shared.sales.all() {
            let units = sale.stock.available();
            if units == 0 || sale.pool_hint() > 0 {
                self.seen.remove(sale.id());
                continue;
            }
            let entry = self
                .seen
                .entry(sale.id().to_owned())
                .or_insert((units, now));
            if entry.0 != units {
                *entry = (units, now);
                continue;
            }
            if now.duration_since(entry.1) >= IDLE_LEASE {
                self.seen.remove(sale.id());
                // The units in the shards only: units in flight in a
                // reservation stay charged to the lease.
                lease_slot(&sale).gave_back.store(true, Ordering::Relaxed);
                let drained = sale.stock.drain();
                sale.set_pool_hint(drained);
                match store
                    .give_back(sale.id(), shared.opts.node_id, drained)
                    .await
                {
                    Ok(returned) => {
                        debug!(sale = sale.id(), drained, returned, "idle lease returned");
                        sale.set_pool_hint(returned);
                    }
                    Err(e) => {
                        warn!(sale = sale.id(), error = %e, "idle lease not returned");
                        rebalance::after_failed_give_back(tx, &sale, drained, &e);
                    }
                }
            }
        }
    }
}

/// Leases ahead of demand: a sale whose shards ran low while the pool has
/// units gets a lease before a buyer has to wait for one; only where
/// buyers took units since the last look (a node does not hoard units it
/// has no buyer for, which matters for small sales) and no other node
/// wants units.
#[derive(Default)]
struct TopUp {
    /// Per sale: the units in the shards at the last look.
    seen: HashMap<String, u64>,
}

impl TopUp {
    fn run(&mut self, store: &RedisStore, shared: &Arc<Shared>) {
        if shared.opts.mode != StockMode::Leased {
            return;
        }
        let now = now_s();
        for sale in shared.sales.all() {
            let units = sale.stock.available();
            let before = match self.seen.get_mut(sale.id()) {
                Some(seen) => Some(std::mem::replace(seen, units)),
                None => self.seen.insert(sale.id().to_owned(), units),
            };
            let slot = lease_slot(&sale);
            let gave_back = slot.gave_back.swap(false, Ordering::Relaxed);
            let demand = slot.demand.swap(false, Ordering::Relaxed)
                || (!gave_back && before.is_some_and(|before| units < before));
            let low = lease_want(sale.spec()) / 4;
            if !demand
                || slot.wanted.load(Ordering::Relaxed)
                || sale.pool_hint() == 0
                || sale.is_closed()
                || sale.is_paused()
                || now < sale.spec().starts_at
                || units > low
            {
                continue;
            }
            if !slot.in_flight.swap(true, Ordering::AcqRel) {
                let (store, shared) = (store.clone(), shared.clone());
                tokio::spawn(async move { lease(&store, &shared, &sale, 0, false).await });
            }
        }
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_carry_their_sale() {
        assert_eq!(sale_of("3-1795000000000000-phone-1111"), Some("phone-1111"));
        assert_eq!(sale_of("3-17-s"), Some("s"));
        assert_eq!(sale_of("3-17"), None);
        assert_eq!(sale_of("x-17-s"), None);
        assert_eq!(sale_of("1-2-"), None);
        assert_eq!(sale_of("-2-s"), None);
        let id = OrderIds::new(3, 0).next(Some("phone-1"));
        assert_eq!(sale_of(&id), Some("phone-1"), "{id}");
        assert_eq!(
            id.len(),
            "3-".len() + OrderIds::RANDOM_LEN + "-phone-1".len()
        );
    }

    #[test]
    fn retry_warnings_are_one_per_second_and_count_the_rest() {
        let log = LogThrottle::new();
        assert_eq!(log.warn_at(1), Some(0));
        assert_eq!(log.warn_at(2), None);
        assert_eq!(log.warn_at(900), None);
        assert_eq!(log.warn_at(1001), Some(2));
        assert_eq!(log.warn_at(1500), None);
        assert_eq!(log.warn_at(2001), Some(1));
    }

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
