//! The HTTP API in process: every handler driven through `Core::handle`
//! (no socket, no node process), each endpoint's documented statuses,
//! headers and bodies (docs/api.md, docs/openapi.yaml), on an embedded
//! authority whose order log is a real journal in a temp dir. The whole
//! binary runs in well under a few seconds; the process tests
//! (`tests/node.rs`) keep what needs a process: sockets, restarts, crashes,
//! timeouts, Redis and Kafka.
//!
//! Layout:
//! - [`Api`]: one node and one of its cores on a monoio runtime; requests
//!   in, parsed [`Answer`]s out. Its order log ([`TestLog`]) is the journal
//!   with two switches: hold appends (an attempt still being decided) and
//!   fail them (the log down).
//! - `service`: `/healthz`, `/metrics`, `/openapi.json`, `/dashboard`,
//!   `/admin/stats`, unknown routes, 405 with `Allow`.
//! - `admin`: `PUT /admin/sales/{id}`, `GET /sales/{id}`, the switches.
//! - `purchase`: 200 (logged before it is answered), replay, 409, 410,
//!   422, 400, 403, 404, 429, 503.
//! - `orders`: get, pay, cancel, their repeats and refusals.
//! - `buyers`: buyer tokens, ownership of orders, the payment token,
//!   tickets.

use std::cell::RefCell;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use queue::{Event, Journal, JournalOptions, LogError, OrderLog};
use seckill::auth::{self, BuyerKeys, Claims};
use seckill::config::Config;
use seckill::http::{Method, Request};
use seckill::node::{now_micros, now_s, Core, Node};
use serde_json::{json, Value};
use stock::EmbeddedAuthority;

const ADMIN: &str = "api-admin-token";
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The buyer key of the `buyers` tests (at least 16 characters).
const BUYER_KEY: &str = "api-buyer-key-0123456789";
const PAYMENT: &str = "api-payment-token";

/// The journal, with switches a test can pull.
struct TestLog {
    journal: Journal,
    /// Appends wait (stay pending) while set: an attempt still being decided.
    hold: Arc<AtomicBool>,
    /// Appends fail at once while set: the order log is down.
    fail: AtomicBool,
}

impl OrderLog for TestLog {
    fn append(&self, event: &Event) -> impl Future<Output = Result<(), LogError>> + 'static {
        let durable =
            (!self.fail.load(Ordering::SeqCst)).then(|| OrderLog::append(&self.journal, event));
        let hold = Arc::clone(&self.hold);
        async move {
            let Some(durable) = durable else {
                return Err(LogError::Unavailable("failed by the test".into()));
            };
            // The test polls again once it lets go.
            std::future::poll_fn(|_| match hold.load(Ordering::SeqCst) {
                true => Poll::Pending,
                false => Poll::Ready(()),
            })
            .await;
            durable.await
        }
    }

    fn close(&self) {
        self.journal.close();
    }
}

type TestCore = Core<EmbeddedAuthority, TestLog>;

/// One embedded node and its core 0, in process.
struct Api {
    dir: tempfile::TempDir,
    core: TestCore,
    rt: RefCell<monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>>,
}

/// One response as written by `Core::handle`.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn parse(out: &[u8]) -> Answer {
        let text = std::str::from_utf8(out).expect("responses are UTF-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("end of headers");
        let mut lines = head.split("\r\n");
        let status = lines.next().expect("a status line")[9..12]
            .parse()
            .expect("a status code");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let answer = Answer {
            status,
            headers,
            body: body.as_bytes().to_vec(),
        };
        assert_eq!(
            answer.header("content-length"),
            Some(answer.body.len().to_string().as_str()),
            "{answer}"
        );
        answer
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {self}"))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }

    /// Asserts a 200 with a JSON body and returns the body.
    #[track_caller]
    fn ok(&self) -> Value {
        assert_eq!(self.status, 200, "{self}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        self.json()
    }

    /// Asserts docs/api.md's error shape: the status, `{"error": code,
    /// "message": "..."}`, JSON, and Retry-After on 429 and 503.
    #[track_caller]
    fn is_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "expected {status} {code}: {self}");
        let body = self.json();
        assert_eq!(body["error"], code, "{self}");
        assert!(body["message"].is_string(), "{self}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        if status == 429 || status == 503 {
            let secs: u32 = self
                .header("retry-after")
                .unwrap_or_else(|| panic!("no Retry-After: {self}"))
                .parse()
                .expect("Retry-After in whole seconds");
            assert!(secs >= 1, "{self}");
        } else {
            assert_eq!(self.header("retry-after"), None, "{self}");
        }
    }
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:?} {}", self.status, self.headers, self.text())
    }
}

