//! Cluster mode on a real Redis Cluster (3 masters, 3 replicas): nodes
//! connect with the seed list, sales live on every master, and the
//! guarantees of one Redis hold on each.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use stock::redis::cluster_fixture::RedisCluster;

use crate::cluster::{buy_the_rest, cluster_node_at, load, wait_for_sale};
use crate::support::Node;

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
        let all: HashSet<String> = tally
            .orders
            .into_iter()
            .map(|(o, _)| o)
            .chain(rest)
            .collect();
        assert_eq!(all.len(), 400, "{sale}: sold == stock once settled");
        let key = format!("sk:{{{sale}}}:sold");
        assert_eq!(cluster_cli(&cluster, &["GET", &key]).trim(), "400");
        let key = format!("sk:{{{sale}}}:pool");
        assert_eq!(cluster_cli(&cluster, &["GET", &key]).trim(), "0");
    }
}
