//! Moving leased units to the node whose buyer needs them, so that
//! `410 sold_out` means no unit is left anywhere (as last seen).
//!
//! A node whose shards are dry asks for a lease ([`lease_or_wait`]). When
//! the pool is empty while other nodes hold unsold leased units, the same
//! script call posts this node's want (`sk:{S}:wants`, node → deadline) and
//! the node holds its buyers for a bounded wait ([`wait`]), reading the
//! pool with plain commands until a unit comes back, then leases it. The
//! holders see the want when their poller reads the sale's tail
//! ([`read_tail`], only while the pool is empty and units remain) and give
//! the units in their shards back to the pool ([`give_back_wanted`]) —
//! never units in flight in a reservation, which stay charged to their
//! lease. A wait that ends without units while units remain elsewhere is
//! answered 503 `unavailable`, never 410.
//!
//! Redis work stays bounded by the stock: one lease call is shared by the
//! concurrent askers of a sale on a node; a sale whose pool is empty and
//! whose other leases are empty (as last seen) is answered 410 from memory.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::model::StockError;
use crate::redis::{RedisStore, SaleStatus, SaleSwitchState};
use crate::sale::Sale;

use super::options::{lease_want, ClusterOptions, StockMode};
use super::{lease_slot, Call, Shared};

/// The longest a buyer is held for units to come back from other nodes: a
/// few poll intervals, since holders see a want on their next poll.
pub(super) fn wait(opts: &ClusterOptions) -> Duration {
    (opts.poll_interval * 5).min(Duration::from_secs(5))
}

/// How often a waiting node reads the pool (plain commands, no script).
fn step(opts: &ClusterOptions) -> Duration {
    (opts.poll_interval / 8).clamp(Duration::from_millis(5), Duration::from_millis(100))
}

/// Leases for a buyer whose shards are dry; with the pool empty while
/// other nodes hold leased units, posts this node's want and waits until a
/// unit comes back (then leases it), nothing is left to wait for, or the
/// wait ends. An error is the lease call's: it may have leased units.
pub(super) async fn lease_or_wait(
    store: &RedisStore,
    shared: &Shared,
    sale: &Sale,
    core: usize,
) -> Result<(), StockError> {
    let node = shared.opts.node_id;
    let wait = wait(&shared.opts);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            // The stop returns the lease once this call ends.
            return Ok(());
        }
        let ask = store
            .lease_or_want(
                sale.id(),
                node,
                lease_want(sale.spec()),
                shared.opts.lease_ttl,
                wait,
            )
            .await?;
        sale.set_sold(ask.sold);
        sale.set_elsewhere_hint(ask.elsewhere);
        if ask.granted > 0 {
            sale.stock.put_back(core, ask.granted);
        }
        sale.set_pool_hint(ask.pool_left);
        sale.mark_view_read();
        if ask.granted > 0 || ask.pool_left > 0 || ask.elsewhere == 0 {
            // Units, a closed sale, or nothing left to wait for.
            return Ok(());
        }
        // The want is posted: the holders give back on their next poll.
        loop {
            if tokio::time::Instant::now() >= deadline || shared.stopping.load(Ordering::SeqCst) {
                return Ok(());
            }
            tokio::time::sleep(step(&shared.opts)).await;
            // A read: on error there is nothing to reconcile, and the
            // buyers' own bound answers them.
            let Ok(tail) = store.tail(sale.id(), node).await else {
                return Ok(());
            };
            sale.set_sold(tail.sold);
            sale.set_elsewhere_hint(tail.elsewhere);
            if tail.pool > 0 {
                break;
            }
            if tail.elsewhere == 0 {
                sale.set_pool_hint(0);
                sale.mark_view_read();
                return Ok(());
            }
        }
    }
}

