//! The Redis side of the cluster stock authority: a sale's pool, the
//! nodes' leases, per-user limits, idempotency records and orders, all kept
//! in Redis and changed only by the Lua scripts in `scripts/`.
//!
//! Layout:
//! - `store`: [`RedisStore`], the async client (redis crate 1.x, tokio),
//!   one round trip per call; a batch of reservations is one pipeline.
//! - `scripts/*.lua`: one script per change (create, switch, lease,
//!   heartbeat, return_lease, reclaim, reserve, transition; node_claim,
//!   node_release, nodes_live), each opening
//!   with its KEYS/ARGV/return contract; loaded with `include_str!`.
//! - `node`: [`NodeClaim`], a node process's claim on its node id (one
//!   live process per id; lapses unless refreshed) with its published
//!   Kafka delivery timeout; [`Persistence`], whether Redis persists.
//! - `stats`: each node's stats record (`sk:{stats}:node:<id>`, TTL) and
//!   the read-back of every live node's, for the operator's view.
//!
//! # Data model
//!
//! Every key of sale `S` starts with `sk:{S}:`; the hash tag `{S}` puts a
//! whole sale in one slot, so the scripts (which name every key they touch
//! in KEYS) run unchanged on Redis Cluster.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `spec` | HASH | stock, per_user_limit, starts_at, ends_at (0 = none), payment_timeout_s, switch = live / paused / closed |
//! | `pool` | string | units neither leased nor sold |
//! | `sold` | string | units in reserved + paid orders |
//! | `leases` | HASH | node → units leased to it and not yet sold |
//! | `hb` | HASH | node → heartbeat deadline (Unix ms, Redis time) |
//! | `wants` | HASH | node → deadline (Unix ms, Redis time) of its want: its shards are dry, the pool is empty and other nodes hold leased units; they give theirs back (`want.lua`, `give_back.lua`) |
//! | `users` | HASH | user → units held in live (reserved, paid) orders |
//! | `idem` | HASH | Idempotency-Key → `fingerprint_hex\|order_id` (only successful orders write one, so it is bounded by the stock) |
//! | `orders` | HASH | order_id → JSON `{user_id, quantity, status, expires_at, node, key?, fp?}` (fp: the key's fingerprint, 16 hex digits) |
//! | `due` | ZSET | reserved order_id by expires_at |
//! | `gone:<order_id>` | string, TTL | a tombstone: the node that made this order id gave up on its reservation, which Redis never recorded; a late copy of it is refused (`RedisStore::abandon`) |
//! | `unlogged` | ZSET | `order_id\|change` (reserved, paid, cancelled, expired; released with Kafka only) by Redis time in ms, written with the change; removed by the settler once the Kafka log shows it, or by the node once its journal has it; with the journal, an entry past the grace is claimed by a node's reconciler (`claim_unlogged.lua` re-scores it to now) |
//!
//! On a Redis Cluster (`RedisStore::connect` with a seed list, or one URL
//! of a cluster-enabled server) every script call and every MULTI names
//! keys of one slot only: one sale's keys, or one of the global keys below,
//! alone. The batched calls (reserve, recall, heartbeat) go as one pipeline
//! to one server, but as one concurrent script call per sale on a cluster,
//! where a pipeline may not span slots.
//!
//! `sk:sales` (a SET of sale ids, another slot) is written by a plain SADD
//! beside the create script. `sk:nodes` (a HASH, another slot) holds the
//! node claims: node id → JSON `{token, kafka_timeout_ms, started_at,
//! expires_at}` (`node_claim.lua`, `node_release.lua`, `nodes_live.lua`).
//!
//! Invariant (every script keeps it): `pool + sum(leases) + sold == stock`.
//! A lease moves units pool → leases; a reservation leases → sold (or pool
//! → sold in the classic per-request mode); a cancel or expiry sold → pool;
//! a returned or reclaimed lease, or units given back, leases → pool; an
//! abandoned reservation that Redis never recorded leases → pool (the node
//! had dropped the units).
//!
//! # Errors
//!
//! `StockError::Unavailable` means nothing was applied (Redis unreachable,
//! or it answered with an error); `StockError::Undetermined` means the call
//! may have been applied (no answer within the timeout, or the connection
//! broke after sending). Reservations and transitions are idempotent (by
//! order id, by target status), so an undetermined one is settled by
//! repeating it or reading the order.

mod node;
pub mod stats;
mod store;

pub use node::{ClaimOutcome, LiveNode, NodeClaim, Persistence, NODES_KEY};

pub use store::{
    Abandoned, Created, KeyRecall, LeaseGrant, Moved, Recalled, RedisStore, ReserveCall,
    ReserveOutcome, SaleStatus, SaleSwitchState, RESERVE_CALL_MAX,
};
pub use store::{Ask, Tail};
