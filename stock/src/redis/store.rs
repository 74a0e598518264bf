//! [`RedisStore`]: the async client of the cluster stock authority. Each
//! method is one round trip (one script, one command, or one pipeline), and
//! every one of them is bounded by the response timeout given to
//! [`RedisStore::connect`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::redis::{
    ErrorKind, RedisError, RedisResult, Script, ScriptInvocation, ServerErrorKind, Value,
};
use serde::Deserialize;

use crate::model::{Order, OrderChange, OrderStatus, SaleSpec, StockError, Switch};

mod conn;
mod rebalance;
use conn::Conn;
pub use rebalance::{Ask, Tail};

/// The set of every sale id. Another slot than the sales' own keys, so it is
/// written by a plain SADD beside the create script, never inside it.
const SALES_KEY: &str = "sk:sales";
/// Most reservations in one `reserve.lua` call: Redis runs nothing else
/// while a script runs, so a call is kept to about a millisecond.
pub const RESERVE_CALL_MAX: usize = 128;

/// The async client of the Redis side of the cluster stock authority, on
/// one Redis server, a Redis Cluster, or the primary Sentinel names.
/// Cheap to clone (one shared, self-reconnecting connection).
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    timeout: Duration,
    scripts: Arc<Scripts>,
    /// Write every order change into the sale's not-yet-logged set (a
    /// Kafka order log; see [`RedisStore::tracking_log`]).
    track: bool,
    /// Write reservations, pay, cancel and expiry (not releases) into it
    /// ([`RedisStore::tracking_moves`]).
    track_moves: bool,
    /// How long past an order's `expires_at` a late copy of its reserve is
    /// still refused by its tombstone ([`RedisStore::abandon`]); a copy
    /// arriving later than that is refused by its age. Far above the
    /// response timeout: [`grace_for`].
    grace_s: u64,
    /// How long an Idempotency-Key record lives after its order is made
    /// (0: for ever); see [`RedisStore::with_key_ttl`].
    key_ttl_s: u64,
    /// Replicas that must have a batch of reservations before any of them
    /// counts as made (`WAIT`); see [`RedisStore::with_min_replicas`].
    min_replicas: u32,
}

/// The tombstone grace for a response `timeout`: at least a minute, and
/// at least 100 timeouts.
fn grace_for(timeout: Duration) -> u64 {
    (timeout.as_secs() * 100).max(60)
}

/// What [`RedisStore::create_sale`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Created {
    /// The sale is new; its whole stock is in the pool.
    New,
    /// The same spec was already there; nothing changed.
    Same,
}

/// The operator's switch as Redis holds it.
pub use crate::model::SaleSwitchState;

/// One sale as Redis sees it, read atomically (MULTI/EXEC), so
/// `pool + leased + sold == spec.stock` holds in every snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaleStatus {
    pub spec: SaleSpec,
    pub switch: SaleSwitchState,
    /// Units neither leased nor sold.
    pub pool: u64,
    /// Units in reserved and paid orders.
    pub sold: u64,
    /// Units leased to nodes and not yet sold (the sum of the leases).
    pub leased: u64,
}

/// What [`RedisStore::lease`] granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    pub granted: u64,
    /// The pool right after the grant.
    pub pool_left: u64,
}

/// One reservation in a [`RedisStore::reserve_batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReserveCall {
    pub sale_id: String,
    pub node: u32,
    /// Made by the caller; a retry with the same id is never charged twice.
    pub order_id: String,
    pub user_id: String,
    pub quantity: u32,
    pub idempotency_key: Option<String>,
    /// What the key is bound to ([`crate::Attempt::fingerprint`]).
    pub fingerprint: u64,
    /// Unix seconds.
    pub expires_at: u64,
    /// `true`: the classic per-request design, units come from the pool
    /// directly; `false`: they are charged to the node's lease.
    pub from_pool: bool,
}

/// What one reservation decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// The order is written (or was already, under this order id).
    Reserved,
    /// The Idempotency-Key already produced this order (current status).
    Replay(Order),
    LimitExceeded,
    /// The key was used with another fingerprint.
    KeyReused,
    /// The node's lease has fewer units than asked: it was reclaimed (or
    /// returned). The node's local units for this sale are no longer its.
    NoLease,
    /// `from_pool` and the pool has fewer units than asked.
    SoldOut,
    /// Paused, closed, or outside `starts_at..ends_at` (Redis time).
    SaleNotOpen,
    /// The order id was given up on ([`RedisStore::abandon`] found it
    /// unrecorded and left a tombstone), or the call arrived far past the
    /// order's `expires_at`: nothing was charged, and the units are not
    /// this call's any more.
    Gone,
}

/// What [`RedisStore::abandon`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Abandoned {
    /// Redis had recorded the reservation; it is released now (or was
    /// already: `Unchanged`; or a replay answered it 200 meanwhile:
    /// `Kept`), as [`RedisStore::release`] does.
    Released(Moved),
    /// Redis never recorded it: a tombstone now refuses any late copy of
    /// the reserve, and `returned` units went from the node's lease back to
    /// the pool (0 on a repeat, or when the lease was returned or reclaimed
    /// meanwhile, which took the units back with it).
    NeverRecorded { returned: u64 },
}

/// What [`RedisStore::transition`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Moved {
    /// The order moved; this is it now.
    Changed(Order),
    /// The order already was in that status.
    Unchanged(Order),
    /// The order already was in that status, and the move is still in the
    /// not-yet-logged set (tracked moves only: [`RedisStore::tracking_log`],
    /// [`RedisStore::tracking_moves`]): its event may never have reached
    /// the order log. The caller logs it, then marks it logged.
    Unlogged(Order),
    /// The move is not allowed; the status the order is in, except for two
    /// time-based refusals of a reserved order: paying at or after
    /// `expires_at` answers `Invalid(Expired)`, expiring before it answers
    /// `Invalid(Reserved)`.
    Invalid(OrderStatus),
    NotFound,
    /// A release refused: a replay answered the order 200 on some node
    /// (reserve.lua marked it acknowledged), so no compensation may take
    /// it back. It stays as it is (reserved, until paid, cancelled or
    /// expired).
    Kept(Order),
}

/// One Idempotency-Key to look up ([`RedisStore::recall_keys`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecall {
    pub sale_id: String,
    pub key: String,
    /// What the request binds the key to ([`crate::Attempt::fingerprint`]).
    pub fingerprint: u64,
}

/// What [`RedisStore::recall_keys`] found for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recalled {
    /// No record (or one past its TTL).
    Unused,
    /// The key was used with another fingerprint.
    KeyReused,
    /// The key's order, with its current status; now marked acknowledged.
    Replay(Order),
}

