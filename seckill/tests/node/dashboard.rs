//! The operator's dashboard: `GET /dashboard` is one small self-contained
//! page (no CDN, no token in it), and in a real headless Chromium, driven
//! over the DevTools protocol, it logs in with the admin token, shows the
//! sold count and the progress moving as purchases are made, and pauses
//! the sale with its button.
//!
//! Chromium is Debian's package (`scripts/chromium.sh` installs it); a
//! machine without it fails the test with a message naming that script.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use seckill_testkit::RedisServer;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use crate::cluster::{cluster_node, wait_for_sale};
use crate::support::{assert_error, assert_ok, eventually, Node, TOKEN};

#[test]
fn the_dashboard_page_is_small_self_contained_and_holds_no_token() {
    let node = Node::start();
    let mut c = node.client();
    let page = c.get("/dashboard");
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(html.len() < 48 * 1024, "the page is {} bytes", html.len());
    // Everything inline: no script, style or image fetched from elsewhere.
    for outside in ["src=", "<link", "url(", "@import", "//cdn"] {
        assert!(!html.contains(outside), "the page refers to {outside}");
    }
    // The one absolute URL is the SVG namespace, a name, not a fetch.
    let urls = html.matches("http://").count() + html.matches("https://").count();
    let svg_ns = html.matches("\"http://www.w3.org/2000/svg\"").count();
    assert_eq!(urls, svg_ns, "the page names an outside URL");
    assert!(!html.contains(TOKEN), "the page holds the token");
    // The token is asked for once, kept in sessionStorage and sent as a
    // header on every call: never in a URL.
    assert!(html.contains("id=\"login\""), "no login form");
    assert!(html.contains("sessionStorage"), "the token is not kept");
    assert!(html.contains("Authorization"), "the token is not sent");
    assert!(
        html.contains("/admin/stats"),
        "the page does not poll the stats"
    );
    assert_error(
        &c.request("POST", "/dashboard", &[], None),
        405,
        "bad_request",
    );
}

#[test]
fn in_chromium_the_dashboard_follows_the_sale_and_pauses_it() {
    let node = Node::start();
    let mut c = node.client();
    c.create_sale("show", &json!({ "stock": 10, "per_user_limit": 1 }));
    let mut browser = Browser::open(&format!("http://{}/dashboard", node.addr()));

    browser.wait_for(
        "the login form",
        "document.querySelector('#login') !== null",
    );
    browser.eval(&format!(
        "document.querySelector('#token').value = '{TOKEN}';
         document.querySelector('#login').requestSubmit(); true"
    ));
    let row = "document.querySelector('tr[data-sale=\"show\"]')";
    browser.wait_for(
        "the sale's row, nothing sold",
        &format!("{row} && {row}.querySelector('.sold').textContent === '0'"),
    );
    for user in ["u1", "u2", "u3"] {
        assert_ok(&c.purchase("show", user));
    }
    browser.wait_for(
        "3 sold, 30% on the progress bar",
        &format!(
            "{row}.querySelector('.sold').textContent === '3'
             && {row}.querySelector('.remaining').textContent === '7'
             && {row}.querySelector('.bar').dataset.progress === '30'"
        ),
    );
    browser.wait_for(
        "three 200s counted",
        "document.querySelector('#count-200').textContent === '3'",
    );
    let href = browser.eval("location.href");
    assert!(
        !href.as_str().unwrap_or_default().contains(TOKEN),
        "the token is in the URL: {href}"
    );

    browser.eval(&format!(
        "{row}.querySelector('button[data-action=\"pause\"]').click(); true"
    ));
    eventually(Duration::from_secs(10), "the sale paused", || {
        (c.sale("show")["state"] == "paused").then_some(())
    });
    browser.wait_for(
        "the row showing paused",
        &format!("{row}.querySelector('.state').textContent === 'paused'"),
    );
    assert_error(&c.purchase("show", "u4"), 403, "sale_not_open");

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let out = target_dir().join("dashboard.png");
    std::fs::write(&out, &png).expect("write the screenshot");
}

