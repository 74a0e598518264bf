use std::time::{Duration, Instant};

use stock::redis::{RedisStore, ReserveCall, ReserveOutcome};
use stock::StockError;

use crate::{call, counts, setup, spec, TIMEOUT};

const TTL: Duration = Duration::from_secs(30);

/// A plain connection for what the store does not do (SCRIPT FLUSH, CONFIG
/// RESETSTAT).
async fn admin(url: &str, command: &[&str]) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    let _: redis::Value = cmd.query_async(&mut conn).await.unwrap();
}

fn calls(sale_id: &str, prefix: &str, n: usize) -> Vec<ReserveCall> {
    (0..n)
        .map(|i| {
            call(
                sale_id,
                1,
                &format!("{prefix}{i}"),
                &format!("{prefix}u{i}"),
            )
        })
        .collect()
}

/// Loads the reserve script (one reservation of a sale of its own), so that
/// the command counts after it are exact.
async fn warm(store: &RedisStore) {
    store.create_sale(&spec("warm", 1, 1)).await.unwrap();
    store.lease("warm", 1, 1, TTL).await.unwrap();
    assert!(all_reserved(
        &store.reserve_batch(&calls("warm", "w", 1)).await
    ));
}

fn stat(stats: &[(String, u64)], command: &str) -> u64 {
    stats
        .iter()
        .find(|(name, _)| name == command)
        .map_or(0, |(_, calls)| *calls)
}

fn all_reserved(answers: &[Result<ReserveOutcome, StockError>]) -> bool {
    answers
        .iter()
        .all(|a| matches!(a, Ok(ReserveOutcome::Reserved)))
}

#[tokio::test]
async fn script_flush_between_two_batches_reloads_and_loses_nothing() {
    let (server, store) = setup().await;
    store.create_sale(&spec("s1", 100, 1)).await.unwrap();
    store.lease("s1", 1, 20, TTL).await.unwrap();
    assert!(all_reserved(
        &store.reserve_batch(&calls("s1", "a", 5)).await
    ));

    admin(&server.url(), &["SCRIPT", "FLUSH"]).await;
    admin(&server.url(), &["CONFIG", "RESETSTAT"]).await;
    // Also in the same batch: a retry of an order of the first batch.
    let mut second = calls("s1", "b", 5);
    second.push(call("s1", 1, "a0", "au0"));
    let answers = store.reserve_batch(&second).await;
    assert!(all_reserved(&answers), "{answers:?}");
    assert_eq!(counts(&store, "s1").await, (80, 10, 10));

    // One call for the sale's six: NOSCRIPT, one SCRIPT LOAD, the retry.
    let stats = store.command_stats().await.unwrap();
    assert_eq!(stat(&stats, "script|load"), 1, "{stats:?}");
    assert_eq!(stat(&stats, "evalsha"), 2, "{stats:?}");

    // Single-script calls reload by themselves too.
    admin(&server.url(), &["SCRIPT", "FLUSH"]).await;
    assert_eq!(store.lease("s1", 1, 1, TTL).await.unwrap().granted, 1);
}

