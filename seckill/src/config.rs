//! The node's configuration: one [`Config`], loaded once from flags, the
//! environment (`SECKILL_*`) and a TOML file (`--config`), in that order of
//! precedence, validated, and passed down as a plain struct.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

use crate::ratelimit::Rate;

/// Which monoio driver the cores run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// The legacy epoll driver (the default: on the 2-core machines it was
    /// measured, io_uring was no faster; see ARCHITECTURE.md).
    Legacy,
    /// io_uring; start-up fails where the kernel does not allow it.
    Uring,
    /// io_uring where the kernel allows it, else epoll.
    Auto,
}

/// How a cluster node takes stock from Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StockModeSetting {
    /// Lease chunks of the pool into per-core shards (the default).
    Leased,
    /// One Lua call per purchase request: the classic design, a baseline.
    PerRequest,
}

/// Command-line flags; each also reads `SECKILL_<NAME>` from the
/// environment. Unset flags fall back to the TOML file, then the defaults.
#[derive(Debug, Default, Parser)]
#[command(
    name = "seckill",
    version,
    about = "Flash-sale node: thread per core, embedded or cluster mode"
)]
pub struct Flags {
    /// TOML file with any of the settings below (same names, snake_case).
    #[arg(long, env = "SECKILL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address every core listens on (SO_REUSEPORT). Default 127.0.0.1:8080.
    #[arg(long, env = "SECKILL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Directory of the order journal. Default ./data.
    #[arg(long, env = "SECKILL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Bearer token of the admin API. Embedded mode makes a random one
    /// (printed at start) when unset; cluster mode requires it.
    #[arg(long, env = "SECKILL_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Cores to run (one runtime and one listener each). Default: all.
    #[arg(long, env = "SECKILL_CORES")]
    pub cores: Option<usize>,
    /// Redis URL: makes Redis the stock authority (cluster mode).
    #[arg(long, env = "SECKILL_REDIS")]
    pub redis: Option<String>,
    /// Kafka bootstrap brokers: makes a Kafka topic the order log (needs
    /// --redis; run `seckill settle` beside the nodes).
    #[arg(long, env = "SECKILL_KAFKA")]
    pub kafka: Option<String>,
    /// The order topic. Default seckill.orders.
    #[arg(long, env = "SECKILL_KAFKA_TOPIC")]
    pub kafka_topic: Option<String>,
    /// This node's id in a cluster; part of every order id. Default 1.
    #[arg(long, env = "SECKILL_NODE_ID")]
    pub node_id: Option<u32>,
    /// monoio driver: legacy (epoll), uring, or auto. Default legacy.
    #[arg(long, env = "SECKILL_DRIVER", value_enum)]
    pub driver: Option<Driver>,
    /// Cluster mode: `leased` (default) or `per-request` (the classic
    /// one-Lua-call-per-request design, kept as a benchmark baseline).
    #[arg(long, env = "SECKILL_STOCK_MODE", value_enum)]
    pub stock_mode: Option<StockModeSetting>,
    /// Seconds one write of a connection's queued answers may take before
    /// the connection is closed (a client that reads nothing, or too
    /// little). Default 10.
    #[arg(long, env = "SECKILL_WRITE_TIMEOUT_S")]
    pub write_timeout_s: Option<u64>,
    /// Pre-load a demo sale and print the admin token and a curl line.
    #[arg(long, env = "SECKILL_DEMO")]
    pub demo: bool,
    /// Log lines as `text` (the default; colours only on a terminal) or
    /// `json` (one object a line, for log shippers).
    #[arg(long, env = "SECKILL_LOG_FORMAT", value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// How the node writes its log lines (to stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object a line: timestamp, level, target, fields.
    Json,
}

/// Subcommands; without one, `seckill` runs a node.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Runs the settler of a Kafka cluster: consumes the order topic,
    /// expires unpaid orders, reconciles changes that never reached the log.
    Settle(SettleFlags),
    /// Prints a buyer token signed with the first of the configured
    /// `buyer_keys` (TOML or SECKILL_BUYER_KEYS), for operators and curl.
    Token(TokenFlags),
    /// Shows an order's life in time order: its events in the journal or
    /// the Kafka topic, request ids, who acted, its record in Redis.
    Trace(crate::trace::TraceFlags),
}

