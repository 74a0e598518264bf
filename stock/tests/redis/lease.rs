use std::time::Duration;

use stock::redis::{Ask, LeaseGrant, ReserveOutcome, Tail};
use stock::{StockError, Switch};

use crate::{call, counts, setup, spec, TIMEOUT};

const TTL: Duration = Duration::from_secs(30);

#[tokio::test]
async fn chunks_shrink_as_the_pool_runs_low() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 100, 1)).await.unwrap();

    // grant = min(want, pool, max(1, ceil(pool / 4)))
    let mut grants = Vec::new();
    loop {
        let LeaseGrant { granted, pool_left } = store.lease("s1", 1, 1000, TTL).await.unwrap();
        if granted == 0 {
            assert_eq!(pool_left, 0);
            break;
        }
        grants.push(granted);
    }
    assert_eq!(grants[..6], [25, 19, 14, 11, 8, 6]);
    assert!(grants.windows(2).all(|w| w[1] <= w[0]), "{grants:?}");
    assert_eq!(grants.iter().sum::<u64>(), 100);
    assert_eq!(counts(&store, "s1").await, (0, 100, 0));

    // `want` caps a grant.
    store.create_sale(&spec("s2", 100, 1)).await.unwrap();
    let grant = store.lease("s2", 1, 3, TTL).await.unwrap();
    assert_eq!(
        grant,
        LeaseGrant {
            granted: 3,
            pool_left: 97
        }
    );
}

#[tokio::test]
async fn leasing_to_exhaustion_from_three_nodes_grants_exactly_the_stock() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 1000, 1)).await.unwrap();

    let mut per_node = [0u64; 3];
    let mut last_pool = 1000;
    'outer: loop {
        for node in 0..3u32 {
            let grant = store.lease("s1", node, 64, TTL).await.unwrap();
            assert!(grant.granted <= last_pool, "a grant over the pool");
            assert_eq!(grant.pool_left, last_pool - grant.granted);
            last_pool = grant.pool_left;
            per_node[node as usize] += grant.granted;
            if grant.granted == 0 {
                break 'outer;
            }
        }
    }
    assert_eq!(per_node.iter().sum::<u64>(), 1000);
    // Shrinking chunks spread the tail over the nodes.
    assert!(per_node.iter().all(|&n| n > 250), "{per_node:?}");
    assert_eq!(counts(&store, "s1").await, (0, 1000, 0));
}

#[tokio::test]
async fn concurrent_leases_never_exceed_the_pool() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 500, 1)).await.unwrap();
    let tasks: Vec<_> = (0..3u32)
        .map(|node| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut total = 0;
                loop {
                    let grant = store.lease("s1", node, 50, TTL).await.unwrap();
                    if grant.granted == 0 {
                        return total;
                    }
                    total += grant.granted;
                }
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    assert_eq!(total, 500);
    assert_eq!(counts(&store, "s1").await, (0, 500, 0));
}

#[tokio::test]
async fn a_closed_sale_grants_nothing_and_an_unknown_one_is_not_found() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 10, 1)).await.unwrap();
    store.switch("s1", Switch::Close).await.unwrap();
    let grant = store.lease("s1", 1, 5, TTL).await.unwrap();
    assert_eq!(
        grant,
        LeaseGrant {
            granted: 0,
            pool_left: 10
        }
    );

    let err = store.lease("nope", 1, 5, TTL).await.unwrap_err();
    assert!(matches!(err, StockError::SaleNotFound), "{err:?}");
}

#[tokio::test]
async fn return_lease_gives_the_unsold_units_back() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 100, 5)).await.unwrap();
    assert_eq!(store.lease("s1", 1, 10, TTL).await.unwrap().granted, 10);
    assert_eq!(store.lease("s1", 2, 10, TTL).await.unwrap().granted, 10);
    let sold = store.reserve_batch(&[call("s1", 1, "o1", "u1")]).await;
    assert!(sold[0].is_ok());

    assert_eq!(store.return_lease("s1", 1).await.unwrap(), 9);
    assert_eq!(store.return_lease("s1", 1).await.unwrap(), 0);
    assert_eq!(counts(&store, "s1").await, (89, 10, 1));
    assert_eq!(store.return_lease("nope", 1).await.unwrap(), 0);
}

