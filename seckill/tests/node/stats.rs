//! The operator's numbers: `GET /admin/stats` counts exactly the purchases
//! a test made, by outcome, per node and, in cluster mode, across the live
//! nodes of one Redis.

use std::time::Duration;

use seckill_testkit::RedisServer;
use serde_json::{json, Value};

use crate::cluster::{cluster_node, wait_for_sale};
use crate::support::Node;
use crate::support::{assert_error, assert_ok, eventually, Client, TOKEN};

/// `GET /admin/stats` with the admin token, asserted 200.
pub(crate) fn stats(c: &mut Client) -> Value {
    let auth = format!("Bearer {TOKEN}");
    assert_ok(&c.request("GET", "/admin/stats", &[("Authorization", &auth)], None))
}

/// The purchase counts of a stats document (or one node's record).
fn outcomes(v: &Value) -> Value {
    v["purchases"].clone()
}

#[test]
fn stats_count_the_purchases_made_by_outcome() {
    let node = Node::start();
    let mut c = node.client();
    assert_error(&c.get("/admin/stats"), 401, "unauthorized");
    c.create_sale("few", &json!({ "stock": 3, "per_user_limit": 1 }));
    c.create_sale("many", &json!({ "stock": 50, "per_user_limit": 1 }));
    for user in ["u1", "u2", "u3"] {
        assert_ok(&c.purchase("few", user));
    }
    for user in ["u4", "u5"] {
        assert_error(&c.purchase("few", user), 410, "sold_out");
    }
    assert_ok(&c.purchase("many", "u1"));
    assert_error(&c.purchase("many", "u1"), 409, "limit_exceeded");
    assert_error(&c.purchase("nothing", "u1"), 404, "not_found");
    c.switch("many", "pause");
    assert_error(&c.purchase("many", "u2"), 403, "sale_not_open");

    let s = stats(&mut c);
    assert_eq!(
        outcomes(&s),
        json!({ "200": 4, "410": 2, "409": 1, "429": 0, "503": 0, "other": 2 }),
        "{s:#}"
    );
    let few = s["sales"]
        .as_array()
        .expect("sales")
        .iter()
        .find(|v| v["sale_id"] == "few")
        .expect("sale few");
    assert_eq!(few["stock"], 3, "{s:#}");
    assert_eq!(few["sold"], 3, "{s:#}");
    assert_eq!(few["remaining"], 0, "{s:#}");
    let many = s["sales"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["sale_id"] == "many")
        .expect("sale many");
    assert_eq!(many["state"], "paused", "{s:#}");
    assert_eq!(many["sold"], 1, "{s:#}");
    assert_eq!(many["remaining"], 49, "{s:#}");
    assert_eq!(s["latency_ms"]["count"], 4, "{s:#}");
    let p50 = s["latency_ms"]["p50"].as_f64().expect("p50");
    let p99 = s["latency_ms"]["p99"].as_f64().expect("p99");
    assert!(p50 > 0.0 && p50 <= p99, "{s:#}");
    // Every purchase is answered: nothing holds a token or waits for one.
    assert_eq!(s["admission"]["in_flight"], 0, "{s:#}");
    assert_eq!(s["admission"]["waiting"], 0, "{s:#}");
    assert!(s["admission"]["tokens"].as_u64().unwrap() > 0, "{s:#}");
    assert_eq!(s["mode"], "embedded", "{s:#}");
    assert_eq!(
        s["backend"],
        json!({ "stock_unavailable": 0, "undetermined": 0, "log_failed": 0 }),
        "{s:#}"
    );
    assert!(s["rates"].is_object(), "{s:#}");
}

