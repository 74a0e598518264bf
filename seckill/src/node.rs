//! The node's shared state ([`Node`]: config, stock authority, order log,
//! metrics) and each core's own ([`Core`]: its sale cache, admission queue
//! and connection counts), plus the journal replay that rebuilds the
//! embedded authority on start ([`restore`]: the snapshot, then the events
//! after it) and the compaction that folds sealed journal segments into
//! the snapshot ([`compact`], on the `seckill-compact` thread).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};

use queue::snapshot::{self, Snapshot};
use queue::{journal, Admission, Event, EventKind, Journal, JournalOptions, KafkaLog, OrderLog};
use stock::cluster::{ChangeLog, ClusterOptions, RedisAuthority, Relog, StockMode};
use stock::{EmbeddedAuthority, Order, OrderStatus, Sale, StockAuthority};

pub use crate::clock::{now_micros, now_ms, now_s};
use crate::config::{Config, StockModeSetting};
use crate::http::Request;
use crate::metrics::{CoreMetrics, Metrics};
use crate::ratelimit::RateLimits;
use crate::reqid::{self, RequestId, Trace};

/// Shared by every core of one node.
pub struct Node<A, L> {
    pub config: Config,
    pub authority: A,
    pub log: L,
    pub metrics: Metrics,
    admin_token: String,
    shutdown: AtomicBool,
    driver: OnceLock<&'static str>,
    /// Cluster mode: an order replayed from the shared authority (its key
    /// first used on another node, or that node's answer lost) is appended
    /// to the log again before it is answered, so no 200 names an order
    /// the log may lack (its node may have died before logging it).
    /// Consumers dedupe by order id.
    pub relog_replays: bool,
    failpoint: Option<Failpoint>,
    /// A fail-once failpoint has fired.
    failed: AtomicBool,
    /// Serialises the node's sale definitions and switches, from their
    /// check to their application, so that the order they reach the log
    /// in is the order they are applied in (a replay then rebuilds the
    /// same switch). An async lock: it is held across the log append; the
    /// admin path only, never a purchase.
    admin: tokio::sync::Mutex<()>,
}

/// A place where the node can be made to die on purpose, for the tests of
/// recovery (`SECKILL_FAILPOINT`; never set in production).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failpoint {
    /// Abort the process after a reservation is recorded by the stock
    /// authority and before its event is appended to the order log.
    AfterReserve,
    /// Fail (once) the order log append of the first order transition
    /// (pay, cancel, expiry), after the authority applied the move.
    TransitionLog,
    /// Fail (once) the order log append of the first replay of an order
    /// found in the shared authority (cluster mode).
    ReplayLog,
    /// Compaction: the new snapshot is written and synced to its temp file,
    /// not installed.
    CompactBeforeInstall,
    /// Compaction: the new snapshot is installed, the segments it covers
    /// are all still there.
    CompactAfterInstall,
    /// Compaction: the first covered segment is removed, the directory not
    /// yet synced.
    CompactMidDelete,
}

impl Failpoint {
    /// The failpoint `SECKILL_FAILPOINT` names, if any.
    pub fn from_env() -> Option<Failpoint> {
        match std::env::var("SECKILL_FAILPOINT").as_deref() {
            Ok("after_reserve") => Some(Failpoint::AfterReserve),
            Ok("transition_log") => Some(Failpoint::TransitionLog),
            Ok("replay_log") => Some(Failpoint::ReplayLog),
            Ok("compact_before_install") => Some(Failpoint::CompactBeforeInstall),
            Ok("compact_after_install") => Some(Failpoint::CompactAfterInstall),
            Ok("compact_mid_delete") => Some(Failpoint::CompactMidDelete),
            _ => None,
        }
    }

    /// Dies here if `set` is this failpoint.
    fn reach(set: Option<Failpoint>, at: Failpoint) {
        if set == Some(at) {
            tracing::error!(?at, "failpoint reached: aborting");
            std::process::abort();
        }
    }
}

/// What the journal replay found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub events: usize,
    pub sales: usize,
    pub orders: usize,
}

/// The embedded node: in-process authority, journal order log.
pub type EmbeddedNode = Node<EmbeddedAuthority, Journal>;

