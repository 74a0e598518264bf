//! What every test needs: a real `seckill` process on a temp data dir
//! ([`Node`], on `seckill_testkit::Process`), a small blocking HTTP/1.1
//! client with keep-alive, pipelining and raw byte sends ([`Client`]), and
//! a reader of the order journal ([`read_journal`], on
//! `queue::journal::frames`) so that tests check the file itself, not the
//! node's word about it; likewise [`read_topic`] reads a Kafka topic whole.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use seckill_testkit::kafka::Broker;
use seckill_testkit::process::{self, Process};
use serde_json::{json, Value};

/// The admin token every test node runs with.
pub const TOKEN: &str = "it-admin-token-7f3a";
/// How long a node may take to print its banner (debug build, busy box).
const START_LIMIT: Duration = Duration::from_secs(30);
/// What the node prints on stdout once it listens, before its address.
pub const BANNER: &str = "seckill listening on http://";
/// How long a graceful stop may take.
const STOP_LIMIT: Duration = Duration::from_secs(20);
/// Socket read/write timeout of the test client: no test hangs on a node
/// that stopped answering.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A `seckill` child process on its own temp data dir. Killed on drop.
pub struct Node {
    child: Option<Process>,
    addr: SocketAddr,
    root: tempfile::TempDir,
    starts: usize,
    /// Flags added to every start (driver, config file, ...).
    extra: Vec<String>,
    /// Environment variables set on every start (e.g. a failpoint).
    env: Vec<(String, String)>,
}

impl Node {
    /// Starts a node on a fresh, empty data dir.
    pub fn start() -> Node {
        Node::start_with(&[])
    }

    /// Starts a node with `extra` flags added to the usual ones (they are
    /// used again by [`Node::restart`]). `{root}` in a flag stands for the
    /// node's temp root, e.g. for a `--config` file written there first.
    pub fn start_with(extra: &[&str]) -> Node {
        Node::start_in(seckill_testkit::temp_dir("seckill-it-"), extra)
    }

    /// Like [`Node::start_with`], in a temp root made by the caller.
    pub fn start_in(root: tempfile::TempDir, extra: &[&str]) -> Node {
        Node::start_in_env(root, extra, &[])
    }

    /// A cluster node (`--redis URL --node-id ID`) whose config file holds
    /// a short lease TTL and Redis timeout (a killed node's lease comes
    /// back within a test's time), then `toml`; `extra` flags and `env`
    /// as for [`Node::start_in_env`].
    pub fn start_cluster(
        redis_url: &str,
        id: u32,
        toml: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Node {
        let root = seckill_testkit::temp_dir("seckill-cluster-");
        std::fs::write(
            root.path().join("seckill.toml"),
            format!("lease_ttl_s = 2\nredis_timeout_ms = 300\n{toml}"),
        )
        .expect("write config");
        let id = id.to_string();
        let mut args = vec![
            "--redis",
            redis_url,
            "--node-id",
            id.as_str(),
            "--config",
            "{root}/seckill.toml",
        ];
        args.extend_from_slice(extra);
        Node::start_in_env(root, &args, env)
    }

    /// Like [`Node::start_in`], with `env` set in the node's environment.
    pub fn start_in_env(root: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> Node {
        let root_text = root.path().display().to_string();
        let extra: Vec<String> = extra
            .iter()
            .map(|a| a.replace("{root}", &root_text))
            .collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (child, addr) = spawn(root.path(), 0, &extra, &env);
        Node {
            child: Some(child),
            addr,
            root,
            starts: 1,
            extra,
            env,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The running process's resident memory in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("the node is running").pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
    }

    /// The node's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// A new keep-alive connection to the node.
    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Every event in the node's journal, read from the file.
    pub fn journal(&self) -> Journal {
        read_journal(&self.data_dir())
    }

    /// SIGTERM, then waits for a clean exit (status 0).
    pub fn terminate(&mut self) {
        let mut child = self.child.take().expect("the node is running");
        // Killed if it does not stop in time.
        match child.terminate(STOP_LIMIT) {
            Some(s) => assert!(
                s.success(),
                "the node exited with {s} on SIGTERM; log:\n{}",
                self.log_tail()
            ),
            None => {
                panic!(
                    "the node did not stop within {STOP_LIMIT:?} of SIGTERM; log:\n{}",
                    self.log_tail()
                );
            }
        }
    }

    /// SIGKILL: the process dies wherever it is.
    pub fn kill(&mut self) {
        self.child.take().expect("the node is running").kill();
    }

    /// Starts a new process on the same data dir (stopping the running one
    /// gracefully first, if any). The port changes.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.terminate();
        }
        let (child, addr) = spawn(self.root.path(), self.starts, &self.extra, &self.env);
        self.starts += 1;
        self.child = Some(child);
        self.addr = addr;
    }

    /// Replaces the environment variables set on every later start.
    pub fn set_env(&mut self, env: &[(&str, &str)]) {
        self.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// Waits for the node to exit by itself (a failpoint), within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the node is running");
        child
            .wait_exit(limit)
            .unwrap_or_else(|| panic!("the node did not exit within {limit:?}"))
    }

    /// The last few KiB of every run's stderr, for failure messages.
    /// The node's whole log, every run.
    pub fn log_text(&self) -> String {
        (0..self.starts)
            .map(|n| std::fs::read_to_string(log_path(self.root.path(), n)).unwrap_or_default())
            .collect()
    }

    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for n in 0..self.starts {
            let text = process::tail(&log_path(self.root.path(), n), 4096);
            out.push_str(&format!("--- run {n} ---\n{text}\n"));
        }
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The process is killed as it drops.
        self.child.take();
        if std::thread::panicking() {
            eprintln!("node stderr:\n{}", self.log_tail());
        }
    }
}

