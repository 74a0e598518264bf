//! Cluster mode with the Kafka order log, against a real `redis-server` and
//! a real Kafka-API broker (tansu, started by `scripts/kafka.sh`'s cached
//! binary): every acknowledged order is in the topic exactly once across
//! nodes; the settler expires orders without the node that took them,
//! survives being killed, and reconciles a node that died between reserve
//! and produce; a broker outage fails closed and loses nothing acknowledged;
//! an order a replay acknowledged is logged by the settler, never released.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use queue::{Event, EventKind};
use seckill_testkit::kafka::Broker;
use seckill_testkit::process::{self, Process};
use seckill_testkit::RedisServer;
use serde_json::json;

use crate::cluster::{buy_the_rest, load, redis_cli, redis_int, wait_for_sale};
use crate::support::{assert_error, assert_ok, Client, Node};

pub(crate) const TOPIC: &str = "seckill.orders";
/// The nodes' delivery timeout in these tests (`kafka_timeout_ms`).
pub(crate) const PRODUCE_TIMEOUT_MS: u64 = 2_000;
/// The settler's reconciliation grace in these tests: longer than the
/// delivery timeout, as it must be.
pub(crate) const GRACE_MS: u64 = 4_000;

/// A node on `redis` and `broker` with node id `id`.
pub(crate) fn kafka_node(
    redis: &RedisServer,
    broker: &Broker,
    id: u32,
    env: &[(&str, &str)],
) -> Node {
    kafka_node_timeout(redis, broker, id, env, PRODUCE_TIMEOUT_MS)
}

/// [`kafka_node`] with its delivery timeout (`kafka_timeout_ms`) given.
pub(crate) fn kafka_node_timeout(
    redis: &RedisServer,
    broker: &Broker,
    id: u32,
    env: &[(&str, &str)],
    produce_timeout_ms: u64,
) -> Node {
    let toml = format!("kafka_timeout_ms = {produce_timeout_ms}\n");
    let bootstrap = broker.bootstrap();
    Node::start_cluster(&redis.url(), id, &toml, &["--kafka", &bootstrap], env)
}

/// A `seckill settle` process. Killed on drop.
pub(crate) struct Settler {
    child: Option<Process>,
    dir: tempfile::TempDir,
    args: Vec<String>,
    starts: usize,
}

impl Settler {
    pub(crate) fn start(redis: &RedisServer, broker: &Broker) -> Settler {
        Settler::start_with(redis, broker, GRACE_MS, PRODUCE_TIMEOUT_MS)
    }

    /// A settler with the given grace and its own delivery timeout.
    pub(crate) fn start_with(
        redis: &RedisServer,
        broker: &Broker,
        grace_ms: u64,
        kafka_timeout_ms: u64,
    ) -> Settler {
        let args = vec![
            "settle".to_owned(),
            "--redis".to_owned(),
            redis.url(),
            "--kafka".to_owned(),
            broker.bootstrap(),
            "--grace-ms".to_owned(),
            grace_ms.to_string(),
            "--kafka-timeout-ms".to_owned(),
            kafka_timeout_ms.to_string(),
            "--interval-ms".to_owned(),
            "200".to_owned(),
        ];
        let mut s = Settler {
            child: None,
            dir: seckill_testkit::temp_dir("seckill-settler-"),
            args,
            starts: 0,
        };
        s.spawn();
        s
    }

    fn log(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("settler-{n}.log"))
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_seckill"));
        cmd.args(&self.args).env(
            "RUST_LOG",
            std::env::var("SECKILL_TEST_LOG").unwrap_or_else(|_| "info".into()),
        );
        process::clear_env(&mut cmd, "SECKILL_");
        self.child = Some(Process::spawn(&mut cmd, &self.log(self.starts)));
        self.starts += 1;
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// How the settler exited, if it did within `limit`.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .expect("the settler was started")
            .wait_exit(limit)
    }

    /// The whole stderr of run `n` (0 is the first).
    pub(crate) fn log_text(&self, n: usize) -> String {
        std::fs::read_to_string(self.log(n)).unwrap_or_default()
    }

    fn log_tail(&self) -> String {
        (0..self.starts)
            .map(|n| {
                let text = std::fs::read_to_string(self.log(n)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let from = lines.len().saturating_sub(30);
                format!("--- settler run {n} ---\n{}\n", lines[from..].join("\n"))
            })
            .collect()
    }
}