impl RedisStore {
    /// Connects (one multiplexed connection that reconnects by itself after
    /// a failure). `timeout` bounds the connect and every later call, from
    /// the caller's first poll to the answer, reconnects included.
    ///
    /// `url` is one server (`redis://host:port`), a Redis Cluster (its
    /// seed list `redis://h1:p1,redis://h2:p2,...`, or one URL of a
    /// cluster-enabled server), or the sentinels of a primary
    /// (`redis+sentinel://h1:p1,h2:p2/NAME`, followed over a failover). On a cluster every script call keeps its
    /// keys in one slot (a sale's hash tag), and the batched calls
    /// (reserve, recall, heartbeat) send one script call per sale at once
    /// rather than one pipeline.
    ///
    /// Errors: `Unavailable` when Redis cannot be reached in time.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, StockError> {
        let conn = Conn::open(url, timeout).await?;
        Ok(RedisStore {
            conn,
            timeout,
            scripts: Arc::new(Scripts::new()),
            track: false,
            track_moves: false,
            grace_s: grace_for(timeout),
            key_ttl_s: crate::embedded::DEFAULT_KEY_TTL_S,
            min_replicas: 0,
        })
    }

    /// The same store, writing every order change (reserve, transition,
    /// release) into the sale's not-yet-logged set as `order_id|change`,
    /// scored by Redis time in ms, atomically with the change. The order
    /// log's consumer ([`RedisStore::mark_logged`]) removes what it sees;
    /// what stays past a grace period never reached the log and is
    /// reconciled ([`RedisStore::unlogged`]). For an order log that is not
    /// written in step with Redis (Kafka).
    pub fn tracking_log(mut self) -> Self {
        self.track = true;
        self
    }

    /// The same store, writing reservations, pay, cancel and expiry (not
    /// releases) into the sale's not-yet-logged set, for an order log
    /// written by the node right after the change (the journal): the node
    /// removes the entry once the event is durable
    /// ([`RedisStore::mark_logged`]); a repeat of a move whose entry is
    /// still there answers [`Moved::Unlogged`], so the move's event is
    /// logged by the repeat; and what no one logs within a grace is taken
    /// by some node's reconciler ([`RedisStore::claim_unlogged`]).
    pub fn tracking_moves(mut self) -> Self {
        self.track_moves = true;
        self
    }

    /// The same store, recording new Idempotency-Keys for `ttl_s` seconds
    /// (Redis time) from their order (0: for ever; the default is
    /// [`crate::embedded::DEFAULT_KEY_TTL_S`]). An expired record answers
    /// as absent at once; [`RedisStore::expire_keys`] forgets it.
    pub fn with_key_ttl(mut self, ttl_s: u64) -> Self {
        self.key_ttl_s = ttl_s;
        self
    }

    /// The same store, counting a reservation as made only once `n`
    /// replicas have it: each batch of [`RedisStore::reserve_batch`] is
    /// followed, on the same connection, by `WAIT n` (half the response
    /// timeout at most); when fewer replicas acknowledge in time, the
    /// batch's `Reserved` and `Replay` answers become `Undetermined`, to be
    /// abandoned by order id like a lost reply (a replayed order is kept:
    /// its mark stands). [`RedisStore::recall_keys`] waits the same way.
    /// 0 (the default) waits for none.
    ///
    /// What it gives: a reservation answered `Reserved` is on `n` replicas
    /// as well as the primary, so a failover that promotes one of them
    /// keeps it. What it does not: Redis replication stays asynchronous,
    /// `WAIT` is not a consensus; a failover may promote a replica that is
    /// not among the `n` (with more replicas than `n`), and a write that
    /// WAIT timed out on may still survive (it is abandoned by order id).
    pub fn with_min_replicas(mut self, n: u32) -> Self {
        self.min_replicas = n;
        self
    }

    /// The error of an answer that fewer than `min_replicas` replicas
    /// acknowledged (`acked`: what WAIT counted, if it answered).
    fn unreplicated(&self, acked: Option<u64>) -> StockError {
        StockError::Undetermined(format!(
            "the write reached {} of {} replicas within {} ms",
            acked.map_or("?".into(), |a| a.to_string()),
            self.min_replicas,
            self.wait_ms()
        ))
    }

    /// The `WAIT` timeout: half the response timeout, so the answer comes
    /// within it (at least 1 ms: `WAIT n 0` would block for ever).
    fn wait_ms(&self) -> u64 {
        (millis(self.timeout) / 2).max(1)
    }

    /// The fewest replicas any primary has now: `connected_slaves` of
    /// `INFO replication` on one server; on a cluster, the replicas of the
    /// master with the fewest (from `CLUSTER NODES`).
    pub async fn replicas(&self) -> Result<u32, StockError> {
        if self.conn.is_cluster() {
            let mut cmd = ::redis::cmd("CLUSTER");
            cmd.arg("NODES");
            let nodes: String = self.query(&cmd).await?;
            return Ok(fewest_replicas(&nodes));
        }
        let mut cmd = ::redis::cmd("INFO");
        cmd.arg("replication");
        let info: String = self.query(&cmd).await?;
        Ok(info
            .lines()
            .find_map(|l| l.trim().strip_prefix("connected_slaves:"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    /// Creates a sale with its whole stock in the pool, and adds it to the
    /// set of sales. The same spec again is `Same`; another spec under the
    /// same id is refused (`InvalidState`), whatever the sale's state.
    pub async fn create_sale(&self, spec: &SaleSpec) -> Result<Created, StockError> {
        let k = Keys::new(&spec.sale_id);
        let mut inv = self.scripts.create.prepare_invoke();
        inv.key(k.spec()).key(k.pool()).key(k.sold());
        inv.arg(spec.stock)
            .arg(spec.per_user_limit)
            .arg(spec.starts_at)
            .arg(spec.ends_at.unwrap_or(0))
            .arg(spec.payment_timeout_s)
            .arg(u8::from(spec.ticket_required));
        let created: i64 = self.invoke(&inv).await?;
        let created = match created {
            1 => Created::New,
            0 => Created::Same,
            _ => {
                return Err(StockError::InvalidState(
                    "the sale exists with another spec",
                ))
            }
        };
        // Also on `Same`: a crash between the script and this SADD heals on
        // the next create.
        let mut cmd = ::redis::cmd("SADD");
        cmd.arg(SALES_KEY).arg(&spec.sale_id);
        let _: i64 = self.query(&cmd).await?;
        Ok(created)
    }

    /// Applies an operator's switch. Closed is final: closing again is a
    /// no-op, pausing or resuming a closed sale is `InvalidState`.
    pub async fn switch(&self, sale_id: &str, to: Switch) -> Result<(), StockError> {
        let k = Keys::new(sale_id);
        let mut inv = self.scripts.switch.prepare_invoke();
        inv.key(k.spec()).arg(to.as_str());
        let answer: String = self.invoke(&inv).await?;
        match answer.as_str() {
            "ok" => Ok(()),
            "not_found" => Err(StockError::SaleNotFound),
            "closed" => Err(StockError::InvalidState("the sale is closed")),
            other => Err(unexpected("switch", other)),
        }
    }

    /// Every sale id, sorted.
    pub async fn sale_ids(&self) -> Result<Vec<String>, StockError> {
        let mut cmd = ::redis::cmd("SMEMBERS");
        cmd.arg(SALES_KEY);
        let mut ids: Vec<String> = self.query(&cmd).await?;
        ids.sort();
        Ok(ids)
    }

    /// The sale's spec, switch and counts in one atomic snapshot; `None`
    /// when there is no such sale.
    pub async fn status(&self, sale_id: &str) -> Result<Option<SaleStatus>, StockError> {
        let k = Keys::new(sale_id);
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("HGETALL")
            .arg(k.spec())
            .cmd("GET")
            .arg(k.pool())
            .cmd("GET")
            .arg(k.sold())
            .cmd("HVALS")
            .arg(k.leases());
        let mut conn = self.conn.clone();
        type Snapshot = (Vec<(String, String)>, Option<u64>, Option<u64>, Vec<u64>);
        let (fields, pool, sold, leases): Snapshot =
            self.bounded(pipe.query_async(&mut conn)).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let field = |name: &str| {
            fields
                .iter()
                .find(|(f, _)| f == name)
                .map(|(_, v)| v.as_str())
                .ok_or_else(|| unexpected("spec without", name))
        };
        let number = |name: &str| -> Result<u64, StockError> {
            field(name)?
                .parse()
                .map_err(|_| unexpected("spec field", name))
        };
        let ends_at = number("ends_at")?;
        let spec = SaleSpec {
            sale_id: sale_id.to_owned(),
            stock: number("stock")?,
            per_user_limit: u32::try_from(number("per_user_limit")?)
                .map_err(|_| unexpected("spec field", "per_user_limit"))?,
            starts_at: number("starts_at")?,
            ends_at: (ends_at != 0).then_some(ends_at),
            payment_timeout_s: number("payment_timeout_s")?,
            // Absent in sales created before tickets existed.
            ticket_required: fields
                .iter()
                .any(|(f, v)| f == "ticket_required" && v == "1"),
        };
        let switch = field("switch")?;
        let switch = switch
            .parse::<SaleSwitchState>()
            .map_err(|_| unexpected("switch state", switch))?;
        Ok(Some(SaleStatus {
            spec,
            switch,
            pool: pool.unwrap_or(0),
            sold: sold.unwrap_or(0),
            leased: leases.iter().sum(),
        }))
    }

    /// Leases up to `want` units from the pool to `node` and refreshes the
    /// node's heartbeat deadline to now + `ttl` (Redis time).
    ///
    /// Chunks shrink as the pool runs low, so the last units are spread
    /// over the nodes that still sell instead of stranded on one:
    /// `granted = min(want, pool, max(1, ceil(pool / 4)))`. A closed sale or
    /// an empty pool grants 0 (a paused one still leases). Unknown sale:
    /// `SaleNotFound`.
    ///
    /// An `Undetermined` answer may have leased units: they stay in the
    /// node's lease in Redis and come back by `return_lease` or `reclaim`.
    pub async fn lease(
        &self,
        sale_id: &str,
        node: u32,
        want: u64,
        ttl: Duration,
    ) -> Result<LeaseGrant, StockError> {
        let k = Keys::new(sale_id);
        let mut inv = self.scripts.lease.prepare_invoke();
        inv.key(k.spec())
            .key(k.pool())
            .key(k.leases())
            .key(k.hb())
            .arg(node)
            .arg(want)
            .arg(millis(ttl));
        let (granted, pool_left): (i64, i64) = self.invoke(&inv).await?;
        if granted < 0 {
            return Err(StockError::SaleNotFound);
        }
        Ok(LeaseGrant {
            granted: granted as u64,
            pool_left: pool_left.max(0) as u64,
        })
    }

    /// Refreshes the node's heartbeat deadline (now + `ttl`) in each sale
    /// where it holds a lease, in one pipeline. A lease that was already
    /// reclaimed is not brought back.
    pub async fn heartbeat(
        &self,
        sale_ids: &[String],
        node: u32,
        ttl: Duration,
    ) -> Result<(), StockError> {
        if sale_ids.is_empty() {
            return Ok(());
        }
        let ttl_ms = millis(ttl);
        let invocations: Vec<_> = sale_ids
            .iter()
            .map(|sale_id| {
                let k = Keys::new(sale_id);
                let mut inv = self.scripts.heartbeat.prepare_invoke();
                inv.key(k.leases()).key(k.hb()).arg(node).arg(ttl_ms);
                inv
            })
            .collect();
        let results = self
            .bounded(self.pipeline(&self.scripts.heartbeat, &invocations))
            .await?;
        for result in results {
            result.map_err(classify)?;
        }
        Ok(())
    }

    /// Gives the node's whole unsold lease back to the pool and forgets its
    /// heartbeat; returns how many units. 0 for an unknown sale.
    pub async fn return_lease(&self, sale_id: &str, node: u32) -> Result<u64, StockError> {
        let k = Keys::new(sale_id);
        let mut inv = self.scripts.return_lease.prepare_invoke();
        inv.key(k.pool()).key(k.leases()).key(k.hb()).arg(node);
        self.invoke(&inv).await
    }

    /// Run by any node: every lease whose heartbeat deadline passed (Redis
    /// time) goes back to the pool; returns how many units. A node whose
    /// lease was reclaimed gets `NoLease` when it next reserves against it.
    pub async fn reclaim(&self, sale_id: &str) -> Result<u64, StockError> {
        let k = Keys::new(sale_id);
        let mut inv = self.scripts.reclaim.prepare_invoke();
        inv.key(k.pool()).key(k.leases()).key(k.hb());
        self.invoke(&inv).await
    }

    /// Reserves a batch in one pipeline (one round trip): one atomic
    /// `reserve.lua` call per sale and up to [`RESERVE_CALL_MAX`]
    /// reservations; results in the batch's order.
    ///
    /// Per reservation the script, in order: answers `Reserved` without
    /// charging again when the order id already exists; replays an existing
    /// Idempotency-Key (same fingerprint → `Replay(order)`, other →
    /// `KeyReused`); checks the sale is open; checks and records the
    /// per-user limit; charges the node's lease (`NoLease` when short) or,
    /// `from_pool`, the pool (`SoldOut` when short); writes the order
    /// (reserved), `sold`, the expiry queue and the key record. The
    /// reservations of one call are decided one after another, each seeing
    /// what the earlier ones wrote.
    ///
    /// A pipeline of EVALSHA does not load a missing script: the calls that
    /// answered NOSCRIPT (a restarted or flushed Redis) are retried once
    /// after SCRIPT LOAD. Retrying is safe because a reservation is
    /// idempotent by order id.
    ///
    /// Errors: a reservation whose answer is `Undetermined` (timeout,
    /// connection lost after sending, or a script that failed part way) may
    /// have been applied: retry it with the same order id, or read the
    /// order, never guess.
    pub async fn reserve_batch(
        &self,
        calls: &[ReserveCall],
    ) -> Vec<Result<ReserveOutcome, StockError>> {
        if calls.is_empty() {
            return Vec::new();
        }
        // One script call per sale (and per RESERVE_CALL_MAX reservations),
        // each holding the indexes of its reservations in `calls`.
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, call) in calls.iter().enumerate() {
            match groups.iter_mut().find(|g| {
                g.len() < RESERVE_CALL_MAX
                    && calls[g[0]].sale_id == call.sale_id
                    && calls[g[0]].node == call.node
            }) {
                Some(group) => group.push(i),
                None => groups.push(vec![i]),
            }
        }
        let invocations: Vec<_> = groups
            .iter()
            .map(|g| self.reserve_invocation(calls, g))
            .collect();
        let mut out: Vec<Option<Result<ReserveOutcome, StockError>>> =
            calls.iter().map(|_| None).collect();
        let wait = (self.min_replicas > 0).then_some((self.min_replicas, self.wait_ms()));
        match self
            .bounded(self.pipeline_waiting(&self.scripts.reserve, &invocations, wait))
            .await
        {
            Ok(results) => {
                for (group, (result, acked)) in groups.iter().zip(results) {
                    let parsed = result
                        .map_err(|e| e.to_string())
                        .and_then(|v| ::redis::from_redis_value(v).map_err(|e| e.to_string()));
                    let replies: Vec<Value> = match parsed {
                        Ok(replies) => replies,
                        // The script may have failed part way, after some
                        // of its writes: every reservation of it is
                        // undetermined.
                        Err(e) => {
                            for &i in group {
                                out[i] = Some(Err(StockError::Undetermined(format!(
                                    "reserve script failed: {e}"
                                ))));
                            }
                            continue;
                        }
                    };
                    let mut replies = replies.into_iter();
                    // Fewer replicas than asked have the group's writes: a
                    // failover may lose them, so none is answered as made.
                    let unreplicated = wait.is_some_and(|(n, _)| acked.unwrap_or(0) < u64::from(n));
                    for &i in group {
                        out[i] = Some(match replies.next() {
                            // A replay names an order that may be the one
                            // whose WAIT just timed out: it waits too (the
                            // replay's own write comes after that order's).
                            Some(reply) => match parse_reserve(&calls[i], reply) {
                                Ok(ReserveOutcome::Reserved | ReserveOutcome::Replay(_))
                                    if unreplicated =>
                                {
                                    Err(self.unreplicated(acked))
                                }
                                parsed => parsed,
                            },
                            None => Err(StockError::Undetermined(
                                "reserve script answered fewer reservations than sent".into(),
                            )),
                        });
                    }
                }
            }
            Err(e) => {
                for slot in &mut out {
                    *slot = Some(Err(same_error(&e)));
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StockError::Undetermined("no reply".into()))))
            .collect()
    }

    /// Moves an order to `to` (`Paid`, `Cancelled` or `Expired`), exactly
    /// once. Time is Redis's clock (`TIME`), so nodes with skewed clocks
    /// judge alike; `_now_s`, the caller's clock, is not used.
    ///
    /// - to `Paid`: only from reserved and while now `< expires_at`; at or
    ///   after it the answer is `Invalid(Expired)` and the order stays
    ///   reserved until expiry runs.
    /// - to `Cancelled` / `Expired`: from reserved, the units go back to the
    ///   pool, the user's count and `sold` drop, the order leaves the
    ///   expiry queue. Expiring before `expires_at` is `Invalid(Reserved)`.
    /// - The move that already happened → `Unchanged`; any other move from
    ///   a non-reserved order → `Invalid(current status)`.
    ///
    /// `to == Reserved` is `InvalidState`. An `Undetermined` answer is
    /// settled by repeating the same move (`Changed` or `Unchanged`).
    pub async fn transition(
        &self,
        sale_id: &str,
        order_id: &str,
        to: OrderStatus,
        _now_s: u64,
    ) -> Result<Moved, StockError> {
        if to == OrderStatus::Reserved {
            return Err(StockError::InvalidState(
                "an order cannot move back to reserved",
            ));
        }
        self.apply_move(sale_id, order_id, to.into(), None)
            .await
            .map(|found| match found {
                Abandoned::Released(moved) => moved,
                Abandoned::NeverRecorded { .. } => Moved::NotFound,
            })
    }

    /// Compensation for an order that was never acknowledged to its buyer:
    /// from reserved, the order is cancelled (units back to the pool, the
    /// user's count and `sold` drop) and its Idempotency-Key record is
    /// dropped, so the buyer's retry is a fresh attempt. An order already
    /// cancelled is `Unchanged`; a paid or expired one `Invalid`; one a
    /// replay answered 200 (on any node) is `Kept`, unchanged: a 200 once
    /// given is never compensated away.
    /// Idempotent: repeat it to settle an `Undetermined` answer.
    pub async fn release(&self, sale_id: &str, order_id: &str) -> Result<Moved, StockError> {
        self.apply_move(sale_id, order_id, OrderChange::Released, None)
            .await
            .map(|found| match found {
                Abandoned::Released(moved) => moved,
                Abandoned::NeverRecorded { .. } => Moved::NotFound,
            })
    }

    /// Settles a reservation `node` made (`quantity` units, `expires_at`)
    /// whose reply it never got, and will not acknowledge, in one atomic
    /// call: if Redis recorded it, it is released as by
    /// [`RedisStore::release`]; if not, a tombstone makes any late copy of
    /// that reserve answer [`ReserveOutcome::Gone`] (for the grace period
    /// past `expires_at`; later copies are refused by their age), and the
    /// units go from the node's lease back to the pool, since the node
    /// dropped them. Idempotent: repeat it to settle an `Undetermined`
    /// answer; only the first call that finds it unrecorded moves units.
    pub async fn abandon(
        &self,
        sale_id: &str,
        order_id: &str,
        node: u32,
        quantity: u32,
        expires_at: u64,
    ) -> Result<Abandoned, StockError> {
        self.apply_move(
            sale_id,
            order_id,
            OrderChange::Released,
            Some((node, quantity, expires_at)),
        )
        .await
    }

    async fn apply_move(
        &self,
        sale_id: &str,
        order_id: &str,
        to: OrderChange,
        abandon: Option<(u32, u32, u64)>,
    ) -> Result<Abandoned, StockError> {
        let k = Keys::new(sale_id);
        let track = self.track || (self.track_moves && to != OrderChange::Released);
        let mut inv = self.scripts.transition.prepare_invoke();
        inv.key(k.pool())
            .key(k.sold())
            .key(k.users())
            .key(k.orders())
            .key(k.due())
            .key(k.idem())
            .key(k.unlogged())
            .key(k.leases())
            .key(k.tombstone(order_id))
            .arg(order_id)
            .arg(to.as_str())
            .arg(0)
            .arg(if track { "1" } else { "0" });
        match abandon {
            Some((node, quantity, expires_at)) => inv
                .arg(node)
                .arg(quantity)
                .arg(expires_at)
                .arg(self.grace_s),
            None => inv.arg("").arg(0).arg(0).arg(0),
        };
        let reply: Vec<String> = self.invoke(&inv).await?;
        let order = |json: &str| parse_order(sale_id, order_id, json);
        let moved = match reply.as_slice() {
            [tag, units] if tag == "gone" => {
                let returned = units
                    .parse()
                    .map_err(|_| unexpected("units returned", units))?;
                return Ok(Abandoned::NeverRecorded { returned });
            }
            [tag] if tag == "not_found" => Ok(Moved::NotFound),
            [tag, json] if tag == "changed" => Ok(Moved::Changed(order(json)?)),
            [tag, json] if tag == "unchanged" => Ok(Moved::Unchanged(order(json)?)),
            [tag, json] if tag == "unlogged" => Ok(Moved::Unlogged(order(json)?)),
            [tag, json] if tag == "kept" => Ok(Moved::Kept(order(json)?)),
            [tag, status] if tag == "invalid" => Ok(Moved::Invalid(parse_status(status)?)),
            _ => Err(unexpected("transition reply", &format!("{reply:?}"))),
        };
        moved.map(Abandoned::Released)
    }

    /// Looks Idempotency-Keys up in one pipeline (one `recall.lua` call per
    /// sale); results in the batch's order. A replay marks its order
    /// acknowledged, as [`RedisStore::reserve_batch`]'s replay does: the
    /// caller answers it 200, and [`RedisStore::release`] and
    /// [`RedisStore::abandon`] keep it ([`Moved::Kept`]).
    pub async fn recall_keys(&self, keys: &[KeyRecall]) -> Vec<Result<Recalled, StockError>> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|g| g.len() < RESERVE_CALL_MAX && keys[g[0]].sale_id == key.sale_id)
            {
                Some(group) => group.push(i),
                None => groups.push(vec![i]),
            }
        }
        let invocations: Vec<_> = groups
            .iter()
            .map(|group| {
                let k = Keys::new(&keys[group[0]].sale_id);
                let mut inv = self.scripts.recall.prepare_invoke();
                inv.key(k.idem()).key(k.idem_due()).key(k.orders());
                for key in group.iter().map(|&i| &keys[i]) {
                    inv.arg(&key.key).arg(format!("{:016x}", key.fingerprint));
                }
                inv
            })
            .collect();
        let mut out: Vec<Result<Recalled, StockError>> = keys
            .iter()
            .map(|_| Err(StockError::Undetermined("no reply".into())))
            .collect();
        // A replay is answered 200: its order must be on the replicas
        // (the lookup's own write, the acknowledged mark, comes after it).
        let wait = (self.min_replicas > 0).then_some((self.min_replicas, self.wait_ms()));
        match self
            .bounded(self.pipeline_waiting(&self.scripts.recall, &invocations, wait))
            .await
        {
            Ok(results) => {
                for (group, (result, acked)) in groups.iter().zip(results) {
                    let unreplicated = wait.is_some_and(|(n, _)| acked.unwrap_or(0) < u64::from(n));
                    let replies: Result<Vec<Vec<String>>, StockError> = result
                        .map_err(|e| e.to_string())
                        .and_then(|v| ::redis::from_redis_value(v).map_err(|e| e.to_string()))
                        .map_err(|e| StockError::Unavailable(format!("recall failed: {e}")));
                    match replies {
                        Ok(replies) => {
                            for (&i, reply) in group.iter().zip(replies) {
                                out[i] = match parse_recall(&keys[i].sale_id, &reply) {
                                    Ok(Recalled::Replay(_)) if unreplicated => {
                                        Err(self.unreplicated(acked))
                                    }
                                    parsed => parsed,
                                };
                            }
                        }
                        Err(e) => {
                            for &i in group {
                                out[i] = Err(same_error(&e));
                            }
                        }
                    }
                }
            }
            Err(e) => {
                for slot in &mut out {
                    *slot = Err(same_error(&e));
                }
            }
        }
        out
    }

    /// Forgets up to `limit` Idempotency-Key records of the sale whose TTL
    /// passed (Redis time); returns how many. Call again while it returns
    /// `limit`.
    pub async fn expire_keys(&self, sale_id: &str, limit: usize) -> Result<usize, StockError> {
        let k = Keys::new(sale_id);
        let mut inv = self.scripts.expire_keys.prepare_invoke();
        inv.key(k.idem()).key(k.idem_due()).arg(limit);
        self.invoke(&inv).await
    }

    /// The order with its current status, if it exists.
    pub async fn order(&self, sale_id: &str, order_id: &str) -> Result<Option<Order>, StockError> {
        let mut cmd = ::redis::cmd("HGET");
        cmd.arg(Keys::new(sale_id).orders()).arg(order_id);
        let json: Option<String> = self.query(&cmd).await?;
        json.map(|json| parse_order(sale_id, order_id, &json))
            .transpose()
    }

    /// Up to `limit` reserved orders of the sale whose `expires_at <= now_s`,
    /// earliest first.
    pub async fn due(
        &self,
        sale_id: &str,
        now_s: u64,
        limit: usize,
    ) -> Result<Vec<String>, StockError> {
        let mut cmd = ::redis::cmd("ZRANGEBYSCORE");
        cmd.arg(Keys::new(sale_id).due())
            .arg("-inf")
            .arg(now_s)
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        self.query(&cmd).await
    }

    /// Up to `limit` entries of the sale's not-yet-logged set written before
    /// `before_ms` (Redis time), oldest first, as (`order_id`, change) with
    /// change one of `reserved`, `paid`, `cancelled`, `expired`, `released`.
    pub async fn unlogged(
        &self,
        sale_id: &str,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StockError> {
        let mut cmd = ::redis::cmd("ZRANGEBYSCORE");
        cmd.arg(Keys::new(sale_id).unlogged())
            .arg("-inf")
            .arg(format!("({before_ms}"))
            .arg("LIMIT")
            .arg(0)
            .arg(limit);
        let entries: Vec<String> = self.query(&cmd).await?;
        entries
            .into_iter()
            .map(|entry| match entry.rsplit_once('|') {
                Some((order, change)) => Ok((order.to_owned(), change.to_owned())),
                None => Err(unexpected("unlogged entry", &entry)),
            })
            .collect()
    }

    /// Claims up to `limit` entries of the sale's not-yet-logged set written
    /// more than `grace` ago (Redis time), for this caller to log
    /// (`claim_unlogged.lua`): each stays in the set, re-scored to now, so
    /// no other caller takes it within another `grace`; the caller removes
    /// it once logged ([`RedisStore::mark_logged`]). Entries as in
    /// [`RedisStore::unlogged`].
    pub async fn claim_unlogged(
        &self,
        sale_id: &str,
        grace: Duration,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StockError> {
        let mut inv = self.scripts.claim_unlogged.prepare_invoke();
        inv.key(Keys::new(sale_id).unlogged())
            .arg(millis(grace))
            .arg(limit);
        let entries: Vec<String> = self.invoke(&inv).await?;
        entries
            .into_iter()
            .map(|entry| match entry.rsplit_once('|') {
                Some((order, change)) => Ok((order.to_owned(), change.to_owned())),
                None => Err(unexpected("unlogged entry", &entry)),
            })
            .collect()
    }

    /// The Idempotency-Key an order was made with, if any, with its
    /// fingerprint when the record holds one (records written before
    /// fingerprints were stored do not), as the nodes log it in
    /// `order_reserved`: lower-case hex without leading zeros.
    pub async fn order_key(
        &self,
        sale_id: &str,
        order_id: &str,
    ) -> Result<Option<(String, Option<String>)>, StockError> {
        let mut cmd = ::redis::cmd("HGET");
        cmd.arg(Keys::new(sale_id).orders()).arg(order_id);
        let json: Option<String> = self.query(&cmd).await?;
        let Some(json) = json else {
            return Ok(None);
        };
        let record: KeyRecord = serde_json::from_str(&json)
            .map_err(|e| StockError::Unavailable(format!("bad order record {order_id}: {e}")))?;
        let fingerprint = record
            .fp
            .and_then(|fp| u64::from_str_radix(&fp, 16).ok())
            .map(|fp| format!("{fp:x}"));
        Ok(record.key.map(|key| (key, fingerprint)))
    }

    /// Removes `(order_id, change)` entries from the sale's not-yet-logged
    /// set: the order log has recorded them. One command for the batch;
    /// removing an absent entry is a no-op, so a re-delivered event is
    /// harmless.
    pub async fn mark_logged<C: AsRef<str>>(
        &self,
        sale_id: &str,
        entries: &[(String, C)],
    ) -> Result<(), StockError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut cmd = ::redis::cmd("ZREM");
        cmd.arg(Keys::new(sale_id).unlogged());
        for (order, change) in entries {
            cmd.arg(format!("{order}|{}", change.as_ref()));
        }
        let _removed: u64 = self.query(&cmd).await?;
        Ok(())
    }

    /// Redis's clock, Unix milliseconds (the clock the not-yet-logged set
    /// is scored by).
    pub async fn time_ms(&self) -> Result<u64, StockError> {
        let (secs, micros): (u64, u64) = self.query(&::redis::cmd("TIME")).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// `INFO commandstats` as (command, calls), e.g. `("evalsha", 50)`; for
    /// tests and benchmarks (Redis commands per order). One server only: on
    /// a Redis Cluster the client sends INFO to every master.
    pub async fn command_stats(&self) -> Result<Vec<(String, u64)>, StockError> {
        let mut cmd = ::redis::cmd("INFO");
        cmd.arg("commandstats");
        let info: String = self.query(&cmd).await?;
        Ok(parse_command_stats(&info))
    }

    // Helpers below.

    /// One `reserve.lua` call for the reservations `group` (indexes into
    /// `calls`, never empty) of one sale by one node.
    fn reserve_invocation(&self, calls: &[ReserveCall], group: &[usize]) -> ScriptInvocation<'_> {
        let mut inv = self.scripts.reserve.prepare_invoke();
        let head = &calls[group[0]];
        let k = Keys::new(&head.sale_id);
        inv.key(k.spec())
            .key(k.pool())
            .key(k.sold())
            .key(k.leases())
            .key(k.users())
            .key(k.idem())
            .key(k.orders())
            .key(k.due())
            .key(k.unlogged())
            .key(k.idem_due())
            .arg(head.node)
            .arg(if self.track || self.track_moves {
                "1"
            } else {
                "0"
            })
            .arg(self.grace_s)
            .arg(self.key_ttl_s);
        for call in group.iter().map(|&i| &calls[i]) {
            inv.key(k.tombstone(&call.order_id))
                .arg(&call.order_id)
                .arg(&call.user_id)
                .arg(call.quantity)
                .arg(call.idempotency_key.as_deref().unwrap_or(""))
                .arg(format!("{:016x}", call.fingerprint))
                .arg(call.expires_at)
                .arg(if call.from_pool { "1" } else { "0" });
        }
        inv
    }

    /// Runs EVALSHA invocations of one script in one pipeline; the calls
    /// that answered NOSCRIPT are retried once after SCRIPT LOAD. On a
    /// Redis Cluster, where a pipeline must keep to one slot and the
    /// invocations are of several sales, they are sent at once as single
    /// calls instead (each loads the script on NOSCRIPT), on the cluster
    /// client's one connection per master.
    async fn pipeline(
        &self,
        script: &Script,
        invocations: &[ScriptInvocation<'_>],
    ) -> RedisResult<Vec<RedisResult<Value>>> {
        let answered = self.pipeline_waiting(script, invocations, None).await?;
        Ok(answered.into_iter().map(|(result, _)| result).collect())
    }

    /// [`RedisStore::pipeline`], with `WAIT replicas timeout_ms` sent after
    /// the calls on the same connection (in the same pipeline), when
    /// `wait` is given: each call's result comes with the number of
    /// replicas that acknowledged every write up to it (`None`: no WAIT
    /// asked, or it failed). On a cluster each call is its own pipeline
    /// with its own WAIT (to its slot's master).
    async fn pipeline_waiting(
        &self,
        script: &Script,
        invocations: &[ScriptInvocation<'_>],
        wait: Option<(u32, u64)>,
    ) -> RedisResult<Vec<(RedisResult<Value>, Option<u64>)>> {
        let conn = self.conn.clone();
        if conn.is_cluster() {
            let calls = invocations.iter().map(|inv| {
                let mut conn = conn.clone();
                async move {
                    match send_loading(&mut conn, script, std::slice::from_ref(inv), wait).await {
                        Ok((mut results, acked)) => (results.remove(0), acked),
                        Err(e) => (Err(e), None),
                    }
                }
            });
            return Ok(futures_util::future::join_all(calls).await);
        }
        let mut conn = conn;
        let (results, acked) = send_loading(&mut conn, script, invocations, wait).await?;
        Ok(results.into_iter().map(|r| (r, acked)).collect())
    }

    /// One script call (EVALSHA, loading the script on NOSCRIPT).
    pub(super) async fn invoke<T: ::redis::FromRedisValue>(
        &self,
        inv: &ScriptInvocation<'_>,
    ) -> Result<T, StockError> {
        let mut conn = self.conn.clone();
        self.bounded(inv.invoke_async(&mut conn)).await
    }

    /// One plain command.
    pub(super) async fn query<T: ::redis::FromRedisValue>(
        &self,
        cmd: &::redis::Cmd,
    ) -> Result<T, StockError> {
        let mut conn = self.conn.clone();
        self.bounded(cmd.query_async(&mut conn)).await
    }

    /// Bounds a call by the response timeout and maps its error.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, StockError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(classify),
            Err(_) => Err(StockError::Undetermined(format!(
                "no answer from Redis within {:?}",
                self.timeout
            ))),
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The Lua scripts, one `redis::Script` each (SHA1 computed once).
struct Scripts {
    create: Script,
    switch: Script,
    lease: Script,
    heartbeat: Script,
    return_lease: Script,
    reclaim: Script,
    reserve: Script,
    transition: Script,
    recall: Script,
    expire_keys: Script,
    claim_unlogged: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            create: Script::new(include_str!("scripts/create.lua")),
            switch: Script::new(include_str!("scripts/switch.lua")),
            lease: Script::new(include_str!("scripts/lease.lua")),
            heartbeat: Script::new(include_str!("scripts/heartbeat.lua")),
            return_lease: Script::new(include_str!("scripts/return_lease.lua")),
            reclaim: Script::new(include_str!("scripts/reclaim.lua")),
            reserve: Script::new(include_str!("scripts/reserve.lua")),
            transition: Script::new(include_str!("scripts/transition.lua")),
            recall: Script::new(include_str!("scripts/recall.lua")),
            expire_keys: Script::new(include_str!("scripts/expire_keys.lua")),
            claim_unlogged: Script::new(include_str!("scripts/claim_unlogged.lua")),
        }
    }
}

/// The keys of one sale. All share the hash tag `{sale_id}`, so one slot
/// holds a whole sale and the scripts run unchanged on Redis Cluster.
struct Keys<'a> {
    sale_id: &'a str,
}

