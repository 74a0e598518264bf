//! The stock authority seam: what the node asks of whoever accounts for
//! every unit sold (the in-process [`crate::embedded::EmbeddedAuthority`], or
//! Redis + Lua in cluster mode), and the types both sides speak.
//!
//! A purchase goes through the authority in two phases so that the order log
//! can sit between them:
//!
//! 1. [`StockAuthority::reserve`] checks and records the per-user limit and
//!    the idempotency key for units already taken from a local shard, and
//!    returns a pending reservation (or the earlier order, for a replay).
//! 2. Once the order's `order_reserved` record is durable in the order log,
//!    [`StockAuthority::confirm`] makes it final; if the log failed,
//!    [`StockAuthority::abort`] gives everything back.
//!
//! Order transitions (pay, cancel, expire) follow the same shape:
//! [`StockAuthority::begin_transition`] then `finish_transition` once the
//! event is durable, or `abort_transition`.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::sale::Sale;
use crate::Units;

/// A sale as the operator defines it. Times are Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaleSpec {
    pub sale_id: String,
    pub stock: u64,
    pub per_user_limit: u32,
    pub starts_at: u64,
    pub ends_at: Option<u64>,
    pub payment_timeout_s: u64,
    /// Only buyers whose token is a ticket for this sale (its `sale`
    /// claim) may buy.
    pub ticket_required: bool,
}

/// Names orders so that nobody can guess another buyer's: the part beside
/// the node prefix is 80 bits of SHA-256(secret ‖ counter), the secret
/// drawn from the kernel at start (a keyed PRF: without the secret, one id
/// says nothing about the next). 16 characters of base 32 (`0-9a-v`), no
/// `-`, so ids stay short and split cleanly.
pub struct OrderIds {
    node_id: u32,
    secret: [u8; 32],
    next: AtomicU64,
}

impl OrderIds {
    /// Characters of the random part.
    pub const RANDOM_LEN: usize = 16;

    /// The counter starts at `start` (the clock, by habit: neither
    /// uniqueness nor secrecy depends on it). Panics if the kernel gives no
    /// randomness (a node must not start without it: its order ids would be
    /// guessable).
    pub fn new(node_id: u32, start: u64) -> Self {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).expect("the kernel's random source");
        OrderIds {
            node_id,
            secret,
            next: AtomicU64::new(start),
        }
    }

    /// `{node}-{random}`, with `-{sale}` appended when `sale` is given
    /// (cluster ids carry their sale: Redis keys are per sale).
    pub fn next(&self, sale: Option<&str>) -> String {
        use std::fmt::Write as _;
        const DIGITS: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let hash = Sha256::new()
            .chain_update(self.secret)
            .chain_update(n.to_le_bytes())
            .finalize();
        let mut bits = u128::from_le_bytes(hash[..16].try_into().expect("16 bytes"));
        let mut random = [0u8; Self::RANDOM_LEN];
        for c in &mut random {
            *c = DIGITS[(bits & 31) as usize];
            bits >>= 5;
        }
        let random = std::str::from_utf8(&random).expect("ASCII digits");
        let mut id = String::with_capacity(48);
        let _ = write!(id, "{}-{random}", self.node_id);
        if let Some(sale) = sale {
            id.push('-');
            id.push_str(sale);
        }
        id
    }
}

/// The state shown by `GET /sales/{id}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaleState {
    Scheduled,
    Open,
    SoldOut,
    Paused,
    Closed,
}

impl SaleState {
    pub fn as_str(self) -> &'static str {
        match self {
            SaleState::Scheduled => "scheduled",
            SaleState::Open => "open",
            SaleState::SoldOut => "sold_out",
            SaleState::Paused => "paused",
            SaleState::Closed => "closed",
        }
    }
}

/// An operator's runtime switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    Pause,
    Resume,
    Close,
}

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    Reserved,
    Paid,
    Cancelled,
    Expired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Reserved => "reserved",
            OrderStatus::Paid => "paid",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
        }
    }

    /// Whether leaving `Reserved` for this status gives the units back.
    pub fn releases_stock(self) -> bool {
        matches!(self, OrderStatus::Cancelled | OrderStatus::Expired)
    }
}

/// One order. `expires_at` and `created_at` are Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Order {
    pub order_id: String,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: u32,
    pub status: OrderStatus,
    pub expires_at: u64,
    /// The shard (core) its units return to when released.
    pub shard: usize,
}

