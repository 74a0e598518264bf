//! A real `redis-server` for tests: started on a free loopback port in its
//! own temporary directory, with persistence off (or, `start_persistent`,
//! an append-only file fsynced on every write), and killed on drop.
//!
//! Usable from any crate's tests (`seckill_testkit::RedisServer`); it
//! needs nothing but `redis-server` on `PATH` (`scripts/redis.sh` installs
//! it).
//!
//! ```no_run
//! let mut redis = seckill_testkit::RedisServer::start();
//! let url = redis.url(); // redis://127.0.0.1:PORT/
//! redis.stop(); // "Redis down"
//! redis.start_again(); // same port, empty data set
//!
//! let mut redis = seckill_testkit::RedisServer::start_persistent();
//! redis.freeze(); // SIGSTOP: connections stay open, nothing is answered
//! redis.thaw(); // SIGCONT
//! redis.start_again(); // SIGKILL, then the same port with its data
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{on_a_free_port, retry_for, temp_dir, Process};

/// How long a started server may take to answer PING.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many free ports `start` tries before giving up.
const PORT_ATTEMPTS: usize = 5;

/// A `redis-server` child process on `127.0.0.1:port()`.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Process>,
    /// Append-only file on, fsynced on every write: a restart keeps every
    /// write Redis answered.
    persistent: bool,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    ///
    /// # Panics
    /// When `redis-server` is not on `PATH` (run `scripts/redis.sh`), or no
    /// server came up after a few ports.
    pub fn start() -> RedisServer {
        RedisServer::start_with(false)
    }

    /// Like [`RedisServer::start`], with an append-only file fsynced on
    /// every write (`--appendonly yes --appendfsync always`):
    /// [`RedisServer::start_again`] then comes back with the data.
    pub fn start_persistent() -> RedisServer {
        RedisServer::start_with(true)
    }

    fn start_with(persistent: bool) -> RedisServer {
        require_redis_server();
        let dir = temp_dir("seckill-redis-");
        match on_a_free_port(PORT_ATTEMPTS, |port| {
            spawn_ready(port, dir.path(), persistent)
        }) {
            Ok((port, child)) => RedisServer {
                port,
                dir,
                child: Some(child),
                persistent,
            },
            Err(e) => panic!("could not start redis-server after {PORT_ATTEMPTS} ports: {e}"),
        }
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
            child.kill();
        }
    }

    /// SIGSTOP: the process stops where it is. Connections stay open and
    /// commands sent meanwhile wait in socket buffers, unanswered, as on a
    /// hung host. A no-op when not running.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: a frozen server runs again and answers what waited.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            child.signal(sig);
        }
    }

    /// Kills the server (also a frozen one) and starts it again on the same
    /// port: with an empty data set, or with its data when started with
    /// [`RedisServer::start_persistent`].
    ///
    /// # Panics
    /// When it does not come back within a few seconds.
    pub fn start_again(&mut self) {
        self.stop();
        let (port, dir, persistent) = (self.port, self.dir.path(), self.persistent);
        let pause = Duration::from_millis(50);
        match retry_for(READY_TIMEOUT, pause, || spawn_ready(port, dir, persistent)) {
            Ok(child) => self.child = Some(child),
            Err(e) => panic!("redis-server did not come back on port {port}: {e}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
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

/// Spawns `redis-server` on `port` and waits until it answers; kills it on
/// failure.
fn spawn_ready(port: u16, dir: &Path, persistent: bool) -> Result<Process, String> {
    let aof: &[&str] = if persistent {
        &["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &["--appendonly", "no"]
    };
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--save", "", "--daemonize", "no"])
        .args(aof);
    let mut child = Process::spawn_logged(&mut cmd, &dir.join("redis.log"));
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait() {
            return Err(format!("redis-server exited ({status}): {}", child.log()));
        }
        if answers(port, child.pid()) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            child.kill();
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
