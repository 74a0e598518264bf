//! One request id end to end: the client's `X-Request-Id` (when valid) or
//! a generated one is answered on every purchase and order call, written
//! in the node's log line about the request, carried in the order event
//! (the journal's JSON; the Kafka message's headers, with the client's
//! `traceparent`), and logged by the settler when it expires the order.

use std::collections::HashMap;
use std::time::Duration;

use seckill_testkit::kafka::Broker;
use seckill_testkit::RedisServer;
use serde_json::{json, Value};

use crate::kafka::{eventually, kafka_node, Settler, TOPIC};
use crate::support::{assert_error, assert_ok, read_journal, Client, Node};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn purchase(
    client: &mut Client,
    sale: &str,
    user: &str,
    headers: &[(&str, &str)],
) -> crate::support::Response {
    let body = json!({ "user_id": user, "quantity": 1 }).to_string();
    client.request(
        "POST",
        &format!("/sales/{sale}/purchase"),
        headers,
        Some(body.as_bytes()),
    )
}

/// A generated id: present, not the client's, made of token characters.
fn assert_generated(resp: &crate::support::Response, not: &str) -> String {
    let id = resp
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no x-request-id on {resp:?}"))
        .to_owned();
    assert_ne!(id, not, "an invalid request id was echoed");
    assert!(
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
        "generated id {id:?}"
    );
    id
}

#[test]
fn a_request_id_is_answered_logged_and_journaled_in_embedded_mode() {
    let root = tempfile::tempdir().expect("temp dir");
    let node = Node::start_in_env(root, &[], &[("RUST_LOG", "warn,seckill=debug")]);
    let mut c = node.client();
    c.create_sale("t1", &json!({ "stock": 1, "per_user_limit": 1 }));

    let won = purchase(
        &mut c,
        "t1",
        "u1",
        &[
            ("X-Request-Id", "buyer-req.1"),
            ("traceparent", TRACEPARENT),
        ],
    );
    let order = assert_ok(&won)["order_id"]
        .as_str()
        .expect("order id")
        .to_owned();
    assert_eq!(won.header("x-request-id"), Some("buyer-req.1"));

    // The sold-out answer carries one too; invalid ids are replaced.
    let sold_out = purchase(&mut c, "t1", "u2", &[("X-Request-Id", "has space")]);
    assert_error(&sold_out, 410, "sold_out");
    let a = assert_generated(&sold_out, "has space");
    let long = "x".repeat(65);
    let sold_out = purchase(&mut c, "t1", "u3", &[("X-Request-Id", &long)]);
    let b = assert_generated(&sold_out, &long);
    let sold_out = purchase(&mut c, "t1", "u4", &[]);
    let d = assert_generated(&sold_out, "");
    assert!(
        a != b && b != d && a != d,
        "generated ids repeat: {a} {b} {d}"
    );
    // A bad traceparent is dropped, not passed on.
    let bad_tp = purchase(
        &mut c,
        "t1",
        "u5",
        &[
            ("X-Request-Id", "bad-tp"),
            ("traceparent", "00-xyz-00f067aa0ba902b7-01"),
        ],
    );
    assert_eq!(bad_tp.header("x-request-id"), Some("bad-tp"));

    // The order calls answer it as well, and the moves log it.
    let got = c.request(
        "GET",
        &format!("/orders/{order}"),
        &[("X-Request-Id", "get-1")],
        None,
    );
    assert_ok(&got);
    assert_eq!(got.header("x-request-id"), Some("get-1"));
    let paid = c.request(
        "POST",
        &format!("/orders/{order}/pay"),
        &[("X-Request-Id", "pay-1")],
        None,
    );
    assert_ok(&paid);
    assert_eq!(paid.header("x-request-id"), Some("pay-1"));
    let missing = c.request("POST", "/orders/1-nope/cancel", &[], None);
    assert_error(&missing, 404, "not_found");
    assert_generated(&missing, "");
    // Endpoints outside purchases and orders carry none.
    assert_eq!(c.get("/healthz").header("x-request-id"), None);

    let journal = read_journal(&node.data_dir());
    let reserved = journal.reserved("t1");
    assert_eq!(reserved.len(), 1);
    assert_eq!(reserved[0]["request_id"], "buyer-req.1", "{}", reserved[0]);
    assert_eq!(reserved[0]["traceparent"], TRACEPARENT, "{}", reserved[0]);
    let paid: Vec<&Value> = journal.of_type("order_paid").collect();
    assert_eq!(paid[0]["request_id"], "pay-1", "{}", paid[0]);
    assert!(paid[0].get("traceparent").is_none(), "{}", paid[0]);

    // One debug line per purchase names its id (and the winner's order).
    let log = node.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("buyer-req.1") && l.contains(&order)),
        "no log line with the request id and the order:\n{log}"
    );
    assert!(log.contains(&a), "no log line with {a}:\n{log}");
}

