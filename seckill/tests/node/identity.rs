//! Who may buy, and whose order it is: buyer tokens (HMAC-signed, any
//! listed key), ownership of orders (another buyer's order is answered
//! exactly like a missing one), the payment callback's token, unguessable
//! order ids, and the trusted mode without keys. Each scenario runs on one
//! embedded node (keys from the environment) and on two cluster nodes
//! sharing one real `redis-server` (keys from the TOML file), buying on
//! one node and checking on the other.
//!
//! Tokens are minted here with the RustCrypto crates, independently of the
//! node's own code.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use std::time::Duration;

use seckill_testkit::RedisServer;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::cluster::wait_for_sale;
use crate::support::{assert_error, assert_ok, eventually, now_s, Node, Response, TOKEN};

const KEY_OLD: &str = "it-buyer-key-old-0123456789abcdef";
const KEY_NEW: &str = "it-buyer-key-new-0123456789abcdef";
const PAYMENT: &str = "it-payment-token-51c2";

/// `base64url(payload) "." base64url(HMAC-SHA256(key, base64url(payload)))`.
fn token_with(key: &str, payload: &Value) -> String {
    let payload = URL_SAFE_NO_PAD.encode(payload.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{payload}.{sig}")
}

/// A token for `sub`, valid for ten minutes, signed with the first key.
fn token(sub: &str) -> String {
    token_with(KEY_OLD, &json!({ "sub": sub, "exp": now_s() + 600 }))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn buy(node: &Node, sale: &str, auth: Option<&str>, body: &Value) -> Response {
    buy_with_key(node, sale, auth, body, None)
}

fn buy_with_key(
    node: &Node,
    sale: &str,
    auth: Option<&str>,
    body: &Value,
    key: Option<&str>,
) -> Response {
    let mut headers = Vec::new();
    let auth = auth.map(bearer);
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    if let Some(key) = key {
        headers.push(("Idempotency-Key", key));
    }
    let body = body.to_string();
    node.client().request(
        "POST",
        &format!("/sales/{sale}/purchase"),
        &headers,
        Some(body.as_bytes()),
    )
}

/// `method` on `/orders/{order}{suffix}` with `auth` as the bearer token.
fn order_call(
    node: &Node,
    method: &str,
    order: &str,
    suffix: &str,
    auth: Option<&str>,
) -> Response {
    let auth = auth.map(bearer);
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    node.client()
        .request(method, &format!("/orders/{order}{suffix}"), &headers, None)
}

fn sold(node: &Node, sale: &str) -> u64 {
    node.client().sale(sale)["sold"].as_u64().unwrap()
}

/// Waits until every node counts `n` units of `sale` sold (cluster nodes
/// learn the count within a poll).
fn wait_sold(nodes: &[Node], sale: &str, n: u64) {
    for node in nodes {
        eventually(Duration::from_secs(5), "the sold count", || {
            (sold(node, sale) == n).then_some(())
        });
    }
}

/// One embedded node with both keys (from the environment) and the
/// payment token.
fn embedded() -> Vec<Node> {
    let root = seckill_testkit::temp_dir("seckill-identity-");
    let keys = format!("{KEY_OLD},{KEY_NEW}");
    vec![Node::start_in_env(
        root,
        &[],
        &[
            ("SECKILL_BUYER_KEYS", keys.as_str()),
            ("SECKILL_PAYMENT_TOKEN", PAYMENT),
        ],
    )]
}

/// Two cluster nodes on `redis`, keys and payment token in their TOML file.
fn cluster(redis: &RedisServer) -> Vec<Node> {
    (1..=2)
        .map(|id| {
            let toml = format!(
                "buyer_keys = [\"{KEY_OLD}\", \"{KEY_NEW}\"]\npayment_token = \"{PAYMENT}\"\n"
            );
            Node::start_cluster(&redis.url(), id, &toml, &[], &[])
        })
        .collect()
}

fn create(nodes: &[Node], sale: &str, spec: &Value) {
    nodes[0].client().create_sale(sale, spec);
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_for_sale(&refs, sale);
}

/// 401/401/401/401/400 and nothing sold; then a token of the second key
/// buys, on the other node.
fn bad_tokens_buy_nothing(nodes: &[Node]) {
    let (first, last) = (&nodes[0], &nodes[nodes.len() - 1]);
    create(nodes, "t", &json!({ "stock": 5, "per_user_limit": 1 }));
    let alice = json!({ "user_id": "alice", "quantity": 1 });
    assert_error(&buy(first, "t", None, &alice), 401, "unauthorized");
    let expired = token_with(KEY_OLD, &json!({ "sub": "alice", "exp": now_s() - 1 }));
    assert_error(
        &buy(first, "t", Some(&expired), &alice),
        401,
        "unauthorized",
    );
    let forged = token_with(
        "a-key-nobody-listed-0123456789",
        &json!({ "sub": "alice", "exp": now_s() + 600 }),
    );
    assert_error(&buy(first, "t", Some(&forged), &alice), 401, "unauthorized");
    for malformed in ["alice", "e30.e30", "not base64!.x", ""] {
        assert_error(
            &buy(last, "t", Some(malformed), &alice),
            401,
            "unauthorized",
        );
    }
    let later = token_with(
        KEY_OLD,
        &json!({ "sub": "alice", "exp": now_s() + 600, "nbf": now_s() + 300 }),
    );
    assert_error(&buy(first, "t", Some(&later), &alice), 401, "unauthorized");
    // A valid token for bob with alice in the body.
    assert_error(
        &buy(first, "t", Some(&token("bob")), &alice),
        400,
        "bad_request",
    );
    for node in nodes {
        assert_eq!(sold(node, "t"), 0, "nothing is sold");
    }
    // Rotation: a token signed with the second listed key buys.
    let newer = token_with(KEY_NEW, &json!({ "sub": "alice", "exp": now_s() + 600 }));
    let order = assert_ok(&buy(last, "t", Some(&newer), &alice));
    assert_eq!(order["user_id"], "alice");
    // The body may leave the buyer out: it is the token's `sub`.
    let order = assert_ok(&buy(
        first,
        "t",
        Some(&token("carol")),
        &json!({ "quantity": 1 }),
    ));
    assert_eq!(order["user_id"], "carol");
    wait_sold(nodes, "t", 2);
}

/// Another buyer's GET and cancel are answered like a missing order and
/// change nothing; a buyer token cannot pay; the payment token can.
fn orders_answer_their_buyer(nodes: &[Node]) {
    let (first, last) = (&nodes[0], &nodes[nodes.len() - 1]);
    create(nodes, "o", &json!({ "stock": 5, "per_user_limit": 1 }));
    let (alice, bob) = (token("alice"), token("bob"));
    let order = assert_ok(&buy_with_key(
        first,
        "o",
        Some(&alice),
        &json!({ "user_id": "alice" }),
        Some("alice-key-1"),
    ));
    let id = order["order_id"].as_str().unwrap().to_owned();
    let missing = order_call(last, "GET", &format!("{id}x"), "", Some(&bob));
    assert_error(&missing, 404, "not_found");
    for node in nodes {
        let got = order_call(node, "GET", &id, "", Some(&bob));
        assert_error(&got, 404, "not_found");
        assert_eq!(got.json(), missing.json(), "same answer as a missing order");
        let got = order_call(node, "POST", &id, "/cancel", Some(&bob));
        assert_error(&got, 404, "not_found");
        assert_error(&order_call(node, "GET", &id, "", None), 401, "unauthorized");
        assert_error(
            &order_call(node, "POST", &id, "/cancel", None),
            401,
            "unauthorized",
        );
    }
    // Bob cannot take alice's order by replaying her Idempotency-Key.
    let replay = buy_with_key(
        last,
        "o",
        Some(&bob),
        &json!({ "user_id": "bob" }),
        Some("alice-key-1"),
    );
    assert_ne!(replay.status, 200, "{replay}");
    assert!(!replay.text().contains(&id), "{replay}");
    for node in nodes {
        let got = assert_ok(&order_call(node, "GET", &id, "", Some(&alice)));
        assert_eq!(got["status"], "reserved");
        let admin = assert_ok(&order_call(node, "GET", &id, "", Some(TOKEN)));
        assert_eq!(admin["user_id"], "alice");
        assert_error(
            &order_call(node, "POST", &id, "/pay", Some(&alice)),
            401,
            "unauthorized",
        );
        assert_error(
            &order_call(node, "POST", &id, "/pay", None),
            401,
            "unauthorized",
        );
    }
    wait_sold(nodes, "o", 1);
    let paid = assert_ok(&order_call(last, "POST", &id, "/pay", Some(PAYMENT)));
    assert_eq!(paid["status"], "paid");
    // The owner can cancel her own order (here: no longer, it is paid).
    assert_error(
        &order_call(first, "POST", &id, "/cancel", Some(&alice)),
        409,
        "invalid_state",
    );
    // And her reserved one, from either node; the admin too.
    let second = assert_ok(&buy(last, "o", Some(&token("dave")), &json!({})));
    let second = second["order_id"].as_str().unwrap();
    let cancelled = assert_ok(&order_call(
        first,
        "POST",
        second,
        "/cancel",
        Some(&token("dave")),
    ));
    assert_eq!(cancelled["status"], "cancelled");
}

/// Consecutive order ids are not a sequence: the part beside the node
/// prefix (and, in cluster mode, the sale) is random.
fn ids_are_unguessable(nodes: &[Node]) {
    create(nodes, "ids", &json!({ "stock": 40, "per_user_limit": 1 }));
    let mut ids = Vec::new();
    for i in 0..20 {
        let node = &nodes[i % nodes.len()];
        let user = format!("u{i}");
        let order = assert_ok(&buy(node, "ids", Some(&token(&user)), &json!({})));
        ids.push(order["order_id"].as_str().unwrap().to_owned());
    }
    assert_no_sequence(&ids);
}

/// Asserts that no two ids' random parts differ by less than 2^32.
pub(crate) fn assert_no_sequence(ids: &[String]) {
    let mut values: Vec<u128> = ids
        .iter()
        .map(|id| {
            let random = id.split('-').nth(1).expect("a node prefix");
            assert!(random.len() <= 20, "order ids stay short: {id}");
            u128::from_str_radix(random, 36).unwrap_or_else(|e| panic!("{id}: {e}"))
        })
        .collect();
    values.sort_unstable();
    for pair in values.windows(2) {
        assert!(
            pair[1] - pair[0] > 1 << 32,
            "order ids in a guessable sequence: {ids:?}"
        );
    }
}

#[test]
fn embedded_bad_tokens_buy_nothing() {
    bad_tokens_buy_nothing(&embedded());
}

#[test]
fn embedded_orders_answer_only_their_buyer() {
    orders_answer_their_buyer(&embedded());
}

#[test]
fn embedded_order_ids_are_unguessable() {
    ids_are_unguessable(&embedded());
}

#[test]
fn cluster_bad_tokens_buy_nothing() {
    let redis = RedisServer::start();
    bad_tokens_buy_nothing(&cluster(&redis));
}

#[test]
fn cluster_orders_answer_only_their_buyer() {
    let redis = RedisServer::start();
    orders_answer_their_buyer(&cluster(&redis));
}

#[test]
fn cluster_order_ids_are_unguessable() {
    let redis = RedisServer::start();
    ids_are_unguessable(&cluster(&redis));
}

/// Without buyer keys the node trusts the body and says so at start; a
/// payment token, when set, is still required to pay.
#[test]
fn trusted_mode_warns_and_payment_token_still_binds() {
    let root = seckill_testkit::temp_dir("seckill-identity-");
    let node = Node::start_in_env(root, &[], &[("SECKILL_PAYMENT_TOKEN", PAYMENT)]);
    assert!(
        node.log_tail().contains("trusted mode"),
        "no trusted-mode warning: {}",
        node.log_tail()
    );
    let mut client = node.client();
    client.create_sale("s", &json!({ "stock": 2, "per_user_limit": 1 }));
    // Without keys there are no tickets to check.
    let ticketed = client.put_sale(
        "t",
        &json!({ "stock": 2, "per_user_limit": 1, "ticket_required": true }),
    );
    assert_error(&ticketed, 400, "bad_request");
    let order = assert_ok(&client.purchase("s", "alice"));
    let id = order["order_id"].as_str().unwrap();
    // Trusted: anyone reads the order.
    assert_eq!(client.order(id)["user_id"], "alice");
    assert_error(&client.pay(id), 401, "unauthorized");
    let paid = assert_ok(&order_call(&node, "POST", id, "/pay", Some(PAYMENT)));
    assert_eq!(paid["status"], "paid");
}

/// A ticket-only sale refuses tokens without its `sale` or with another
/// sale's, and sells to the right ticket; every node enforces it.
fn tickets_admit_only_their_sale(nodes: &[Node]) {
    let (first, last) = (&nodes[0], &nodes[nodes.len() - 1]);
    create(
        nodes,
        "tk",
        &json!({ "stock": 3, "per_user_limit": 1, "ticket_required": true }),
    );
    create(nodes, "plain", &json!({ "stock": 3, "per_user_limit": 1 }));
    let ticket = |sub: &str, sale: &str| {
        token_with(
            KEY_OLD,
            &json!({ "sub": sub, "exp": now_s() + 600, "sale": sale }),
        )
    };
    for node in nodes {
        let no_ticket = buy(node, "tk", Some(&token("alice")), &json!({}));
        assert_error(&no_ticket, 401, "unauthorized");
        let other = buy(node, "tk", Some(&ticket("alice", "plain")), &json!({}));
        assert_error(&other, 401, "unauthorized");
    }
    wait_sold(nodes, "tk", 0);
    for node in nodes {
        assert_eq!(node.client().sale("tk")["ticket_required"], true);
        assert_eq!(node.client().sale("plain")["ticket_required"], false);
    }
    let order = assert_ok(&buy(last, "tk", Some(&ticket("alice", "tk")), &json!({})));
    assert_eq!(order["user_id"], "alice");
    // A ticket is for its sale only.
    let elsewhere = buy(first, "plain", Some(&ticket("bob", "tk")), &json!({}));
    assert_error(&elsewhere, 401, "unauthorized");
    assert_ok(&buy(first, "plain", Some(&token("bob")), &json!({})));
    wait_sold(nodes, "tk", 1);
}

/// A sold-out sale checks the buyer token first (401), then answers 410
/// before it reads the body: a malformed body, or one naming another
/// buyer, gets the same 410 as a good one.
fn sold_out_checks_the_token_first(nodes: &[Node]) {
    let node = &nodes[nodes.len() - 1];
    create(nodes, "so", &json!({ "stock": 1, "per_user_limit": 1 }));
    let first = buy_with_key(
        &nodes[0],
        "so",
        Some(&token("alice")),
        &json!({}),
        Some("ka"),
    );
    let order_id = assert_ok(&first)["order_id"].clone();
    wait_sold(nodes, "so", 1);
    let raw = |auth: Option<&str>, body: &[u8]| {
        let auth = auth.map(bearer);
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        node.client()
            .request("POST", "/sales/so/purchase", &headers, Some(body))
    };
    let forged = token_with(
        "a-key-nobody-listed-0123456789",
        &json!({ "sub": "bob", "exp": now_s() + 600 }),
    );
    let elsewhere = token_with(
        KEY_OLD,
        &json!({ "sub": "bob", "exp": now_s() + 600, "sale": "t" }),
    );
    for auth in [
        None,
        Some(forged.as_str()),
        Some(elsewhere.as_str()),
        Some("junk"),
    ] {
        assert_error(&raw(auth, b"{not json"), 401, "unauthorized");
    }
    // The first refusal may find out at the shards; the next ones at the gate.
    let good = raw(Some(&token("bob")), br#"{"user_id":"bob"}"#);
    assert_error(&good, 410, "sold_out");
    for body in [&b"{not json"[..], br#"{"user_id":"alice"}"#, b""] {
        let resp = raw(Some(&token("bob")), body);
        assert_eq!(
            (resp.status, resp.text()),
            (good.status, good.text()),
            "{}: {resp:?}",
            String::from_utf8_lossy(body)
        );
    }
    // Alice's retry with her key still gets her order, on any node.
    let again = buy_with_key(node, "so", Some(&token("alice")), &json!({}), Some("ka"));
    assert_eq!(assert_ok(&again)["order_id"], order_id);
    assert!(again.is_replayed());
}

#[test]
fn embedded_sold_out_checks_the_token_first() {
    sold_out_checks_the_token_first(&embedded());
}

#[test]
fn cluster_sold_out_checks_the_token_first() {
    let redis = RedisServer::start();
    sold_out_checks_the_token_first(&cluster(&redis));
}

#[test]
fn embedded_tickets_admit_only_their_sale() {
    let mut nodes = embedded();
    tickets_admit_only_their_sale(&nodes);
    // The journal keeps the requirement over a restart.
    nodes[0].restart();
    assert_eq!(nodes[0].client().sale("tk")["ticket_required"], true);
    let again = buy(&nodes[0], "tk", Some(&token("carol")), &json!({}));
    assert_error(&again, 401, "unauthorized");
}

#[test]
fn cluster_tickets_admit_only_their_sale() {
    let redis = RedisServer::start();
    tickets_admit_only_their_sale(&cluster(&redis));
}

/// `seckill token` with the node's keys in its environment.
fn mint_with_tool(args: &[&str], keys: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_seckill"));
    seckill_testkit::process::clear_env(&mut cmd, "SECKILL_");
    cmd.arg("token")
        .args(args)
        .env("SECKILL_BUYER_KEYS", keys)
        .output()
        .expect("run seckill token")
}

/// `seckill token --sub alice [--sale S] [--ttl 10m]` prints a token the
/// node accepts (signed with the first key), a ticket with `--sale`.
#[test]
fn token_tool_mints_what_the_node_accepts() {
    let nodes = embedded();
    create(
        &nodes,
        "tool",
        &json!({ "stock": 3, "per_user_limit": 1, "ticket_required": true }),
    );
    let keys = format!("{KEY_OLD},{KEY_NEW}");
    let out = mint_with_tool(&["--sub", "alice", "--ttl", "10m"], &keys);
    assert!(out.status.success(), "{out:?}");
    let plain = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_error(
        &buy(&nodes[0], "tool", Some(&plain), &json!({})),
        401,
        "unauthorized",
    );
    let out = mint_with_tool(&["--sub", "alice", "--sale", "tool"], &keys);
    assert!(out.status.success(), "{out:?}");
    let ticket = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let order = assert_ok(&buy(&nodes[0], "tool", Some(&ticket), &json!({})));
    assert_eq!(order["user_id"], "alice");
    // Signed with the first key: a node that lists only the second refuses it.
    let (payload, sig) = ticket.split_once('.').unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY_OLD.as_bytes()).unwrap();
    mac.update(payload.as_bytes());
    assert_eq!(URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()), sig);
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["sale"], "tool");
    let exp = claims["exp"].as_u64().unwrap();
    assert!((now_s() + 590..=now_s() + 610).contains(&exp), "{claims}");
    // Without keys there is nothing to sign with.
    let out = mint_with_tool(&["--sub", "alice"], "");
    assert!(!out.status.success(), "{out:?}");
}