impl<'a> Keys<'a> {
    fn new(sale_id: &'a str) -> Self {
        Keys { sale_id }
    }

    fn key(&self, name: &str) -> String {
        format!("sk:{{{}}}:{name}", self.sale_id)
    }

    fn spec(&self) -> String {
        self.key("spec")
    }
    fn pool(&self) -> String {
        self.key("pool")
    }
    fn sold(&self) -> String {
        self.key("sold")
    }
    fn leases(&self) -> String {
        self.key("leases")
    }
    fn hb(&self) -> String {
        self.key("hb")
    }
    fn users(&self) -> String {
        self.key("users")
    }
    fn idem(&self) -> String {
        self.key("idem")
    }
    fn idem_due(&self) -> String {
        self.key("idem_due")
    }
    fn orders(&self) -> String {
        self.key("orders")
    }
    fn due(&self) -> String {
        self.key("due")
    }
    fn unlogged(&self) -> String {
        self.key("unlogged")
    }
    /// The tombstone of an order id given up on (one key per order id, so
    /// that it expires by itself).
    fn tombstone(&self, order_id: &str) -> String {
        self.key(&format!("gone:{order_id}"))
    }
}

/// The order record as `reserve.lua` writes it (cjson).
#[derive(Deserialize)]
struct OrderRecord {
    user_id: String,
    quantity: u32,
    status: String,
    expires_at: u64,
}

