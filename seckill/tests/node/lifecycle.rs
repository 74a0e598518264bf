//! An order's life after the purchase: pay, cancel, expiry. Released units
//! return to stock exactly once, impossible moves are refused, and all of
//! it survives a restart.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{assert_error, assert_ok, eventually, now_s, Client, Node};

#[test]
fn cancel_returns_the_unit_exactly_once() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("one", &json!({ "stock": 1, "per_user_limit": 1 }));
    let order_id = c.purchase("one", "alice").str("order_id");
    assert_eq!(c.sale("one")["state"], "sold_out");

    let cancelled = assert_ok(&c.cancel(&order_id));
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    assert_eq!(cancelled["order_id"], order_id.as_str());
    let again = assert_ok(&c.cancel(&order_id));
    assert_eq!(
        again, cancelled,
        "a repeated cancel leaves the order unchanged"
    );
    assert_eq!(c.order(&order_id)["status"], "cancelled");

    let view = c.sale("one");
    assert_eq!(view["sold"], 0, "{view}");
    assert_eq!(view["remaining"], 1, "{view}");
    assert_eq!(view["state"], "open", "{view}");
    assert_ok(&c.purchase("one", "bob"));
    assert_error(&c.purchase("one", "carol"), 410, "sold_out");
    assert_eq!(c.sale("one")["sold"], 1);
    assert_eq!(node.journal().count("order_cancelled", &order_id), 1);
}

#[test]
fn concurrent_cancels_return_the_unit_once() {
    const CANCELLERS: usize = 4;
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("three", &json!({ "stock": 3, "per_user_limit": 1 }));
    let ids: Vec<String> = ["u1", "u2", "u3"]
        .iter()
        .map(|u| c.purchase("three", u).str("order_id"))
        .collect();
    assert_eq!(c.sale("three")["state"], "sold_out");

    let start = Arc::new(Barrier::new(CANCELLERS));
    let cancellers: Vec<_> = (0..CANCELLERS)
        .map(|_| {
            let (start, addr, id) = (start.clone(), node.addr(), ids[0].clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                start.wait();
                client.cancel(&id)
            })
        })
        .collect();
    let answers: Vec<_> = cancellers
        .into_iter()
        .map(|t| t.join().expect("canceller"))
        .collect();
    let ok = answers.iter().filter(|r| r.status == 200).count();
    assert!(ok >= 1, "{answers:?}");
    for r in &answers {
        if r.status == 200 {
            assert_eq!(r.json()["status"], "cancelled", "{r}");
        } else {
            assert_error(r, 409, "in_progress");
        }
    }

    let view = c.sale("three");
    assert_eq!(view["sold"], 2, "{view}");
    assert_eq!(view["remaining"], 1, "{view}");
    assert_ok(&c.purchase("three", "u4"));
    assert_error(&c.purchase("three", "u5"), 410, "sold_out");
    assert_eq!(node.journal().count("order_cancelled", &ids[0]), 1);
}

#[test]
fn pay_and_cancel_follow_the_state_machine() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("sm", &json!({ "stock": 5, "per_user_limit": 1 }));

    let paid_id = c.purchase("sm", "alice").str("order_id");
    let paid = assert_ok(&c.pay(&paid_id));
    assert_eq!(paid["status"], "paid", "{paid}");
    assert_eq!(assert_ok(&c.pay(&paid_id)), paid, "pay twice: unchanged");
    assert_error(&c.cancel(&paid_id), 409, "invalid_state");
    assert_eq!(c.order(&paid_id)["status"], "paid");

    let cancelled_id = c.purchase("sm", "bob").str("order_id");
    assert_eq!(assert_ok(&c.cancel(&cancelled_id))["status"], "cancelled");
    assert_error(&c.pay(&cancelled_id), 409, "invalid_state");
    assert_eq!(c.order(&cancelled_id)["status"], "cancelled");

    // A paid unit stays sold; the cancelled one came back.
    let view = c.sale("sm");
    assert_eq!(view["sold"], 1, "{view}");
    assert_eq!(view["remaining"], 4, "{view}");

    for path in [
        "/orders/1-404",
        "/orders/no-such-order/pay",
        "/orders/no-such-order/cancel",
    ] {
        let resp = if path.ends_with("404") {
            c.get(path)
        } else {
            c.request("POST", path, &[], None)
        };
        assert_error(&resp, 404, "not_found");
    }

    let journal = node.journal();
    assert_eq!(journal.count("order_paid", &paid_id), 1);
    assert_eq!(journal.count("order_cancelled", &paid_id), 0);
    assert_eq!(journal.count("order_cancelled", &cancelled_id), 1);
    assert_eq!(journal.count("order_paid", &cancelled_id), 0);
}

