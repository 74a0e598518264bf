//! Model-based property test of the embedded stock authority, in process:
//! random sequences of sale creation, purchases (several users, with and
//! without Idempotency-Keys, up to the per-user limit and past it), pays,
//! cancels, expiries (a fake clock: every call takes `now`), pause, resume
//! and close, failed log appends, compactions (a snapshot) and restarts
//! (the authority dropped and rebuilt from its log, the way a node replays
//! its journal; at a crash a purchase or a move may be in flight: its
//! record torn off, or durable but never answered), each step driven the
//! way the node's handlers drive the authority and checked against a plain
//! model: sold and remaining, the units in the shards (a released unit
//! comes back exactly once), each order's status, per-user holdings, the
//! switch, replayed keys answer their first order, and no oversell.
//!
//! The seed is fixed and the cases bounded: a few seconds, the same cases
//! every run.
#![cfg(not(loom))]

use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use stock::{
    Attempt, EmbeddedAuthority, KeyLookup, Order, OrderStatus, Reservation, Sale, SaleSpec,
    StockAuthority, StockError, Switch, Transition,
};

const SALE: &str = "model";
const STOCK: u64 = 6;
const LIMIT: u32 = 2;
const USERS: u8 = 4;
const KEYS: u8 = 6;
const SHARDS: usize = 2;
const PAYMENT_TIMEOUT_S: u64 = 10;
/// Idempotency records outlive every sequence (their TTL is not modelled).
const KEY_TTL_S: u64 = 1_000_000;

/// The fake clock's start: now, Unix seconds. (The authority stamps the
/// records of confirmed orders and finished moves with the wall clock, so
/// the fake clock starts there; it then moves ahead of it by at most a few
/// hundred seconds, well within the key TTL and the order retention.)
fn t0() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// The embedded authority answers at once: one poll is enough.
fn now<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(f).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the embedded authority never waits"),
    }
}

fn spec(stock: u64) -> SaleSpec {
    SaleSpec {
        sale_id: SALE.into(),
        stock,
        per_user_limit: LIMIT,
        starts_at: 0,
        ends_at: None,
        payment_timeout_s: PAYMENT_TIMEOUT_S,
        ticket_required: false,
    }
}

// ---- the log ------------------------------------------------------------

/// One durable record of the authority's log, as the node's journal holds
/// it (the node's events carry the same fields).
#[derive(Clone, Debug)]
enum Record {
    Sale(SaleSpec),
    Switch(Switch),
    Reserved {
        order: Order,
        key: Option<(String, u64)>,
        at: u64,
    },
    Moved {
        order_id: String,
        to: OrderStatus,
        at: u64,
    },
    /// A compaction: the state folded into a snapshot (JSON, as on disk).
    Snapshot(String),
}

/// Rebuilds an authority from its log, as a restarting node does.
fn replay(log: &[Record], incarnation: u64) -> EmbeddedAuthority {
    let auth = EmbeddedAuthority::new(7, SHARDS, KEY_TTL_S, incarnation * 1_000_000);
    for r in log {
        match r {
            Record::Sale(spec) => auth.restore_sale(spec.clone()).expect("restore sale"),
            Record::Switch(s) => auth.restore_switch(SALE, *s).expect("restore switch"),
            Record::Reserved { order, key, at } => auth
                .restore_order(order.clone(), key.clone(), *at)
                .expect("restore order"),
            Record::Moved { order_id, to, at } => auth
                .restore_transition(order_id, *to, *at)
                .expect("restore transition"),
            Record::Snapshot(json) => auth
                .restore_saved(serde_json::from_str(json).expect("snapshot reads"))
                .expect("restore snapshot"),
        }
    }
    auth.finish_restore();
    auth
}

// ---- the operations -----------------------------------------------------