/// What one request carries besides method and path.
#[derive(Clone, Copy, Default)]
struct With<'a> {
    auth: Option<&'a str>,
    key: Option<&'a str>,
    body: &'a [u8],
}

impl Api {
    fn new() -> Api {
        Api::with(|_| {})
    }

    /// A node on `Config::default()` as `tune` changes it (one core, a
    /// temp data dir).
    fn with(tune: impl FnOnce(&mut Config)) -> Api {
        let dir = seckill_testkit::temp_dir("seckill-api-");
        let mut config = Config {
            data_dir: dir.path().join("data"),
            cores: 1,
            ..Config::default()
        };
        tune(&mut config);
        std::fs::create_dir_all(&config.data_dir).expect("data dir");
        let (journal, _) =
            Journal::open(&config.data_dir, JournalOptions::default()).expect("journal");
        let log = TestLog {
            journal,
            hold: Arc::default(),
            fail: AtomicBool::new(false),
        };
        let authority = EmbeddedAuthority::new(
            config.node_id,
            config.cores,
            config.idempotency_ttl_s,
            now_micros(),
        );
        let node = Arc::new(Node::new(config, authority, log, ADMIN.into()));
        let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        Api {
            dir,
            core: Core::new(0, node),
            rt: RefCell::new(rt),
        }
    }

    fn log(&self) -> &TestLog {
        &self.core.node.log
    }

    fn send(&self, method: Method, path: &str, with: With<'_>) -> Answer {
        let core = &self.core;
        self.rt
            .borrow_mut()
            .block_on(call(core, method, path, with))
    }

    fn get(&self, path: &str) -> Answer {
        self.send(Method::Get, path, With::default())
    }

    fn admin(&self, method: Method, path: &str, body: &Value) -> Answer {
        let body = body.to_string();
        let auth = format!("Bearer {ADMIN}");
        let with = With {
            auth: Some(&auth),
            body: if body == "null" { b"" } else { body.as_bytes() },
            ..With::default()
        };
        self.send(method, path, with)
    }

    /// Creates `sale`, asserting 200.
    fn create(&self, sale: &str, spec: Value) -> Value {
        self.admin(Method::Put, &format!("/admin/sales/{sale}"), &spec)
            .ok()
    }

    fn switch(&self, sale: &str, action: &str) -> Answer {
        self.admin(
            Method::Post,
            &format!("/admin/sales/{sale}/{action}"),
            &Value::Null,
        )
    }

    fn buy(&self, sale: &str, body: &Value, key: Option<&str>, auth: Option<&str>) -> Answer {
        let body = body.to_string();
        let with = With {
            auth,
            key,
            body: body.as_bytes(),
        };
        self.send(Method::Post, &format!("/sales/{sale}/purchase"), with)
    }

    /// Buys one unit for `user`, no key, no token.
    fn buy_one(&self, sale: &str, user: &str) -> Answer {
        self.buy(sale, &json!({ "user_id": user }), None, None)
    }

    fn order_call(&self, method: Method, order: &str, action: &str, auth: Option<&str>) -> Answer {
        let path = match action {
            "" => format!("/orders/{order}"),
            _ => format!("/orders/{order}/{action}"),
        };
        let with = With {
            auth,
            ..With::default()
        };
        self.send(method, &path, with)
    }

