//! Abandoning a reservation whose reply never came: released when Redis
//! recorded it; otherwise a tombstone refuses a late copy of the reserve
//! and the unit goes from the node's lease back to the pool.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use stock::redis::{Abandoned, Moved, RedisStore, ReserveOutcome};
use stock::{OrderStatus, StockError};

use crate::{call, counts, now_s, setup, spec, TIMEOUT};

const TTL: Duration = Duration::from_secs(30);

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

#[tokio::test]
async fn an_unrecorded_reservation_is_tombstoned_and_its_unit_returned_once() {
    let (server, store) = setup().await;
    store.create_sale(&spec("s1", 20, 1)).await.unwrap();
    store.lease("s1", 1, 5, TTL).await.unwrap();
    assert_eq!(counts(&store, "s1").await, (15, 5, 0));

    let o1 = call("s1", 1, "o1", "alice");
    let found = store
        .abandon("s1", "o1", 1, 1, o1.expires_at)
        .await
        .unwrap();
    assert_eq!(found, Abandoned::NeverRecorded { returned: 1 });
    assert_eq!(counts(&store, "s1").await, (16, 4, 0), "lease -> pool");

    // A late copy of the reserve is refused and charges nothing.
    let late = store.reserve_batch(std::slice::from_ref(&o1)).await;
    assert_eq!(late[0].as_ref().unwrap(), &ReserveOutcome::Gone);
    assert_eq!(counts(&store, "s1").await, (16, 4, 0));
    assert_eq!(store.order("s1", "o1").await.unwrap(), None);

    // A repeat (a lost answer, retried) moves nothing more.
    let again = store
        .abandon("s1", "o1", 1, 1, o1.expires_at)
        .await
        .unwrap();
    assert_eq!(again, Abandoned::NeverRecorded { returned: 0 });
    assert_eq!(counts(&store, "s1").await, (16, 4, 0));

    // The tombstone expires by itself, well after the payment window.
    let mut conn = redis_conn(&server.url()).await;
    let ttl: i64 = redis::cmd("TTL")
        .arg("sk:{s1}:gone:o1")
        .query_async(&mut conn)
        .await
        .unwrap();
    let window = (o1.expires_at - now_s()) as i64;
    assert!(ttl > window && ttl <= window + 120, "ttl {ttl}");

    // alice was never charged: she buys under a new order id.
    let fresh = store.reserve_batch(&[call("s1", 1, "o2", "alice")]).await;
    assert_eq!(fresh[0].as_ref().unwrap(), &ReserveOutcome::Reserved);
    assert_eq!(counts(&store, "s1").await, (16, 3, 1));
}

#[tokio::test]
async fn a_recorded_reservation_is_released_by_its_abandon() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 20, 1)).await.unwrap();
    store.lease("s1", 1, 5, TTL).await.unwrap();
    let o1 = call("s1", 1, "o1", "alice");
    let answers = store.reserve_batch(std::slice::from_ref(&o1)).await;
    assert_eq!(answers[0].as_ref().unwrap(), &ReserveOutcome::Reserved);
    assert_eq!(counts(&store, "s1").await, (15, 4, 1));

    let found = store
        .abandon("s1", "o1", 1, 1, o1.expires_at)
        .await
        .unwrap();
    let Abandoned::Released(Moved::Changed(order)) = found else {
        panic!("expected a release, got {found:?}");
    };
    assert_eq!(order.status, OrderStatus::Cancelled);
    // sold -> pool; the lease is untouched (the reserve had charged it).
    assert_eq!(counts(&store, "s1").await, (16, 4, 0));
    let again = store
        .abandon("s1", "o1", 1, 1, o1.expires_at)
        .await
        .unwrap();
    assert!(
        matches!(again, Abandoned::Released(Moved::Unchanged(_))),
        "{again:?}"
    );
    // A retried reserve of the released order charges nothing.
    let retry = store.reserve_batch(&[o1]).await;
    assert_eq!(retry[0].as_ref().unwrap(), &ReserveOutcome::Reserved);
    assert_eq!(counts(&store, "s1").await, (16, 4, 0));
}

#[tokio::test]
async fn a_lease_returned_meanwhile_took_the_unit_back_already() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 20, 1)).await.unwrap();
    store.lease("s1", 1, 5, TTL).await.unwrap();
    assert_eq!(store.return_lease("s1", 1).await.unwrap(), 5);
    let found = store
        .abandon("s1", "o1", 1, 1, now_s() + 900)
        .await
        .unwrap();
    assert_eq!(found, Abandoned::NeverRecorded { returned: 0 });
    assert_eq!(counts(&store, "s1").await, (20, 0, 0), "nothing twice");
}

#[tokio::test]
async fn a_reserve_far_past_its_payment_window_is_refused() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 20, 1)).await.unwrap();
    store.lease("s1", 1, 5, TTL).await.unwrap();
    let mut old = call("s1", 1, "o1", "alice");
    old.expires_at = now_s() - 3600;
    let answers = store.reserve_batch(&[old]).await;
    assert_eq!(answers[0].as_ref().unwrap(), &ReserveOutcome::Gone);
    assert_eq!(counts(&store, "s1").await, (15, 5, 0));
}

/// A TCP relay to Redis whose client-to-server direction can be held:
/// bytes sent while held reach Redis only once released, as a reserve
/// stuck in a socket buffer does.
struct Relay {
    addr: std::net::SocketAddr,
    open: Arc<(Mutex<bool>, Condvar)>,
}

