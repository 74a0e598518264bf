//! Hostile and broken clients: malformed requests, garbage bytes, bad
//! bodies and headers, oversized input, slow clients, clients that do not
//! read their answers; and the good side of HTTP/1.1: pipelining and
//! keep-alive. The node answers each with the
//! right JSON error and keeps serving everyone else.

use std::io::{ErrorKind, Write};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{assert_error, assert_ok, encode, eventually, Client, Node};

/// How soon a node must close a connection it rejected.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);

#[test]
fn a_malformed_request_line_is_400_and_closes_the_connection() {
    let node = Node::start();
    let mut bystander = node.client();
    assert_eq!(bystander.get("/healthz").status, 200);

    let mut c = node.client();
    c.send_raw(b"GARBAGE\r\n\r\n").expect("send");
    let resp = c.read_response().expect("an answer to garbage");
    assert_error(&resp, 400, "bad_request");
    assert!(resp.closes(), "no connection: close: {resp:?}");
    assert!(c.closed_by_peer(CLOSE_WITHIN), "the connection stays open");

    // Other malformed heads.
    for raw in [
        &b"GET /healthz HTTP/9.9\r\n\r\n"[..],
        b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST /sales/x/purchase HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST /sales/x/purchase HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"POST /sales/x/purchase HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let mut c = node.client();
        c.send_raw(raw).expect("send");
        let resp = c.read_response().expect("an answer");
        assert_error(&resp, 400, "bad_request");
        assert!(
            c.closed_by_peer(CLOSE_WITHIN),
            "still open after {:?}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(bystander.get("/healthz").status, 200);
}

#[test]
fn binary_garbage_never_hurts_the_node() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("g", &json!({ "stock": 3, "per_user_limit": 1 }));
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..30 {
        let len = 16 + (rng.next() % 3000) as usize;
        let garbage: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let mut g = node.client();
        g.set_read_timeout(CLOSE_WITHIN);
        // The node may close early and reset the rest of the send.
        let _ = g.send_raw(&garbage);
        g.shutdown_write();
        match g.read_response() {
            Ok(resp) => {
                let code = match resp.status {
                    400 => "bad_request",
                    413 | 431 => "too_large",
                    _ => panic!("round {round}: garbage answered {resp}"),
                };
                assert_error(&resp, resp.status, code);
            }
            // Closed (or reset) without an answer is fine; a timeout is not.
            Err(e) => assert!(
                !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "round {round}: the node neither answered nor closed: {e}"
            ),
        }
        assert_eq!(c.get("/healthz").status, 200, "round {round}");
    }
    assert_ok(&c.purchase("g", "alice"));
    assert_eq!(c.sale("g")["sold"], 1);
}

#[test]
fn bad_purchase_requests_are_400() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("p", &json!({ "stock": 5, "per_user_limit": 5 }));
    let long_user = format!(r#"{{"user_id":"{}"}}"#, "u".repeat(65));
    let bodies: [&[u8]; 11] = [
        b"{bad json",
        b"",
        b"{}",
        br#"{"quantity":1}"#,
        br#"{"user_id":"a","quantity":0}"#,
        br#"{"user_id":"a","quantity":-1}"#,
        br#"{"user_id":"a","quantity":"1"}"#,
        br#"{"user_id":"a","quantity":1.5}"#,
        br#"{"user_id":""}"#,
        br#"{"user_id":5}"#,
        long_user.as_bytes(),
    ];
    for body in bodies {
        let resp = c.try_purchase_raw("p", body, None).expect("an answer");
        assert_eq!(
            resp.status,
            400,
            "{}: {resp}",
            String::from_utf8_lossy(body)
        );
        assert_error(&resp, 400, "bad_request");
    }
    let ok_body = br#"{"user_id":"alice","quantity":1}"#;
    let long_key = "k".repeat(65);
    for key in [long_key.as_str(), "", "has space", "tab\there", "caf\u{e9}"] {
        let resp = c
            .try_purchase_raw("p", ok_body, Some(key))
            .expect("an answer");
        assert_eq!(resp.status, 400, "key {key:?}: {resp}");
        assert_error(&resp, 400, "bad_request");
    }
    // The connection survived every 400 above, and the edges are accepted.
    let resp = c
        .try_purchase_raw("p", ok_body, Some(&"k".repeat(64)))
        .expect("an answer");
    assert_ok(&resp);
    let resp = c
        .try_purchase_raw("p", br#"{"user_id":"bob"}"#, None)
        .expect("an answer");
    assert_eq!(assert_ok(&resp)["quantity"], 1, "quantity defaults to 1");
    assert_eq!(c.sale("p")["sold"], 2, "no invalid request sold anything");

    assert_error(&c.get("/no/such/route"), 404, "not_found");
    assert_error(&c.post("/sales/p/refund", &json!({})), 404, "not_found");
}

/// The body is a JSON object; the same values as an array are not the
/// documented shape.
#[test]
fn a_purchase_body_must_be_a_json_object() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("obj", &json!({ "stock": 5, "per_user_limit": 5 }));
    for body in [&br#"["a",1]"#[..], br#"["a"]"#, b"\"a\"", b"1", b"null"] {
        let resp = c.try_purchase_raw("obj", body, None).expect("an answer");
        assert_eq!(
            resp.status,
            400,
            "{}: {resp}",
            String::from_utf8_lossy(body)
        );
        assert_error(&resp, 400, "bad_request");
    }
    assert_eq!(c.sale("obj")["sold"], 0, "no invalid request sold anything");
}

#[test]
fn oversized_headers_are_431() {
    let node = Node::start();
    let mut c = node.client();
    let pad = "a".repeat(9 * 1024);
    let raw = encode(node.addr(), "GET", "/healthz", &[("X-Pad", &pad)], None);
    c.send_raw(&raw).expect("send");
    let resp = c.read_response().expect("an answer");
    assert_error(&resp, 431, "too_large");
    assert!(c.closed_by_peer(CLOSE_WITHIN));

    // Many small headers adding up past the limit.
    let mut c = node.client();
    let value = "v".repeat(200);
    let names: Vec<String> = (0..45).map(|i| format!("X-H{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), value.as_str())).collect();
    c.send_raw(&encode(node.addr(), "GET", "/healthz", &headers, None))
        .expect("send");
    assert_error(&c.read_response().expect("an answer"), 431, "too_large");

    // Just under the limit is fine.
    let mut c = node.client();
    let pad = "a".repeat(7 * 1024);
    let resp = c.request("GET", "/healthz", &[("X-Pad", &pad)], None);
    assert_eq!(resp.status, 200, "{resp}");
}

#[test]
fn an_oversized_body_is_413() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("b", &json!({ "stock": 5, "per_user_limit": 1 }));
    c.send_raw(b"POST /sales/b/purchase HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20000\r\n\r\n")
        .expect("send");
    let resp = c.read_response().expect("an answer before the body");
    assert_error(&resp, 413, "too_large");
    assert!(c.closed_by_peer(CLOSE_WITHIN));

    // Exactly 16 KiB is within the limit.
    let mut body = br#"{"user_id":"big"}"#.to_vec();
    body.resize(16 * 1024, b' ');
    let mut c = node.client();
    let resp = c.try_purchase_raw("b", &body, None).expect("an answer");
    assert_ok(&resp);
    assert_eq!(c.sale("b")["sold"], 1);
}

#[test]
fn a_half_sent_request_blocks_nobody() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("slow", &json!({ "stock": 50, "per_user_limit": 1 }));

    // Slow clients on many connections (so on every core), each stuck
    // in the middle of a request.
    let mut slow: Vec<Client> = (0..16).map(|_| node.client()).collect();
    for s in &mut slow {
        s.send_raw(b"POST /sales/slow/purchase HTTP/1.1\r\n")
            .expect("send");
    }
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..8 {
        let mut fast = node.client();
        let started = Instant::now();
        let resp = fast.purchase("slow", &format!("fast-{i}"));
        let took = started.elapsed();
        assert_ok(&resp);
        assert!(took < Duration::from_secs(2), "a purchase took {took:?}");
    }
    // The slow ones finish their requests and are served too.
    for (i, s) in slow.iter_mut().enumerate() {
        let body = format!(r#"{{"user_id":"slow-{i}"}}"#);
        let rest = format!(
            "Host: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.send_raw(rest.as_bytes()).expect("send");
    }
    for s in &mut slow {
        assert_ok(&s.read_response().expect("the slow request's answer"));
    }
    assert_eq!(c.sale("slow")["sold"], 24);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("pipe", &json!({ "stock": 5, "per_user_limit": 1 }));
    let addr = node.addr();
    let buy = json!({ "user_id": "alice" }).to_string();
    let mut batch = encode(addr, "GET", "/healthz", &[], None);
    batch.extend(encode(
        addr,
        "POST",
        "/sales/pipe/purchase",
        &[],
        Some(buy.as_bytes()),
    ));
    batch.extend(encode(addr, "GET", "/sales/pipe", &[], None));
    batch.extend(encode(addr, "GET", "/sales/nope", &[], None));
    batch.extend(encode(
        addr,
        "POST",
        "/sales/pipe/purchase",
        &[],
        Some(buy.as_bytes()),
    ));
    c.send_raw(&batch).expect("one write");

    assert_eq!(assert_ok(&c.read_response().expect("1st"))["status"], "ok");
    let order = assert_ok(&c.read_response().expect("2nd"));
    assert_eq!(order["user_id"], "alice");
    assert_eq!(order["status"], "reserved");
    let view = assert_ok(&c.read_response().expect("3rd"));
    assert_eq!(view["sale_id"], "pipe");
    assert_eq!(
        view["sold"], 1,
        "the purchase before it was applied: {view}"
    );
    assert_error(&c.read_response().expect("4th"), 404, "not_found");
    assert_error(&c.read_response().expect("5th"), 409, "limit_exceeded");
    // And the connection goes on.
    assert_eq!(c.get("/healthz").status, 200);
}

#[test]
fn one_connection_serves_a_hundred_requests() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("ka", &json!({ "stock": 30, "per_user_limit": 1 }));
    let local = c.local_addr();
    let mut bought = 0;
    for i in 0..100 {
        let resp = if i % 2 == 0 {
            c.purchase("ka", &format!("user-{i}"))
        } else {
            c.get("/sales/ka")
        };
        assert!(
            !resp.closes(),
            "request {i} closed the connection: {resp:?}"
        );
        match resp.status {
            200 if i % 2 == 0 => bought += 1,
            200 => assert_eq!(resp.json()["sold"], bought, "request {i}"),
            _ => assert_error(&resp, 410, "sold_out"),
        }
    }
    assert_eq!(bought, 30);
    assert_eq!(c.local_addr(), local, "still the same connection");
}

/// A small deterministic generator for garbage bytes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn connection_close_and_http10_end_the_connection() {
    let node = Node::start();
    let addr = node.addr();
    let mut c = node.client();
    let resp = c.request("GET", "/healthz", &[("Connection", "close")], None);
    assert_eq!(resp.status, 200, "{resp}");
    assert!(resp.closes(), "{resp:?}");
    assert!(c.closed_by_peer(CLOSE_WITHIN));

    let mut c = Client::connect(addr);
    c.send_raw(b"GET /healthz HTTP/1.0\r\n\r\n").expect("send");
    let resp = c.read_response().expect("an answer");
    assert_eq!(resp.status, 200, "{resp}");
    assert!(
        c.closed_by_peer(CLOSE_WITHIN),
        "HTTP/1.0 without keep-alive"
    );
}

/// A client that drips a request a byte at a time is cut off by the
/// slow-client limit (10 s by default), however steadily it drips.
#[test]
fn a_dripping_client_is_cut_off() {
    let node = Node::start();
    let mut c = node.client();
    let started = Instant::now();
    let mut cut_off = false;
    for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: "
        .iter()
        .chain(std::iter::repeat(&b'a'))
    {
        if c.send_raw(&[*byte]).is_err() || c.closed_by_peer(Duration::from_millis(250)) {
            cut_off = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let took = started.elapsed();
    assert!(cut_off, "still connected after {took:?} of dripping");
    assert_eq!(node.client().get("/healthz").status, 200);
}

/// `GET /metrics` pipelined `n` times: about 2.5 KiB of answer each.
fn pipelined_metrics(node: &Node, n: usize) -> Vec<u8> {
    encode(node.addr(), "GET", "/metrics", &[], None).repeat(n)
}

/// Sends `bytes` on `client`'s connection from a thread of its own (the
/// send blocks while the node does not read, and fails once it closes).
fn send_in_background(client: &Client, bytes: Vec<u8>) -> thread::JoinHandle<()> {
    let mut writer = client.writer();
    thread::spawn(move || {
        let _ = writer.write_all(&bytes);
    })
}

/// The node's `seckill_connections_open` gauge.
fn open_connections(c: &mut Client) -> u64 {
    metric(c, "seckill_connections_open")
}

/// One value of the node's `GET /metrics`, by its name and labels.
fn metric(c: &mut Client, name: &str) -> u64 {
    let resp = c.get("/metrics");
    assert_eq!(resp.status, 200, "{resp}");
    resp.text()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {resp}"))
}

/// A node with a 2 s write timeout.
fn node_with_write_timeout_2s() -> Node {
    let root = seckill_testkit::temp_dir("seckill-it-");
    Node::start_in_env(root, &[], &[("SECKILL_WRITE_TIMEOUT_S", "2")])
}

/// Clients that pipeline requests with large answers and never read them
/// cost the node a bounded amount each: it stops reading a connection
/// while the answers it owes it are over the bound. Each client first
/// sends one 16 KiB request (so that its read buffer is as large as it
/// gets), then 1,500 pipelined `GET /metrics` (about 4 MiB of answers).
#[test]
fn unread_pipelined_answers_do_not_grow_the_node() {
    const HOGS: usize = 100;
    let node = Node::start();
    let mut c = node.client();
    assert_eq!(c.get("/metrics").status, 200);
    let before = node.rss_kib();

    let mut big = br#"{"user_id":"hog"}"#.to_vec();
    big.resize(16 * 1024, b' ');
    let requests = pipelined_metrics(&node, 1500);
    let mut hogs = Vec::with_capacity(HOGS);
    let mut senders = Vec::with_capacity(HOGS);
    for _ in 0..HOGS {
        let mut hog = node.client();
        let resp = hog.try_purchase_raw("none", &big, None).expect("an answer");
        assert_error(&resp, 404, "not_found");
        senders.push(send_in_background(&hog, requests.clone()));
        hogs.push(hog);
    }
    // The node answers what it will (the count of 200s stops moving, but
    // for this client's own `GET /metrics`), then its memory stays put.
    let mut peak = node.rss_kib();
    let mut answered = metric(&mut c, "seckill_responses_total{status=\"200\"}");
    let started = Instant::now();
    loop {
        thread::sleep(Duration::from_millis(500));
        peak = peak.max(node.rss_kib());
        let now = metric(&mut c, "seckill_responses_total{status=\"200\"}");
        let settled = now <= answered + 1;
        answered = now;
        if (settled && started.elapsed() > Duration::from_secs(2))
            || started.elapsed() > Duration::from_secs(15)
        {
            break;
        }
    }
    peak = peak.max(node.rss_kib());
    let grown_mib = peak.saturating_sub(before) / 1024;
    eprintln!("{HOGS} clients that read nothing: RSS {before} KiB -> {peak} KiB");
    assert!(
        grown_mib < 24,
        "{HOGS} clients that read nothing grew the node by {grown_mib} MiB"
    );
    // Everyone else is served meanwhile.
    assert_eq!(c.get("/healthz").status, 200);
    // The senders end once the node is gone.
    drop(node);
    drop(hogs);
    for s in senders {
        s.join().expect("sender thread");
    }
}

/// Bytes the kernel holds unacknowledged in the send queue of the node's
/// end of the connection from `client` (`tx_queue` in /proc/net/tcp).
fn node_send_queue(node: &Node, client: &Client) -> u64 {
    let (node_port, client_port) = (node.addr().port(), client.local_addr().port());
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table
        .lines()
        .skip(1)
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, queues) = (fields.get(1)?, fields.get(2)?, fields.get(4)?);
            if port(local)? != node_port || port(remote)? != client_port {
                return None;
            }
            u64::from_str_radix(queues.split(':').next()?, 16).ok()
        })
        .unwrap_or_else(|| panic!("no socket {node_port} -> {client_port} in /proc/net/tcp"))
}