/// Every message of the topic: its headers and its event.
fn read_topic_headers(broker: &Broker) -> Vec<(HashMap<String, String>, Value)> {
    crate::support::read_topic(broker, TOPIC)
        .into_iter()
        .map(|m| {
            let event = serde_json::from_slice(&m.payload).expect("JSON");
            (m.headers, event)
        })
        .collect()
}

#[test]
fn a_request_id_reaches_the_kafka_headers_and_the_settlers_log() {
    let redis = RedisServer::start();
    let broker = Broker::start();
    let node = kafka_node(&redis, &broker, 1, &[("RUST_LOG", "warn,seckill=debug")]);
    let settler = Settler::start(&redis, &broker);
    let mut c = node.client();
    // Time for the settler to read the reservation before it expires (it
    // knows the request ids of the reservations it has read).
    c.create_sale(
        "kt",
        &json!({ "stock": 2, "per_user_limit": 1, "payment_timeout_s": 10 }),
    );
    // (10 s: on a loaded machine the settler read the reservation more than
    // 4 s late once, and expired it without knowing its request id.)
    // The settler has read the topic up to the sale (its own record in
    // Redis says it is caught up): it reads the reservation at once.
    crate::support::eventually(Duration::from_secs(20), "the settler reads", || {
        let record = crate::cluster::redis_cli(&redis, &["GET", "sk:{stats}:settler"]);
        let record: Value = serde_json::from_str(record.trim()).ok()?;
        (record["lag_events"] == 0).then_some(())
    });
    let won = purchase(
        &mut c,
        "kt",
        "u1",
        &[("X-Request-Id", "kreq-1"), ("traceparent", TRACEPARENT)],
    );
    let order = assert_ok(&won)["order_id"]
        .as_str()
        .expect("order id")
        .to_owned();
    assert_eq!(won.header("x-request-id"), Some("kreq-1"));

    // The settler expires it and says so, with the buyer's request id.
    eventually(
        Duration::from_secs(40),
        "the settler logs the expiry",
        || {
            settler
                .log_text(0)
                .lines()
                .any(|l| l.contains(&order) && l.contains("kreq-1") && l.contains("expire"))
        },
    );

    let messages = read_topic_headers(&broker);
    let reserved = messages
        .iter()
        .find(|(_, e)| e["type"] == "order_reserved" && e["order_id"] == order)
        .unwrap_or_else(|| panic!("no order_reserved of {order}: {messages:?}"));
    assert_eq!(
        reserved.0.get("x-request-id").map(String::as_str),
        Some("kreq-1"),
        "{reserved:?}"
    );
    assert_eq!(
        reserved.0.get("traceparent").map(String::as_str),
        Some(TRACEPARENT),
        "{reserved:?}"
    );
    let expired = messages
        .iter()
        .find(|(_, e)| e["type"] == "order_expired" && e["order_id"] == order)
        .unwrap_or_else(|| panic!("no order_expired of {order}: {messages:?}"));
    assert_eq!(
        expired.0.get("x-request-id").map(String::as_str),
        Some("kreq-1"),
        "{expired:?}"
    );
    drop(node);
}

/// `seckill trace ORDER_ID --json` with `args` (where to look).
fn trace_order(order: &str, args: &[&str]) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seckill"))
        .arg("trace")
        .arg(order)
        .args(args)
        .arg("--json")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run seckill trace");
    assert!(
        out.status.success(),
        "seckill trace {order} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "seckill trace printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The `type` of each event of a trace, in its order.
fn types(trace: &Value) -> Vec<&str> {
    trace["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events: {trace}"))
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect()
}