impl EmbeddedNode {
    /// Opens the journal in `config.data_dir`, replays it into a fresh
    /// embedded authority, and returns the node ready to serve.
    ///
    /// With `journal_segment_bytes` set, the journal seals full segments
    /// and the `seckill-compact` thread folds them into the snapshot
    /// (first those left sealed by the last run).
    pub fn open_embedded(
        config: Config,
        admin_token: String,
    ) -> anyhow::Result<(Arc<Self>, Replayed)> {
        let (seals, sealed) = mpsc::channel();
        let opts = JournalOptions {
            segment_bytes: config.journal_segment_bytes,
            on_seal: (config.journal_segment_bytes > 0).then_some(seals),
            ..JournalOptions::default()
        };
        create_data_dir(&config)?;
        let (journal, recovered) = Journal::recover(&config.data_dir, opts).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the journal in {}: {e}",
                config.data_dir.display()
            )
        })?;
        let authority = embedded_authority(&config);
        let replayed = restore(&authority, recovered.snapshot.as_ref(), &recovered.events)?;
        if config.journal_segment_bytes > 0 {
            start_compactor(config.clone(), sealed, !recovered.sealed.is_empty())?;
        }
        Ok((
            Arc::new(Node::new(config, authority, journal, admin_token)),
            replayed,
        ))
    }
}

/// An empty embedded authority as `config` sets it up.
fn embedded_authority(config: &Config) -> EmbeddedAuthority {
    EmbeddedAuthority::new(
        config.node_id,
        config.cores,
        config.idempotency_ttl_s,
        now_micros(),
    )
    .with_order_retention(config.order_retention_s)
}

/// Rebuilds the embedded authority from what the journal recovered: the
/// snapshot, then the events logged after it.
pub fn restore(
    authority: &EmbeddedAuthority,
    snapshot: Option<&Snapshot>,
    events: &[Event],
) -> anyhow::Result<Replayed> {
    if let Some(snapshot) = snapshot {
        let saved = serde_json::from_slice(&snapshot.state)
            .map_err(|e| anyhow::anyhow!("the snapshot cannot be decoded: {e}"))?;
        authority
            .restore_saved(saved)
            .map_err(|e| anyhow::anyhow!("the snapshot cannot be restored: {e}"))?;
    }
    replay(authority, events)
}

/// Folds the sealed journal segments of `config.data_dir` that the snapshot
/// does not cover yet into a new snapshot, then removes them; returns how
/// many were folded.
///
/// The fold runs in a fresh authority (the snapshot, then the segments'
/// events, then the retention and key TTLs at the current time), never in
/// the node's live one, so it needs no pause. Each step leaves files that
/// recover to the same state if the process dies right after it: the
/// snapshot goes to a temp file (synced) and is renamed over the old one
/// (directory synced); the segments it covers are skipped on recovery and
/// removed, here or then.
pub fn compact(config: &Config) -> anyhow::Result<usize> {
    let dir = &config.data_dir;
    let failpoint = Failpoint::from_env();
    let old = snapshot::read(dir)?;
    let covered = old.as_ref().map_or(0, |s| s.covers);
    let sealed: Vec<_> = journal::sealed_segments(dir)?
        .into_iter()
        .filter(|(gen, _)| *gen > covered)
        .collect();
    let Some(&(covers, _)) = sealed.last() else {
        return Ok(0);
    };
    let authority = embedded_authority(config);
    restore(&authority, old.as_ref(), &[])?;
    // One segment's events in memory at a time.
    for (_, path) in &sealed {
        replay_events(&authority, &journal::read_segment(path)?)?;
    }
    authority.finish_restore();
    authority.maintain(now_s());
    let state = serde_json::to_vec(&authority.save())?;
    snapshot::write_temp(dir, covers, &state)?;
    Failpoint::reach(failpoint, Failpoint::CompactBeforeInstall);
    snapshot::install(dir)?;
    Failpoint::reach(failpoint, Failpoint::CompactAfterInstall);
    journal::remove_sealed_upto(dir, covers, |_| {
        Failpoint::reach(failpoint, Failpoint::CompactMidDelete);
    })?;
    Ok(sealed.len())
}

/// Runs [`compact`] after every seal the journal reports (seals that queue
/// up meanwhile make one compaction), and once at start when `pending`.
/// A failed compaction leaves its segments for the next one.
fn start_compactor(
    config: Config,
    seals: mpsc::Receiver<u64>,
    pending: bool,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("seckill-compact".into())
        .spawn(move || {
            let mut due = pending;
            loop {
                if due {
                    let started = std::time::Instant::now();
                    match compact(&config) {
                        Ok(segments) => tracing::debug!(
                            segments,
                            ms = started.elapsed().as_millis() as u64,
                            "journal compacted"
                        ),
                        Err(e) => tracing::error!(
                            error = %e,
                            "journal compaction failed; the segments stay for the next one"
                        ),
                    }
                }
                // The journal's writer holds the sender: it is gone once
                // the journal is closed.
                if seals.recv().is_err() {
                    return;
                }
                while seals.try_recv().is_ok() {}
                due = true;
            }
        })?;
    Ok(())
}

