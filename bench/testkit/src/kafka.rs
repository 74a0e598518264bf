//! A real Kafka-API broker for tests: tansu (`tansu broker`) on a free
//! loopback port with sqlite storage in its own temporary directory, killed
//! on drop.
//!
//! Usable from any crate's tests (`seckill_testkit::kafka::Broker`, feature
//! `kafka`); it needs
//! the tansu binary (see [`tansu_binary`]; `scripts/kafka.sh` installs it).
//! The sqlite engine keeps topics, messages and committed offsets across a
//! SIGKILL, so [`Broker::stop`] + [`Broker::start_again`] is a broker crash
//! and restart with its data intact.
//!
//! ```no_run
//! let mut broker = seckill_testkit::kafka::Broker::start();
//! broker.create_topic("seckill.orders", 6);
//! let bootstrap = broker.bootstrap(); // 127.0.0.1:PORT
//! broker.stop(); // "Kafka down" (SIGKILL)
//! broker.start_again(); // same port, same topics, messages and offsets
//! ```

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::{block_on, on_a_free_port, retry_for, temp_dir, Process};

/// How long a started broker may take to answer a metadata request (it is
/// typically ready in well under a second).
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `create_topic` may take, creation and metadata included.
const TOPIC_TIMEOUT: Duration = Duration::from_secs(20);
/// How many free ports `start` tries before giving up.
const PORT_ATTEMPTS: usize = 5;
/// Fixed, so that a restarted broker is the same cluster.
const CLUSTER_ID: &str = "seckill-test";

/// A `tansu broker` child process on `127.0.0.1:port()`.
#[derive(Debug)]
pub struct Broker {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Process>,
}

impl Broker {
    /// Starts tansu on a free loopback port with sqlite storage in a fresh
    /// temporary directory, and waits until it answers a metadata request.
    ///
    /// # Panics
    /// When the tansu binary is missing (run `scripts/kafka.sh`), or no
    /// broker came up after a few ports.
    pub fn start() -> Broker {
        let binary = tansu_binary().unwrap_or_else(|| {
            panic!(
                "the tansu broker is not installed: run scripts/kafka.sh (it installs \
                 tansu 0.6.0 into $SECKILL_CACHE/tansu, default ~/.cache/seckill/tansu), \
                 or point SECKILL_TANSU at a tansu binary"
            )
        });
        let dir = temp_dir("seckill-tansu-");
        let started = on_a_free_port(PORT_ATTEMPTS, |port| {
            let started = spawn_ready(&binary, port, dir.path());
            if started.is_err() {
                // A failed attempt may have left a half-made database behind.
                let _ = std::fs::remove_dir_all(dir.path());
                let _ = std::fs::create_dir_all(dir.path());
            }
            started
        });
        match started {
            Ok((port, child)) => Broker {
                binary,
                port,
                dir,
                child: Some(child),
            },
            Err(e) => panic!("could not start tansu after {PORT_ATTEMPTS} ports: {e}"),
        }
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's directory: its sqlite database and `tansu.log`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the broker printed so far (all its runs), e.g. to look
    /// for a `panicked` line.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// Whether the broker process is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the broker (SIGKILL: "Kafka down"); its data stays on disk. A
    /// no-op when already stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }

    /// Starts the broker again on the same port with the same data (topics,
    /// messages, committed offsets), and waits until it is ready.
    ///
    /// # Panics
    /// When it does not come back within `READY_TIMEOUT`.
    pub fn start_again(&mut self) {
        self.stop();
        let (binary, port, dir) = (&self.binary, self.port, self.dir.path());
        let pause = Duration::from_millis(100);
        match retry_for(READY_TIMEOUT, pause, || spawn_ready(binary, port, dir)) {
            Ok(child) => self.child = Some(child),
            Err(e) => panic!("tansu did not come back on port {port}: {e}"),
        }
    }

    /// Creates `topic` with `partitions` partitions (replication 1) and
    /// waits until the broker's metadata shows all of them; fine when the
    /// topic already exists (its partition count is then left as it is).
    ///
    /// # Panics
    /// When the broker refuses or does not answer within `TOPIC_TIMEOUT`.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let deadline = Instant::now() + TOPIC_TIMEOUT;
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("create an rdkafka admin client");
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new()
            .operation_timeout(Some(Duration::from_secs(10)))
            .request_timeout(Some(TOPIC_TIMEOUT));
        // librdkafka's own thread completes the future; no runtime needed,
        // so this also works from inside a test's tokio runtime.
        let results = block_on(admin.create_topics([&new], &opts))
            .unwrap_or_else(|e| panic!("create topic {topic}: {e}"));
        let mut exists = false;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => exists = true,
                Err((name, code)) => panic!("create topic {name}: {code}"),
            }
        }
        // Wait until the metadata shows the topic with every partition led.
        let consumer = metadata_client(&self.bootstrap());
        let want = if exists { 1 } else { partitions as usize };
        loop {
            let seen = consumer
                .fetch_metadata(None, Duration::from_secs(2))
                .ok()
                .and_then(|metadata| {
                    metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == topic && t.error().is_none())
                        .map(|t| {
                            t.partitions()
                                .iter()
                                .filter(|p| p.error().is_none() && p.leader() >= 0)
                                .count()
                        })
                });
            match seen {
                Some(n) if n >= want => return,
                seen if Instant::now() >= deadline => panic!(
                    "topic {topic}: metadata shows {seen:?} of {partitions} partitions \
                     after {TOPIC_TIMEOUT:?}"
                ),
                _ => thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Path of the tansu binary: `$SECKILL_TANSU` when set (`None` if that file
/// does not exist), else `$SECKILL_CACHE/tansu/bin/tansu` (default
/// `~/.cache/seckill`, where `scripts/kafka.sh` installs it) when it exists,
/// else `tansu` on `PATH`.
pub fn tansu_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SECKILL_TANSU").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let cache = std::env::var_os("SECKILL_CACHE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|p| !p.is_empty())
                .map(|home| PathBuf::from(home).join(".cache").join("seckill"))
        });
    if let Some(cache) = cache {
        let path = cache.join("tansu").join("bin").join("tansu");
        if path.is_file() {
            return Some(path);
        }
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join("tansu"))
        .find(|path| path.is_file())
}