#[tokio::test]
async fn reclaim_takes_back_expired_leases_only() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 100, 5)).await.unwrap();
    // Node 1 dies (no heartbeat after 100 ms); node 2's first deadline is
    // as short, but it heartbeats; node 3 leased for long.
    store
        .lease("s1", 1, 10, Duration::from_millis(100))
        .await
        .unwrap();
    store
        .lease("s1", 2, 10, Duration::from_millis(200))
        .await
        .unwrap();
    store.lease("s1", 3, 10, TTL).await.unwrap();
    let sold = store.reserve_batch(&[call("s1", 1, "o1", "u1")]).await;
    assert!(sold[0].is_ok());

    // Nothing is due yet.
    assert_eq!(store.reclaim("s1").await.unwrap(), 0);

    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        store
            .heartbeat(
                &["s1".to_owned(), "other".to_owned()],
                2,
                Duration::from_secs(2),
            )
            .await
            .unwrap();
    }
    // 300 ms later: node 1's deadline passed, node 2's was pushed on.
    // Node 1's 9 unsold units return.
    assert_eq!(store.reclaim("s1").await.unwrap(), 9);
    assert_eq!(counts(&store, "s1").await, (79, 20, 1));
    assert_eq!(store.reclaim("s1").await.unwrap(), 0);

    // The dead node's next reservation finds no lease; its heartbeat does
    // not bring the lease back.
    store.heartbeat(&["s1".to_owned()], 1, TTL).await.unwrap();
    let late = store.reserve_batch(&[call("s1", 1, "o2", "u2")]).await;
    assert_eq!(
        late[0].as_ref().unwrap(),
        &stock::redis::ReserveOutcome::NoLease
    );
    // The live nodes still sell from theirs.
    let live = store
        .reserve_batch(&[call("s1", 2, "o3", "u3"), call("s1", 3, "o4", "u4")])
        .await;
    assert!(live
        .iter()
        .all(|r| r.as_ref().unwrap() == &stock::redis::ReserveOutcome::Reserved));
    assert_eq!(counts(&store, "s1").await, (79, 18, 3));
}

#[tokio::test]
async fn heartbeat_of_no_sales_is_a_no_op() {
    let (_server, store) = setup().await;
    store.heartbeat(&[], 1, TIMEOUT).await.unwrap();
}

#[tokio::test]
async fn a_want_is_posted_while_units_sit_in_other_leases_and_the_surplus_comes_back() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 3, 1)).await.unwrap();
    // Node 1 leases the whole pool (a chunk at a time).
    while store.lease("s1", 1, 3, TTL).await.unwrap().granted > 0 {}
    assert_eq!(counts(&store, "s1").await, (0, 3, 0));
    let wait = Duration::from_secs(2);

    // Node 2's shards are dry: nothing to lease, so it posts a want.
    let ask = store.lease_or_want("s1", 2, 1, TTL, wait).await.unwrap();
    assert_eq!(
        ask,
        Ask {
            granted: 0,
            pool_left: 0,
            sold: 0,
            elsewhere: 3
        }
    );
    // The holder sees it; the asker does not see its own.
    let holder = store.tail("s1", 1).await.unwrap();
    assert_eq!(
        holder,
        Tail {
            pool: 0,
            sold: 0,
            elsewhere: 0,
            wanted: true
        }
    );
    assert!(!store.tail("s1", 2).await.unwrap().wanted);
    assert_eq!(store.tail("s1", 2).await.unwrap().elsewhere, 3);

    // The holder gives back what its shards hold (2; 1 is in flight).
    assert_eq!(store.give_back("s1", 1, 2).await.unwrap(), 2);
    assert_eq!(counts(&store, "s1").await, (2, 1, 0));
    // The asker leases; its want is cleared by the grant.
    let ask = store.lease_or_want("s1", 2, 1, TTL, wait).await.unwrap();
    assert_eq!((ask.granted, ask.pool_left, ask.elsewhere), (1, 1, 1));
    assert!(!store.tail("s1", 1).await.unwrap().wanted);
    // Never more than the lease holds: the unit in flight stays charged.
    let sold = store.reserve_batch(&[call("s1", 1, "o1", "u1")]).await;
    assert_eq!(sold[0].as_ref().unwrap(), &ReserveOutcome::Reserved);
    assert_eq!(store.give_back("s1", 1, 5).await.unwrap(), 0);
    assert_eq!(counts(&store, "s1").await, (1, 1, 1));
}

