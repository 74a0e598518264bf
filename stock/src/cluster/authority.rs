//! [`RedisAuthority`]: the [`StockAuthority`] the node calls. It answers
//! from the node's memory where it can (known keys, sold out, lease slots)
//! and hands the rest to the backend as [`Call`]s.

use std::future::{ready, Future};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::warn;

use crate::authority::{Reservation, StockAuthority, Transition};
use crate::model::{
    Attempt, KeyLookup, Order, OrderIds, OrderStatus, SaleSpec, StockError, Switch,
};
use crate::redis::{
    ClaimOutcome, KeyRecall, Moved, NodeClaim, Recalled, RedisStore, ReserveCall, ReserveOutcome,
};
use crate::registry::Registry;
use crate::sale::Sale;
use crate::striped::{fnv, Striped};
use crate::Units;

use super::backend::{backend_main, LogThrottle};
use super::leases::return_predecessors_leases;
use super::options::{local_units, ClusterOptions, StockMode};
use super::poller::poll_once;
use super::{lease_slot, rebalance, Abandon, Call, ChangeLog, Shared};

/// Most key lookups (`recall_key`) a node has waiting for Redis; more are
/// answered 503 at once, so that keyed requests refused by the gate cannot
/// pile unbounded work (memory, Redis) behind the backend.
const RECALLS_IN_FLIGHT: usize = 4096;

/// One key lookup counted in `Shared::recalls`, until dropped (answered, or
/// its request gone).
struct RecallSlot(Arc<Shared>);

impl Drop for RecallSlot {
    fn drop(&mut self) {
        self.0.recalls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The Redis stock authority of cluster mode.
pub struct RedisAuthority {
    shared: Arc<Shared>,
    calls: mpsc::UnboundedSender<Call>,
    ids: OrderIds,
    backend: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A reservation Redis has recorded, waiting for the order log.
pub struct PendingOrder<'a> {
    sale: &'a Sale,
    units: Units<'a>,
    order: Order,
    key: Option<(Box<str>, u64)>,
}

/// A transition Redis has applied, waiting for the order log.
pub struct AppliedMove {
    order: Order,
    /// Applied by this call (`false`: applied earlier, its event maybe
    /// never logged: only the log is left to do).
    fresh: bool,
}

impl RedisAuthority {
    /// Connects to Redis (failing fast if it does not answer) and starts the
    /// backend thread.
    pub fn connect(url: &str, opts: ClusterOptions, now_micros: u64) -> Result<Self, StockError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| {
                StockError::Unavailable(format!("cannot start the backend runtime: {e}"))
            })?;
        let mut store = runtime.block_on(RedisStore::connect(url, opts.call_timeout))?;
        let ids = OrderIds::new(opts.node_id, now_micros);
        if opts.track_log {
            store = store.tracking_log();
        } else {
            store = store.tracking_moves();
        }
        runtime.block_on(store.persistence()).warn_if_at_risk();
        let min_replicas = runtime.block_on(store.min_replicas_for(opts.min_replicas));
        store = store.with_min_replicas(min_replicas);
        // One live process per node id: two would share a lease.
        let claim = NodeClaim::new(opts.node_id, opts.lease_ttl, opts.kafka_timeout_ms)?;
        // A process restarted right after a crash finds its predecessor's
        // claim: wait for it to lapse (a live duplicate keeps refreshing
        // its claim, so it is still refused, only later).
        let patience = Instant::now() + opts.lease_ttl + Duration::from_secs(1);
        let mut outcome = runtime.block_on(store.claim_node(&claim))?;
        if matches!(outcome, ClaimOutcome::InUse { .. }) {
            warn!(
                node = opts.node_id,
                "node id claimed by another process; waiting up to {:?} for the claim to lapse",
                opts.lease_ttl + Duration::from_secs(1)
            );
        }
        while matches!(outcome, ClaimOutcome::InUse { .. }) && Instant::now() < patience {
            std::thread::sleep(Duration::from_millis(200));
            outcome = runtime.block_on(store.claim_node(&claim))?;
        }
        if let ClaimOutcome::InUse { expires_at_ms } = outcome {
            return Err(StockError::Unavailable(format!(
                "node id {} is in use by another live node (its claim runs to {}, Unix ms, \
                 unless refreshed): give every node its own --node-id, or wait {:?} after \
                 the other one stopped",
                opts.node_id,
                expires_at_ms.map_or("?".into(), |t| t.to_string()),
                opts.lease_ttl
            )));
        }
        // The id is this process's now. Whatever Redis still counts in its
        // leases belonged to a predecessor that died (this process has no
        // units yet): give it back before serving, or it would sit in the
        // lease, unsold, while this node answers sold out.
        runtime.block_on(return_predecessors_leases(&store, opts.node_id))?;
        store = store.with_key_ttl(opts.key_ttl_s);
        let shared = Arc::new(Shared {
            due: (0..opts.shards).map(|_| Mutex::new(Vec::new())).collect(),
            opts,
            sales: Registry::default(),
            retry_log: LogThrottle::new(),
            keys: Striped::new(),
            claim,
            id_lost: AtomicBool::new(false),
            recalls: AtomicUsize::new(0),
            stats: Arc::default(),
            stopping: AtomicBool::new(false),
            leasing: AtomicUsize::new(0),
            leases_done: Notify::new(),
        });
        // Learn the sales that exist before serving.
        runtime.block_on(poll_once(&store, &shared));
        let (tx, rx) = mpsc::unbounded_channel();
        let backend_shared = shared.clone();
        let backend_tx = tx.clone();
        let backend = std::thread::Builder::new()
            .name("seckill-backend".into())
            .spawn(move || runtime.block_on(backend_main(store, backend_shared, rx, backend_tx)))
            .map_err(|e| {
                StockError::Unavailable(format!("cannot start the backend thread: {e}"))
            })?;
        Ok(RedisAuthority {
            shared,
            calls: tx,
            ids,
            backend: Mutex::new(Some(backend)),
        })
    }

