//! Redis Cluster and Sentinel: the fixtures themselves, then the store on
//! them.

use stock::redis::cluster_fixture::{RedisCluster, SentinelSet};

#[test]
fn the_cluster_fixture_spreads_the_slots_over_three_masters_with_replicas() {
    let mut cluster = RedisCluster::start();
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3, "{masters:?}");
    // Sales whose hash tags land on each master.
    let homes: std::collections::BTreeSet<u16> = ["a", "b", "c", "d", "e", "f"]
        .iter()
        .map(|s| cluster.master_of(&format!("sk:{{{s}}}:pool")))
        .collect();
    assert_eq!(homes.len(), 3, "sales spread over every master: {homes:?}");
    let key = "sk:{a}:pool";
    let old = cluster.master_of(key);
    cluster.kill(old);
    let new = cluster.wait_master_of(key, old);
    assert!(!masters.contains(&new), "a replica took over: {new}");
}

#[test]
fn the_sentinel_fixture_fails_over_to_the_replica() {
    let mut set = SentinelSet::start();
    assert!(set.url().starts_with("redis+sentinel://127.0.0.1:"));
    let old = set.kill_primary();
    let new = set.wait_failover(old);
    assert_ne!(new, old);
}