/// The Idempotency-Key fields of an order record.
#[derive(Deserialize)]
struct KeyRecord {
    key: Option<String>,
    fp: Option<String>,
}

/// Sends `invocations` in one pipeline (then `WAIT`, when `wait` is
/// given); the calls that answered NOSCRIPT are sent again after SCRIPT
/// LOAD. Returns each call's result and what WAIT counted (the fewer of
/// the two WAITs when there was a second pipeline).
async fn send_loading(
    conn: &mut Conn,
    script: &Script,
    invocations: &[ScriptInvocation<'_>],
    wait: Option<(u32, u64)>,
) -> RedisResult<(Vec<RedisResult<Value>>, Option<u64>)> {
    let (mut results, mut acked) = send_pipeline(conn, invocations.iter(), wait).await?;
    let missing: Vec<usize> = (0..results.len())
        .filter(|&i| is_noscript(&results[i]))
        .collect();
    if missing.is_empty() {
        return Ok((results, acked));
    }
    script.load_async(conn).await?;
    let (again, acked_again) =
        send_pipeline(conn, missing.iter().map(|&i| &invocations[i]), wait).await?;
    for (i, result) in missing.into_iter().zip(again) {
        results[i] = result;
    }
    acked = acked.zip(acked_again).map(|(a, b)| a.min(b));
    Ok((results, acked))
}

async fn send_pipeline<'a, 'b: 'a>(
    conn: &mut Conn,
    invocations: impl Iterator<Item = &'a ScriptInvocation<'b>>,
    wait: Option<(u32, u64)>,
) -> RedisResult<(Vec<RedisResult<Value>>, Option<u64>)> {
    let mut pipe = ::redis::pipe();
    pipe.ignore_errors();
    for inv in invocations {
        pipe.invoke_script(inv);
    }
    if let Some((replicas, timeout_ms)) = wait {
        pipe.cmd("WAIT").arg(replicas).arg(timeout_ms);
    }
    let mut results: Vec<RedisResult<Value>> = pipe.query_async(conn).await?;
    let acked = match wait {
        Some(_) => results
            .pop()
            .and_then(|r| r.ok())
            .and_then(|v| ::redis::from_redis_value::<u64>(v).ok()),
        None => None,
    };
    Ok((results, acked))
}

