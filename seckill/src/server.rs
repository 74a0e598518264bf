//! Thread per core: one OS thread, one monoio runtime and one SO_REUSEPORT
//! listener per core. The kernel spreads connections over the listeners; a
//! connection lives and dies on the core that accepted it.
//!
//! PERFORMANCE-CRITICAL PATH: [`serve_connection`]. Banned here: blocking
//! I/O, locks, logging per request, allocation per request (each connection
//! owns a read buffer, a write buffer and a body buffer, reused for every
//! request on it).

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use queue::OrderLog;
use stock::{OrderStatus, StockAuthority, StockError};
use tracing::{debug, info, warn};

use crate::clock::now_s;
use crate::config::Driver;
use crate::error::ApiError;
use crate::http::{self, Parsed};
use crate::node::{Core, Node};

/// How often the accept loop and the sweeper look at the shutdown flag.
const TICK: Duration = Duration::from_millis(100);
/// How long a stopping core waits for its requests in flight.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// Answers a connection may have queued before the node stops parsing its
/// requests and writes them out: what a client that does not read its
/// answers can make the node hold (plus one answer).
const PENDING_OUTPUT_LIMIT: usize = 64 * 1024;
/// SO_SNDBUF of every listener, inherited by its connections: fixed, so the
/// kernel does not grow a connection's send buffer up to tcp_wmem's max
/// (4 MiB by default) for a client that reads nothing. The kernel doubles
/// it for its bookkeeping: one batch of answers fits, with room to spare.
const SEND_BUFFER: usize = PENDING_OUTPUT_LIMIT;

/// Something a core runs once, inside its runtime, before it accepts
/// (the demo sale, in `main`).
pub type Setup<A, L> = Box<
    dyn FnOnce(Rc<Core<A, L>>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send,
>;

/// Runs the node until it is shut down: binds every core's listener, calls
/// `on_listening` with the bound address, serves, and returns once every
/// core has drained. `setup` runs on core 0 before it accepts.
pub fn run<A, L>(
    node: Arc<Node<A, L>>,
    setup: Option<Setup<A, L>>,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()>
where
    A: StockAuthority,
    L: OrderLog,
{
    let cores = node.config.cores;
    let (bound_tx, bound_rx) = mpsc::channel::<Result<SocketAddr, String>>();
    let mut threads = Vec::with_capacity(cores);
    let mut addr = node.config.listen;
    let mut setup = setup;
    // Core 0 binds first so that a port 0 becomes one concrete port that
    // the other cores then share through SO_REUSEPORT.
    for id in 0..cores {
        let core_node = node.clone();
        let tx = bound_tx.clone();
        let core_setup = if id == 0 { setup.take() } else { None };
        let thread = std::thread::Builder::new()
            .name(format!("seckill-core-{id}"))
            .spawn(move || run_core(id, core_node, addr, core_setup, tx))?;
        threads.push(thread);
        match bound_rx.recv() {
            Ok(Ok(bound)) => addr = bound,
            Ok(Err(e)) => {
                node.shut_down();
                for t in threads {
                    let _ = t.join();
                }
                anyhow::bail!("core {id} cannot listen on {addr}: {e}");
            }
            Err(_) => anyhow::bail!("core {id} died while starting"),
        }
    }
    info!(%addr, cores, driver = node.driver(), "listening");
    on_listening(addr);
    for t in threads {
        if t.join().is_err() {
            warn!("a core thread panicked");
        }
    }
    node.authority.close();
    node.log.close();
    info!("stopped");
    Ok(())
}

fn run_core<A, L>(
    id: usize,
    node: Arc<Node<A, L>>,
    addr: SocketAddr,
    setup: Option<Setup<A, L>>,
    bound: mpsc::Sender<Result<SocketAddr, String>>,
) where
    A: StockAuthority,
    L: OrderLog,
{
    let driver = node.config.driver;
    let work = core_main(id, node.clone(), addr, setup, bound.clone());
    let result = match driver {
        Driver::Legacy => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| {
                node.set_driver("legacy");
                rt.block_on(work)
            }),
        Driver::Uring => monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| {
                node.set_driver("io_uring");
                rt.block_on(work)
            }),
        Driver::Auto => monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .map(|mut rt| {
                node.set_driver(if monoio::utils::detect_uring() {
                    "io_uring"
                } else {
                    "legacy"
                });
                rt.block_on(work)
            }),
    };
    if let Err(e) = result {
        let _ = bound.send(Err(format!("cannot start the {driver:?} runtime: {e}")));
    }
}

