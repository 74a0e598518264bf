//! Idempotency across the nodes of a cluster (a real `redis-server`): a
//! retry with the same Idempotency-Key gets its first order on any node,
//! before or after sell-out, pause, close or a restart; a replay logs the
//! order as it is now; keys expire after `idempotency_ttl_s`; an order move
//! whose log append failed reaches the journal by its retry.

use std::thread;
use std::time::{Duration, Instant};

use seckill_testkit::RedisServer;
use serde_json::json;

use crate::cluster::{redis_cli, wait_for_sale};
use crate::support::{assert_error, assert_ok, Node};

/// A cluster node on `redis` with node id `id`; `toml` is added to its
/// config file, `env` to its environment.
fn node(redis: &RedisServer, id: u32, toml: &str, env: &[(&str, &str)]) -> Node {
    Node::start_cluster(&redis.url(), id, toml, &[], env)
}

/// Waits until `node` reports `sale` in `state`.
fn wait_for_state(node: &Node, sale: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let view = node.client().sale(sale);
        if view["state"] == state {
            return;
        }
        assert!(Instant::now() < deadline, "{sale} not {state}: {view}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts a replay of `order_id`.
#[track_caller]
fn assert_replays(node: &Node, sale: &str, user: &str, key: &str, order_id: &str, when: &str) {
    let resp = node.client().purchase_with_key(sale, user, 1, key);
    let body = assert_ok(&resp);
    assert_eq!(body["order_id"], order_id, "{when}: {resp}");
    assert!(resp.is_replayed(), "{when}: {resp}");
}

#[test]
fn a_retry_on_any_node_gets_its_order_after_sell_out_pause_close_and_restart() {
    let redis = RedisServer::start();
    let mut a = node(&redis, 1, "", &[]);
    a.client()
        .create_sale("ir", &json!({"stock": 3, "per_user_limit": 1}));
    let mut orders = Vec::new();
    for (user, key) in [("alice", "ka"), ("bob", "kb"), ("carol", "kc")] {
        let body = assert_ok(&a.client().purchase_with_key("ir", user, 1, key));
        orders.push(body["order_id"].as_str().unwrap().to_owned());
    }
    // Node 2 starts once node 1 sold everything: it never held a unit.
    let b = node(&redis, 2, "", &[]);
    wait_for_sale(&[&a, &b], "ir");
    wait_for_state(&b, "ir", "sold_out");
    assert_error(&b.client().purchase("ir", "dave"), 410, "sold_out");

    assert_replays(&b, "ir", "alice", "ka", &orders[0], "sold out");
    assert_replays(&b, "ir", "alice", "ka", &orders[0], "sold out, again");
    assert_ok(&a.client().switch("ir", "pause"));
    wait_for_state(&b, "ir", "paused");
    assert_replays(&b, "ir", "bob", "kb", &orders[1], "paused");
    assert_ok(&a.client().switch("ir", "close"));
    wait_for_state(&b, "ir", "closed");
    assert_replays(&b, "ir", "carol", "kc", &orders[2], "closed");
    // A key with another body is still refused, and an unknown key still
    // gets the sale's state.
    let reused = b.client().purchase_with_key("ir", "mallory", 1, "ka");
    assert_error(&reused, 422, "idempotency_key_reused");
    assert_error(
        &b.client().purchase_with_key("ir", "erin", 1, "ke"),
        403,
        "sale_not_open",
    );

    a.restart();
    wait_for_state(&a, "ir", "closed");
    for (i, (user, key)) in [("alice", "ka"), ("bob", "kb"), ("carol", "kc")]
        .into_iter()
        .enumerate()
    {
        assert_replays(&a, "ir", user, key, &orders[i], "closed, restarted");
    }
    // Still three orders, and node 1's journal names only them (a replay
    // found in Redis logs its order again; consumers dedupe by order id).
    assert_eq!(redis_cli(&redis, &["HLEN", "sk:{ir}:orders"]).trim(), "3");
    let mut logged: Vec<String> = a.journal().reserved_counts("ir").into_keys().collect();
    logged.sort();
    orders.sort();
    assert_eq!(logged, orders);
}

#[test]
fn a_replay_logs_the_order_as_it_is_now() {
    let redis = RedisServer::start();
    let a = node(&redis, 1, "", &[]);
    let b = node(&redis, 2, "", &[]);
    a.client()
        .create_sale("rl", &json!({"stock": 5, "per_user_limit": 1}));
    wait_for_sale(&[&a, &b], "rl");
    let first = assert_ok(&a.client().purchase_with_key("rl", "alice", 1, "k1"));
    let order_id = first["order_id"].as_str().unwrap().to_owned();
    assert_ok(&a.client().pay(&order_id));

    assert_replays(&b, "rl", "alice", "k1", &order_id, "paid on another node");
    let journal = b.journal();
    assert_eq!(journal.count("order_reserved", &order_id), 1);
    assert_eq!(
        journal.count("order_paid", &order_id),
        1,
        "the replaying node's log must not show a paid order as only reserved"
    );
    assert_eq!(
        assert_ok(&b.client().get(&format!("/orders/{order_id}")))["status"],
        "paid"
    );
}

#[test]
fn idempotency_keys_expire_after_their_ttl_on_every_node() {
    let redis = RedisServer::start();
    let a = node(&redis, 1, "idempotency_ttl_s = 2\n", &[]);
    let b = node(&redis, 2, "idempotency_ttl_s = 2\n", &[]);
    a.client()
        .create_sale("ttl", &json!({"stock": 10, "per_user_limit": 2}));
    wait_for_sale(&[&a, &b], "ttl");
    let first = assert_ok(&a.client().purchase_with_key("ttl", "alice", 1, "k1"));
    let first_id = first["order_id"].as_str().unwrap().to_owned();
    assert_replays(&b, "ttl", "alice", "k1", &first_id, "within the TTL");
    assert_replays(&a, "ttl", "alice", "k1", &first_id, "within the TTL");

    // Past the TTL (and a housekeeping round) the key is forgotten in
    // Redis and in both nodes' memory: the same key makes a new order.
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_cli(&redis, &["HLEN", "sk:{ttl}:idem"]).trim() != "0" {
        assert!(Instant::now() < deadline, "the key record never expired");
        thread::sleep(Duration::from_millis(100));
    }
    let again = a.client().purchase_with_key("ttl", "alice", 1, "k1");
    let second = assert_ok(&again);
    assert!(!again.is_replayed(), "{again}");
    let second_id = second["order_id"].as_str().unwrap().to_owned();
    assert_ne!(second_id, first_id);
    assert_replays(&b, "ttl", "alice", "k1", &second_id, "the new order");
}

#[test]
fn a_move_applied_in_redis_whose_log_append_failed_is_logged_by_its_retry() {
    let redis = RedisServer::start();
    let a = node(&redis, 1, "", &[("SECKILL_FAILPOINT", "transition_log")]);
    a.client()
        .create_sale("tl", &json!({"stock": 5, "per_user_limit": 1}));
    let order = assert_ok(&a.client().purchase("tl", "alice"));
    let order_id = order["order_id"].as_str().unwrap().to_owned();

    // The first transition's append fails (the failpoint), after Redis
    // applied the move.
    assert_error(&a.client().pay(&order_id), 503, "unavailable");
    assert_eq!(a.journal().count("order_paid", &order_id), 0);
    // The buyer's retry finds the order paid: it answers 200 only once the
    // move is in the journal.
    let paid = assert_ok(&a.client().pay(&order_id));
    assert_eq!(paid["status"], "paid");
    assert_eq!(a.journal().count("order_paid", &order_id), 1);

    // Once logged, the move leaves Redis's not-yet-logged set, and more
    // repeats append nothing: a client cannot grow the journal by
    // repeating a move.
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis_cli(&redis, &["ZCARD", "sk:{tl}:unlogged"]).trim() != "0" {
        assert!(Instant::now() < deadline, "the move never left the set");
        thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..3 {
        assert_ok(&a.client().pay(&order_id));
    }
    assert_eq!(a.journal().count("order_paid", &order_id), 1);
}

#[test]
fn a_replay_whose_log_append_failed_is_not_answered_from_memory_later() {
    let redis = RedisServer::start();
    let a = node(&redis, 1, "", &[]);
    // Node 2's first append of a replayed order fails (once).
    let b = node(&redis, 2, "", &[("SECKILL_FAILPOINT", "replay_log")]);
    a.client()
        .create_sale("rl", &json!({"stock": 5, "per_user_limit": 1}));
    wait_for_sale(&[&b], "rl");
    let first = a.client().purchase_with_key("rl", "dora", 1, "kd");
    let order_id = assert_ok(&first)["order_id"]
        .as_str()
        .expect("order_id")
        .to_owned();
    // The retry on node 2: the order is found in Redis, its log append
    // fails: no 200.
    let failed = b.client().purchase_with_key("rl", "dora", 1, "kd");
    assert_error(&failed, 503, "unavailable");
    // The next retry on node 2 must log the order before it answers 200,
    // not answer from what node 2 remembered of the failed attempt.
    assert_replays(&b, "rl", "dora", "kd", &order_id, "after a failed relog");
    let logged = b
        .journal()
        .reserved("rl")
        .iter()
        .filter(|e| e["order_id"] == order_id.as_str())
        .count();
    assert_eq!(logged, 1, "node 2 logged the order it answered 200");
}