/// What a client that reads nothing makes the kernel hold for the node is
/// bounded too: the node's send buffer is fixed, not grown by the kernel's
/// autotuning (up to 4 MiB a connection with Linux's defaults).
#[test]
fn unread_answers_queued_in_the_kernel_are_bounded() {
    let node = Node::start();
    let hog = node.client();
    let sender = send_in_background(&hog, pipelined_metrics(&node, 4000));
    // The node writes until its send queue is full, then waits: the queue
    // reaches its size within a second or two.
    let mut queued = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        thread::sleep(Duration::from_millis(250));
        queued = queued.max(node_send_queue(&node, &hog));
    }
    eprintln!("the node's send queue to a client that reads nothing: {queued} bytes");
    assert!(queued > 0, "the node wrote nothing");
    assert!(
        queued <= 256 * 1024,
        "the kernel holds {} KiB of answers for one client that reads nothing",
        queued / 1024
    );
    drop(node);
    drop(hog);
    sender.join().expect("sender thread");
}

/// A client that pipelines requests and reads none of the answers is
/// closed once its answers have waited `write_timeout_s` unsent.
#[test]
fn a_client_that_reads_nothing_is_closed_after_the_write_timeout() {
    let node = node_with_write_timeout_2s();
    let mut watcher = node.client();
    let hog = node.client();
    let sender = send_in_background(&hog, pipelined_metrics(&node, 4000));
    let started = Instant::now();
    eventually(Duration::from_secs(5), "the hog is connected", || {
        (open_connections(&mut watcher) == 2).then_some(())
    });
    eventually(
        Duration::from_secs(15),
        "the node closes the connection that reads nothing",
        || (open_connections(&mut watcher) == 1).then_some(()),
    );
    eprintln!("closed after {:?}", started.elapsed());
    sender.join().expect("sender thread");
    assert_eq!(watcher.get("/healthz").status, 200);
}

