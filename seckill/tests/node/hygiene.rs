//! Cluster hygiene, on a real `redis-server` (and a real broker where the
//! order log is Kafka): node ids are unique while their nodes live; every
//! consumer of the order log stops at an event it cannot read instead of
//! taking it as absent; the settler's grace stays above every live node's
//! delivery timeout; a node and the settler warn at start when Redis does
//! not persist or the order topic is not replicated.

use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use queue::{Event, EventKind};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use seckill_testkit::kafka::Broker;
use seckill_testkit::process::{self, Process};
use seckill_testkit::RedisServer;
use serde_json::json;

use crate::cluster::{cluster_node, redis_cli, wait_for_sale};
use crate::kafka::{
    eventually, kafka_node, kafka_node_timeout, sold, Settler, PRODUCE_TIMEOUT_MS, TOPIC,
};
use crate::support::{assert_error, assert_ok, Node, TOKEN};

/// The settler's exit status when it stopped at an event it cannot read.
const EXIT_UNREADABLE: i32 = 3;

// ----- one live node per node id -----------------------------------------------

#[test]
fn a_second_live_node_with_the_same_id_refuses_to_start() {
    let redis = RedisServer::start();
    let mut first = cluster_node(&redis, 7, &[]);
    first
        .client()
        .create_sale("dup", &json!({"stock": 10, "per_user_limit": 1}));

    let (status, log) = start_refused(&redis, 7);
    assert!(!status.success(), "exited {status}; log:\n{log}");
    assert!(
        log.contains("node id 7") && log.contains("in use"),
        "the refusal must name the id; log:\n{log}"
    );
    // The first node is unharmed: it still sells.
    assert_ok(&first.client().purchase("dup", "u1"));

    // SIGKILL: no clean release. Once the claim's TTL (the lease TTL, 2 s
    // here) lapsed, the id is free again.
    first.kill();
    thread::sleep(Duration::from_millis(2_500));
    let second = cluster_node(&redis, 7, &[]);
    wait_for_sale(&[&second], "dup");
    assert_ok(&second.client().purchase("dup", "u2"));
}

#[test]
fn a_cleanly_stopped_node_gives_its_id_back() {
    let redis = RedisServer::start();
    let mut node = cluster_node(&redis, 9, &[]);
    let claim = redis_cli(&redis, &["HGET", "sk:nodes", "9"]);
    assert!(claim.contains("\"token\""), "no claim: {claim}");
    node.terminate();
    // Released, not left to lapse: the id is free at once.
    assert_eq!(redis_cli(&redis, &["HEXISTS", "sk:nodes", "9"]).trim(), "0");
    let again = cluster_node(&redis, 9, &[]);
    assert_eq!(again.client().get("/healthz").status, 200);
}

#[test]
fn a_node_that_lost_its_id_stops_selling_and_answers_503() {
    let redis = RedisServer::start();
    let mut node = cluster_node(&redis, 8, &[]);
    let mut c = node.client();
    // 3,200 units: leases of 100, so some stay leased when the id is lost.
    c.create_sale("lost", &json!({"stock": 3200, "per_user_limit": 1}));
    assert_ok(&c.purchase("lost", "before"));

    // Another instance took id 8 (this one was cut off from Redis past its
    // TTL, say): its claim now holds another token.
    let far = now_ms() + 600_000;
    let other = json!({
        "token": "another-instance",
        "kafka_timeout_ms": 0,
        "started_at": now_ms(),
        "expires_at": far,
    })
    .to_string();
    redis_cli(&redis, &["HSET", "sk:nodes", "8", &other]);

    let mut n = 0;
    crate::support::eventually(
        Duration::from_secs(10),
        "the node stops selling once its id is taken",
        || {
            n += 1;
            (c.purchase("lost", &format!("after-{n}")).status == 503).then_some(())
        },
    );
    assert_error(&c.purchase("lost", "later"), 503, "unavailable");
    let log = node.log_tail();
    assert!(
        log.contains("ERROR") && log.contains("node id 8"),
        "a lost id must be logged loudly; log:\n{log}"
    );
    // Stopped, it leaves the id's claim and lease to the process that
    // holds the id now: it takes back neither.
    let leased = redis_cli(&redis, &["HGET", "sk:{lost}:leases", "8"]);
    assert!(
        leased.trim().parse::<u64>().is_ok_and(|n| n > 0),
        "{leased}"
    );
    node.terminate();
    let claim = redis_cli(&redis, &["HGET", "sk:nodes", "8"]);
    assert!(claim.contains("another-instance"), "{claim}");
    assert_eq!(
        redis_cli(&redis, &["HGET", "sk:{lost}:leases", "8"]),
        leased,
        "the lost node returned the lease of id 8"
    );
}

