//! The cluster authority's key lookups (`RedisAuthority::recall_key` and
//! its memory, `lookup_key`), against a real `redis-server`: a key first
//! used on another node is found, the order it replays is never released
//! afterwards, and the lookups waiting for Redis are bounded.

use seckill_testkit::RedisServer;
use stock::cluster::{ClusterOptions, RedisAuthority};
use stock::redis::{Abandoned, Moved, ReserveOutcome};
use stock::{Attempt, KeyLookup, OrderStatus, StockAuthority, StockError};

use crate::{call, now_s, spec, TIMEOUT};

/// A current-thread runtime for the test's own awaits (the authority runs
/// its backend on its own thread and runtime).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime")
}

fn attempt<'a>(user_id: &'a str, key: &'a str) -> Attempt<'a> {
    Attempt {
        user_id,
        quantity: 1,
        idempotency_key: Some(key),
        now: now_s(),
        core: 0,
    }
}

#[test]
fn a_key_recalled_from_redis_is_replayed_from_memory_once_answered_and_never_released() {
    let server = RedisServer::start();
    let rt = runtime();
    let store = rt
        .block_on(stock::redis::RedisStore::connect(&server.url(), TIMEOUT))
        .unwrap();
    // Node 1 (the store) records o1 under k1, then loses its answer.
    rt.block_on(store.create_sale(&spec("s1", 20, 1))).unwrap();
    rt.block_on(store.lease("s1", 1, 5, std::time::Duration::from_secs(30)))
        .unwrap();
    let mut first = call("s1", 1, "o1", "alice");
    first.idempotency_key = Some("k1".into());
    first.fingerprint = attempt("alice", "k1").fingerprint("s1");
    let answers = rt.block_on(store.reserve_batch(std::slice::from_ref(&first)));
    assert_eq!(answers[0].as_ref().unwrap(), &ReserveOutcome::Reserved);

    // Node 2 does not know k1 in memory; Redis does.
    let node2 = RedisAuthority::connect(&server.url(), ClusterOptions::new(2, 1), 1).unwrap();
    let sale = node2.sale("s1").expect("node 2 learned the sale");
    let retry = attempt("alice", "k1");
    assert_eq!(
        rt.block_on(node2.lookup_key(&sale, &retry)).unwrap(),
        KeyLookup::Unused
    );
    let found = rt.block_on(node2.recall_key(&sale, &retry)).unwrap();
    assert!(
        matches!(&found, KeyLookup::Replay(o) if o.order_id == "o1"),
        "{found:?}"
    );
    // Another body under the same key is refused.
    let err = rt
        .block_on(node2.recall_key(&sale, &attempt("mallory", "k1")))
        .unwrap_err();
    assert!(matches!(err, StockError::KeyReused), "{err:?}");
    // An unknown key is unused.
    assert_eq!(
        rt.block_on(node2.recall_key(&sale, &attempt("bob", "k2")))
            .unwrap(),
        KeyLookup::Unused
    );

    // Node 1's abandon comes late: the order a replay answered is kept.
    let abandoned = rt
        .block_on(store.abandon("s1", "o1", 1, 1, first.expires_at))
        .unwrap();
    assert!(
        matches!(abandoned, Abandoned::Released(Moved::Kept(_))),
        "{abandoned:?}"
    );
    let order = rt.block_on(store.order("s1", "o1")).unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Reserved);
    // Not remembered until the node says it logged and answered it: a
    // replay whose log append failed must be logged by its next retry.
    assert_eq!(
        rt.block_on(node2.lookup_key(&sale, &retry)).unwrap(),
        KeyLookup::Unused
    );
    let KeyLookup::Replay(found) = found else {
        unreachable!()
    };
    node2.replay_answered(&sale, &retry, &found);
    // Node 2 answers further retries from memory, the same order.
    let again = rt.block_on(node2.lookup_key(&sale, &retry)).unwrap();
    assert!(
        matches!(&again, KeyLookup::Replay(o) if o.order_id == "o1"),
        "{again:?}"
    );
    node2.close();
}

#[test]
fn key_lookups_waiting_for_redis_are_bounded() {
    let server = RedisServer::start();
    let rt = runtime();
    let node = RedisAuthority::connect(&server.url(), ClusterOptions::new(1, 1), 1).unwrap();
    let sale = rt.block_on(node.create_sale(spec("s1", 20, 1))).unwrap();
    let keys: Vec<String> = (0..4096).map(|i| format!("k{i}")).collect();
    // Lookups are counted from the call until they are answered or
    // dropped: hold 4096 of them.
    let attempts: Vec<_> = keys.iter().map(|k| attempt("u", k)).collect();
    let held: Vec<_> = attempts.iter().map(|a| node.recall_key(&sale, a)).collect();
    let refused = rt
        .block_on(node.recall_key(&sale, &attempt("u", "one-more")))
        .unwrap_err();
    assert!(matches!(refused, StockError::Unavailable(_)), "{refused:?}");
    drop(held);
    assert_eq!(
        rt.block_on(node.recall_key(&sale, &attempt("u", "one-more")))
            .unwrap(),
        KeyLookup::Unused
    );
    node.close();
}