/// What may be in flight when the node is killed.
#[derive(Clone, Copy, Debug)]
enum InFlight {
    Nothing,
    /// A purchase reserved, its record not durable (torn off the tail).
    TornPurchase {
        user: u8,
        key: Option<u8>,
    },
    /// A purchase whose record is durable, killed before its answer.
    UnansweredPurchase {
        user: u8,
        key: Option<u8>,
    },
    /// A cancel begun, its record torn off.
    TornCancel {
        pick: u8,
    },
    /// A pay whose record is durable, killed before it was applied.
    UnappliedPay {
        pick: u8,
    },
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Create the sale (again: the same spec is a no-op, another refused).
    Create {
        other_stock: bool,
    },
    Buy {
        user: u8,
        qty: u32,
        key: Option<u8>,
        core: u8,
        log_fails: bool,
    },
    Pay {
        pick: u8,
        log_fails: bool,
    },
    Cancel {
        pick: u8,
        log_fails: bool,
    },
    /// The clock moves on; the node's expirer runs and housekeeping.
    Advance {
        secs: u64,
    },
    Switch(Switch),
    /// The log folded into a snapshot (what compaction writes).
    Compact,
    /// kill -9 and restart from the log.
    Restart(InFlight),
}

fn user_id(u: u8) -> String {
    format!("u{u}")
}

fn key_of(k: u8) -> String {
    format!("k{k}")
}

fn op() -> impl Strategy<Value = Op> {
    let key = prop_oneof![2 => Just(None), 3 => (0..KEYS).prop_map(Some)];
    let in_flight = prop_oneof![
        Just(InFlight::Nothing),
        (0..USERS, key.clone()).prop_map(|(user, key)| InFlight::TornPurchase { user, key }),
        (0..USERS, key.clone()).prop_map(|(user, key)| InFlight::UnansweredPurchase { user, key }),
        any::<u8>().prop_map(|pick| InFlight::TornCancel { pick }),
        any::<u8>().prop_map(|pick| InFlight::UnappliedPay { pick }),
    ];
    prop_oneof![
        1 => any::<bool>().prop_map(|other_stock| Op::Create { other_stock }),
        12 => (0..USERS, 1..=LIMIT, key, 0..4u8, prop::bool::weighted(0.1)).prop_map(
            |(user, qty, key, core, log_fails)| Op::Buy { user, qty, key, core, log_fails }
        ),
        3 => (any::<u8>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, log_fails)| Op::Pay { pick, log_fails }),
        3 => (any::<u8>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, log_fails)| Op::Cancel { pick, log_fails }),
        3 => (1..=8u64).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Switch(Switch::Pause)),
        2 => Just(Op::Switch(Switch::Resume)),
        1 => prop::bool::weighted(0.3).prop_map(|close| Op::Switch(if close {
            Switch::Close
        } else {
            Switch::Resume
        })),
        1 => Just(Op::Compact),
        2 => in_flight.prop_map(Op::Restart),
    ]
}

// ---- the model ----------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Switched {
    Live,
    Paused,
    Closed,
}

#[derive(Clone, Debug)]
struct ModelOrder {
    id: String,
    user: u8,
    qty: u32,
    status: OrderStatus,
    expires_at: u64,
}

#[derive(Default)]
struct Model {
    created: bool,
    switch: Option<Switched>,
    orders: Vec<ModelOrder>,
    /// key → (user, quantity) it was first used with, and its order.
    keys: HashMap<u8, (u8, u32, usize)>,
}

impl Model {
    fn live(o: &ModelOrder) -> bool {
        matches!(o.status, OrderStatus::Reserved | OrderStatus::Paid)
    }

    fn sold(&self) -> u64 {
        self.orders
            .iter()
            .filter(|o| Model::live(o))
            .map(|o| u64::from(o.qty))
            .sum()
    }

    fn held(&self, user: u8) -> u32 {
        self.orders
            .iter()
            .filter(|o| o.user == user && Model::live(o))
            .map(|o| o.qty)
            .sum()
    }