/// A cluster node: Redis stock authority, journal order log.
pub type ClusterNode = Node<RedisAuthority, Journal>;

impl ClusterNode {
    /// Connects to Redis (`config.redis`), opens the journal, and returns
    /// the node. Redis holds the sales and orders, so the journal is not
    /// replayed into the authority: it only records what this node logged.
    pub fn open_cluster(config: Config, admin_token: String) -> anyhow::Result<Arc<Self>> {
        let journal = open_log_journal(&config)?;
        let authority = connect_redis(&config)?;
        // Changes no node logged (its node died before its append, or the
        // append failed and no one repeated the move) reach this journal.
        authority
            .reconcile_into(Arc::new(JournalChanges(journal.clone())))
            .map_err(|e| anyhow::anyhow!("cannot start the reconciler: {e}"))?;
        Ok(Arc::new(Node::new(config, authority, journal, admin_token)))
    }
}

/// The reconciler's way into a cluster node's journal.
struct JournalChanges(Journal);

impl ChangeLog for JournalChanges {
    fn append(
        &self,
        relog: &Relog,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        let durable = self.0.append(&change_event(relog));
        Box::pin(async move { durable.await.map_err(|e| e.to_string()) })
    }
}

/// The event of a change the reconciler logs, from Redis's record.
fn change_event(relog: &Relog) -> Event {
    let kind = EventKind::order(
        relog.change,
        &relog.order,
        relog.key.clone(),
        relog.fingerprint.clone(),
    );
    Event::new(now_ms(), kind)
}

/// A cluster node with the Kafka order log: Redis stock authority, order
/// events in a Kafka topic; the settler (`seckill settle`) runs expiry and
/// reconciliation.
pub type KafkaNode = Node<RedisAuthority, KafkaLog>;

impl KafkaNode {
    /// Connects to Kafka (creating the order topic if missing) and Redis,
    /// and returns the node.
    pub fn open_kafka(config: Config, admin_token: String) -> anyhow::Result<Arc<Self>> {
        let opts = config
            .kafka_options()
            .ok_or_else(|| anyhow::anyhow!("Kafka mode needs --kafka"))?;
        let log = KafkaLog::connect(&opts)
            .map_err(|e| anyhow::anyhow!("cannot use Kafka at {}: {e}", opts.brokers))?;
        let authority = connect_redis(&config)?;
        Ok(Arc::new(Node::new(config, authority, log, admin_token)))
    }
}

/// The Redis stock authority for `config`. With a Kafka order log, the
/// settler expires orders and every order change is tracked until the log
/// shows it.
fn connect_redis(config: &Config) -> anyhow::Result<RedisAuthority> {
    let url = config
        .redis
        .clone()
        .ok_or_else(|| anyhow::anyhow!("cluster mode needs --redis"))?;
    let mut opts = ClusterOptions::new(config.node_id, config.cores);
    opts.mode = match config.stock_mode {
        StockModeSetting::Leased => StockMode::Leased,
        StockModeSetting::PerRequest => StockMode::PerRequest,
    };
    opts.lease_ttl = std::time::Duration::from_secs(config.lease_ttl_s);
    opts.call_timeout = std::time::Duration::from_millis(config.redis_timeout_ms);
    opts.min_replicas = config.redis_min_replicas;
    // As in embedded mode, 0 forgets a key at once (to the cluster
    // authority 0 means for ever).
    opts.key_ttl_s = config.idempotency_ttl_s.max(1);
    opts.journal_grace = std::time::Duration::from_secs(config.journal_grace_s);
    if config.kafka.is_some() {
        opts.expiry = false;
        opts.track_log = true;
        opts.kafka_timeout_ms = config.kafka_timeout_ms;
    }
    RedisAuthority::connect(&url, opts, now_micros())
        .map_err(|e| anyhow::anyhow!("cannot use Redis at {url}: {e}"))
}

fn create_data_dir(config: &Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", config.data_dir.display()))
}