    /// The node's stats record and the other nodes', as last exchanged.
    pub fn stats_board(&self) -> Arc<crate::redis::stats::StatsBoard> {
        self.shared.stats.clone()
    }

    /// Journal mode: runs the reconciler on the backend, logging changes
    /// no node logged within `journal_grace` into `log` (this node's
    /// journal); see `cluster/reconcile.rs`. A no-op with a Kafka log (the
    /// settler reconciles).
    pub fn reconcile_into(&self, log: Arc<dyn ChangeLog>) -> Result<(), StockError> {
        if self.shared.opts.track_log {
            return Ok(());
        }
        self.send(Call::Reconcile(log))
    }

    fn send(&self, call: Call) -> Result<(), StockError> {
        if self.shared.id_lost.load(Ordering::Relaxed) {
            return Err(StockError::Unavailable(
                "this node's id was taken by another node process".into(),
            ));
        }
        self.calls
            .send(call)
            .map_err(|_| StockError::Unavailable("the backend has stopped".into()))
    }

    /// Sends `call` and awaits its reply on `rx`, without borrowing `self`.
    fn ask<T: Send + 'static>(
        &self,
        call: Call,
        rx: oneshot::Receiver<Result<T, StockError>>,
    ) -> impl Future<Output = Result<T, StockError>> + use<T> {
        let sent = self.send(call);
        async move {
            sent?;
            rx.await.unwrap_or_else(|_| {
                Err(StockError::Undetermined(
                    "the backend dropped the call".into(),
                ))
            })
        }
    }
}

/// The sale id inside an order id `{node}-{random}-{sale}` ([`OrderIds`];
/// ids of older nodes had a decimal sequence in the middle).
fn sale_of(order_id: &str) -> Option<&str> {
    let mut parts = order_id.splitn(3, '-');
    let node = parts.next()?;
    let middle = parts.next()?;
    let sale = parts.next()?;
    (!node.is_empty()
        && node.bytes().all(|b| b.is_ascii_digit())
        && !middle.is_empty()
        && middle
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        && !sale.is_empty())
    .then_some(sale)
}

impl StockAuthority for RedisAuthority {
    type PendingOrder<'a> = PendingOrder<'a>;
    type PendingTransition = AppliedMove;