    /// What a purchase must be answered: `Ok(Some(i))` the order `i`
    /// again (a replay), `Ok(None)` a new order, or the refusal.
    fn purchase(&self, user: u8, qty: u32, key: Option<u8>) -> Result<Option<usize>, &'static str> {
        if !self.created {
            return Err("not_found");
        }
        if let Some(&(first_user, first_qty, i)) = key.and_then(|k| self.keys.get(&k)) {
            if (first_user, first_qty) != (user, qty) {
                return Err("idempotency_key_reused");
            }
            return Ok(Some(i));
        }
        if self.switch != Some(Switched::Live) {
            return Err("sale_not_open");
        }
        if self.sold() + u64::from(qty) > STOCK {
            return Err("sold_out");
        }
        if self.held(user) + qty > LIMIT {
            return Err("limit_exceeded");
        }
        Ok(None)
    }

    fn pick(&self, pick: u8) -> Option<usize> {
        (!self.orders.is_empty()).then(|| usize::from(pick) % self.orders.len())
    }

    /// What a move of order `i` to `to` at `t` must do: `Ok(true)` the move,
    /// `Ok(false)` unchanged, or the refusal.
    fn transition(&self, i: usize, to: OrderStatus, t: u64) -> Result<bool, &'static str> {
        let o = &self.orders[i];
        if o.status == to {
            return Ok(false);
        }
        if o.status != OrderStatus::Reserved {
            return Err("invalid_state");
        }
        if to == OrderStatus::Paid && t >= o.expires_at {
            return Err("invalid_state");
        }
        Ok(true)
    }
}

// ---- the system under test ----------------------------------------------

struct Node {
    auth: EmbeddedAuthority,
    log: Vec<Record>,
    t: u64,
    incarnation: u64,
}

/// A purchase, step by step as `Core::purchase` makes it, up to the point
/// where the record would be appended: the decision, and the pending
/// reservation for the caller to log, confirm or abort.
enum Bought<'a> {
    Replay(Order),
    New {
        order: Order,
        key: Option<(String, u64)>,
        pending: <EmbeddedAuthority as StockAuthority>::PendingOrder<'a>,
    },
}

fn begin_purchase<'a>(
    auth: &'a EmbeddedAuthority,
    sale: &'a Sale,
    attempt: &Attempt<'_>,
) -> Result<Bought<'a>, StockError> {
    if attempt.idempotency_key.is_some() {
        if let KeyLookup::Replay(order) = now(auth.lookup_key(sale, attempt))? {
            return Ok(Bought::Replay(order));
        }
    }
    sale.gate(attempt.now)?;
    if attempt.quantity > sale.spec().per_user_limit {
        return Err(StockError::LimitExceeded);
    }
    let units = match sale.stock.take(attempt.core, attempt.quantity) {
        Some(units) => units,
        None => now(auth.refill(sale, attempt.core, attempt.quantity))?,
    };
    match now(auth.reserve(sale, attempt, units))? {
        Reservation::Replay(order) => Ok(Bought::Replay(order)),
        Reservation::New { order, pending } => {
            let key = attempt
                .idempotency_key
                .map(|k| (k.to_owned(), attempt.fingerprint(sale.id())));
            Ok(Bought::New {
                order,
                key,
                pending,
            })
        }
    }
}

impl Node {
    fn new() -> Self {
        Node {
            auth: replay(&[], 0),
            log: Vec::new(),
            t: t0(),
            incarnation: 0,
        }
    }

    fn sale(&self) -> Option<Arc<Sale>> {
        self.auth.sale(SALE)
    }

    fn restart(&mut self) {
        self.incarnation += 1;
        self.auth = replay(&self.log, self.incarnation);
    }
}

fn code(e: &StockError) -> &'static str {
    e.code()
}

