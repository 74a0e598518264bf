//! The embedded stock authority: everything the node must account for,
//! held in process and rebuilt from the order log on start.
//!
//! State: the sales (a registry read through per-core caches), per-user
//! holdings (in each [`Sale`]), idempotency records and orders (striped
//! maps), and per-shard expiry queues. The order log is the source of truth:
//! nothing here is final until its event is durable (`confirm`,
//! `finish_transition`), and the `restore_*` methods
//! ([`EmbeddedAuthority::restore_saved`], [`EmbeddedAuthority::restore_order`],
//! ...) rebuild a fresh authority from the snapshot and the log.
//!
//! Locks: striped `parking_lot` mutexes, held for a few map operations and
//! never across an `.await` (every method here is synchronous).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::{ready, Future};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::authority::{Reservation, StockAuthority, Transition};
use crate::model::{
    Attempt, KeyLookup, Order, OrderIds, OrderStatus, SaleSpec, SaleSwitchState, StockError, Switch,
};
use crate::registry::Registry;
use crate::sale::Sale;
use crate::striped::Striped;
use crate::Units;

/// How long an idempotency record is kept by default: 24 hours.
pub const DEFAULT_KEY_TTL_S: u64 = 24 * 3600;
/// How long a finished order (paid, cancelled, expired) stays in memory by
/// default: 1 hour.
pub const DEFAULT_ORDER_RETENTION_S: u64 = 3600;

struct KeyRecord {
    fingerprint: u64,
    /// `None` while the first request with the key is in flight.
    order_id: Option<Box<str>>,
    /// Unix seconds after which the record may be forgotten.
    expires_at: u64,
}

/// Order ids by a time (Unix seconds), soonest first: reserved orders by
/// expiry, finished orders by when they are forgotten.
type ExpiryQueue = BinaryHeap<Reverse<(u64, Box<str>)>>;

struct OrderEntry {
    order: Order,
    /// A transition has begun and waits for its event to be durable.
    moving: bool,
    /// The order's Idempotency-Key, if it had one.
    key: Option<Box<str>>,
    /// A finished order: when it is forgotten (Unix seconds); 0 while
    /// reserved.
    forget_at: u64,
}

/// The in-process stock authority of the embedded mode.
pub struct EmbeddedAuthority {
    shards: usize,
    key_ttl_s: u64,
    sales: Registry,
    keys: Striped<HashMap<Box<str>, KeyRecord>>,
    orders: Striped<HashMap<Box<str>, OrderEntry>>,
    /// Reserved orders by expiry time, one queue per shard.
    expiries: Box<[Mutex<ExpiryQueue>]>,
    /// How long a finished order stays in memory.
    retention_s: u64,
    /// Finished orders by the time they are forgotten, one queue per shard.
    retained: Box<[Mutex<ExpiryQueue>]>,
    ids: OrderIds,
}

