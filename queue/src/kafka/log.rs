//! [`KafkaLog`]: order events appended to a Kafka topic through an
//! idempotent rdkafka producer.
//!
//! The producer is librdkafka's: `append` hands the encoded event to its
//! queue (a short, non-blocking call; no await, no lock held by the caller)
//! and librdkafka's own threads batch it by `linger.ms` and send it. The
//! returned future resolves on the delivery report, which with `acks=all`
//! means every in-sync replica has the event.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::log::{LogError, OrderLog};
use crate::Event;

/// Settings of the Kafka order log.
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The order topic. Default `seckill.orders`.
    pub topic: String,
    /// Partitions of the topic when this node creates it. Default 6.
    pub partitions: i32,
    /// Longest time librdkafka keeps trying to deliver one event
    /// (`message.timeout.ms`); past it the outcome is undetermined. The
    /// settler's reconciliation grace must be longer. Default 5 s.
    pub message_timeout: Duration,
    /// How long the producer waits to fill a batch (`linger.ms`).
    /// Default 2 ms.
    pub linger: Duration,
    /// Who produces, sent as each message's `x-origin` header (`node-3`).
    /// Default none.
    pub origin: Option<String>,
}

impl KafkaOptions {
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaOptions {
            brokers: brokers.into(),
            topic: "seckill.orders".into(),
            partitions: 6,
            message_timeout: Duration::from_secs(5),
            linger: Duration::from_millis(2),
            origin: None,
        }
    }

    /// The producer's librdkafka settings.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", self.linger.as_millis().to_string())
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().max(1).to_string(),
            )
            // Bounded memory: past this many queued events an append is
            // refused at once (503) instead of growing the queue.
            .set("queue.buffering.max.messages", "200000")
            .set("socket.timeout.ms", "3000")
            .set("reconnect.backoff.max.ms", "1000");
        c
    }
}

/// An [`OrderLog`] on a Kafka topic.
pub struct KafkaLog {
    producer: Arc<Renewing>,
    topic: String,
    origin: Option<String>,
}

/// An idempotent producer that is replaced by a fresh one (a new producer
/// id) after a failed delivery.
///
/// Why: after a delivery times out, librdkafka's idempotent producer bumps
/// its epoch and goes on with the same producer id; tansu 0.6 panics on the
/// first produce of a bumped epoch after it restarts (`more or less than one
/// row` in `idempotent_message_check`), and its storage is dead from then
/// on. A fresh producer starts a fresh id at sequence 0, which every broker
/// takes. Failed deliveries are already compensated (503), so dropping the
/// old producer's queue loses nothing acknowledged.
pub struct Renewing {
    config: ClientConfig,
    current: ArcSwap<Generation>,
    renew: Mutex<()>,
}

struct Generation {
    n: u64,
    producer: FutureProducer,
}

impl Renewing {
    /// Creates the first producer of `config`.
    pub fn new(config: ClientConfig) -> Result<Self, LogError> {
        let producer = create_producer(&config)?;
        Ok(Renewing {
            config,
            current: ArcSwap::from_pointee(Generation { n: 0, producer }),
            renew: Mutex::new(()),
        })
    }

    /// Sends one record; the future resolves on its delivery report. A
    /// failed delivery renews the producer (once per generation).
    pub fn send(
        self: &Arc<Self>,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> impl Future<Output = Result<(), LogError>> + 'static {
        let sent = {
            let current = self.current.load();
            let mut record = FutureRecord::to(topic).key(key).payload(payload);
            if let Some(headers) = headers {
                record = record.headers(headers);
            }
            // Copies key, payload and headers into librdkafka's queue;
            // never blocks.
            current
                .producer
                .send_result(record)
                .map(|delivery| (current.n, delivery))
                .map_err(|(e, _)| match e {
                    KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                        LogError::Unavailable("the Kafka producer queue is full".into())
                    }
                    e => classify(e),
                })
        };
        let this = self.clone();
        async move {
            let (n, delivery) = sent?;
            let result = match delivery.await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err((e, _))) => classify(e),
                // The producer went away with the event in flight.
                Err(_) => LogError::Undetermined("the producer dropped the delivery report".into()),
            };
            this.renew_after(n);
            Err(result)
        }
    }

    /// Replaces generation `n` with a fresh producer, unless that happened
    /// already. The old producer is dropped on its own thread (dropping
    /// purges and joins librdkafka's threads, which may take a moment).
    fn renew_after(&self, n: u64) {
        let _guard = self.renew.lock();
        if self.current.load().n != n {
            return;
        }
        match create_producer(&self.config) {
            Ok(producer) => {
                let old = self
                    .current
                    .swap(Arc::new(Generation { n: n + 1, producer }));
                tracing::warn!(
                    generation = n + 1,
                    "a delivery failed: the Kafka producer was renewed"
                );
                let _ = std::thread::Builder::new()
                    .name("seckill-kafka-drop".into())
                    .spawn(move || drop(old));
            }
            Err(e) => tracing::warn!(error = %e, "cannot renew the Kafka producer"),
        }
    }

    /// Waits up to `timeout` for everything queued to be delivered.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.current.load().producer.flush(Timeout::After(timeout)) {
            tracing::warn!(error = %e, "events still in flight at close");
        }
    }
}

fn create_producer(config: &ClientConfig) -> Result<FutureProducer, LogError> {
    config
        .create()
        .map_err(|e| LogError::Unavailable(format!("cannot create the producer: {e}")))
}