/// The fewest live replicas of a master that serves slots, in `CLUSTER
/// NODES` (`<id> <addr> <flags> <master id> ... <slots>`).
fn fewest_replicas(nodes: &str) -> u32 {
    let lines: Vec<Vec<&str>> = nodes
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    lines
        .iter()
        .filter(|f| f.len() > 8 && f[2].contains("master") && !f[2].contains("fail"))
        .map(|master| {
            lines
                .iter()
                .filter(|f| f.len() > 3 && f[3] == master[0] && !f[2].contains("fail"))
                .count() as u32
        })
        .min()
        .unwrap_or(0)
}

fn is_noscript(result: &RedisResult<Value>) -> bool {
    matches!(result, Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript))
}

fn parse_reserve(call: &ReserveCall, value: Value) -> Result<ReserveOutcome, StockError> {
    let reply: Vec<String> = ::redis::from_redis_value(value)
        .map_err(|e| StockError::Unavailable(format!("unexpected reserve reply: {e}")))?;
    let outcome = match reply.as_slice() {
        [tag] => match tag.as_str() {
            "reserved" => ReserveOutcome::Reserved,
            "key_reused" => ReserveOutcome::KeyReused,
            "limit" => ReserveOutcome::LimitExceeded,
            "no_lease" => ReserveOutcome::NoLease,
            "sold_out" => ReserveOutcome::SoldOut,
            "not_open" => ReserveOutcome::SaleNotOpen,
            "gone" => ReserveOutcome::Gone,
            "not_found" => return Err(StockError::SaleNotFound),
            other => return Err(unexpected("reserve reply", other)),
        },
        [tag, order_id, json] if tag == "replay" => {
            ReserveOutcome::Replay(parse_order(&call.sale_id, order_id, json)?)
        }
        // A check that found Redis's records inconsistent; nothing written.
        [tag, message] if tag == "error" => return Err(StockError::Unavailable(message.clone())),
        _ => return Err(unexpected("reserve reply", &format!("{reply:?}"))),
    };
    Ok(outcome)
}

