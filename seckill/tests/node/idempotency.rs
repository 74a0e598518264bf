//! Idempotency-Key: a retry gets the first order back, a reused key with
//! another body is refused, concurrent duplicates make one order, and
//! replays keep working across restarts, crashes and sell-out.

use std::sync::{Arc, Barrier};

use serde_json::json;

use crate::support::{assert_error, assert_ok, Client, Node, Response};

#[test]
fn a_replay_returns_the_first_order_and_a_reused_key_is_refused() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("idem", &json!({ "stock": 10, "per_user_limit": 2 }));
    c.create_sale("other", &json!({ "stock": 10, "per_user_limit": 2 }));

    let first = c.purchase_with_key("idem", "alice", 1, "key-1");
    let order = assert_ok(&first);
    assert!(
        !first.is_replayed(),
        "a first answer is no replay: {first:?}"
    );
    assert_eq!(order["status"], "reserved");
    assert_eq!(order["user_id"], "alice");
    let order_id = first.str("order_id");

    let again = c.purchase_with_key("idem", "alice", 1, "key-1");
    assert_eq!(assert_ok(&again), order, "the replay is the first answer");
    assert!(
        again.is_replayed(),
        "no idempotent-replayed header: {again:?}"
    );

    // The same key with another body: user, quantity, sale.
    assert_error(
        &c.purchase_with_key("idem", "bob", 1, "key-1"),
        422,
        "idempotency_key_reused",
    );
    assert_error(
        &c.purchase_with_key("idem", "alice", 2, "key-1"),
        422,
        "idempotency_key_reused",
    );
    assert_error(
        &c.purchase_with_key("other", "alice", 1, "key-1"),
        422,
        "idempotency_key_reused",
    );
    // Another key is another purchase.
    let second = c.purchase_with_key("idem", "alice", 1, "key-2");
    assert_ok(&second);
    assert_ne!(second.str("order_id"), order_id);
    assert!(!second.is_replayed());

    // A replay after the order moved on still answers the first response.
    assert_eq!(assert_ok(&c.pay(&order_id))["status"], "paid");
    let after_pay = c.purchase_with_key("idem", "alice", 1, "key-1");
    assert!(after_pay.is_replayed(), "{after_pay:?}");
    assert_eq!(after_pay.str("order_id"), order_id);

    assert_eq!(c.sale("idem")["sold"], 2);
    assert_eq!(c.sale("other")["sold"], 0);
    let journal = node.journal();
    assert_eq!(journal.reserved("idem").len(), 2);
    assert_eq!(journal.count("order_reserved", &order_id), 1);
    assert!(journal.reserved("other").is_empty());
}

#[test]
fn concurrent_duplicates_make_one_order() {
    const ROUNDS: usize = 30;
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("dup", &json!({ "stock": 100, "per_user_limit": 1 }));

    let addr = node.addr();
    let start = Arc::new(Barrier::new(2));
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                (0..ROUNDS)
                    .map(|round| {
                        start.wait();
                        client.purchase_with_key(
                            "dup",
                            &format!("user-{round}"),
                            1,
                            &format!("dup-key-{round}"),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<Vec<Response>> = senders
        .into_iter()
        .map(|s| s.join().expect("sender thread"))
        .collect();

    let journal = node.journal();
    let mut in_progress = 0;
    for (round, (a, b)) in answers[0].iter().zip(&answers[1]).enumerate() {
        let pair = [a, b];
        let fresh: Vec<_> = pair
            .iter()
            .filter(|r| r.status == 200 && !r.is_replayed())
            .collect();
        assert_eq!(fresh.len(), 1, "round {round}: {pair:?}");
        let order_id = fresh[0].str("order_id");
        for r in pair {
            match r.status {
                200 => assert_eq!(r.str("order_id"), order_id, "round {round}: {pair:?}"),
                409 => {
                    assert_error(r, 409, "in_progress");
                    in_progress += 1;
                }
                _ => panic!("round {round}: unexpected answer {r}"),
            }
        }
        assert_eq!(journal.count("order_reserved", &order_id), 1);
        // Once the first is done, a retry replays it.
        let retry = c.purchase_with_key(
            "dup",
            &format!("user-{round}"),
            1,
            &format!("dup-key-{round}"),
        );
        assert!(retry.is_replayed(), "round {round}: {retry:?}");
        assert_eq!(retry.str("order_id"), order_id);
    }
    assert_eq!(answers[0].len(), ROUNDS);
    assert_eq!(journal.reserved("dup").len(), ROUNDS, "one order per key");
    assert_eq!(c.sale("dup")["sold"], ROUNDS as u64);
    eprintln!("concurrent duplicates: {in_progress} of {ROUNDS} rounds saw in_progress");
}

#[test]
fn a_replay_survives_a_graceful_restart_and_a_crash() {
    let mut node = Node::start();
    let mut c = node.client();
    c.create_sale("durable", &json!({ "stock": 5, "per_user_limit": 1 }));
    let first = c.purchase_with_key("durable", "alice", 1, "restart-key");
    let order = assert_ok(&first);
    drop(c);

    for how in ["SIGTERM", "SIGKILL"] {
        if how == "SIGKILL" {
            node.kill();
        }
        node.restart();
        let mut c = node.client();
        let replay = c.purchase_with_key("durable", "alice", 1, "restart-key");
        assert_eq!(assert_ok(&replay), order, "after {how}");
        assert!(replay.is_replayed(), "after {how}: {replay:?}");
        assert_error(
            &c.purchase_with_key("durable", "bob", 1, "restart-key"),
            422,
            "idempotency_key_reused",
        );
        // The user is still at the limit, with or without a new key.
        assert_error(&c.purchase("durable", "alice"), 409, "limit_exceeded");
        assert_error(
            &c.purchase_with_key("durable", "alice", 1, "another-key"),
            409,
            "limit_exceeded",
        );
        assert_eq!(c.sale("durable")["sold"], 1, "after {how}");
    }
    assert_eq!(node.journal().reserved("durable").len(), 1);
}

#[test]
fn a_replay_after_sell_out_is_answered_not_refused() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("one", &json!({ "stock": 1, "per_user_limit": 1 }));
    let first = c.purchase_with_key("one", "alice", 1, "last-unit");
    let order = assert_ok(&first);
    assert_error(&c.purchase("one", "bob"), 410, "sold_out");
    assert_eq!(c.sale("one")["state"], "sold_out");

    let replay = c.purchase_with_key("one", "alice", 1, "last-unit");
    assert_eq!(assert_ok(&replay), order);
    assert!(replay.is_replayed(), "{replay:?}");
    // A new key after sell-out is a new purchase, and there is nothing left.
    assert_error(
        &c.purchase_with_key("one", "carol", 1, "too-late"),
        410,
        "sold_out",
    );
    assert_eq!(c.sale("one")["sold"], 1);
}
