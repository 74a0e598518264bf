//! The operator's side: the admin token, sale definitions and their
//! validation, the sale gate (schedule, pause, resume, close), and sales
//! surviving a restart with their state.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{assert_error, assert_ok, eventually, now_s, Client, Node, TOKEN};

#[test]
fn admin_calls_need_the_token() {
    let node = Node::start();
    let mut c = node.client();
    let spec = json!({ "stock": 5, "per_user_limit": 1 }).to_string();
    let wrong = [
        None,
        Some("Bearer wrong-token".to_owned()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_owned()),
        Some("Bearer ".to_owned()),
    ];
    for auth in &wrong {
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let resp = c.request(
            "PUT",
            "/admin/sales/guarded",
            &headers,
            Some(spec.as_bytes()),
        );
        assert_error(&resp, 401, "unauthorized");
    }
    assert_error(&c.get("/sales/guarded"), 404, "not_found");

    c.create_sale("guarded", &json!({ "stock": 5, "per_user_limit": 1 }));
    for action in ["pause", "resume", "close"] {
        for auth in &wrong {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            let path = format!("/admin/sales/guarded/{action}");
            assert_error(
                &c.request("POST", &path, &headers, None),
                401,
                "unauthorized",
            );
        }
    }
    assert_eq!(c.sale("guarded")["state"], "open", "nothing switched");
    assert!(
        node.journal().of_type("sale_switched").next().is_none(),
        "a refused switch was logged"
    );
}

#[test]
fn the_gate_follows_the_schedule() {
    let node = Node::start();
    let mut c = node.client();
    let later = now_s() + 3600;
    let view = c.create_sale(
        "later",
        &json!({ "stock": 5, "per_user_limit": 1, "starts_at": later }),
    );
    assert_eq!(view["state"], "scheduled", "{view}");
    assert_eq!(view["starts_at"], later, "{view}");
    assert_eq!(c.sale("later")["state"], "scheduled");
    assert_error(&c.purchase("later", "alice"), 403, "sale_not_open");
    assert_error(
        &c.purchase_with_key("later", "alice", 1, "early-key"),
        403,
        "sale_not_open",
    );

    // RFC 3339 times work as well as Unix seconds.
    let view = c.create_sale(
        "rfc",
        &json!({
            "stock": 5,
            "per_user_limit": 1,
            "starts_at": "2099-01-01T00:00:00Z",
            "ends_at": "2099-01-02T00:00:00Z",
            "payment_timeout_s": 60,
        }),
    );
    assert_eq!(view["starts_at"], 4_070_908_800u64, "{view}");
    assert_eq!(view["ends_at"], 4_070_995_200u64, "{view}");
    assert_eq!(view["payment_timeout_s"], 60, "{view}");
    assert_eq!(view["state"], "scheduled", "{view}");

    // Past its end a sale is closed.
    let now = now_s();
    let view = c.create_sale(
        "over",
        &json!({ "stock": 5, "per_user_limit": 1, "starts_at": now - 7200, "ends_at": now - 3600 }),
    );
    assert_eq!(view["state"], "closed", "{view}");
    assert_error(&c.purchase("over", "alice"), 403, "sale_not_open");

    // A sale starting in a moment opens by itself.
    let soon = now_s() + 2;
    c.create_sale(
        "soon",
        &json!({ "stock": 5, "per_user_limit": 1, "starts_at": soon }),
    );
    assert_error(&c.purchase("soon", "alice"), 403, "sale_not_open");
    eventually(Duration::from_secs(6), "the sale opens", || {
        (c.sale("soon")["state"] == "open").then_some(())
    });
    assert!(now_s() >= soon, "opened before starts_at");
    assert_ok(&c.purchase("soon", "alice"));
    assert_eq!(c.sale("later")["sold"], 0);
}

#[test]
fn pause_resume_and_close_switch_the_gate() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("sw", &json!({ "stock": 10, "per_user_limit": 1 }));

    assert_eq!(assert_ok(&c.switch("sw", "pause"))["state"], "paused");
    assert_eq!(c.sale("sw")["state"], "paused");
    assert_error(&c.purchase("sw", "alice"), 403, "sale_not_open");
    assert_error(
        &c.purchase_with_key("sw", "alice", 1, "paused-key"),
        403,
        "sale_not_open",
    );

    assert_eq!(assert_ok(&c.switch("sw", "resume"))["state"], "open");
    assert_ok(&c.purchase("sw", "alice"));
    assert_eq!(c.sale("sw")["sold"], 1);

    let closed = assert_ok(&c.switch("sw", "close"));
    assert_eq!(closed["state"], "closed", "{closed}");
    assert_eq!(c.sale("sw")["state"], "closed");
    assert_error(&c.purchase("sw", "bob"), 403, "sale_not_open");
    assert_error(&c.switch("sw", "resume"), 409, "invalid_state");
    assert_error(&c.switch("sw", "pause"), 409, "invalid_state");
    assert_eq!(c.sale("sw")["state"], "closed");
    assert_error(&c.purchase("sw", "bob"), 403, "sale_not_open");

    for action in ["pause", "resume", "close"] {
        assert_error(&c.switch("ghost", action), 404, "not_found");
    }
    assert_eq!(c.sale("sw")["sold"], 1);
}