/// Reading a byte a second is not reading: the answers still wait unsent
/// past `write_timeout_s`, and the connection is closed.
#[test]
fn a_client_reading_a_byte_a_second_is_closed() {
    let node = node_with_write_timeout_2s();
    let mut watcher = node.client();
    let mut slow = node.client();
    let sender = send_in_background(&slow, pipelined_metrics(&node, 4000));
    let started = Instant::now();
    eventually(
        Duration::from_secs(5),
        "the slow reader is connected",
        || (open_connections(&mut watcher) == 2).then_some(()),
    );
    let mut bytes_read = 0;
    loop {
        // One byte (or the end of the stream), then a second's pause.
        if !slow.closed_by_peer(Duration::from_secs(1)) {
            bytes_read += 1;
        }
        if open_connections(&mut watcher) == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still connected after {bytes_read} bytes read in {:?}",
            started.elapsed()
        );
        thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "closed after {bytes_read} bytes read in {:?}",
        started.elapsed()
    );
    sender.join().expect("sender thread");
}

/// A client that pipelines far more than the bound and reads as it goes
/// gets every answer, in order, on the same connection.
#[test]
fn a_reading_client_gets_every_pipelined_answer_in_order() {
    const REQUESTS: usize = 3000;
    let node = Node::start();
    let mut c = node.client();
    for i in 0..10 {
        c.create_sale(
            &format!("o{i}"),
            &json!({ "stock": 10 + i, "per_user_limit": 1 }),
        );
    }
    let mut batch = Vec::new();
    for i in 0..REQUESTS {
        let path = if i % 2 == 0 {
            "/metrics".to_owned()
        } else {
            format!("/sales/o{}", i % 10)
        };
        batch.extend(encode(node.addr(), "GET", &path, &[], None));
    }
    let sender = send_in_background(&c, batch);
    for i in 0..REQUESTS {
        let resp = c
            .read_response()
            .unwrap_or_else(|e| panic!("answer {i}: {e}"));
        if i % 2 == 0 {
            assert_eq!(resp.status, 200, "answer {i}: {resp}");
            assert!(
                resp.text().contains("seckill_connections_open"),
                "answer {i} is not the metrics: {resp}"
            );
        } else {
            let view = assert_ok(&resp);
            assert_eq!(view["sale_id"], format!("o{}", i % 10), "answer {i}");
        }
    }
    sender.join().expect("sender thread");
    assert_eq!(c.get("/healthz").status, 200, "the connection goes on");
}

