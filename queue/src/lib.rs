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
//! - `log`: the [`OrderLog`] trait, the seam a Kafka log plugs into.

pub mod admission;
pub mod event;
pub mod journal;
pub mod log;

pub use admission::{Admission, Overloaded, Permit};
pub use event::{Event, EventKind, SaleSwitch};
pub use journal::{Durable, Journal, JournalError, JournalOptions};
pub use log::{LogError, OrderLog};