#[tokio::test]
async fn a_batch_of_fifty_is_one_evalsha_in_one_round_trip() {
    let (server, store) = setup().await;
    store.create_sale(&spec("s1", 1000, 1)).await.unwrap();
    store.lease("s1", 1, 250, TTL).await.unwrap();
    // Warm: the script is loaded, so the counts below are exact.
    assert!(all_reserved(
        &store.reserve_batch(&calls("s1", "w", 1)).await
    ));

    admin(&server.url(), &["CONFIG", "RESETSTAT"]).await;
    let batch = calls("s1", "a", 50);
    let started = Instant::now();
    let answers = store.reserve_batch(&batch).await;
    let batched = started.elapsed();
    assert!(all_reserved(&answers), "{answers:?}");

    // INFO commandstats also counts the commands the scripts call; the
    // only command sent by the client is one EVALSHA for all 50 (and the
    // RESETSTAT before it; the INFO itself is counted after it answers).
    // The sale's spec, the clock and the lease are read once, and sold
    // and the lease written once, for the whole batch; so are the orders
    // (HMGET of the ids, one EXISTS of the tombstones, HSET of the
    // records) and the users' holdings (HMGET, HSET): no command per order.
    let stats = store.command_stats().await.unwrap();
    assert_eq!(stat(&stats, "evalsha"), 1, "{stats:?}");
    assert_eq!(stat(&stats, "time"), 1, "{stats:?}");
    assert_eq!(stat(&stats, "hmget"), 3, "{stats:?}");
    assert_eq!(stat(&stats, "exists"), 1, "{stats:?}");
    assert_eq!(stat(&stats, "incrby"), 1, "{stats:?}");
    assert_eq!(stat(&stats, "hset"), 2, "{stats:?}");
    assert!(stat(&stats, "zadd") <= 2, "{stats:?}");
    assert_eq!(stat(&stats, "hexists"), 0, "{stats:?}");
    let from_scripts = [
        "time", "hexists", "exists", "hmget", "hget", "hset", "hincrby", "incrby", "zadd",
    ];
    for (command, _) in &stats {
        assert!(
            command == "evalsha"
                || command == "config|resetstat"
                || from_scripts.contains(&command.as_str()),
            "{command} reached Redis: {stats:?}"
        );
    }

    // The same 50 one call at a time: 50 round trips take longer than one.
    let started = Instant::now();
    for c in calls("s1", "b", 50) {
        let answer = store.reserve_batch(&[c]).await;
        assert!(all_reserved(&answer));
    }
    let sequential = started.elapsed();
    assert!(
        batched < sequential,
        "batch {batched:?} vs 50 round trips {sequential:?}"
    );
    assert_eq!(counts(&store, "s1").await, (750, 149, 101));
}

#[tokio::test]
async fn redis_down_fails_fast_and_the_store_recovers_when_it_is_back() {
    let (mut server, store) = setup().await;
    store.create_sale(&spec("s1", 10, 1)).await.unwrap();
    store.lease("s1", 1, 5, TTL).await.unwrap();

    server.stop();
    let bound = TIMEOUT * 2 + Duration::from_millis(200);
    let started = Instant::now();
    let answers = store.reserve_batch(&calls("s1", "a", 3)).await;
    assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
    for answer in &answers {
        assert!(
            matches!(
                answer,
                Err(StockError::Unavailable(_) | StockError::Undetermined(_))
            ),
            "{answer:?}"
        );
    }
    for _ in 0..3 {
        let started = Instant::now();
        let err = store.status("s1").await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(err.code(), "unavailable");
        assert!(started.elapsed() < bound, "took {:?}", started.elapsed());
    }
    let err = RedisStore::connect(&server.url(), TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, StockError::Unavailable(_)), "{err:?}");

    // Back (empty: no persistence): the same store reconnects.
    server.start_again();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.create_sale(&spec("s1", 10, 1)).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert!(e.is_retryable(), "{e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the store did not reconnect: {e:?}"),
        }
    }
    store.lease("s1", 1, 5, TTL).await.unwrap();
    // The scripts are gone with the old server: the batch reloads them.
    assert!(all_reserved(
        &store.reserve_batch(&calls("s1", "b", 3)).await
    ));
    assert_eq!(counts(&store, "s1").await, (7, 0, 3));
}

#[tokio::test]
async fn a_call_without_an_answer_is_undetermined_and_reconciled_by_order_id() {
    let (server, store) = setup().await;
    store.create_sale(&spec("s1", 20, 1)).await.unwrap();
    store.lease("s1", 1, 5, TTL).await.unwrap();

    // Redis holds every command for 1.5 s: the reservation is sent, not
    // answered within the timeout, and applied later.
    admin(&server.url(), &["CLIENT", "PAUSE", "1500", "ALL"]).await;
    let started = Instant::now();
    let answers = store.reserve_batch(&calls("s1", "a", 1)).await;
    assert!(
        started.elapsed() < TIMEOUT * 2,
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(answers[0], Err(StockError::Undetermined(_))),
        "{answers:?}"
    );

    // Reconcile: the same order id again, once Redis answers: charged once.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.reserve_batch(&calls("s1", "a", 1)).await.remove(0) {
            Ok(outcome) => {
                assert_eq!(outcome, ReserveOutcome::Reserved);
                break;
            }
            Err(e) if Instant::now() < deadline => assert!(e.is_retryable(), "{e:?}"),
            Err(e) => panic!("Redis did not answer again: {e:?}"),
        }
    }
    assert_eq!(counts(&store, "s1").await, (15, 4, 1));
}

