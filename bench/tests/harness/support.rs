//! Test servers for the harness, thread per connection over `std::net`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use bench::admin::{self, SaleSetup};
use bench::scenario::KeyMode;
use bench::{run_load, LoadConfig, Mode, PurchaseMix, Recorder, Schedule, Workload};
use queue::{Event, EventKind, Journal, JournalOptions, KafkaLog, KafkaOptions, OrderLog};
use seckill_testkit::block_on;

/// Every test takes this so that none runs beside another: timing needs
/// quiet cores (the machine may have two; a spinning pacer takes one).
pub fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| Mutex::new(()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// One parsed request: method, path, headers (lowercased names), body.
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Reads one request from `stream`; `None` on EOF or error.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = req.parse(buf) {
            let headers: HashMap<String, String> = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() >= head + len {
                let r = Request {
                    method: req.method.unwrap_or("").to_string(),
                    path: req.path.unwrap_or("").to_string(),
                    headers,
                    body: buf[head..head + len].to_vec(),
                };
                buf.drain(..head + len);
                return Some(r);
            }
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn respond(stream: &mut TcpStream, status: u16, extra: &str, body: &str) -> bool {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        _ => "Other",
    };
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
    stream.write_all(text.as_bytes()).is_ok()
}

/// Serves `handler` on 127.0.0.1:0, a thread per connection, until dropped.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Server {
    fn start<H>(handler: H) -> Server
    where
        H: Fn(&Request, &mut TcpStream) -> bool + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let stopping = Arc::clone(&stop);
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let handler = Arc::clone(&handler);
                thread::spawn(move || {
                    let mut buf = Vec::new();
                    while let Some(req) = read_request(&mut stream, &mut buf) {
                        if !handler(&req, &mut stream) {
                            break;
                        }
                    }
                });
            }
        });
        Server { addr, stop }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Answers every request 200 after `delay`; requests that arrive during
/// the stall window (`stall_at` after the first request, for `stall_for`)
/// are held until the window ends, like a server frozen by a GC pause.
pub struct DelayServer {
    server: Server,
    pub requests: Arc<AtomicU64>,
    /// Per request, how long the server really took (after any stall):
    /// the delay plus the oversleep the OS added. Tests compare the
    /// harness with this rather than with the nominal delay, so a busy
    /// machine's late wake-ups are not blamed on the harness.
    handled: Arc<Mutex<Vec<Duration>>>,
}

pub struct DelayOptions {
    pub delay: Duration,
    pub stall_at: Duration,
    pub stall_for: Duration,
    /// Answer every n-th response with `connection: close` and close.
    pub close_every: Option<u64>,
}

impl DelayServer {
    pub fn start(opts: DelayOptions) -> DelayServer {
        let first: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
        let requests = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&requests);
        let handled = Arc::new(Mutex::new(Vec::new()));
        let times = Arc::clone(&handled);
        let server = Server::start(move |_req, stream| {
            let now = Instant::now();
            let t0 = *first.get_or_init(|| now);
            let n = counted.fetch_add(1, Ordering::Relaxed) + 1;
            let stall_start = t0 + opts.stall_at;
            let stall_end = stall_start + opts.stall_for;
            if now >= stall_start && now < stall_end {
                thread::sleep(stall_end - now);
            }
            let begun = Instant::now();
            thread::sleep(opts.delay);
            let close = opts
                .close_every
                .is_some_and(|k| n.checked_rem(k) == Some(0));
            let ok = respond(
                stream,
                200,
                if close { "connection: close\r\n" } else { "" },
                "ok",
            );
            times.lock().unwrap().push(begun.elapsed());
            ok && !close
        });
        DelayServer {
            server,
            requests,
            handled,
        }
    }

    /// The `q` quantile of the server's real handling times, in ms.
    pub fn handled_ms(&self, q: f64) -> f64 {
        let mut t: Vec<Duration> = self.handled.lock().unwrap().clone();
        t.sort();
        let i = ((q * t.len() as f64) as usize).min(t.len().saturating_sub(1));
        t.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }
}