impl KafkaLog {
    /// Creates the producer and makes sure the topic exists (creating it
    /// with `opts.partitions` partitions if not). Blocks up to about
    /// `opts.message_timeout`.
    ///
    /// Errors: `Unavailable` when the brokers cannot be reached or the topic
    /// cannot be created.
    pub fn connect(opts: &KafkaOptions) -> Result<Self, LogError> {
        ensure_topic(
            &opts.brokers,
            &opts.topic,
            opts.partitions,
            opts.message_timeout,
        )?;
        Ok(KafkaLog {
            producer: Arc::new(Renewing::new(opts.producer_config())?),
            topic: opts.topic.clone(),
            origin: opts.origin.clone(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }
}

/// Makes sure `topic` exists on `brokers`, creating it with `partitions`
/// partitions if not (replicated on up to 3 brokers, as many as the
/// cluster has); waits up to about `timeout`. Warns (one WARN line) when
/// the topic has replication 1, or its replication is unknown: losing that
/// broker loses acknowledged orders. Blocks the calling thread: call it at
/// start-up, not on a core.
pub fn ensure_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> Result<(), LogError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // A metadata request must not create the topic with the broker's
        // defaults behind our back.
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|e| LogError::Unavailable(format!("cannot create the admin client: {e}")))?;
    let known = admin
        .inner()
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| LogError::Unavailable(format!("no metadata from Kafka at {brokers}: {e}")))?;
    if let Some(t) = known
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
    {
        // The fewest replicas of any partition.
        let replication = t.partitions().iter().map(|p| p.replicas().len()).min();
        warn_if_unreplicated(topic, replication.filter(|r| *r > 0));
        return Ok(());
    }
    let replication = known.brokers().len().clamp(1, 3);
    let new = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(i32::try_from(replication).unwrap_or(1)),
    );
    // Both timeouts bound the call: the future then resolves by itself
    // (librdkafka's admin thread drives it), so any thread may wait on it.
    let opts = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = block_on(admin.create_topics([&new], &opts)).map_err(|e| {
        LogError::Unavailable(format!("cannot create topic {topic} on {brokers}: {e}"))
    })?;
    for result in results {
        match result {
            Ok(_) => warn_if_unreplicated(topic, Some(replication)),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                // Made by another process meanwhile: read what it made.
                let replication = admin
                    .inner()
                    .fetch_metadata(Some(topic), timeout)
                    .ok()
                    .and_then(|m| {
                        let t = m.topics().iter().find(|t| t.name() == topic)?;
                        t.partitions().iter().map(|p| p.replicas().len()).min()
                    });
                warn_if_unreplicated(topic, replication.filter(|r| *r > 0));
            }
            Err((name, code)) => {
                return Err(LogError::Unavailable(format!(
                    "cannot create topic {name}: {code}"
                )))
            }
        }
    }
    Ok(())
}

/// One WARN line when the order topic's replication (`None`: unknown) may
/// be 1.
fn warn_if_unreplicated(topic: &str, replication: Option<usize>) {
    match replication {
        Some(r) if r > 1 => {}
        Some(r) => tracing::warn!(
            topic,
            "the order topic {topic} has replication {r}: losing that broker loses acknowledged \
             orders; give it replication 3 (min.insync.replicas 2)"
        ),
        None => tracing::warn!(
            topic,
            "the replication of the order topic {topic} is unknown (no replicas in the broker's \
             metadata): if it is 1, losing that broker loses acknowledged orders"
        ),
    }
}

/// Waits for `fut` on this thread (parking between wakes).
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(std::sync::Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let std::task::Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// The headers of `event`'s message: `x-request-id` and `traceparent`
/// when the event carries them, and `x-origin` (who produced it: `node-3`,
/// `settler`) when given. None when there is nothing to say.
pub fn event_headers(event: &Event, origin: Option<&str>) -> Option<OwnedHeaders> {
    let fields = [
        ("x-request-id", event.request_id.as_deref()),
        ("traceparent", event.traceparent.as_deref()),
        ("x-origin", origin),
    ];
    let mut headers: Option<OwnedHeaders> = None;
    for (key, value) in fields {
        if let Some(value) = value {
            let header = Header {
                key,
                value: Some(value),
            };
            headers = Some(headers.unwrap_or_default().insert(header));
        }
    }
    headers
}

/// What a failed delivery means for the event.
fn classify(e: KafkaError) -> LogError {
    match e {
        // Sent (maybe), answer not seen: it may be in the topic.
        KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
            | RDKafkaErrorCode::PurgeInflight
            | RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::Fatal,
        ) => LogError::Undetermined(e.to_string()),
        // Refused before or by the broker: not recorded.
        e => LogError::Unavailable(e.to_string()),
    }
}

impl OrderLog for KafkaLog {
    fn append(&self, event: &Event) -> impl Future<Output = Result<(), LogError>> + 'static {
        let headers = event_headers(event, self.origin.as_deref());
        self.producer
            .send(&self.topic, event.kind.key(), &event.to_json(), headers)
    }

    fn close(&self) {
        self.producer.flush(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_is_idempotent_acks_all_and_batches() {
        let mut opts = KafkaOptions::new("127.0.0.1:9092");
        opts.linger = Duration::from_millis(3);
        opts.message_timeout = Duration::from_millis(2500);
        let c = opts.producer_config();
        assert_eq!(c.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("linger.ms"), Some("3"));
        assert_eq!(c.get("message.timeout.ms"), Some("2500"));
        // Bounded memory: a full queue refuses instead of growing.
        assert!(c.get("queue.buffering.max.messages").is_some());
    }
}