/// Runs a cluster node with `id` that is expected to refuse to start:
/// returns its exit status and its stderr.
fn start_refused(redis: &RedisServer, id: u32) -> (ExitStatus, String) {
    let dir = seckill_testkit::temp_dir("seckill-refused-");
    let data = dir.path().join("data");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_seckill"));
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(["--admin-token", TOKEN, "--cores", "1", "--redis"])
        .arg(redis.url())
        .args(["--node-id", &id.to_string()])
        .env("RUST_LOG", "warn");
    process::clear_env(&mut cmd, "SECKILL_");
    let mut child = Process::spawn(&mut cmd, &dir.path().join("node.log"));
    let Some(status) = child.wait_exit(Duration::from_secs(30)) else {
        panic!("a second node with id {id} started (still running after 30 s)");
    };
    (status, child.log())
}

// ----- an unreadable event stops the settler ------------------------------------

#[test]
fn a_garbage_message_stops_the_settler_and_releases_nothing() {
    unreadable_event_stops_the_settler(|_, _| b"\x00\x01 not an order event".to_vec());
}

#[test]
fn an_event_of_a_newer_schema_stops_the_settler_and_releases_nothing() {
    unreadable_event_stops_the_settler(|sale, order| {
        let event = Event::new(
            now_ms(),
            EventKind::OrderReserved {
                order_id: order.to_owned(),
                sale_id: sale.to_owned(),
                user_id: "victim".into(),
                quantity: 1,
                expires_at: now_ms() / 1000 + 900,
                idempotency_key: None,
                fingerprint: None,
            },
        );
        // A newer node's record of this very order: the settler cannot
        // know what it says, so it must not take the order as unlogged.
        let mut newer: serde_json::Value = serde_json::from_slice(&event.to_json()).expect("JSON");
        newer["v"] = 99.into();
        newer.to_string().into_bytes()
    });
}

/// A reservation in Redis, its `order_reserved` in the topic as a message
/// the settler cannot read (`payload`), its not-yet-logged entry far older
/// than the grace: the settler stops (exit status 3) without releasing the
/// order and without committing past the message, and so does every
/// restart of it.
fn unreadable_event_stops_the_settler(payload: impl Fn(&str, &str) -> Vec<u8>) {
    let redis = RedisServer::start();
    let broker = Broker::start();
    let healthy = kafka_node(&redis, &broker, 1, &[]);
    create_sale(&healthy, "ur");
    let mut doomed = kafka_node(
        &redis,
        &broker,
        2,
        &[("SECKILL_FAILPOINT", "after_reserve")],
    );
    wait_for_sale(&[&healthy, &doomed], "ur");
    let answer = doomed.client().try_purchase("ur", "victim");
    assert!(answer.is_err(), "the node should have died: {answer:?}");
    doomed.kill();
    let order_id = only_order(&redis, "ur");
    assert_eq!(sold(&redis, "ur"), 1);
    age_unlogged(&redis, "ur", &order_id);
    let bad = produce_raw(&broker, &order_id, &payload("ur", &order_id));

    let mut settler = Settler::start(&redis, &broker);
    for run in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            assert_eq!(
                sold(&redis, "ur"),
                1,
                "the order was released although its event could not be read; settler log:\n{}",
                settler.log_text(run)
            );
            if let Some(status) = settler.wait_exit(Duration::from_millis(100)) {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the settler neither stopped nor released within 30 s; log:\n{}",
                settler.log_text(run)
            );
        };
        let log = settler.log_text(run);
        assert_eq!(
            status.code(),
            Some(EXIT_UNREADABLE),
            "{status}; log:\n{log}"
        );
        assert!(
            log.contains("ERROR") && log.contains(&format!("offset {bad}")),
            "the stop must name the event; log:\n{log}"
        );
        let committed = committed_offset(&broker, "seckill-settler", 0);
        assert!(
            committed.is_none_or(|c| c <= bad),
            "committed {committed:?} past the unreadable event at {bad}"
        );
        // A supervisor restarts it: it stops at the same event again.
        if run == 0 {
            settler.restart();
        }
    }
    let order = healthy.client().get(&format!("/orders/{order_id}"));
    assert_eq!(assert_ok(&order)["status"], "reserved");
}

