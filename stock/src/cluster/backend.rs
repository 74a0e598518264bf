//! The backend thread's loop: drains the cores' [`Call`]s, batches
//! reservations and key lookups into pipelines, and runs the other calls
//! (sales, switches, moves, abandons) as tasks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::model::{OrderChange, StockError, Switch};
use crate::redis::stats::{ScriptCall, StatsBoard};
use crate::redis::{Abandoned, KeyRecall, Recalled, RedisStore, ReserveCall, ReserveOutcome};

use super::leases::{lease, leases_settled, reset_after_no_lease, return_leases};
use super::poller::{background, release_claim, watch_views};
use super::{reconcile, Abandon, Call, Shared};

/// At most one `warn!` per second of a kind of message that an outage
/// repeats for every call; the rest go to `debug!` and are counted in the
/// next warning.
pub(super) struct LogThrottle {
    start: Instant,
    /// Milliseconds since `start` of the last warning, plus one (0: none).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    pub(super) fn new() -> Self {
        LogThrottle {
            start: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(messages suppressed since the last warning)` when this one
    /// may be a warning.
    pub(super) fn warn_now(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.warn_at(now + 1)
    }

    /// [`LogThrottle::warn_now`] at `now` (milliseconds since `start`, plus
    /// one).
    fn warn_at(&self, now: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 1000)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Reservation batches awaiting Redis at once. While they are out, new
/// reservations gather into the next batch, so under load the batches grow
/// instead of multiplying: fewer, larger `reserve.lua` calls (each call has
/// a fixed cost in Redis and one read and one write on both ends). Two, not
/// one, so that Redis is not idle while a reply travels back.
const RESERVE_BATCHES_IN_FLIGHT: usize = 2;

pub(super) async fn backend_main(
    store: RedisStore,
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Call>,
    tx: mpsc::UnboundedSender<Call>,
) {
    let background = tokio::spawn(background(store.clone(), shared.clone(), tx));
    let views = tokio::spawn(watch_views(shared.clone()));
    let mut calls = Vec::with_capacity(512);
    let mut batch = Vec::new();
    let mut replies = Vec::new();
    let mut recalls = Vec::new();
    let mut logged: HashMap<String, Vec<(String, OrderChange)>> = HashMap::new();
    let mut reconciler = None;
    let mut reserving = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            n = rx.recv_many(&mut calls, 512) => if n == 0 {
                break;
            },
            // A batch came back: room for the one that gathered meanwhile.
            Some(_) = reserving.join_next(), if !reserving.is_empty() => {}
        }
        for call in calls.drain(..) {
            match call {
                Call::Reserve(c, reply) if c.from_pool => {
                    // The classic baseline: one EVALSHA per request, on its
                    // own, as a request-scoped client would send it.
                    let store = store.clone();
                    tokio::spawn(async move {
                        let result = store.reserve_batch(std::slice::from_ref(&c)).await;
                        let _ = reply.send(result.into_iter().next().unwrap_or_else(|| {
                            Err(StockError::Undetermined("no reply for the call".into()))
                        }));
                    });
                }
                Call::Reserve(c, reply) => {
                    batch.push(c);
                    replies.push(reply);
                }
                Call::Recall(c, reply) => recalls.push((c, reply)),
                Call::Logged(sale, order, status) => {
                    logged.entry(sale).or_default().push((order, status.into()));
                }
                Call::Reconcile(log) => {
                    if reconciler.is_none() {
                        let task = reconcile::run(
                            store.clone(),
                            shared.clone(),
                            log,
                            shared.opts.journal_grace,
                        );
                        reconciler = Some(tokio::spawn(task));
                    }
                }
                Call::Stop(done) => {
                    shared.stopping.store(true, Ordering::SeqCst);
                    background.abort();
                    views.abort();
                    if let Some(reconciler) = reconciler.take() {
                        // Its claims come due again after the grace.
                        reconciler.abort();
                    }
                    mark_logged(&store, std::mem::take(&mut logged)).await;
                    // Purchases in flight finish first: the batches out,
                    // then the one gathered meanwhile.
                    while reserving.join_next().await.is_some() {}
                    reserve_and_reply(&store, &shared.stats, batch, replies).await;
                    // A node that lost its id leaves that id's lease to
                    // the process that holds it now. A lease call still
                    // running could lease after the return: wait for them
                    // (they stop early), then return.
                    if !shared.id_lost.load(Ordering::Relaxed) {
                        leases_settled(&shared).await;
                        return_leases(&store, &shared).await;
                        release_claim(&store, &shared).await;
                    }
                    let _ = done.send(());
                    return;
                }
                other => {
                    tokio::spawn(handle(store.clone(), shared.clone(), other));
                }
            }
        }
        if !logged.is_empty() {
            // One ZREM per sale for the events this drain saw logged.
            let store = store.clone();
            let logged = std::mem::take(&mut logged);
            tokio::spawn(async move { mark_logged(&store, logged).await });
        }
        if !recalls.is_empty() {
            // One pipeline for the key lookups of this drain.
            let (store, board) = (store.clone(), shared.stats.clone());
            let recalls = std::mem::take(&mut recalls);
            tokio::spawn(async move { recall_and_reply(&store, &board, recalls).await });
        }
        if !batch.is_empty() && reserving.len() < RESERVE_BATCHES_IN_FLIGHT {
            // One pipeline for every reservation gathered since the last.
            let (store, board) = (store.clone(), shared.stats.clone());
            let calls = std::mem::take(&mut batch);
            let replies = std::mem::take(&mut replies);
            reserving.spawn(async move { reserve_and_reply(&store, &board, calls, replies).await });
        }
    }
    // Every sender is gone: no one waits for an answer, but the batches out
    // are let finish rather than cut off mid-call.
    while reserving.join_next().await.is_some() {}
}

/// Sends one batch of reservations and answers each caller.
async fn reserve_and_reply(
    store: &RedisStore,
    board: &StatsBoard,
    calls: Vec<ReserveCall>,
    replies: Vec<oneshot::Sender<Result<ReserveOutcome, StockError>>>,
) {
    if calls.is_empty() {
        return;
    }
    let started = Instant::now();
    let results = store.reserve_batch(&calls).await;
    board.calls.record(ScriptCall::Reserve, started.elapsed());
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

/// Removes the not-yet-logged entries of events now in the journal, one
/// command per sale. Lost: a repeat of the move, or the reconciler after
/// its grace, logs the event once more (consumers dedupe).
async fn mark_logged(store: &RedisStore, logged: HashMap<String, Vec<(String, OrderChange)>>) {
    for (sale, entries) in logged {
        if let Err(e) = store.mark_logged(&sale, &entries).await {
            debug!(sale, error = %e, "changes not marked logged");
        }
    }
}

/// Looks up one drain's Idempotency-Keys and answers each caller.
async fn recall_and_reply(
    store: &RedisStore,
    board: &StatsBoard,
    recalls: Vec<(KeyRecall, oneshot::Sender<Result<Recalled, StockError>>)>,
) {
    let (keys, replies): (Vec<_>, Vec<_>) = recalls.into_iter().unzip();
    let started = Instant::now();
    let results = store.recall_keys(&keys).await;
    board.calls.record(ScriptCall::Recall, started.elapsed());
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(result);
    }
}

/// Forgets every sale's Idempotency-Key records whose TTL passed, in
/// bounded batches.
async fn expire_keys(store: &RedisStore, shared: &Shared) {
    const BATCH: usize = 512;
    for sale in shared.sales.all() {
        for _ in 0..16 {
            match store.expire_keys(sale.id(), BATCH).await {
                Ok(n) if n == BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    debug!(sale = sale.id(), error = %e, "key expiry failed");
                    break;
                }
            }
        }
    }
}

async fn handle(store: RedisStore, shared: Arc<Shared>, call: Call) {
    match call {
        Call::Lease(sale, core) => lease(&store, &shared, &sale, core, true).await,
        Call::Create(spec, reply) => {
            let _ = reply.send(store.create_sale(&spec).await);
        }
        Call::Switch(id, to, reply) => {
            let result = store.switch(&id, to).await;
            if result.is_ok() && to == Switch::Close {
                if let Some(sale) = shared.sales.get(&id) {
                    sale.stock.drain();
                    let _ = store.return_lease(&id, shared.opts.node_id).await;
                }
            }
            let _ = reply.send(result);
        }
        Call::Move(sale, order, to, now, reply) => {
            let started = Instant::now();
            let moved = store.transition(&sale, &order, to, now).await;
            shared
                .stats
                .calls
                .record(ScriptCall::Transition, started.elapsed());
            let _ = reply.send(moved);
        }
        Call::Order(sale, order, reply) => {
            let _ = reply.send(store.order(&sale, &order).await);
        }
        Call::Abandon(call) => release_until_known(&store, &shared, &call).await,
        Call::ResetLease(sale) => reset_after_no_lease(&store, &shared, &sale).await,
        Call::ExpireKeys => expire_keys(&store, &shared).await,
        Call::Reserve(..)
        | Call::Recall(..)
        | Call::Logged(..)
        | Call::Reconcile(_)
        | Call::Stop(_) => {}
    }
}

/// Abandons a reservation this node will not acknowledge, retrying until
/// Redis gives a definite answer: released (it was recorded), already
/// final, or never recorded (then a tombstone refuses a late copy of it,
/// and its units went from this node's lease back to the pool).
async fn release_until_known(store: &RedisStore, shared: &Shared, call: &Abandon) {
    let order = call.order_id.as_str();
    let mut wait = Duration::from_millis(100);
    loop {
        let result = store
            .abandon(
                &call.sale_id,
                order,
                shared.opts.node_id,
                call.quantity,
                call.expires_at,
            )
            .await;
        match result {
            Ok(Abandoned::NeverRecorded { returned }) => {
                debug!(
                    order,
                    returned, "abandoned a reservation Redis never recorded"
                );
                if returned > 0 {
                    if let Some(sale) = shared.sales.get(&call.sale_id) {
                        sale.set_pool_hint(sale.pool_hint().saturating_add(returned));
                    }
                }
                return;
            }
            Ok(Abandoned::Released(outcome)) => {
                debug!(order, ?outcome, "compensated");
                if !shared.opts.track_log {
                    // Released (or kept: a replay logged it): nothing is
                    // left for the reconciler to do.
                    let entry = [(call.order_id.clone(), OrderChange::Reserved)];
                    let _ = store.mark_logged(&call.sale_id, &entry).await;
                }
                return;
            }
            Err(e) => {
                match shared.retry_log.warn_now() {
                    Some(suppressed) => warn!(
                        order,
                        error = %e,
                        suppressed,
                        "compensation pending; retrying (suppressed: similar warnings since the last one)"
                    ),
                    None => debug!(order, error = %e, "compensation pending; retrying"),
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_warnings_are_one_per_second_and_count_the_rest() {
        let log = LogThrottle::new();
        assert_eq!(log.warn_at(1), Some(0));
        assert_eq!(log.warn_at(2), None);
        assert_eq!(log.warn_at(900), None);
        assert_eq!(log.warn_at(1001), Some(2));
        assert_eq!(log.warn_at(1500), None);
        assert_eq!(log.warn_at(2001), Some(1));
    }
}
