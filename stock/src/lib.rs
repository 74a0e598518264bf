//! Stock for seckill: the sharded in-memory counters that answer "is there a
//! unit left?" on the core that received the request, and the stock
//! authorities that account for every unit sold.
//!
//! Layout:
//! - `shards`: [`ShardedStock`], one padded atomic counter per core, with
//!   stealing between siblings, a sold-out flag, and [`Units`], the guard for
//!   units taken but not yet committed.
//! - `sale`: [`Sale`], one sale on a node: spec, shards, switch, sold count.
//! - `model`: the types the node and the authorities speak: [`SaleSpec`],
//!   [`SaleState`], [`Switch`], [`Order`], [`OrderStatus`], [`StockError`], ...
//! - `authority`: the [`StockAuthority`] trait, the seam between the node and
//!   whoever accounts for units.
//! - `cluster`: [`cluster::RedisAuthority`], the cluster authority: leases
//!   from Redis into the shards, a tokio backend thread fed by channels;
//!   `cluster/rebalance.rs` moves leased units to the node whose buyer
//!   needs them.
//! - `embedded`: [`EmbeddedAuthority`], the in-process authority of the
//!   embedded mode, rebuilt from the order log on start.
//! - `histogram`: [`histogram::Buckets`], the bucket and quantile code of
//!   the latency histograms (the node's purchases, the backend's Redis calls).
//! - `registry`: the sales a node knows, read by cores through caches.
//! - `redis`: the Redis side of the cluster stock authority: `RedisStore`,
//!   the Lua scripts (tests start a real `redis-server` with the
//!   `seckill-testkit` dev-dependency).
//! - `striped`: lock-striped maps used by the embedded authority.
//! - `sync`: the std/loom switch used by `shards` so that the stealing and
//!   sold-out logic can be model-checked (`RUSTFLAGS="--cfg loom"`).

pub mod authority;
#[cfg(not(loom))]
pub mod cluster;
pub mod embedded;
pub mod histogram;
pub mod model;
#[cfg(not(loom))]
pub mod redis;
mod registry;
pub mod sale;
pub mod shards;
mod striped;
mod sync;

pub use authority::{Reservation, StockAuthority, Transition};
pub use embedded::EmbeddedAuthority;
pub use model::{
    Attempt, KeyLookup, Order, OrderChange, OrderIds, OrderStatus, SaleSpec, SaleState,
    SaleSwitchState, StockError, Switch, UnknownName,
};
pub use sale::Sale;
pub use shards::{ShardedStock, Units};