#[test]
fn a_sale_definition_is_validated_and_fixed_once_made() {
    let node = Node::start();
    let mut c = node.client();
    let starts_at = now_s() - 10;
    let spec = json!({ "stock": 7, "per_user_limit": 2, "starts_at": starts_at, "payment_timeout_s": 300 });
    let view = c.create_sale("fixed", &spec);
    assert_eq!(
        view,
        json!({
            "sale_id": "fixed", "state": "open", "stock": 7, "sold": 0, "remaining": 7,
            "per_user_limit": 2, "starts_at": starts_at, "ends_at": null, "payment_timeout_s": 300,
            "ticket_required": false,
        })
    );
    // The same definition again is fine; another one is refused.
    assert_eq!(assert_ok(&c.put_sale("fixed", &spec)), view);
    for (field, value) in [
        ("stock", json!(8)),
        ("per_user_limit", json!(1)),
        ("payment_timeout_s", json!(301)),
        ("starts_at", json!(starts_at + 1)),
    ] {
        let mut other = spec.clone();
        other[field] = value;
        assert_error(&c.put_sale("fixed", &other), 409, "invalid_state");
    }
    assert_eq!(c.sale("fixed"), view, "the first definition stands");

    let now = now_s();
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("stock 0", br#"{"stock":0,"per_user_limit":1}"#.to_vec()),
        ("stock -5", br#"{"stock":-5,"per_user_limit":1}"#.to_vec()),
        (
            "stock \"x\"",
            br#"{"stock":"x","per_user_limit":1}"#.to_vec(),
        ),
        ("stock 1.5", br#"{"stock":1.5,"per_user_limit":1}"#.to_vec()),
        (
            "per_user_limit 0",
            br#"{"stock":5,"per_user_limit":0}"#.to_vec(),
        ),
        ("missing stock", br#"{"per_user_limit":1}"#.to_vec()),
        ("missing per_user_limit", br#"{"stock":5}"#.to_vec()),
        (
            "payment_timeout_s 0",
            br#"{"stock":5,"per_user_limit":1,"payment_timeout_s":0}"#.to_vec(),
        ),
        (
            "starts_at not a time",
            br#"{"stock":5,"per_user_limit":1,"starts_at":"soon"}"#.to_vec(),
        ),
        (
            "ends_at before starts_at",
            format!(
                r#"{{"stock":5,"per_user_limit":1,"starts_at":{now},"ends_at":{}}}"#,
                now - 60
            )
            .into_bytes(),
        ),
        (
            "ends_at equal to starts_at",
            format!(r#"{{"stock":5,"per_user_limit":1,"starts_at":{now},"ends_at":{now}}}"#)
                .into_bytes(),
        ),
        ("bad JSON", br#"{"stock":5,"per_user_limit":1"#.to_vec()),
        ("not an object", b"[5,1]".to_vec()),
        ("empty body", Vec::new()),
    ];
    let auth = format!("Bearer {TOKEN}");
    for (what, body) in &bad {
        let resp = c.request(
            "PUT",
            "/admin/sales/invalid",
            &[("Authorization", &auth)],
            Some(body),
        );
        assert_eq!(resp.status, 400, "{what}: {resp}");
        assert_error(&resp, 400, "bad_request");
    }
    assert_error(&c.get("/sales/invalid"), 404, "not_found");
    // Sale ids: 1 to 64 of A-Z a-z 0-9 - _ . :
    let small = json!({ "stock": 5, "per_user_limit": 1 });
    for id in ["bad!id", "bad%20id", &"x".repeat(65)] {
        assert_error(&c.put_sale(id, &small), 400, "bad_request");
    }
    let longest = format!("{}-_.:", "x".repeat(60));
    assert_eq!(c.create_sale(&longest, &small)["sale_id"], longest.as_str());

    // Unknown sales.
    assert_error(&c.get("/sales/nope"), 404, "not_found");
    assert_error(&c.purchase("nope", "alice"), 404, "not_found");
    assert_eq!(
        node.journal().of_type("sale_created").count(),
        2,
        "only the valid sales were logged"
    );
}

/// A sale's numbers reach Redis's Lua, whose numbers are doubles: above
/// 2^53 they are no longer exact, so they are refused with 400.
#[test]
fn sale_numbers_lua_cannot_hold_exactly_are_400() {
    const EXACT: u64 = 1 << 53;
    let node = Node::start();
    let mut c = node.client();
    let now = now_s();
    let cases = [
        ("stock", json!({ "stock": EXACT + 1, "per_user_limit": 1 })),
        ("stock", json!({ "stock": u64::MAX, "per_user_limit": 1 })),
        (
            "per_user_limit",
            json!({ "stock": 5, "per_user_limit": EXACT + 1 }),
        ),
        (
            "payment_timeout_s",
            json!({ "stock": 5, "per_user_limit": 1, "payment_timeout_s": EXACT + 1 }),
        ),
        (
            "payment_timeout_s",
            json!({ "stock": 5, "per_user_limit": 1, "payment_timeout_s": u64::MAX }),
        ),
        // Milliseconds by size: u64::MAX ms is still 1.8e16 s.
        (
            "starts_at",
            json!({ "stock": 5, "per_user_limit": 1, "starts_at": u64::MAX }),
        ),
        (
            "ends_at",
            json!({ "stock": 5, "per_user_limit": 1, "starts_at": now, "ends_at": u64::MAX }),
        ),
        (
            "ends_at",
            json!({ "stock": 5, "per_user_limit": 1, "ends_at": 1e300 }),
        ),
    ];
    for (i, (field, spec)) in cases.iter().enumerate() {
        let resp = c.put_sale(&format!("big-{i}"), spec);
        assert_eq!(resp.status, 400, "{spec}: {resp}");
        assert_error(&resp, 400, "bad_request");
        assert!(resp.str("message").contains(field), "{spec}: {resp}");
    }
    // Exactly 2^53 units is exact, and accepted.
    let view = c.create_sale("exact", &json!({ "stock": EXACT, "per_user_limit": 1 }));
    assert_eq!(view["stock"], EXACT);
    assert_eq!(
        node.journal().of_type("sale_created").count(),
        1,
        "only the exact sale was logged"
    );
}

/// An operator retrying `PUT` with the very same body (no `starts_at`)
/// must get 200, not 409, even a second later.
#[test]
fn re_put_of_the_same_body_without_starts_at_is_accepted() {
    let node = Node::start();
    let mut c = node.client();
    let spec = json!({ "stock": 5, "per_user_limit": 1 });
    let first = c.create_sale("retry", &spec);
    // Let the clock pass a whole second.
    let t = now_s();
    while now_s() <= t {
        std::thread::sleep(Duration::from_millis(50));
    }
    let again = c.put_sale("retry", &spec);
    assert_eq!(again.status, 200, "re-PUT of the identical body: {again}");
    assert_eq!(again.json()["starts_at"], first["starts_at"]);
}

#[test]
fn sales_survive_a_restart_with_their_state() {
    let mut node = Node::start();
    let mut c = node.client();
    let later = now_s() + 3600;
    c.create_sale("open", &json!({ "stock": 5, "per_user_limit": 1 }));
    assert_ok(&c.purchase("open", "alice"));
    c.create_sale("paused", &json!({ "stock": 5, "per_user_limit": 1 }));
    assert_ok(&c.purchase("paused", "alice"));
    assert_ok(&c.switch("paused", "pause"));
    c.create_sale("closed", &json!({ "stock": 5, "per_user_limit": 1 }));
    assert_ok(&c.switch("closed", "pause"));
    assert_ok(&c.switch("closed", "resume"));
    assert_ok(&c.switch("closed", "close"));
    c.create_sale(
        "later",
        &json!({ "stock": 5, "per_user_limit": 1, "starts_at": later }),
    );
    let sales = ["open", "paused", "closed", "later"];
    let views: Vec<Value> = sales.iter().map(|s| c.sale(s)).collect();
    let states: Vec<&Value> = views.iter().map(|v| &v["state"]).collect();
    assert_eq!(states, ["open", "paused", "closed", "scheduled"]);
    drop(c);

    let check = |c: &mut Client, when: &str| {
        for (sale, view) in sales.iter().zip(&views) {
            assert_eq!(&c.sale(sale), view, "{sale} {when}");
        }
        assert_error(&c.purchase("paused", "bob"), 403, "sale_not_open");
        assert_error(&c.purchase("closed", "bob"), 403, "sale_not_open");
        assert_error(&c.purchase("later", "bob"), 403, "sale_not_open");
        assert_error(&c.purchase("open", "alice"), 409, "limit_exceeded");
    };
    node.restart();
    check(&mut node.client(), "after a graceful restart");
    node.kill();
    node.restart();
    let mut c = node.client();
    check(&mut c, "after SIGKILL and restart");

    assert_error(&c.switch("closed", "resume"), 409, "invalid_state");
    assert_eq!(assert_ok(&c.switch("paused", "resume"))["state"], "open");
    assert_ok(&c.purchase("paused", "bob"));
    assert_eq!(c.sale("paused")["sold"], 2);
}

#[test]
fn health_and_metrics_answer() {
    let node = Node::start();
    let mut c = node.client();
    let health = c.get("/healthz");
    assert_eq!(health.status, 200, "{health}");
    c.create_sale("m", &json!({ "stock": 4, "per_user_limit": 1 }));
    assert_ok(&c.purchase("m", "alice"));
    let metrics = c.get("/metrics");
    assert_eq!(metrics.status, 200, "{metrics}");
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{metrics:?}"
    );
    let text = metrics.text();
    assert!(text.contains("# TYPE "), "not Prometheus text:\n{text}");
    assert!(
        text.lines()
            .any(|l| l == r#"seckill_sale_units{sale_id="m",kind="sold"} 1"#),
        "no sold gauge for the sale:\n{text}"
    );
}