/// A lease ahead of demand: no want (no buyer waits for it), but the
/// counts, so that the hints stay exact when it takes the pool's last units.
pub(super) async fn lease_ahead(
    store: &RedisStore,
    shared: &Shared,
    sale: &Sale,
    core: usize,
) -> Result<(), StockError> {
    let ask = store
        .lease_or_want(
            sale.id(),
            shared.opts.node_id,
            lease_want(sale.spec()),
            shared.opts.lease_ttl,
            Duration::ZERO,
        )
        .await?;
    sale.set_sold(ask.sold);
    sale.set_elsewhere_hint(ask.elsewhere);
    if ask.granted > 0 {
        sale.stock.put_back(core, ask.granted);
    }
    sale.set_pool_hint(ask.pool_left);
    sale.mark_view_read();
    Ok(())
}

/// The poller's part, after the sale's status: what other nodes hold and
/// whether one of them wants units, read only while it matters (the pool
/// empty, units unsold, the sale not closed).
pub(super) async fn read_tail(
    store: &RedisStore,
    shared: &Shared,
    sale: &Sale,
    status: &SaleStatus,
) {
    let slot = lease_slot(sale);
    if status.sold >= status.spec.stock || status.switch == SaleSwitchState::Closed {
        sale.set_elsewhere_hint(0);
        slot.wanted.store(false, Ordering::Relaxed);
        return;
    }
    if status.pool > 0 {
        // The pool serves any node; no one waits on a holder. The sum of
        // every lease, this node's too: an over-estimate is harmless here.
        sale.set_elsewhere_hint(status.leased);
        slot.wanted.store(false, Ordering::Relaxed);
        return;
    }
    match store.tail(sale.id(), shared.opts.node_id).await {
        Ok(tail) => {
            sale.set_pool_hint(tail.pool);
            sale.set_elsewhere_hint(tail.elsewhere);
            slot.wanted.store(tail.wanted, Ordering::Relaxed);
        }
        // Never a false sold-out: with an over-estimate a buyer asks Redis
        // (one call, shared), which answers exactly.
        Err(_) => sale.set_elsewhere_hint(status.leased),
    }
}

/// Gives the units in this node's shards back to the pool for every sale
/// another node wants (as the poller just saw), once per poll.
pub(super) async fn give_back_wanted(
    store: &RedisStore,
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Call>,
) {
    if shared.opts.mode != StockMode::Leased {
        return;
    }
    for sale in shared.sales.all() {
        let slot = lease_slot(&sale);
        if !slot.wanted.load(Ordering::Relaxed) || sale.stock.available() == 0 {
            continue;
        }
        slot.gave_back.store(true, Ordering::Relaxed);
        // The gate stays open while the units are on their way to the pool.
        sale.set_pool_hint(sale.pool_hint().saturating_add(sale.stock.available()));
        let drained = sale.stock.drain();
        if drained == 0 {
            continue;
        }
        match store
            .give_back(sale.id(), shared.opts.node_id, drained)
            .await
        {
            Ok(given) => {
                debug!(
                    sale = sale.id(),
                    drained, given, "units given back for another node"
                );
            }
            Err(e) => {
                warn!(sale = sale.id(), error = %e, "units wanted elsewhere not given back");
                after_failed_give_back(tx, &sale, drained, &e);
            }
        }
    }
}

/// After a failed [`RedisStore::give_back`] of `drained` units taken out of
/// the shards: refused (nothing applied), they go back to the shards; with
/// the outcome unknown, the node starts from a clean slate as after
/// `no_lease` (drains and returns its whole lease).
pub(super) fn after_failed_give_back(
    tx: &mpsc::UnboundedSender<Call>,
    sale: &Arc<Sale>,
    drained: u64,
    e: &StockError,
) {
    if let StockError::Unavailable(_) = e {
        sale.stock.put_back(0, drained);
        return;
    }
    let slot = lease_slot(sale);
    if !slot.reset_queued.swap(true, Ordering::AcqRel)
        && tx.send(Call::ResetLease(sale.clone())).is_err()
    {
        slot.reset_queued.store(false, Ordering::Release);
    }
}