#[tokio::test]
async fn a_batch_decides_each_reservation_as_if_alone_in_order() {
    let (server, store) = setup().await;
    store.create_sale(&spec("s1", 100, 1)).await.unwrap();
    store.create_sale(&spec("s2", 100, 1)).await.unwrap();
    store.lease("s1", 1, 3, TTL).await.unwrap();
    assert_eq!(store.lease("s2", 1, 10, TTL).await.unwrap().granted, 10);
    warm(&store).await;
    admin(&server.url(), &["CONFIG", "RESETSTAT"]).await;
    let keyed = |order: &str, user: &str, key: &str, fp: u64| ReserveCall {
        idempotency_key: Some(key.into()),
        fingerprint: fp,
        ..call("s1", 1, order, user)
    };
    let batch = vec![
        call("s1", 1, "o1", "alice"),
        // alice again: the limit counts o1, written just before.
        call("s1", 1, "o2", "alice"),
        // o1 again: already recorded, not charged twice.
        call("s1", 1, "o1", "alice"),
        keyed("o3", "bob", "k1", 7),
        // The same key and body: a replay of o3, from this very batch.
        keyed("o4", "bob", "k1", 7),
        // The same key, another body.
        keyed("o5", "bob", "k1", 8),
        call("s2", 1, "p1", "alice"),
        call("s1", 1, "o6", "carol"),
        // The lease of 3 is spent (o1, o3, o6).
        call("s1", 1, "o7", "dave"),
    ];
    let answers = store.reserve_batch(&batch).await;
    let got: Vec<String> = answers
        .iter()
        .map(|a| match a {
            Ok(ReserveOutcome::Replay(order)) => format!("replay {}", order.order_id),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        [
            "Ok(Reserved)",
            "Ok(LimitExceeded)",
            "Ok(Reserved)",
            "Ok(Reserved)",
            "replay o3",
            "Ok(KeyReused)",
            "Ok(Reserved)",
            "Ok(Reserved)",
            "Ok(NoLease)",
        ]
    );
    // Two sales: two script calls in the one round trip.
    let stats = store.command_stats().await.unwrap();
    assert_eq!(stat(&stats, "evalsha"), 2, "{stats:?}");
    // s1: pool 97, lease 0 left, 3 sold; s2: one of its 10 leased sold.
    assert_eq!(counts(&store, "s1").await, (97, 0, 3));
    assert_eq!(counts(&store, "s2").await, (90, 9, 1));
}

#[tokio::test]
async fn a_batch_larger_than_one_call_holds_is_split_and_all_answered() {
    let (server, store) = setup().await;
    let n = stock::redis::RESERVE_CALL_MAX * 2 + 10;
    store.create_sale(&spec("s1", n as u64, 1)).await.unwrap();
    let mut leased = 0;
    while leased < n as u64 {
        let grant = store.lease("s1", 1, n as u64, TTL).await.unwrap().granted;
        assert!(grant > 0);
        leased += grant;
    }
    warm(&store).await;
    admin(&server.url(), &["CONFIG", "RESETSTAT"]).await;
    let answers = store.reserve_batch(&calls("s1", "a", n)).await;
    assert_eq!(answers.len(), n);
    assert!(all_reserved(&answers), "{answers:?}");
    let stats = store.command_stats().await.unwrap();
    assert_eq!(stat(&stats, "evalsha"), 3, "{stats:?}");
    assert_eq!(counts(&store, "s1").await, (0, 0, n as u64));
}