fn is_in_time_order(trace: &Value) -> bool {
    let at: Vec<u64> = trace["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["at"].as_u64().expect("at"))
        .collect();
    at.windows(2).all(|w| w[0] <= w[1])
}

#[test]
fn seckill_trace_shows_an_orders_life_from_the_journal() {
    let root = tempfile::tempdir().expect("temp dir");
    let node = Node::start_in(root, &[]);
    let mut c = node.client();
    c.create_sale(
        "life",
        &json!({ "stock": 5, "per_user_limit": 1, "payment_timeout_s": 1 }),
    );
    let order_of = |c: &mut Client, user: &str, id: &str| {
        let resp = purchase(c, "life", user, &[("X-Request-Id", id)]);
        assert_ok(&resp)["order_id"]
            .as_str()
            .expect("order id")
            .to_owned()
    };
    let paid = order_of(&mut c, "u1", "buy-paid");
    let cancelled = order_of(&mut c, "u2", "buy-cancelled");
    let expired = order_of(&mut c, "u3", "buy-expired");
    let other = order_of(&mut c, "u4", "buy-other");
    assert_ok(&c.request(
        "POST",
        &format!("/orders/{paid}/pay"),
        &[("X-Request-Id", "pay-it")],
        None,
    ));
    assert_ok(&c.request(
        "POST",
        &format!("/orders/{cancelled}/cancel"),
        &[("X-Request-Id", "cancel-it")],
        None,
    ));
    assert_ok(&c.request("POST", &format!("/orders/{other}/pay"), &[], None));
    eventually_expired(&mut c, &expired);

    let dir = node.data_dir().display().to_string();
    let t = trace_order(&paid, &["--data-dir", &dir]);
    assert_eq!(types(&t), ["order_reserved", "order_paid"], "{t}");
    assert!(is_in_time_order(&t), "{t}");
    assert_eq!(t["node"], 1, "{t}");
    assert_eq!(t["request_ids"], json!(["buy-paid", "pay-it"]), "{t}");
    assert_eq!(t["events"][1]["request_id"], "pay-it", "{t}");

    let t = trace_order(&cancelled, &["--data-dir", &dir]);
    assert_eq!(types(&t), ["order_reserved", "order_cancelled"], "{t}");
    assert_eq!(
        t["request_ids"],
        json!(["buy-cancelled", "cancel-it"]),
        "{t}"
    );

    let t = trace_order(&expired, &["--data-dir", &dir]);
    assert_eq!(types(&t), ["order_reserved", "order_expired"], "{t}");
    assert!(is_in_time_order(&t), "{t}");
    assert_eq!(t["request_ids"], json!(["buy-expired"]), "{t}");

    // An order the log never saw is found nowhere, and says so.
    let t = trace_order("1-aaaaaaaaaaaaaaaa", &["--data-dir", &dir]);
    assert_eq!(types(&t), Vec::<&str>::new(), "{t}");
}

fn eventually_expired(c: &mut Client, order: &str) {
    crate::support::eventually(Duration::from_secs(15), "the order expires", || {
        (c.order(order)["status"] == "expired").then_some(())
    });
}

#[test]
fn seckill_trace_shows_an_orders_life_from_redis_and_kafka() {
    let redis = RedisServer::start();
    let broker = Broker::start();
    let node = kafka_node(&redis, &broker, 1, &[]);
    let settler = Settler::start(&redis, &broker);
    let mut c = node.client();
    c.create_sale(
        "klife",
        &json!({ "stock": 5, "per_user_limit": 1, "payment_timeout_s": 4 }),
    );
    let order_of = |c: &mut Client, user: &str, id: &str| {
        let resp = purchase(c, "klife", user, &[("X-Request-Id", id)]);
        assert_ok(&resp)["order_id"]
            .as_str()
            .expect("order id")
            .to_owned()
    };
    let expired = order_of(&mut c, "u1", "kbuy-expired");
    let cancelled = order_of(&mut c, "u2", "kbuy-cancelled");
    assert_ok(&c.request(
        "POST",
        &format!("/orders/{cancelled}/cancel"),
        &[("X-Request-Id", "kcancel")],
        None,
    ));
    eventually_expired(&mut c, &expired);
    let (url, bootstrap) = (redis.url(), broker.bootstrap());
    let sources = ["--redis", url.as_str(), "--kafka", bootstrap.as_str()];
    // The settler's expiry reaches the topic a moment after Redis.
    let t = {
        let mut t = trace_order(&expired, &sources);
        for _ in 0..50 {
            if types(&t).len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            t = trace_order(&expired, &sources);
        }
        t
    };
    assert_eq!(types(&t), ["order_reserved", "order_expired"], "{t}");
    assert!(is_in_time_order(&t), "{t}");
    assert_eq!(t["node"], 1, "{t}");
    assert_eq!(t["record"]["status"], "expired", "{t}");
    assert_eq!(t["events"][0]["by"], "node-1", "{t}");
    assert_eq!(t["events"][1]["by"], "settler", "{t}");
    assert_eq!(t["request_ids"], json!(["kbuy-expired"]), "{t}");

    let t = trace_order(&cancelled, &sources);
    assert_eq!(types(&t), ["order_reserved", "order_cancelled"], "{t}");
    assert_eq!(t["record"]["status"], "cancelled", "{t}");
    assert_eq!(
        t["request_ids"],
        json!(["kbuy-cancelled", "kcancel"]),
        "{t}"
    );
    drop(settler);
}

/// `kafka.settler_lag` of a node's `/admin/stats`: (events, seconds).
fn settler_lag(c: &mut Client) -> Option<(u64, f64)> {
    let s = crate::stats::stats(c);
    let lag = &s["kafka"]["settler_lag"];
    Some((lag["events"].as_u64()?, lag["seconds"].as_f64()?))
}

#[test]
fn settler_lag_rises_while_the_settler_is_stopped_and_falls_when_it_runs() {
    let redis = RedisServer::start();
    let broker = Broker::start();
    let node = kafka_node(&redis, &broker, 1, &[]);
    let settler = Settler::start(&redis, &broker);
    let mut c = node.client();
    c.create_sale("lag", &json!({ "stock": 50, "per_user_limit": 1 }));
    crate::support::eventually(Duration::from_secs(20), "the settler caught up", || {
        settler_lag(&mut c).filter(|(events, _)| *events == 0)
    });
    // The settler's own record in Redis says the same.
    crate::support::eventually(Duration::from_secs(10), "the settler's record", || {
        let record = crate::cluster::redis_cli(&redis, &["GET", "sk:{stats}:settler"]);
        let record: Value = serde_json::from_str(record.trim()).ok()?;
        (record["lag_events"] == 0).then_some(())
    });

    drop(settler);
    for n in 0..10 {
        assert_ok(&purchase(&mut c, "lag", &format!("u{n}"), &[]));
    }
    let (events, seconds) =
        crate::support::eventually(Duration::from_secs(20), "the lag rises", || {
            settler_lag(&mut c).filter(|(events, seconds)| *events >= 10 && *seconds >= 1.0)
        });
    assert!(events >= 10 && seconds >= 1.0, "{events} {seconds}");
    let metrics = c.get("/metrics").text();
    let gauge = metrics
        .lines()
        .find_map(|l| l.strip_prefix("seckill_settler_lag_events "))
        .unwrap_or_else(|| panic!("no seckill_settler_lag_events:\n{metrics}"));
    assert!(gauge.trim().parse::<f64>().unwrap() >= 10.0, "{gauge}");

    // Running again, it reads what it missed: the lag falls back to zero.
    let _settler = Settler::start(&redis, &broker);
    crate::support::eventually(Duration::from_secs(30), "the lag falls", || {
        settler_lag(&mut c).filter(|(events, seconds)| *events == 0 && *seconds == 0.0)
    });
    crate::support::eventually(Duration::from_secs(10), "the settler's record", || {
        let record = crate::cluster::redis_cli(&redis, &["GET", "sk:{stats}:settler"]);
        let record: Value = serde_json::from_str(record.trim()).ok()?;
        (record["lag_events"] == 0 && record["lag_seconds"] == 0.0).then_some(())
    });
}