/// Runs `ops` against the authority and the model, checking after each.
fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut node = Node::new();
    let mut m = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let t = node.t;
        match *op {
            Op::Create { other_stock } => {
                let s = spec(if other_stock && m.created {
                    STOCK + 1
                } else {
                    STOCK
                });
                let got = now(node.auth.create_sale(s.clone())).map(|_| ());
                if !m.created {
                    prop_assert!(got.is_ok(), "step {step}: create: {got:?}");
                    node.log.push(Record::Sale(s));
                    m.created = true;
                    m.switch = Some(Switched::Live);
                } else if other_stock {
                    prop_assert!(got.is_err(), "step {step}: another spec was accepted");
                } else {
                    prop_assert!(got.is_ok(), "step {step}: the same spec: {got:?}");
                }
            }
            Op::Buy {
                user,
                qty,
                key,
                core,
                log_fails,
            } => {
                let want = m.purchase(user, qty, key);
                let Some(sale) = node.sale() else {
                    prop_assert_eq!(want, Err("not_found"), "step {}", step);
                    continue;
                };
                let (uid, k) = (user_id(user), key.map(key_of));
                let attempt = Attempt {
                    user_id: &uid,
                    quantity: qty,
                    idempotency_key: k.as_deref(),
                    now: t,
                    core: usize::from(core),
                };
                let got = begin_purchase(&node.auth, &sale, &attempt);
                match (want, got) {
                    (Ok(Some(i)), Ok(Bought::Replay(order))) => {
                        prop_assert_eq!(&order.order_id, &m.orders[i].id, "step {}", step);
                        prop_assert_eq!(order.status, m.orders[i].status, "step {}", step);
                    }
                    (
                        Ok(None),
                        Ok(Bought::New {
                            order,
                            key,
                            pending,
                        }),
                    ) => {
                        prop_assert_eq!(order.expires_at, t + PAYMENT_TIMEOUT_S);
                        if log_fails {
                            node.auth.abort(pending);
                        } else {
                            node.log.push(Record::Reserved {
                                order: order.clone(),
                                key,
                                at: t,
                            });
                            node.auth.confirm(pending);
                            if let Some(k) = key_of_op(*op) {
                                m.keys.insert(k, (user, qty, m.orders.len()));
                            }
                            m.orders.push(ModelOrder {
                                id: order.order_id,
                                user,
                                qty,
                                status: OrderStatus::Reserved,
                                expires_at: t + PAYMENT_TIMEOUT_S,
                            });
                        }
                    }
                    (Err(w), Err(e)) => prop_assert_eq!(w, code(&e), "step {}", step),
                    (want, Ok(Bought::Replay(o))) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: {op:?}: model {want:?}, authority replayed {o:?}"
                        )))
                    }
                    (want, Ok(Bought::New { order, .. })) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: {op:?}: model {want:?}, authority a new order {order:?}"
                        )))
                    }
                    (want, Err(e)) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: {op:?}: model {want:?}, authority {e:?}"
                        )))
                    }
                };
            }
            Op::Pay { pick, log_fails } | Op::Cancel { pick, log_fails } => {
                let to = if matches!(op, Op::Pay { .. }) {
                    OrderStatus::Paid
                } else {
                    OrderStatus::Cancelled
                };
                let Some(i) = m.pick(pick) else { continue };
                let want = m.transition(i, to, t);
                let got = now(node.auth.begin_transition(&m.orders[i].id, to, t));
                match (want, got) {
                    (Ok(false), Ok(Transition::Unchanged(o))) => {
                        prop_assert_eq!(o.status, to, "step {}", step)
                    }
                    (Ok(true), Ok(Transition::Pending { order, pending })) => {
                        prop_assert_eq!(order.status, to, "step {}", step);
                        if log_fails {
                            node.auth.abort_transition(pending);
                        } else {
                            node.log.push(Record::Moved {
                                order_id: m.orders[i].id.clone(),
                                to,
                                at: t,
                            });
                            let done = node.auth.finish_transition(pending);
                            prop_assert_eq!(done.status, to, "step {}", step);
                            m.orders[i].status = to;
                        }
                    }
                    (Err(w), Err(e)) => prop_assert_eq!(w, code(&e), "step {}", step),
                    (want, got) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: {op:?} on {:?}: model {want:?}, authority {got:?}",
                            m.orders[i]
                        )))
                    }
                }
            }
            Op::Advance { secs } => {
                node.t += secs;
                let t = node.t;
                let mut due = Vec::new();
                for shard in 0..SHARDS {
                    node.auth.due_expiries(shard, t, &mut due);
                }
                for id in &due {
                    match now(node.auth.begin_transition(id, OrderStatus::Expired, t)) {
                        Ok(Transition::Pending { pending, .. }) => {
                            node.log.push(Record::Moved {
                                order_id: id.clone(),
                                to: OrderStatus::Expired,
                                at: t,
                            });
                            node.auth.finish_transition(pending);
                        }
                        other => {
                            return Err(TestCaseError::fail(format!(
                                "step {step}: due order {id} would not expire: {other:?}"
                            )))
                        }
                    }
                }
                let mut expired: Vec<&str> = Vec::new();
                for o in m.orders.iter_mut() {
                    if o.status == OrderStatus::Reserved && o.expires_at <= t {
                        o.status = OrderStatus::Expired;
                        expired.push(&o.id);
                    }
                }
                let mut due: Vec<&str> = due.iter().map(String::as_str).collect();
                due.sort_unstable();
                expired.sort_unstable();
                prop_assert_eq!(due, expired, "step {}: the orders due at {}", step, t);
                // Housekeeping: nothing is old enough to forget here.
                prop_assert_eq!(node.auth.maintain(t), 0, "step {}", step);
            }
            Op::Switch(s) => {
                let got = now(node.auth.switch(SALE, s));
                let want = match (m.switch, s) {
                    (None, _) => Err("not_found"),
                    (Some(Switched::Closed), Switch::Close) => Ok(Switched::Closed),
                    (Some(Switched::Closed), _) => Err("invalid_state"),
                    (_, Switch::Pause) => Ok(Switched::Paused),
                    (_, Switch::Resume) => Ok(Switched::Live),
                    (_, Switch::Close) => Ok(Switched::Closed),
                };
                match (want, got) {
                    (Ok(w), Ok(_)) => {
                        node.log.push(Record::Switch(s));
                        m.switch = Some(w);
                    }
                    (Err(w), Err(e)) => prop_assert_eq!(w, code(&e), "step {}", step),
                    (want, got) => {
                        return Err(TestCaseError::fail(format!(
                            "step {step}: {s:?}: model {want:?}, authority {:?}",
                            got.map(|_| ())
                        )))
                    }
                }
            }
            Op::Compact => {
                // The compactor replays the log into its own authority and
                // saves that.
                let folded = replay(&node.log, 1_000 + node.incarnation);
                let json = serde_json::to_string(&folded.save()).expect("snapshot writes");
                node.log = vec![Record::Snapshot(json)];
            }
            Op::Restart(in_flight) => {
                crash_with(&mut node, &mut m, in_flight, step)?;
                node.restart();
            }
        }
        check(&node, &m, step, op)?;
    }
    Ok(())
}

