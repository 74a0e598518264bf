use std::time::Duration;

use seckill_testkit::RedisServer;
use stock::redis::{ClaimOutcome, NodeClaim, Persistence, RedisStore, NODES_KEY};

use crate::{setup, TIMEOUT};

fn claim(node: u32, ttl_ms: u64, kafka_timeout_ms: u64) -> NodeClaim {
    NodeClaim::new(node, Duration::from_millis(ttl_ms), kafka_timeout_ms).unwrap()
}

#[tokio::test]
async fn one_live_process_per_node_id() {
    let (_server, store) = setup().await;
    let first = claim(7, 10_000, 2_000);
    let second = claim(7, 10_000, 2_000);
    assert_ne!(first.token, second.token);
    assert_eq!(
        store.claim_node(&first).await.unwrap(),
        ClaimOutcome::Claimed
    );
    assert!(matches!(
        store.claim_node(&second).await.unwrap(),
        ClaimOutcome::InUse {
            expires_at_ms: Some(_)
        }
    ));
    // The holder refreshes; another id is free.
    assert_eq!(
        store.claim_node(&first).await.unwrap(),
        ClaimOutcome::Refreshed
    );
    assert_eq!(
        store.claim_node(&claim(8, 10_000, 0)).await.unwrap(),
        ClaimOutcome::Claimed
    );
    // Only the holder releases it; then the other process may claim it.
    assert!(!store.release_node(&second).await.unwrap());
    assert!(store.release_node(&first).await.unwrap());
    assert_eq!(
        store.claim_node(&second).await.unwrap(),
        ClaimOutcome::Claimed
    );
    // The first process, back (it had been cut off), finds the id taken.
    assert!(matches!(
        store.claim_node(&first).await.unwrap(),
        ClaimOutcome::InUse { .. }
    ));
}

#[tokio::test]
async fn a_claim_lapses_unless_refreshed() {
    let (_server, store) = setup().await;
    let dead = claim(3, 200, 0);
    store.claim_node(&dead).await.unwrap();
    let next = claim(3, 200, 0);
    assert!(matches!(
        store.claim_node(&next).await.unwrap(),
        ClaimOutcome::InUse { .. }
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        store.claim_node(&next).await.unwrap(),
        ClaimOutcome::Claimed
    );
    // The dead process, had it lived on, has lost the id.
    assert!(matches!(
        store.claim_node(&dead).await.unwrap(),
        ClaimOutcome::InUse { .. }
    ));
}

#[tokio::test]
async fn live_nodes_publish_their_delivery_timeouts_and_lapsed_ones_go() {
    let (_server, store) = setup().await;
    store.claim_node(&claim(1, 10_000, 2_000)).await.unwrap();
    store.claim_node(&claim(2, 10_000, 6_000)).await.unwrap();
    store.claim_node(&claim(3, 100, 9_000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut live: Vec<(u32, Option<u64>)> = store
        .live_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.node, n.kafka_timeout_ms))
        .collect();
    live.sort();
    assert_eq!(live, vec![(1, Some(2_000)), (2, Some(6_000))]);
    // The lapsed claim was removed.
    let mut conn = redis_conn(&_server).await;
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(NODES_KEY)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(fields.len(), 2, "{fields:?}");
    // A claim nobody can read is live, with an unknown timeout, and holds
    // its id.
    let _: () = redis::cmd("HSET")
        .arg(NODES_KEY)
        .arg(4)
        .arg("not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(store
        .live_nodes()
        .await
        .unwrap()
        .iter()
        .any(|n| n.node == 4 && n.kafka_timeout_ms.is_none()));
    assert_eq!(
        store.claim_node(&claim(4, 10_000, 0)).await.unwrap(),
        ClaimOutcome::InUse {
            expires_at_ms: None
        }
    );
}

#[tokio::test]
async fn persistence_is_read_from_the_config() {
    let (_server, store) = setup().await;
    assert_eq!(store.persistence().await, Persistence::None);
    let durable = RedisServer::start_persistent();
    let store = RedisStore::connect(&durable.url(), TIMEOUT).await.unwrap();
    assert_eq!(store.persistence().await, Persistence::AppendOnly);
    let mut conn = redis_conn(&durable).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendonly")
        .arg("no")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("save")
        .arg("900 1")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        store.persistence().await,
        Persistence::Snapshots("900 1".into())
    );
    // CONFIG refused (a managed Redis): unknown, not an error.
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER", "limited", "on", ">pw", "~*", "&*", "+@all", "-config",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let url = format!("redis://limited:pw@127.0.0.1:{}", durable.port());
    let limited = RedisStore::connect(&url, TIMEOUT).await.unwrap();
    assert!(
        matches!(limited.persistence().await, Persistence::Unknown(_)),
        "{:?}",
        limited.persistence().await
    );
}

async fn redis_conn(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}