#[tokio::test]
async fn a_want_lapses_and_none_is_posted_when_nothing_is_left_elsewhere() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 1, 1)).await.unwrap();
    assert_eq!(store.lease("s1", 1, 1, TTL).await.unwrap().granted, 1);
    // A zero wait leases only: no want is posted.
    let ask = store
        .lease_or_want("s1", 2, 1, TTL, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!((ask.granted, ask.elsewhere), (0, 1));
    assert!(!store.tail("s1", 1).await.unwrap().wanted);
    // A want for 100 ms stands, then lapses.
    let ask = store
        .lease_or_want("s1", 2, 1, TTL, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!((ask.granted, ask.elsewhere), (0, 1));
    assert!(store.tail("s1", 1).await.unwrap().wanted);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!store.tail("s1", 1).await.unwrap().wanted);

    // Sold out: nothing in the pool nor in other leases, so no want.
    let sold = store.reserve_batch(&[call("s1", 1, "o1", "u1")]).await;
    assert_eq!(sold[0].as_ref().unwrap(), &ReserveOutcome::Reserved);
    let ask = store
        .lease_or_want("s1", 2, 1, TTL, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        ask,
        Ask {
            granted: 0,
            pool_left: 0,
            sold: 1,
            elsewhere: 0
        }
    );
    assert!(!store.tail("s1", 1).await.unwrap().wanted);

    // A closed sale grants nothing and posts nothing; an unknown one is
    // not found.
    store.create_sale(&spec("s2", 1, 1)).await.unwrap();
    assert_eq!(store.lease("s2", 1, 1, TTL).await.unwrap().granted, 1);
    store.switch("s2", Switch::Close).await.unwrap();
    let ask = store.lease_or_want("s2", 2, 1, TTL, TTL).await.unwrap();
    assert_eq!(ask.granted, 0);
    assert!(!store.tail("s2", 1).await.unwrap().wanted);
    let err = store
        .lease_or_want("nope", 2, 1, TTL, TTL)
        .await
        .unwrap_err();
    assert!(matches!(err, StockError::SaleNotFound), "{err:?}");
}

#[tokio::test]
async fn one_unit_on_fifty_nodes_goes_to_exactly_one_wanting_node() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 1, 1)).await.unwrap();
    assert_eq!(store.lease("s1", 7, 1, TTL).await.unwrap().granted, 1);
    // Every other node's buyer finds its shards dry: all post wants.
    for node in (0..50).filter(|n| *n != 7) {
        let ask = store.lease_or_want("s1", node, 1, TTL, TTL).await.unwrap();
        assert_eq!((ask.granted, ask.elsewhere), (0, 1), "node {node}");
    }
    assert!(store.tail("s1", 7).await.unwrap().wanted);
    // The holder gives it back; the wanting nodes ask again, all at once.
    assert_eq!(store.give_back("s1", 7, 1).await.unwrap(), 1);
    let asks: Vec<_> = (0..50u32)
        .filter(|n| *n != 7)
        .map(|node| {
            let store = store.clone();
            tokio::spawn(async move { (node, store.lease_or_want("s1", node, 1, TTL, TTL).await) })
        })
        .collect();
    let mut winners = Vec::new();
    for ask in asks {
        let (node, ask) = ask.await.unwrap();
        let ask = ask.unwrap();
        if ask.granted == 1 {
            winners.push(node);
        } else {
            // The others learn where it went: not sold out yet.
            assert_eq!((ask.pool_left, ask.elsewhere), (0, 1));
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(counts(&store, "s1").await, (0, 1, 0));
}

/// A stop that returns the node's leases while lease calls are still
/// running (the poller's top-up spawned just before it, a call in the same
/// drain as the stop, buyers still waiting for units another node gives
/// back) must not let them lease after the return: no unit may stay in a
/// stopped node's lease until it is reclaimed after `lease_ttl`.
#[test]
fn a_stop_leaves_nothing_in_the_lease_when_lease_calls_are_in_flight() {
    use stock::cluster::{ClusterOptions, RedisAuthority};
    use stock::StockAuthority;

    const SALES: usize = 64;
    let server = seckill_testkit::RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt
        .block_on(stock::redis::RedisStore::connect(&server.url(), TIMEOUT))
        .unwrap();
    let ids: Vec<String> = (0..SALES).map(|i| format!("s{i}")).collect();
    // Node 9, alive for a minute, holds every sale's only unit.
    for id in &ids {
        rt.block_on(store.create_sale(&spec(id, 1, 1))).unwrap();
        let grant = rt
            .block_on(store.lease(id, 9, 1, Duration::from_secs(60)))
            .unwrap();
        assert_eq!(grant.granted, 1);
    }
    let node = RedisAuthority::connect(&server.url(), ClusterOptions::new(2, 1), 1).unwrap();
    let sales: Vec<_> = ids
        .iter()
        .map(|id| node.sale(id).expect("node 2 knows the sale"))
        .collect();
    std::thread::scope(|scope| {
        // A buyer per sale on node 2: the pool is empty, node 9 holds the
        // unit, so each posts a want and waits for it.
        for sale in &sales {
            let node = &node;
            scope.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let _ = rt.block_on(node.refill(sale, 0, 1));
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        // Node 9 gives its units back, and node 2 stops while its lease
        // calls wait for them.
        for id in &ids {
            assert_eq!(rt.block_on(store.give_back(id, 9, 1)).unwrap(), 1);
        }
        node.close();
    });
    for id in &ids {
        let status = rt.block_on(store.status(id)).unwrap().expect("the sale");
        assert_eq!(
            (status.pool, status.leased),
            (1, 0),
            "sale {id}: a unit left in a stopped node's lease"
        );
    }
}