    /// The journal's events, read from the file.
    fn journal(&self) -> Vec<Value> {
        let path: PathBuf = self.dir.path().join("data").join(queue::journal::FILE_NAME);
        let bytes = std::fs::read(&path).expect("read the journal");
        queue::journal::frames(&bytes)
            .expect("the journal's magic")
            .map(|(_, payload)| serde_json::from_slice(payload).expect("a JSON event"))
            .collect()
    }

    fn journal_count(&self, kind: &str, order: &str) -> usize {
        self.journal()
            .iter()
            .filter(|e| e["type"] == kind && e["order_id"] == order)
            .count()
    }
}

/// One request through `Core::handle`, its answer parsed.
async fn call(core: &TestCore, method: Method, path: &str, with: With<'_>) -> Answer {
    let auth = with.auth.map(|a| a.as_bytes());
    let req = Request {
        method,
        path,
        idempotency_key: with.key.map(str::as_bytes),
        authorization: auth,
        body: with.body,
        keep_alive: true,
        expects_continue: false,
        request_id: None,
        traceparent: None,
    };
    let (mut out, mut scratch) = (Vec::new(), Vec::new());
    let keep_alive = core.handle(&req, PEER, &mut out, &mut scratch).await;
    assert!(keep_alive, "a keep-alive request stays open");
    Answer::parse(&out)
}

/// Polls `fut` once: whether it finished.
async fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
    let mut fut = Some(fut);
    std::future::poll_fn(move |cx| Poll::Ready(fut.take().expect("polled once").poll(cx))).await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A buyer token for `sub` (a ticket for `sale` if given), valid 10 min.
fn token(sub: &str, sale: Option<&str>) -> String {
    let claims = Claims {
        sub,
        sale,
        exp: now_s() + 600,
        nbf: None,
    };
    bearer(&auth::mint(BUYER_KEY.as_bytes(), &claims))
}

mod service {
    use super::*;

    #[test]
    fn healthz_metrics_openapi_and_dashboard_answer_get() {
        let api = Api::new();
        let health = api.get("/healthz");
        assert_eq!(health.ok(), json!({ "status": "ok" }));

        api.create("m", json!({ "stock": 1, "per_user_limit": 1 }));
        api.buy_one("m", "alice").ok();
        let metrics = api.get("/metrics");
        assert_eq!(metrics.status, 200, "{metrics}");
        assert_eq!(
            metrics.header("content-type"),
            Some("text/plain; version=0.0.4")
        );
        let text = metrics.text();
        assert!(
            text.contains("# TYPE seckill_responses_total counter"),
            "{text}"
        );
        assert!(
            text.contains("seckill_purchases_total{outcome=\"200\"} 1"),
            "{text}"
        );

        let spec = api.get("/openapi.json").ok();
        assert!(
            spec["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3.1")),
            "{spec}"
        );
        for path in [
            "/sales/{sale_id}",
            "/sales/{sale_id}/purchase",
            "/orders/{order_id}",
            "/orders/{order_id}/pay",
            "/orders/{order_id}/cancel",
            "/admin/sales/{sale_id}",
            "/admin/sales/{sale_id}/pause",
            "/admin/sales/{sale_id}/resume",
            "/admin/sales/{sale_id}/close",
            "/healthz",
            "/metrics",
            "/admin/stats",
            "/dashboard",
            "/openapi.json",
        ] {
            assert!(spec["paths"][path].is_object(), "{path} is not in the spec");
        }

        let page = api.get("/dashboard");
        assert_eq!(page.status, 200);
        assert!(
            page.header("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "{page}"
        );
    }

