//! This node's leases: lease calls (for a buyer or ahead of demand), lease
//! resets and returns, idle leases given back, top-up.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::model::StockError;
use crate::redis::RedisStore;
use crate::sale::Sale;

use super::options::{lease_want, StockMode};
use super::{lease_slot, now_s, rebalance, Call, Shared};

/// A lease call counted in `Shared::leasing` until dropped.
pub(super) struct LeaseRunning<'a>(&'a Shared);

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

/// After `no_lease`: waits for the sale's lease call in flight (if any),
/// then drains the shards and returns what Redis still counts in this
/// node's lease, so that neither side holds units the other does not.
pub(super) async fn reset_after_no_lease(store: &RedisStore, shared: &Shared, sale: &Sale) {
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

/// Leases units into `core`'s shard. For a buyer whose core found the
/// shards dry (`for_buyer`): with the pool empty while other nodes hold
/// leased units, posts this node's want and waits (bounded) for a holder
/// to give units back ([`rebalance`]). Ahead of demand ([`TopUp`]): a plain
/// lease.
pub(super) async fn lease(
    store: &RedisStore,
    shared: &Shared,
    sale: &Sale,
    core: usize,
    for_buyer: bool,
) {
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
pub(super) async fn return_predecessors_leases(
    store: &RedisStore,
    node: u32,
) -> Result<(), StockError> {
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
pub(super) async fn leases_settled(shared: &Shared) {
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

pub(super) async fn return_leases(store: &RedisStore, shared: &Shared) {
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

/// Units a node holds but does not sell strand the sale when the pool is
/// empty (other nodes see it sold out). A sale whose local units have not
/// moved for [`IDLE_LEASE`] while the pool is empty gives them back.
#[derive(Default)]
pub(super) struct IdleLeases {
    /// Per sale: local units at the last look, and since when unchanged.
    seen: HashMap<String, (u64, tokio::time::Instant)>,
}

const IDLE_LEASE: Duration = Duration::from_secs(1);

impl IdleLeases {
    pub(super) async fn return_unused(
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
pub(super) struct TopUp {
    /// Per sale: the units in the shards at the last look.
    seen: HashMap<String, u64>,
}

impl TopUp {
    pub(super) fn run(&mut self, store: &RedisStore, shared: &Arc<Shared>) {
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
