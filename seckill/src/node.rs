//! The node's shared state ([`Node`]: config, stock authority, order log,
//! metrics) and each core's own ([`Core`]: its sale cache, admission queue
//! and connection counts), plus the journal replay that rebuilds the
//! embedded authority on start.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use queue::{Admission, Event, EventKind, Journal, JournalOptions, KafkaLog, OrderLog, SaleSwitch};
use stock::cluster::{Change, ChangeLog, ClusterOptions, RedisAuthority, Relog, StockMode};
use stock::{EmbeddedAuthority, Order, OrderStatus, Sale, SaleSpec, StockAuthority, Switch};

use crate::config::{Config, StockModeSetting};
use crate::metrics::{CoreMetrics, Metrics};
use crate::ratelimit::RateLimits;

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
    pub fn open_embedded(
        config: Config,
        admin_token: String,
    ) -> anyhow::Result<(Arc<Self>, Replayed)> {
        let (journal, events) = open_journal(&config)?;
        let authority = EmbeddedAuthority::new(
            config.node_id,
            config.cores,
            config.idempotency_ttl_s,
            now_micros(),
        );
        let replayed = replay(&authority, &events)?;
        Ok((
            Arc::new(Node::new(config, authority, journal, admin_token)),
            replayed,
        ))
    }
}

/// A cluster node: Redis stock authority, journal order log.
pub type ClusterNode = Node<RedisAuthority, Journal>;

impl ClusterNode {
    /// Connects to Redis (`config.redis`), opens the journal, and returns
    /// the node. Redis holds the sales and orders, so the journal is not
    /// replayed into the authority: it only records what this node logged.
    pub fn open_cluster(config: Config, admin_token: String) -> anyhow::Result<Arc<Self>> {
        let (journal, _) = open_journal(&config)?;
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
    let o = &relog.order;
    let (order_id, sale_id, user_id, quantity) = (
        o.order_id.clone(),
        o.sale_id.clone(),
        o.user_id.clone(),
        o.quantity,
    );
    let kind = match relog.change {
        Change::Reserved => EventKind::OrderReserved {
            order_id,
            sale_id,
            user_id,
            quantity,
            expires_at: o.expires_at,
            idempotency_key: relog.key.clone(),
            fingerprint: relog.fingerprint.clone(),
        },
        Change::Paid => EventKind::OrderPaid {
            order_id,
            sale_id,
            user_id,
            quantity,
        },
        Change::Cancelled => EventKind::OrderCancelled {
            order_id,
            sale_id,
            user_id,
            quantity,
        },
        Change::Expired => EventKind::OrderExpired {
            order_id,
            sale_id,
            user_id,
            quantity,
        },
        Change::Released => EventKind::StockReleased {
            order_id,
            sale_id,
            user_id,
            quantity,
        },
    };
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
    // As in embedded mode, 0 forgets a key at once (to the cluster
    // authority 0 means for ever).
    opts.key_ttl_s = config.idempotency_ttl_s.max(1);
    opts.journal_grace = std::time::Duration::from_secs(config.journal_grace_s);
    if config.kafka.is_some() {
        opts.expiry = false;
        opts.track_log = true;
    }
    RedisAuthority::connect(&url, opts, now_micros())
        .map_err(|e| anyhow::anyhow!("cannot use Redis at {url}: {e}"))
}

/// Opens the journal in `config.data_dir` and returns its events.
fn open_journal(config: &Config) -> anyhow::Result<(Journal, Vec<Event>)> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        anyhow::anyhow!("cannot create data dir {}: {e}", config.data_dir.display())
    })?;
    Journal::open(&config.data_dir, JournalOptions::default()).map_err(|e| {
        anyhow::anyhow!(
            "cannot open the journal in {}: {e}",
            config.data_dir.display()
        )
    })
}

impl<A: StockAuthority, L: OrderLog> Node<A, L> {
    pub fn new(config: Config, authority: A, log: L, admin_token: String) -> Self {
        let failpoint = match std::env::var("SECKILL_FAILPOINT").as_deref() {
            Ok("after_reserve") => Some(Failpoint::AfterReserve),
            Ok("transition_log") => Some(Failpoint::TransitionLog),
            _ => None,
        };
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
        }
    }

    /// Whether the fail-once failpoint `at` fires now (the first time it is
    /// reached only; tests of recovery only).
    pub fn fails_once(&self, at: Failpoint) -> bool {
        self.failpoint == Some(at) && !self.failed.swap(true, Ordering::Relaxed)
    }

    /// Dies here if the failpoint `at` is set (tests of recovery only).
    pub fn failpoint(&self, at: Failpoint) {
        if self.failpoint == Some(at) {
            tracing::error!(?at, "failpoint reached: aborting");
            std::process::abort();
        }
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
    let mut out = Replayed {
        events: events.len(),
        ..Replayed::default()
    };
    for (i, event) in events.iter().enumerate() {
        let at_s = event.at / 1000;
        let result = match &event.kind {
            EventKind::SaleCreated {
                sale_id,
                stock,
                per_user_limit,
                starts_at,
                ends_at,
                payment_timeout_s,
            } => {
                let spec = SaleSpec {
                    sale_id: sale_id.clone(),
                    stock: *stock,
                    per_user_limit: *per_user_limit,
                    starts_at: *starts_at,
                    ends_at: *ends_at,
                    payment_timeout_s: *payment_timeout_s,
                };
                // A second definition of a live id lost the race when it was
                // made (it was answered 409): the first one stands.
                if authority.sale(sale_id).is_none() {
                    out.sales += 1;
                    authority.restore_sale(spec)
                } else {
                    Ok(())
                }
            }
            EventKind::SaleSwitched { sale_id, switch } => {
                let switch = match switch {
                    SaleSwitch::Paused => Switch::Pause,
                    SaleSwitch::Resumed => Switch::Resume,
                    SaleSwitch::Closed => Switch::Close,
                };
                authority.restore_switch(sale_id, switch)
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
                authority.restore_transition(order_id, OrderStatus::Paid)
            }
            // The embedded node never writes `stock_released`; were one in
            // a journal, it would mean the same as a cancel.
            EventKind::OrderCancelled { order_id, .. }
            | EventKind::StockReleased { order_id, .. } => {
                authority.restore_transition(order_id, OrderStatus::Cancelled)
            }
            EventKind::OrderExpired { order_id, .. } => {
                authority.restore_transition(order_id, OrderStatus::Expired)
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

/// Unix time in seconds.
pub fn now_s() -> u64 {
    now_micros() / 1_000_000
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    now_micros() / 1_000
}

/// Unix time in microseconds.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