/// The whole state of an embedded authority, as a snapshot holds it (see
/// [`EmbeddedAuthority::save`]). Units in shards are not saved: a restored
/// sale has every unit not sold in its shards, and a closed sale is
/// drained at the end of the replay that follows, as in a replay from the
/// first event.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Saved {
    pub sales: Vec<SavedSale>,
    pub orders: Vec<SavedOrder>,
    pub keys: Vec<SavedKey>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedSale {
    pub sale_id: String,
    pub stock: u64,
    pub per_user_limit: u32,
    pub starts_at: u64,
    pub ends_at: Option<u64>,
    pub payment_timeout_s: u64,
    /// Absent in snapshots written before tickets: false.
    #[serde(default)]
    pub ticket_required: bool,
    /// `live`, `paused` or `closed`.
    pub switch: String,
    pub sold: u64,
    /// Units each user holds in live orders.
    pub holders: Vec<(String, u32)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedOrder {
    pub order_id: String,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: u32,
    /// `reserved`, `paid`, `cancelled` or `expired`.
    pub status: String,
    pub expires_at: u64,
    pub shard: usize,
    pub key: Option<String>,
    /// A finished order: when it is forgotten.
    pub forget_at: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedKey {
    pub key: String,
    pub fingerprint: u64,
    pub order_id: String,
    pub expires_at: u64,
}

/// A reservation waiting for its record to be durable.
pub struct PendingOrder<'a> {
    sale: &'a Sale,
    units: Units<'a>,
    order: Order,
    key: Option<Box<str>>,
}

/// A transition waiting for its event to be durable.
pub struct PendingMove {
    order_id: Box<str>,
    to: OrderStatus,
}

impl EmbeddedAuthority {
    /// An empty authority for a node with `shards` cores. Order ids are
    /// `{node_id}-{random}` ([`OrderIds`], its counter started at
    /// `now_micros`): unguessable, and unique across restarts without a
    /// sequence to restore.
    pub fn new(node_id: u32, shards: usize, key_ttl_s: u64, now_micros: u64) -> Self {
        EmbeddedAuthority {
            shards: shards.max(1),
            key_ttl_s,
            sales: Registry::default(),
            keys: Striped::new(),
            orders: Striped::new(),
            expiries: (0..shards.max(1))
                .map(|_| Mutex::new(BinaryHeap::new()))
                .collect(),
            retention_s: DEFAULT_ORDER_RETENTION_S,
            retained: (0..shards.max(1))
                .map(|_| Mutex::new(BinaryHeap::new()))
                .collect(),
            ids: OrderIds::new(node_id, now_micros),
        }
    }

    /// Sets how long a finished order stays in memory (and so answers
    /// `GET /orders/{id}`). It stays at least as long as its Idempotency-Key
    /// is remembered, so a retry always finds its order.
    pub fn with_order_retention(mut self, retention_s: u64) -> Self {
        self.retention_s = retention_s;
        self
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Number of idempotency records held (metrics; bounded by the TTL).
    pub fn key_records(&self) -> usize {
        self.keys.iter().map(|s| s.lock().len()).sum()
    }

    /// Number of orders held.
    pub fn order_count(&self) -> usize {
        self.orders.iter().map(|s| s.lock().len()).sum()
    }

    fn insert_sale(&self, spec: SaleSpec) -> Result<Arc<Sale>, StockError> {
        let shards = self.shards;
        self.sales
            .insert_with(&spec, || Sale::new(spec.clone(), shards))
    }

    fn hold_limit(&self, sale: &Sale, user_id: &str, qty: u32) -> Result<(), StockError> {
        let limit = sale.spec().per_user_limit;
        let mut holders = sale.holders.get(user_id).lock();
        let held = holders.get(user_id).copied().unwrap_or(0);
        if held.saturating_add(qty) > limit {
            return Err(StockError::LimitExceeded);
        }
        holders.insert(user_id.into(), held + qty);
        Ok(())
    }

    fn unhold_limit(&self, sale: &Sale, user_id: &str, qty: u32) {
        let mut holders = sale.holders.get(user_id).lock();
        if let Some(held) = holders.get_mut(user_id) {
            *held = held.saturating_sub(qty);
            if *held == 0 {
                holders.remove(user_id);
            }
        }
    }

    /// Claims `key` for a new request; `Err` if it is taken.
    fn claim_key(&self, key: &str, fingerprint: u64, now: u64) -> Result<(), StockError> {
        let mut map = self.keys.get(key).lock();
        if let Some(rec) = map.get(key) {
            if rec.order_id.is_some() && rec.expires_at <= now {
                map.remove(key);
            } else {
                return Err(key_conflict(rec, fingerprint));
            }
        }
        map.insert(
            key.into(),
            KeyRecord {
                fingerprint,
                order_id: None,
                expires_at: u64::MAX,
            },
        );
        Ok(())
    }

    fn release_key(&self, key: &str) {
        let mut map = self.keys.get(key).lock();
        if map.get(key).is_some_and(|r| r.order_id.is_none()) {
            map.remove(key);
        }
    }

    fn record(&self, order: Order, key: Option<(Box<str>, u64)>, at: u64) {
        let key = key.map(|(key, fingerprint)| {
            self.keys.get(&key).lock().insert(
                key.clone(),
                KeyRecord {
                    fingerprint,
                    order_id: Some(order.order_id.as_str().into()),
                    expires_at: at.saturating_add(self.key_ttl_s),
                },
            );
            key
        });
        if order.status == OrderStatus::Reserved {
            let shard = fnv_shard(&order.order_id, self.shards);
            self.expiries[shard]
                .lock()
                .push(Reverse((order.expires_at, order.order_id.as_str().into())));
        }
        self.orders.get(&order.order_id).lock().insert(
            order.order_id.as_str().into(),
            OrderEntry {
                order,
                moving: false,
                key,
                forget_at: 0,
            },
        );
    }

    /// An order just finished at `now`: queues it to be forgotten after the
    /// retention, and not before its Idempotency-Key is.
    fn retain(&self, entry: &mut OrderEntry, now: u64) {
        let key_expiry = entry.key.as_deref().map_or(0, |k| {
            self.keys.get(k).lock().get(k).map_or(0, |r| r.expires_at)
        });
        entry.forget_at = now.saturating_add(self.retention_s).max(key_expiry);
        let id = entry.order.order_id.as_str();
        self.retained[fnv_shard(id, self.shards)]
            .lock()
            .push(Reverse((entry.forget_at, id.into())));
    }

    /// Forgets the finished orders whose retention passed by `now`.
    fn forget_finished(&self, now: u64) -> usize {
        let mut forgotten = 0;
        let mut due = Vec::new();
        for queue in self.retained.iter() {
            // Taken out first: a finishing order holds its stripe while it
            // queues itself, so the two locks are never held the other way.
            {
                let mut heap = queue.lock();
                while heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                    due.extend(heap.pop().map(|Reverse((_, id))| id));
                }
            }
            for id in due.drain(..) {
                let mut stripe = self.orders.get(&id).lock();
                if stripe
                    .get(&*id)
                    .is_some_and(|e| e.order.status != OrderStatus::Reserved)
                {
                    stripe.remove(&*id);
                    forgotten += 1;
                }
            }
        }
        forgotten
    }

    /// Gives back what a released order held: its units to stock, its count
    /// to the user.
    fn release_units(&self, order: &Order) {
        if let Some(sale) = self.sale(&order.sale_id) {
            self.unhold_limit(&sale, &order.user_id, order.quantity);
            sale.sub_sold(order.quantity);
            sale.stock.put_back(order.shard, u64::from(order.quantity));
        }
    }

    // ----- snapshot -----------------------------------------------------

    /// Everything this authority holds, for a snapshot. Meant for an
    /// authority that only replays (the compactor's): a reservation or move
    /// in flight is not saved.
    pub fn save(&self) -> Saved {
        let mut saved = Saved::default();
        for sale in self.sales.all() {
            let spec = sale.spec();
            let switch = if sale.is_closed() {
                SaleSwitchState::Closed
            } else if sale.is_paused() {
                SaleSwitchState::Paused
            } else {
                SaleSwitchState::Live
            };
            let mut holders = Vec::new();
            for stripe in sale.holders.iter() {
                holders.extend(stripe.lock().iter().map(|(u, n)| (u.to_string(), *n)));
            }
            saved.sales.push(SavedSale {
                sale_id: spec.sale_id.clone(),
                stock: spec.stock,
                per_user_limit: spec.per_user_limit,
                starts_at: spec.starts_at,
                ends_at: spec.ends_at,
                payment_timeout_s: spec.payment_timeout_s,
                ticket_required: spec.ticket_required,
                switch: switch.as_str().into(),
                sold: sale.sold(),
                holders,
            });
        }
        for stripe in self.orders.iter() {
            for entry in stripe.lock().values() {
                let o = &entry.order;
                saved.orders.push(SavedOrder {
                    order_id: o.order_id.clone(),
                    sale_id: o.sale_id.clone(),
                    user_id: o.user_id.clone(),
                    quantity: o.quantity,
                    status: o.status.as_str().into(),
                    expires_at: o.expires_at,
                    shard: o.shard,
                    key: entry.key.as_deref().map(str::to_owned),
                    forget_at: entry.forget_at,
                });
            }
        }
        for stripe in self.keys.iter() {
            for (key, rec) in stripe.lock().iter() {
                if let Some(order_id) = &rec.order_id {
                    saved.keys.push(SavedKey {
                        key: key.to_string(),
                        fingerprint: rec.fingerprint,
                        order_id: order_id.to_string(),
                        expires_at: rec.expires_at,
                    });
                }
            }
        }
        saved
    }

    /// Loads a snapshot into this fresh authority; the events logged after
    /// it are then replayed with the `restore_*` methods.
    pub fn restore_saved(&self, saved: Saved) -> Result<(), StockError> {
        for s in saved.sales {
            let spec = SaleSpec {
                sale_id: s.sale_id,
                stock: s.stock,
                per_user_limit: s.per_user_limit,
                starts_at: s.starts_at,
                ends_at: s.ends_at,
                payment_timeout_s: s.payment_timeout_s,
                ticket_required: s.ticket_required,
            };
            let unsold = spec
                .stock
                .checked_sub(s.sold)
                .ok_or(StockError::InvalidState(
                    "the snapshot sells more than the stock",
                ))?;
            let shards = self.shards;
            let sale = self.sales.insert_with(&spec, || {
                Sale::with_local_units(spec.clone(), shards, unsold)
            })?;
            sale.set_sold(s.sold);
            match s.switch.parse() {
                Ok(SaleSwitchState::Live) => {}
                Ok(SaleSwitchState::Paused) => sale.apply_switch(Switch::Pause)?,
                Ok(SaleSwitchState::Closed) => sale.apply_switch(Switch::Close)?,
                Err(_) => return Err(StockError::InvalidState("the snapshot is inconsistent")),
            }
            for (user, n) in s.holders {
                sale.holders.get(&user).lock().insert(user.into(), n);
            }
        }
        for o in saved.orders {
            let status: OrderStatus = o
                .status
                .parse()
                .map_err(|_| StockError::InvalidState("the snapshot is inconsistent"))?;
            let id: Box<str> = o.order_id.as_str().into();
            let queue = if status == OrderStatus::Reserved {
                &self.expiries
            } else {
                &self.retained
            };
            let at = if status == OrderStatus::Reserved {
                o.expires_at
            } else {
                o.forget_at
            };
            queue[fnv_shard(&id, self.shards)]
                .lock()
                .push(Reverse((at, id.clone())));
            let entry = OrderEntry {
                order: Order {
                    order_id: o.order_id,
                    sale_id: o.sale_id,
                    user_id: o.user_id,
                    quantity: o.quantity,
                    status,
                    expires_at: o.expires_at,
                    shard: o.shard % self.shards,
                },
                moving: false,
                key: o.key.map(String::into_boxed_str),
                forget_at: o.forget_at,
            };
            self.orders.get(&id).lock().insert(id, entry);
        }
        for k in saved.keys {
            let key: Box<str> = k.key.into_boxed_str();
            self.keys.get(&key).lock().insert(
                key,
                KeyRecord {
                    fingerprint: k.fingerprint,
                    order_id: Some(k.order_id.into_boxed_str()),
                    expires_at: k.expires_at,
                },
            );
        }
        Ok(())
    }

    // ----- replay -------------------------------------------------------

    /// Replays a `sale_created` record.
    pub fn restore_sale(&self, spec: SaleSpec) -> Result<(), StockError> {
        self.insert_sale(spec).map(|_| ())
    }

    /// Replays a `sale_switched` record.
    ///
    /// A close does not drain the sale's stock here but at
    /// [`EmbeddedAuthority::finish_restore`]: purchases that passed the
    /// authority's check before the close was applied are valid, and they
    /// may be logged after the close (their append raced with it).
    /// A pause or resume after a close was refused when it was made (an
    /// older node logged it before it was refused): it changes nothing.
    pub fn restore_switch(&self, sale_id: &str, switch: Switch) -> Result<(), StockError> {
        let sale = self.sale(sale_id).ok_or(StockError::SaleNotFound)?;
        if sale.is_closed() {
            return Ok(());
        }
        sale.apply_switch(switch)
    }

    /// Ends a replay: the stock left in closed sales is drained, as the
    /// close did when it was applied.
    pub fn finish_restore(&self) {
        for sale in self.sales.all() {
            if sale.is_closed() {
                sale.stock.drain();
            }
        }
    }

    /// Replays an `order_reserved` record made at `at` (Unix seconds).
    /// Fails if the log sells more than the sale's stock: the log is then
    /// not this node's or is corrupt, and starting would risk an oversell.
    pub fn restore_order(
        &self,
        order: Order,
        key: Option<(String, u64)>,
        at: u64,
    ) -> Result<(), StockError> {
        let sale = self.sale(&order.sale_id).ok_or(StockError::SaleNotFound)?;
        let units =
            sale.stock
                .take(order.shard, order.quantity)
                .ok_or(StockError::InvalidState(
                    "the order log sells more than the stock",
                ))?;
        units.commit();
        sale.add_sold(order.quantity);
        *sale
            .holders
            .get(&order.user_id)
            .lock()
            .entry(order.user_id.as_str().into())
            .or_insert(0) += order.quantity;
        self.record(order, key.map(|(k, f)| (k.into_boxed_str(), f)), at);
        Ok(())
    }

    /// Replays a transition record made at `at` (Unix seconds).
    pub fn restore_transition(
        &self,
        order_id: &str,
        to: OrderStatus,
        at: u64,
    ) -> Result<(), StockError> {
        let released = {
            let mut stripe = self.orders.get(order_id).lock();
            let entry = stripe.get_mut(order_id).ok_or(StockError::OrderNotFound)?;
            if entry.order.status != OrderStatus::Reserved {
                return Ok(());
            }
            entry.order.status = to;
            self.retain(entry, at);
            to.releases_stock().then(|| entry.order.clone())
        };
        if let Some(order) = released {
            self.release_units(&order);
        }
        Ok(())
    }
}

impl StockAuthority for EmbeddedAuthority {
    type PendingOrder<'a> = PendingOrder<'a>;
    type PendingTransition = PendingMove;

    fn create_sale(&self, spec: SaleSpec) -> impl Future<Output = Result<Arc<Sale>, StockError>> {
        ready(self.insert_sale(spec))
    }

    fn switch(
        &self,
        sale_id: &str,
        switch: Switch,
    ) -> impl Future<Output = Result<Arc<Sale>, StockError>> {
        ready(
            self.sale(sale_id)
                .ok_or(StockError::SaleNotFound)
                .and_then(|sale| {
                    sale.apply_switch(switch)?;
                    if switch == Switch::Close {
                        sale.stock.drain();
                    }
                    Ok(sale)
                }),
        )
    }

    fn sale(&self, sale_id: &str) -> Option<Arc<Sale>> {
        self.sales.get(sale_id)
    }

    fn sales_epoch(&self) -> u64 {
        self.sales.epoch()
    }

    fn sales(&self) -> Vec<Arc<Sale>> {
        self.sales.all()
    }

    fn lookup_key(
        &self,
        sale: &Sale,
        attempt: &Attempt<'_>,
    ) -> impl Future<Output = Result<KeyLookup, StockError>> {
        let found = attempt
            .idempotency_key
            .map_or(Ok(KeyLookup::Unused), |key| {
                let fingerprint = attempt.fingerprint(sale.id());
                let order_id = {
                    let map = self.keys.get(key).lock();
                    match map.get(key) {
                        None => return Ok(KeyLookup::Unused),
                        Some(rec) if rec.order_id.is_some() && rec.expires_at <= attempt.now => {
                            return Ok(KeyLookup::Unused)
                        }
                        Some(rec) if rec.fingerprint != fingerprint || rec.order_id.is_none() => {
                            return Err(key_conflict(rec, fingerprint))
                        }
                        Some(rec) => rec.order_id.clone().unwrap_or_default(),
                    }
                };
                let stripe = self.orders.get(&order_id).lock();
                stripe
                    .get(&*order_id)
                    .map(|e| KeyLookup::Replay(e.order.clone()))
                    .ok_or(StockError::OrderNotFound)
            });
        ready(found)
    }

    fn refill<'a>(
        &'a self,
        _sale: &'a Sale,
        _core: usize,
        _qty: u32,
    ) -> impl Future<Output = Result<Units<'a>, StockError>> {
        // Every unit of an embedded sale is in its shards from the start.
        ready(Err(StockError::SoldOut))
    }

    fn reserve<'a>(
        &'a self,
        sale: &'a Sale,
        attempt: &Attempt<'_>,
        units: Units<'a>,
    ) -> impl Future<Output = Result<Reservation<PendingOrder<'a>>, StockError>> {
        let result = (|| {
            // The gate was passed before the request waited for its turn; a
            // switch applied since then wins. Any reservation that passes
            // here was decided before the pause or close was applied, so it
            // is valid even when its record lands after the switch's.
            if sale.is_closed() || sale.is_paused() {
                return Err(StockError::SaleNotOpen);
            }
            let key = match attempt.idempotency_key {
                Some(key) => {
                    self.claim_key(key, attempt.fingerprint(sale.id()), attempt.now)?;
                    Some(Box::<str>::from(key))
                }
                None => None,
            };
            if let Err(e) = self.hold_limit(sale, attempt.user_id, units.qty()) {
                if let Some(key) = &key {
                    self.release_key(key);
                }
                return Err(e);
            }
            let order = Order {
                order_id: self.ids.next(None),
                sale_id: sale.id().to_owned(),
                user_id: attempt.user_id.to_owned(),
                quantity: units.qty(),
                status: OrderStatus::Reserved,
                expires_at: attempt.now.saturating_add(sale.spec().payment_timeout_s),
                shard: attempt.core % self.shards,
            };
            Ok(Reservation::New {
                order: order.clone(),
                pending: PendingOrder {
                    sale,
                    units,
                    order,
                    key,
                },
            })
        })();
        ready(result)
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
        let fingerprint = key.as_ref().map(|k| {
            let map = self.keys.get(k).lock();
            map.get(&**k).map_or(0, |r| r.fingerprint)
        });
        let now = now_s();
        self.record(order, key.zip(fingerprint), now);
    }

    fn abort(&self, pending: PendingOrder<'_>) {
        let PendingOrder {
            sale,
            units,
            order,
            key,
        } = pending;
        self.unhold_limit(sale, &order.user_id, order.quantity);
        if let Some(key) = key {
            self.release_key(&key);
        }
        drop(units);
    }

    fn order(&self, order_id: &str) -> impl Future<Output = Result<Order, StockError>> {
        let stripe = self.orders.get(order_id).lock();
        ready(
            stripe
                .get(order_id)
                .map(|e| e.order.clone())
                .ok_or(StockError::OrderNotFound),
        )
    }

    fn begin_transition(
        &self,
        order_id: &str,
        to: OrderStatus,
        now: u64,
    ) -> impl Future<Output = Result<Transition<PendingMove>, StockError>> {
        let mut stripe = self.orders.get(order_id).lock();
        let result = match stripe.get_mut(order_id) {
            None => Err(StockError::OrderNotFound),
            Some(entry) if entry.order.status == to => {
                Ok(Transition::Unchanged(entry.order.clone()))
            }
            Some(entry) if entry.order.status != OrderStatus::Reserved => {
                Err(StockError::InvalidState(match entry.order.status {
                    OrderStatus::Paid => "the order is paid",
                    OrderStatus::Cancelled => "the order is cancelled",
                    _ => "the order has expired",
                }))
            }
            Some(entry) if entry.moving => Err(StockError::InProgress),
            Some(entry) if to == OrderStatus::Paid && now >= entry.order.expires_at => {
                Err(StockError::InvalidState("the order has expired"))
            }
            Some(entry) => {
                entry.moving = true;
                let mut order = entry.order.clone();
                order.status = to;
                Ok(Transition::Pending {
                    order,
                    pending: PendingMove {
                        order_id: order_id.into(),
                        to,
                    },
                })
            }
        };
        drop(stripe);
        ready(result)
    }

    fn finish_transition(&self, pending: PendingMove) -> Order {
        let order = {
            let mut stripe = self.orders.get(&pending.order_id).lock();
            let entry = stripe
                .get_mut(&*pending.order_id)
                .expect("a moving order stays in the map");
            entry.moving = false;
            entry.order.status = pending.to;
            self.retain(entry, now_s());
            entry.order.clone()
        };
        if pending.to.releases_stock() {
            self.release_units(&order);
        }
        order
    }

    /// Forgets idempotency records whose TTL passed, then finished orders
    /// whose retention passed.
    fn maintain(&self, now: u64) -> usize {
        let mut removed = 0;
        for stripe in self.keys.iter() {
            let mut map = stripe.lock();
            let before = map.len();
            map.retain(|_, r| r.order_id.is_none() || r.expires_at > now);
            removed += before - map.len();
        }
        removed + self.forget_finished(now)
    }

    /// Reserved orders of `shard` whose payment timeout passed by `now`.
    /// Orders that moved on meanwhile are skipped.
    fn due_expiries(&self, shard: usize, now: u64, out: &mut Vec<String>) {
        let mut heap = self.expiries[shard % self.shards].lock();
        while let Some(Reverse((at, _))) = heap.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, id))) = heap.pop() else {
                break;
            };
            let stripe = self.orders.get(&id).lock();
            if stripe
                .get(&*id)
                .is_some_and(|e| e.order.status == OrderStatus::Reserved)
            {
                out.push(id.into());
            }
        }
    }

    /// Puts an order whose expiry could not be recorded back in its queue.
    fn retry_expiry(&self, order_id: &str, at: u64) {
        let shard = fnv_shard(order_id, self.shards);
        self.expiries[shard]
            .lock()
            .push(Reverse((at, order_id.into())));
    }

    fn close(&self) {}

    fn abort_transition(&self, pending: PendingMove) {
        if let Some(entry) = self
            .orders
            .get(&pending.order_id)
            .lock()
            .get_mut(&*pending.order_id)
        {
            entry.moving = false;
        }
    }
}

