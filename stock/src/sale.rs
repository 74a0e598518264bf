//! One sale as a node holds it: the operator's spec, the per-core stock
//! shards, the runtime switch and the sold count.
//!
//! PERFORMANCE-CRITICAL PATH: `Sale::gate` and `ShardedStock::take` run
//! on every purchase. Banned here: locks on the read path, allocation,
//! logging.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use crate::model::{SaleSpec, SaleState, StockError, Switch};
use crate::striped::Striped;
use crate::ShardedStock;

/// Milliseconds on this process's monotonic clock (since its first read).
pub fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

const LIVE: u8 = 0;
const PAUSED: u8 = 1;
const CLOSED: u8 = 2;

/// One sale on this node.
pub struct Sale {
    spec: SaleSpec,
    /// The units this node may sell, one shard per core.
    pub stock: ShardedStock,
    switch: AtomicU8,
    /// Units in `reserved` or `paid` orders: node-wide in embedded mode,
    /// cluster-wide (as last read from Redis) in cluster mode.
    sold: AtomicU64,
    /// Units the stock authority may still lease to this node (the cluster
    /// pool as last seen); always 0 in embedded mode, where the shards hold
    /// everything.
    pool_hint: AtomicU64,
    /// Units leased to other nodes and not yet sold (cluster mode, as last
    /// seen); always 0 in embedded mode. Dry shards with both hints at 0
    /// are sold out: no unit is left anywhere this node could get.
    elsewhere_hint: AtomicU64,
    /// When the hints were last read from the authority ([`monotonic_ms`]),
    /// in cluster mode by the poller.
    view_at_ms: AtomicU64,
    /// The hints are too old to call the sale sold out (cluster mode: no
    /// poll has read them lately, e.g. Redis stalled); set by the cluster's
    /// watchdog, never in embedded mode. While set, dry shards are not
    /// "sold out": the purchase asks the authority (a lease) and answers
    /// what it says, or 503.
    view_stale: AtomicBool,
    /// Units each user holds in `reserved` or `paid` orders, as counted by an
    /// in-process authority (the Redis authority keeps them in Redis).
    pub(crate) holders: Striped<HashMap<Box<str>, u32>>,
    /// Per-sale state of the authority that made the sale (the cluster
    /// authority's lease slot), set once: reached from the sale itself,
    /// with no node-wide map or lock on the way.
    pub(crate) ext: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl Sale {
    /// A sale with all of its stock spread over `shards` shards.
    pub fn new(spec: SaleSpec, shards: usize) -> Self {
        let units = spec.stock;
        Sale::with_local_units(spec, shards, units)
    }

    /// A sale whose shards start with `units` (0 when units arrive by
    /// lease, in cluster mode).
    pub fn with_local_units(spec: SaleSpec, shards: usize, units: u64) -> Self {
        Sale {
            stock: ShardedStock::new(units, shards),
            spec,
            switch: AtomicU8::new(LIVE),
            sold: AtomicU64::new(0),
            pool_hint: AtomicU64::new(0),
            elsewhere_hint: AtomicU64::new(0),
            view_at_ms: AtomicU64::new(monotonic_ms()),
            view_stale: AtomicBool::new(false),
            holders: Striped::new(),
            ext: OnceLock::new(),
        }
    }

    pub fn spec(&self) -> &SaleSpec {
        &self.spec
    }

    pub fn id(&self) -> &str {
        &self.spec.sale_id
    }

    /// Units in `reserved` or `paid` orders.
    pub fn sold(&self) -> u64 {
        self.sold.load(Ordering::Acquire)
    }

    pub fn remaining(&self) -> u64 {
        self.spec.stock.saturating_sub(self.sold())
    }

    /// The state at `now` (Unix seconds), for `GET /sales/{id}`.
    pub fn state(&self, now: u64) -> SaleState {
        match self.switch.load(Ordering::Acquire) {
            CLOSED => return SaleState::Closed,
            PAUSED => return SaleState::Paused,
            _ => {}
        }
        if now < self.spec.starts_at {
            SaleState::Scheduled
        } else if self.spec.ends_at.is_some_and(|end| now >= end) {
            SaleState::Closed
        } else if self.remaining() == 0 {
            SaleState::SoldOut
        } else {
            SaleState::Open
        }
    }

    /// May a purchase proceed at `now`? Reads only read-mostly words: the
    /// switch, the spec and the sold-out flag of the shards.
    pub fn gate(&self, now: u64) -> Result<(), StockError> {
        if self.switch.load(Ordering::Acquire) != LIVE
            || now < self.spec.starts_at
            || self.spec.ends_at.is_some_and(|end| now >= end)
        {
            return Err(StockError::SaleNotOpen);
        }
        if self.stock.is_sold_out() && self.nothing_elsewhere() {
            return Err(StockError::SoldOut);
        }
        Ok(())
    }

    /// Whether, as last seen and seen lately, no unit is left outside this
    /// node's shards that it could get: the pool is empty, no other node
    /// holds a leased unit, and the view is not stale. With dry shards,
    /// the sale is sold out.
    pub fn nothing_elsewhere(&self) -> bool {
        self.pool_hint() == 0 && self.elsewhere_hint() == 0 && !self.view_stale()
    }

    /// The authority's view of this sale (pool and other nodes' leases)
    /// was just read: by the cluster's poller, or a lease call's reply.
    pub fn mark_view_read(&self) {
        self.view_at_ms.store(monotonic_ms(), Ordering::Release);
        self.set_view_stale(false);
    }

    /// How old the view is, in ms.
    pub fn view_age_ms(&self) -> u64 {
        monotonic_ms().saturating_sub(self.view_at_ms.load(Ordering::Acquire))
    }

    /// Whether the view is too old to call the sale sold out.
    pub fn view_stale(&self) -> bool {
        self.view_stale.load(Ordering::Acquire)
    }

    /// Written only when it changes: the gate of every request reads it.
    pub fn set_view_stale(&self, stale: bool) {
        if self.view_stale() != stale {
            self.view_stale.store(stale, Ordering::Release);
        }
    }

    /// Units the authority may still lease to this node, as last seen.
    pub fn pool_hint(&self) -> u64 {
        self.pool_hint.load(Ordering::Acquire)
    }

    pub fn set_pool_hint(&self, units: u64) {
        self.pool_hint.store(units, Ordering::Release);
    }

    /// Units leased to other nodes and not yet sold, as last seen.
    pub fn elsewhere_hint(&self) -> u64 {
        self.elsewhere_hint.load(Ordering::Acquire)
    }

    /// Written only when it changes: the gate of every request reads it.
    pub fn set_elsewhere_hint(&self, units: u64) {
        if self.elsewhere_hint() != units {
            self.elsewhere_hint.store(units, Ordering::Release);
        }
    }

    /// Sets the sold count read from the authority (cluster mode).
    pub fn set_sold(&self, units: u64) {
        self.sold.store(units, Ordering::Release);
    }

    /// The switch as last applied: live, paused or closed.
    pub fn is_closed(&self) -> bool {
        self.switch.load(Ordering::Acquire) == CLOSED
    }

    pub fn is_paused(&self) -> bool {
        self.switch.load(Ordering::Acquire) == PAUSED
    }

    /// Applies an operator's switch. A closed sale stays closed.
    pub fn apply_switch(&self, switch: Switch) -> Result<(), StockError> {
        let target = match switch {
            Switch::Pause => PAUSED,
            Switch::Resume => LIVE,
            Switch::Close => CLOSED,
        };
        let mut current = self.switch.load(Ordering::Acquire);
        loop {
            if current == CLOSED && target != CLOSED {
                return Err(StockError::InvalidState("the sale is closed"));
            }
            match self
                .switch
                .compare_exchange(current, target, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(seen) => current = seen,
            }
        }
    }

    pub fn add_sold(&self, qty: u32) {
        self.sold.fetch_add(u64::from(qty), Ordering::AcqRel);
    }

    /// Takes released units off the sold count, stopping at 0: in cluster
    /// mode the count is Redis's as last polled and may not hold the
    /// released order yet (the next poll corrects it).
    pub fn sub_sold(&self, qty: u32) {
        let _ = self
            .sold
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |sold| {
                Some(sold.saturating_sub(u64::from(qty)))
            });
    }

