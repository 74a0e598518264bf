//! Property test of the embedded mode's journal order, in process: the
//! real request handlers (`Core::handle`, `Core::move_order`) of two cores
//! run purchases, pays, cancels, expiries and admin switches of one sale,
//! interleaved at every await point. The order log is scripted: each
//! append becomes durable only when the test says so, so every order of
//! "decided", "logged" and "applied" that the node allows is tried.
//!
//! Checked: any prefix of the log that a crash could leave (everything
//! durable, plus any part of what is queued) replays into a fresh
//! authority without error and keeps every acknowledged order and move;
//! no reservation is logged after a close was applied; and once everything
//! in flight has finished, the replay rebuilds exactly the live state
//! (sold count, switch, per-user holdings, orders and their statuses,
//! idempotency keys), also through a real journal file and from a snapshot
//! taken part way (what compaction folds) plus the events after it.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use proptest::prelude::*;
use queue::{Event, EventKind, Journal, JournalOptions, LogError, OrderLog};
use seckill::config::Config;
use seckill::http::{Method, Request};
use seckill::node::{now_micros, replay, restore, Core, Node};
use serde_json::Value;
use stock::{Attempt, EmbeddedAuthority, KeyLookup, OrderStatus, StockAuthority};

const SALE: &str = "prop";
const STOCK: u64 = 5;
const LIMIT: u32 = 2;
const USERS: u8 = 4;
const ADMIN: &str = "Bearer prop-admin";

/// An order log whose appends become durable when the test flushes them.
#[derive(Clone, Default)]
struct ScriptedLog(Arc<Mutex<Script>>);

#[derive(Default)]
struct Script {
    events: Vec<Event>,
    durable: usize,
}

impl ScriptedLog {
    fn events(&self) -> Vec<Event> {
        self.0.lock().expect("log").events.clone()
    }

    fn lens(&self) -> (usize, usize) {
        let s = self.0.lock().expect("log");
        (s.durable, s.events.len())
    }

    fn flush(&self, n: usize) {
        let mut s = self.0.lock().expect("log");
        s.durable = s.durable.saturating_add(n).min(s.events.len());
    }
}