async fn core_main<A, L>(
    id: usize,
    node: Arc<Node<A, L>>,
    addr: SocketAddr,
    setup: Option<Setup<A, L>>,
    bound: mpsc::Sender<Result<SocketAddr, String>>,
) where
    A: StockAuthority,
    L: OrderLog,
{
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(4096)
        .send_buf_size(SEND_BUFFER);
    let listener = match TcpListener::bind_with_config(addr, &opts) {
        Ok(l) => l,
        Err(e) => {
            let _ = bound.send(Err(e.to_string()));
            return;
        }
    };
    let core = Rc::new(Core::new(id, node.clone()));
    if let Some(setup) = setup {
        setup(core.clone()).await;
    }
    let _ = bound.send(listener.local_addr().map_err(|e| e.to_string()));
    monoio::spawn(sweep_expiries(core.clone()));
    while !node.is_shutting_down() {
        monoio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    monoio::spawn(serve(core.clone(), stream, peer.ip()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off a bit.
                    warn!(core = id, error = %e, "accept failed");
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = monoio::time::sleep(TICK) => {}
        }
    }
    drop(listener);
    let deadline = Instant::now() + DRAIN_LIMIT;
    while core.inflight() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    debug!(core = id, "drained");
}

async fn serve<A: StockAuthority, L: OrderLog>(
    core: Rc<Core<A, L>>,
    mut stream: TcpStream,
    peer: IpAddr,
) {
    if !core.try_open_connection() {
        // Over the cap: answer 503 and close (a rare path; it may allocate).
        let (mut out, mut body) = (Vec::new(), Vec::new());
        ApiError::Overloaded
            .render(&mut body)
            .write_to(&mut out, false);
        let _ = stream.write_all(out).await;
        return;
    }
    let _ = stream.set_nodelay(true);
    serve_connection(&core, &mut stream, peer).await;
    core.close_connection();
}

/// Reads requests, answers them in order (pipelining), and closes the
/// connection on a protocol error, a timeout, `Connection: close` or stop.
///
/// Output is bounded: requests are parsed while the answers queued for the
/// connection stay under `PENDING_OUTPUT_LIMIT`; past it they are written
/// before anything more is parsed or read, so a client that does not read
/// is not read either. Each write of queued answers (at most the bound plus
/// one answer) must end within `write_timeout_s` of its start, else the
/// connection is closed. Progress does not extend the deadline: once the
/// socket buffers are full, the client must read a whole batch in that
/// time, so one that reads nothing, or a byte a second, is closed, while
/// one that reads its answers as they come is nowhere near it.
pub async fn serve_connection<A: StockAuthority, L: OrderLog>(
    core: &Core<A, L>,
    stream: &mut TcpStream,
    peer: IpAddr,
) {
    let idle = Duration::from_secs(core.node.config.idle_timeout_s);
    let slow = Duration::from_secs(core.node.config.request_timeout_s);
    let write_limit = Duration::from_secs(core.node.config.write_timeout_s);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    let mut body: Vec<u8> = Vec::with_capacity(1024);
    // When the first byte of the request being read arrived.
    let mut request_started: Option<Instant> = None;
    let mut continue_sent = false;
    loop {
        let mut consumed = 0;
        let mut keep_alive = true;
        let mut wants_continue = false;
        while out.len() < PENDING_OUTPUT_LIMIT {
            match http::parse(&buf[consumed..]) {
                Parsed::Complete(req, len) => {
                    keep_alive = core.handle(&req, peer, &mut out, &mut body).await;
                    consumed += len;
                    continue_sent = false;
                    if !keep_alive {
                        break;
                    }
                }
                Parsed::Partial { expects_continue } => {
                    wants_continue = expects_continue;
                    break;
                }
                Parsed::Error(e) => {
                    let err = ApiError::from(e);
                    core.metrics().response(err.status());
                    err.render(&mut body).write_to(&mut out, false);
                    keep_alive = false;
                    break;
                }
            }
        }
        // Stopped at the bound: requests may be left whole in `buf`.
        let backlog = out.len() >= PENDING_OUTPUT_LIMIT;
        if consumed > 0 {
            buf.drain(..consumed);
            request_started = None;
        }
        if wants_continue && !continue_sent {
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            continue_sent = true;
        }
        if !out.is_empty() {
            match monoio::time::timeout(write_limit, stream.write_all(out)).await {
                Ok((Ok(_), returned)) => {
                    out = returned;
                    out.clear();
                }
                // A write error, or answers not taken within the limit.
                _ => return,
            }
        }
        if !keep_alive || (buf.is_empty() && core.node.is_shutting_down()) {
            return;
        }
        if backlog {
            continue;
        }
        // Wait for more bytes: an idle connection gets the idle timeout, a
        // half-sent request what is left of the slow-client limit.
        let wait = if buf.is_empty() {
            idle
        } else {
            let started = *request_started.get_or_insert_with(Instant::now);
            match slow.checked_sub(started.elapsed()) {
                Some(left) => left,
                None => return,
            }
        };
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        let len = buf.len();
        let read = monoio::time::timeout(wait, stream.read(buf.slice_mut(len..))).await;
        match read {
            Ok((Ok(n), slice)) if n > 0 => {
                buf = slice.into_inner();
                if request_started.is_none() {
                    request_started = Some(Instant::now());
                }
            }
            // Closed by the peer, a read error, or a timeout.
            _ => return,
        }
    }
}

/// Expires the reserved orders whose payment timeout passed, a few times a
/// second; core 0 also runs the authority's housekeeping.
async fn sweep_expiries<A: StockAuthority, L: OrderLog>(core: Rc<Core<A, L>>) {
    let mut due = Vec::new();
    let mut last_housekeeping = Instant::now();
    while !core.node.is_shutting_down() {
        monoio::time::sleep(Duration::from_millis(250)).await;
        let now = now_s();
        core.node.authority.due_expiries(core.id, now, &mut due);
        for order_id in due.drain(..) {
            match core.move_order(&order_id, OrderStatus::Expired, None).await {
                Ok(_) => {}
                // Paid or cancelled meanwhile: nothing to expire.
                Err(ApiError::Stock(StockError::InvalidState(_) | StockError::OrderNotFound)) => {}
                Err(e) => {
                    warn!(order_id, error = %e, "expiry failed; will retry");
                    core.node.authority.retry_expiry(&order_id, now + 1);
                }
            }
        }
        if core.id == 0 && last_housekeeping.elapsed() >= Duration::from_secs(1) {
            last_housekeeping = Instant::now();
            core.node.authority.maintain(now);
        }
    }
}
