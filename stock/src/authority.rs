//! The stock authority seam: what the node asks of whoever accounts for
//! every unit sold (the in-process [`crate::embedded::EmbeddedAuthority`], or
//! Redis + Lua in cluster mode). The types both sides speak are in
//! [`crate::model`] (and re-exported here).
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
use std::sync::Arc;

pub use crate::model::{
    Attempt, KeyLookup, Order, OrderChange, OrderIds, OrderStatus, SaleSpec, SaleState,
    SaleSwitchState, StockError, Switch, UnknownName,
};
use crate::sale::Sale;
use crate::Units;

/// What `begin_transition` decided.
pub enum Transition<P> {
    /// The order already is in the requested status: answer it unchanged.
    Unchanged(Order),
    /// The move is allowed; `order` is the order as it will be once the
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