fn key_of_op(op: Op) -> Option<u8> {
    match op {
        Op::Buy { key, .. } => key,
        _ => None,
    }
}

/// Leaves `in_flight` half done in `node` before the kill: its record torn
/// off the log, or durable and not applied (nor answered).
fn crash_with(
    node: &mut Node,
    m: &mut Model,
    in_flight: InFlight,
    step: usize,
) -> Result<(), TestCaseError> {
    let t = node.t;
    match in_flight {
        InFlight::Nothing => {}
        InFlight::TornPurchase { user, key } | InFlight::UnansweredPurchase { user, key } => {
            let Some(sale) = node.sale() else {
                return Ok(());
            };
            let (uid, k) = (user_id(user), key.map(key_of));
            let attempt = Attempt {
                user_id: &uid,
                quantity: 1,
                idempotency_key: k.as_deref(),
                now: t,
                core: 0,
            };
            let want = m.purchase(user, 1, key);
            let got = begin_purchase(&node.auth, &sale, &attempt);
            let agree = match (&want, &got) {
                (Ok(None), Ok(Bought::New { .. })) | (Ok(Some(_)), Ok(Bought::Replay(_))) => true,
                (Err(w), Err(e)) => *w == e.code(),
                _ => false,
            };
            prop_assert!(
                agree,
                "step {step}: in flight {in_flight:?}: model {want:?}, authority {}",
                match &got {
                    Ok(Bought::New { order, .. }) => format!("new {order:?}"),
                    Ok(Bought::Replay(order)) => format!("replay {order:?}"),
                    Err(e) => format!("{e:?}"),
                }
            );
            if let (
                Ok(None),
                Ok(Bought::New {
                    order,
                    key: k,
                    pending,
                }),
            ) = (want, got)
            {
                if matches!(in_flight, InFlight::UnansweredPurchase { .. }) {
                    node.log.push(Record::Reserved {
                        order: order.clone(),
                        key: k,
                        at: t,
                    });
                    if let Some(k) = key {
                        m.keys.insert(k, (user, 1, m.orders.len()));
                    }
                    m.orders.push(ModelOrder {
                        id: order.order_id,
                        user,
                        qty: 1,
                        status: OrderStatus::Reserved,
                        expires_at: t + PAYMENT_TIMEOUT_S,
                    });
                }
                // Killed: the reservation is never confirmed nor aborted.
                std::mem::forget(pending);
            };
        }
        InFlight::TornCancel { pick } | InFlight::UnappliedPay { pick } => {
            let Some(i) = m.pick(pick) else {
                return Ok(());
            };
            let to = if matches!(in_flight, InFlight::TornCancel { .. }) {
                OrderStatus::Cancelled
            } else {
                OrderStatus::Paid
            };
            let got = now(node.auth.begin_transition(&m.orders[i].id, to, t));
            let want = m.transition(i, to, t);
            let agree = match (&want, &got) {
                (Ok(true), Ok(Transition::Pending { .. }))
                | (Ok(false), Ok(Transition::Unchanged(_))) => true,
                (Err(w), Err(e)) => *w == e.code(),
                _ => false,
            };
            prop_assert!(
                agree,
                "step {step}: in flight {in_flight:?} on {:?}: model {want:?}, authority {got:?}",
                m.orders[i]
            );
            if let (Ok(true), Ok(Transition::Pending { pending, .. })) = (want, got) {
                if to == OrderStatus::Paid {
                    node.log.push(Record::Moved {
                        order_id: m.orders[i].id.clone(),
                        to,
                        at: t,
                    });
                    m.orders[i].status = to;
                }
                std::mem::forget(pending);
            }
        }
    }
    Ok(())
}