// ----- the grace stays above every live node's delivery timeout ---------------

#[test]
fn the_settler_refuses_a_grace_not_above_a_live_nodes_delivery_timeout() {
    let redis = RedisServer::start();
    let broker = Broker::start();
    let _node = kafka_node(&redis, &broker, 1, &[]);
    // Above its own delivery timeout, below the node's (2 s).
    let mut settler = Settler::start_with(&redis, &broker, 1_500, 1_000);
    let status = settler
        .wait_exit(Duration::from_secs(20))
        .unwrap_or_else(|| {
            panic!(
                "the settler ran with a grace below node 1's delivery timeout; log:\n{}",
                settler.log_text(0)
            )
        });
    let log = settler.log_text(0);
    assert!(!status.success(), "{status}; log:\n{log}");
    assert!(
        log.contains("node 1") && log.contains(&PRODUCE_TIMEOUT_MS.to_string()),
        "the refusal must name the node and its timeout; log:\n{log}"
    );
}

#[test]
fn the_settler_does_not_reconcile_while_a_node_with_a_longer_timeout_lives() {
    let redis = RedisServer::start();
    let broker = Broker::start();
    let healthy = kafka_node(&redis, &broker, 1, &[]);
    create_sale(&healthy, "gr");
    let mut settler = Settler::start(&redis, &broker);
    eventually(Duration::from_secs(30), "the settler running", || {
        settler.log_text(0).contains("settler running")
    });
    // A node whose deliveries may land up to 6 s late joins after the
    // settler (grace 4 s) started.
    let mut slow = kafka_node_timeout(&redis, &broker, 3, &[], 6_000);
    let mut doomed = kafka_node(
        &redis,
        &broker,
        2,
        &[("SECKILL_FAILPOINT", "after_reserve")],
    );
    wait_for_sale(&[&healthy, &slow, &doomed], "gr");
    assert!(doomed.client().try_purchase("gr", "victim").is_err());
    doomed.kill();
    let order_id = only_order(&redis, "gr");
    age_unlogged(&redis, "gr", &order_id);

    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        assert_eq!(
            sold(&redis, "gr"),
            1,
            "reconciled with a grace below a live node's delivery timeout; log:\n{}",
            settler.log_text(0)
        );
        thread::sleep(Duration::from_millis(100));
    }
    let log = settler.log_text(0);
    assert!(
        log.contains("node 3") && log.contains("6000"),
        "the refusal must name the node and its timeout; log:\n{log}"
    );
    // The slow node stops cleanly (its record goes): reconciliation resumes.
    slow.terminate();
    assert!(
        settler.wait_exit(Duration::ZERO).is_none(),
        "the settler stopped; log:\n{}",
        settler.log_text(0)
    );
    eventually(
        Duration::from_secs(60),
        "the reservation released once the slow node left",
        || sold(&redis, "gr") == 0,
    );
}

// ----- start-up warnings ---------------------------------------------------------