impl Drop for Settler {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

/// Every event in the topic, read from the start of every partition.
fn read_topic(broker: &Broker) -> Vec<Event> {
    crate::support::read_topic(broker, TOPIC)
        .iter()
        .map(|m| Event::from_json(&m.payload).expect("an event"))
        .collect()
}

/// How many times each order id appears with each event type.
fn count_by_type(events: &[Event]) -> HashMap<&'static str, HashMap<String, usize>> {
    let mut out: HashMap<&'static str, HashMap<String, usize>> = HashMap::new();
    for e in events {
        let (kind, order) = match &e.kind {
            EventKind::OrderReserved { order_id, .. } => ("order_reserved", order_id),
            EventKind::OrderPaid { order_id, .. } => ("order_paid", order_id),
            EventKind::OrderCancelled { order_id, .. } => ("order_cancelled", order_id),
            EventKind::OrderExpired { order_id, .. } => ("order_expired", order_id),
            EventKind::StockReleased { order_id, .. } => ("stock_released", order_id),
            _ => continue,
        };
        *out.entry(kind)
            .or_default()
            .entry(order.clone())
            .or_default() += 1;
    }
    out
}

/// Waits until `check` holds, or panics with `what`.
pub(crate) fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn sold(redis: &RedisServer, sale: &str) -> u64 {
    redis_int(redis, &format!("sk:{{{sale}}}:sold"))
}

#[test]
fn every_acknowledged_order_is_in_the_topic_exactly_once_across_three_nodes() {
    let redis = RedisServer::start();
    let broker = Broker::start();
    let nodes: Vec<Node> = (1..=3)
        .map(|id| kafka_node(&redis, &broker, id, &[]))
        .collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    nodes[0]
        .client()
        .create_sale("k3", &json!({"stock": 600, "per_user_limit": 1}));
    wait_for_sale(&nodes.iter().collect::<Vec<_>>(), "k3");
    let tally = load(&addrs, "k3", 2_000, 2, 12);
    let rest = buy_the_rest(&addrs, "k3", "late", Duration::from_secs(30));
    let acknowledged = tally.order_ids_and(rest);
    assert_eq!(
        acknowledged.len(),
        600,
        "sold {} of 600",
        acknowledged.len()
    );
    assert_eq!(sold(&redis, "k3"), 600);

    let events = read_topic(&broker);
    let by_type = count_by_type(&events);
    let reserved = by_type.get("order_reserved").cloned().unwrap_or_default();
    for order in &acknowledged {
        assert_eq!(
            reserved.get(order),
            Some(&1),
            "order {order} answered 200 must be in the topic exactly once"
        );
    }
    // Nothing failed: nothing but the acknowledged orders was reserved.
    assert_eq!(
        reserved.keys().collect::<HashSet<_>>(),
        acknowledged.iter().collect::<HashSet<_>>()
    );
    // Every record is a schema-v1 event the shop can read.
    assert!(events.iter().all(|e| e.v == 1 && e.at > 0));
}