    #[test]
    fn admin_stats_needs_the_admin_token_and_counts_purchases() {
        let api = Api::new();
        api.get("/admin/stats").is_error(401, "unauthorized");
        let wrong = bearer("not-the-token");
        let with = With {
            auth: Some(&wrong),
            ..With::default()
        };
        api.send(Method::Get, "/admin/stats", with)
            .is_error(401, "unauthorized");

        api.create("st", json!({ "stock": 1, "per_user_limit": 1 }));
        api.buy_one("st", "alice").ok();
        api.buy_one("st", "bob").is_error(410, "sold_out");
        let stats = api.admin(Method::Get, "/admin/stats", &Value::Null).ok();
        assert_eq!(stats["mode"], "embedded", "{stats}");
        let sale = stats["sales"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["sale_id"] == "st"))
            .unwrap_or_else(|| panic!("no sale st: {stats}"));
        assert_eq!(sale["sold"], 1, "{stats}");
        assert_eq!(sale["remaining"], 0, "{stats}");
        let node = &stats["nodes"][0];
        assert_eq!(node["purchases"]["200"], 1, "{stats}");
        assert_eq!(node["purchases"]["410"], 1, "{stats}");
    }

    #[test]
    fn unknown_routes_are_404_and_wrong_methods_405_with_allow() {
        let api = Api::new();
        for path in [
            "/",
            "/nope",
            "/sales",
            "/sales/",
            "/orders",
            "/orders/",
            "/sales/a/b",
            "/sales/a/purchase/x",
            "/orders/a/b",
        ] {
            api.get(path).is_error(404, "not_found");
        }
        let admin = bearer(ADMIN);
        let as_admin = With {
            auth: Some(&admin),
            ..With::default()
        };
        let cases: [(Method, &str, &str); 12] = [
            (Method::Post, "/healthz", "GET"),
            (Method::Put, "/metrics", "GET"),
            (Method::Post, "/openapi.json", "GET"),
            (Method::Post, "/dashboard", "GET"),
            (Method::Post, "/admin/stats", "GET"),
            (Method::Post, "/sales/s", "GET"),
            (Method::Get, "/sales/s/purchase", "POST"),
            (Method::Put, "/orders/o", "GET"),
            (Method::Get, "/orders/o/pay", "POST"),
            (Method::Get, "/orders/o/cancel", "POST"),
            (Method::Get, "/admin/sales/s", "PUT"),
            (Method::Get, "/admin/sales/s/pause", "POST"),
        ];
        for (method, path, allow) in cases {
            let answer = api.send(method, path, as_admin);
            answer.is_error(405, "bad_request");
            assert_eq!(answer.header("allow"), Some(allow), "{path}: {answer}");
        }
        // Admin paths ask for the token before anything else.
        api.send(Method::Get, "/admin/sales/s", With::default())
            .is_error(401, "unauthorized");
    }
}

mod admin {
    use super::*;

    #[test]
    fn put_sale_creates_once_and_get_sale_shows_it() {
        let api = Api::new();
        let spec = json!({ "stock": 3, "per_user_limit": 2, "payment_timeout_s": 60 });
        let path = "/admin/sales/phone-1";
        api.send(
            Method::Put,
            path,
            With {
                body: spec.to_string().as_bytes(),
                ..With::default()
            },
        )
        .is_error(401, "unauthorized");
        let created = api.admin(Method::Put, path, &spec).ok();
        assert_eq!(created["sale_id"], "phone-1");
        assert_eq!(created["state"], "open");
        assert_eq!(created["stock"], 3);
        assert_eq!(created["sold"], 0);
        assert_eq!(created["remaining"], 3);
        assert_eq!(created["per_user_limit"], 2);
        assert_eq!(created["payment_timeout_s"], 60);
        assert_eq!(created["ticket_required"], false);
        assert!(created["starts_at"].as_u64().is_some(), "{created}");
        assert_eq!(created["ends_at"], Value::Null);

        // The same definition again is 200; another is 409.
        assert_eq!(api.admin(Method::Put, path, &spec).ok(), created);
        api.admin(
            Method::Put,
            path,
            &json!({ "stock": 4, "per_user_limit": 2, "payment_timeout_s": 60 }),
        )
        .is_error(409, "invalid_state");

        assert_eq!(api.get("/sales/phone-1").ok(), created);
        api.get("/sales/phone-2").is_error(404, "not_found");
        // Logged once.
        let created_events = api
            .journal()
            .into_iter()
            .filter(|e| e["type"] == "sale_created" && e["sale_id"] == "phone-1")
            .count();
        assert_eq!(created_events, 1);
    }

