//! Integration tests of the Redis side of the cluster stock authority
//! (`stock::redis`), each against its own real `redis-server` on a free
//! loopback port (`scripts/redis.sh` installs it).
//!
//! Layout:
//! - `sale`: create (same / other spec), switches, status, the sales set.
//! - `lease`: chunk sizes, leasing to exhaustion, return, reclaim, heartbeat,
//!   wants and units given back between nodes.
//! - `reserve`: limits across nodes, keys, leases, retries, classic mode.
//! - `transition`: pay, cancel, expire exactly once (also concurrently), due.
//! - `faults`: SCRIPT FLUSH, Redis down and back, commands per reservation.
//! - `node`: node id claims (one live process per id, lapse, release),
//!   the published delivery timeouts, Redis persistence from its config.
//! - `abandon`: reconciling a reservation whose reply never came:
//!   released, or tombstoned with its unit returned; the late reserve race.
//! - `recall`: the cluster authority's key lookups across nodes (Redis and
//!   memory), kept orders, the bound on lookups in flight.
//! - `cluster`: the Redis Cluster and Sentinel fixtures; the store on a
//!   cluster (scripts on every master, failover).
//! - `clock`: a node whose clock runs behind Redis's keeps the units of
//!   reservations refused as too old.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use seckill_testkit::RedisServer;
use stock::redis::{RedisStore, ReserveCall};
use stock::SaleSpec;

#[path = "redis/abandon.rs"]
mod abandon;
#[path = "redis/clock.rs"]
mod clock;
#[path = "redis/cluster.rs"]
mod cluster;
#[path = "redis/faults.rs"]
mod faults;
#[path = "redis/lease.rs"]
mod lease;
#[path = "redis/node.rs"]
mod node;
#[path = "redis/recall.rs"]
mod recall;
#[path = "redis/reserve.rs"]
mod reserve;
#[path = "redis/sale.rs"]
mod sale;
#[path = "redis/transition.rs"]
mod transition;

/// The response timeout of every store in these tests.
const TIMEOUT: Duration = Duration::from_millis(500);

/// A fresh server and a store connected to it.
async fn setup() -> (RedisServer, RedisStore) {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), TIMEOUT)
        .await
        .expect("connect to the test redis-server");
    (server, store)
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// An open sale (started a minute ago, no end, 15 min to pay).
fn spec(sale_id: &str, stock: u64, per_user_limit: u32) -> SaleSpec {
    SaleSpec {
        sale_id: sale_id.to_owned(),
        stock,
        per_user_limit,
        starts_at: now_s() - 60,
        ends_at: None,
        payment_timeout_s: 900,
        ticket_required: false,
    }
}

/// A reservation of one unit charged to `node`'s lease, without a key.
fn call(sale_id: &str, node: u32, order_id: &str, user_id: &str) -> ReserveCall {
    ReserveCall {
        sale_id: sale_id.to_owned(),
        node,
        order_id: order_id.to_owned(),
        user_id: user_id.to_owned(),
        quantity: 1,
        idempotency_key: None,
        fingerprint: 0,
        expires_at: now_s() + 900,
        from_pool: false,
    }
}

/// `pool + leased + sold == stock`, and the counts themselves.
async fn counts(store: &RedisStore, sale_id: &str) -> (u64, u64, u64) {
    let status = store
        .status(sale_id)
        .await
        .expect("status")
        .expect("the sale exists");
    assert_eq!(
        status.pool + status.leased + status.sold,
        status.spec.stock,
        "units conserved: {status:?}"
    );
    (status.pool, status.leased, status.sold)
}