#[test]
fn the_settler_killed_mid_stream_expires_every_unpaid_order_once() {
    let redis = RedisServer::start();
    let broker = Broker::start();
    let mut node = kafka_node(&redis, &broker, 1, &[]);
    node.client().create_sale(
        "exp",
        &json!({"stock": 200, "per_user_limit": 1, "payment_timeout_s": 3}),
    );
    let mut client = node.client();
    let orders: Vec<String> = (0..200)
        .map(|u| {
            assert_ok(&client.purchase("exp", &format!("u{u}")))["order_id"]
                .as_str()
                .expect("order id")
                .to_owned()
        })
        .collect();
    for order in &orders[..50] {
        assert_ok(&client.post(&format!("/orders/{order}/pay"), &json!({})));
    }
    // Expiry must not need the node that took the orders.
    node.kill();

    let mut settler = Settler::start(&redis, &broker);
    // Kill and restart it over and over while the orders come due, so that
    // it dies in the middle of consuming, expiring and committing.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        thread::sleep(Duration::from_millis(700));
        settler.restart();
    }
    eventually(
        Duration::from_secs(30),
        "every unpaid order expired",
        || sold(&redis, "exp") == 50,
    );
    // Exactly the paid units are sold; the other 150 are back, once each:
    // a double release would leave pool + leases above 150.
    let pool = redis_int(&redis, "sk:{exp}:pool");
    let leased: u64 = redis_cli(&redis, &["HVALS", "sk:{exp}:leases"])
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .sum();
    assert_eq!(pool + leased, 150, "pool {pool} + leased {leased}");

    let unpaid: HashSet<&String> = orders[50..].iter().collect();
    eventually(
        Duration::from_secs(30),
        "an order_expired per unpaid order",
        || {
            let events = read_topic(&broker);
            let by_type = count_by_type(&events);
            let expired = by_type.get("order_expired").cloned().unwrap_or_default();
            expired.keys().collect::<HashSet<_>>() == unpaid
        },
    );
    let events = read_topic(&broker);
    let by_type = count_by_type(&events);
    let expired = &by_type["order_expired"];
    assert!(
        expired.values().all(|n| *n == 1),
        "an expiry logged twice: {:?}",
        expired.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    assert_eq!(by_type["order_paid"].len(), 50);
    // sold + released == stock.
    assert_eq!(50 + expired.len(), 200);
    // Nothing left to reconcile, once the settler has read what it logged
    // (its own expiries come back to it through the topic).
    eventually(
        Duration::from_secs(30),
        "the not-yet-logged set empties",
        || redis_cli(&redis, &["ZCARD", "sk:{exp}:unlogged"]).trim() == "0",
    );
}

#[test]
fn a_node_killed_between_reserve_and_produce_is_reconciled() {
    let redis = RedisServer::start();
    let broker = Broker::start();
    let healthy = kafka_node(&redis, &broker, 1, &[]);
    healthy
        .client()
        .create_sale("fp", &json!({"stock": 10, "per_user_limit": 1}));
    let mut doomed = kafka_node(
        &redis,
        &broker,
        2,
        &[("SECKILL_FAILPOINT", "after_reserve")],
    );
    wait_for_sale(&[&healthy, &doomed], "fp");
    let _settler = Settler::start(&redis, &broker);

    let answer = doomed.client().try_purchase("fp", "victim");
    assert!(answer.is_err(), "the node should have died: {answer:?}");
    doomed.kill();
    let orders = redis_cli(&redis, &["HKEYS", "sk:{fp}:orders"]);
    let order_id = orders.trim().to_owned();
    assert!(!order_id.is_empty() && !order_id.contains('\n'), "{orders}");
    assert_eq!(sold(&redis, "fp"), 1, "reserved in Redis, never logged");

    eventually(Duration::from_secs(30), "the reservation released", || {
        sold(&redis, "fp") == 0
    });
    let order = healthy.client().get(&format!("/orders/{order_id}"));
    assert_eq!(assert_ok(&order)["status"], "cancelled");
    eventually(Duration::from_secs(20), "stock_released logged", || {
        let by_type = count_by_type(&read_topic(&broker));
        by_type
            .get("stock_released")
            .and_then(|m| m.get(&order_id))
            .is_some()
    });
    let by_type = count_by_type(&read_topic(&broker));
    assert!(!by_type
        .get("order_reserved")
        .is_some_and(|m| m.contains_key(&order_id)));
    // The victim can buy the unit again.
    assert_ok(&healthy.client().purchase("fp", "victim"));
}