fn log_path(root: &Path, n: usize) -> PathBuf {
    root.join(format!("node-{n}.log"))
}

/// Starts `seckill` and reads its stdout until the banner gives the port.
fn spawn(
    root: &Path,
    n: usize,
    extra: &[String],
    env: &[(String, String)],
) -> (Process, SocketAddr) {
    let data = root.join("data");
    let log = log_path(root, n);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_seckill"));
    cmd.arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(&data)
        .arg("--admin-token")
        .arg(TOKEN)
        .arg("--cores")
        .arg("2")
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("SECKILL_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    // The node reads SECKILL_* settings: none may leak in from the shell.
    process::clear_env(&mut cmd, "SECKILL_");
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let mut child = Process::spawn(&mut cmd, &log);
    match child.wait_for_line(BANNER, START_LIMIT) {
        Some(addr) => (child, addr.parse().expect("the banner has an address")),
        None => {
            child.kill();
            panic!(
                "the node did not print its banner within {START_LIMIT:?}; stderr:\n{}",
                child.log()
            );
        }
    }
}

/// One HTTP response.
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {self}"))
    }

    /// A string field of the JSON body.
    pub fn str(&self, field: &str) -> String {
        match &self.json()[field] {
            Value::String(s) => s.clone(),
            other => panic!("field {field} is {other}, not a string: {self}"),
        }
    }

    /// The `error` code of an error body ("" when there is none).
    pub fn error_code(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    pub fn is_replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }

    pub fn closes(&self) -> bool {
        self.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.text())
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?} {}", self.status, self.headers, self.text())
    }
}

/// Asserts an error answer of docs/api.md's shape: the status, a JSON body
/// `{"error": code, "message": "..."}`, JSON content type.
#[track_caller]
pub fn assert_error(resp: &Response, status: u16, code: &str) {
    assert_eq!(resp.status, status, "expected {status} {code}, got {resp}");
    let body: Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {resp}"));
    assert_eq!(body["error"], code, "wrong error code: {resp}");
    assert!(body["message"].is_string(), "no message: {resp}");
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "{resp:?}"
    );
    if status == 503 || status == 429 {
        assert!(
            resp.header("retry-after").is_some(),
            "no Retry-After: {resp:?}"
        );
    }
}

/// Asserts a 200 with a JSON body and returns the body.
#[track_caller]
pub fn assert_ok(resp: &Response) -> Value {
    assert_eq!(resp.status, 200, "expected 200, got {resp}");
    resp.json()
}

