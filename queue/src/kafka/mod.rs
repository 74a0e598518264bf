//! The Kafka order log of cluster mode.
//!
//! - `log`: [`KafkaLog`], an [`crate::OrderLog`] on an rdkafka idempotent
//!   producer (acks=all, small linger): an append resolves on its delivery
//!   report; the message key is the order id (sale id for sale events), so
//!   one order's events stay in order on one partition.
//! - `fixture`: [`fixture::Broker`], a real Kafka-API broker (tansu, sqlite
//!   storage) on a free loopback port for tests, killed on drop.

pub mod fixture;
pub mod log;

pub use log::{ensure_topic, KafkaLog, KafkaOptions, Renewing};