/// Flags of `seckill settle`.
#[derive(Debug, clap::Args)]
pub struct SettleFlags {
    /// Redis URL of the cluster (the stock authority).
    #[arg(long, env = "SECKILL_REDIS")]
    pub redis: String,
    /// Kafka bootstrap brokers.
    #[arg(long, env = "SECKILL_KAFKA")]
    pub kafka: String,
    /// The order topic.
    #[arg(long, env = "SECKILL_KAFKA_TOPIC", default_value = "seckill.orders")]
    pub kafka_topic: String,
    /// Consumer group of the settlers.
    #[arg(long, env = "SECKILL_SETTLE_GROUP", default_value = "seckill-settler")]
    pub group: String,
    /// A change missing from the log this long after it was made in Redis
    /// is reconciled. Must be longer than the nodes' kafka_timeout_ms (a
    /// produce may succeed until then).
    #[arg(long, env = "SECKILL_SETTLE_GRACE_MS", default_value_t = 15_000)]
    pub grace_ms: u64,
    /// How often expiry and reconciliation run.
    #[arg(long, env = "SECKILL_SETTLE_INTERVAL_MS", default_value_t = 500)]
    pub interval_ms: u64,
    /// Longest wait for one Redis reply.
    #[arg(long, default_value_t = 1_000)]
    pub redis_timeout_ms: u64,
    /// Longest wait for one event's delivery, and for broker metadata.
    #[arg(long, default_value_t = 5_000)]
    pub kafka_timeout_ms: u64,
}

/// `seckill token`: a buyer token for `--sub`, a ticket with `--sale`.
#[derive(Debug, clap::Args)]
pub struct TokenFlags {
    /// The buyer (the token's `sub`, the user id of their orders).
    #[arg(long)]
    pub sub: String,
    /// Makes the token a ticket for this sale (`ticket_required` sales).
    #[arg(long)]
    pub sale: Option<String>,
    /// How long the token is valid: seconds, or with a unit (30s, 10m, 2h).
    #[arg(long, default_value = "10m", value_parser = parse_ttl)]
    pub ttl: u64,
}