#[test]
fn unpaid_orders_expire_and_return_their_unit() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale(
        "exp",
        &json!({ "stock": 1, "per_user_limit": 1, "payment_timeout_s": 1 }),
    );
    // Paid orders never expire (2 s so that the pay beats the deadline).
    c.create_sale(
        "kept",
        &json!({ "stock": 1, "per_user_limit": 1, "payment_timeout_s": 2 }),
    );
    let before = now_s();
    let resp = c.purchase("exp", "alice");
    let order = assert_ok(&resp);
    let expires_at = order["expires_at"].as_u64().expect("expires_at");
    assert!(
        (before + 1..=now_s() + 1).contains(&expires_at),
        "expires_at {expires_at} is not about now + 1 s"
    );
    let order_id = resp.str("order_id");
    let kept_id = c.purchase("kept", "alice").str("order_id");
    assert_eq!(assert_ok(&c.pay(&kept_id))["status"], "paid");

    eventually(Duration::from_secs(6), "the order expires", || {
        (c.order(&order_id)["status"] == "expired").then_some(())
    });
    let view = c.sale("exp");
    assert_eq!(view["sold"], 0, "{view}");
    assert_eq!(view["state"], "open", "{view}");
    assert_error(&c.pay(&order_id), 409, "invalid_state");
    assert_error(&c.cancel(&order_id), 409, "invalid_state");
    assert_eq!(c.order(&order_id)["status"], "expired");
    // The unit is back, once.
    assert_ok(&c.purchase("exp", "bob"));
    assert_error(&c.purchase("exp", "carol"), 410, "sold_out");

    // The paid order outlives its deadline untouched.
    let kept_deadline = c.order(&kept_id)["expires_at"]
        .as_u64()
        .expect("expires_at");
    while now_s() <= kept_deadline + 1 {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.order(&kept_id)["status"], "paid");
    assert_eq!(c.sale("kept")["sold"], 1);

    let journal = node.journal();
    assert_eq!(journal.count("order_expired", &order_id), 1);
    assert_eq!(journal.count("order_expired", &kept_id), 0);
}

#[test]
fn cancel_and_expiry_survive_a_restart() {
    let mut node = Node::start();
    let mut c = node.client();
    c.create_sale(
        "short",
        &json!({ "stock": 2, "per_user_limit": 1, "payment_timeout_s": 1 }),
    );
    c.create_sale("long", &json!({ "stock": 3, "per_user_limit": 1 }));
    // (Only an expiry on the short sale: its deadline may be under 1 s
    // away, too close to race a cancel against.)
    let expired = c.purchase("short", "a").str("order_id");
    let paid = c.purchase("long", "c").str("order_id");
    assert_ok(&c.pay(&paid));
    let reserved = c.purchase("long", "d").str("order_id");
    let cancelled = c.purchase("long", "e").str("order_id");
    assert_ok(&c.cancel(&cancelled));
    eventually(Duration::from_secs(6), "the short order expires", || {
        (c.order(&expired)["status"] == "expired").then_some(())
    });
    drop(c);

    let expect = [
        (&expired, "expired"),
        (&paid, "paid"),
        (&reserved, "reserved"),
        (&cancelled, "cancelled"),
    ];
    let check = |c: &mut Client, when: &str| {
        for (id, status) in expect {
            assert_eq!(c.order(id)["status"], status, "order {id} {when}");
        }
        let short = c.sale("short");
        assert_eq!(
            (&short["sold"], &short["state"]),
            (&json!(0), &json!("open")),
            "{when}: {short}"
        );
        let long = c.sale("long");
        assert_eq!(
            (&long["sold"], &long["state"]),
            (&json!(2), &json!("open")),
            "{when}: {long}"
        );
    };
    check(&mut node.client(), "before the restart");
    node.restart();
    check(&mut node.client(), "after a graceful restart");
    node.kill();
    node.restart();
    let mut c = node.client();
    check(&mut c, "after SIGKILL and restart");

    // Repeats and impossible moves answer as before the restart.
    assert_eq!(assert_ok(&c.cancel(&cancelled))["status"], "cancelled");
    assert_error(&c.pay(&cancelled), 409, "invalid_state");
    assert_error(&c.pay(&expired), 409, "invalid_state");
    assert_error(&c.cancel(&paid), 409, "invalid_state");
    // The released units are sellable exactly once.
    for user in ["f", "g"] {
        assert_ok(&c.purchase("short", user));
    }
    assert_error(&c.purchase("short", "h"), 410, "sold_out");
    assert_ok(&c.purchase("long", "i"));
    assert_error(&c.purchase("long", "j"), 410, "sold_out");
    let sold = |c: &mut Client, sale: &str| -> Value { c.sale(sale)["sold"].clone() };
    assert_eq!(sold(&mut c, "short"), 2);
    assert_eq!(sold(&mut c, "long"), 3);

    let journal = node.journal();
    assert_eq!(journal.count("order_expired", &expired), 1);
    assert_eq!(journal.count("order_cancelled", &cancelled), 1);
}