    /// Units `user_id` holds in live orders.
    pub fn held_by(&self, user_id: &str) -> u32 {
        self.holders
            .get(user_id)
            .lock()
            .get(user_id)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(stock: u64) -> SaleSpec {
        SaleSpec {
            sale_id: "s".into(),
            stock,
            per_user_limit: 1,
            starts_at: 100,
            ends_at: Some(200),
            payment_timeout_s: 900,
            ticket_required: false,
        }
    }

    #[test]
    fn dry_shards_are_sold_out_only_when_nothing_is_left_elsewhere() {
        // Cluster mode: units arrive by lease.
        let sale = Sale::with_local_units(spec(3), 2, 0);
        assert!(matches!(sale.gate(150), Err(StockError::SoldOut)));
        // Units in other nodes' leases, the pool empty: not sold out.
        sale.set_elsewhere_hint(2);
        assert!(sale.gate(150).is_ok());
        sale.set_elsewhere_hint(0);
        sale.set_pool_hint(1);
        assert!(sale.gate(150).is_ok());
        sale.set_pool_hint(0);
        assert!(sale.nothing_elsewhere());
        assert!(matches!(sale.gate(150), Err(StockError::SoldOut)));
        // Units in the shards: open whatever the hints say.
        sale.stock.put_back(0, 1);
        assert!(sale.gate(150).is_ok());
    }

    #[test]
    fn a_stale_view_is_never_sold_out() {
        let sale = Sale::with_local_units(spec(3), 2, 0);
        assert!(matches!(sale.gate(150), Err(StockError::SoldOut)));
        // No poll read the hints lately: the gate lets the buyer ask.
        sale.set_view_stale(true);
        assert!(!sale.nothing_elsewhere());
        assert!(sale.gate(150).is_ok());
        // A read (a poll, a lease reply) makes the view fresh again.
        sale.mark_view_read();
        assert!(!sale.view_stale());
        assert!(matches!(sale.gate(150), Err(StockError::SoldOut)));
    }

    #[test]
    fn state_follows_time_switch_and_stock() {
        let sale = Sale::new(spec(1), 2);
        assert_eq!(sale.state(99), SaleState::Scheduled);
        assert_eq!(sale.state(100), SaleState::Open);
        assert_eq!(sale.state(200), SaleState::Closed);
        assert!(matches!(sale.gate(99), Err(StockError::SaleNotOpen)));
        assert!(sale.gate(150).is_ok());
        sale.apply_switch(Switch::Pause).unwrap();
        assert_eq!(sale.state(150), SaleState::Paused);
        assert!(matches!(sale.gate(150), Err(StockError::SaleNotOpen)));
        sale.apply_switch(Switch::Resume).unwrap();
        sale.add_sold(1);
        assert_eq!(sale.state(150), SaleState::SoldOut);
        sale.apply_switch(Switch::Close).unwrap();
        assert_eq!(sale.state(150), SaleState::Closed);
        assert!(matches!(
            sale.apply_switch(Switch::Resume),
            Err(StockError::InvalidState(_))
        ));
    }

    /// In cluster mode the sold count is Redis's as last polled: a cancel
    /// or expiry of an order the poll has not counted yet (taken on another
    /// node) subtracts from less than its quantity. The count stops at 0;
    /// it never wraps to 2^64 - 1 (a sold-out "18446744073709551615 sold"
    /// until the next poll).
    #[test]
    fn sold_never_goes_below_zero() {
        let sale = Sale::new(spec(5), 2);
        sale.sub_sold(1);
        assert_eq!(sale.sold(), 0);
        assert_eq!(sale.remaining(), 5);
        assert_eq!(sale.state(150), SaleState::Open);
        sale.set_sold(2);
        sale.sub_sold(3);
        assert_eq!(sale.sold(), 0);
        sale.add_sold(2);
        sale.sub_sold(1);
        assert_eq!(sale.sold(), 1);
    }
}
