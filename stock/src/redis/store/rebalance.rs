//! Moving leased units between nodes: a node whose shards are dry while the
//! pool is empty and other nodes hold unsold leased units posts a want
//! ([`RedisStore::lease_or_want`]); the holders see it when they read the
//! sale's tail ([`RedisStore::tail`]) and give the units in their shards
//! back to the pool ([`RedisStore::give_back`]), where the wanting node
//! leases them.

use std::sync::LazyLock;
use std::time::Duration;

use ::redis::Script;

use super::{millis, Keys, RedisStore};
use crate::model::StockError;

static WANT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../scripts/want.lua")));
static GIVE_BACK: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../scripts/give_back.lua")));

/// What [`RedisStore::lease_or_want`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    /// Units leased to the node now.
    pub granted: u64,
    /// The pool right after the grant.
    pub pool_left: u64,
    /// Units in reserved and paid orders.
    pub sold: u64,
    /// Units leased to the other nodes and not yet sold. With an empty pool
    /// and none elsewhere, nothing is left for this node to wait for.
    pub elsewhere: u64,
}

/// The counts of a sale that decide whether units must move between nodes,
/// read atomically (MULTI/EXEC) with Redis's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail {
    pub pool: u64,
    pub sold: u64,
    /// Units leased to the nodes other than the reader and not yet sold.
    pub elsewhere: u64,
    /// Another node's want stands (its deadline has not passed).
    pub wanted: bool,
}

impl RedisStore {
    /// Leases a chunk to `node` as [`RedisStore::lease`] does (same grant,
    /// same heartbeat refresh). When the pool is empty while other nodes
    /// hold unsold leased units, posts `node`'s want for `wait` instead:
    /// those nodes see it in their [`RedisStore::tail`] and give their
    /// surplus back (a `wait` of zero posts none: a lease ahead of demand
    /// that still learns the counts). A grant clears the want. A closed
    /// sale grants 0 and posts nothing. Unknown sale: `SaleNotFound`.
    ///
    /// An `Undetermined` answer may have leased units: they stay in the
    /// node's lease in Redis and come back by `return_lease` or `reclaim`.
    pub async fn lease_or_want(
        &self,
        sale_id: &str,
        node: u32,
        want: u64,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Ask, StockError> {
        let k = Keys::new(sale_id);
        let mut inv = WANT.prepare_invoke();
        inv.key(k.spec())
            .key(k.pool())
            .key(k.sold())
            .key(k.leases())
            .key(k.hb())
            .key(k.key("wants"))
            .arg(node)
            .arg(want)
            .arg(millis(ttl))
            .arg(millis(wait));
        let (granted, pool_left, sold, elsewhere): (i64, i64, i64, i64) = self.invoke(&inv).await?;
        if granted < 0 {
            return Err(StockError::SaleNotFound);
        }
        let count = |n: i64| n.max(0) as u64;
        Ok(Ask {
            granted: count(granted),
            pool_left: count(pool_left),
            sold: count(sold),
            elsewhere: count(elsewhere),
        })
    }

    /// Gives `units` of `node`'s lease back to the pool (units in its
    /// shards, never ones in flight). Returns how many went back: fewer
    /// when the lease was returned or reclaimed meanwhile.
    pub async fn give_back(&self, sale_id: &str, node: u32, units: u64) -> Result<u64, StockError> {
        let k = Keys::new(sale_id);
        let mut inv = GIVE_BACK.prepare_invoke();
        inv.key(k.pool()).key(k.leases()).arg(node).arg(units);
        self.invoke(&inv).await
    }

    /// The sale's pool, sold count, the units leased to nodes other than
    /// `node`, and whether another node's want stands, in one atomic read
    /// (plain commands, no script).
    pub async fn tail(&self, sale_id: &str, node: u32) -> Result<Tail, StockError> {
        let k = Keys::new(sale_id);
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .cmd("GET")
            .arg(k.pool())
            .cmd("GET")
            .arg(k.sold())
            .cmd("HGETALL")
            .arg(k.leases())
            .cmd("HGETALL")
            .arg(k.key("wants"))
            .cmd("TIME");
        let mut conn = self.conn.clone();
        type Snapshot = (
            Option<i64>,
            Option<i64>,
            Vec<(u32, i64)>,
            Vec<(u32, u64)>,
            (u64, u64),
        );
        let (pool, sold, leases, wants, (secs, micros)): Snapshot =
            self.bounded(pipe.query_async(&mut conn)).await?;
        let now_ms = secs * 1000 + micros / 1000;
        Ok(Tail {
            pool: pool.unwrap_or(0).max(0) as u64,
            sold: sold.unwrap_or(0).max(0) as u64,
            elsewhere: leases
                .iter()
                .filter(|(n, _)| *n != node)
                .map(|(_, units)| (*units).max(0) as u64)
                .sum(),
            wanted: wants
                .iter()
                .any(|(n, deadline)| *n != node && *deadline > now_ms),
        })
    }
}