/// The authority against the model.
fn check(node: &Node, m: &Model, step: usize, op: &Op) -> Result<(), TestCaseError> {
    let Some(sale) = node.sale() else {
        prop_assert!(!m.created, "step {step} ({op:?}): the sale is gone");
        return Ok(());
    };
    prop_assert!(m.created, "step {step} ({op:?}): a sale nobody created");
    let sold = m.sold();
    prop_assert!(sold <= STOCK, "step {step} ({op:?}): the model oversold");
    prop_assert_eq!(sale.sold(), sold, "step {} ({:?}): sold", step, op);
    prop_assert_eq!(
        sale.remaining(),
        STOCK - sold,
        "step {} ({:?}): remaining",
        step,
        op
    );
    let switched = if sale.is_closed() {
        Switched::Closed
    } else if sale.is_paused() {
        Switched::Paused
    } else {
        Switched::Live
    };
    prop_assert_eq!(Some(switched), m.switch, "step {} ({:?}): switch", step, op);
    if switched != Switched::Closed {
        // Every unit not in a live order is in the shards, once.
        prop_assert_eq!(
            sale.stock.available(),
            STOCK - sold,
            "step {} ({:?}): units in the shards",
            step,
            op
        );
    }
    for u in 0..USERS {
        prop_assert_eq!(
            sale.held_by(&user_id(u)),
            m.held(u),
            "step {} ({:?}): held by u{}",
            step,
            op,
            u
        );
    }
    for o in &m.orders {
        let got = now(node.auth.order(&o.id));
        prop_assert!(got.is_ok(), "step {step} ({op:?}): order {} lost", o.id);
        let got = got.unwrap();
        prop_assert_eq!(
            got.status,
            o.status,
            "step {} ({:?}): order {}",
            step,
            op,
            o.id
        );
        prop_assert_eq!(got.expires_at, o.expires_at);
        prop_assert_eq!(got.quantity, o.qty);
        prop_assert_eq!(got.user_id, user_id(o.user));
    }
    Ok(())
}

fn config() -> Config {
    Config {
        cases: 400,
        rng_seed: RngSeed::Fixed(0x5ec_0de1),
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_embedded_authority_follows_the_model(
        ops in prop::collection::vec(op(), 1..80)
            .prop_map(|mut ops| {
                // Created early: a step or two may come before the sale.
                let at = ops.len().min(2);
                ops.insert(at, Op::Create { other_stock: false });
                ops
            })
    ) {
        run(&ops)?;
    }
}