/// Every setting of a node, with its default and its cost.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address. Default 127.0.0.1:8080.
    pub listen: SocketAddr,
    /// Where the journal lives. Default ./data.
    pub data_dir: PathBuf,
    /// Admin bearer token; `None` in embedded mode makes a random one.
    pub admin_token: Option<String>,
    /// Cores (runtimes, listeners, stock shards). Default: every core.
    pub cores: usize,
    pub redis: Option<String>,
    pub kafka: Option<String>,
    /// The order topic (Kafka mode). Default seckill.orders.
    pub kafka_topic: String,
    /// Kafka mode: partitions of the order topic when a node creates it.
    /// Default 6.
    pub kafka_partitions: i32,
    /// Kafka mode: longest wait for one event's delivery report; past it
    /// the purchase is answered 503 and compensated. The settler's
    /// `--grace-ms` must be longer. Default 5,000 ms.
    pub kafka_timeout_ms: u64,
    /// Kafka mode: the producer's batching window. Default 2 ms.
    pub kafka_linger_ms: u64,
    /// Kafka mode: the settlers' consumer group (`seckill settle
    /// --group`), whose lag the node measures each second for
    /// `/admin/stats` and `/metrics`. Default `seckill-settler`.
    pub settler_group: String,
    pub node_id: u32,
    pub driver: Driver,
    pub demo: bool,
    /// Cluster mode: how stock is taken from Redis. Default leased.
    pub stock_mode: StockModeSetting,
    /// Cluster mode: a node whose lease heartbeat is older than this loses
    /// its unsold leased units to the pool. Default 5 s.
    pub lease_ttl_s: u64,
    /// Cluster mode: longest wait for one Redis reply; past it the outcome
    /// is undetermined and reconciled. Default 500 ms.
    pub redis_timeout_ms: u64,
    /// Cluster mode: replicas that must acknowledge a batch of
    /// reservations (Redis `WAIT`, at most half `redis_timeout_ms`) before
    /// any of them is answered 200; fewer in time → 503, and the
    /// reservations are abandoned by order id. Default (unset): 1 when the
    /// primary (every cluster master) has a replica at start, else 0.
    pub redis_min_replicas: Option<u32>,
    /// Cluster mode with the journal (no `--kafka`): a change Redis made
    /// and no node logged this long after is logged by some node's
    /// reconciler (a reservation never answered is released instead).
    /// Must stay well above a journal append's worst time. Default 30 s.
    pub journal_grace_s: u64,
    /// Open connections per node; more are answered 503 and closed. Each
    /// costs its buffers: 5 KiB at first, at most about 100 KiB (a 32 KiB
    /// read buffer, 64 KiB of queued answers). Default 10,000.
    pub max_connections: usize,
    /// A keep-alive connection idle this long is closed. Default 60 s.
    pub idle_timeout_s: u64,
    /// A request must arrive whole within this long of its first byte
    /// (slow-client limit). Default 10 s.
    pub request_timeout_s: u64,
    /// Each write of a connection's queued answers (at most 64 KiB: past
    /// that the node stops reading its requests) must end within this
    /// long, else the connection is closed; progress does not extend it. A
    /// client that reads nothing, or a byte a second, holds its buffers and
    /// its connection slot this long at most. Default 10 s.
    pub write_timeout_s: u64,
    /// Purchases in flight per core (waiting on the order log). Default 1,024.
    pub admission_tokens: usize,
    /// Purchases queued per core for a token; more get 503 `overloaded`.
    /// Default 4,096.
    pub admission_queue: usize,
    /// How long an idempotency record is kept. Default 86,400 s (24 h).
    pub idempotency_ttl_s: u64,
    /// Embedded mode: how long a finished order (paid, cancelled, expired)
    /// stays in memory; after it `GET /orders/{id}` is 404. Never before
    /// its Idempotency-Key is forgotten. Default 3,600 s; each order held
    /// costs ~250 bytes.
    pub order_retention_s: u64,
    /// Embedded mode: the journal is sealed as a segment at this size and
    /// folded into the snapshot (compaction), so restarts replay the
    /// snapshot and at most about one segment; 0 never compacts. Default
    /// 64 MiB (about 250,000 events). A compaction reads the segments and
    /// rebuilds the state in a second authority on its own thread: it
    /// costs as much memory as the node's live orders, while it runs.
    /// Cluster mode without Kafka: the node's journal (its share of the
    /// order log) is sealed at this size too; the segments are kept for
    /// the log's readers and never read at start.
    pub journal_segment_bytes: u64,
    /// Purchase requests per second one user id may send to one core
    /// (429 `rate_limited` above it); 0 turns it off. Default 0 (off): the
    /// per-user limit already bounds what a user can buy; turn this on to
    /// shed bots' load before it reaches the stock. Costs one map entry
    /// (16 bytes) per user per core.
    pub rate_limit_user_per_s: f64,
    /// Burst of the per-user rate limit. Default 10.
    pub rate_limit_user_burst: u32,
    /// Purchase requests per second one client IP may send to one core;
    /// 0 turns it off. Default 0 (off): buyers behind one NAT or proxy
    /// share an address.
    pub rate_limit_ip_per_s: f64,
    /// Burst of the per-IP rate limit. Default 100.
    pub rate_limit_ip_burst: u32,
    /// Keys each rate limit tracks per core; past it new keys go
    /// unlimited until idle ones are swept. Default 100,000 (~2 MiB).
    pub rate_limit_max_tracked: usize,
    /// Keys buyer tokens are verified with (env `SECKILL_BUYER_KEYS`,
    /// comma-separated; never a flag: flags show in `ps`). Set, every
    /// purchase and order call needs `Authorization: Bearer <buyer
    /// token>`; any listed key verifies, `seckill token` signs with the
    /// first. Cost: one HMAC-SHA256 of the token per purchase. Default
    /// none: trusted mode, the body's `user_id` is believed.
    pub buyer_keys: crate::auth::BuyerKeys,
    /// The payment service's token for `POST /orders/{id}/pay` (env
    /// `SECKILL_PAYMENT_TOKEN`); the admin token pays too. Without it and
    /// without `buyer_keys`, `/pay` is open (the demo). Default none.
    pub payment_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            data_dir: PathBuf::from("./data"),
            admin_token: None,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            redis: None,
            kafka: None,
            kafka_topic: "seckill.orders".into(),
            kafka_partitions: 6,
            kafka_timeout_ms: 5_000,
            kafka_linger_ms: 2,
            settler_group: "seckill-settler".into(),
            node_id: 1,
            driver: Driver::Legacy,
            demo: false,
            stock_mode: StockModeSetting::Leased,
            lease_ttl_s: 5,
            redis_timeout_ms: 500,
            redis_min_replicas: None,
            journal_grace_s: 30,
            max_connections: 10_000,
            idle_timeout_s: 60,
            request_timeout_s: 10,
            write_timeout_s: 10,
            admission_tokens: 1024,
            admission_queue: 4096,
            idempotency_ttl_s: stock::embedded::DEFAULT_KEY_TTL_S,
            order_retention_s: stock::embedded::DEFAULT_ORDER_RETENTION_S,
            journal_segment_bytes: 64 * 1024 * 1024,
            rate_limit_user_per_s: 0.0,
            rate_limit_user_burst: 10,
            rate_limit_ip_per_s: 0.0,
            rate_limit_ip_burst: 100,
            rate_limit_max_tracked: 100_000,
            buyer_keys: crate::auth::BuyerKeys::default(),
            payment_token: None,
        }
    }
}