#[test]
fn a_node_and_the_settler_warn_when_redis_does_not_persist_and_the_topic_is_not_replicated() {
    let redis = RedisServer::start(); // --appendonly no --save ""
    let broker = Broker::start(); // one broker: replication 1
    let node = kafka_node(&redis, &broker, 1, &[]);
    let mut settler = Settler::start(&redis, &broker);
    assert_warned("node", &node.log_tail());
    let mut log = String::new();
    eventually(Duration::from_secs(20), "the settler's warnings", || {
        log = settler.log_text(0);
        log.contains("settler running")
    });
    assert_warned("settler", &log);
    assert!(settler.wait_exit(Duration::ZERO).is_none(), "{log}");

    // Redis with an append-only file: no persistence warning.
    let durable = RedisServer::start_persistent();
    let node = cluster_node(&durable, 1, &[]);
    let log = node.log_tail();
    assert!(!log.contains("persistence"), "{log}");
}

#[track_caller]
fn assert_warned(who: &str, log: &str) {
    let warn_line = |needle: &str| {
        log.lines()
            .any(|l| l.contains("WARN") && l.contains(needle))
    };
    assert!(
        warn_line("Redis has no persistence") && warn_line("rolls back"),
        "the {who} must warn that Redis does not persist; log:\n{log}"
    );
    assert!(
        warn_line("replication 1") && warn_line("loses acknowledged orders"),
        "the {who} must warn that the topic has replication 1; log:\n{log}"
    );
}

// ----- helpers ------------------------------------------------------------------

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Creates `sale` (10 units, 1 per user) through `node`, again while the
/// answer is 503: the first produce to a broker that has just started may
/// outlast the delivery timeout (the same spec again is a no-op).
fn create_sale(node: &Node, sale: &str) {
    let mut c = node.client();
    let spec = json!({"stock": 10, "per_user_limit": 1});
    crate::support::eventually(Duration::from_secs(30), "the sale created", || {
        let resp = c.put_sale(sale, &spec);
        (resp.status != 503).then(|| assert_ok(&resp))
    });
}

/// The one order of `sale` in Redis.
fn only_order(redis: &RedisServer, sale: &str) -> String {
    let orders = redis_cli(redis, &["HKEYS", &format!("sk:{{{sale}}}:orders")]);
    let order_id = orders.trim().to_owned();
    assert!(!order_id.is_empty() && !order_id.contains('\n'), "{orders}");
    order_id
}

/// Dates the reservation's not-yet-logged entry a minute back, far past
/// any grace: a pass of reconciliation that ends would settle it.
fn age_unlogged(redis: &RedisServer, sale: &str, order_id: &str) {
    let old = (now_ms() - 60_000).to_string();
    let changed = redis_cli(
        redis,
        &[
            "ZADD",
            &format!("sk:{{{sale}}}:unlogged"),
            "XX",
            "CH",
            &old,
            &format!("{order_id}|reserved"),
        ],
    );
    assert_eq!(changed.trim(), "1", "no unlogged entry for {order_id}");
}

/// Writes `payload` with `key` to partition 0 of the order topic with a
/// plain producer; returns its offset.
fn produce_raw(broker: &Broker, key: &str, payload: &[u8]) -> i64 {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("acks", "all")
        .create()
        .expect("producer");
    let timeout = Duration::from_secs(10);
    let (_, before) = producer
        .client()
        .fetch_watermarks(TOPIC, 0, timeout)
        .expect("watermarks");
    producer
        .send(BaseRecord::to(TOPIC).partition(0).key(key).payload(payload))
        .map_err(|(e, _)| e)
        .expect("send");
    producer.flush(timeout).expect("flush");
    let (_, after) = producer
        .client()
        .fetch_watermarks(TOPIC, 0, timeout)
        .expect("watermarks");
    assert_eq!(after, before + 1, "another writer on partition 0");
    before
}

/// The offset `group` committed on `partition` of the order topic.
fn committed_offset(broker: &Broker, group: &str, partition: i32) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(TOPIC, partition);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    match committed
        .find_partition(TOPIC, partition)
        .map(|e| e.offset())
    {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}
