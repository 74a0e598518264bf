//! A real `redis-server` for tests: started on a free loopback port in its
//! own temporary directory, with persistence off, and killed on drop.
//!
//! Usable from any crate's tests (`stock::redis::fixture::RedisServer`); it
//! needs nothing but `redis-server` on `PATH` (`scripts/redis.sh` installs
//! it).
//!
//! ```no_run
//! let mut redis = stock::redis::fixture::RedisServer::start();
//! let url = redis.url(); // redis://127.0.0.1:PORT/
//! redis.stop(); // "Redis down"
//! redis.start_again(); // same port, empty data set
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a started server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports `start` tries before giving up.
const PORT_ATTEMPTS: usize = 5;

/// A `redis-server` child process on `127.0.0.1:port()`.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    ///
    /// # Panics
    /// When `redis-server` is not on `PATH` (run `scripts/redis.sh`), or no
    /// server came up after a few ports.
    pub fn start() -> RedisServer {
        require_redis_server();
        let dir = temp_dir();
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match spawn_ready(port, &dir) {
                Ok(child) => {
                    return RedisServer {
                        port,
                        dir,
                        child: Some(child),
                    }
                }
                // Most likely the port was taken between probing and binding.
                Err(e) => last_error = e,
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("could not start redis-server after {PORT_ATTEMPTS} ports: {last_error}");
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server process is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL: "Redis down"); its data is gone. A no-op
    /// when already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, with an empty data set.
    ///
    /// # Panics
    /// When it does not come back within a few seconds.
    pub fn start_again(&mut self) {
        self.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match spawn_ready(self.port, &self.dir) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() >= deadline => {
                    panic!("redis-server did not come back on port {}: {e}", self.port)
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn require_redis_server() {
    match Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("redis-server is not on PATH; run scripts/redis.sh to install it (apt-get)")
        }
        Err(e) => panic!("cannot run redis-server: {e}; see scripts/redis.sh"),
    }
}

/// A port that was free a moment ago (bind to port 0, read it, release).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

fn temp_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "seckill-redis-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create the redis-server temp dir");
    dir
}

/// Spawns `redis-server` on `port` and waits until it answers; kills it on
/// failure.
fn spawn_ready(port: u16, dir: &Path) -> Result<Child, String> {
    let log = std::fs::File::create(dir.join("redis.log")).map_err(|e| e.to_string())?;
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn redis-server: {e}"))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            return Err(format!("redis-server exited ({status}): {log}"));
        }
        if answers(port, child.id()) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("no PONG on port {port} within {READY_TIMEOUT:?}"));
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the server on `port` answers PING, and is our child (`INFO
/// server` names its pid): a port taken by someone else between probing and
/// binding must not pass for ours.
fn answers(port: u16, pid: u32) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut pong = [0u8; 7];
    if stream.write_all(b"PING\r\n").is_err()
        || stream.read_exact(&mut pong).is_err()
        || &pong != b"+PONG\r\n"
    {
        return false;
    }
    if stream.write_all(b"INFO server\r\n").is_err() {
        return false;
    }
    let want = format!("process_id:{pid}\r\n");
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // The reply is one bulk string of a few KiB; read until the pid line or
    // the end of the reply.
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if text.contains(&want) {
            return true;
        }
        if text.contains("process_id:") && text.ends_with("\r\n\r\n") {
            break;
        }
    }
    false
}
