//! A node whose clock runs behind Redis's: its reservations are refused as
//! too old (`gone`), and the units it took for them must not be lost.

use seckill_testkit::RedisServer;
use stock::cluster::{ClusterOptions, RedisAuthority};
use stock::{Attempt, StockAuthority, StockError};

use crate::{now_s, spec};

#[test]
fn a_reservation_refused_as_too_old_keeps_its_units() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test runtime");
    let node = RedisAuthority::connect(&server.url(), ClusterOptions::new(1, 1), 1).unwrap();
    let mut sale_spec = spec("s1", 64, 1);
    sale_spec.payment_timeout_s = 30;
    let sale = rt.block_on(node.create_sale(sale_spec)).unwrap();
    // Units leased into the shard; one taken for a buyer.
    let units = rt.block_on(node.refill(&sale, 0, 1)).unwrap();
    let in_shard = sale.stock.available();
    // The node's clock is two hours behind Redis's: the order's expiry
    // (its clock + 30 s) is long past by Redis's time plus any grace.
    let behind = Attempt {
        user_id: "alice",
        quantity: 1,
        idempotency_key: None,
        now: now_s() - 7_200,
        core: 0,
    };
    let err = match rt.block_on(node.reserve(&sale, &behind, units)) {
        Ok(_) => panic!("a reservation two hours old was accepted"),
        Err(e) => e,
    };
    assert!(matches!(err, StockError::Unavailable(_)), "{err:?}");
    // Nothing was charged in Redis: the unit is still the node's to sell.
    assert_eq!(
        sale.stock.available(),
        in_shard + 1,
        "the unit went back to the shard"
    );
    node.close();
}