#[test]
fn cluster_stats_show_every_live_node_and_the_totals() {
    let redis = RedisServer::start();
    let a = cluster_node(&redis, 1, &[]);
    let b = cluster_node(&redis, 2, &[]);
    let (mut ca, mut cb) = (a.client(), b.client());
    ca.create_sale("shared", &json!({ "stock": 100, "per_user_limit": 1 }));
    wait_for_sale(&[&a, &b], "shared");
    for user in ["a1", "a2", "a3"] {
        assert_ok(&ca.purchase("shared", user));
    }
    assert_error(&ca.purchase("shared", "a1"), 409, "limit_exceeded");
    for user in ["b1", "b2"] {
        assert_ok(&cb.purchase("shared", user));
    }

    // Each node publishes its record every second; whichever node answers
    // shows both, and the totals add them up.
    let s = eventually(Duration::from_secs(10), "both nodes' records", || {
        let s = stats(&mut cb);
        let nodes = s["nodes"].as_array()?;
        let by_id = |id: u64| nodes.iter().find(|n| n["node_id"] == id).cloned();
        let (one, two) = (by_id(1)?, by_id(2)?);
        (one["purchases"]["200"] == 3 && two["purchases"]["200"] == 2).then_some(s)
    });
    let nodes = s["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{s:#}");
    let one = nodes.iter().find(|n| n["node_id"] == 1).unwrap();
    let two = nodes.iter().find(|n| n["node_id"] == 2).unwrap();
    assert_eq!(
        outcomes(one),
        json!({ "200": 3, "410": 0, "409": 1, "429": 0, "503": 0, "other": 0 }),
        "{s:#}"
    );
    assert_eq!(
        outcomes(two),
        json!({ "200": 2, "410": 0, "409": 0, "429": 0, "503": 0, "other": 0 }),
        "{s:#}"
    );
    assert_eq!(
        s["totals"]["purchases"],
        json!({ "200": 5, "410": 0, "409": 1, "429": 0, "503": 0, "other": 0 }),
        "{s:#}"
    );
    assert_eq!(s["mode"], "cluster", "{s:#}");
    assert!(s["redis"]["publishes"].as_u64().unwrap() > 0, "{s:#}");
    assert_eq!(s["redis"]["errors"], 0, "{s:#}");
    eventually(Duration::from_secs(5), "the sold count from Redis", || {
        let s = stats(&mut ca);
        let sale = s["sales"].as_array()?.first()?.clone();
        (sale["sold"] == 5 && sale["remaining"] == 95).then_some(())
    });

    // A node that stops publishing leaves the list when its record expires.
    drop(a);
    eventually(Duration::from_secs(10), "node 1 gone from the list", || {
        let s = stats(&mut cb);
        let nodes = s["nodes"].as_array()?;
        (nodes.len() == 1 && nodes[0]["node_id"] == 2).then_some(())
    });
}

#[test]
fn cluster_stats_count_reservations_redis_did_not_answer() {
    let mut redis = RedisServer::start();
    let node = cluster_node(&redis, 1, &[]);
    let mut c = node.client();
    c.create_sale("hung", &json!({ "stock": 100, "per_user_limit": 1 }));
    assert_ok(&c.purchase("hung", "before"));

    // Hung: the reservation's reply times out (undetermined, abandoned by
    // order id); then gone.
    redis.freeze();
    assert_error(&c.purchase("hung", "while-hung"), 503, "unavailable");
    redis.thaw();
    redis.stop();
    assert_error(&c.purchase("hung", "while-gone"), 503, "unavailable");

    let s = stats(&mut c);
    assert_eq!(
        outcomes(&s),
        json!({ "200": 1, "410": 0, "409": 0, "429": 0, "503": 2, "other": 0 }),
        "{s:#}"
    );
    // The hung call is undetermined; the killed server's may be either
    // (refused, or the connection broke after the send).
    let backend = &s["backend"];
    let undetermined = backend["undetermined"].as_u64().expect("undetermined");
    let unavailable = backend["stock_unavailable"].as_u64().expect("unavailable");
    assert!(undetermined >= 1, "{s:#}");
    assert_eq!(undetermined + unavailable, 2, "{s:#}");
    assert_eq!(backend["log_failed"], 0, "{s:#}");
}

/// The value of the metric line that starts with `prefix` (name and
/// labels), if the node exposes it.
fn metric(c: &mut Client, prefix: &str) -> Option<f64> {
    let text = c.get("/metrics").text();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn cluster_metrics_time_the_redis_reservation_calls() {
    let redis = RedisServer::start();
    let node = cluster_node(&redis, 1, &[]);
    let mut c = node.client();
    c.create_sale("timed", &json!({ "stock": 10, "per_user_limit": 1 }));
    let mut orders = Vec::new();
    for user in ["t1", "t2", "t3"] {
        orders.push(assert_ok(&c.purchase("timed", user))["order_id"].clone());
    }
    assert_ok(&c.pay(orders[0].as_str().unwrap()));
    assert_ok(&c.cancel(orders[1].as_str().unwrap()));

    // Every reservation went out in some reserve call; pay and cancel are
    // one transition each.
    let reserves = metric(
        &mut c,
        r#"seckill_redis_call_seconds_count{call="reserve"}"#,
    )
    .expect("reserve calls in /metrics");
    assert!((1.0..=3.0).contains(&reserves), "{reserves}");
    let moves = metric(
        &mut c,
        r#"seckill_redis_call_seconds_count{call="transition"}"#,
    )
    .expect("transition calls in /metrics");
    assert_eq!(moves, 2.0);
    let inf = metric(
        &mut c,
        r#"seckill_redis_call_seconds_bucket{call="reserve",le="+Inf"}"#,
    );
    assert_eq!(inf, Some(reserves));
    assert!(metric(&mut c, r#"seckill_redis_call_seconds_sum{call="reserve"}"#).unwrap() > 0.0);

    // /admin/stats shows p50/p99 per call, in this node's record.
    let s = stats(&mut c);
    let reserve = &s["redis"]["calls"]["reserve"];
    assert_eq!(reserve["count"].as_f64(), Some(reserves), "{s:#}");
    let (p50, p99) = (
        reserve["p50"].as_f64().unwrap(),
        reserve["p99"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{s:#}");
    assert_eq!(s["redis"]["calls"]["transition"]["count"], 2, "{s:#}");
}