fn parse_recall(sale_id: &str, reply: &[String]) -> Result<Recalled, StockError> {
    match reply {
        [tag] if tag == "unused" => Ok(Recalled::Unused),
        [tag] if tag == "key_reused" => Ok(Recalled::KeyReused),
        [tag, order_id, json] if tag == "replay" => {
            Ok(Recalled::Replay(parse_order(sale_id, order_id, json)?))
        }
        [tag, message] if tag == "error" => Err(StockError::Unavailable(message.clone())),
        _ => Err(unexpected("recall reply", &format!("{reply:?}"))),
    }
}

fn parse_order(sale_id: &str, order_id: &str, json: &str) -> Result<Order, StockError> {
    let record: OrderRecord = serde_json::from_str(json)
        .map_err(|e| StockError::Unavailable(format!("bad order record {order_id}: {e}")))?;
    Ok(Order {
        order_id: order_id.to_owned(),
        sale_id: sale_id.to_owned(),
        user_id: record.user_id,
        quantity: record.quantity,
        status: parse_status(&record.status)?,
        expires_at: record.expires_at,
        shard: 0,
    })
}

fn parse_status(status: &str) -> Result<OrderStatus, StockError> {
    status
        .parse()
        .map_err(|_| unexpected("order status", status))
}

fn parse_command_stats(info: &str) -> Vec<(String, u64)> {
    // Lines look like `cmdstat_evalsha:calls=50,usec=812,...`.
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// Redis errors as stock errors:
/// - `Unavailable` (nothing was applied): connection refused or not
///   reachable, or the server answered with an error (scripts check before
///   they write, so an error reply leaves nothing behind);
/// - `Undetermined` (may have been applied): a timeout, or the connection
///   broke while the command may already have been sent.
fn classify(e: RedisError) -> StockError {
    if e.is_connection_refusal() {
        StockError::Unavailable(e.to_string())
    } else if e.is_timeout() || e.is_io_error() || e.is_connection_dropped() {
        StockError::Undetermined(e.to_string())
    } else {
        StockError::Unavailable(e.to_string())
    }
}

/// The same error for every call of a failed batch.
fn same_error(e: &StockError) -> StockError {
    match e {
        StockError::Undetermined(m) => StockError::Undetermined(m.clone()),
        StockError::Unavailable(m) => StockError::Unavailable(m.clone()),
        other => StockError::Unavailable(other.to_string()),
    }
}

fn unexpected(what: &str, got: &str) -> StockError {
    StockError::Unavailable(format!("unexpected {what}: {got}"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_sale_hash_tag() {
        let k = Keys::new("s1");
        assert_eq!(k.spec(), "sk:{s1}:spec");
        assert_eq!(k.due(), "sk:{s1}:due");
    }

    #[test]
    fn the_master_with_the_fewest_replicas_counts() {
        let nodes = "a 127.0.0.1:1@2 myself,master - 0 0 1 connected 0-5460\n\
                     b 127.0.0.1:3@4 master - 0 0 2 connected 5461-16383\n\
                     c 127.0.0.1:5@6 slave a 0 0 1 connected\n\
                     d 127.0.0.1:7@8 slave b 0 0 2 connected\n\
                     e 127.0.0.1:9@10 slave,fail b 0 0 2 connected\n";
        assert_eq!(fewest_replicas(nodes), 1);
        let lone = "a 127.0.0.1:1@2 myself,master - 0 0 1 connected 0-16383\n";
        assert_eq!(fewest_replicas(lone), 0);
    }

    #[test]
    fn command_stats_are_parsed() {
        let info = "# Commandstats\r\ncmdstat_evalsha:calls=50,usec=812,usec_per_call=16.24,\
                    rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=2,usec=40\r\n";
        assert_eq!(
            parse_command_stats(info),
            vec![("evalsha".to_owned(), 50), ("info".to_owned(), 2)]
        );
    }

    #[test]
    fn order_records_are_parsed() {
        let json =
            r#"{"user_id":"u\/1","quantity":2,"status":"paid","expires_at":1700000900,"node":3}"#;
        let order = parse_order("s", "o", json).unwrap();
        assert_eq!(order.user_id, "u/1");
        assert_eq!(order.quantity, 2);
        assert_eq!(order.status, OrderStatus::Paid);
        assert_eq!(order.expires_at, 1_700_000_900);
    }
}