    fn create_sale(&self, spec: SaleSpec) -> impl Future<Output = Result<Arc<Sale>, StockError>> {
        let created = {
            let (tx, rx) = oneshot::channel();
            self.ask(Call::Create(spec.clone(), tx), rx)
        };
        let shared = self.shared.clone();
        async move {
            created.await?;
            let units = local_units(shared.opts.mode, &spec);
            let shards = shared.opts.shards;
            let sale = shared.sales.insert_with(&spec, || {
                Sale::with_local_units(spec.clone(), shards, units)
            })?;
            if shared.opts.mode == StockMode::Leased {
                sale.set_pool_hint(spec.stock.saturating_sub(sale.sold()).max(1));
            }
            Ok(sale)
        }
    }

    fn switch(
        &self,
        sale_id: &str,
        switch: Switch,
    ) -> impl Future<Output = Result<Arc<Sale>, StockError>> {
        let done = {
            let (tx, rx) = oneshot::channel();
            self.ask(Call::Switch(sale_id.to_owned(), switch, tx), rx)
        };
        let sale = self.shared.sales.get(sale_id);
        async move {
            done.await?;
            let sale = sale.ok_or(StockError::SaleNotFound)?;
            sale.apply_switch(switch)?;
            Ok(sale)
        }
    }

    fn sale(&self, sale_id: &str) -> Option<Arc<Sale>> {
        self.shared.sales.get(sale_id)
    }

    fn sales_epoch(&self) -> u64 {
        self.shared.sales.epoch()
    }

    fn sales(&self) -> Vec<Arc<Sale>> {
        self.shared.sales.all()
    }

    fn lookup_key(
        &self,
        sale: &Sale,
        attempt: &Attempt<'_>,
    ) -> impl Future<Output = Result<KeyLookup, StockError>> {
        // Keys this node answered replay from memory; a key first used on
        // another node (or before a restart) is checked by the reserve
        // script itself, or by `recall_key` before a refusal.
        let found = attempt
            .idempotency_key
            .map_or(Ok(KeyLookup::Unused), |key| {
                let fingerprint = attempt.fingerprint(sale.id());
                match self.shared.keys.get(key).lock().get(key) {
                    None => Ok(KeyLookup::Unused),
                    Some(known) if known.expires_at <= attempt.now => Ok(KeyLookup::Unused),
                    Some(known) if known.fingerprint != fingerprint => Err(StockError::KeyReused),
                    Some(known) => Ok(KeyLookup::Replay(known.order.clone())),
                }
            });
        ready(found)
    }

    fn recall_key(
        &self,
        sale: &Sale,
        attempt: &Attempt<'_>,
    ) -> impl Future<Output = Result<KeyLookup, StockError>> {
        // Keyed requests on a sold-out sale each cost a lookup: bound what
        // waits for Redis, and answer the rest 503 (retry) at once.
        let admitted = self.shared.recalls.fetch_add(1, Ordering::AcqRel) < RECALLS_IN_FLIGHT;
        let slot = RecallSlot(self.shared.clone());
        let asked = attempt.idempotency_key.filter(|_| admitted).map(|key| {
            let (tx, rx) = oneshot::channel();
            let call = KeyRecall {
                sale_id: sale.id().to_owned(),
                key: key.to_owned(),
                fingerprint: attempt.fingerprint(sale.id()),
            };
            self.ask(Call::Recall(call, tx), rx)
        });
        let keyed = attempt.idempotency_key.is_some();
        async move {
            let _slot = slot;
            let Some(reply) = asked else {
                if keyed {
                    return Err(StockError::Unavailable(
                        "too many Idempotency-Key lookups waiting for Redis; retry".into(),
                    ));
                }
                return Ok(KeyLookup::Unused);
            };
            match reply.await? {
                Recalled::Unused => Ok(KeyLookup::Unused),
                Recalled::KeyReused => Err(StockError::KeyReused),
                // Remembered once it is logged (`replay_answered`).
                Recalled::Replay(order) => Ok(KeyLookup::Replay(order)),
            }
        }
    }