#[test]
fn in_chromium_a_cluster_dashboard_lists_every_node_under_load() {
    let redis = RedisServer::start();
    let a = cluster_node(&redis, 1, &[]);
    let b = cluster_node(&redis, 2, &[]);
    let mut c = a.client();
    c.create_sale("launch", &json!({ "stock": 400, "per_user_limit": 1 }));
    c.create_sale("encore", &json!({ "stock": 1000, "per_user_limit": 1 }));
    wait_for_sale(&[&a, &b], "launch");
    wait_for_sale(&[&a, &b], "encore");
    let mut browser = Browser::open(&format!("http://{}/dashboard", b.addr()));
    browser.wait_for(
        "the login form",
        "document.querySelector('#login') !== null",
    );
    browser.eval(&format!(
        "document.querySelector('#token').value = '{TOKEN}';
         document.querySelector('#login').requestSubmit(); true"
    ));

    // A crowd on both nodes for a few seconds: "launch" sells out, then
    // its buyers are told 410; "encore" keeps selling.
    let stop = Arc::new(AtomicBool::new(false));
    let crowd: Vec<_> = [a.addr(), b.addr()]
        .into_iter()
        .enumerate()
        .map(|(n, addr)| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = crate::support::Client::connect(addr);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let sale = if i % 3 == 0 { "encore" } else { "launch" };
                    let _ = c.try_purchase(sale, &format!("n{n}-u{i}"));
                    std::thread::sleep(Duration::from_millis(4));
                }
            })
        })
        .collect();
    browser.wait_for(
        "both nodes in the table, Redis health shown",
        "document.querySelector('tr[data-node=\"1\"]') !== null
         && document.querySelector('tr[data-node=\"2\"]') !== null
         && !document.querySelector('#redis').classList.contains('hidden')",
    );
    browser.wait_for(
        "launch sold out on the page",
        "document.querySelector('tr[data-sale=\"launch\"] .bar').dataset.progress === '100'
         && Number(document.querySelector('#count-410').textContent) > 0",
    );
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for t in crowd {
        t.join().expect("crowd thread");
    }
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    std::fs::write(target_dir().join("dashboard-cluster.png"), &png).expect("write the screenshot");
}

/// The workspace's target dir (where the screenshot goes).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Debian's Chromium (or `$SECKILL_CHROMIUM`); fails clearly when absent.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("SECKILL_CHROMIUM") {
        return PathBuf::from(p);
    }
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "Chromium is not installed: run scripts/chromium.sh (Debian's chromium \
         package) or set SECKILL_CHROMIUM to its path"
    );
}

/// A headless Chromium on one page, driven over the DevTools protocol.
struct Browser {
    _chromium: Chromium,
    ws: WebSocket<TcpStream>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = seckill_testkit::temp_dir("seckill-chromium-");
        // Killed on drop from here on, also when a step below panics.
        let mut chromium = Chromium(
            Command::new(chromium())
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,1000",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", profile.path().display()))
                .arg(url)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start chromium"),
        );
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/..."
        let stderr = chromium.0.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("DevTools listening on ws://") {
                    let _ = tx.send(rest.split('/').next().unwrap_or_default().to_owned());
                }
            }
        });
        let host = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("chromium did not open its DevTools port");
        let ws_url = eventually(Duration::from_secs(30), "chromium's page target", || {
            let list: Value = serde_json::from_str(&http_get(&host, "/json/list")?).ok()?;
            list.as_array()?
                .iter()
                .find(|t| t["type"] == "page")
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                .map(str::to_owned)
        });
        let stream = TcpStream::connect(&host).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream).expect("DevTools handshake");
        Browser {
            _chromium: chromium,
            ws,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Sends one DevTools command and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        self.ws.send(Message::text(msg)).expect("send to DevTools");
        loop {
            let msg = self.ws.read().expect("read from DevTools");
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page; its value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits (up to 30 s) until `expr` is true in the page.
    fn wait_for(&mut self, what: &str, expr: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let guarded =
            format!("(() => {{ try {{ return !!({expr}); }} catch (e) {{ return false; }} }})()");
        while self.eval(&guarded) != Value::Bool(true) {
            assert!(
                Instant::now() < deadline,
                "the dashboard never showed {what}; page: {}",
                self.eval("document.body ? document.body.innerText : ''")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&mut self) -> Vec<u8> {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        base64_decode(r["data"].as_str().expect("screenshot data"))
    }
}

/// The Chromium process, killed (and reaped) on drop. Debian's
/// `/usr/bin/chromium` is a shell script that execs the browser, so this is
/// the browser's own process; its helpers exit with it.
struct Chromium(Child);

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One plain HTTP GET on `host` (DevTools' JSON endpoints); the body.
fn http_get(host: &str, path: &str) -> Option<String> {
    let s = TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(&s, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").ok()?;
    let mut r = BufReader::new(s);
    let mut len = 0;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                len = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    String::from_utf8(body).ok()
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | value(c) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}
