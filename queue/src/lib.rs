//! Queues of seckill: the admission token queue that bounds the work in
//! flight on each core, the order events, and the order log they are
//! appended to.
//!
//! Layout:
//! - `admission`: [`Admission`], a per-core FIFO token queue; a [`Permit`]
//!   gives its token back on drop.
//! - `event`: [`Event`] and [`EventKind`], the versioned order-log schema.
//! - `journal`: [`Journal`], the embedded order log: an append-only file of
//!   CRC-framed records with group commit (one fsync per batch).
//! - `snapshot`: the embedded mode's snapshot file (what compaction folds
//!   sealed journal segments into), written temp + fsync + rename.
//! - `log`: the [`OrderLog`] trait, the seam the order logs plug into.
//! - `kafka`: [`KafkaLog`], the Kafka order log of cluster mode.

pub mod admission;
pub mod event;
pub mod journal;
pub mod kafka;
pub mod log;
pub mod snapshot;

pub use admission::{Admission, Overloaded, Permit};
pub use event::{Event, EventKind, OrderChange, Switch};
pub use journal::{Durable, Journal, JournalError, JournalOptions, Recovered};
pub use kafka::{KafkaLog, KafkaOptions};
pub use log::{LogError, OrderLog};
