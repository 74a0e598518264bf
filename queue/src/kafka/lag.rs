//! How far a consumer group (the settler's) is behind the head of the
//! order topic, measured at the broker: the group's committed offsets
//! against the partitions' high watermarks (events), and the age of the
//! oldest event not yet committed (seconds).
//!
//! Measured from outside the group: the probe's consumer uses the group id
//! only to read its committed offsets (it never joins the group, never
//! commits), so a node can watch the settler's lag, and see it rise while
//! no settler runs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// A group's lag behind the topic's head.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Lag {
    /// Events in the topic past the group's committed offsets.
    pub events: u64,
    /// Age of the oldest of them (0 when there are none).
    pub seconds: f64,
}

/// Measures one group's lag on one topic.
pub struct LagProbe {
    consumer: BaseConsumer,
    topic: String,
    timeout: Duration,
}

impl LagProbe {
    /// A probe of `group` on `topic`; `timeout` bounds each broker call.
    pub fn new(
        brokers: &str,
        topic: &str,
        group: &str,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // It reads one event per lagging partition: small fetches and
            // a small prefetch queue, so a backlog is not pulled into the
            // node every second.
            .set("max.partition.fetch.bytes", "16384")
            .set("fetch.max.bytes", "65536")
            .set("message.max.bytes", "65536")
            .set("queued.min.messages", "1")
            .set("queued.max.messages.kbytes", "64")
            .create()?;
        Ok(LagProbe {
            consumer,
            topic: topic.to_owned(),
            timeout,
        })
    }

    /// The lag as of `now_ms` (Unix ms). Blocks: a metadata call, one
    /// offset fetch, two watermark calls per partition, and, when behind,
    /// one read of the first uncommitted event of each partition.
    pub fn measure(&self, now_ms: u64) -> Result<Lag, KafkaError> {
        let metadata = self
            .consumer
            .fetch_metadata(Some(&self.topic), self.timeout)?;
        let mut tpl = TopicPartitionList::new();
        for topic in metadata.topics() {
            for p in topic.partitions() {
                tpl.add_partition(&self.topic, p.id());
            }
        }
        let committed = self.consumer.committed_offsets(tpl, self.timeout)?;
        let mut events = 0u64;
        let mut behind: HashMap<i32, i64> = HashMap::new();
        for e in committed.elements() {
            let (low, high) =
                self.consumer
                    .fetch_watermarks(&self.topic, e.partition(), self.timeout)?;
            // Nothing committed: the group reads from the start.
            let from = match e.offset() {
                Offset::Offset(n) => n.max(low),
                _ => low,
            };
            if high > from {
                events += (high - from) as u64;
                behind.insert(e.partition(), from);
            }
        }
        if behind.is_empty() {
            return Ok(Lag::default());
        }
        let oldest = self.oldest_at(&behind)?;
        let seconds = oldest.map_or(0.0, |at| now_ms.saturating_sub(at) as f64 / 1e3);
        Ok(Lag { events, seconds })
    }

    /// The earliest timestamp (ms) of the events at `from` per partition.
    fn oldest_at(&self, from: &HashMap<i32, i64>) -> Result<Option<u64>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (&p, &offset) in from {
            tpl.add_partition_offset(&self.topic, p, Offset::Offset(offset))?;
        }
        self.consumer.assign(&tpl)?;
        let mut left: Vec<i32> = from.keys().copied().collect();
        let mut oldest: Option<u64> = None;
        let deadline = Instant::now() + self.timeout;
        while !left.is_empty() && Instant::now() < deadline {
            let Some(msg) = self.consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let Ok(msg) = msg else { continue };
            if let Some(i) = left.iter().position(|p| *p == msg.partition()) {
                left.swap_remove(i);
                if let Some(at) = msg.timestamp().to_millis() {
                    let at = u64::try_from(at).unwrap_or(0);
                    oldest = Some(oldest.map_or(at, |o| o.min(at)));
                }
            }
        }
        self.consumer.unassign()?;
        Ok(oldest)
    }
}