/// A client for metadata requests only.
fn metadata_client(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "2000")
        .set("reconnect.backoff.ms", "20")
        .set("reconnect.backoff.max.ms", "200")
        .create()
        .expect("create an rdkafka metadata client")
}

/// The last lines of the broker's log, for panic messages.
fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("tansu.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Spawns `tansu broker` on `port` with its database in `dir`, and waits
/// until it answers a metadata request; kills it on failure.
fn spawn_ready(binary: &Path, port: u16, dir: &Path) -> Result<Process, String> {
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(binary);
    cmd.arg("broker")
        .args(["--cluster-id", CLUSTER_ID])
        .args(["--listener-url", &url])
        .args(["--advertised-listener-url", &url])
        // tansu 0.6 resolves a sqlite path against its working directory
        // (even one with a leading slash), so run it in `dir`.
        .args(["--storage-engine", "sqlite://tansu.db"])
        .current_dir(dir)
        // Settings tansu would otherwise take from the environment.
        .env_remove("SCHEMA_REGISTRY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("RUST_LOG");
    let mut child = Process::spawn_logged(&mut cmd, &dir.join("tansu.log"));
    let fail = |child: &mut Process, why: String| {
        child.kill();
        Err(format!("{why}; tansu.log:\n{}", log_tail(dir)))
    };
    let deadline = Instant::now() + READY_TIMEOUT;
    // First the listener, then a metadata round trip.
    loop {
        if let Some(status) = child.try_wait() {
            return Err(format!(
                "tansu exited ({status}); tansu.log:\n{}",
                log_tail(dir)
            ));
        }
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .is_ok()
        {
            break;
        }
        if Instant::now() >= deadline {
            return fail(
                &mut child,
                format!("port {port} not listening within {READY_TIMEOUT:?}"),
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
    let client = metadata_client(&format!("127.0.0.1:{port}"));
    loop {
        let answered = client.fetch_metadata(None, Duration::from_secs(1)).is_ok();
        // The port may belong to someone else if tansu failed to bind it:
        // then tansu exits at once.
        if let Some(status) = child.try_wait() {
            return Err(format!(
                "tansu exited ({status}); tansu.log:\n{}",
                log_tail(dir)
            ));
        }
        if answered {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            return fail(
                &mut child,
                format!("no metadata answer on port {port} within {READY_TIMEOUT:?}"),
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}