    async fn refill<'a>(
        &'a self,
        sale: &'a Sale,
        core: usize,
        qty: u32,
    ) -> Result<Units<'a>, StockError> {
        if self.shared.opts.mode == StockMode::PerRequest {
            return Err(StockError::SoldOut);
        }
        let slot = lease_slot(sale);
        // A buyer found the shards dry: this node has demand (see `TopUp`).
        slot.demand.store(true, Ordering::Relaxed);
        let started = Instant::now();
        for _ in 0..4 {
            if sale.is_closed() || sale.nothing_elsewhere() {
                return Err(StockError::SoldOut);
            }
            if self.shared.stopping.load(Ordering::SeqCst) {
                return Err(StockError::Unavailable("the node is stopping".into()));
            }
            if slot.failed.load(Ordering::Acquire) && slot.in_flight.load(Ordering::Acquire) {
                // The last lease failed and its reset waits for Redis:
                // answer at once rather than wait out the outage.
                return Err(StockError::Unavailable(
                    "cannot lease stock from Redis".into(),
                ));
            }
            let done = slot.done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if !slot.in_flight.swap(true, Ordering::AcqRel) {
                let Some(owned) = self.shared.sales.get(sale.id()) else {
                    slot.in_flight.store(false, Ordering::Release);
                    return Err(StockError::SaleNotFound);
                };
                if let Err(e) = self.send(Call::Lease(owned, core)) {
                    slot.in_flight.store(false, Ordering::Release);
                    return Err(e);
                }
            }
            // A lease, or (the pool empty, units in other nodes' leases) a
            // bounded wait for one of them to come back: see `lease`.
            done.await;
            if let Some(units) = sale.stock.take(core, qty) {
                return Ok(units);
            }
            if slot.failed.load(Ordering::Acquire) {
                return Err(StockError::Unavailable(
                    "cannot lease stock from Redis".into(),
                ));
            }
            if started.elapsed() >= rebalance::wait(&self.shared.opts) {
                break;
            }
        }
        if sale.nothing_elsewhere() {
            return Err(StockError::SoldOut);
        }
        // Units remain, in other nodes' leases or going to other buyers
        // first: say so, and let the buyer retry rather than guess sold
        // out.
        Err(StockError::Unavailable(
            "stock is being moved between nodes; retry".into(),
        ))
    }

    fn reserve<'a>(
        &'a self,
        sale: &'a Sale,
        attempt: &Attempt<'_>,
        units: Units<'a>,
    ) -> impl Future<Output = Result<Reservation<PendingOrder<'a>>, StockError>> {
        let order = Order {
            order_id: self.ids.next(Some(sale.id())),
            sale_id: sale.id().to_owned(),
            user_id: attempt.user_id.to_owned(),
            quantity: units.qty(),
            status: OrderStatus::Reserved,
            expires_at: attempt.now.saturating_add(sale.spec().payment_timeout_s),
            shard: attempt.core % self.shared.opts.shards,
        };
        let fingerprint = attempt.fingerprint(sale.id());
        let key = attempt
            .idempotency_key
            .map(|k| (Box::<str>::from(k), fingerprint));
        let call = ReserveCall {
            sale_id: order.sale_id.clone(),
            node: self.shared.opts.node_id,
            order_id: order.order_id.clone(),
            user_id: order.user_id.clone(),
            quantity: order.quantity,
            idempotency_key: attempt.idempotency_key.map(str::to_owned),
            fingerprint,
            expires_at: order.expires_at,
            from_pool: self.shared.opts.mode == StockMode::PerRequest,
        };
        let reply = {
            let (tx, rx) = oneshot::channel();
            self.ask(Call::Reserve(call, tx), rx)
        };
        async move {
            match reply.await {
                Ok(ReserveOutcome::Reserved) => Ok(Reservation::New {
                    order: order.clone(),
                    pending: PendingOrder {
                        sale,
                        units,
                        order,
                        key,
                    },
                }),
                // Redis marked it acknowledged: never released now. It is
                // remembered once it is logged (`replay_answered`).
                Ok(ReserveOutcome::Replay(first)) => Ok(Reservation::Replay(first)),
                Ok(ReserveOutcome::LimitExceeded) => Err(StockError::LimitExceeded),
                Ok(ReserveOutcome::KeyReused) => Err(StockError::KeyReused),
                Ok(ReserveOutcome::SaleNotOpen) => Err(StockError::SaleNotOpen),
                Ok(ReserveOutcome::SoldOut) => Err(StockError::SoldOut),
                Ok(ReserveOutcome::NoLease) => {
                    // Redis took this node's lease back (a missed heartbeat),
                    // or holds less than this node thinks: the local units
                    // are not backed. Start from a clean slate.
                    units.commit();
                    sale.stock.drain();
                    let slot = lease_slot(sale);
                    if !slot.reset_queued.swap(true, Ordering::AcqRel) {
                        if let Some(owned) = self.shared.sales.get(sale.id()) {
                            let _ = self.send(Call::ResetLease(owned));
                        } else {
                            slot.reset_queued.store(false, Ordering::Release);
                        }
                    }
                    Err(StockError::Unavailable(
                        "this node's lease was reclaimed; retry".into(),
                    ))
                }
                Ok(ReserveOutcome::Gone) => {
                    // Redis charged nothing. A tombstone cannot be the cause
                    // (this node abandons an order only after its call
                    // answered, and a late copy's answer goes nowhere), so
                    // the order was judged too old: its expiry, made on this
                    // node's clock, is past Redis's time plus the grace.
                    // The units are still this node's lease: back to the
                    // shard. The 503's detail (logged) names the clock.
                    drop(units);
                    Err(StockError::Unavailable(
                        "the reservation was refused as too old: this node's clock is \
                         behind Redis's; retry"
                            .into(),
                    ))
                }
                Err(StockError::Undetermined(why)) => {
                    // Maybe recorded: never hand these units out again.
                    // Abandon the order: released if Redis has it, else
                    // tombstoned (a late copy is refused) and its units
                    // returned from the lease to the pool.
                    units.commit();
                    let _ = self.send(Call::Abandon(Abandon {
                        sale_id: order.sale_id.clone(),
                        order_id: order.order_id.clone(),
                        quantity: order.quantity,
                        expires_at: order.expires_at,
                    }));
                    Err(StockError::Undetermined(why))
                }
                Err(e) => Err(e),
            }
        }
    }

    fn confirm(&self, pending: PendingOrder<'_>) {
        let PendingOrder {
            sale,
            units,
            order,
            key,
        } = pending;
        sale.add_sold(units.qty());
        units.commit();
        if !self.shared.opts.track_log {
            // The journal has it: the reservation leaves the set.
            let _ = self.send(Call::Logged(
                order.sale_id.clone(),
                order.order_id.clone(),
                OrderStatus::Reserved,
            ));
        }
        if let Some((k, fp)) = key {
            self.shared.remember_key(sale, k, fp, order);
        }
    }

    fn replay_answered(&self, sale: &Sale, attempt: &Attempt<'_>, order: &Order) {
        if let Some(key) = attempt.idempotency_key {
            let fingerprint = attempt.fingerprint(sale.id());
            self.shared
                .remember_key(sale, key.into(), fingerprint, order.clone());
        }
    }

    fn abort(&self, pending: PendingOrder<'_>) {
        // Redis has charged the units to this node's lease; releasing the
        // order returns them to the pool, so the local copies are spent.
        let PendingOrder { units, order, .. } = pending;
        units.commit();
        let _ = self.send(Call::Abandon(Abandon {
            sale_id: order.sale_id,
            order_id: order.order_id,
            quantity: order.quantity,
            expires_at: order.expires_at,
        }));
    }

    fn order(&self, order_id: &str) -> impl Future<Output = Result<Order, StockError>> {
        let reply = sale_of(order_id).map(|sale| {
            let (tx, rx) = oneshot::channel();
            self.ask(Call::Order(sale.to_owned(), order_id.to_owned(), tx), rx)
        });
        async move {
            match reply {
                None => Err(StockError::OrderNotFound),
                Some(reply) => reply.await?.ok_or(StockError::OrderNotFound),
            }
        }
    }

    fn begin_transition(
        &self,
        order_id: &str,
        to: OrderStatus,
        now: u64,
    ) -> impl Future<Output = Result<Transition<AppliedMove>, StockError>> {
        let reply = sale_of(order_id).map(|sale| {
            let (tx, rx) = oneshot::channel();
            self.ask(
                Call::Move(sale.to_owned(), order_id.to_owned(), to, now, tx),
                rx,
            )
        });
        async move {
            let Some(reply) = reply else {
                return Err(StockError::OrderNotFound);
            };
            match reply.await? {
                Moved::Changed(order) => Ok(Transition::Pending {
                    order: order.clone(),
                    pending: AppliedMove { order, fresh: true },
                }),
                // Applied earlier, and its event may never have reached the
                // log (that append failed): log it now, before answering.
                Moved::Unlogged(order) => Ok(Transition::Pending {
                    order: order.clone(),
                    pending: AppliedMove {
                        order,
                        fresh: false,
                    },
                }),
                Moved::Unchanged(order) => Ok(Transition::Unchanged(order)),
                Moved::Invalid(status) => Err(StockError::InvalidState(match status {
                    OrderStatus::Paid => "the order is paid",
                    OrderStatus::Cancelled => "the order is cancelled",
                    OrderStatus::Expired => "the order has expired",
                    OrderStatus::Reserved => "the order is still reserved",
                })),
                Moved::NotFound => Err(StockError::OrderNotFound),
                // Only a release answers this.
                Moved::Kept(_) => Err(StockError::Unavailable(
                    "unexpected answer to a transition".into(),
                )),
            }
        }
    }

    fn finish_transition(&self, pending: AppliedMove) -> Order {
        let AppliedMove { order, fresh } = pending;
        if !self.shared.opts.track_log {
            // The journal has the event: the move leaves the set (with a
            // Kafka log, the settler removes what it reads).
            let _ = self.send(Call::Logged(
                order.sale_id.clone(),
                order.order_id.clone(),
                order.status,
            ));
        }
        if fresh && order.status.releases_stock() {
            if let Some(sale) = self.shared.sales.get(&order.sale_id) {
                // The poller corrects this from Redis; until then the node's
                // view moves at once. The unit went back to the pool.
                sale.sub_sold(order.quantity);
                sale.set_pool_hint(sale.pool_hint().saturating_add(u64::from(order.quantity)));
            }
        }
        order
    }

    fn abort_transition(&self, pending: AppliedMove) {
        // Redis applied the move before the log was asked; it stands, and
        // stays in the not-yet-logged set: a repeat of the move (the
        // caller's retry of its 503; the expiry sweep retries by itself)
        // finds it `Unlogged` and logs it before answering.
        warn!(
            order_id = pending.order.order_id,
            "a transition applied in Redis could not be logged"
        );
    }

    fn due_expiries(&self, shard: usize, _now: u64, out: &mut Vec<String>) {
        out.append(&mut self.shared.due[shard % self.shared.opts.shards].lock());
    }

    fn retry_expiry(&self, order_id: &str, _at: u64) {
        let shard = fnv(order_id.as_bytes()) as usize % self.shared.opts.shards;
        self.shared.due[shard].lock().push(order_id.to_owned());
    }

    fn maintain(&self, now: u64) -> usize {
        let mut forgotten = 0;
        for stripe in self.shared.keys.iter() {
            let mut map = stripe.lock();
            let before = map.len();
            map.retain(|_, known| known.expires_at > now);
            forgotten += before - map.len();
        }
        if self.shared.opts.key_ttl_s > 0 {
            let _ = self.send(Call::ExpireKeys);
        }
        forgotten
    }

    fn close(&self) {
        let Some(handle) = self.backend.lock().take() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        // Straight to the channel: `send` refuses calls once the id is lost.
        if self.calls.send(Call::Stop(tx)).is_ok() {
            // Lease returns take one round trip per sale.
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
        let _ = handle.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ids_carry_their_sale() {
        assert_eq!(sale_of("3-1795000000000000-phone-1111"), Some("phone-1111"));
        assert_eq!(sale_of("3-17-s"), Some("s"));
        assert_eq!(sale_of("3-17"), None);
        assert_eq!(sale_of("x-17-s"), None);
        assert_eq!(sale_of("1-2-"), None);
        assert_eq!(sale_of("-2-s"), None);
        let id = OrderIds::new(3, 0).next(Some("phone-1"));
        assert_eq!(sale_of(&id), Some("phone-1"), "{id}");
        assert_eq!(
            id.len(),
            "3-".len() + OrderIds::RANDOM_LEN + "-phone-1".len()
        );
    }
}
