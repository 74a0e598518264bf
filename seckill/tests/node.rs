//! Integration tests of the `seckill` binary: each test starts real node
//! processes on temp data dirs and talks HTTP/1.1 to them over TCP.
//!
//! Layout:
//! - `support`: the [`support::Node`] process handle, the blocking HTTP
//!   client, the journal reader.
//! - `contention`: many buyers, few units: no oversell, limits hold, every
//!   acknowledged order is in the journal exactly once.
//! - `idempotency`: replays, reused keys, concurrent duplicates, replays
//!   across restarts and after sell-out.
//! - `compaction`: the journal folded into a snapshot stays small; a crash
//!   at each step of a compaction restarts to the same state.
//! - `crash`: SIGKILL mid-sale loses nothing acknowledged and resells nothing.
//! - `lifecycle`: pay, cancel, expiry, and their survival over restarts.
//! - `admin`: the admin token, the sale gate and switches, sale validation.
//! - `bad_input`: malformed and oversized requests, slow clients,
//!   pipelining and keep-alive.
//! - `memory`: finished orders and idempotency records are forgotten;
//!   a long buy/cancel loop keeps the node's RSS flat.
//! - `journal_replay`: property test, in process, of the journal order that
//!   purchases, moves and switches racing at every await point leave, and
//!   of its replay (no real process: the order log is scripted).
//! - `runtime`: both monoio drivers, the connection cap, the idle timeout.
//! - `switch_crash`: pause/resume/close racing with purchases, then
//!   SIGKILL: the restart shows the same sales and orders.
//! - `cluster`: several nodes on one real `redis-server` (cluster mode).
//! - `redis_cluster`: nodes on a real Redis Cluster (3 masters + 3
//!   replicas), sales spread over every master.
//! - `cluster_journal`: a cluster node's own journal is sealed into kept
//!   segments, and a restart reads only the live file.
//! - `hygiene`: one live node per node id; the settler stops at an
//!   unreadable event and keeps its grace above the nodes' delivery
//!   timeouts; start-up warnings about persistence and replication.
//! - `replay`: idempotency across cluster nodes: replays after sell-out,
//!   pause, close and restart; replays log the current state; key TTL;
//!   a move whose log append failed.
//! - `kafka`: cluster mode with the Kafka order log and the settler, on a
//!   real `redis-server` and a real broker (tansu).
//! - `rebalance`: no false sold-out in cluster mode: units leased by one
//!   node reach a buyer on another; sold-out answers cost Redis nothing.
//! - `identity`: buyer tokens, ownership of orders, the payment token,
//!   unguessable order ids, tickets, in both modes.
//! - `stats`: `/admin/stats` counts exactly the purchases made, per node
//!   and across the live nodes of a cluster, and Redis failures.
//! - `dashboard`: `/dashboard` in headless Chromium (DevTools protocol):
//!   login, sold count and progress moving, the pause button, a cluster.
//! - `deploy`: the alert rules pass promtool; the Grafana dashboard and the
//!   rules name only metrics a node exposes.
//! - `logs`: no colour codes in a log file; `--log-format json`.
//! - `trace`: one request id from the buyer to the journal, the Kafka
//!   headers and the settler's log.

#[path = "node/support.rs"]
mod support;

#[path = "node/admin.rs"]
mod admin;
#[path = "node/bad_input.rs"]
mod bad_input;
#[path = "node/cluster.rs"]
mod cluster;
#[path = "node/cluster_journal.rs"]
mod cluster_journal;
#[path = "node/compaction.rs"]
mod compaction;
#[path = "node/contention.rs"]
mod contention;
#[path = "node/crash.rs"]
mod crash;
#[path = "node/dashboard.rs"]
mod dashboard;
#[path = "node/deploy.rs"]
mod deploy;
#[path = "node/hygiene.rs"]
mod hygiene;
#[path = "node/idempotency.rs"]
mod idempotency;
#[path = "node/identity.rs"]
mod identity;
#[path = "node/journal_replay.rs"]
mod journal_replay;
#[path = "node/kafka.rs"]
mod kafka;
#[path = "node/lifecycle.rs"]
mod lifecycle;
#[path = "node/logs.rs"]
mod logs;
#[path = "node/memory.rs"]
mod memory;
#[path = "node/rebalance.rs"]
mod rebalance;
#[path = "node/redis_cluster.rs"]
mod redis_cluster;
#[path = "node/replay.rs"]
mod replay;
#[path = "node/runtime.rs"]
mod runtime;
#[path = "node/stats.rs"]
mod stats;
#[path = "node/switch_crash.rs"]
mod switch_crash;
#[path = "node/trace.rs"]
mod trace;
