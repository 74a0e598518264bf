//! Cluster mode on a real Redis Cluster (3 masters, 3 replicas) and behind
//! Sentinel (a primary and its replica): nodes connect with the seed list
//! or the sentinels, sales live on every master, the guarantees of one
//! Redis hold on each, and a reservation is answered 200 only once a
//! replica has it (`WAIT`), so a failover mid-sale loses no 200.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use seckill_testkit::redis_cluster::{RedisCluster, SentinelSet};
use serde_json::json;

use crate::cluster::{buy_the_rest, cluster_node_at, load, wait_for_sale};
use crate::support::{assert_error, assert_ok, eventually, Client, Node};

/// Sale ids whose keys live on three different masters.
fn sales_on_every_master(cluster: &RedisCluster) -> Vec<String> {
    cluster
        .masters()
        .iter()
        .map(|&m| {
            (0..)
                .map(|i| format!("rc{i}"))
                .find(|s| cluster.master_of(&format!("sk:{{{s}}}:pool")) == m)
                .expect("some sale id lands on each master")
        })
        .collect()
}

/// `redis-cli -c` (follows MOVED) against any node of the cluster.
fn cluster_cli(cluster: &RedisCluster, args: &[&str]) -> String {
    let port = cluster.masters()[0].to_string();
    let out = Command::new("redis-cli")
        .args(["-c", "-p", &port])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn three_nodes_on_a_three_master_cluster_sell_exactly_the_stock_of_every_sale() {
    let cluster = RedisCluster::start();
    let seeds = cluster.seeds();
    let nodes: Vec<Node> = (1..=3).map(|id| cluster_node_at(&seeds, id, &[])).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let sales = sales_on_every_master(&cluster);
    for sale in &sales {
        nodes[0]
            .client()
            .create_sale(sale, &json!({"stock": 400, "per_user_limit": 1}));
    }
    for sale in &sales {
        wait_for_sale(&nodes.iter().collect::<Vec<_>>(), sale);
    }
    // The three sales sell at once, each buyer trying every node.
    let tallies: Vec<_> = std::thread::scope(|s| {
        let workers: Vec<_> = sales
            .iter()
            .map(|sale| s.spawn(|| load(&addrs, sale, 1_000, 3, 4)))
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for (sale, tally) in sales.iter().zip(tallies) {
        assert!(tally.orders.len() <= 400, "{sale} oversold");
        assert!(
            tally.by_code.get("limit_exceeded").copied().unwrap_or(0) > 0,
            "{sale}: no attempt met the limit ({:?})",
            tally.by_code
        );
        let mut per_user: HashMap<&str, usize> = HashMap::new();
        for (_, user) in &tally.orders {
            *per_user.entry(user).or_default() += 1;
        }
        assert!(
            per_user.values().all(|n| *n == 1),
            "{sale}: a user got two units across nodes"
        );
        let rest = buy_the_rest(&addrs, sale, "late", Duration::from_secs(30));
        let all: HashSet<String> = tally.order_ids_and(rest).into_iter().collect();
        assert_eq!(all.len(), 400, "{sale}: sold == stock once settled");
        let key = format!("sk:{{{sale}}}:sold");
        assert_eq!(cluster_cli(&cluster, &["GET", &key]).trim(), "400");
        let key = format!("sk:{{{sale}}}:pool");
        assert_eq!(cluster_cli(&cluster, &["GET", &key]).trim(), "0");
    }
}

/// `redis-cli -p PORT ARGS...`.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Buyers (a fresh user each attempt) on every node until `stop`: the
/// orders answered 200, and the other answers by code. Only 503
/// `unavailable` and 410 `sold_out` may refuse a buyer.
fn crowd(
    addrs: &[SocketAddr],
    sale: &str,
    tag: usize,
    stop: &AtomicBool,
) -> (Vec<String>, HashMap<String, usize>) {
    let mut clients: Vec<Client> = addrs.iter().map(|a| Client::connect(*a)).collect();
    let mut orders = Vec::new();
    let mut codes: HashMap<String, usize> = HashMap::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let i = n % clients.len();
        let r = clients[i].purchase(sale, &format!("crowd-{tag}-{n}"));
        n += 1;
        if r.status == 200 {
            orders.push(r.str("order_id"));
            continue;
        }
        let code = r.error_code();
        match code.as_str() {
            "unavailable" => assert_error(&r, 503, "unavailable"),
            "sold_out" => assert_error(&r, 410, "sold_out"),
            other => panic!("unexpected answer {other}: {r}"),
        }
        *codes.entry(code).or_default() += 1;
        std::thread::sleep(Duration::from_millis(5));
    }
    (orders, codes)
}

/// A primary with a replica: a purchase is answered 200 only once the
/// replica has its reservation (`WAIT`, on by default when the primary has
/// a replica). While the replica acknowledges nothing, buyers get 503 and
/// their reservations are released; once it is back, the sale sells again.
#[test]
fn a_purchase_is_answered_200_only_once_a_replica_has_it() {
    let set = SentinelSet::start();
    let node = cluster_node_at(&set.url(), 1, &[]);
    let mut c = node.client();
    c.create_sale("w", &json!({"stock": 20, "per_user_limit": 1}));
    assert_ok(&c.purchase("w", "u1"));
    set.freeze_replica();
    let r = c.purchase("w", "u2");
    assert_error(&r, 503, "unavailable");
    set.thaw_replica();
    let order = eventually(Duration::from_secs(10), "the sale sells again", || {
        let r = c.purchase("w", "u3");
        (r.status == 200).then(|| r.str("order_id"))
    });
    assert!(!order.is_empty());
    // u2's reservation was released: two units sold, as answered.
    let primary = set.primary();
    eventually(Duration::from_secs(10), "u2's reservation released", || {
        (cli(primary, &["GET", "sk:{w}:sold"]).trim() == "2").then_some(())
    });
    assert_eq!(cli(primary, &["HLEN", "sk:{w}:users"]).trim(), "2");
}

/// Every order answered 200 is on the new primary after a failover, the
/// sale sells again once the new primary has a replica, and at rest it
/// has sold exactly its stock, each unit once. `fail_over` stalls the
/// replica for a moment before it kills the primary: what the primary
/// acknowledged meanwhile never reached the replica that takes over, so
/// only the orders that waited for a replica can be answered 200.
fn assert_failover_keeps_every_200(
    addrs: &[SocketAddr],
    sale: &str,
    stock: usize,
    fail_over: impl FnOnce() -> u16,
) {
    let stop = &AtomicBool::new(false);
    let (during, primary) = std::thread::scope(|s| {
        let buyers: Vec<_> = (0..2)
            .map(|t| s.spawn(move || crowd(addrs, sale, t, stop)))
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        let primary = fail_over();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Relaxed);
        let mut during = Vec::new();
        for b in buyers {
            during.extend(b.join().unwrap().0);
        }
        (during, primary)
    });
    assert!(!during.is_empty(), "nothing sold around the failover");
    let orders_key = format!("sk:{{{sale}}}:orders");
    for order in &during {
        let record = cli(primary, &["HGET", &orders_key, order]);
        assert!(
            record.contains("reserved"),
            "order {order} was answered 200 and is not on the new primary: {record:?}"
        );
    }
    let rest = buy_the_rest(addrs, sale, "late", Duration::from_secs(60));
    let all: HashSet<String> = during.iter().cloned().chain(rest).collect();
    assert_eq!(all.len(), stock, "sold == stock once settled");
    let sold = cli(primary, &["GET", &format!("sk:{{{sale}}}:sold")]);
    assert_eq!(
        sold.trim(),
        stock.to_string(),
        "no oversell, nothing stranded"
    );
}

#[test]
fn a_sentinel_failover_mid_sale_keeps_every_200_and_the_sale_resumes() {
    let mut set = SentinelSet::start();
    let url = set.url();
    let nodes: Vec<Node> = (1..=2).map(|id| cluster_node_at(&url, id, &[])).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    nodes[0]
        .client()
        .create_sale("sf", &json!({"stock": 300, "per_user_limit": 1}));
    wait_for_sale(&nodes.iter().collect::<Vec<_>>(), "sf");
    assert_failover_keeps_every_200(&addrs, "sf", 300, || {
        set.freeze_replica();
        std::thread::sleep(Duration::from_millis(500));
        let old = set.kill_primary();
        set.thaw_replica();
        let new = set.wait_failover(old);
        // The new primary has no replica until the old one is back.
        set.restart(old);
        new
    });
}

#[test]
fn a_cluster_master_killed_mid_sale_keeps_every_200_and_the_sale_resumes() {
    let mut cluster = RedisCluster::start();
    let seeds = cluster.seeds();
    let nodes: Vec<Node> = (1..=3).map(|id| cluster_node_at(&seeds, id, &[])).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let sale = sales_on_every_master(&cluster).remove(0);
    nodes[0]
        .client()
        .create_sale(&sale, &json!({"stock": 300, "per_user_limit": 1}));
    wait_for_sale(&nodes.iter().collect::<Vec<_>>(), &sale);
    let pool = format!("sk:{{{sale}}}:pool");
    assert_failover_keeps_every_200(&addrs, &sale, 300, || {
        let old = cluster.master_of(&pool);
        let replica = cluster.replica_of(old);
        cluster.freeze(replica);
        std::thread::sleep(Duration::from_millis(500));
        cluster.kill(old);
        cluster.thaw(replica);
        let new = cluster.wait_master_of(&pool, old);
        cluster.restart(old);
        new
    });
}

/// A node warns at start when no replica would keep its 200s through a
/// failover (a lone primary, `redis_min_replicas` 0 by default there), and
/// not when the primary has a replica (the default waits for it).
#[test]
fn a_node_warns_when_the_primary_has_no_replica() {
    let lone = seckill_testkit::RedisServer::start();
    let node = cluster_node_at(&lone.url(), 1, &[]);
    let warned = |log: &str| {
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("has no replica"))
    };
    eventually(Duration::from_secs(10), "the no-replica warning", || {
        warned(&node.log_tail()).then_some(())
    });
    let set = SentinelSet::start();
    let node = cluster_node_at(&set.url(), 1, &[]);
    assert_ok(&node.client().get("/healthz"));
    assert!(!warned(&node.log_tail()), "{}", node.log_tail());
}