/// A blocking HTTP/1.1 client on one keep-alive connection.
pub struct Client {
    stream: TcpStream,
    addr: SocketAddr,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            addr,
            buf: Vec::with_capacity(4096),
        })
    }

    /// A second handle on the connection, to send from another thread
    /// while this one reads.
    pub fn writer(&self) -> TcpStream {
        self.stream.try_clone().expect("clone the connection")
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local addr")
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).expect("set timeout");
    }

    /// Sends raw bytes as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// No more bytes from this side (half-close).
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Reads one response (skipping `100 Continue`).
    pub fn read_response(&mut self) -> io::Result<Response> {
        loop {
            let head_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                    break i + 4;
                }
                self.fill()?;
            };
            let head = std::str::from_utf8(&self.buf[..head_end])
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "non-UTF-8 head"))?
                .to_owned();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let status: u16 = status_line
                .strip_prefix("HTTP/1.1 ")
                .and_then(|s| s.get(..3))
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad status line {status_line:?}"),
                    )
                })?;
            let headers: Vec<(String, String)> = lines
                .filter(|l| !l.is_empty())
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            if status == 100 {
                self.buf.drain(..head_end);
                continue;
            }
            let len: usize = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map(|(_, v)| v.parse().expect("numeric content-length"))
                .unwrap_or(0);
            while self.buf.len() < head_end + len {
                self.fill()?;
            }
            let body = self.buf[head_end..head_end + len].to_vec();
            self.buf.drain(..head_end + len);
            return Ok(Response {
                status,
                headers,
                body,
            });
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the node closed the connection",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Whether the node closes the connection within `within` without
    /// sending anything more (EOF or reset).
    pub fn closed_by_peer(&mut self, within: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.set_read_timeout(within);
        let mut byte = [0u8; 1];
        let closed = match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
        };
        self.set_read_timeout(IO_TIMEOUT);
        closed
    }

    /// Sends one request and reads its response.
    pub fn try_request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        let bytes = encode(self.addr, method, path, headers, body);
        self.send_raw(&bytes)?;
        self.read_response()
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, &[], None)
    }

    pub fn post(&mut self, path: &str, body: &Value) -> Response {
        let body = body.to_string();
        self.request("POST", path, &[], Some(body.as_bytes()))
    }

    /// `POST /sales/{sale}/purchase` with a raw body and optional key.
    pub fn try_purchase_raw(
        &mut self,
        sale: &str,
        body: &[u8],
        key: Option<&str>,
    ) -> io::Result<Response> {
        let path = format!("/sales/{sale}/purchase");
        match key {
            Some(k) => self.try_request("POST", &path, &[("Idempotency-Key", k)], Some(body)),
            None => self.try_request("POST", &path, &[], Some(body)),
        }
    }

    pub fn try_purchase(&mut self, sale: &str, user: &str) -> io::Result<Response> {
        let body = json!({ "user_id": user, "quantity": 1 }).to_string();
        self.try_purchase_raw(sale, body.as_bytes(), None)
    }

    /// Buys one unit for `user`.
    pub fn purchase(&mut self, sale: &str, user: &str) -> Response {
        self.try_purchase(sale, user)
            .unwrap_or_else(|e| panic!("purchase {sale} for {user}: {e}"))
    }

    /// Buys `quantity` units for `user` with an Idempotency-Key.
    pub fn purchase_with_key(
        &mut self,
        sale: &str,
        user: &str,
        quantity: u32,
        key: &str,
    ) -> Response {
        let body = json!({ "user_id": user, "quantity": quantity }).to_string();
        self.try_purchase_raw(sale, body.as_bytes(), Some(key))
            .unwrap_or_else(|e| panic!("purchase {sale} for {user} with key {key}: {e}"))
    }

    /// `GET /sales/{sale}`, asserted 200.
    pub fn sale(&mut self, sale: &str) -> Value {
        assert_ok(&self.get(&format!("/sales/{sale}")))
    }

    /// `GET /orders/{order}`, asserted 200.
    pub fn order(&mut self, order: &str) -> Value {
        assert_ok(&self.get(&format!("/orders/{order}")))
    }

    pub fn pay(&mut self, order: &str) -> Response {
        self.request("POST", &format!("/orders/{order}/pay"), &[], None)
    }

    pub fn cancel(&mut self, order: &str) -> Response {
        self.request("POST", &format!("/orders/{order}/cancel"), &[], None)
    }

    /// `PUT /admin/sales/{sale}` with the admin token.
    pub fn put_sale(&mut self, sale: &str, spec: &Value) -> Response {
        let auth = format!("Bearer {TOKEN}");
        let body = spec.to_string();
        self.request(
            "PUT",
            &format!("/admin/sales/{sale}"),
            &[("Authorization", &auth)],
            Some(body.as_bytes()),
        )
    }

    /// Creates a sale, asserting 200; returns the sale view.
    pub fn create_sale(&mut self, sale: &str, spec: &Value) -> Value {
        let resp = self.put_sale(sale, spec);
        assert_ok(&resp)
    }

    /// `POST /admin/sales/{sale}/{action}` with the admin token.
    pub fn switch(&mut self, sale: &str, action: &str) -> Response {
        let auth = format!("Bearer {TOKEN}");
        self.request(
            "POST",
            &format!("/admin/sales/{sale}/{action}"),
            &[("Authorization", &auth)],
            None,
        )
    }
}