/// Opens the journal in `config.data_dir` as the node's share of the order
/// log (cluster mode: Redis holds the state): sealed every
/// `journal_segment_bytes`, the segments kept and never read at start.
fn open_log_journal(config: &Config) -> anyhow::Result<Journal> {
    create_data_dir(config)?;
    let opts = JournalOptions {
        segment_bytes: config.journal_segment_bytes,
        ..JournalOptions::default()
    };
    Journal::open_log(&config.data_dir, opts).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the journal in {}: {e}",
            config.data_dir.display()
        )
    })
}

impl<A: StockAuthority, L: OrderLog> Node<A, L> {
    pub fn new(config: Config, authority: A, log: L, admin_token: String) -> Self {
        let failpoint = Failpoint::from_env();
        Node {
            metrics: Metrics::new(config.cores),
            relog_replays: config.redis.is_some(),
            config,
            authority,
            log,
            admin_token,
            shutdown: AtomicBool::new(false),
            driver: OnceLock::new(),
            failpoint,
            failed: AtomicBool::new(false),
            admin: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether the fail-once failpoint `at` fires now (the first time it is
    /// reached only; tests of recovery only).
    pub fn fails_once(&self, at: Failpoint) -> bool {
        self.failpoint == Some(at) && !self.failed.swap(true, Ordering::Relaxed)
    }

    /// Waits for this node's turn to change a sale's definition or switch;
    /// hold the guard until the change is applied.
    pub async fn admin_change(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.admin.lock().await
    }

    /// Dies here if the failpoint `at` is set (tests of recovery only).
    pub fn failpoint(&self, at: Failpoint) {
        Failpoint::reach(self.failpoint, at);
    }

    /// Whether `header` (the Authorization value) carries the admin token.
    /// Compared in constant time.
    pub fn is_admin(&self, header: Option<&[u8]>) -> bool {
        let Some(token) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let expected = self.admin_token.as_bytes();
        let token = token.trim_ascii();
        token.len() == expected.len()
            && token
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// Asks every core to stop accepting and finish what is in flight.
    pub fn shut_down(&self) {
        self.shutdown.store(true, Ordering::Release);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// Records which monoio driver the cores run.
    pub fn set_driver(&self, name: &'static str) {
        let _ = self.driver.set(name);
    }

    pub fn driver(&self) -> &'static str {
        self.driver.get().copied().unwrap_or("unknown")
    }
}

/// One core's state. Not shared: it lives on its core's runtime thread.
pub struct Core<A, L> {
    pub id: usize,
    pub node: Arc<Node<A, L>>,
    pub admission: Admission,
    /// Per-user and per-IP purchase rate limits of this core.
    pub limits: RateLimits,
    sales: RefCell<SaleCache>,
    connections: Cell<usize>,
    inflight: Cell<usize>,
    /// The next generated request id's counter (`reqid::RequestId`).
    request_seq: Cell<u64>,
}

/// A sale as a core holds it: cloning the `Rc` is a core-local increment,
/// so a request that keeps the sale across an `.await` writes no shared
/// cache line (cloning the `Arc` would).
pub type SaleRef = Rc<Arc<Sale>>;

#[derive(Default)]
struct SaleCache {
    epoch: Option<u64>,
    sales: HashMap<Box<str>, SaleRef>,
}

impl<A: StockAuthority, L: OrderLog> Core<A, L> {
    pub fn new(id: usize, node: Arc<Node<A, L>>) -> Self {
        let admission = Admission::new(node.config.admission_tokens, node.config.admission_queue);
        let (user, ip) = node.config.rate_limits();
        let limits = RateLimits::new(user, ip, node.config.rate_limit_max_tracked);
        Core {
            id,
            node,
            admission,
            limits,
            sales: RefCell::new(SaleCache::default()),
            connections: Cell::new(0),
            inflight: Cell::new(0),
            // Start time in ms times 2^16: ids of a restarted node start
            // past every id the last run could have made.
            request_seq: Cell::new(now_ms() << 16),
        }
    }

    /// The ids of `req`: its valid `X-Request-Id`, else one made from this
    /// core's counter; its `traceparent` when well formed. No allocation.
    pub fn trace<'r>(&self, req: &Request<'r>) -> Trace<'r> {
        let id = req
            .request_id
            .and_then(RequestId::from_client)
            .unwrap_or_else(|| {
                let seq = self.request_seq.get();
                self.request_seq.set(seq.wrapping_add(1));
                RequestId::generated(self.node.config.node_id, self.id, seq)
            });
        Trace {
            id,
            traceparent: req.traceparent.and_then(reqid::valid_traceparent),
        }
    }

    pub fn metrics(&self) -> &CoreMetrics {
        self.node.metrics.core(self.id)
    }

    /// Runs `f` on the sale, looked up in this core's cache without
    /// touching any shared counter (no `Arc` clone). The cache is refreshed
    /// when the authority's set of sales changed.
    pub fn with_sale<R>(&self, sale_id: &str, f: impl FnOnce(&SaleRef) -> R) -> Option<R> {
        let epoch = self.node.authority.sales_epoch();
        let mut cache = self.sales.borrow_mut();
        if cache.epoch != Some(epoch) {
            cache.sales = self
                .node
                .authority
                .sales()
                .into_iter()
                .map(|s| (Box::<str>::from(s.id()), Rc::new(s)))
                .collect();
            cache.epoch = Some(epoch);
        }
        cache.sales.get(sale_id).map(f)
    }

    /// Counts a connection in; `false` when the node-wide cap (split evenly
    /// over the cores) is reached.
    pub fn try_open_connection(&self) -> bool {
        let cap = (self.node.config.max_connections / self.node.config.cores).max(1);
        if self.connections.get() >= cap {
            self.metrics().connection_refused();
            return false;
        }
        self.connections.set(self.connections.get() + 1);
        self.metrics().connection_opened();
        true
    }

    pub fn close_connection(&self) {
        self.connections.set(self.connections.get() - 1);
        self.metrics().connection_closed();
    }

    /// Marks a request in flight until the guard drops (graceful stop waits
    /// for these).
    pub fn begin_request(&self) -> InFlight<'_> {
        self.inflight.set(self.inflight.get() + 1);
        InFlight(&self.inflight)
    }

    pub fn inflight(&self) -> usize {
        self.inflight.get()
    }
}

/// A request in flight on a core.
pub struct InFlight<'a>(&'a Cell<usize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Rebuilds the embedded authority from the journal's events, in order.
pub fn replay(authority: &EmbeddedAuthority, events: &[Event]) -> anyhow::Result<Replayed> {
    let out = replay_events(authority, events)?;
    authority.finish_restore();
    Ok(out)
}

/// Applies `events` in order, without ending the replay (more may follow).
fn replay_events(authority: &EmbeddedAuthority, events: &[Event]) -> anyhow::Result<Replayed> {
    let mut out = Replayed {
        events: events.len(),
        ..Replayed::default()
    };
    for (i, event) in events.iter().enumerate() {
        let at_s = event.at / 1000;
        let result = match &event.kind {
            EventKind::SaleCreated { sale_id, .. } => {
                // A second definition of a live id lost the race when it was
                // made (it was answered 409): the first one stands.
                match event.kind.sale_spec() {
                    Some(spec) if authority.sale(sale_id).is_none() => {
                        out.sales += 1;
                        authority.restore_sale(spec)
                    }
                    _ => Ok(()),
                }
            }
            EventKind::SaleSwitched { sale_id, switch } => {
                authority.restore_switch(sale_id, *switch)
            }
            EventKind::OrderReserved {
                order_id,
                sale_id,
                user_id,
                quantity,
                expires_at,
                idempotency_key,
                fingerprint,
            } => {
                out.orders += 1;
                let order = Order {
                    order_id: order_id.clone(),
                    sale_id: sale_id.clone(),
                    user_id: user_id.clone(),
                    quantity: *quantity,
                    status: OrderStatus::Reserved,
                    expires_at: *expires_at,
                    shard: shard_of(order_id, authority.shards()),
                };
                let key = idempotency_key.clone().zip(
                    fingerprint
                        .as_deref()
                        .and_then(|f| u64::from_str_radix(f, 16).ok()),
                );
                authority.restore_order(order, key, at_s)
            }
            EventKind::OrderPaid { order_id, .. } => {
                authority.restore_transition(order_id, OrderStatus::Paid, at_s)
            }
            // The embedded node never writes `stock_released`; were one in
            // a journal, it would mean the same as a cancel.
            EventKind::OrderCancelled { order_id, .. }
            | EventKind::StockReleased { order_id, .. } => {
                authority.restore_transition(order_id, OrderStatus::Cancelled, at_s)
            }
            EventKind::OrderExpired { order_id, .. } => {
                authority.restore_transition(order_id, OrderStatus::Expired, at_s)
            }
        };
        result.map_err(|e| anyhow::anyhow!("journal record {i} cannot be replayed: {e}"))?;
    }
    Ok(out)
}

fn shard_of(order_id: &str, shards: usize) -> usize {
    order_id
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize))
        % shards
}
