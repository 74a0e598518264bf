//! Bounded growth in embedded mode: finished orders leave the node's
//! memory after `order_retention_s` (a GET of a forgotten order is 404),
//! idempotency records after `idempotency_ttl_s`, and a long buy/cancel
//! loop keeps the node's resident memory flat.

use std::time::Duration;

use serde_json::json;

use crate::support::{assert_error, assert_ok, eventually, Node};

/// A node whose finished orders and idempotency records live 1 s.
fn short_memory_node(extra: &str) -> Node {
    let root = seckill_testkit::temp_dir("seckill-it-");
    std::fs::write(
        root.path().join("seckill.toml"),
        format!("order_retention_s = 1\nidempotency_ttl_s = 1\n{extra}"),
    )
    .expect("write config");
    Node::start_in(root, &["--config", "{root}/seckill.toml"])
}

#[test]
fn finished_orders_and_keys_are_forgotten_after_their_retention() {
    let mut node = short_memory_node("");
    let mut c = node.client();
    c.create_sale("mem", &json!({ "stock": 10, "per_user_limit": 5 }));
    let cancelled = assert_ok(&c.purchase_with_key("mem", "a", 1, "k-a"))["order_id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_ok(&c.cancel(&cancelled));
    let paid = c.purchase("mem", "b").str("order_id");
    assert_ok(&c.pay(&paid));
    let open = c.purchase("mem", "c").str("order_id");

    let gone = |c: &mut crate::support::Client, id: &str| {
        let resp = c.get(&format!("/orders/{id}"));
        (resp.status == 404).then_some(resp)
    };
    let resp = eventually(
        Duration::from_secs(10),
        "the cancelled order is forgotten",
        || gone(&mut c, &cancelled),
    );
    assert_error(&resp, 404, "not_found");
    eventually(
        Duration::from_secs(10),
        "the paid order is forgotten",
        || gone(&mut c, &paid),
    );
    // A live order stays; the sale's counts do not change.
    assert_eq!(c.order(&open)["status"], "reserved");
    let view = c.sale("mem");
    assert_eq!(view["sold"], 2, "{view}");
    // The key expired with its order: the same request is a new attempt.
    let again = assert_ok(&c.purchase_with_key("mem", "a", 1, "k-a"));
    assert_ne!(again["order_id"], cancelled.as_str());

    // A restart replays the forgotten orders and forgets them again.
    node.restart();
    let mut c = node.client();
    eventually(
        Duration::from_secs(10),
        "forgotten after the restart",
        || gone(&mut c, &paid),
    );
    assert_eq!(c.order(&open)["status"], "reserved");
    assert_eq!(c.sale("mem")["sold"], 3);
}

/// Buys and cancels from `THREADS` clients, each cycle with
/// a fresh user and a fresh Idempotency-Key. Memory kept per cycle grows
/// the node by the same amount in every window of cycles; the allocator's
/// own warm-up does not, nor its one-off jumps (a thread cache, an arena
/// grown once: +1.3 MiB in one window of a CI run, +8 KiB in the next
/// run). So after a warm-up, the RSS is read after three equal windows,
/// and at least one of the last two may add at most `GROWTH_LIMIT_KIB`: a
/// leak grows both.
#[test]
fn a_long_buy_cancel_loop_keeps_memory_flat() {
    const THREADS: usize = 4;
    const WARM_UP: usize = 5_000;
    const WINDOW: usize = 10_000;
    /// Each order left in memory costs ~250 bytes: a window's 10,000 would
    /// grow the node by ~2.5 MiB.
    const GROWTH_LIMIT_KIB: u64 = 1_024;
    let node = short_memory_node("");
    let mut c = node.client();
    // Stock for every client at once. A cancelled order stays in its
    // core's expiry queue until its payment timeout (then the sweep drops
    // it): 3 s keeps that queue short and still leaves the cancel, sent
    // right after the purchase, well ahead of the expiry.
    c.create_sale(
        "loop",
        &json!({ "stock": THREADS, "per_user_limit": 1, "payment_timeout_s": 3 }),
    );
    let cycles = |from: usize, to: usize| {
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let addr = node.addr();
                s.spawn(move || {
                    let mut c = crate::support::Client::connect(addr);
                    for i in (from + t..to).step_by(THREADS) {
                        let resp = c.purchase_with_key(
                            "loop",
                            &format!("user-{i}"),
                            1,
                            &format!("key-{i}"),
                        );
                        let id = assert_ok(&resp)["order_id"]
                            .as_str()
                            .expect("id")
                            .to_owned();
                        assert_ok(&c.cancel(&id));
                    }
                });
            }
        });
    };
    // After each stretch, let its orders, keys and expiry entries go, as
    // the rest will.
    let settled_rss = |from: usize, to: usize| {
        cycles(from, to);
        std::thread::sleep(Duration::from_millis(4_500));
        node.rss_kib()
    };
    let warm_rss = settled_rss(0, WARM_UP);
    let first = settled_rss(WARM_UP, WARM_UP + WINDOW);
    let second = settled_rss(WARM_UP + WINDOW, WARM_UP + 2 * WINDOW);
    let third = settled_rss(WARM_UP + 2 * WINDOW, WARM_UP + 3 * WINDOW);
    eprintln!(
        "memory: RSS {warm_rss} KiB after {WARM_UP} buy+cancel cycles, then {first}, \
         {second} and {third} KiB after each {WINDOW} more"
    );
    let growth = second
        .saturating_sub(first)
        .min(third.saturating_sub(second));
    assert!(
        growth <= GROWTH_LIMIT_KIB,
        "RSS grew in both windows of {WINDOW} cycles: {first} -> {second} -> {third} KiB \
         (warm: {warm_rss} KiB)"
    );
}