/// What an [`AbruptServer`] does besides answering 200.
#[derive(Clone, Copy, Debug, Default)]
pub struct AbruptOptions {
    /// Every n-th request: close the connection with the request unread,
    /// which makes the kernel reset it (RST), and keep serving.
    pub reset_every: Option<u64>,
    /// After this many requests the server dies like a killed node: it
    /// stops listening (connects are refused) and resets every connection
    /// on its next request.
    pub die_after: Option<u64>,
    /// Every n-th request: read it and never answer (the connection stays
    /// open until the client closes it).
    pub ignore_every: Option<u64>,
}

/// A server that misbehaves at the transport level: resets connections,
/// dies mid-run, or swallows requests. Answers everything else 200 at once.
pub struct AbruptServer {
    addr: SocketAddr,
    counts: Arc<AbruptCounts>,
}

/// What an [`AbruptServer`] saw and did.
#[derive(Default)]
pub struct AbruptCounts {
    /// Requests that reached the server (reset ones included).
    pub requests: AtomicU64,
    pub answered: AtomicU64,
    /// Connections reset with a request unread.
    pub resets: AtomicU64,
    /// Requests read and never answered.
    pub ignored: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    dead: AtomicBool,
}

impl AbruptServer {
    pub fn start(opts: AbruptOptions) -> AbruptServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(AbruptCounts::default());
        let c = Arc::clone(&counts);
        thread::spawn(move || {
            for stream in listener.incoming() {
                // Dead: the listener goes away with this thread, so new
                // connections are refused (and any still queued are reset).
                if c.dead.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                c.connections.fetch_add(1, Ordering::SeqCst);
                let c = Arc::clone(&c);
                thread::spawn(move || abrupt_connection(stream, addr, opts, &c));
            }
        });
        AbruptServer { addr, counts }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Reads one of the counts, e.g. `server.count(|c| &c.resets)`.
    pub fn count(&self, which: impl Fn(&AbruptCounts) -> &AtomicU64) -> u64 {
        which(&self.counts).load(Ordering::SeqCst)
    }
}

impl Drop for AbruptServer {
    fn drop(&mut self) {
        if !self.counts.dead.swap(true, Ordering::SeqCst) {
            // Wake the accept loop so it sees the flag.
            let _ = TcpStream::connect(self.addr);
        }
    }
}

fn abrupt_connection(
    mut stream: TcpStream,
    addr: SocketAddr,
    opts: AbruptOptions,
    c: &AbruptCounts,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut one = [0u8; 1];
    // Wait for the next request without taking it, so that a reset leaves
    // it unread.
    while matches!(stream.peek(&mut one), Ok(n) if n > 0) {
        let n = c.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if opts.die_after.is_some_and(|d| n > d) && !c.dead.swap(true, Ordering::SeqCst) {
            // Wake the accept loop so it drops the listener.
            let _ = TcpStream::connect(addr);
        }
        let reset = c.dead.load(Ordering::SeqCst)
            || opts
                .reset_every
                .is_some_and(|k| n.checked_rem(k) == Some(0));
        if reset {
            c.resets.fetch_add(1, Ordering::SeqCst);
            return; // dropped with the request unread: RST
        }
        if read_request(&mut stream, &mut buf).is_none() {
            return;
        }
        if opts
            .ignore_every
            .is_some_and(|k| n.checked_rem(k) == Some(0))
        {
            c.ignored.fetch_add(1, Ordering::SeqCst);
            // Never answer; wait until the client gives up on the connection.
            while matches!(stream.read(&mut one), Ok(n) if n > 0) {}
            return;
        }
        // Counted before the answer leaves, so the client never sees more.
        c.answered.fetch_add(1, Ordering::SeqCst);
        if !respond(&mut stream, 200, "", "ok") {
            return;
        }
    }
}

/// Faults a [`FakeNode`] can be told to commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Keeps selling this many units past the stock.
    Oversell(u64),
    /// Answers 200 but never logs every n-th order.
    LoseEvery(u64),
    /// Ignores the per-user limit.
    IgnoreLimit,
    /// Says sold_out while this many units are still unsold.
    Strand(u64),
    /// Logs every n-th order twice, the very same event (an at-least-once
    /// redelivery): harmless on Kafka, a double-logged order in a journal.
    Redeliver(u64),
    /// Does not log `sale_created` when a sale is created (as a sale
    /// created on another node would look to the audit).
    SilentCreate,
}