impl OrderLog for ScriptedLog {
    fn append(&self, event: &Event) -> impl Future<Output = Result<(), LogError>> + 'static {
        let at = {
            let mut s = self.0.lock().expect("log");
            s.events.push(event.clone());
            s.events.len()
        };
        let script = self.0.clone();
        std::future::poll_fn(move |_| {
            if script.lock().expect("log").durable >= at {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
    }

    fn close(&self) {}
}

type TestNode = Node<EmbeddedAuthority, ScriptedLog>;
type TestCore = Core<EmbeddedAuthority, ScriptedLog>;

/// What one request is, so its answer can be booked.
#[derive(Clone, Debug)]
enum Kind {
    Buy {
        user: String,
        qty: u32,
        key: Option<String>,
    },
    Move(String, OrderStatus),
    Switch(&'static str),
}

struct Task {
    kind: Kind,
    fut: Pin<Box<dyn Future<Output = (u16, Value)>>>,
}

#[derive(Clone, Debug)]
enum Op {
    Buy {
        core: usize,
        user: u8,
        qty: u8,
        key: Option<u8>,
    },
    Pay(u8),
    Cancel(u8),
    Expire(u8),
    Switch(u8),
    Poll(u8),
    Flush(u8),
    Crash(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..USERS, 1..=2u8, proptest::option::of(0..6u8))
            .prop_map(|(core, user, qty, key)| Op::Buy { core, user, qty, key }),
        1 => any::<u8>().prop_map(Op::Pay),
        1 => any::<u8>().prop_map(Op::Cancel),
        1 => any::<u8>().prop_map(Op::Expire),
        2 => (0..3u8).prop_map(Op::Switch),
        6 => any::<u8>().prop_map(Op::Poll),
        4 => (1..4u8).prop_map(Op::Flush),
        1 => any::<u8>().prop_map(Op::Crash),
    ]
}

/// The node, its two cores, and what the clients were told.
struct World {
    node: Arc<TestNode>,
    cores: [Rc<TestCore>; 2],
    tasks: Vec<Task>,
    /// Orders answered 200 (not replays), with the status last answered.
    acked: Vec<(String, OrderStatus)>,
    /// Keyed purchases answered 200: (user, qty, key, order id).
    keys: Vec<(String, u32, String, String)>,
    /// Log length when a close was answered 200 (it was applied by then).
    closed_at: Option<usize>,
}

impl World {
    fn new(admission_tokens: usize) -> World {
        let config = Config {
            cores: 2,
            admission_tokens,
            admission_queue: 64,
            ..Config::default()
        };
        let authority = EmbeddedAuthority::new(1, 2, 3_600, now_micros());
        let node = Arc::new(Node::new(
            config,
            authority,
            ScriptedLog::default(),
            "prop-admin".into(),
        ));
        let cores = [
            Rc::new(Core::new(0, node.clone())),
            Rc::new(Core::new(1, node.clone())),
        ];
        let mut world = World {
            node,
            cores,
            tasks: Vec::new(),
            acked: Vec::new(),
            keys: Vec::new(),
            closed_at: None,
        };
        let spec = format!(r#"{{"stock":{STOCK},"per_user_limit":{LIMIT}}}"#);
        world.spawn(
            Kind::Switch("create"),
            request(0, Method::Put, format!("/admin/sales/{SALE}"), spec, None),
        );
        world.settle();
        assert!(world.node.authority.sale(SALE).is_some());
        world
    }

    fn log(&self) -> &ScriptedLog {
        &self.node.log
    }

    fn order_ids(&self) -> Vec<String> {
        self.log()
            .events()
            .into_iter()
            .filter_map(|e| match e.kind {
                EventKind::OrderReserved { order_id, .. } => Some(order_id),
                _ => None,
            })
            .collect()
    }

    fn pick_order(&self, i: u8) -> Option<String> {
        let ids = self.order_ids();
        (!ids.is_empty()).then(|| ids[usize::from(i) % ids.len()].clone())
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Buy {
                core,
                user,
                qty,
                key,
            } => {
                let user = format!("u{user}");
                let key = key.map(|k| format!("k{k}"));
                let body = format!(r#"{{"user_id":"{user}","quantity":{qty}}}"#);
                let fut = request(
                    core,
                    Method::Post,
                    format!("/sales/{SALE}/purchase"),
                    body,
                    key.clone(),
                );
                let kind = Kind::Buy {
                    user,
                    qty: u32::from(qty),
                    key,
                };
                self.spawn(kind, fut);
            }
            Op::Pay(i) | Op::Cancel(i) => {
                let Some(id) = self.pick_order(i) else { return };
                let (to, path) = match op {
                    Op::Pay(_) => (OrderStatus::Paid, format!("/orders/{id}/pay")),
                    _ => (OrderStatus::Cancelled, format!("/orders/{id}/cancel")),
                };
                let fut = request(usize::from(i) % 2, Method::Post, path, String::new(), None);
                self.spawn(Kind::Move(id, to), fut);
            }
            Op::Expire(i) => {
                let Some(id) = self.pick_order(i) else { return };
                let core = self.cores[usize::from(i) % 2].clone();
                let order_id = id.clone();
                let fut: Pin<Box<dyn Future<Output = (u16, Value)>>> = Box::pin(async move {
                    match core.move_order(&order_id, OrderStatus::Expired, None).await {
                        Ok(_) => (200, Value::Null),
                        Err(e) => (e.status(), Value::Null),
                    }
                });
                self.spawn_boxed(Kind::Move(id, OrderStatus::Expired), fut);
            }
            Op::Switch(s) => {
                let action = ["pause", "resume", "close"][usize::from(s) % 3];
                let fut = request(
                    usize::from(s) % 2,
                    Method::Post,
                    format!("/admin/sales/{SALE}/{action}"),
                    String::new(),
                    None,
                );
                self.spawn(Kind::Switch(action), fut);
            }
            Op::Poll(i) => {
                if !self.tasks.is_empty() {
                    let at = usize::from(i) % self.tasks.len();
                    self.poll_task(at);
                }
            }
            Op::Flush(n) => self.log().flush(usize::from(n)),
            Op::Crash(k) => {
                let (durable, len) = self.log().lens();
                let cut = durable + usize::from(k) % (len - durable + 1);
                self.check_crash_prefix(cut);
            }
        }
    }

    fn spawn(&mut self, kind: Kind, fut: impl FnOnce(&[Rc<TestCore>; 2]) -> BoxedReq) {
        let fut = fut(&self.cores);
        self.spawn_boxed(kind, fut);
    }

    /// Starts a request: it runs until its first await that is not ready.
    fn spawn_boxed(&mut self, kind: Kind, fut: BoxedReq) {
        self.tasks.push(Task { kind, fut });
        let at = self.tasks.len() - 1;
        self.poll_task(at);
    }

    fn poll_task(&mut self, at: usize) {
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready((status, body)) = self.tasks[at].fut.as_mut().poll(&mut cx) {
            let task = self.tasks.swap_remove(at);
            self.book(task.kind, status, &body);
        }
    }

    /// Records what a client was told.
    fn book(&mut self, kind: Kind, status: u16, body: &Value) {
        if status != 200 {
            return;
        }
        match kind {
            Kind::Buy { user, qty, key } => {
                let id = body["order_id"].as_str().expect("order_id").to_owned();
                if let Some(key) = key {
                    self.keys.push((user, qty, key, id.clone()));
                }
                if !self.acked.iter().any(|(a, _)| *a == id) {
                    self.acked.push((id, OrderStatus::Reserved));
                }
            }
            Kind::Move(id, to) => {
                if let Some(entry) = self.acked.iter_mut().find(|(a, _)| *a == id) {
                    entry.1 = to;
                }
            }
            Kind::Switch("close") => {
                let (_, len) = self.log().lens();
                self.closed_at.get_or_insert(len);
            }
            Kind::Switch(_) => {}
        }
    }

    /// Makes everything durable and runs every request to its end.
    fn settle(&mut self) {
        for _ in 0..1_000 {
            if self.tasks.is_empty() {
                return;
            }
            self.log().flush(usize::MAX);
            for at in (0..self.tasks.len()).rev() {
                self.poll_task(at);
            }
        }
        panic!(
            "requests never finished: {:?}",
            self.tasks.iter().map(|t| &t.kind).collect::<Vec<_>>()
        );
    }

    /// A crash left the first `cut` events: they replay, and every answer
    /// given is in them.
    fn check_crash_prefix(&self, cut: usize) {
        let events = self.log().events();
        let fresh = fresh_authority();
        if let Err(e) = replay(&fresh, &events[..cut]) {
            panic!(
                "replay of {cut} events failed: {e:#}\n{}",
                dump(&events[..cut])
            );
        }
        for (id, status) in &self.acked {
            let order = block(fresh.order(id))
                .unwrap_or_else(|e| panic!("acknowledged order {id} lost: {e}"));
            if *status != OrderStatus::Reserved {
                assert_eq!(order.status, *status, "order {id}");
            }
        }
        if let Some(sale) = fresh.sale(SALE) {
            assert!(sale.sold() <= STOCK);
        }
    }

    /// After `settle`: the journal rebuilds exactly the live state.
    fn check_same_state(&self, restored: &EmbeddedAuthority) {
        let live_auth = &self.node.authority;
        let live = live_auth.sale(SALE).expect("live sale");
        let back = restored.sale(SALE).expect("replayed sale");
        assert_eq!(back.sold(), live.sold(), "sold");
        assert_eq!(back.is_closed(), live.is_closed(), "closed");
        assert_eq!(back.is_paused(), live.is_paused(), "paused");
        assert_eq!(back.remaining(), live.remaining(), "remaining");
        if !live.is_closed() {
            assert_eq!(back.stock.available(), live.stock.available(), "available");
        }
        for u in 0..USERS {
            let user = format!("u{u}");
            assert_eq!(back.held_by(&user), live.held_by(&user), "held by {user}");
        }
        for id in self.order_ids() {
            let view = |o: stock::Order| (o.status, o.user_id, o.quantity, o.expires_at);
            let l = block(live_auth.order(&id))
                .map(view)
                .map_err(|e| e.to_string());
            let r = block(restored.order(&id))
                .map(view)
                .map_err(|e| e.to_string());
            assert_eq!(r, l, "order {id}");
        }
        for (id, status) in &self.acked {
            let order = block(restored.order(id)).expect("acknowledged order");
            if *status != OrderStatus::Reserved {
                assert_eq!(order.status, *status, "order {id}");
            }
        }
        for (user, qty, key, id) in &self.keys {
            let attempt = Attempt {
                user_id: user,
                quantity: *qty,
                idempotency_key: Some(key),
                now: seckill::node::now_s(),
                core: 0,
            };
            match block(restored.lookup_key(&back, &attempt)) {
                Ok(KeyLookup::Replay(o)) => assert_eq!(&o.order_id, id, "key {key}"),
                other => panic!("key {key} of order {id}: {other:?}"),
            }
        }
        if let Some(closed_at) = self.closed_at {
            let late: Vec<_> = self.log().events()[closed_at..]
                .iter()
                .filter(|e| matches!(e.kind, EventKind::OrderReserved { .. }))
                .cloned()
                .collect();
            assert!(
                late.is_empty(),
                "reservations logged after the close was applied: {late:?}"
            );
        }
    }
}

type BoxedReq = Pin<Box<dyn Future<Output = (u16, Value)>>>;

/// A request to core `core`, as a future that owns what it borrows.
fn request(
    core: usize,
    method: Method,
    path: String,
    body: String,
    key: Option<String>,
) -> impl FnOnce(&[Rc<TestCore>; 2]) -> BoxedReq {
    move |cores| {
        let core = cores[core].clone();
        Box::pin(async move {
            let admin = method != Method::Get && path.starts_with("/admin/");
            let req = Request {
                method,
                path: &path,
                idempotency_key: key.as_deref().map(str::as_bytes),
                authorization: admin.then_some(ADMIN.as_bytes()),
                request_id: None,
                traceparent: None,
                body: body.as_bytes(),
                keep_alive: true,
                expects_continue: false,
            };
            let (mut out, mut scratch) = (Vec::new(), Vec::new());
            core.handle(
                &req,
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                &mut out,
                &mut scratch,
            )
            .await;
            parse_response(&out)
        })
    }
}

fn parse_response(out: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(out);
    let status = text[9..12].parse().expect("status");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn fresh_authority() -> EmbeddedAuthority {
    EmbeddedAuthority::new(1, 2, 3_600, now_micros())
}

/// The embedded authority answers at once: one poll is enough.
fn block<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match std::pin::pin!(f).poll(&mut cx) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the embedded authority never waits"),
    }
}

fn dump(events: &[Event]) -> String {
    events
        .iter()
        .map(|e| String::from_utf8_lossy(&e.to_json()).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn run(ops: Vec<Op>, admission_tokens: usize) {
    let mut world = World::new(admission_tokens);
    for op in ops {
        world.apply(op);
    }
    let (_, len) = world.log().lens();
    world.check_crash_prefix(len);
    world.settle();
    let events = world.log().events();
    let restored = fresh_authority();
    if let Err(e) = replay(&restored, &events) {
        panic!("replay failed: {e:#}\n{}", dump(&events));
    }
    world.check_same_state(&restored);

    // The same from a snapshot taken at a few points of the log (what a
    // compaction folds), then the events after it.
    for cut in [events.len() / 3, events.len() / 2, events.len() * 2 / 3] {
        let folded = fresh_authority();
        replay(&folded, &events[..cut]).expect("replay of the folded part");
        let saved = serde_json::to_vec(&folded.save()).expect("encode");
        let snapshot = queue::snapshot::Snapshot {
            covers: 1,
            state: saved,
        };
        let from_snapshot = fresh_authority();
        if let Err(e) = restore(&from_snapshot, Some(&snapshot), &events[cut..]) {
            panic!(
                "restore from a snapshot at {cut} failed: {e:#}\n{}",
                dump(&events)
            );
        }
        world.check_same_state(&from_snapshot);
    }

    // The same through a real journal file: written, reopened, replayed.
    let dir = tempfile::tempdir().expect("temp dir");
    let (journal, _) = Journal::open(dir.path(), JournalOptions::default()).expect("journal");
    for e in &events {
        seckill_testkit::block_on(journal.append(e)).expect("durable");
    }
    journal.close();
    let (_, reread) = Journal::open(dir.path(), JournalOptions::default()).expect("reopen");
    assert_eq!(reread, events);
    let from_file = fresh_authority();
    replay(&from_file, &reread).expect("replay of the journal file");
    world.check_same_state(&from_file);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Plenty of admission tokens: a purchase runs from its gate to its
    /// append without yielding.
    #[test]
    fn journal_order_replays_to_the_live_state(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops, 64);
    }

    /// One token per core: purchases wait in the admission queue after
    /// their gate, so switches land between a purchase's gate and its
    /// reservation.
    #[test]
    fn journal_order_replays_with_purchases_queued_past_the_gate(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        run(ops, 1);
    }
}