/// A method a path does not serve is 405 with the `Allow` header naming
/// the one it does (RFC 9110 §15.5.6: a 405 must carry `Allow`), and a
/// `bad_request` body; the connection stays usable.
#[test]
fn a_wrong_method_is_405_with_allow() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("m", &json!({ "stock": 3, "per_user_limit": 1 }));
    let admin = format!("Bearer {}", crate::support::TOKEN);
    for (method, path, allow) in [
        ("DELETE", "/sales/m", "GET"),
        ("GET", "/sales/m/purchase", "POST"),
        ("PUT", "/orders/1-1-m", "GET"),
        ("GET", "/orders/1-1-m/pay", "POST"),
        ("DELETE", "/orders/1-1-m/cancel", "POST"),
        ("POST", "/admin/sales/m", "PUT"),
        ("GET", "/admin/sales/m/pause", "POST"),
        ("PUT", "/admin/sales/m/close", "POST"),
        ("POST", "/healthz", "GET"),
        ("TRACE", "/metrics", "GET"),
        ("POST", "/openapi.json", "GET"),
    ] {
        let resp = c.request(method, path, &[("Authorization", &admin)], None);
        assert_error(&resp, 405, "bad_request");
        assert_eq!(
            resp.header("allow"),
            Some(allow),
            "{method} {path}: {resp:?}"
        );
    }
    assert_eq!(c.get("/healthz").status, 200);
}