impl Config {
    /// Loads flags (and the environment), then the TOML file they name.
    pub fn load() -> anyhow::Result<Config> {
        Config::from_flags(Flags::parse())
    }

    /// The Kafka order log's settings, in Kafka mode.
    pub fn kafka_options(&self) -> Option<queue::KafkaOptions> {
        let brokers = self.kafka.as_ref()?;
        let mut opts = queue::KafkaOptions::new(brokers.clone());
        opts.topic = self.kafka_topic.clone();
        opts.partitions = self.kafka_partitions;
        opts.message_timeout = std::time::Duration::from_millis(self.kafka_timeout_ms);
        opts.linger = std::time::Duration::from_millis(self.kafka_linger_ms);
        opts.origin = Some(format!("node-{}", self.node_id));
        Some(opts)
    }

    /// The per-user and per-IP purchase rate limits (`None`: off).
    pub fn rate_limits(&self) -> (Option<Rate>, Option<Rate>) {
        let rate = |per_s: f64, burst: u32| (per_s > 0.0).then_some(Rate { per_s, burst });
        (
            rate(self.rate_limit_user_per_s, self.rate_limit_user_burst),
            rate(self.rate_limit_ip_per_s, self.rate_limit_ip_burst),
        )
    }

    /// Builds the configuration from parsed flags: flags win over the file,
    /// the file over the defaults.
    pub fn from_flags(flags: Flags) -> anyhow::Result<Config> {
        let mut config = match &flags.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = flags.listen {
            config.listen = v;
        }
        if let Some(v) = flags.data_dir {
            config.data_dir = v;
        }
        if flags.admin_token.is_some() {
            config.admin_token = flags.admin_token;
        }
        if let Some(v) = flags.cores {
            config.cores = v;
        }
        if flags.redis.is_some() {
            config.redis = flags.redis;
        }
        if flags.kafka.is_some() {
            config.kafka = flags.kafka;
        }
        if let Some(v) = flags.kafka_topic {
            config.kafka_topic = v;
        }
        if let Some(v) = flags.node_id {
            config.node_id = v;
        }
        if let Some(v) = flags.driver {
            config.driver = v;
        }
        if let Some(v) = flags.stock_mode {
            config.stock_mode = v;
        }
        if let Some(v) = flags.write_timeout_s {
            config.write_timeout_s = v;
        }
        config.demo |= flags.demo;
        // Secrets come from the file or the environment, never from flags.
        if let Ok(keys) = std::env::var("SECKILL_BUYER_KEYS") {
            config.buyer_keys = crate::auth::BuyerKeys::parse_list(&keys)
                .map_err(|e| anyhow::anyhow!("SECKILL_BUYER_KEYS: {e}"))?;
        }
        if let Ok(token) = std::env::var("SECKILL_PAYMENT_TOKEN") {
            config.payment_token = Some(token);
        }
        config.validate()?;
        Ok(config)
    }

    fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("bad config {}: {e}", path.display()))
    }

    /// Checks the settings make sense together.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.cores >= 1, "cores must be at least 1");
        anyhow::ensure!(self.cores <= 1024, "cores must be at most 1024");
        anyhow::ensure!(
            self.max_connections >= self.cores,
            "max_connections must be at least cores"
        );
        anyhow::ensure!(
            self.admission_tokens >= 1,
            "admission_tokens must be at least 1"
        );
        anyhow::ensure!(
            self.idle_timeout_s >= 1,
            "idle_timeout_s must be at least 1"
        );
        anyhow::ensure!(
            self.request_timeout_s >= 1,
            "request_timeout_s must be at least 1"
        );
        anyhow::ensure!(
            self.write_timeout_s >= 1,
            "write_timeout_s must be at least 1"
        );
        anyhow::ensure!(
            self.journal_segment_bytes == 0 || self.journal_segment_bytes >= 4096,
            "journal_segment_bytes must be 0 (never compact) or at least 4096"
        );
        if let Some(token) = &self.admin_token {
            anyhow::ensure!(
                !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()),
                "admin token must be non-empty visible ASCII"
            );
        }
        if let Some(token) = &self.payment_token {
            anyhow::ensure!(
                !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic()),
                "payment token must be non-empty visible ASCII"
            );
        }
        if self.redis.is_some() || self.kafka.is_some() {
            anyhow::ensure!(
                self.admin_token.is_some(),
                "cluster mode (--redis/--kafka) needs --admin-token: there is no default token"
            );
        }
        if self.kafka.is_some() {
            anyhow::ensure!(
                self.redis.is_some(),
                "the Kafka order log (--kafka) needs the Redis stock authority (--redis)"
            );
            anyhow::ensure!(
                !self.kafka_topic.is_empty(),
                "kafka_topic must not be empty"
            );
            anyhow::ensure!(
                self.kafka_partitions >= 1,
                "kafka_partitions must be at least 1"
            );
            anyhow::ensure!(
                self.kafka_timeout_ms >= 100,
                "kafka_timeout_ms must be at least 100"
            );
        }
        for (name, per_s, burst) in [
            (
                "rate_limit_user",
                self.rate_limit_user_per_s,
                self.rate_limit_user_burst,
            ),
            (
                "rate_limit_ip",
                self.rate_limit_ip_per_s,
                self.rate_limit_ip_burst,
            ),
        ] {
            anyhow::ensure!(
                per_s.is_finite() && per_s >= 0.0,
                "{name}_per_s must be 0 (off) or a positive rate"
            );
            anyhow::ensure!(burst >= 1, "{name}_burst must be at least 1");
        }
        anyhow::ensure!(self.lease_ttl_s >= 1, "lease_ttl_s must be at least 1");
        anyhow::ensure!(
            self.journal_grace_s >= 1,
            "journal_grace_s must be at least 1"
        );
        anyhow::ensure!(
            self.redis_timeout_ms >= 10,
            "redis_timeout_ms must be at least 10"
        );
        Ok(())
    }
}

/// Seconds from `600`, `30s`, `10m`, `2h` or `1d`.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit in {text:?}: use s, m, h or d")),
    };
    number
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is not a positive duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("seckill.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\ncores = 3\nidle_timeout_s = 5\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(file),
            cores: Some(2),
            ..Flags::default()
        };
        let c = Config::from_flags(flags).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.cores, 2);
        assert_eq!(c.idle_timeout_s, 5);
        assert_eq!(c.request_timeout_s, 10);
    }

    #[test]
    fn rejects_bad_settings() {
        let flags = Flags {
            cores: Some(0),
            ..Flags::default()
        };
        assert!(Config::from_flags(flags).is_err());
        let flags = Flags {
            redis: Some("redis://127.0.0.1".into()),
            ..Flags::default()
        };
        let err = Config::from_flags(flags).unwrap_err().to_string();
        assert!(err.contains("admin-token"), "{err}");
        let flags = Flags {
            kafka: Some("127.0.0.1:9092".into()),
            admin_token: Some("t".into()),
            ..Flags::default()
        };
        let err = Config::from_flags(flags).unwrap_err().to_string();
        assert!(err.contains("--redis"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "no_such_setting = 1\n").unwrap();
        let flags = Flags {
            config: Some(file),
            ..Flags::default()
        };
        assert!(Config::from_flags(flags).is_err());
        let flags = Flags {
            write_timeout_s: Some(0),
            ..Flags::default()
        };
        let err = Config::from_flags(flags).unwrap_err().to_string();
        assert!(err.contains("write_timeout_s"), "{err}");
    }

    #[test]
    fn ttls_take_units() {
        assert_eq!(parse_ttl("600"), Ok(600));
        assert_eq!(parse_ttl("30s"), Ok(30));
        assert_eq!(parse_ttl("10m"), Ok(600));
        assert_eq!(parse_ttl("2h"), Ok(7_200));
        assert_eq!(parse_ttl("1d"), Ok(86_400));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("10x").is_err());
        assert!(parse_ttl("m").is_err());
    }
}