    #[test]
    fn bad_sale_definitions_are_400() {
        let api = Api::new();
        for body in [
            json!({}),
            json!({ "stock": 0, "per_user_limit": 1 }),
            json!({ "stock": 1, "per_user_limit": 0 }),
            json!({ "stock": -1, "per_user_limit": 1 }),
            json!({ "stock": 1.5, "per_user_limit": 1 }),
            json!({ "stock": "1", "per_user_limit": 1 }),
            json!({ "stock": 1, "per_user_limit": 1, "starts_at": 20, "ends_at": 10 }),
            json!({ "stock": 1, "per_user_limit": 1, "ticket_required": true }),
        ] {
            api.admin(Method::Put, "/admin/sales/bad", &body)
                .is_error(400, "bad_request");
        }
        let auth = bearer(ADMIN);
        let raw = With {
            auth: Some(&auth),
            body: b"{not json",
            ..With::default()
        };
        api.send(Method::Put, "/admin/sales/bad", raw)
            .is_error(400, "bad_request");
        let spec = json!({ "stock": 1, "per_user_limit": 1 });
        api.admin(Method::Put, "/admin/sales/bad%20id", &spec)
            .is_error(400, "bad_request");
        api.get("/sales/bad").is_error(404, "not_found");
    }

    #[test]
    fn switches_pause_resume_and_close() {
        let api = Api::new();
        api.create("sw", json!({ "stock": 5, "per_user_limit": 5 }));
        let paused = api.switch("sw", "pause").ok();
        assert_eq!(paused["state"], "paused", "{paused}");
        assert_eq!(api.get("/sales/sw").ok()["state"], "paused");
        api.buy_one("sw", "alice").is_error(403, "sale_not_open");

        assert_eq!(api.switch("sw", "resume").ok()["state"], "open");
        api.buy_one("sw", "alice").ok();

        assert_eq!(api.switch("sw", "close").ok()["state"], "closed");
        api.buy_one("sw", "bob").is_error(403, "sale_not_open");
        // Close is final; closing again is a repeat.
        api.switch("sw", "resume").is_error(409, "invalid_state");
        api.switch("sw", "pause").is_error(409, "invalid_state");
        assert_eq!(api.switch("sw", "close").ok()["state"], "closed");
        assert_eq!(api.get("/sales/sw").ok()["state"], "closed");

        api.switch("none", "pause").is_error(404, "not_found");
        api.send(Method::Post, "/admin/sales/sw/pause", With::default())
            .is_error(401, "unauthorized");
    }
}

mod purchase {
    use super::*;

    #[test]
    fn a_purchase_is_logged_before_its_200() {
        let api = Api::new();
        api.create("p", json!({ "stock": 2, "per_user_limit": 1 }));
        let order = api
            .buy(
                "p",
                &json!({ "user_id": "alice", "quantity": 1 }),
                None,
                None,
            )
            .ok();
        let id = order["order_id"].as_str().expect("an order id").to_owned();
        assert_eq!(order["sale_id"], "p");
        assert_eq!(order["user_id"], "alice");
        assert_eq!(order["quantity"], 1);
        assert_eq!(order["status"], "reserved");
        assert!(
            order["expires_at"].as_u64().unwrap() >= now_s() + 899,
            "{order}"
        );
        assert_eq!(api.journal_count("order_reserved", &id), 1);
        let sale = api.get("/sales/p").ok();
        assert_eq!(
            (sale["sold"].clone(), sale["remaining"].clone()),
            (json!(1), json!(1))
        );
    }

