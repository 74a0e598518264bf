//! Redis Cluster and Sentinel: the fixtures themselves, then the store on
//! them.

use seckill_testkit::redis_cluster::{RedisCluster, SentinelSet};

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

/// Sale ids whose keys live on three different masters, in the masters'
/// order.
pub fn sales_on_every_master(cluster: &RedisCluster) -> Vec<String> {
    let masters = cluster.masters();
    masters
        .iter()
        .map(|&m| {
            (0..)
                .map(|i| format!("s{i}"))
                .find(|s| cluster.master_of(&format!("sk:{{{s}}}:pool")) == m)
                .expect("some sale id lands on each master")
        })
        .collect()
}

mod store {
    use std::time::Duration;

    use seckill_testkit::redis_cluster::RedisCluster;
    use stock::redis::{
        Abandoned, ClaimOutcome, KeyRecall, Moved, NodeClaim, Persistence, Recalled, RedisStore,
        ReserveOutcome,
    };
    use stock::{Attempt, OrderStatus};

    use super::sales_on_every_master;
    use crate::{call, counts, now_s, spec, TIMEOUT};

    fn fingerprint(sale: &str, user: &str, key: &str) -> u64 {
        Attempt {
            user_id: user,
            quantity: 1,
            idempotency_key: Some(key),
            now: now_s(),
            core: 0,
        }
        .fingerprint(sale)
    }

    /// Every call of the store on a 3-master cluster, with sales on every
    /// master and the batched calls (reserve, recall, heartbeat) mixing
    /// them in one batch.
    #[tokio::test(flavor = "current_thread")]
    async fn every_call_works_on_a_cluster_with_batches_spanning_masters() {
        let cluster = RedisCluster::start();
        let store = RedisStore::connect(&cluster.seeds(), TIMEOUT)
            .await
            .expect("connect to the cluster by its seed list");
        let sales = sales_on_every_master(&cluster);
        for sale in &sales {
            store.create_sale(&spec(sale, 10, 1)).await.unwrap();
            let grant = store
                .lease(sale, 1, 4, Duration::from_secs(30))
                .await
                .unwrap();
            assert!(grant.granted > 0);
        }
        let mut ids = store.sale_ids().await.unwrap();
        ids.sort();
        let mut want = sales.clone();
        want.sort();
        assert_eq!(ids, want);

        // One batch, three sales, three masters.
        let calls: Vec<_> = sales
            .iter()
            .flat_map(|sale| {
                (0..2).map(move |i| {
                    let user = format!("u{i}");
                    let key = format!("k{i}");
                    let mut c = call(sale, 1, &format!("o-{sale}-{i}"), &user);
                    c.fingerprint = fingerprint(sale, &user, &key);
                    c.idempotency_key = Some(key);
                    c
                })
            })
            .collect();
        let answers = store.reserve_batch(&calls).await;
        for (c, a) in calls.iter().zip(&answers) {
            assert_eq!(a.as_ref().unwrap(), &ReserveOutcome::Reserved, "{c:?}");
        }
        let recalls: Vec<_> = sales
            .iter()
            .map(|sale| KeyRecall {
                sale_id: sale.clone(),
                key: "k0".into(),
                fingerprint: fingerprint(sale, "u0", "k0"),
            })
            .collect();
        for (sale, found) in sales.iter().zip(store.recall_keys(&recalls).await) {
            assert!(
                matches!(found.as_ref().unwrap(), Recalled::Replay(o) if o.order_id == format!("o-{sale}-0")),
                "{found:?}"
            );
        }
        store
            .heartbeat(&sales, 1, Duration::from_secs(30))
            .await
            .unwrap();
        for sale in &sales {
            let (_, _, sold) = counts(&store, sale).await;
            assert_eq!(sold, 2);
            let tail = store.tail(sale, 2).await.unwrap();
            assert_eq!(tail.sold, 2);
            let ask = store
                .lease_or_want(sale, 2, 1, Duration::from_secs(30), Duration::ZERO)
                .await
                .unwrap();
            assert_eq!(ask.sold, 2);
            assert_eq!(
                store.give_back(sale, 2, ask.granted).await.unwrap(),
                ask.granted
            );
            let paid = store
                .transition(sale, &format!("o-{sale}-0"), OrderStatus::Paid, now_s())
                .await
                .unwrap();
            assert!(matches!(paid, Moved::Changed(_)), "{paid:?}");
            // o1 was never answered by a replay: released.
            let released = store.release(sale, &format!("o-{sale}-1")).await.unwrap();
            assert!(matches!(released, Moved::Changed(_)), "{released:?}");
            let gone = store
                .abandon(sale, "never", 1, 1, now_s() + 900)
                .await
                .unwrap();
            assert!(matches!(gone, Abandoned::NeverRecorded { .. }), "{gone:?}");
            assert_eq!(store.expire_keys(sale, 10).await.unwrap(), 0);
            assert!(store.due(sale, now_s(), 10).await.unwrap().is_empty());
            assert!(store
                .order(sale, &format!("o-{sale}-0"))
                .await
                .unwrap()
                .is_some());
            assert!(store.unlogged(sale, u64::MAX, 10).await.unwrap().is_empty());
            store.return_lease(sale, 1).await.unwrap();
            store.reclaim(sale).await.unwrap();
            let (pool, leased, sold) = counts(&store, sale).await;
            assert_eq!((pool, leased, sold), (9, 0, 1));
        }
        let claim = NodeClaim::new(1, Duration::from_secs(5), 0).unwrap();
        assert_eq!(
            store.claim_node(&claim).await.unwrap(),
            ClaimOutcome::Claimed
        );
        assert_eq!(store.live_nodes().await.unwrap().len(), 1);
        assert!(store.release_node(&claim).await.unwrap());
        let records = store
            .publish_stats(1, "{}", Duration::from_secs(3))
            .await
            .unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(store.persistence().await, Persistence::AppendOnly);
        assert!(store.time_ms().await.unwrap() > 0);
        // WAIT goes to each sale's master, after its call.
        assert_eq!(store.replicas().await.unwrap(), 1);
        let store = store.with_min_replicas(1);
        let calls: Vec<_> = sales
            .iter()
            .map(|sale| call(sale, 3, &format!("w-{sale}"), "waiter"))
            .collect();
        for sale in &sales {
            store
                .lease(sale, 3, 1, Duration::from_secs(30))
                .await
                .unwrap();
        }
        for answer in store.reserve_batch(&calls).await {
            assert_eq!(answer.unwrap(), ReserveOutcome::Reserved);
        }
    }