#[test]
fn broker_down_mid_sale_fails_closed_and_loses_no_acknowledged_order() {
    let redis = RedisServer::start();
    let mut broker = Broker::start();
    let node = kafka_node(&redis, &broker, 1, &[]);
    let _settler = Settler::start(&redis, &broker);
    node.client()
        .create_sale("bd", &json!({"stock": 100, "per_user_limit": 1}));
    let mut acknowledged = Vec::new();
    let mut client = node.client();
    for u in 0..30 {
        acknowledged.push(
            assert_ok(&client.purchase("bd", &format!("a{u}")))["order_id"]
                .as_str()
                .expect("order id")
                .to_owned(),
        );
    }

    broker.stop();
    let addr = node.addr();
    let refused: Vec<_> = (0..4)
        .map(|t| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                (0..2)
                    .map(|i| c.purchase("bd", &format!("down-{t}-{i}")))
                    .collect::<Vec<_>>()
            })
        })
        .flat_map(|h| h.join().expect("buyer thread"))
        .collect();
    for r in &refused {
        assert_error(r, 503, "unavailable");
        assert!(r.header("retry-after").is_some(), "{r}");
    }
    // Their units went back: only the acknowledged orders hold stock.
    eventually(
        Duration::from_secs(10),
        "the refused units returned",
        || sold(&redis, "bd") == 30,
    );

    broker.start_again();
    let rest = buy_the_rest(&[addr], "bd", "after", Duration::from_secs(60));
    acknowledged.extend(rest);
    assert_eq!(acknowledged.len(), 100);
    assert_eq!(sold(&redis, "bd"), 100);

    let events = read_topic(&broker);
    let reserved = count_by_type(&events)
        .remove("order_reserved")
        .unwrap_or_default();
    for order in &acknowledged {
        assert_eq!(
            reserved.get(order),
            Some(&1),
            "order {order} lost or doubled"
        );
    }
    // The settler logs the compensation of every refused purchase.
    eventually(
        Duration::from_secs(30),
        "a stock_released per refusal",
        || {
            count_by_type(&read_topic(&broker))
                .get("stock_released")
                .map_or(0, HashMap::len)
                == refused.len()
        },
    );
}

#[test]
fn a_replayed_order_whose_reservation_never_reached_the_log_is_logged_not_released() {
    let redis = RedisServer::start();
    let mut broker = Broker::start();
    let healthy = kafka_node(&redis, &broker, 1, &[]);
    healthy
        .client()
        .create_sale("kp", &json!({"stock": 10, "per_user_limit": 1}));
    let mut doomed = kafka_node(
        &redis,
        &broker,
        2,
        &[("SECKILL_FAILPOINT", "after_reserve")],
    );
    wait_for_sale(&[&healthy, &doomed], "kp");

    // Node 2 records the order and dies before logging it.
    let body = br#"{"user_id": "victim", "quantity": 1}"#;
    let answer = doomed.client().try_purchase_raw("kp", body, Some("kv"));
    assert!(answer.is_err(), "the node should have died: {answer:?}");
    doomed.kill();
    let orders = redis_cli(&redis, &["HKEYS", "sk:{kp}:orders"]);
    let order_id = orders.trim().to_owned();
    assert!(!order_id.is_empty() && !order_id.contains('\n'), "{orders}");

    // The buyer retries on node 1 while the broker is down: node 1 replays
    // the order from Redis but cannot log it, so it answers 503.
    broker.stop();
    let retry = healthy.client().purchase_with_key("kp", "victim", 1, "kv");
    assert_error(&retry, 503, "unavailable");
    broker.start_again();

    // The replay may have reached the buyer as a 200 (a 503 can follow a
    // delivery that landed): the settler logs the order instead of
    // releasing it.
    let _settler = Settler::start(&redis, &broker);
    eventually(Duration::from_secs(40), "order_reserved logged", || {
        count_by_type(&read_topic(&broker))
            .get("order_reserved")
            .is_some_and(|m| m.contains_key(&order_id))
    });
    let by_type = count_by_type(&read_topic(&broker));
    assert!(
        !by_type
            .get("stock_released")
            .is_some_and(|m| m.contains_key(&order_id)),
        "a replayed order was released"
    );
    assert_eq!(sold(&redis, "kp"), 1);
    // Every order_reserved of it, the settler's from Redis's record
    // included, carries its key and fingerprint (a consumer can tell a
    // retry from a new request).
    for event in read_topic(&broker) {
        if let EventKind::OrderReserved {
            order_id: id,
            idempotency_key,
            fingerprint,
            ..
        } = &event.kind
        {
            if *id == order_id {
                assert_eq!(idempotency_key.as_deref(), Some("kv"), "{event:?}");
                assert!(
                    fingerprint.as_ref().is_some_and(|f| !f.is_empty()),
                    "{event:?}"
                );
            }
        }
    }
    let order = healthy.client().get(&format!("/orders/{order_id}"));
    assert_eq!(assert_ok(&order)["status"], "reserved");
    let again = healthy.client().purchase_with_key("kp", "victim", 1, "kv");
    assert_eq!(assert_ok(&again)["order_id"], order_id.as_str());
    assert!(again.is_replayed(), "{again}");
}