#[test]
fn quantities_count_against_stock_and_limit() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("qty", &json!({ "stock": 3, "per_user_limit": 2 }));
    let body = |user: &str, q: u32| json!({ "user_id": user, "quantity": q }).to_string();

    let resp = c
        .try_purchase_raw("qty", body("alice", 2).as_bytes(), None)
        .expect("an answer");
    let order = assert_ok(&resp);
    assert_eq!(order["quantity"], 2, "{order}");
    let view = c.sale("qty");
    assert_eq!(
        (&view["sold"], &view["remaining"]),
        (&json!(2), &json!(1)),
        "{view}"
    );
    // Over the limit, alone or on top of what the user holds.
    for (user, q) in [("alice", 1), ("carol", 3)] {
        let resp = c
            .try_purchase_raw("qty", body(user, q).as_bytes(), None)
            .expect("an answer");
        assert_error(&resp, 409, "limit_exceeded");
    }
    assert_eq!(c.sale("qty")["sold"], 2);

    // Cancelling gives both the units and the limit back.
    assert_ok(&c.cancel(order["order_id"].as_str().expect("order_id")));
    assert_eq!(c.sale("qty")["sold"], 0);
    let resp = c
        .try_purchase_raw("qty", body("alice", 2).as_bytes(), None)
        .expect("an answer");
    assert_eq!(assert_ok(&resp)["quantity"], 2);
    assert_ok(&c.purchase("qty", "bob"));
    assert_error(&c.purchase("qty", "dave"), 410, "sold_out");
    let view = c.sale("qty");
    assert_eq!(
        (&view["sold"], &view["state"]),
        (&json!(3), &json!("sold_out")),
        "{view}"
    );
}

#[test]
fn an_order_due_while_the_node_was_down_expires_after_restart() {
    let mut node = Node::start();
    let mut c = node.client();
    c.create_sale(
        "down",
        &json!({ "stock": 1, "per_user_limit": 1, "payment_timeout_s": 1 }),
    );
    let order_id = c.purchase("down", "alice").str("order_id");
    let expires_at = c.order(&order_id)["expires_at"]
        .as_u64()
        .expect("expires_at");
    drop(c);
    node.kill();
    // Down past the deadline.
    while now_s() <= expires_at {
        std::thread::sleep(Duration::from_millis(100));
    }
    node.restart();
    let mut c = node.client();
    eventually(
        Duration::from_secs(6),
        "the order expires after the restart",
        || (c.order(&order_id)["status"] == "expired").then_some(()),
    );
    assert_eq!(c.sale("down")["sold"], 0);
    assert_ok(&c.purchase("down", "bob"));
    assert_error(&c.purchase("down", "carol"), 410, "sold_out");
    assert_eq!(node.journal().count("order_expired", &order_id), 1);
}