fn key_conflict(rec: &KeyRecord, fingerprint: u64) -> StockError {
    if rec.fingerprint != fingerprint {
        StockError::KeyReused
    } else {
        StockError::InProgress
    }
}

fn fnv_shard(order_id: &str, shards: usize) -> usize {
    crate::striped::fnv(order_id.as_bytes()) as usize % shards
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// The embedded authority answers at once: one poll is enough.
    fn now<F: Future>(f: F) -> F::Output {
        let mut cx = Context::from_waker(Waker::noop());
        match pin!(f).poll(&mut cx) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("the embedded authority never waits"),
        }
    }

    fn spec(id: &str, stock: u64, limit: u32) -> SaleSpec {
        SaleSpec {
            sale_id: id.into(),
            stock,
            per_user_limit: limit,
            starts_at: 0,
            ends_at: None,
            payment_timeout_s: 60,
            ticket_required: false,
        }
    }

    fn attempt<'a>(user: &'a str, qty: u32, key: Option<&'a str>) -> Attempt<'a> {
        Attempt {
            user_id: user,
            quantity: qty,
            idempotency_key: key,
            now: 1_000,
            core: 0,
        }
    }

    /// Takes units and reserves; confirms unless `fail_log`.
    fn buy(
        auth: &EmbeddedAuthority,
        sale: &Sale,
        a: &Attempt<'_>,
        fail_log: bool,
    ) -> Result<Order, StockError> {
        let units = sale
            .stock
            .take(a.core, a.quantity)
            .ok_or(StockError::SoldOut)?;
        match now(auth.reserve(sale, a, units))? {
            Reservation::Replay(o) => Ok(o),
            Reservation::New { order, pending } => {
                if fail_log {
                    auth.abort(pending);
                    Err(StockError::Unavailable("log down".into()))
                } else {
                    auth.confirm(pending);
                    Ok(order)
                }
            }
        }
    }

    fn authority() -> EmbeddedAuthority {
        EmbeddedAuthority::new(7, 2, 3_600, 1_000_000)
    }

    #[test]
    fn a_snapshot_keeps_the_ticket_requirement() {
        let auth = authority();
        let ticketed = SaleSpec {
            ticket_required: true,
            ..spec("t", 3, 1)
        };
        auth.restore_sale(ticketed.clone()).unwrap();
        auth.restore_sale(spec("p", 3, 1)).unwrap();
        let bytes = serde_json::to_vec(&auth.save()).unwrap();
        let back = authority();
        back.restore_saved(serde_json::from_slice(&bytes).unwrap())
            .unwrap();
        assert_eq!(back.sale("t").unwrap().spec(), &ticketed);
        assert!(!back.sale("p").unwrap().spec().ticket_required);
    }

    #[test]
    fn ten_thousand_order_ids_are_no_sequence() {
        let auth = authority();
        let sale = now(auth.create_sale(spec("s", 10_000, 10_000))).unwrap();
        let mut values: Vec<u128> = (0..10_000)
            .map(|_| {
                let order = buy(&auth, &sale, &attempt("u", 1, None), false).unwrap();
                let (node, random) = order.order_id.split_once('-').unwrap();
                assert_eq!(node, "7");
                assert!(random.len() <= 20, "short: {}", order.order_id);
                u128::from_str_radix(random, 36).unwrap()
            })
            .collect();
        values.sort_unstable();
        for pair in values.windows(2) {
            // 64 random bits leave any two of 10,000 ids ~2^50 apart.
            assert!(pair[1] - pair[0] > 1 << 32, "ids differ by a small integer");
        }
    }

    #[test]
    fn reserve_confirm_counts_units_limit_and_names_orders() {
        let auth = authority();
        let sale = now(auth.create_sale(spec("s", 3, 2))).unwrap();
        let o1 = buy(&auth, &sale, &attempt("u", 1, None), false).unwrap();
        let o2 = buy(&auth, &sale, &attempt("u", 1, None), false).unwrap();
        assert_ne!(o1.order_id, o2.order_id);
        assert!(o1.order_id.starts_with("7-"));
        assert_eq!(o1.expires_at, 1_060);
        assert!(matches!(
            buy(&auth, &sale, &attempt("u", 1, None), false),
            Err(StockError::LimitExceeded)
        ));
        // The refused attempt gave its unit back.
        assert_eq!(sale.stock.available(), 1);
        assert_eq!(sale.sold(), 2);
        assert_eq!(sale.held_by("u"), 2);
        assert_eq!(
            now(auth.order(&o1.order_id)).unwrap().status,
            OrderStatus::Reserved
        );
    }

    #[test]
    fn abort_gives_back_units_limit_and_key() {
        let auth = authority();
        let sale = now(auth.create_sale(spec("s", 1, 1))).unwrap();
        let a = attempt("u", 1, Some("k"));
        assert!(buy(&auth, &sale, &a, true).is_err());
        assert_eq!(sale.stock.available(), 1);
        assert_eq!(sale.sold(), 0);
        assert_eq!(sale.held_by("u"), 0);
        assert_eq!(now(auth.lookup_key(&sale, &a)).unwrap(), KeyLookup::Unused);
        // And the same request can then succeed.
        buy(&auth, &sale, &a, false).unwrap();
    }

    #[test]
    fn keys_replay_conflict_and_in_progress() {
        let auth = authority();
        let sale = now(auth.create_sale(spec("s", 5, 5))).unwrap();
        let a = attempt("u", 1, Some("k"));
        let first = buy(&auth, &sale, &a, false).unwrap();
        assert_eq!(
            now(auth.lookup_key(&sale, &a)).unwrap(),
            KeyLookup::Replay(first.clone())
        );
        // Same key, other user or other quantity: reused.
        for other in [attempt("v", 1, Some("k")), attempt("u", 2, Some("k"))] {
            assert!(matches!(
                now(auth.lookup_key(&sale, &other)),
                Err(StockError::KeyReused)
            ));
        }
        // Same key on another sale: reused too (one key, one order).
        let sale2 = now(auth.create_sale(spec("s2", 5, 5))).unwrap();
        assert!(matches!(
            now(auth.lookup_key(&sale2, &a)),
            Err(StockError::KeyReused)
        ));
        // A key whose first request is still in flight.
        let b = attempt("w", 1, Some("k2"));
        let units = sale.stock.take(0, 1).unwrap();
        let Reservation::New { pending, .. } = now(auth.reserve(&sale, &b, units)).unwrap() else {
            panic!("expected a new reservation");
        };
        assert!(matches!(
            now(auth.lookup_key(&sale, &b)),
            Err(StockError::InProgress)
        ));
        let units = sale.stock.take(0, 1).unwrap();
        assert!(matches!(
            now(auth.reserve(&sale, &b, units)),
            Err(StockError::InProgress)
        ));
        auth.confirm(pending);
        assert_eq!(sale.sold(), 2);
        assert_eq!(auth.key_records(), 2);
    }

    #[test]
    fn keys_are_forgotten_after_their_ttl() {
        let auth = EmbeddedAuthority::new(1, 1, 10, 0);
        let sale = now(auth.create_sale(spec("s", 5, 5))).unwrap();
        let a = attempt("u", 1, Some("k"));
        buy(&auth, &sale, &a, false).unwrap();
        assert_eq!(auth.maintain(now_s() + 5), 0);
        assert_eq!(auth.maintain(now_s() + 11), 1);
        assert_eq!(auth.key_records(), 0);
        // The order itself stays.
        assert_eq!(auth.order_count(), 1);
    }

    #[test]
    fn finished_orders_are_forgotten_after_the_retention_but_not_before_their_key() {
        let auth = EmbeddedAuthority::new(1, 2, 100, 0).with_order_retention(10);
        let sale = now(auth.create_sale(spec("s", 5, 5))).unwrap();
        let plain = buy(&auth, &sale, &attempt("u", 1, None), false).unwrap();
        let keyed = buy(&auth, &sale, &attempt("u", 1, Some("k")), false).unwrap();
        let live = buy(&auth, &sale, &attempt("u", 1, None), false).unwrap();
        for id in [&plain.order_id, &keyed.order_id] {
            let Transition::Pending { pending, .. } =
                now(auth.begin_transition(id, OrderStatus::Cancelled, 1_001)).unwrap()
            else {
                panic!("expected a pending move");
            };
            auth.finish_transition(pending);
        }
        let t = now_s();
        assert_eq!(auth.maintain(t + 5), 0);
        assert_eq!(auth.maintain(t + 11), 1);
        assert!(matches!(
            now(auth.order(&plain.order_id)),
            Err(StockError::OrderNotFound)
        ));
        // The keyed order stays while its key does (TTL 100 s), and the
        // live one for good.
        assert!(now(auth.order(&keyed.order_id)).is_ok());
        assert_eq!(auth.maintain(t + 101), 2);
        assert!(now(auth.order(&keyed.order_id)).is_err());
        assert!(now(auth.order(&live.order_id)).is_ok());
        assert_eq!((sale.sold(), sale.held_by("u")), (1, 1));
    }

    #[test]
    fn a_saved_state_restores_what_a_replay_would() {
        let auth = EmbeddedAuthority::new(7, 2, 3_600, 1_000_000).with_order_retention(60);
        auth.restore_sale(spec("s", 5, 2)).unwrap();
        auth.restore_sale(spec("c", 4, 2)).unwrap();
        let order = |id: &str, sale: &str, user: &str| Order {
            order_id: id.into(),
            sale_id: sale.into(),
            user_id: user.into(),
            quantity: 1,
            status: OrderStatus::Reserved,
            expires_at: 2_000,
            shard: 1,
        };
        let t = now_s();
        auth.restore_order(order("7-5000000", "s", "u"), Some(("k".into(), 42)), t)
            .unwrap();
        auth.restore_order(order("7-5000001", "s", "u"), None, t)
            .unwrap();
        auth.restore_order(order("7-5000002", "s", "v"), None, t)
            .unwrap();
        auth.restore_transition("7-5000001", OrderStatus::Paid, t)
            .unwrap();
        auth.restore_transition("7-5000002", OrderStatus::Cancelled, t)
            .unwrap();
        auth.restore_order(order("7-5000003", "c", "w"), None, t)
            .unwrap();
        auth.restore_switch("c", Switch::Close).unwrap();
        auth.restore_switch("s", Switch::Pause).unwrap();

        let bytes = serde_json::to_vec(&auth.save()).unwrap();
        let back = EmbeddedAuthority::new(7, 2, 3_600, 1_000_000).with_order_retention(60);
        back.restore_saved(serde_json::from_slice(&bytes).unwrap())
            .unwrap();
        // A reservation of the closed sale logged after the close (decided
        // before it) still finds its unit after the snapshot.
        back.restore_order(order("7-5000004", "c", "x"), None, t)
            .unwrap();
        back.finish_restore();
        for id in ["7-5000000", "7-5000001", "7-5000002", "7-5000003"] {
            assert_eq!(
                now(back.order(id)).unwrap().status,
                now(auth.order(id)).unwrap().status,
                "{id}"
            );
        }
        let (s, c) = (back.sale("s").unwrap(), back.sale("c").unwrap());
        assert_eq!((s.sold(), s.stock.available(), s.is_paused()), (2, 3, true));
        assert_eq!((s.held_by("u"), s.held_by("v")), (2, 0));
        assert_eq!((c.sold(), c.stock.available(), c.is_closed()), (2, 0, true));
        let a = Attempt {
            user_id: "u",
            quantity: 1,
            idempotency_key: Some("k"),
            now: t,
            core: 0,
        };
        // The key's record came back as saved (fingerprint 42).
        assert!(matches!(
            now(back.lookup_key(&s, &a)),
            Err(StockError::KeyReused)
        ));
        // The finished orders are forgotten on time; the live one stays.
        assert_eq!(back.forget_finished(t + 61), 2);
        assert!(now(back.order("7-5000000")).is_ok());
    }

    #[test]
    fn cancel_and_expiry_return_units_exactly_once() {
        let auth = authority();
        let sale = now(auth.create_sale(spec("s", 1, 1))).unwrap();
        let order = buy(&auth, &sale, &attempt("u", 1, None), false).unwrap();
        assert!(sale.stock.take(0, 1).is_none());
        let Transition::Pending { pending, .. } =
            now(auth.begin_transition(&order.order_id, OrderStatus::Cancelled, 1_001)).unwrap()
        else {
            panic!("expected a pending move");
        };
        // A second cancel while the first is being recorded.
        assert!(matches!(
            now(auth.begin_transition(&order.order_id, OrderStatus::Cancelled, 1_001)),
            Err(StockError::InProgress)
        ));
        assert_eq!(
            auth.finish_transition(pending).status,
            OrderStatus::Cancelled
        );
        assert_eq!(
            (sale.stock.available(), sale.sold(), sale.held_by("u")),
            (1, 0, 0)
        );
        // Cancelling again changes nothing; paying is refused.
        assert!(matches!(
            now(auth.begin_transition(&order.order_id, OrderStatus::Cancelled, 1_002)),
            Ok(Transition::Unchanged(_))
        ));
        assert!(matches!(
            now(auth.begin_transition(&order.order_id, OrderStatus::Paid, 1_002)),
            Err(StockError::InvalidState(_))
        ));
        assert_eq!(sale.stock.available(), 1);

        // Expiry: due once the timeout passed, and only while reserved.
        let order = buy(&auth, &sale, &attempt("v", 1, None), false).unwrap();
        let mut due = Vec::new();
        for shard in 0..2 {
            auth.due_expiries(shard, order.expires_at - 1, &mut due);
        }
        assert!(due.is_empty());
        for shard in 0..2 {
            auth.due_expiries(shard, order.expires_at, &mut due);
        }
        assert_eq!(due, vec![order.order_id.clone()]);
        // Paying after the timeout is refused even before the sweep.
        assert!(matches!(
            now(auth.begin_transition(&order.order_id, OrderStatus::Paid, order.expires_at)),
            Err(StockError::InvalidState(_))
        ));
        let Transition::Pending { pending, .. } =
            now(auth.begin_transition(&order.order_id, OrderStatus::Expired, order.expires_at))
                .unwrap()
        else {
            panic!("expected a pending move");
        };
        auth.finish_transition(pending);
        assert_eq!((sale.stock.available(), sale.sold()), (1, 0));
    }

    #[test]
    fn aborted_transition_leaves_the_order_reserved() {
        let auth = authority();
        let sale = now(auth.create_sale(spec("s", 1, 1))).unwrap();
        let order = buy(&auth, &sale, &attempt("u", 1, None), false).unwrap();
        let Transition::Pending { pending, .. } =
            now(auth.begin_transition(&order.order_id, OrderStatus::Cancelled, 1_001)).unwrap()
        else {
            panic!("expected a pending move");
        };
        auth.abort_transition(pending);
        assert_eq!(
            now(auth.order(&order.order_id)).unwrap().status,
            OrderStatus::Reserved
        );
        assert_eq!(sale.sold(), 1);
        assert!(sale.stock.take(0, 1).is_none());
    }

    #[test]
    fn restore_rebuilds_sold_limits_and_keys() {
        let auth = authority();
        auth.restore_sale(spec("s", 3, 1)).unwrap();
        let order = |id: &str, user: &str| Order {
            order_id: id.into(),
            sale_id: "s".into(),
            user_id: user.into(),
            quantity: 1,
            status: OrderStatus::Reserved,
            expires_at: u64::MAX,
            shard: 1,
        };
        let a = attempt("u", 1, Some("k"));
        let sale = auth.sale("s").unwrap();
        let fp = a.fingerprint("s");
        auth.restore_order(order("7-5000000", "u"), Some(("k".into(), fp)), now_s())
            .unwrap();
        auth.restore_order(order("7-5000001", "v"), None, now_s())
            .unwrap();
        auth.restore_transition("7-5000001", OrderStatus::Cancelled, now_s())
            .unwrap();
        // A repeated transition record is harmless.
        auth.restore_transition("7-5000001", OrderStatus::Cancelled, now_s())
            .unwrap();
        assert_eq!((sale.sold(), sale.stock.available()), (1, 2));
        assert_eq!(sale.held_by("u"), 1);
        assert_eq!(sale.held_by("v"), 0);
        assert!(matches!(
            now(auth.lookup_key(&sale, &a)).unwrap(),
            KeyLookup::Replay(o) if o.order_id == "7-5000000"
        ));
        // New ids are the node's and none of the restored ones.
        let next = buy(&auth, &sale, &attempt("w", 1, None), false).unwrap();
        assert!(next.order_id.starts_with("7-"), "{}", next.order_id);
        assert!(!next.order_id.starts_with("7-50000"), "{}", next.order_id);
        // A log that sells more than the stock is refused.
        auth.restore_order(order("7-1", "x"), None, now_s())
            .unwrap();
        assert!(auth
            .restore_order(order("7-2", "y"), None, now_s())
            .is_err());
    }

    #[test]
    fn no_reservation_after_a_switch_is_applied_and_replay_honours_earlier_ones() {
        let auth = authority();
        let sale = now(auth.create_sale(spec("s", 3, 3))).unwrap();
        // Units taken before the pause: the reservation is refused after it.
        let units = sale.stock.take(0, 1).unwrap();
        now(auth.switch("s", Switch::Pause)).unwrap();
        assert!(matches!(
            now(auth.reserve(&sale, &attempt("u", 1, None), units)),
            Err(StockError::SaleNotOpen)
        ));
        now(auth.switch("s", Switch::Resume)).unwrap();
        let units = sale.stock.take(0, 1).unwrap();
        now(auth.switch("s", Switch::Close)).unwrap();
        assert!(matches!(
            now(auth.reserve(&sale, &attempt("u", 1, None), units)),
            Err(StockError::SaleNotOpen)
        ));
        assert_eq!(sale.sold(), 0);

        // Replay: an order logged after the close (decided before it) is
        // kept; a resume after the close changes nothing; the rest of the
        // stock is drained at the end.
        let back = authority();
        back.restore_sale(spec("s", 3, 3)).unwrap();
        back.restore_switch("s", Switch::Close).unwrap();
        let order = Order {
            order_id: "7-9".into(),
            sale_id: "s".into(),
            user_id: "u".into(),
            quantity: 1,
            status: OrderStatus::Reserved,
            expires_at: u64::MAX,
            shard: 0,
        };
        back.restore_order(order.clone(), None, now_s()).unwrap();
        back.restore_switch("s", Switch::Resume).unwrap();
        // Units an expiry logged after the close gave back (before the
        // close was applied) may be sold again by orders logged after it.
        back.restore_transition("7-9", OrderStatus::Expired, now_s())
            .unwrap();
        back.restore_order(
            Order {
                order_id: "7-10".into(),
                ..order.clone()
            },
            None,
            now_s(),
        )
        .unwrap();
        back.restore_order(
            Order {
                order_id: "7-11".into(),
                ..order.clone()
            },
            None,
            now_s(),
        )
        .unwrap();
        back.restore_order(
            Order {
                order_id: "7-12".into(),
                ..order
            },
            None,
            now_s(),
        )
        .unwrap();
        back.finish_restore();
        let sale = back.sale("s").unwrap();
        assert!(sale.is_closed());
        assert_eq!((sale.sold(), sale.stock.available()), (3, 0));
    }

    #[test]
    fn sales_are_not_silently_redefined_and_close_drains() {
        let auth = authority();
        let epoch = auth.sales_epoch();
        now(auth.create_sale(spec("s", 3, 1))).unwrap();
        assert_ne!(auth.sales_epoch(), epoch);
        assert!(now(auth.create_sale(spec("s", 3, 1))).is_ok());
        assert!(matches!(
            now(auth.create_sale(spec("s", 4, 1))),
            Err(StockError::InvalidState(_))
        ));
        let sale = now(auth.switch("s", Switch::Close)).unwrap();
        assert_eq!(sale.stock.available(), 0);
        assert!(matches!(
            now(auth.switch("s", Switch::Resume)),
            Err(StockError::InvalidState(_))
        ));
        assert!(matches!(
            now(auth.switch("nope", Switch::Pause)),
            Err(StockError::SaleNotFound)
        ));
    }
}