/// A buyer's request as the authority sees it.
#[derive(Clone, Copy, Debug)]
pub struct Attempt<'a> {
    pub user_id: &'a str,
    pub quantity: u32,
    pub idempotency_key: Option<&'a str>,
    /// Unix seconds.
    pub now: u64,
    /// The core (shard) the request runs on; released units return there.
    pub core: usize,
}

impl Attempt<'_> {
    /// A stable 64-bit hash of what an Idempotency-Key is bound to: the sale,
    /// the user and the quantity. Stable across builds and restarts
    /// (FNV-1a), because it is stored in the order log.
    pub fn fingerprint(&self, sale_id: &str) -> u64 {
        let mut h = crate::striped::Fnv::default();
        h.write(sale_id.as_bytes());
        h.write(&[0]);
        h.write(self.user_id.as_bytes());
        h.write(&[0]);
        h.write(&self.quantity.to_le_bytes());
        h.finish()
    }
}

/// What an Idempotency-Key lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyLookup {
    /// The key is new.
    Unused,
    /// The key already produced this order: answer it again.
    Replay(Order),
}

/// Errors of the stock authority; each carries the stable code of
/// the error table of docs/api.md.
#[derive(Debug, thiserror::Error)]
pub enum StockError {
    #[error("no such sale")]
    SaleNotFound,
    #[error("no such order")]
    OrderNotFound,
    #[error("the sale is not open")]
    SaleNotOpen,
    #[error("no unit is left")]
    SoldOut,
    #[error("the user already holds the per-user limit")]
    LimitExceeded,
    #[error("a request with this Idempotency-Key is still being processed")]
    InProgress,
    #[error("this Idempotency-Key was used with a different request")]
    KeyReused,
    #[error("{0}")]
    InvalidState(&'static str),
    #[error("the stock authority is unavailable: {0}")]
    Unavailable(String),
    /// The call may or may not have happened (a timed-out backend call); the
    /// caller must reconcile by order id, never guess.
    #[error("the outcome is undetermined: {0}")]
    Undetermined(String),
}

impl StockError {
    /// The stable error code carried by the HTTP body.
    pub fn code(&self) -> &'static str {
        match self {
            StockError::SaleNotFound | StockError::OrderNotFound => "not_found",
            StockError::SaleNotOpen => "sale_not_open",
            StockError::SoldOut => "sold_out",
            StockError::LimitExceeded => "limit_exceeded",
            StockError::InProgress => "in_progress",
            StockError::KeyReused => "idempotency_key_reused",
            StockError::InvalidState(_) => "invalid_state",
            StockError::Unavailable(_) | StockError::Undetermined(_) => "unavailable",
        }
    }

    /// Whether the same request may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StockError::InProgress | StockError::Unavailable(_) | StockError::Undetermined(_)
        )
    }
}

/// What `begin_transition` decided.
pub enum Transition<P> {
    /// The order already is in the requested status: answer it unchanged.
    Unchanged(Order),
    /// The move is allowed; `event_order` is the order as it will be once the
    /// move's event is durable.
    Pending { order: Order, pending: P },
}

impl<P> fmt::Debug for Transition<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transition::Unchanged(o) => f.debug_tuple("Unchanged").field(o).finish(),
            Transition::Pending { order, .. } => {
                f.debug_struct("Pending").field("order", order).finish()
            }
        }
    }
}

/// What `reserve` decided.
pub enum Reservation<P> {
    /// A new order, pending until its record is durable.
    New { order: Order, pending: P },
    /// The Idempotency-Key already produced this order.
    Replay(Order),
}

