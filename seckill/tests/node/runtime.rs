//! The runtime and its limits: both monoio drivers serve a sale correctly,
//! the connection cap answers 503 and closes, idle keep-alive connections
//! are closed after the idle timeout, the purchase rate limits answer 429.

use std::io::Read;
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{assert_error, assert_ok, Client, Node};

/// A small sale under 8 concurrent buyers on the given driver: exactly the
/// stock is sold, the rest are 410, the journal matches.
fn sell_out_on(driver: &str) {
    let node = Node::start_with(&["--driver", driver]);
    let mut admin = node.client();
    admin.create_sale("d", &json!({"stock": 50, "per_user_limit": 1}));
    let addr = node.addr();
    let workers: Vec<_> = (0..8)
        .map(|w| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut won = Vec::new();
                for i in 0..25 {
                    let r = c.purchase("d", &format!("u{w}-{i}"));
                    match r.status {
                        200 => won.push(r.str("order_id")),
                        410 => assert_error(&r, 410, "sold_out"),
                        other => panic!("unexpected {other}: {}", r.text()),
                    }
                }
                won
            })
        })
        .collect();
    let mut orders: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert_eq!(orders.len(), 50, "driver {driver}");
    orders.sort();
    orders.dedup();
    assert_eq!(orders.len(), 50, "order ids are distinct on {driver}");
    assert_eq!(node.journal().reserved("d").len(), 50);
    let sale = admin.sale("d");
    assert_eq!(sale["sold"], 50);
    assert_eq!(sale["state"], "sold_out");
    let metrics = admin.get("/metrics").text();
    let expected = if driver == "uring" {
        "io_uring"
    } else {
        "legacy"
    };
    if driver != "auto" {
        assert!(
            metrics.contains(&format!("seckill_driver_info{{driver=\"{expected}\"}} 1")),
            "{metrics}"
        );
    }
}

#[test]
fn the_epoll_driver_sells_exactly_the_stock() {
    sell_out_on("legacy");
}

#[test]
fn the_io_uring_driver_sells_exactly_the_stock() {
    sell_out_on("uring");
}

#[test]
fn the_auto_driver_sells_exactly_the_stock() {
    sell_out_on("auto");
}

fn node_with_config(text: &str) -> Node {
    let root = seckill_testkit::temp_dir("seckill-it-");
    std::fs::write(root.path().join("seckill.toml"), text).expect("write config");
    Node::start_in(root, &["--config", "{root}/seckill.toml"])
}

#[test]
fn connections_over_the_cap_get_503_and_are_closed() {
    // 4 connections per node = 2 per core.
    let node = node_with_config("max_connections = 4\n");
    let mut held: Vec<Client> = Vec::new();
    let mut refused = 0;
    for _ in 0..12 {
        let mut c = node.client();
        c.set_read_timeout(Duration::from_secs(5));
        match c.try_request("GET", "/healthz", &[], None) {
            Ok(r) if r.status == 200 => held.push(c),
            Ok(r) => {
                assert_error(&r, 503, "overloaded");
                assert!(r.closes(), "a refused connection is closed");
                refused += 1;
            }
            Err(_) => refused += 1,
        }
    }
    assert!(held.len() <= 4, "at most the cap is served: {}", held.len());
    assert!(refused >= 8, "the rest is refused: {refused}");
    // Closing served connections frees room.
    drop(held);
    thread::sleep(Duration::from_millis(300));
    let mut c = node.client();
    assert_ok(&c.get("/healthz"));
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let node = node_with_config("idle_timeout_s = 1\n");
    let mut c = node.client();
    assert_ok(&c.get("/healthz"));
    let started = Instant::now();
    assert!(
        c.closed_by_peer(Duration::from_secs(5)),
        "the idle connection was closed"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "not before the timeout: {waited:?}"
    );
    // A connection that never sends anything is closed too.
    let mut raw = TcpStream::connect(node.addr()).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(raw.read(&mut buf).unwrap_or(0), 0);
}

#[test]
fn the_per_user_rate_limit_answers_429_with_retry_after() {
    // One token every 2 s, bursts of 2. One connection stays on one core,
    // so the per-core limit is exact here.
    let node = node_with_config("rate_limit_user_per_s = 0.5\nrate_limit_user_burst = 2\n");
    let mut c = node.client();
    c.create_sale("rl", &json!({"stock": 10, "per_user_limit": 5}));
    c.create_sale("rl-gone", &json!({"stock": 1, "per_user_limit": 1}));
    let t0 = Instant::now();
    assert_ok(&c.purchase("rl", "alice"));
    assert_ok(&c.purchase("rl", "alice"));
    let over = c.purchase("rl", "alice");
    assert_error(&over, 429, "rate_limited");
    assert!(over.text().contains("user"), "{}", over.text());
    let retry: u64 = over
        .header("retry-after")
        .expect("Retry-After on 429")
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry), "Retry-After {retry}");
    // Another user has a limit of their own.
    assert_ok(&c.purchase("rl", "bob"));
    // A sold-out sale answers 410 before the limit is looked at: carol's
    // burst covers the purchase and the request that finds the sale empty,
    // every later one is refused by the sold-out flag, not the limit.
    assert_ok(&c.purchase("rl-gone", "carol"));
    for _ in 0..5 {
        assert_error(&c.purchase("rl-gone", "carol"), 410, "sold_out");
    }
    // Nothing refused took stock.
    assert_eq!(c.sale("rl")["sold"], 3);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "the burst above must fit in one token's time; the machine was too slow"
    );
    // One token later alice gets through again.
    thread::sleep(Duration::from_millis(2200).saturating_sub(t0.elapsed()));
    assert_ok(&c.purchase("rl", "alice"));
    assert_eq!(c.sale("rl")["sold"], 4);
    let metrics = c.get("/metrics").text();
    assert!(
        metrics.contains("seckill_responses_total{status=\"429\"} 1\n"),
        "the 429 is counted: {metrics}"
    );
}

#[test]
fn the_per_ip_rate_limit_answers_429() {
    let node = node_with_config("rate_limit_ip_per_s = 0.2\nrate_limit_ip_burst = 3\n");
    let mut c = node.client();
    c.create_sale("rl", &json!({"stock": 10, "per_user_limit": 1}));
    for user in ["u1", "u2", "u3"] {
        assert_ok(&c.purchase("rl", user));
    }
    let over = c.purchase("rl", "u4");
    assert_error(&over, 429, "rate_limited");
    assert!(over.text().contains("ip"), "{}", over.text());
    assert!(over.header("retry-after").is_some());
    // Other endpoints are not limited.
    assert_eq!(c.sale("rl")["sold"], 3);
}
