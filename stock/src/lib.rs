//! Stock for seckill: the sharded in-memory counters that answer "is there a
//! unit left?" on the core that received the request, and the stock
//! authorities that account for every unit sold.
//!
//! Layout:
//! - `shards`: [`ShardedStock`], one padded atomic counter per core, with
//!   stealing between siblings, a sold-out flag, and [`Units`], the guard for
//!   units taken but not yet committed.
//! - `sync`: the std/loom switch used by `shards` so that the stealing and
//!   sold-out logic can be model-checked (`RUSTFLAGS="--cfg loom"`).

pub mod shards;
mod sync;

pub use shards::{ShardedStock, Units};
