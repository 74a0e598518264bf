//! The types a node and its stock authority speak: a sale's definition
//! ([`SaleSpec`]), its state and switches, orders and their statuses, a
//! buyer's attempt, order ids, and [`StockError`] with its stable codes.
//! They depend on nothing else of the crate but the hashes in `striped`,
//! so `sale`, `authority` and both authorities use them without importing
//! each other.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
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

/// An operator's runtime switch. Its one spelling: [`Switch::as_str`]
/// (`pause`, `resume`, `close`: the admin API's paths, `switch.lua`'s
/// argument) and [`Switch::recorded`] (`paused`, `resumed`, `closed`: the
/// order log's `sale_switched`, which (de)serialises it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    Pause,
    Resume,
    Close,
}

impl Switch {
    pub const ALL: [Switch; 3] = [Switch::Pause, Switch::Resume, Switch::Close];

    /// The operator's word: `pause`, `resume`, `close`.
    pub fn as_str(self) -> &'static str {
        match self {
            Switch::Pause => "pause",
            Switch::Resume => "resume",
            Switch::Close => "close",
        }
    }

    /// As the order log records it: `paused`, `resumed`, `closed`.
    pub fn recorded(self) -> &'static str {
        match self {
            Switch::Pause => "paused",
            Switch::Resume => "resumed",
            Switch::Close => "closed",
        }
    }
}

impl FromStr for Switch {
    type Err = UnknownName;

    /// The operator's word ([`Switch::as_str`]).
    fn from_str(text: &str) -> Result<Self, UnknownName> {
        find(&Switch::ALL, Switch::as_str, text)
    }
}

impl Serialize for Switch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.recorded())
    }
}

impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        find(&Switch::ALL, Switch::recorded, &text)
            .map_err(|_| serde::de::Error::custom(format!("unknown switch {text:?}")))
    }
}

/// Where the operator's switches leave a sale: `live`, `paused` or
/// `closed` ([`SaleSwitchState::as_str`]), as Redis's sale record and the
/// embedded snapshot hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaleSwitchState {
    Live,
    Paused,
    Closed,
}

impl SaleSwitchState {
    pub const ALL: [SaleSwitchState; 3] = [
        SaleSwitchState::Live,
        SaleSwitchState::Paused,
        SaleSwitchState::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SaleSwitchState::Live => "live",
            SaleSwitchState::Paused => "paused",
            SaleSwitchState::Closed => "closed",
        }
    }
}

impl FromStr for SaleSwitchState {
    type Err = UnknownName;

    fn from_str(text: &str) -> Result<Self, UnknownName> {
        find(&SaleSwitchState::ALL, SaleSwitchState::as_str, text)
    }
}

/// A change of an order. Its one spelling, [`OrderChange::as_str`]
/// (`reserved`, `paid`, `cancelled`, `expired`, `released`), is the one
/// Redis's not-yet-logged set holds (`order_id|change`, written by the Lua
/// scripts) and [`OrderStatus::as_str`] shares; the order log's event of
/// each change is made in one place (`queue::EventKind::order`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrderChange {
    /// `order_reserved`.
    Reserved,
    /// `order_paid`.
    Paid,
    /// `order_cancelled`.
    Cancelled,
    /// `order_expired`.
    Expired,
    /// `stock_released`: a compensation (cluster mode) released an order
    /// never acknowledged to its buyer; it reads `cancelled`.
    Released,
}

impl OrderChange {
    pub const ALL: [OrderChange; 5] = [
        OrderChange::Reserved,
        OrderChange::Paid,
        OrderChange::Cancelled,
        OrderChange::Expired,
        OrderChange::Released,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderChange::Reserved => "reserved",
            OrderChange::Paid => "paid",
            OrderChange::Cancelled => "cancelled",
            OrderChange::Expired => "expired",
            OrderChange::Released => "released",
        }
    }
}

impl FromStr for OrderChange {
    type Err = UnknownName;

    fn from_str(text: &str) -> Result<Self, UnknownName> {
        find(&OrderChange::ALL, OrderChange::as_str, text)
    }
}

impl AsRef<str> for OrderChange {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for OrderChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<OrderStatus> for OrderChange {
    /// The change that put an order in `status`.
    fn from(status: OrderStatus) -> Self {
        match status {
            OrderStatus::Reserved => OrderChange::Reserved,
            OrderStatus::Paid => OrderChange::Paid,
            OrderStatus::Cancelled => OrderChange::Cancelled,
            OrderStatus::Expired => OrderChange::Expired,
        }
    }
}

/// A name none of an enum's values is spelled as (no copy of it: parsing
/// a request's word allocates nothing, even when it fails).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a known name")]
pub struct UnknownName;

/// The value of `all` that `name` spells `text`.
fn find<T: Copy>(all: &[T], name: fn(T) -> &'static str, text: &str) -> Result<T, UnknownName> {
    all.iter()
        .copied()
        .find(|v| name(*v) == text)
        .ok_or(UnknownName)
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
    pub const ALL: [OrderStatus; 4] = [
        OrderStatus::Reserved,
        OrderStatus::Paid,
        OrderStatus::Cancelled,
        OrderStatus::Expired,
    ];

    /// `reserved`, `paid`, `cancelled`, `expired`: the name of the change
    /// that put an order there.
    pub fn as_str(self) -> &'static str {
        OrderChange::from(self).as_str()
    }

    /// Whether leaving `Reserved` for this status gives the units back.
    pub fn releases_stock(self) -> bool {
        matches!(self, OrderStatus::Cancelled | OrderStatus::Expired)
    }
}

impl FromStr for OrderStatus {
    type Err = UnknownName;

    fn from_str(text: &str) -> Result<Self, UnknownName> {
        find(&OrderStatus::ALL, OrderStatus::as_str, text)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_its_value() {
        for s in Switch::ALL {
            assert_eq!(s.as_str().parse(), Ok(s));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.recorded()));
            assert_eq!(serde_json::from_str::<Switch>(&json).unwrap(), s);
        }
        for s in SaleSwitchState::ALL {
            assert_eq!(s.as_str().parse(), Ok(s));
        }
        for c in OrderChange::ALL {
            assert_eq!(c.as_str().parse(), Ok(c));
        }
        for s in OrderStatus::ALL {
            assert_eq!(s.as_str().parse(), Ok(s));
            assert_eq!(OrderChange::from(s).as_str(), s.as_str());
        }
        // Each word belongs to its own enum only.
        assert_eq!("released".parse::<OrderStatus>(), Err(UnknownName));
        assert_eq!("paused".parse::<Switch>(), Err(UnknownName));
        assert!(serde_json::from_str::<Switch>("\"pause\"").is_err());
        assert_eq!("pause".parse::<SaleSwitchState>(), Err(UnknownName));
    }
}
