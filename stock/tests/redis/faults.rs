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

    // NOSCRIPT, one SCRIPT LOAD, the retry: 6 + 6 EVALSHA.
    let stats = store.command_stats().await.unwrap();
    assert_eq!(stat(&stats, "script|load"), 1, "{stats:?}");
    assert_eq!(stat(&stats, "evalsha"), 12, "{stats:?}");

    // Single-script calls reload by themselves too.
    admin(&server.url(), &["SCRIPT", "FLUSH"]).await;
    assert_eq!(store.lease("s1", 1, 1, TTL).await.unwrap().granted, 1);
}

#[tokio::test]
async fn a_batch_of_fifty_is_one_evalsha_each_in_one_pipeline() {
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
    // only commands sent by the client are the 50 EVALSHA (and the
    // RESETSTAT before them; the INFO itself is counted after it answers).
    let stats = store.command_stats().await.unwrap();
    assert_eq!(stat(&stats, "evalsha"), 50, "{stats:?}");
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
