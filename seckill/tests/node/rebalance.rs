//! False sold-outs in cluster mode: `410 sold_out` only when no unit is
//! left anywhere. A node whose shards are dry while other nodes hold unsold
//! leased units gets one of them for its buyer (the holders give their
//! surplus back when another node wants it), and a sold-out sale still
//! costs Redis nothing per rejected request.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use seckill_testkit::RedisServer;
use serde_json::json;

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
    let holder_id = lease_the_unit_unsold(&redis, &a, "lone");
    // A lone buyer on the other node buys it.
    let (holder, other) = if holder_id == 1 { (&a, &b) } else { (&b, &a) };
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
fn a_crowd_on_three_nodes_is_told_sold_out_only_once_every_unit_is_sold() {
    const STOCK: u64 = 5;
    let redis = RedisServer::start();
    let nodes: Vec<Node> = (1..=3).map(|id| cluster_node(&redis, id, &[])).collect();
    nodes[2]
        .client()
        .create_sale("crowd", &json!({"stock": STOCK, "per_user_limit": 1}));
    wait_for_sale(&nodes.iter().collect::<Vec<_>>(), "crowd");
    thread::sleep(Duration::from_millis(500));
    // Four buyers per node, each buying with new user ids until told sold
    // out (retrying after 503): a 410 while units remain would strand them.
    let buyers: Vec<_> = nodes
        .iter()
        .flat_map(|n| (0..4).map(move |t| (n.addr(), t)))
        .map(|(addr, t)| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut won = 0u64;
                for n in 0.. {
                    let r = c.purchase("crowd", &format!("{addr}-{t}-{n}"));
                    match r.status {
                        200 => won += 1,
                        410 => return won,
                        _ => {
                            assert_error(&r, 503, "unavailable");
                            thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
                unreachable!()
            })
        })
        .collect();
    let won: u64 = buyers.into_iter().map(|b| b.join().expect("buyer")).sum();
    assert_eq!(
        won,
        STOCK,
        "every unit sold before anyone was told sold out ({})",
        units_in_redis(&redis, "crowd")
    );
    assert_eq!(redis_int(&redis, "sk:{crowd}:sold"), STOCK);
}

/// Node 1 leases the one unit of `sale` (stock 1, limit 2) and cannot sell
/// it: its buyer asks for 2. Returns which node holds it (1 or 2).
fn lease_the_unit_unsold(redis: &RedisServer, a: &Node, sale: &str) -> u32 {
    let greedy = a.client().purchase_with_key(sale, "greedy", 2, "greedy-1");
    assert_ne!(greedy.status, 200, "{greedy}");
    let (on_a, on_b) = (leased_to(redis, sale, 1), leased_to(redis, sale, 2));
    assert_eq!(
        on_a + on_b,
        1,
        "one node holds the unit ({})",
        units_in_redis(redis, sale)
    );
    if on_a == 1 {
        1
    } else {
        2
    }
}

#[test]
fn a_unit_held_by_a_killed_node_is_never_answered_sold_out_and_is_sold_once_reclaimed() {
    let redis = RedisServer::start();
    let mut a = cluster_node(&redis, 1, &[]);
    let b = cluster_node(&redis, 2, &[]);
    a.client()
        .create_sale("dead", &json!({"stock": 1, "per_user_limit": 2}));
    wait_for_sale(&[&a, &b], "dead");
    assert_eq!(
        lease_the_unit_unsold(&redis, &a, "dead"),
        1,
        "node 1 leased it"
    );
    a.kill();
    // Until the dead node's lease is reclaimed (lease TTL 2 s), the buyer
    // on node 2 is told to retry, never that it is sold out.
    let mut c = b.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut retries = 0;
    loop {
        let asked = Instant::now();
        let r = c.purchase("dead", "patient");
        if r.status == 200 {
            break;
        }
        assert_error(&r, 503, "unavailable");
        // The wait for units is bounded (a few poll intervals).
        assert!(
            asked.elapsed() < Duration::from_millis(2500),
            "a 503 after {:?}",
            asked.elapsed()
        );
        retries += 1;
        assert!(Instant::now() < deadline, "never sold ({retries} retries)");
    }
    assert!(retries > 0, "the dead node's unit was sold at once");
    assert_eq!(redis_int(&redis, "sk:{dead}:sold"), 1);
    thread::sleep(Duration::from_millis(500));
    assert_error(&c.purchase("dead", "late"), 410, "sold_out");
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
    // Housekeeping runs meanwhile on timers (heartbeats, reclaims, the id
    // claims, key expiry, the stats records), in bursts: its rate idle,
    // over a window long enough to hold several bursts, for comparison. A
    // script call per rejection would be 1,000.
    let window = Duration::from_secs(3);
    let idle_before = scripts();
    thread::sleep(window);
    let idle_per_s = (scripts() - idle_before) as f64 / window.as_secs_f64();
    let allowed = 8.0 + 2.0 * idle_per_s * (took.as_secs_f64() + 1.0);
    eprintln!(
        "script calls: {during} during {REJECTED} rejections in {took:?}, {idle_per_s:.1}/s idle"
    );
    assert!(
        during as f64 <= allowed,
        "{during} script calls during {REJECTED} sold-out answers ({idle_per_s:.1}/s idle)"
    );
}