/// The bytes of one request: Host, Content-Type and Content-Length added.
pub fn encode(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    match body {
        Some(b) => {
            out.extend_from_slice(
                format!(
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    b.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(b);
        }
        None if method == "GET" => out.extend_from_slice(b"\r\n"),
        None => out.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The order journal as read from disk.
pub struct Journal {
    pub events: Vec<Value>,
    /// Bytes after the last good frame (a torn tail after a crash).
    pub torn_bytes: usize,
}

impl Journal {
    /// The `order_reserved` events of `sale`, in order.
    pub fn reserved(&self, sale: &str) -> Vec<&Value> {
        self.of_type("order_reserved")
            .filter(|e| e["sale_id"] == sale)
            .collect()
    }

    pub fn of_type<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.events.iter().filter(move |e| e["type"] == kind)
    }

    /// How many times each order id of `sale` appears as `order_reserved`.
    pub fn reserved_counts(&self, sale: &str) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for e in self.reserved(sale) {
            let id = e["order_id"].as_str().expect("order_id is a string");
            *counts.entry(id.to_owned()).or_insert(0) += 1;
        }
        counts
    }

    /// How many events of `kind` name `order_id`.
    pub fn count(&self, kind: &str, order_id: &str) -> usize {
        self.of_type(kind)
            .filter(|e| e["order_id"] == order_id)
            .count()
    }
}

/// Reads the journal of `dir`: its sealed segments `orders.journal.<gen>`
/// (oldest first), then `orders.journal`. Each file is the magic, then
/// `u32 LE len | u32 LE crc | JSON payload` frames. Every good frame must
/// decode as an event of schema version 1; reading a file stops at its
/// first short or bad-CRC frame (`torn_bytes` counts the live file's).
pub fn read_journal(dir: &Path) -> Journal {
    let segments = queue::journal::sealed_segments(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    let mut events = Vec::new();
    for (_, segment) in &segments {
        read_journal_file(segment, &mut events);
    }
    let torn_bytes = read_journal_file(&dir.join("orders.journal"), &mut events);
    Journal { events, torn_bytes }
}

/// Appends the events of one journal file to `events`; returns the bytes
/// after its last good frame.
fn read_journal_file(path: &Path, events: &mut Vec<Value>) -> usize {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut frames = queue::journal::frames(&bytes)
        .unwrap_or_else(|| panic!("{} does not start with the magic", path.display()));
    for (at, payload) in frames.by_ref() {
        let event: Value = serde_json::from_slice(payload)
            .unwrap_or_else(|e| panic!("journal frame at {at} is not JSON: {e}"));
        assert_eq!(event["v"], 1, "journal frame at {at}: {event}");
        assert!(event["at"].is_u64(), "journal frame at {at}: {event}");
        assert!(event["type"].is_string(), "journal frame at {at}: {event}");
        events.push(event);
    }
    bytes.len() - frames.end()
}

/// Unix time in seconds.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Polls `f` every 50 ms until it returns `Some`, or panics after `limit`.
#[track_caller]
pub fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One message of a Kafka topic: its headers (values as text) and payload.
pub struct TopicMessage {
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
}

/// Every message of `topic` on `broker`, read from the start of every
/// partition up to the high watermarks it had when the read began.
pub fn read_topic(broker: &Broker, topic: &str) -> Vec<TopicMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", format!("it-reader-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("topic metadata");
    let mut tpl = TopicPartitionList::new();
    let mut highs = HashMap::new();
    for p in metadata.topics()[0].partitions() {
        let (_, high) = consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .expect("watermarks");
        highs.insert(p.id(), high);
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&tpl).expect("assign partitions");
    let mut next: HashMap<i32, i64> = HashMap::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while highs
        .iter()
        .any(|(p, high)| next.get(p).copied().unwrap_or(0) < *high)
    {
        assert!(Instant::now() < deadline, "could not read the whole topic");
        if let Some(msg) = consumer.poll(Duration::from_millis(200)) {
            let msg = msg.expect("read a message");
            next.insert(msg.partition(), msg.offset() + 1);
            let mut headers = HashMap::new();
            if let Some(h) = msg.headers() {
                for header in h.iter() {
                    let value = String::from_utf8_lossy(header.value.unwrap_or_default());
                    headers.insert(header.key.to_owned(), value.into_owned());
                }
            }
            let payload = msg.payload().expect("payload").to_vec();
            out.push(TopicMessage { headers, payload });
        }
    }
    out
}
