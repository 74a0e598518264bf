//! The background poller: every sale's status read from Redis each
//! `poll_interval`, the heartbeats of held leases, reclaiming dead nodes'
//! leases, and this process's claim on its node id.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use crate::model::Switch;
use crate::redis::{ClaimOutcome, RedisStore, SaleSwitchState};
use crate::sale::Sale;
use crate::striped::fnv;

use super::leases::{IdleLeases, TopUp};
use super::options::{local_units, StockMode};
use super::{now_s, rebalance, Call, Shared};

pub(super) async fn background(
    store: RedisStore,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Call>,
) {
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
pub(super) async fn release_claim(store: &RedisStore, shared: &Shared) {
    if let Err(e) = store.release_node(&shared.claim).await {
        warn!(error = %e, "node id not released; its claim lapses by itself");
    }
}

/// Reads every sale's status from Redis into the local sales: new sales,
/// switches, the cluster-wide sold count and pool, due orders.
pub(super) async fn poll_once(store: &RedisStore, shared: &Shared) {
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
            let sale = Sale::with_local_units(spec.clone(), shards, local_units(mode, &spec));
            // Not sold out before its hints are read below: until then a
            // buyer here asks Redis (the soak saw a 410 0.9 s into a sale).
            sale.set_view_stale(true);
            sale
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
        sale.mark_view_read();
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

/// Marks each sale's view stale once no poll has read it for
/// [`ClusterOptions::view_limit`](super::ClusterOptions::view_limit) (Redis
/// stalled, or the poll loop held up by slow calls), and fresh again once
/// one has: a node calls a sale sold out only from a view that recent.
/// Its own task, so that it runs while the poll loop waits on Redis.
pub(super) async fn watch_views(shared: Arc<Shared>) {
    let limit = shared.opts.view_limit().as_millis() as u64;
    let mut tick = tokio::time::interval(shared.opts.poll_interval / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for sale in shared.sales.all().iter() {
            sale.set_view_stale(sale.view_age_ms() > limit);
        }
    }
}