/// The stock authority. Implementations: the embedded, in-process one
/// ([`crate::embedded::EmbeddedAuthority`]); Redis + Lua in cluster mode.
///
/// Methods that may need a backend round trip return futures; the embedded
/// authority answers them at once. None of them may block the calling core.
pub trait StockAuthority: Send + Sync + 'static {
    /// A reservation between `reserve` and `confirm`/`abort`.
    type PendingOrder<'a>
    where
        Self: 'a;
    /// A transition between `begin_transition` and `finish`/`abort`.
    type PendingTransition;

    /// Creates a sale and pre-loads its stock. Creating a sale that exists
    /// with the same spec is a no-op; with another spec it is refused.
    fn create_sale(&self, spec: SaleSpec) -> impl Future<Output = Result<Arc<Sale>, StockError>>;
    /// Applies an operator's switch.
    fn switch(
        &self,
        sale_id: &str,
        switch: Switch,
    ) -> impl Future<Output = Result<Arc<Sale>, StockError>>;
    /// The sale, if it exists (a cheap lookup; callers cache it per core).
    fn sale(&self, sale_id: &str) -> Option<Arc<Sale>>;
    /// Changes whenever the set of sales changes, so per-core caches know to
    /// refresh.
    fn sales_epoch(&self) -> u64;
    /// Every sale, to refresh a per-core cache.
    fn sales(&self) -> Vec<Arc<Sale>>;

    /// What an Idempotency-Key already stands for, before any stock is taken
    /// (so a retry after sell-out still gets its order back).
    fn lookup_key(
        &self,
        sale: &Sale,
        attempt: &Attempt<'_>,
    ) -> impl Future<Output = Result<KeyLookup, StockError>>;
    /// A keyed request is about to be refused (sold out, not open) and
    /// [`StockAuthority::lookup_key`] did not know its key: asks the record
    /// of every node (Redis) what the key stands for, so that a retry gets
    /// its order on any node, before or after sell-out, pause, close or a
    /// restart. A replay found here is never compensated away. An authority
    /// whose `lookup_key` already knows every key answers `Unused` (the
    /// default).
    fn recall_key(
        &self,
        sale: &Sale,
        attempt: &Attempt<'_>,
    ) -> impl Future<Output = Result<KeyLookup, StockError>> {
        let _ = (sale, attempt);
        std::future::ready(Ok(KeyLookup::Unused))
    }
    /// A replay that [`StockAuthority::reserve`] or
    /// [`StockAuthority::recall_key`] found was logged and is answered 200
    /// now: later retries of its key may be answered from memory. Only
    /// after the log append: a replay whose append failed must be logged by
    /// its next retry, not answered from memory. The default remembers
    /// nothing.
    fn replay_answered(&self, sale: &Sale, attempt: &Attempt<'_>, order: &Order) {
        let _ = (sale, attempt, order);
    }
    /// Called when the core's shard and its siblings are dry: brings more
    /// units from wherever the authority keeps them (a lease from the
    /// cluster pool) and takes `qty` of them for `core`. Answers `SoldOut`
    /// without a backend call when the pool is known to be empty, so
    /// backend work stays bounded by the stock, not by the traffic.
    fn refill<'a>(
        &'a self,
        sale: &'a Sale,
        core: usize,
        qty: u32,
    ) -> impl Future<Output = Result<Units<'a>, StockError>>;
    /// Checks and records the per-user limit and the Idempotency-Key for
    /// `units` already taken from a local shard, and names the order.
    fn reserve<'a>(
        &'a self,
        sale: &'a Sale,
        attempt: &Attempt<'_>,
        units: Units<'a>,
    ) -> impl Future<Output = Result<Reservation<Self::PendingOrder<'a>>, StockError>>;
    /// The order's record is durable: make the reservation final.
    fn confirm(&self, pending: Self::PendingOrder<'_>);
    /// The order log failed: give the units, the limit and the key back.
    fn abort(&self, pending: Self::PendingOrder<'_>);

    /// The order, with its current status.
    fn order(&self, order_id: &str) -> impl Future<Output = Result<Order, StockError>>;
    /// Starts moving a reserved order to `to` (`Paid`, `Cancelled` or
    /// `Expired`). Repeating a move that already happened is `Unchanged`; a
    /// move the order can no longer make is `InvalidState`.
    fn begin_transition(
        &self,
        order_id: &str,
        to: OrderStatus,
        now: u64,
    ) -> impl Future<Output = Result<Transition<Self::PendingTransition>, StockError>>;
    /// The transition's event is durable: apply it (cancel and expiry return
    /// the units exactly once).
    fn finish_transition(&self, pending: Self::PendingTransition) -> Order;
    /// The transition's event could not be made durable: undo the start.
    fn abort_transition(&self, pending: Self::PendingTransition);

    /// Reserved orders whose payment timeout passed by `now`, among those
    /// `shard` looks after; the node expires them. An authority whose
    /// expiry runs elsewhere (the settler, in cluster mode) yields none.
    fn due_expiries(&self, shard: usize, now: u64, out: &mut Vec<String>);
    /// Puts back an order whose expiry could not be recorded, to try again.
    fn retry_expiry(&self, order_id: &str, at: u64);
    /// Housekeeping, about once a second: forget idempotency records whose
    /// TTL passed. Returns how many were forgotten.
    fn maintain(&self, now: u64) -> usize;
    /// The node is stopping and its cores have drained: give back what it
    /// holds (unsold leased units) and stop background work. Blocks.
    fn close(&self);
}