struct Sale {
    stock: u64,
    limit: u64,
    sold: u64,
    held: HashMap<String, u64>,
    keys: HashMap<String, String>,
}

struct State {
    sales: HashMap<String, Sale>,
    next_order: u64,
}

/// A small seckill lookalike: admin PUT, GET sale, purchase with limits and
/// Idempotency-Key replays, and a real journal (`queue::Journal`) in its
/// data dir (with [`FakeNode::start_kafka`], a real Kafka topic as well). Answers 200 only once the order is durable, unless a fault
/// says otherwise.
pub struct FakeNode {
    server: Server,
    pub dir: tempfile::TempDir,
    journal: Arc<Journal>,
    kafka: Option<Arc<KafkaLog>>,
}

/// Where a [`FakeNode`] logs its orders.
struct Logs {
    journal: Arc<Journal>,
    kafka: Option<Arc<KafkaLog>>,
}

impl Logs {
    /// Durable in every log before it returns (delivery report for Kafka).
    fn append(&self, event: &Event) {
        block_on(self.journal.append(event)).unwrap();
        if let Some(kafka) = &self.kafka {
            block_on(kafka.append(event)).unwrap();
        }
    }
}

impl FakeNode {
    pub fn start(fault: Fault) -> FakeNode {
        FakeNode::start_logging(fault, None)
    }

    /// A fake cluster-mode node: every order also goes to the Kafka topic
    /// `topic` on `brokers` (queue's [`KafkaLog`], the node's producer),
    /// delivered before the 200; the same faults apply to both logs.
    pub fn start_kafka(fault: Fault, brokers: &str, topic: &str) -> FakeNode {
        let mut opts = KafkaOptions::new(brokers);
        opts.topic = topic.to_string();
        opts.partitions = 3;
        FakeNode::start_logging(fault, Some(Arc::new(KafkaLog::connect(&opts).unwrap())))
    }

    fn start_logging(fault: Fault, kafka: Option<Arc<KafkaLog>>) -> FakeNode {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        let journal = Arc::new(journal);
        let state = Arc::new(Mutex::new(State {
            sales: HashMap::new(),
            next_order: 0,
        }));
        let logs = Logs {
            journal: Arc::clone(&journal),
            kafka: kafka.clone(),
        };
        let server = Server::start(move |req, stream| {
            let (status, extra, body) = handle(&state, &logs, fault, req);
            respond(stream, status, extra, &body)
        });
        FakeNode {
            server,
            dir,
            journal,
            kafka,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr)
    }

    pub fn journal_path(&self) -> PathBuf {
        self.dir.path().join(queue::journal::FILE_NAME)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.journal.close();
        if let Some(kafka) = &self.kafka {
            kafka.close();
        }
    }
}