    #[test]
    fn replays_reuse_and_in_progress_keys() {
        let api = Api::new();
        api.create("k", json!({ "stock": 1, "per_user_limit": 1 }));
        let body = json!({ "user_id": "alice", "quantity": 1 });
        let first = api.buy("k", &body, Some("key-1"), None);
        let order = first.ok();
        assert!(!first.replayed());
        // Sold out now: the retry still gets its order, marked replayed.
        let again = api.buy("k", &body, Some("key-1"), None);
        assert_eq!(again.ok(), order);
        assert!(again.replayed(), "{again}");
        api.buy(
            "k",
            &json!({ "user_id": "alice", "quantity": 2 }),
            Some("key-1"),
            None,
        )
        .is_error(422, "idempotency_key_reused");
        api.buy_one("k", "bob").is_error(410, "sold_out");
        // Replays are not logged again.
        let id = order["order_id"].as_str().unwrap();
        assert_eq!(api.journal_count("order_reserved", id), 1);

        // A retry while the first attempt waits for the log: 409.
        api.create("k2", json!({ "stock": 1, "per_user_limit": 1 }));
        api.log().hold.store(true, Ordering::SeqCst);
        let core = &api.core;
        let (first, retry) = api.rt.borrow_mut().block_on(async {
            let key = With {
                key: Some("key-2"),
                body: br#"{"user_id":"carol"}"#,
                ..With::default()
            };
            let mut first = std::pin::pin!(call(core, Method::Post, "/sales/k2/purchase", key));
            assert!(poll_once(first.as_mut()).await.is_pending());
            let retry = call(core, Method::Post, "/sales/k2/purchase", key).await;
            api.log().hold.store(false, Ordering::SeqCst);
            (first.await, retry)
        });
        retry.is_error(409, "in_progress");
        assert_eq!(first.ok()["user_id"], "carol");
    }

    #[test]
    fn refusals_have_their_codes() {
        let api = Api::new();
        api.create("r", json!({ "stock": 3, "per_user_limit": 1 }));
        api.buy_one("r", "alice").ok();
        api.buy_one("r", "alice").is_error(409, "limit_exceeded");
        api.buy("r", &json!({ "user_id": "bob", "quantity": 2 }), None, None)
            .is_error(409, "limit_exceeded");
        api.buy_one("nope", "alice").is_error(404, "not_found");
        for body in [
            json!({}),
            json!({ "user_id": "" }),
            json!({ "user_id": "x".repeat(65) }),
            json!({ "user_id": "bob", "quantity": 0 }),
            json!({ "user_id": "bob", "quantity": -1 }),
            json!({ "user_id": 7 }),
        ] {
            api.buy("r", &body, None, None).is_error(400, "bad_request");
        }
        let raw = With {
            body: b"{\"user_id\":",
            ..With::default()
        };
        api.send(Method::Post, "/sales/r/purchase", raw)
            .is_error(400, "bad_request");
        api.buy("r", &json!({ "user_id": "bob" }), Some(""), None)
            .is_error(400, "bad_request");
        api.buy(
            "r",
            &json!({ "user_id": "bob" }),
            Some(&"k".repeat(65)),
            None,
        )
        .is_error(400, "bad_request");

        // Not open yet.
        api.create(
            "later",
            json!({ "stock": 1, "per_user_limit": 1, "starts_at": now_s() + 3600 }),
        );
        assert_eq!(api.get("/sales/later").ok()["state"], "scheduled");
        api.buy_one("later", "alice").is_error(403, "sale_not_open");

        // Sold out.
        api.buy_one("r", "bob").ok();
        api.buy_one("r", "carol").ok();
        api.buy_one("r", "dave").is_error(410, "sold_out");
        assert_eq!(api.get("/sales/r").ok()["state"], "sold_out");
    }

    #[test]
    fn rate_limits_answer_429_with_retry_after() {
        let api = Api::with(|c| {
            c.rate_limit_user_per_s = 1.0;
            c.rate_limit_user_burst = 1;
        });
        api.create("rl", json!({ "stock": 10, "per_user_limit": 10 }));
        api.buy_one("rl", "alice").ok();
        api.buy_one("rl", "alice").is_error(429, "rate_limited");
        // Another user is not limited by alice's rate.
        api.buy_one("rl", "bob").ok();
    }

