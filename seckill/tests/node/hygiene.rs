//! Cluster hygiene, on a real `redis-server` (and a real broker where the
//! order log is Kafka): node ids are unique while their nodes live; every
//! consumer of the order log stops at an event it cannot read instead of
//! taking it as absent; the settler's grace stays above every live node's
//! delivery timeout; a node and the settler warn at start when Redis does
//! not persist or the order topic is not replicated.

use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use stock::redis::fixture::RedisServer;

use crate::cluster::{cluster_node, redis_cli, wait_for_sale};
use crate::support::{assert_error, assert_ok, TOKEN};

// ----- hole 9: one live node per node id -----------------------------------

#[test]
fn a_second_live_node_with_the_same_id_refuses_to_start() {
    let redis = RedisServer::start();
    let mut first = cluster_node(&redis, 7, &[]);
    first
        .client()
        .create_sale("dup", &json!({"stock": 10, "per_user_limit": 1}));

    let (status, log) = start_refused(&redis, 7);
    assert!(!status.success(), "exited {status}; log:\n{log}");
    assert!(
        log.contains("node id 7") && log.contains("in use"),
        "the refusal must name the id; log:\n{log}"
    );
    // The first node is unharmed: it still sells.
    assert_ok(&first.client().purchase("dup", "u1"));

    // SIGKILL: no clean release. Once the claim's TTL (the lease TTL, 2 s
    // here) lapsed, the id is free again.
    first.kill();
    thread::sleep(Duration::from_millis(2_500));
    let second = cluster_node(&redis, 7, &[]);
    wait_for_sale(&[&second], "dup");
    assert_ok(&second.client().purchase("dup", "u2"));
}

#[test]
fn a_node_that_lost_its_id_stops_selling_and_answers_503() {
    let redis = RedisServer::start();
    let node = cluster_node(&redis, 8, &[]);
    let mut c = node.client();
    c.create_sale("lost", &json!({"stock": 100, "per_user_limit": 1}));
    assert_ok(&c.purchase("lost", "before"));

    // Another instance took id 8 (this one was cut off from Redis past its
    // TTL, say): its claim now holds another token.
    let far = now_ms() + 600_000;
    let other = json!({
        "token": "another-instance",
        "kafka_timeout_ms": 0,
        "started_at": now_ms(),
        "expires_at": far,
    })
    .to_string();
    redis_cli(&redis, &["HSET", "sk:nodes", "8", &other]);

    let mut n = 0;
    crate::support::eventually(
        Duration::from_secs(10),
        "the node stops selling once its id is taken",
        || {
            n += 1;
            (c.purchase("lost", &format!("after-{n}")).status == 503).then_some(())
        },
    );
    assert_error(&c.purchase("lost", "later"), 503, "unavailable");
    let log = node.log_tail();
    assert!(
        log.contains("ERROR") && log.contains("node id 8"),
        "a lost id must be logged loudly; log:\n{log}"
    );
    // The other instance's claim stands: a lost node does not take it back.
    let claim = redis_cli(&redis, &["HGET", "sk:nodes", "8"]);
    assert!(claim.contains("another-instance"), "{claim}");
}

/// Runs a cluster node with `id` that is expected to refuse to start:
/// returns its exit status and its stderr.
fn start_refused(redis: &RedisServer, id: u32) -> (ExitStatus, String) {
    let dir = tempfile::Builder::new()
        .prefix("seckill-refused-")
        .tempdir()
        .expect("temp dir");
    let data = dir.path().join("data");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_seckill"));
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(["--admin-token", TOKEN, "--cores", "1", "--redis"])
        .arg(redis.url())
        .args(["--node-id", &id.to_string()])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SECKILL_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd.spawn().expect("start seckill");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for seckill") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second node with id {id} started (still running after 30 s)");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut log);
    }
    (status, log)
}

// ----- helpers ------------------------------------------------------------------

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}