fn handle(
    state: &Mutex<State>,
    log: &Logs,
    fault: Fault,
    req: &Request,
) -> (u16, &'static str, String) {
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
    match (req.method.as_str(), parts.as_slice()) {
        ("PUT", ["admin", "sales", id]) => {
            let mut st = state.lock().unwrap();
            // A new sale is logged (on Kafka; the journal tests count
            // orders only), as the node logs it.
            if let (false, Some(kafka), false) = (
                st.sales.contains_key(*id),
                &log.kafka,
                fault == Fault::SilentCreate,
            ) {
                let created = Event::new(
                    1,
                    EventKind::SaleCreated {
                        sale_id: id.to_string(),
                        stock: body["stock"].as_u64().unwrap_or(0),
                        per_user_limit: body["per_user_limit"].as_u64().unwrap_or(1) as u32,
                        starts_at: 0,
                        ends_at: None,
                        payment_timeout_s: 900,
                        ticket_required: false,
                    },
                );
                block_on(kafka.append(&created)).unwrap();
            }
            st.sales.insert(
                id.to_string(),
                Sale {
                    stock: body["stock"].as_u64().unwrap_or(0),
                    limit: body["per_user_limit"].as_u64().unwrap_or(1),
                    sold: 0,
                    held: HashMap::new(),
                    keys: HashMap::new(),
                },
            );
            (200, "", "{}".into())
        }
        ("GET", ["sales", id]) => {
            let st = state.lock().unwrap();
            let Some(s) = st.sales.get(*id) else {
                return (404, "", r#"{"error":"not_found"}"#.into());
            };
            (
                200,
                "",
                serde_json::json!({
                    "sale_id": id, "state": "open", "stock": s.stock, "sold": s.sold,
                    "remaining": s.stock.saturating_sub(s.sold), "per_user_limit": s.limit,
                })
                .to_string(),
            )
        }
        ("POST", ["sales", id, "purchase"]) => {
            let user = body["user_id"].as_str().unwrap_or("").to_string();
            let key = req.headers.get("idempotency-key").cloned();
            let mut st = state.lock().unwrap();
            st.next_order += 1;
            let n = st.next_order;
            let Some(sale) = st.sales.get_mut(*id) else {
                return (404, "", r#"{"error":"not_found"}"#.into());
            };
            let order = |oid: &str| {
                serde_json::json!({
                    "order_id": oid, "sale_id": id, "user_id": user, "quantity": 1,
                    "status": "reserved", "expires_at": 9,
                })
                .to_string()
            };
            if let Some(k) = &key {
                if let Some(oid) = sale.keys.get(k) {
                    return (200, "idempotent-replayed: true\r\n", order(oid));
                }
            }
            let held = sale.held.get(&user).copied().unwrap_or(0);
            if held >= sale.limit && fault != Fault::IgnoreLimit {
                return (409, "", r#"{"error":"limit_exceeded"}"#.into());
            }
            let extra = match fault {
                Fault::Oversell(k) => k,
                _ => 0,
            };
            let stranded = match fault {
                Fault::Strand(k) => k,
                _ => 0,
            };
            if sale.sold + stranded >= sale.stock + extra {
                return (
                    410,
                    "",
                    r#"{"error":"sold_out","message":"no unit is left"}"#.into(),
                );
            }
            sale.sold += 1;
            *sale.held.entry(user.clone()).or_insert(0) += 1;
            let oid = format!("9-{n}");
            if let Some(k) = &key {
                sale.keys.insert(k.clone(), oid.clone());
            }
            let lose = matches!(fault, Fault::LoseEvery(k) if sale.sold % k == 0);
            if !lose {
                let event = Event::new(
                    1,
                    EventKind::OrderReserved {
                        order_id: oid.clone(),
                        sale_id: id.to_string(),
                        user_id: user.clone(),
                        quantity: 1,
                        expires_at: 9,
                        idempotency_key: key.clone(),
                        fingerprint: None,
                    },
                );
                // Durable before the 200, as the node does (under the lock:
                // a test server, not a fast one).
                log.append(&event);
                if matches!(fault, Fault::Redeliver(k) if sale.sold % k == 0) {
                    log.append(&event);
                }
            }
            (200, "", order(&oid))
        }
        _ => (404, "", r#"{"error":"not_found"}"#.into()),
    }
}

/// Creates sale `s2` (stock 20, one per user) on a clean fake node and
/// sends it a short open-loop crowd with hot retriers, every request keyed:
/// the answers to audit doctored copies of its order log against.
pub fn clean_sale_load(addr: SocketAddr) -> Recorder {
    let setup = SaleSetup {
        stock: 20,
        per_user_limit: 1,
        starts_at: None,
        payment_timeout_s: None,
    };
    admin::create_sale(addr, "t", "s2", &setup).unwrap();
    let mut cfg = LoadConfig::new(
        addr,
        Workload::Purchase(PurchaseMix {
            sale: "s2".into(),
            users: 1000,
            hot_users: 3,
            hot_share: 0.2,
            retry: 0.7,
            keys: KeyMode::All,
            quantity: 1,
            tokens: None,
        }),
    );
    cfg.mode = Mode::Open(Schedule::new(2000.0, Duration::from_millis(100)));
    cfg.connections = 4;
    cfg.duration = Duration::from_millis(200);
    run_load(&cfg, &mut |_, _| {}).unwrap()
}
