//! The types a node and its stock authority speak: a sale's definition
//! ([`SaleSpec`]), its state and switches, orders and their statuses, a
//! buyer's attempt, order ids, and [`StockError`] with its stable codes.
//! They depend on nothing else of the crate but the hashes in `striped`,
//! so `sale`, `authority` and both authorities use them without importing
//! each other.

use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

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

/// One order. `expires_at` is Unix seconds.
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