    #[test]
    fn no_admission_token_is_503_overloaded() {
        let api = Api::with(|c| {
            c.admission_tokens = 1;
            c.admission_queue = 0;
        });
        api.create("o", json!({ "stock": 10, "per_user_limit": 10 }));
        let held = api.core.admission.try_acquire().expect("the only token");
        api.buy_one("o", "alice").is_error(503, "overloaded");
        drop(held);
        api.buy_one("o", "alice").ok();
    }

    #[test]
    fn a_failed_log_append_is_503_and_sells_nothing() {
        let api = Api::new();
        api.create("f", json!({ "stock": 1, "per_user_limit": 1 }));
        api.log().fail.store(true, Ordering::SeqCst);
        api.buy("f", &json!({ "user_id": "alice" }), Some("f-1"), None)
            .is_error(503, "unavailable");
        api.log().fail.store(false, Ordering::SeqCst);
        let sale = api.get("/sales/f").ok();
        assert_eq!(sale["sold"], 0, "{sale}");
        // The unit, the limit and the key went back: the retry buys it.
        let order = api
            .buy("f", &json!({ "user_id": "alice" }), Some("f-1"), None)
            .ok();
        assert_eq!(order["status"], "reserved");
    }
}

mod orders {
    use super::*;

    #[test]
    fn pay_and_cancel_move_once_and_repeat_as_200() {
        let api = Api::new();
        api.create("o", json!({ "stock": 2, "per_user_limit": 2 }));
        let a = api.buy_one("o", "alice").ok();
        let a = a["order_id"].as_str().unwrap();
        let b = api.buy_one("o", "alice").ok();
        let b = b["order_id"].as_str().unwrap();

        let shown = api.order_call(Method::Get, a, "", None).ok();
        assert_eq!(shown["status"], "reserved");
        assert_eq!(shown["order_id"], a);

        let paid = api.order_call(Method::Post, a, "pay", None).ok();
        assert_eq!(paid["status"], "paid");
        assert_eq!(api.order_call(Method::Post, a, "pay", None).ok(), paid);
        api.order_call(Method::Post, a, "cancel", None)
            .is_error(409, "invalid_state");
        assert_eq!(
            api.order_call(Method::Get, a, "", None).ok()["status"],
            "paid"
        );

        let cancelled = api.order_call(Method::Post, b, "cancel", None).ok();
        assert_eq!(cancelled["status"], "cancelled");
        assert_eq!(
            api.order_call(Method::Post, b, "cancel", None).ok(),
            cancelled
        );
        api.order_call(Method::Post, b, "pay", None)
            .is_error(409, "invalid_state");
        // The cancelled unit is on sale again, exactly once.
        let sale = api.get("/sales/o").ok();
        assert_eq!(
            (sale["sold"].clone(), sale["remaining"].clone()),
            (json!(1), json!(1))
        );
        assert_eq!(api.journal_count("order_paid", a), 1);
        assert_eq!(api.journal_count("order_cancelled", b), 1);

        for action in ["", "pay", "cancel"] {
            let method = if action.is_empty() {
                Method::Get
            } else {
                Method::Post
            };
            api.order_call(method, "1-nosuchorder", action, None)
                .is_error(404, "not_found");
        }
    }
}

mod buyers {
    use super::*;

    fn api() -> Api {
        Api::with(|c| {
            c.buyer_keys = BuyerKeys::new(&[BUYER_KEY]).expect("a buyer key");
            c.payment_token = Some(PAYMENT.into());
        })
    }

