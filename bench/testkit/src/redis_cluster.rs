//! A real Redis Cluster and a real Sentinel set for tests, on loopback,
//! each process in its own temporary directory and killed on drop
//! (`scripts/redis-cluster.sh` starts the same shapes by hand).
//!
//! - [`RedisCluster`]: 3 masters + 3 replicas (`redis-cli --cluster create
//!   --cluster-replicas 1`), append-only files on, a 1 s node timeout so a
//!   killed master's replica takes over within a few seconds.
//! - [`SentinelSet`]: one primary, one replica and three sentinels (quorum
//!   2, a primary is down after 1 s).
//!
//! Needs `redis-server` and `redis-cli` on `PATH` (`scripts/redis.sh`).
//!
//! ```no_run
//! use seckill_testkit::redis_cluster::{RedisCluster, SentinelSet};
//! let mut cluster = RedisCluster::start();
//! let seeds = cluster.seeds(); // redis://127.0.0.1:P1,redis://127.0.0.1:P2,...
//! let port = cluster.master_of("sk:{s1}:pool");
//! cluster.kill(port); // SIGKILL: its replica is promoted
//! cluster.wait_master_of("sk:{s1}:pool", port);
//!
//! let mut sentinels = SentinelSet::start();
//! let url = sentinels.url(); // redis+sentinel://127.0.0.1:S1,.../seckill
//! let old = sentinels.kill_primary();
//! let new = sentinels.wait_failover(old);
//! ```

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The master name the sentinels watch.
pub const MASTER_NAME: &str = "seckill";
/// How long a started set may take to be ready, or a failover to finish.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One `redis-server` child (a cluster node, a primary, a replica or a
/// sentinel).
#[derive(Debug)]
struct Server {
    port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Server {
    fn start(port: u16, dir: PathBuf, args: &[&str]) -> Server {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let child = spawn(port, &dir, &args);
        Server {
            port,
            dir,
            args,
            child: Some(child),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed server again: same port, files and arguments.
    fn restart(&mut self) {
        self.kill();
        self.child = Some(spawn(self.port, &self.dir, &self.args));
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .arg(sig)
                .arg(child.id().to_string())
                .status()
                .expect("run kill");
            assert!(status.success(), "kill {sig} {}", child.id());
        }
    }
}

/// A 3-master Redis Cluster with one replica per master.
#[derive(Debug)]
pub struct RedisCluster {
    dir: PathBuf,
    nodes: Vec<Server>,
}

impl RedisCluster {
    /// Starts 6 cluster-enabled servers, joins them (3 masters, 3
    /// replicas) and waits until every node reports `cluster_state:ok`.
    ///
    /// # Panics
    /// When `redis-server` or `redis-cli` is missing, or the cluster is not
    /// ready within 30 s.
    pub fn start() -> RedisCluster {
        let dir = temp_dir("cluster");
        let ports = free_ports(6, true);
        let mut nodes = Vec::new();
        for (i, &port) in ports.iter().enumerate() {
            let node_dir = dir.join(format!("node-{i}"));
            nodes.push(Server::start(
                port,
                node_dir,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    // A replica may take over however long ago it last
                    // heard from its master: tests kill masters at will.
                    "--cluster-replica-validity-factor",
                    "0",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--save",
                    "",
                ],
            ));
        }
        let cluster = RedisCluster { dir, nodes };
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create (scripts/redis.sh installs it)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok();
        for port in ports {
            wait_replica_synced(port);
        }
        cluster
    }

    /// The masters' URLs, comma-separated: the seed list of `--redis`.
    pub fn seeds(&self) -> String {
        self.masters()
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The URL of one node (any node of a cluster is a valid seed).
    pub fn url_of(&self, port: u16) -> String {
        format!("redis://127.0.0.1:{port}")
    }

    /// The ports of the live masters that hold slots, sorted.
    pub fn masters(&self) -> Vec<u16> {
        let mut masters: Vec<u16> = self
            .live()
            .find_map(|port| cluster_nodes(port).ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.master && n.connected && n.slots > 0)
            .map(|n| n.port)
            .collect();
        masters.sort_unstable();
        masters
    }

    /// The port of the master that serves `key`'s slot now.
    ///
    /// # Panics
    /// When no live node names one.
    pub fn master_of(&self, key: &str) -> u16 {
        self.try_master_of(key)
            .unwrap_or_else(|| panic!("no master serves the slot of {key}"))
    }

    fn try_master_of(&self, key: &str) -> Option<u16> {
        let port = self.live().next()?;
        let slot: u16 = cli(port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .ok()?;
        let slots = cli(port, &["CLUSTER", "SLOTS"]);
        // redis-cli prints CLUSTER SLOTS as lines: start, end, ip, port,
        // id, (ip, port, id of replicas), ... per range.
        let lines: Vec<&str> = slots.lines().map(str::trim).collect();
        let mut i = 0;
        while i + 3 < lines.len() {
            if let (Ok(start), Ok(end), Ok(master)) = (
                lines[i].parse::<u16>(),
                lines[i + 1].parse::<u16>(),
                lines[i + 3].parse::<u16>(),
            ) {
                if lines[i + 2] == "127.0.0.1" && start <= slot && slot <= end {
                    return Some(master);
                }
            }
            i += 1;
        }
        None
    }

    /// SIGKILL the node on `port` (no shutdown, no AOF flush beyond what
    /// `everysec` wrote).
    pub fn kill(&mut self, port: u16) {
        for node in self.nodes.iter_mut().filter(|n| n.port == port) {
            node.kill();
        }
    }

    /// The port of a replica of the master on `master`.
    ///
    /// # Panics
    /// When it has none.
    pub fn replica_of(&self, master: u16) -> u16 {
        let text = cli(master, &["CLUSTER", "NODES"]);
        let port_of = |addr: &str| -> Option<u16> {
            addr.split('@').next()?.rsplit(':').next()?.parse().ok()
        };
        let lines: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let id = lines
            .iter()
            .find(|f| f.len() > 2 && port_of(f[1]) == Some(master))
            .map(|f| f[0])
            .unwrap_or_else(|| panic!("{master} is not in CLUSTER NODES: {text}"));
        lines
            .iter()
            .find(|f| f.len() > 3 && f[3] == id)
            .and_then(|f| port_of(f[1]))
            .unwrap_or_else(|| panic!("{master} has no replica: {text}"))
    }

    /// Moves `key`'s slot, with its keys, from its master to the master on
    /// `to`, as a resharding does (IMPORTING/MIGRATING, MIGRATE in batches
    /// of `batch` keys with `pause` between batches, then SETSLOT NODE on
    /// every master): meanwhile clients get ASK and TRYAGAIN for the slot.
    ///
    /// # Panics
    /// When a step is refused.
    pub fn migrate_slot(&self, key: &str, to: u16, batch: usize, pause: Duration) {
        let from = self.master_of(key);
        let slot = cli(from, &["CLUSTER", "KEYSLOT", key]).trim().to_owned();
        let id = |port: u16| cli(port, &["CLUSTER", "MYID"]).trim().to_owned();
        let (from_id, to_id) = (id(from), id(to));
        let ok = |port: u16, args: &[&str]| {
            let out = cli(port, args);
            assert!(out.trim() == "OK", "{args:?} on {port}: {out}");
        };
        ok(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]);
        let to_port = to.to_string();
        let count = batch.to_string();
        loop {
            let keys = cli(from, &["CLUSTER", "GETKEYSINSLOT", &slot, &count]);
            let keys: Vec<&str> = keys
                .lines()
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .collect();
            if keys.is_empty() {
                break;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().copied());
            let out = cli(from, &args);
            assert!(
                out.trim() == "OK" || out.trim() == "NOKEY",
                "MIGRATE: {out}"
            );
            thread::sleep(pause);
        }
        for port in self.masters() {
            ok(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]);
        }
        self.wait_ok();
    }

    /// SIGSTOP the node on `port`: connected, answering nothing (a
    /// stalled replica acknowledges no write; `WAIT` times out).
    pub fn freeze(&self, port: u16) {
        for node in self.nodes.iter().filter(|n| n.port == port) {
            node.signal("-STOP");
        }
    }

    /// SIGCONT the node on `port`.
    pub fn thaw(&self, port: u16) {
        for node in self.nodes.iter().filter(|n| n.port == port) {
            node.signal("-CONT");
        }
    }

    /// Starts a killed node again (same port and files): it rejoins the
    /// cluster, as a replica of whoever took its slots.
    pub fn restart(&mut self, port: u16) {
        for node in self.nodes.iter_mut().filter(|n| n.port == port) {
            node.restart();
        }
        wait_replica_synced(port);
        self.wait_ok();
    }

    /// Waits until `key`'s slot is served by a master other than `old`,
    /// and the surviving nodes say `cluster_state:ok`; returns the new
    /// master's port.
    ///
    /// # Panics
    /// When that does not happen within 30 s.
    pub fn wait_master_of(&self, key: &str, old: u16) -> u16 {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(port) = self.try_master_of(key).filter(|&p| p != old) {
                self.wait_ok();
                return port;
            }
            assert!(
                Instant::now() < deadline,
                "no failover of {key}'s slot away from {old}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn live(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        for port in self.live() {
            while !cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(
                    Instant::now() < deadline,
                    "the cluster is not ok on port {port} (logs in {})",
                    self.dir.display()
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One primary and its replica, watched by three sentinels (quorum 2).
#[derive(Debug)]
pub struct SentinelSet {
    dir: PathBuf,
    /// Primary first, then the replica.
    servers: Vec<Server>,
    sentinels: Vec<Server>,
}

impl SentinelSet {
    /// Starts the primary, the replica and the sentinels, and waits until
    /// every sentinel knows the replica and the two other sentinels (so a
    /// failover can be agreed on).
    ///
    /// # Panics
    /// When `redis-server` or `redis-cli` is missing, or the set is not
    /// ready within 30 s.
    pub fn start() -> SentinelSet {
        let dir = temp_dir("sentinel");
        let ports = free_ports(5, false);
        let aof = ["--appendonly", "yes", "--appendfsync", "everysec"];
        let primary = ports[0];
        let mut servers = vec![Server::start(primary, dir.join("primary"), &aof)];
        let replica_of = primary.to_string();
        let mut replica_args = aof.to_vec();
        replica_args.extend(["--replicaof", "127.0.0.1", &replica_of]);
        servers.push(Server::start(ports[1], dir.join("replica"), &replica_args));
        let mut sentinels = Vec::new();
        for (i, &port) in ports[2..].iter().enumerate() {
            let sdir = dir.join(format!("sentinel-{i}"));
            std::fs::create_dir_all(&sdir).expect("create the sentinel dir");
            let conf = sdir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 3000\n"
                ),
            )
            .expect("write sentinel.conf");
            let conf = conf.to_str().expect("a UTF-8 temp path").to_owned();
            sentinels.push(Server::start(port, sdir, &[&conf, "--sentinel"]));
        }
        let set = SentinelSet {
            dir,
            servers,
            sentinels,
        };
        wait_replica_synced(set.servers[1].port);
        let deadline = Instant::now() + READY_TIMEOUT;
        for s in &set.sentinels {
            loop {
                let replicas = cli(s.port, &["SENTINEL", "REPLICAS", MASTER_NAME]);
                let others = cli(s.port, &["SENTINEL", "SENTINELS", MASTER_NAME]);
                let known = |text: &str| text.lines().filter(|l| l.trim() == "ip").count();
                if known(&replicas) >= 1 && known(&others) >= 2 {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel {} does not know its peers (logs in {})",
                    s.port,
                    set.dir.display()
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
        set
    }

    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/seckill`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The primary's port as the first live sentinel reports it.
    pub fn primary(&self) -> u16 {
        let s = self
            .sentinels
            .iter()
            .find(|s| s.child.is_some())
            .expect("a live sentinel");
        let addr = cli(
            s.port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME],
        );
        addr.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no primary known: {addr}"))
    }

    /// SIGKILL the current primary; returns its port.
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary();
        for s in self.servers.iter_mut().filter(|s| s.port == port) {
            s.kill();
        }
        port
    }

    /// The port of the server that is not the primary now.
    pub fn replica(&self) -> u16 {
        let primary = self.primary();
        self.servers
            .iter()
            .map(|s| s.port)
            .find(|&p| p != primary)
            .expect("two servers")
    }

    /// SIGSTOP the replica: it stays connected and acknowledges nothing
    /// (a stalled replica; `WAIT` times out).
    pub fn freeze_replica(&self) {
        let port = self.replica();
        for s in self.servers.iter().filter(|s| s.port == port) {
            s.signal("-STOP");
        }
    }

    /// SIGCONT the replica.
    pub fn thaw_replica(&self) {
        for s in &self.servers {
            s.signal("-CONT");
        }
    }

    /// Starts a killed server again (same port, files and arguments); the
    /// sentinels make it a replica of the current primary. Waits until it
    /// has synced.
    pub fn restart(&mut self, port: u16) {
        for s in self.servers.iter_mut().filter(|s| s.port == port) {
            s.restart();
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        while !cli(port, &["INFO", "replication"]).contains("master_link_status:up") {
            assert!(
                Instant::now() < deadline,
                "{port} did not rejoin as a replica"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the sentinels name a primary other than `old` and it
    /// answers as one (`role:master`); returns its port.
    ///
    /// # Panics
    /// When that does not happen within 30 s.
    pub fn wait_failover(&self, old: u16) -> u16 {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let port = self.primary();
            if port != old && cli(port, &["INFO", "replication"]).contains("role:master") {
                return port;
            }
            assert!(
                Instant::now() < deadline,
                "no failover away from {old} (logs in {})",
                self.dir.display()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for s in self.sentinels.iter_mut().chain(self.servers.iter_mut()) {
            s.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node as `CLUSTER NODES` lists it.
struct ClusterNode {
    port: u16,
    master: bool,
    connected: bool,
    slots: usize,
}

fn cluster_nodes(port: u16) -> Result<Vec<ClusterNode>, String> {
    let text = cli(port, &["CLUSTER", "NODES"]);
    let nodes: Vec<ClusterNode> = text
        .lines()
        .filter_map(|line| {
            // <id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slot>...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let addr = fields.get(1)?;
            let port = addr.split('@').next()?.rsplit(':').next()?.parse().ok()?;
            let flags = fields.get(2)?;
            Some(ClusterNode {
                port,
                master: flags.contains("master") && !flags.contains("fail"),
                connected: fields.get(7) == Some(&"connected") || flags.contains("myself"),
                slots: fields.len().saturating_sub(8),
            })
        })
        .collect();
    if nodes.is_empty() {
        Err(text)
    } else {
        Ok(nodes)
    }
}

/// Waits until the server on `port`, if a replica, has its link to its
/// master up (the first full sync done).
fn wait_replica_synced(port: u16) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let info = cli(port, &["INFO", "replication"]);
        if info.contains("role:master") || info.contains("master_link_status:up") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica on {port} did not sync: {info}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// `redis-cli -p PORT ARGS...`, its stdout ("" when it cannot run).
fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Spawns `redis-server` with `args` on `port` (files in `dir`) and waits
/// until it answers PING.
fn spawn(port: u16, dir: &Path, args: &[String]) -> Child {
    std::fs::create_dir_all(dir).expect("create the server's dir");
    let log = std::fs::File::create(dir.join("redis.log")).expect("create redis.log");
    let mut child = Command::new("redis-server")
        .args(args)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        // A replica's first full sync starts at once, not after the
        // default 5 s wait for more replicas.
        .args(["--repl-diskless-sync-delay", "0"])
        .arg("--dir")
        .arg(dir)
        .args(["--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn redis-server (scripts/redis.sh installs it)");
    let deadline = Instant::now() + READY_TIMEOUT;
    while cli(port, &["PING"]).trim() != "PONG" {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            panic!("redis-server on {port} exited ({status}): {log}");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("redis-server on {port} did not answer PING");
        }
        thread::sleep(Duration::from_millis(20));
    }
    child
}

/// `n` ports free a moment ago, with each port + 10000 (a cluster node's
/// bus) free too: drawn from 12000..22767, so that the bus ports stay below
/// the kernel's ephemeral range (32768..) where other tests' servers bind
/// port 0. Each call of a process starts 16 ports after the last one's
/// start, so fixtures starting at once do not pick the same ports.
fn free_ports(n: usize, with_bus: bool) -> Vec<u16> {
    const LOW: u64 = 12_000;
    const SPAN: u64 = 10_768;
    static CURSOR: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id()) * 7919
        + u64::from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        );
    let bindable =
        |port: u64| u16::try_from(port).is_ok_and(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
    let mut offset = (seed + CURSOR.fetch_add(16, Ordering::Relaxed)) % SPAN;
    let mut ports = Vec::new();
    for _ in 0..SPAN {
        if ports.len() == n {
            break;
        }
        let port = LOW + offset;
        if bindable(port) && (!with_bus || bindable(port + 10_000)) {
            ports.push(port as u16);
        }
        offset = (offset + 1) % SPAN;
    }
    assert_eq!(ports.len(), n, "no {n} free ports in {LOW}..{}", LOW + SPAN);
    ports
}

fn temp_dir(kind: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "seckill-redis-{kind}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the temp dir");
    dir
}
