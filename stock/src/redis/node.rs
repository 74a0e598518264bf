//! A node's record in Redis, and the checks of what Redis itself promises.
//!
//! Node ids are unique among live nodes: two processes with one id would
//! share one lease field and could answer 200 for each other's order ids.
//! Each node process claims its id at start with a random token
//! ([`RedisStore::claim_node`]); the claim lapses unless refreshed (the
//! cluster authority refreshes it with its lease heartbeats), and is given
//! back on a clean stop ([`RedisStore::release_node`]). The same record
//! publishes what other processes must know of the node: the delivery
//! timeout of its Kafka producer, which the settler's grace must exceed
//! ([`RedisStore::live_nodes`]).
//!
//! All claims are fields of one HASH, `sk:nodes`: node id → JSON
//! `{token, kafka_timeout_ms, started_at, expires_at}` (Unix ms, Redis
//! time), so a reader sees every node in one call (`HGETALL sk:nodes`).

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::Script;
use tracing::warn;

use super::RedisStore;
use crate::model::StockError;

/// The HASH of node claims.
pub const NODES_KEY: &str = "sk:nodes";

static CLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/node_claim.lua")));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/node_release.lua")));
static LIVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/nodes_live.lua")));

/// One node process's claim on its node id.
#[derive(Clone, Debug)]
pub struct NodeClaim {
    pub node: u32,
    /// 128 random bits, hex: tells this process from another with the id.
    pub token: String,
    /// The claim lapses this long after its last refresh.
    pub ttl: Duration,
    /// The node's Kafka delivery timeout (0: no Kafka order log).
    pub kafka_timeout_ms: u64,
}

impl NodeClaim {
    /// A claim with a fresh random token.
    ///
    /// Errors: `Unavailable` when the kernel gives no random bytes.
    pub fn new(node: u32, ttl: Duration, kafka_timeout_ms: u64) -> Result<Self, StockError> {
        use std::io::Read;
        let mut bytes = [0u8; 16];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| StockError::Unavailable(format!("no random token: {e}")))?;
        Ok(NodeClaim {
            node,
            token: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            ttl,
            kafka_timeout_ms,
        })
    }
}

/// What [`RedisStore::claim_node`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This process's live claim, refreshed.
    Refreshed,
    /// No live claim was there (first claim, or this process's lapsed):
    /// claimed now.
    Claimed,
    /// Another process holds the id, until `expires_at_ms` (Redis time)
    /// unless it refreshes it; `None`: a claim that cannot be read.
    InUse { expires_at_ms: Option<u64> },
}

/// A node whose claim is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveNode {
    pub node: u32,
    /// Its Kafka delivery timeout; 0 without a Kafka order log; `None`
    /// when its claim cannot be read.
    pub kafka_timeout_ms: Option<u64>,
    pub expires_at_ms: u64,
}

/// Whether Redis keeps its data over a restart, from `CONFIG GET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// An append-only file (`appendonly yes`).
    AppendOnly,
    /// RDB snapshots only (`save` rules): the writes since the last one
    /// are lost on a crash.
    Snapshots(String),
    /// Neither: a restart starts empty.
    None,
    /// `CONFIG GET` was refused (renamed or disabled, as managed services
    /// do), or failed.
    Unknown(String),
}

impl Persistence {
    /// One WARN line when Redis may lose acknowledged reservations on a
    /// restart; nothing for an append-only file.
    pub fn warn_if_at_risk(&self) {
        const RISK: &str = "a Redis restart loses acknowledged reservations and the stock count \
                            rolls back (units sold again); run Redis with appendonly yes";
        match self {
            Persistence::AppendOnly => {}
            Persistence::Snapshots(save) => warn!(
                save,
                "Redis has no append-only file, only snapshots: {RISK} (the writes since the \
                 last snapshot)"
            ),
            Persistence::None => warn!("Redis has no persistence (appendonly no, save \"\"): {RISK}"),
            Persistence::Unknown(why) => warn!(
                error = why,
                "Redis persistence unknown (CONFIG GET refused): if Redis has no persistence, {RISK}"
            ),
        }
    }
}

