//! The Kafka order log of cluster mode.
//!
//! - `log`: [`KafkaLog`], an [`crate::OrderLog`] on an rdkafka idempotent
//!   producer (acks=all, small linger): an append resolves on its delivery
//!   report; the message key is the order id (sale id for sale events), so
//!   one order's events stay in order on one partition.
//!
//! Tests run a real broker with `seckill_testkit::kafka::Broker` (a
//! dev-dependency, not part of this library).

pub mod lag;
pub mod log;

pub use lag::{Lag, LagProbe};
pub use log::{ensure_topic, event_headers, KafkaLog, KafkaOptions, Renewing};

/// The settler's fetches wait for this much data ...
///
/// Fetches sized for a busy sale: the settler's reads cost the broker the
/// nodes produce to. Measured against tansu 0.6 (which holds every fetch
/// for part of its wait, and re-reads while under min bytes), 256 KiB /
/// 250 ms let the nodes acknowledge ~11% more orders/s than librdkafka's
/// 1 byte / 500 ms, with answers still within a quarter second (restarts
/// resume fast). bench's `kafka-ceiling --consume` reads with the same.
pub const SETTLER_FETCH_MIN_BYTES: &str = "262144";
/// ... or this long, whichever comes first.
pub const SETTLER_FETCH_WAIT_MAX_MS: &str = "250";