    #[test]
    fn purchases_need_a_valid_token_and_the_buyer_is_its_sub() {
        let api = api();
        api.create("b", json!({ "stock": 5, "per_user_limit": 5 }));
        let body = json!({ "user_id": "alice" });
        api.buy("b", &body, None, None)
            .is_error(401, "unauthorized");
        api.buy("b", &body, None, Some("Bearer not.a-token"))
            .is_error(401, "unauthorized");
        let forged = bearer(&auth::mint(
            b"another-key-0123456789",
            &Claims {
                sub: "alice",
                sale: None,
                exp: now_s() + 600,
                nbf: None,
            },
        ));
        api.buy("b", &body, None, Some(&forged))
            .is_error(401, "unauthorized");
        let expired = bearer(&auth::mint(
            BUYER_KEY.as_bytes(),
            &Claims {
                sub: "alice",
                sale: None,
                exp: now_s() - 10,
                nbf: None,
            },
        ));
        api.buy("b", &body, None, Some(&expired))
            .is_error(401, "unauthorized");
        let alice = token("alice", None);
        api.buy("b", &json!({ "user_id": "mallory" }), None, Some(&alice))
            .is_error(400, "bad_request");
        let order = api.buy("b", &json!({}), Some("alice-1"), Some(&alice)).ok();
        assert_eq!(order["user_id"], "alice");
        // Another buyer sending alice's key gets no view of her order.
        let bob = token("bob", None);
        api.buy("b", &json!({}), Some("alice-1"), Some(&bob))
            .is_error(422, "idempotency_key_reused");
        let replay = api.buy("b", &json!({}), Some("alice-1"), Some(&alice));
        assert!(replay.replayed(), "{replay}");
        assert_eq!(replay.ok(), order);
    }

    #[test]
    fn orders_answer_only_their_buyer_and_pay_takes_the_payment_token() {
        let api = api();
        api.create("own", json!({ "stock": 5, "per_user_limit": 5 }));
        let alice = token("alice", None);
        let bob = token("bob", None);
        let order = api.buy("own", &json!({}), None, Some(&alice)).ok();
        let id = order["order_id"].as_str().unwrap();

        api.order_call(Method::Get, id, "", None)
            .is_error(401, "unauthorized");
        api.order_call(Method::Get, id, "", Some(&bob))
            .is_error(404, "not_found");
        assert_eq!(
            api.order_call(Method::Get, id, "", Some(&alice)).ok(),
            order
        );
        let admin = bearer(ADMIN);
        assert_eq!(
            api.order_call(Method::Get, id, "", Some(&admin)).ok(),
            order
        );

        // Another buyer's cancel changes nothing.
        api.order_call(Method::Post, id, "cancel", Some(&bob))
            .is_error(404, "not_found");
        assert_eq!(
            api.order_call(Method::Get, id, "", Some(&alice)).ok()["status"],
            "reserved"
        );

        // Pay: never a buyer token; the payment or the admin token.
        api.order_call(Method::Post, id, "pay", Some(&alice))
            .is_error(401, "unauthorized");
        api.order_call(Method::Post, id, "pay", None)
            .is_error(401, "unauthorized");
        let payment = bearer(PAYMENT);
        let paid = api.order_call(Method::Post, id, "pay", Some(&payment)).ok();
        assert_eq!(paid["status"], "paid");
        assert_eq!(
            api.order_call(Method::Post, id, "pay", Some(&admin)).ok(),
            paid
        );

        // The buyer cancels their own reserved order.
        let other = api.buy("own", &json!({}), None, Some(&alice)).ok();
        let other = other["order_id"].as_str().unwrap();
        let cancelled = api
            .order_call(Method::Post, other, "cancel", Some(&alice))
            .ok();
        assert_eq!(cancelled["status"], "cancelled");
    }

    #[test]
    fn a_ticket_sale_sells_only_to_its_tickets() {
        let api = api();
        api.create(
            "tix",
            json!({ "stock": 5, "per_user_limit": 5, "ticket_required": true }),
        );
        api.create("plain", json!({ "stock": 5, "per_user_limit": 5 }));
        api.buy("tix", &json!({}), None, Some(&token("alice", None)))
            .is_error(401, "unauthorized");
        api.buy(
            "tix",
            &json!({}),
            None,
            Some(&token("alice", Some("plain"))),
        )
        .is_error(401, "unauthorized");
        api.buy("tix", &json!({}), None, Some(&token("alice", Some("tix"))))
            .ok();
        // A ticket is good for its sale only.
        api.buy(
            "plain",
            &json!({}),
            None,
            Some(&token("alice", Some("tix"))),
        )
        .is_error(401, "unauthorized");
    }
}