/// A sale that refuses every buyer (sold out, closed) answers an unkeyed
/// purchase before its body is read: the same answer, byte for byte,
/// whatever the body, so the sold-out crowd costs no JSON parsing. A keyed
/// request still reads its body, so that a retry gets its first order.
#[test]
fn a_refused_sale_answers_before_the_body_is_read() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("gone", &json!({ "stock": 1, "per_user_limit": 1 }));
    let first = c.purchase_with_key("gone", "first", 1, "k-first");
    let order_id = assert_ok(&first)["order_id"].clone();
    c.create_sale("shut", &json!({ "stock": 5, "per_user_limit": 1 }));
    assert_eq!(c.switch("shut", "close").status, 200);

    let bodies: [&[u8]; 8] = [
        br#"{"user_id":"late","quantity":1}"#,
        b"{not json",
        b"",
        br#"["late",1]"#,
        br#"{"quantity":1}"#,
        br#"{"user_id":"late","quantity":0}"#,
        br#"{"user_id":"late","quantity":99}"#,
        br#"{"user_id":""}"#,
    ];
    for (sale, status, code) in [("gone", 410, "sold_out"), ("shut", 403, "sale_not_open")] {
        let well_formed = c
            .try_purchase_raw(sale, bodies[0], None)
            .expect("an answer");
        assert_error(&well_formed, status, code);
        // The same answer but for the request id, which is each request's
        // own (made by the node: none was sent).
        let without_id = |headers: &[(String, String)]| -> Vec<(String, String)> {
            headers
                .iter()
                .filter(|(name, _)| !name.eq_ignore_ascii_case("x-request-id"))
                .cloned()
                .collect()
        };
        for body in &bodies[1..] {
            let resp = c.try_purchase_raw(sale, body, None).expect("an answer");
            assert!(resp.header("x-request-id").is_some(), "{resp:?}");
            assert_eq!(
                (resp.status, without_id(&resp.headers), resp.text()),
                (
                    well_formed.status,
                    without_id(&well_formed.headers),
                    well_formed.text()
                ),
                "{sale}, body {:?}: {resp:?}",
                String::from_utf8_lossy(body)
            );
        }
        // Connection: close is kept on the refusal too.
        let resp = c
            .try_request(
                "POST",
                &format!("/sales/{sale}/purchase"),
                &[("Connection", "close")],
                Some(b"{not json"),
            )
            .expect("an answer");
        assert_error(&resp, status, code);
        assert!(resp.closes(), "{resp:?}");
        c = node.client();
    }

    // Keyed: the first order comes back; an unknown key is refused; the
    // body is still checked, and so is the key.
    let again = c.purchase_with_key("gone", "first", 1, "k-first");
    assert_eq!(assert_ok(&again)["order_id"], order_id);
    assert!(again.is_replayed());
    let other = c.purchase_with_key("gone", "late", 1, "k-late");
    assert_error(&other, 410, "sold_out");
    let resp = c
        .try_purchase_raw("gone", b"{not json", Some("k-first"))
        .expect("an answer");
    assert_error(&resp, 400, "bad_request");
    let resp = c
        .try_purchase_raw("gone", bodies[0], Some("has space"))
        .expect("an answer");
    assert_error(&resp, 400, "bad_request");
    // An unknown sale is 404 whatever the body.
    let resp = c
        .try_purchase_raw("nowhere", b"{not json", None)
        .expect("an answer");
    assert_error(&resp, 404, "not_found");
    assert_eq!(c.sale("gone")["sold"], 1);
}