impl RedisStore {
    /// Claims `claim.node` for this process, or refreshes its claim:
    /// refused (`InUse`) while another process's claim is live.
    pub async fn claim_node(&self, claim: &NodeClaim) -> Result<ClaimOutcome, StockError> {
        let mut inv = CLAIM.prepare_invoke();
        inv.key(NODES_KEY)
            .arg(claim.node)
            .arg(&claim.token)
            .arg(u64::try_from(claim.ttl.as_millis()).unwrap_or(u64::MAX))
            .arg(claim.kafka_timeout_ms);
        let (code, expires): (i64, i64) = self.invoke(&inv).await?;
        Ok(match code {
            1 => ClaimOutcome::Refreshed,
            2 => ClaimOutcome::Claimed,
            _ => ClaimOutcome::InUse {
                expires_at_ms: u64::try_from(expires).ok(),
            },
        })
    }

    /// Gives the id back if this process still holds it; `true` if it did.
    pub async fn release_node(&self, claim: &NodeClaim) -> Result<bool, StockError> {
        let mut inv = RELEASE.prepare_invoke();
        inv.key(NODES_KEY).arg(claim.node).arg(&claim.token);
        let released: i64 = self.invoke(&inv).await?;
        Ok(released == 1)
    }

    /// The nodes whose claims are live (lapsed ones are removed).
    pub async fn live_nodes(&self) -> Result<Vec<LiveNode>, StockError> {
        let mut inv = LIVE.prepare_invoke();
        inv.key(NODES_KEY);
        let flat: Vec<i64> = self.invoke(&inv).await?;
        Ok(flat
            .chunks_exact(3)
            .map(|n| LiveNode {
                node: u32::try_from(n[0]).unwrap_or(u32::MAX),
                kafka_timeout_ms: u64::try_from(n[1]).ok(),
                expires_at_ms: u64::try_from(n[2]).unwrap_or(0),
            })
            .collect())
    }

    /// The replicas a reservation must reach ([`RedisStore::with_min_replicas`]):
    /// `asked`, or, when unset, 1 if every primary has a replica now and 0
    /// if not. Warns when the result leaves acknowledged reservations to a
    /// single copy (0 against a primary without a replica), or can never
    /// be met (more than the primary has: every purchase answers 503 until
    /// replicas are added). Never fails: replicas unknown count as none.
    pub async fn min_replicas_for(&self, asked: Option<u32>) -> u32 {
        let replicas = match self.replicas().await {
            Ok(n) => n,
            Err(e) => {
                warn!(error = %e, "cannot count Redis replicas; taking none");
                0
            }
        };
        let min = asked.unwrap_or(u32::from(replicas > 0));
        if min == 0 && replicas == 0 {
            warn!(
                "the Redis primary has no replica and redis_min_replicas is 0: a failover or a \
                 lost disk loses acknowledged reservations and the stock count rolls back \
                 (units sold again); add a replica (the default then waits for it)"
            );
        } else if min > replicas {
            warn!(
                min,
                replicas,
                "redis_min_replicas is more than the Redis primary's replicas: every \
                 purchase answers 503 until enough replicas acknowledge"
            );
        }
        min
    }

    /// Whether Redis persists its data (`CONFIG GET appendonly` and
    /// `save`). Never fails: a refused `CONFIG` is `Unknown`.
    pub async fn persistence(&self) -> Persistence {
        let get = |name: &str| {
            let mut cmd = ::redis::cmd("CONFIG");
            cmd.arg("GET").arg(name);
            cmd
        };
        let appendonly: Result<Vec<String>, _> = self.query(&get("appendonly")).await;
        let save: Result<Vec<String>, _> = self.query(&get("save")).await;
        match (appendonly, save) {
            (Ok(a), _) if a.get(1).is_some_and(|v| v == "yes") => Persistence::AppendOnly,
            (Ok(a), Ok(s)) if a.len() == 2 && s.len() == 2 => {
                if s[1].trim().is_empty() {
                    Persistence::None
                } else {
                    Persistence::Snapshots(s[1].clone())
                }
            }
            (Err(e), _) | (_, Err(e)) => Persistence::Unknown(e.to_string()),
            _ => Persistence::Unknown("CONFIG GET answered nothing".into()),
        }
    }
}