    /// One URL of a cluster-enabled server is enough: the store finds the
    /// others from it.
    #[tokio::test(flavor = "current_thread")]
    async fn one_url_of_a_cluster_node_finds_the_whole_cluster() {
        let cluster = RedisCluster::start();
        let one = cluster.url_of(cluster.masters()[0]);
        let store = RedisStore::connect(&one, TIMEOUT).await.unwrap();
        for sale in sales_on_every_master(&cluster) {
            store.create_sale(&spec(&sale, 5, 1)).await.unwrap();
            let (pool, _, _) = counts(&store, &sale).await;
            assert_eq!(pool, 5);
        }
    }
}

mod sentinel {
    use std::time::{Duration, Instant};

    use seckill_testkit::redis_cluster::SentinelSet;
    use stock::redis::{RedisStore, ReserveOutcome};

    use crate::{call, counts, spec, TIMEOUT};

    /// `--redis redis+sentinel://.../seckill` finds the primary, and after
    /// the primary is killed and a sentinel failover promotes the replica,
    /// the same store works on the new primary, with what was replicated.
    #[tokio::test(flavor = "current_thread")]
    async fn the_store_finds_the_primary_and_follows_a_failover() {
        let mut set = SentinelSet::start();
        let store = RedisStore::connect(&set.url(), TIMEOUT)
            .await
            .expect("connect through the sentinels");
        store.create_sale(&spec("s", 10, 1)).await.unwrap();
        store
            .lease("s", 1, 5, Duration::from_secs(60))
            .await
            .unwrap();
        let first = store.reserve_batch(&[call("s", 1, "o1", "u1")]).await;
        assert_eq!(first[0].as_ref().unwrap(), &ReserveOutcome::Reserved);
        // Let the replica catch up (no WAIT in this test).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let old = set.kill_primary();
        let new = set.wait_failover(old);
        assert_ne!(new, old);
        // Calls fail while the store learns of the failover, then work.
        let deadline = Instant::now() + Duration::from_secs(20);
        let answer = loop {
            let answer = store.reserve_batch(&[call("s", 1, "o2", "u2")]).await;
            match &answer[0] {
                Ok(outcome) => break outcome.clone(),
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "the store did not follow the failover: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(answer, ReserveOutcome::Reserved);
        let (_, _, sold) = counts(&store, "s").await;
        assert_eq!(sold, 2, "o1 (replicated) and o2 on the new primary");
    }
    /// With `WAIT 1`, a batch is `Reserved` only once the replica has it:
    /// a stalled replica turns the answers into `Undetermined`.
    #[tokio::test(flavor = "current_thread")]
    async fn a_reservation_counts_only_once_the_replica_has_it() {
        let set = SentinelSet::start();
        let store = RedisStore::connect(&set.url(), TIMEOUT).await.unwrap();
        assert_eq!(store.replicas().await.unwrap(), 1);
        assert_eq!(store.min_replicas_for(None).await, 1);
        let store = store.with_min_replicas(1);
        store.create_sale(&spec("w", 40, 1)).await.unwrap();
        store
            .lease("w", 1, 5, Duration::from_secs(60))
            .await
            .unwrap();
        let first = store.reserve_batch(&[call("w", 1, "o1", "u1")]).await;
        assert_eq!(first[0].as_ref().unwrap(), &ReserveOutcome::Reserved);
        set.freeze_replica();
        let stalled = store
            .reserve_batch(&[call("w", 1, "o2", "u2"), call("w", 1, "o3", "u3")])
            .await;
        for answer in &stalled {
            assert!(
                matches!(answer, Err(stock::StockError::Undetermined(_))),
                "{answer:?}"
            );
        }
        set.thaw_replica();
        let again = store.reserve_batch(&[call("w", 1, "o4", "u4")]).await;
        assert_eq!(again[0].as_ref().unwrap(), &ReserveOutcome::Reserved);
    }

    /// A replay is an answer too: the order it names may be the one whose
    /// WAIT just timed out (on the primary only). While the replica
    /// acknowledges nothing, neither a replay in a reserve batch nor a
    /// key lookup may hand it out.
    #[tokio::test(flavor = "current_thread")]
    async fn a_replay_of_an_unreplicated_order_is_not_answered() {
        let set = SentinelSet::start();
        let store = RedisStore::connect(&set.url(), TIMEOUT)
            .await
            .unwrap()
            .with_min_replicas(1);
        store.create_sale(&spec("r", 40, 1)).await.unwrap();
        store
            .lease("r", 1, 5, Duration::from_secs(60))
            .await
            .unwrap();
        let keyed = |order: &str| {
            let mut c = call("r", 1, order, "alice");
            c.idempotency_key = Some("k1".into());
            c
        };
        set.freeze_replica();
        let first = store.reserve_batch(&[keyed("o1")]).await;
        assert!(
            matches!(first[0], Err(stock::StockError::Undetermined(_))),
            "{first:?}"
        );
        // The buyer retries with the key before o1 is abandoned.
        let retry = store.reserve_batch(&[keyed("o2")]).await;
        assert!(
            !matches!(retry[0], Ok(ReserveOutcome::Replay(_))),
            "a replay of an order no replica has: {retry:?}"
        );
        let lookup = store
            .recall_keys(&[stock::redis::KeyRecall {
                sale_id: "r".into(),
                key: "k1".into(),
                fingerprint: 0,
            }])
            .await;
        assert!(
            !matches!(lookup[0], Ok(stock::redis::Recalled::Replay(_))),
            "a recalled order no replica has: {lookup:?}"
        );
        set.thaw_replica();
        let later = store.reserve_batch(&[keyed("o3")]).await;
        assert!(
            matches!(&later[0], Ok(ReserveOutcome::Replay(o)) if o.order_id == "o1"),
            "{later:?}"
        );
    }
}

/// A server that refuses `INFO` (a managed Redis, an ACL without it) is
/// still one server to connect to: the cluster probe does not lock it out.
#[tokio::test(flavor = "current_thread")]
async fn a_server_refusing_info_is_taken_as_one_server() {
    let server = seckill_testkit::RedisServer::start();
    let mut admin = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER", "noinfo", "on", ">pw", "~*", "&*", "+@all", "-info",
        ])
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = format!("redis://noinfo:pw@127.0.0.1:{}", server.port());
    let store = stock::redis::RedisStore::connect(&url, crate::TIMEOUT)
        .await
        .expect("connect without INFO");
    store
        .create_sale(&crate::spec("i", 3, 1))
        .await
        .expect("the store works");
}
