//! A cluster node's own journal (cluster mode without Kafka): it is the
//! node's share of the order log, not its state (Redis is), so it is sealed
//! into segments that are kept for the log's readers and never read again
//! by the node: a restart costs the live file, not the node's whole life.

use std::path::Path;
use std::time::Duration;

use seckill_testkit::RedisServer;
use serde_json::json;

use crate::cluster::buy_the_rest;
use crate::support::{assert_ok, Node};

/// A cluster node whose journal is sealed every 4 KiB (about 15 orders).
fn sealing_node(redis: &RedisServer) -> Node {
    let root = seckill_testkit::temp_dir("seckill-cluster-journal-");
    std::fs::write(
        root.path().join("seckill.toml"),
        "lease_ttl_s = 2\nredis_timeout_ms = 300\njournal_segment_bytes = 4096\n",
    )
    .expect("write config");
    let url = redis.url();
    Node::start_in(
        root,
        &[
            "--redis",
            url.as_str(),
            "--node-id",
            "1",
            "--config",
            "{root}/seckill.toml",
        ],
    )
}

/// The sealed segments of `dir`, oldest first.
fn sealed(dir: &Path) -> Vec<std::path::PathBuf> {
    queue::journal::sealed_segments(dir)
        .expect("read data dir")
        .into_iter()
        .map(|(_, path)| path)
        .collect()
}

#[test]
fn a_cluster_nodes_journal_is_sealed_and_a_restart_reads_only_the_live_file() {
    let redis = RedisServer::start();
    let mut node = sealing_node(&redis);
    node.client()
        .create_sale("cj", &json!({"stock": 300, "per_user_limit": 1}));
    let first = buy_the_rest(&[node.addr()], "cj", "a", Duration::from_secs(30));
    assert_eq!(first.len(), 300);
    let segments = sealed(&node.data_dir());
    assert!(
        segments.len() >= 5,
        "300 orders in 4 KiB segments: {} sealed",
        segments.len()
    );
    // Every acknowledged order is in the log (segments, then the live
    // file) exactly once.
    let log = node.journal();
    let counts = log.reserved_counts("cj");
    for id in &first {
        assert_eq!(counts.get(id), Some(&1), "order {id} logged exactly once");
    }
    // The sealed segments are the log's, not the node's: make the oldest
    // unreadable; a node that reads them at start would refuse it.
    std::fs::write(&segments[0], b"not a journal").expect("overwrite a segment");
    node.kill();
    node.restart();
    let mut c = node.client();
    c.create_sale("cj2", &json!({"stock": 5, "per_user_limit": 1}));
    let r = c.purchase("cj2", "after-restart");
    assert_ok(&r);
}