impl Relay {
    fn start(upstream: u16) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new((Mutex::new(true), Condvar::new()));
        let gate = open.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let (Ok(mut client_tx), Ok(mut server_rx)) =
                    (client.try_clone(), server.try_clone())
                else {
                    return;
                };
                let gate = gate.clone();
                thread::spawn(move || {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match client.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let (lock, cvar) = &*gate;
                        let mut open = lock.lock().unwrap();
                        while !*open {
                            open = cvar.wait(open).unwrap();
                        }
                        drop(open);
                        if server.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
                thread::spawn(move || {
                    let _ = std::io::copy(&mut server_rx, &mut client_tx);
                });
            }
        });
        Relay { addr, open }
    }

    fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    fn set(&self, open: bool) {
        let (lock, cvar) = &*self.open;
        *lock.lock().unwrap() = open;
        cvar.notify_all();
    }
}

async fn evalsha_calls(store: &RedisStore) -> u64 {
    store
        .command_stats()
        .await
        .unwrap()
        .iter()
        .find(|(name, _)| name == "evalsha")
        .map_or(0, |(_, calls)| *calls)
}

#[tokio::test]
async fn a_reserve_that_reaches_redis_after_its_abandon_is_refused() {
    let (server, store) = setup().await;
    store.create_sale(&spec("s1", 20, 1)).await.unwrap();
    store.lease("s1", 1, 5, TTL).await.unwrap();
    // Warm the reserve script so the late copy is one EVALSHA.
    let warm = store.reserve_batch(&[call("s1", 1, "w", "w")]).await;
    assert_eq!(warm[0].as_ref().unwrap(), &ReserveOutcome::Reserved);
    assert_eq!(counts(&store, "s1").await, (15, 4, 1));

    // The node's connection goes through the relay.
    let relay = Relay::start(server.port());
    let node = RedisStore::connect(&relay.url(), TIMEOUT).await.unwrap();
    relay.set(false);
    let o1 = call("s1", 1, "o1", "alice");
    let started = Instant::now();
    let answer = node
        .reserve_batch(std::slice::from_ref(&o1))
        .await
        .remove(0);
    assert!(
        matches!(answer, Err(StockError::Undetermined(_))),
        "{answer:?}"
    );
    assert!(started.elapsed() < TIMEOUT * 2);

    // Reconciliation runs first (another connection): Redis never saw o1.
    let found = store
        .abandon("s1", "o1", 1, 1, o1.expires_at)
        .await
        .unwrap();
    assert_eq!(found, Abandoned::NeverRecorded { returned: 1 });
    assert_eq!(counts(&store, "s1").await, (16, 3, 1));

    // Now the stuck reserve reaches Redis: it runs, and is refused.
    let before = evalsha_calls(&store).await;
    relay.set(true);
    let deadline = Instant::now() + Duration::from_secs(5);
    while evalsha_calls(&store).await == before {
        assert!(Instant::now() < deadline, "the late reserve never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.order("s1", "o1").await.unwrap(), None, "no order");
    assert_eq!(counts(&store, "s1").await, (16, 3, 1), "nothing charged");
    let users: Option<u64> = {
        let mut conn = redis_conn(&server.url()).await;
        redis::cmd("HGET")
            .arg("sk:{s1}:users")
            .arg("alice")
            .query_async(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(users, None, "alice holds nothing");
}

/// A reservation with the Idempotency-Key `k1` (fingerprint 7).
fn keyed(sale_id: &str, node: u32, order_id: &str, user_id: &str) -> stock::redis::ReserveCall {
    let mut c = call(sale_id, node, order_id, user_id);
    c.idempotency_key = Some("k1".into());
    c.fingerprint = 7;
    c
}

#[tokio::test]
async fn an_order_replayed_on_another_node_is_not_released_by_its_abandon() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 20, 1)).await.unwrap();
    store.lease("s1", 1, 5, TTL).await.unwrap();
    store.lease("s1", 2, 5, TTL).await.unwrap();
    // Node 1 records o1 under k1; its reply is lost (undetermined).
    let first = keyed("s1", 1, "o1", "alice");
    let answers = store.reserve_batch(std::slice::from_ref(&first)).await;
    assert_eq!(answers[0].as_ref().unwrap(), &ReserveOutcome::Reserved);
    // The buyer retries k1 on node 2, which replays o1: a 200.
    let replay = store.reserve_batch(&[keyed("s1", 2, "o2", "alice")]).await;
    let Ok(ReserveOutcome::Replay(order)) = &replay[0] else {
        panic!("expected a replay, got {replay:?}");
    };
    assert_eq!(order.order_id, "o1");
    assert_eq!(counts(&store, "s1").await, (11, 8, 1));

    // Node 1 now abandons o1, and the settler's reconciliation releases
    // it: a 200 was given, so both leave it as it is.
    let abandoned = store
        .abandon("s1", "o1", 1, 1, first.expires_at)
        .await
        .unwrap();
    assert!(
        !matches!(abandoned, Abandoned::Released(Moved::Changed(_))),
        "{abandoned:?}"
    );
    let released = store.release("s1", "o1").await.unwrap();
    assert!(!matches!(released, Moved::Changed(_)), "{released:?}");
    let order = store.order("s1", "o1").await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Reserved);
    assert_eq!(counts(&store, "s1").await, (11, 8, 1), "nothing moved");

    // The key still stands for o1: a third retry replays it, no new order.
    let third = store.reserve_batch(&[keyed("s1", 2, "o3", "alice")]).await;
    assert!(
        matches!(&third[0], Ok(ReserveOutcome::Replay(o)) if o.order_id == "o1"),
        "{third:?}"
    );
    assert_eq!(store.order("s1", "o3").await.unwrap(), None);
    // It lives on as any reserved order: its buyer may still cancel it.
    let cancelled = store
        .transition("s1", "o1", OrderStatus::Cancelled, now_s())
        .await
        .unwrap();
    assert!(matches!(cancelled, Moved::Changed(_)), "{cancelled:?}");
}
