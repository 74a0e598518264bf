//! The journal-mode reconciler: every applied change reaches some node's
//! journal, also when the node that made it died before its append.
//!
//! With the journal as order log (no Kafka, no settler), Redis records each
//! reservation and each move (pay, cancel, expiry) in the sale's
//! not-yet-logged set, and the node that made it removes the entry once its
//! event is durable. An entry still there `grace` after it was written was
//! never logged by its node: the node died between Redis and its journal,
//! or its append failed and no one repeated the move. Every node runs this
//! loop: it claims such entries (`claim_unlogged.lua`: atomically, so one
//! node takes each; a claimer that dies loses nothing, its claims come due
//! again after another `grace`), logs them into its own journal through a
//! [`ChangeLog`], and removes them. Exactly once, except when a claimer
//! dies (or stalls past `grace`) between its append and the removal: then
//! the event is in two journals, and consumers dedupe by order id and type.
//!
//! A reservation its node never logged is logged (`order_reserved` from
//! Redis's record, with its Idempotency-Key and fingerprint), never
//! released: no node can read another's journal, so it cannot tell a node
//! that died before its append from one that died after it (and after its
//! 200) but before Redis heard the event was durable, and a 200 is never
//! taken back. The order lives on as any reserved order: its buyer's keyed
//! retry gets it on any node, and unpaid it expires (its unit back to the
//! pool, `order_expired` logged). If it moved on meanwhile, the event of
//! its current status follows, as a replay relogs it. (With Kafka the
//! settler reads the log itself, and releases what it never saw.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::Shared;
use crate::model::{Order, OrderStatus};
use crate::redis::RedisStore;

/// Entries one sale gives a pass at most.
const CLAIM: usize = 128;

/// A change to write into the order log, as Redis holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relog {
    pub order: Order,
    pub change: Change,
    /// The order's Idempotency-Key and fingerprint (16 hex digits), for an
    /// `order_reserved`.
    pub key: Option<String>,
    pub fingerprint: Option<String>,
}

/// Which event a [`Relog`] is (`Reserved`: a reservation its node never
/// logged; `Released`: a release tracked as a change, Kafka mode).
pub use crate::model::OrderChange as Change;

/// The order log the reconciler writes to: the node's journal.
pub trait ChangeLog: Send + Sync + 'static {
    /// Appends the change's event; resolves once it is durable.
    fn append(&self, relog: &Relog) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
}

/// Runs the reconciler until the task is aborted: a pass every
/// `grace / 4` (at least the poll interval).
pub(super) async fn run(
    store: RedisStore,
    shared: Arc<Shared>,
    log: Arc<dyn ChangeLog>,
    grace: Duration,
) {
    let mut tick = tokio::time::interval((grace / 4).max(shared.opts.poll_interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for sale in shared.sales.all() {
            let entries = match store.claim_unlogged(sale.id(), grace, CLAIM).await {
                Ok(entries) => entries,
                Err(e) => {
                    debug!(sale = sale.id(), error = %e, "cannot claim unlogged changes");
                    continue;
                }
            };
            for (order_id, change) in entries {
                // A failure leaves the entry claimed: it comes due again.
                if let Err(e) = settle(&store, &*log, sale.id(), &order_id, &change).await {
                    warn!(
                        sale = sale.id(),
                        order_id,
                        change,
                        error = %e,
                        "reconciliation failed; will retry"
                    );
                }
            }
        }
    }
}

/// Logs one change whose event no node logged (a reservation: its
/// `order_reserved`, then its current status if it moved on), then
/// removes its entry.
async fn settle(
    store: &RedisStore,
    log: &dyn ChangeLog,
    sale: &str,
    order_id: &str,
    change: &str,
) -> Result<(), String> {
    let entry = [(order_id.to_owned(), change)];
    let Some(order) = store
        .order(sale, order_id)
        .await
        .map_err(|e| e.to_string())?
    else {
        warn!(
            sale,
            order_id, change, "a change of an unknown order; dropping it"
        );
        return store
            .mark_logged(sale, &entry)
            .await
            .map_err(|e| e.to_string());
    };
    let relogs = match change.parse::<Change>() {
        Ok(Change::Reserved) => {
            let mut reserved = relog(order.clone(), Change::Reserved);
            if let Some((key, fp)) = store
                .order_key(sale, order_id)
                .await
                .map_err(|e| e.to_string())?
            {
                reserved.key = Some(key);
                reserved.fingerprint = fp;
            }
            let moved_on = match order.status {
                OrderStatus::Reserved => None,
                moved => Some(Change::from(moved)),
            };
            [Some(reserved), moved_on.map(|change| relog(order, change))]
        }
        Ok(other) => [Some(relog(order, other)), None],
        Err(_) => {
            warn!(sale, order_id, change, "an unknown change; dropping it");
            [None, None]
        }
    };
    for relog in relogs.into_iter().flatten() {
        log.append(&relog).await?;
        info!(sale, order_id, change, "logged a change no node had logged");
    }
    store
        .mark_logged(sale, &entry)
        .await
        .map_err(|e| e.to_string())
}

fn relog(order: Order, change: Change) -> Relog {
    Relog {
        order,
        change,
        key: None,
        fingerprint: None,
    }
}