/// A sale's slot moves to another master mid-sale (keys migrated a few at a
/// time: ASK and TRYAGAIN meanwhile): buyers get 200, 410 or 503 with
/// Retry-After, nothing else; no oversell, and the sale sells its whole
/// stock on its new master.
#[test]
fn a_slot_migration_mid_sale_answers_nothing_but_503_and_loses_nothing() {
    let cluster = RedisCluster::start();
    let seeds = cluster.seeds();
    let nodes: Vec<Node> = (1..=2).map(|id| cluster_node_at(&seeds, id, &[])).collect();
    let addrs: Vec<SocketAddr> = nodes.iter().map(Node::addr).collect();
    let sales = sales_on_every_master(&cluster);
    let (sale, to) = (&sales[0], cluster.masters()[1]);
    let pool = format!("sk:{{{sale}}}:pool");
    assert_ne!(cluster.master_of(&pool), to);
    nodes[0]
        .client()
        .create_sale(sale, &json!({"stock": 300, "per_user_limit": 1}));
    wait_for_sale(&nodes.iter().collect::<Vec<_>>(), sale);
    let stop = &AtomicBool::new(false);
    let targets = &addrs[..];
    let (during, codes) = std::thread::scope(|s| {
        let buyers: Vec<_> = (0..2)
            .map(|t| s.spawn(move || crowd(targets, sale, t, stop)))
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        cluster.migrate_slot(&pool, to, 2, Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::Relaxed);
        let mut during = Vec::new();
        let mut codes: HashMap<String, usize> = HashMap::new();
        for b in buyers {
            let (orders, by_code) = b.join().unwrap();
            during.extend(orders);
            for (k, v) in by_code {
                *codes.entry(k).or_default() += v;
            }
        }
        (during, codes)
    });
    assert_eq!(cluster.master_of(&pool), to, "the slot moved");
    let rest = buy_the_rest(&addrs, sale, "late", Duration::from_secs(60));
    let all: HashSet<String> = during.iter().cloned().chain(rest).collect();
    assert_eq!(all.len(), 300, "sold == stock once settled ({codes:?})");
    let sold = cli(to, &["GET", &format!("sk:{{{sale}}}:sold")]);
    assert_eq!(sold.trim(), "300");
}
