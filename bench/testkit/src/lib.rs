//! The test plumbing that seckill's crates share, in one dev-dependency:
//! nothing here is compiled into the node or its libraries.
//!
//! Layout:
//! - [`block_on`], [`block_on_for`]: run a future on the test's thread (no
//!   runtime: the futures here are completed by other threads — the
//!   journal's writer, librdkafka's).
//! - [`free_port`], [`temp_dir`]: a loopback port that was free a moment
//!   ago; a temp directory removed on drop.
//! - [`redis::RedisServer`]: a real `redis-server` on a free port in its
//!   own temp dir (`scripts/redis.sh` installs it).
//! - [`redis_cluster::RedisCluster`] (3 masters + 3 replicas) and
//!   [`redis_cluster::SentinelSet`] (primary, replica, 3 sentinels): real
//!   processes for the Redis Cluster and failover tests, killed on drop.
//! - `kafka::Broker` (feature `kafka`): a real Kafka-API broker (tansu,
//!   sqlite storage) on a free port (`scripts/kafka.sh` installs it).
//! - [`process::Process`]: one child process (a node, the settler): its
//!   stderr captured to a log file, its stdout drained and searched for a
//!   banner, killed on drop.
//!
//! The journal's frames are read with `queue::journal::frames` (the
//! journal's format belongs to `queue`), not here.

use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::{Duration, Instant};

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod process;
pub mod redis;
pub mod redis_cluster;

pub use process::Process;
pub use redis::RedisServer;

/// Runs a future to completion on this thread, parking between polls.
/// For futures completed by other threads (the journal's writer,
/// librdkafka's delivery reports); it drives no timers or sockets, so it
/// also works inside a test's own runtime.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        thread::park();
    }
}

/// Like [`block_on`], but gives up after `limit`: `None` if the future was
/// still pending then.
pub fn block_on_for<F: Future>(fut: F, limit: Duration) -> Option<F::Output> {
    let deadline = Instant::now() + limit;
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return Some(out);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        thread::park_timeout(left);
    }
}

struct Unpark(thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// A loopback port that was free a moment ago (bind to port 0, read it,
/// release). Another process may take it before the caller binds it:
/// callers that spawn a server on it retry on a new port.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Runs `spawn` on up to `attempts` free ports (a port can be taken between
/// probing and binding): the port of the first success and what `spawn`
/// returned, or the last error.
pub fn on_a_free_port<T>(
    attempts: usize,
    mut spawn: impl FnMut(u16) -> Result<T, String>,
) -> Result<(u16, T), String> {
    let mut last_error = String::from("no attempt");
    for _ in 0..attempts {
        let port = free_port();
        match spawn(port) {
            Ok(started) => return Ok((port, started)),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// Runs `spawn` until it succeeds, pausing `pause` between tries; the last
/// error once `limit` has passed.
pub fn retry_for<T>(
    limit: Duration,
    pause: Duration,
    mut spawn: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + limit;
    loop {
        match spawn() {
            Ok(started) => return Ok(started),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => thread::sleep(pause),
        }
    }
}

/// A fresh temp directory named `<prefix>…`, removed (with its contents)
/// when the handle is dropped.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("create a temp dir {prefix}*: {e}"))
}
