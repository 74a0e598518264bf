//! False sold-outs in cluster mode: `410 sold_out` only when no unit is
//! left anywhere. A node whose shards are dry while other nodes hold unsold
//! leased units gets one of them for its buyer (the holders give their
//! surplus back when another node wants it), and a sold-out sale still
//! costs Redis nothing per rejected request.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use stock::redis::fixture::RedisServer;

use crate::cluster::{cluster_node, command_calls, redis_cli, redis_int, wait_for_sale};
use crate::support::{assert_error, assert_ok, Client, Node};

/// Who holds what of `sale` in Redis, for failure messages.
fn units_in_redis(redis: &RedisServer, sale: &str) -> String {
    format!(
        "pool {}, sold {}, leases [{}]",
        redis_int(redis, &format!("sk:{{{sale}}}:pool")),
        redis_int(redis, &format!("sk:{{{sale}}}:sold")),
        redis_cli(redis, &["HGETALL", &format!("sk:{{{sale}}}:leases")])
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// Units of `sale` leased to node `id` and not yet sold.
fn leased_to(redis: &RedisServer, sale: &str, id: usize) -> u64 {
    redis_cli(
        redis,
        &["HGET", &format!("sk:{{{sale}}}:leases"), &id.to_string()],
    )
    .trim()
    .parse()
    .unwrap_or(0)
}

/// One buyer at a time, each a new user, the `i`-th on node `i % nodes`,
/// or on the next one after it that holds no leased unit if there is one
/// (the unlucky buyer: his node has nothing while another holds units).
/// The first `stock` get 200, every later one 410. A pause between buyers
/// lets every node's poller run (and lease ahead, or give back).
fn alternating_buyers(redis: &RedisServer, addrs: &[SocketAddr], sale: &str, stock: usize) {
    let mut clients: Vec<Client> = addrs.iter().map(|a| Client::connect(*a)).collect();
    let n = clients.len();
    for i in 0..stock + 3 {
        let node = (0..n)
            .map(|k| (i + k) % n)
            .find(|&j| leased_to(redis, sale, j + 1) == 0)
            .unwrap_or(i % n);
        let before = units_in_redis(redis, sale);
        let r = clients[node].purchase(sale, &format!("{sale}-u{i}"));
        if i < stock {
            assert_eq!(
                r.status,
                200,
                "buyer {i} of a sale of {stock} on node {} while units remain: {r} (before: {before})",
                node + 1,
            );
        } else {
            assert_error(&r, 410, "sold_out");
        }
        thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        redis_int(redis, &format!("sk:{{{sale}}}:sold")),
        stock as u64
    );
}

#[test]
fn one_buyer_at_a_time_on_alternating_nodes_wins_while_units_remain() {
    let redis = RedisServer::start();
    let nodes: Vec<Node> = (1..=3).map(|id| cluster_node(&redis, id, &[])).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    for (sale, stock) in [("alt1", 1), ("alt2", 2), ("alt6", 6)] {
        // Created through the last node, bought first through the first.
        nodes[2]
            .client()
            .create_sale(sale, &json!({"stock": stock, "per_user_limit": 1}));
        wait_for_sale(&nodes.iter().collect::<Vec<_>>(), sale);
        // Every node's poller has run a few times.
        thread::sleep(Duration::from_millis(500));
        alternating_buyers(&redis, &addrs, sale, stock);
    }
}

#[test]
fn a_unit_leased_by_one_node_is_sold_to_a_lone_buyer_on_another() {
    let redis = RedisServer::start();
    let a = cluster_node(&redis, 1, &[]);
    let b = cluster_node(&redis, 2, &[]);
    a.client()
        .create_sale("lone", &json!({"stock": 1, "per_user_limit": 2}));
    wait_for_sale(&[&a, &b], "lone");
    // A buyer on node 1 asks for 2 units of a sale of 1: a node leases the
    // unit (node 1 for this buyer, or a node leasing ahead of demand) and
    // cannot sell it to him.
    let greedy = a
        .client()
        .purchase_with_key("lone", "greedy", 2, "greedy-1");
    assert_ne!(greedy.status, 200, "{greedy}");
    let leased = |id: &str| {
        redis_cli(&redis, &["HGET", "sk:{lone}:leases", id])
            .trim()
            .parse::<u64>()
            .unwrap_or(0)
    };
    let (on_a, on_b) = (leased("1"), leased("2"));
    assert_eq!(
        on_a + on_b,
        1,
        "one node holds the unit ({})",
        units_in_redis(&redis, "lone")
    );
    // A lone buyer on the other node buys it.
    let (holder, other) = if on_a == 1 { (&a, &b) } else { (&b, &a) };
    let started = Instant::now();
    let r = other.client().purchase("lone", "lone-buyer");
    assert_eq!(
        r.status,
        200,
        "the unit held by the other node is sold: {r} ({})",
        units_in_redis(&redis, "lone")
    );
    // Within the bounded wait (a few poll intervals).
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(redis_int(&redis, "sk:{lone}:sold"), 1);
    // Now it is sold out, on both nodes.
    thread::sleep(Duration::from_millis(500));
    assert_error(&holder.client().purchase("lone", "late-1"), 410, "sold_out");
    assert_error(&other.client().purchase("lone", "late-2"), 410, "sold_out");
}

#[test]
fn after_sell_out_rejections_on_every_node_cost_no_script_call() {
    const REJECTED: usize = 1000;
    let redis = RedisServer::start();
    let a = cluster_node(&redis, 1, &[]);
    let b = cluster_node(&redis, 2, &[]);
    a.client()
        .create_sale("none", &json!({"stock": 4, "per_user_limit": 1}));
    wait_for_sale(&[&a, &b], "none");
    let mut ca = a.client();
    for i in 0..4 {
        assert_ok(&ca.purchase("none", &format!("first-{i}")));
    }
    // Both nodes have seen the sell-out (poll interval 200 ms).
    thread::sleep(Duration::from_millis(500));
    let scripts = || command_calls(&redis, "evalsha") + command_calls(&redis, "eval");
    let mut clients = [a.client(), b.client()];
    let before = scripts();
    let started = Instant::now();
    for i in 0..REJECTED {
        let r = clients[i % 2].purchase("none", &format!("late-{i}"));
        assert_error(&r, 410, "sold_out");
    }
    let took = started.elapsed();
    let during = scripts() - before;
    // Housekeeping runs meanwhile (per node and sale: a heartbeat and a
    // reclaim every lease_ttl / 3); the same time idle, for comparison.
    let idle_before = scripts();
    thread::sleep(took);
    let idle = scripts() - idle_before;
    eprintln!(
        "script calls: {during} during {REJECTED} rejections in {took:?}, {idle} idle for as long"
    );
    assert!(
        during <= idle + 8,
        "{during} script calls during {REJECTED} sold-out answers ({idle} idle)"
    );
}
