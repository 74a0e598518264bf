//! `seckill settle`: the settler of a cluster whose order log is Kafka.
//!
//! The order state machine (reserved → paid | cancelled | expired) is kept
//! in Redis and moved only by `transition.lua`, exactly once per order. The
//! nodes drive the buyer's edges (pay, cancel); the settler drives the rest,
//! so that none of it depends on the node that took the order staying
//! alive:
//!
//! 1. **Consume.** A consumer group on the order topic. Every order event
//!    read removes its entry (`order_id|change`) from the sale's
//!    not-yet-logged set in Redis (one ZREM per sale per batch). Offsets are
//!    committed only after that is done, so a restart or a rebalance reads
//!    again from the last done batch: at-least-once delivery, idempotent
//!    effects.
//! 2. **Expire.** Every tick, the orders of each sale's expiry queue whose
//!    `payment_timeout_s` passed are moved to `expired` (units back to the
//!    pool, exactly once: a second attempt is `unchanged`), then logged as
//!    `order_expired`.
//! 3. **Reconcile.** A change written to Redis but not seen in the log
//!    `grace` after it happened never reached the log: its node died between
//!    the two, or its produce failed. Once the settler has consumed the topic
//!    up to the high watermarks read after the pass began (so every event
//!    produced before then has been seen), each such change older than
//!    `grace` is settled from Redis's record: a reservation still reserved
//!    is released (compensation: units back, `stock_released` logged); any
//!    other change has its missing event logged.
//!
//! **An event it cannot read stops the settler.** A message that is not an
//! order event, or an event of a newer schema version (`v`), may be the
//! very record of an order: taking it as absent would let reconciliation
//! release an order answered 200. So the settler applies what it read
//! before that message, commits up to it (never past it), logs an ERROR
//! naming the partition and offset, and exits with status 3
//! ([`EXIT_UNREADABLE`]) before any further pass. A restart (a supervisor's
//! loop) reads the same message again and stops again: nothing is skipped
//! and nothing is released until an operator acts (a settler that reads
//! the newer schema, or the group's offset moved past the message by hand
//! once its order is accounted for). Expiry and reconciliation stop with
//! it; orders in flight keep their reservations meanwhile.
//!
//! **Its grace outlasts every live node's delivery timeout.** A node's
//! produce may land up to its `kafka_timeout_ms` after the change; nodes
//! publish that timeout with their id claim in Redis
//! ([`RedisStore::live_nodes`]). The settler refuses to start when its
//! grace is not above the largest live one, and skips reconciliation
//! (ERROR, once) while such a node lives.
//!
//! The settler reads every partition itself (manual assignment; the group
//! id only keeps its committed offsets), so a restarted settler resumes at
//! once from the last commit. Group rebalancing was not used because the
//! broker these tests run on (tansu 0.6) never took the partitions back
//! from a SIGKILLed member (none reassigned after 90 s). A second settler
//! may run beside the first: Redis makes every expiry and release happen
//! once, so the worst it does is log a missing event twice (consumers
//! dedupe by order id and type).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use queue::kafka::{LagProbe, Renewing};
use queue::{Event, EventKind, KafkaOptions};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use stock::redis::{LiveNode, Moved, RedisStore};
use stock::{Order, OrderChange, OrderStatus};
use tracing::{debug, error, info, warn};

use crate::clock::{now_ms, now_s};
pub use crate::config::SettleFlags;

/// The settler's exit status when it stopped at an event it cannot read
/// ([`Unreadable`]); a supervisor may stop restarting on it.
pub const EXIT_UNREADABLE: i32 = 3;

/// A message of the order log this settler cannot read: not an order
/// event, or an event of a newer schema version. The settler stops there.
#[derive(Debug, thiserror::Error)]
#[error(
    "the order log has a message this settler cannot read at {topic}/{partition} offset \
     {offset} ({why}); stopped without committing past it or releasing anything: run a \
     settler that reads it, or, once its order is accounted for, move the group's offset \
     past it by hand"
)]
pub struct Unreadable {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub why: String,
}

/// Runs the settler until SIGTERM or SIGINT; `Err(Unreadable)` when it
/// stopped at a message it cannot read.
pub fn run(flags: SettleFlags) -> anyhow::Result<()> {
    anyhow::ensure!(
        flags.grace_ms > flags.kafka_timeout_ms,
        "--grace-ms must be longer than --kafka-timeout-ms"
    );
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut settler = Settler::connect(&flags).await?;
        info!(
            topic = flags.kafka_topic,
            group = flags.group,
            "settler running"
        );
        if let Err(stop) = settler.run(&stop).await {
            error!(
                topic = stop.topic,
                partition = stop.partition,
                offset = stop.offset,
                "{stop}"
            );
            return Err(stop.into());
        }
        info!("settler stopped");
        Ok(())
    })
}

/// What one pass of the settler did, for its log line.
#[derive(Debug, Default)]
struct Tally {
    expired: usize,
    released: usize,
    relogged: usize,
}

/// A reconciliation pass waiting for consumption to reach `highs`.
struct Pass {
    /// Redis time when the pass began.
    began_ms: u64,
    /// High watermark per partition, read after `began_ms`.
    highs: HashMap<i32, i64>,
}

struct Settler {
    store: RedisStore,
    consumer: Arc<StreamConsumer>,
    producer: Arc<Renewing>,
    topic: String,
    grace_ms: u64,
    interval: Duration,
    kafka_timeout: Duration,
    /// Next offset to read per partition, for what is done (effects applied).
    done: HashMap<i32, i64>,
    /// Read, effects not applied yet: entries per sale, next offsets.
    batch: Batch,
    pass: Option<Pass>,
    /// Reconciliation is held back by a live node whose delivery timeout
    /// is not below the grace (logged once per episode).
    held_back: bool,
    /// The request id of each order read reserved and not yet finished
    /// (paid, cancelled, expired, released), for the settler's log lines
    /// and events about it. Bounded ([`MAX_REQUEST_IDS`]); orders reserved
    /// before the offsets a restarted settler resumes from are not in it.
    request_ids: HashMap<String, String>,
    /// Measures this settler's lag at the broker (its group's committed
    /// offsets vs the head), published in Redis about once a second.
    lag: Arc<LagProbe>,
    lag_measured: Option<std::time::Instant>,
    /// A measurement is running (its own task: the probe's broker calls
    /// may each wait `kafka_timeout_ms` while the broker restarts, and the
    /// settling loop must not wait with them).
    lag_running: Arc<AtomicBool>,
}

/// How long the settler's record in Redis outlives its last publish.
const RECORD_TTL: Duration = Duration::from_secs(10);

/// Most request ids [`Settler::request_ids`] keeps (about 100 bytes each);
/// past it, new orders are logged without theirs.
const MAX_REQUEST_IDS: usize = 1 << 18;

#[derive(Default)]
struct Batch {
    entries: HashMap<String, Vec<(String, OrderChange)>>,
    offsets: HashMap<i32, i64>,
    len: usize,
}

/// The event that records `change` of `order` (as Redis holds it).
fn event_for(order: &Order, change: OrderChange) -> Event {
    Event::new(now_ms(), EventKind::order(change, order, None, None))
}

/// `order_reserved` of an order found in Redis, with the Idempotency-Key
/// and fingerprint its record holds (`RedisStore::order_key`).
fn reserved_event(order: &Order, key: Option<(String, Option<String>)>) -> Event {
    let (idempotency_key, fingerprint) = key.map_or((None, None), |(k, fp)| (Some(k), fp));
    Event::new(
        now_ms(),
        EventKind::order(OrderChange::Reserved, order, idempotency_key, fingerprint),
    )
}

impl Settler {
    async fn connect(flags: &SettleFlags) -> anyhow::Result<Settler> {
        let kafka_timeout = Duration::from_millis(flags.kafka_timeout_ms);
        let mut opts = KafkaOptions::new(flags.kafka.clone());
        opts.topic = flags.kafka_topic.clone();
        opts.message_timeout = kafka_timeout;
        let (brokers, topic, partitions) = (opts.brokers.clone(), opts.topic.clone(), 6);
        tokio::task::spawn_blocking(move || {
            queue::kafka::ensure_topic(&brokers, &topic, partitions, kafka_timeout)
        })
        .await?
        .map_err(|e| anyhow::anyhow!("cannot use Kafka at {}: {e}", flags.kafka))?;
        let store =
            RedisStore::connect(&flags.redis, Duration::from_millis(flags.redis_timeout_ms))
                .await
                .map_err(|e| anyhow::anyhow!("cannot use Redis at {}: {e}", flags.redis))?
                .tracking_log();
        store.persistence().await.warn_if_at_risk();
        // A few tries: a slow Redis reply at start is no reason to exit.
        let mut tries = 0;
        let nodes = loop {
            match store.live_nodes().await {
                Ok(nodes) => break nodes,
                Err(e) if tries < 5 => {
                    tries += 1;
                    debug!(error = %e, "cannot read the live nodes yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => anyhow::bail!("cannot read the live nodes from Redis: {e}"),
            }
        };
        if let Some(why) = grace_too_short(&nodes, flags.grace_ms) {
            anyhow::bail!("{why}; the settler does not start");
        }
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &flags.kafka)
            .set("group.id", &flags.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            // Fetches sized for a busy sale (measured: see the constants).
            .set("fetch.min.bytes", queue::kafka::SETTLER_FETCH_MIN_BYTES)
            .set("fetch.wait.max.ms", queue::kafka::SETTLER_FETCH_WAIT_MAX_MS)
            .create()
            .context("cannot create the Kafka consumer")?;
        let mut tpl = TopicPartitionList::new();
        for p in topic_partitions(&consumer, &flags.kafka_topic, kafka_timeout)? {
            // From the committed offset; earliest when there is none.
            tpl.add_partition_offset(&flags.kafka_topic, p, Offset::Stored)?;
        }
        consumer
            .assign(&tpl)
            .context("cannot assign the order topic's partitions")?;
        let producer = Arc::new(
            Renewing::new(opts.producer_config())
                .map_err(|e| anyhow::anyhow!("cannot create the Kafka producer: {e}"))?,
        );
        Ok(Settler {
            store,
            consumer: Arc::new(consumer),
            producer,
            topic: flags.kafka_topic.clone(),
            grace_ms: flags.grace_ms,
            interval: Duration::from_millis(flags.interval_ms.max(10)),
            kafka_timeout,
            done: HashMap::new(),
            batch: Batch::default(),
            pass: None,
            held_back: false,
            request_ids: HashMap::new(),
            lag: Arc::new(
                LagProbe::new(
                    &flags.kafka,
                    &flags.kafka_topic,
                    &flags.group,
                    kafka_timeout,
                )
                .context("cannot create the lag probe")?,
            ),
            lag_measured: None,
            lag_running: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn run(&mut self, stop: &AtomicBool) -> Result<(), Unreadable> {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let consumer = self.consumer.clone();
        loop {
            tokio::select! {
                read = consumer.recv() => match read {
                    Ok(msg) => {
                        if let Err(stop) = self.read(msg.partition(), msg.offset(), msg.payload()) {
                            // What was read before it is done and committed;
                            // nothing after it is.
                            self.apply_batch().await;
                            return Err(stop);
                        }
                        if self.batch.len >= 512 {
                            self.apply_batch().await;
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "consume failed");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                },
                _ = tick.tick() => {
                    self.apply_batch().await;
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    let mut tally = Tally::default();
                    self.expire_due(&mut tally).await;
                    self.reconcile(&mut tally).await;
                    self.publish_lag();
                    if tally.expired + tally.released + tally.relogged > 0 {
                        info!(?tally, "settled");
                    }
                }
            }
        }
    }

    /// Takes one message into the batch; a message it cannot read is not
    /// taken (its offset is not passed).
    fn read(
        &mut self,
        partition: i32,
        offset: i64,
        payload: Option<&[u8]>,
    ) -> Result<(), Unreadable> {
        let event = decode(payload).map_err(|why| Unreadable {
            topic: self.topic.clone(),
            partition,
            offset,
            why,
        })?;
        self.batch.offsets.insert(partition, offset + 1);
        self.remember_request_id(&event);
        if let Some((sale, order, change)) = event.kind.order_change() {
            self.batch
                .entries
                .entry(sale.to_owned())
                .or_default()
                .push((order.to_owned(), change));
            self.batch.len += 1;
        }
        Ok(())
    }

    /// Measures how far behind the topic's head the settler is (at most
    /// once a second) and publishes it as its record in Redis
    /// (`sk:{stats}:settler`: `lag_events`, `lag_seconds`, `at_ms`).
    /// Measures the lag and publishes it in Redis, at most once a second
    /// and one measurement at a time, in a task of its own.
    fn publish_lag(&mut self) {
        if self
            .lag_measured
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
            || self.lag_running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.lag_measured = Some(std::time::Instant::now());
        let (probe, store, running) = (
            self.lag.clone(),
            self.store.clone(),
            self.lag_running.clone(),
        );
        tokio::spawn(async move {
            match tokio::task::spawn_blocking(move || probe.measure(now_ms())).await {
                Ok(Ok(lag)) => {
                    let record = serde_json::json!({
                        "lag_events": lag.events,
                        "lag_seconds": lag.seconds,
                        "at_ms": now_ms(),
                    });
                    if let Err(e) = store.publish_settler(&record.to_string(), RECORD_TTL).await {
                        debug!(error = %e, "cannot publish the settler's record");
                    }
                }
                Ok(Err(e)) => debug!(error = %e, "cannot measure the lag"),
                Err(_) => {}
            }
            running.store(false, Ordering::Release);
        });
    }

    /// Keeps the request id of an order read reserved until the order is
    /// read finished.
    fn remember_request_id(&mut self, event: &Event) {
        match &event.kind {
            EventKind::OrderReserved { order_id, .. } => {
                if let Some(id) = &event.request_id {
                    if self.request_ids.len() < MAX_REQUEST_IDS {
                        self.request_ids.insert(order_id.clone(), id.clone());
                    }
                }
            }
            EventKind::OrderPaid { order_id, .. }
            | EventKind::OrderCancelled { order_id, .. }
            | EventKind::OrderExpired { order_id, .. }
            | EventKind::StockReleased { order_id, .. } => {
                self.request_ids.remove(order_id);
            }
            EventKind::SaleCreated { .. } | EventKind::SaleSwitched { .. } => {}
        }
    }

    /// The request id that reserved `order_id`, if known.
    fn request_id(&self, order_id: &str) -> Option<&str> {
        self.request_ids.get(order_id).map(String::as_str)
    }

    /// Applies the batch's effects (retrying until Redis takes them), then
    /// commits its offsets.
    async fn apply_batch(&mut self) {
        if self.batch.offsets.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        for (sale, entries) in &batch.entries {
            let mut wait = Duration::from_millis(100);
            while let Err(e) = self.store.mark_logged(sale, entries).await {
                warn!(sale, error = %e, "cannot mark events logged; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
        let mut tpl = TopicPartitionList::new();
        for (&partition, &next) in &batch.offsets {
            let _ = tpl.add_partition_offset(&self.topic, partition, Offset::Offset(next));
            self.done.insert(partition, next);
        }
        // An offset whose commit is lost is read again: its effects are
        // idempotent.
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            warn!(error = %e, "offset commit failed; those events will be read again");
        }
    }

    /// Expires every order whose payment timeout passed, and logs it.
    async fn expire_due(&mut self, tally: &mut Tally) {
        let Ok(sales) = self.store.sale_ids().await else {
            return;
        };
        let now = now_s();
        for sale in sales {
            // Up to 16 rounds of 256 per sale and tick: a sale whose whole
            // stock comes due at once drains at thousands per second
            // without starving the other sales or the consumer.
            for _ in 0..16 {
                let due = match self.store.due(&sale, now, 256).await {
                    Ok(due) => due,
                    Err(e) => {
                        debug!(sale, error = %e, "cannot read due orders");
                        break;
                    }
                };
                let full = due.len() == 256;
                self.expire(&sale, due, now, tally).await;
                if !full {
                    break;
                }
            }
        }
    }

    /// Expires `due` orders of `sale` and logs each expiry.
    async fn expire(&self, sale: &str, due: Vec<String>, now: u64, tally: &mut Tally) {
        let mut deliveries = Vec::new();
        for order_id in due {
            match self
                .store
                .transition(sale, &order_id, OrderStatus::Expired, now)
                .await
            {
                Ok(Moved::Changed(order)) => {
                    tally.expired += 1;
                    let request_id = self.request_id(&order_id);
                    info!(
                        order_id,
                        request_id, sale, "expired an unpaid order: its units are back in the pool"
                    );
                    let event = event_for(&order, OrderChange::Expired).traced(request_id, None);
                    deliveries.push(self.produce(&event));
                }
                Ok(_) => {}
                Err(e) => warn!(order_id, error = %e, "expiry failed; will retry"),
            }
        }
        // An event that did not make it stays not-yet-logged in Redis and
        // is logged by a later reconciliation.
        for delivery in deliveries {
            if let Err(e) = delivery.await {
                warn!(error = %e, "an expiry event was not logged; reconciliation will");
            }
        }
    }

    /// Sends `event`; the future resolves on its delivery report.
    fn produce(
        &self,
        event: &Event,
    ) -> impl std::future::Future<Output = Result<(), queue::LogError>> + 'static {
        let headers = queue::kafka::event_headers(event, Some("settler"));
        self.producer
            .send(&self.topic, event.kind.key(), &event.to_json(), headers)
    }

    /// One step of reconciliation: start a pass, or finish the pass whose
    /// watermarks consumption has reached.
    async fn reconcile(&mut self, tally: &mut Tally) {
        let Some(pass) = self.pass.take() else {
            self.pass = self.begin_pass().await;
            return;
        };
        if !pass
            .highs
            .iter()
            .all(|(p, high)| self.done.get(p).copied().unwrap_or(0) >= *high)
        {
            self.pass = Some(pass);
            return;
        }
        // Consumption reached the pass's watermarks. A node whose produce
        // may still land past the grace holds reconciliation back.
        match self.store.live_nodes().await {
            Ok(nodes) => {
                match grace_too_short(&nodes, self.grace_ms) {
                    Some(why) => {
                        if !std::mem::replace(&mut self.held_back, true) {
                            error!("{why}; not reconciling while it lives");
                        }
                        return;
                    }
                    None => {
                        if std::mem::replace(&mut self.held_back, false) {
                            info!("no live node's delivery timeout reaches the grace: reconciling again");
                        }
                    }
                }
            }
            Err(e) => {
                debug!(error = %e, "cannot read the live nodes; not reconciling now");
                return;
            }
        }
        let cutoff = pass.began_ms.saturating_sub(self.grace_ms);
        let Ok(sales) = self.store.sale_ids().await else {
            return;
        };
        for sale in sales {
            let entries = match self.store.unlogged(&sale, cutoff, 512).await {
                Ok(entries) => entries,
                Err(e) => {
                    debug!(sale, error = %e, "cannot read unlogged changes");
                    continue;
                }
            };
            for (order_id, change) in entries {
                if let Err(e) = self.settle_entry(&sale, &order_id, &change, tally).await {
                    warn!(sale, order_id, change, error = %e, "reconciliation failed; will retry");
                }
            }
        }
    }

    /// Reads the watermarks a pass must reach, if this settler holds every
    /// partition of the topic.
    async fn begin_pass(&mut self) -> Option<Pass> {
        let began_ms = self.store.time_ms().await.ok()?;
        let consumer = self.consumer.clone();
        let (topic, timeout) = (self.topic.clone(), self.kafka_timeout);
        let read = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let partitions = topic_partitions(&consumer, &topic, timeout)?;
            let assigned = consumer.assignment()?;
            let mut added = TopicPartitionList::new();
            for &p in &partitions {
                if assigned.find_partition(&topic, p).is_none() {
                    added.add_partition_offset(&topic, p, Offset::Stored)?;
                }
            }
            if added.count() > 0 {
                // Partitions added to the topic since the last pass.
                consumer.incremental_assign(&added)?;
                return Ok(None);
            }
            let committed = consumer.committed(timeout)?;
            let mut highs = HashMap::new();
            let mut starts = HashMap::new();
            for p in partitions {
                let (low, high) = consumer.fetch_watermarks(&topic, p, timeout)?;
                let start = match committed.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o.max(low),
                    _ => low,
                };
                highs.insert(p, high);
                starts.insert(p, start);
            }
            Ok(Some((highs, starts)))
        })
        .await;
        match read {
            Ok(Ok(Some((highs, starts)))) => {
                for (p, start) in starts {
                    let done = self.done.entry(p).or_insert(start);
                    *done = (*done).max(start);
                }
                Some(Pass { began_ms, highs })
            }
            Ok(Ok(None)) => None,
            Ok(Err(e)) => {
                debug!(error = %e, "cannot read the topic's watermarks");
                None
            }
            Err(e) => {
                warn!(error = %e, "watermark task failed");
                None
            }
        }
    }

    /// Settles one change that never reached the log.
    async fn settle_entry(
        &mut self,
        sale: &str,
        order_id: &str,
        change: &str,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        let Some(order) = self.store.order(sale, order_id).await? else {
            warn!(
                sale,
                order_id, change, "a change of an unknown order; dropping it"
            );
            self.store
                .mark_logged(sale, &[(order_id.to_owned(), change)])
                .await?;
            return Ok(());
        };
        let Ok(change) = change.parse::<OrderChange>() else {
            warn!(sale, order_id, change, "an unknown change; dropping it");
            self.store
                .mark_logged(sale, &[(order_id.to_owned(), change)])
                .await?;
            return Ok(());
        };
        if change == OrderChange::Reserved {
            // Never acknowledged: its buyer got no 200 (the node died or
            // answered 503). Release it, unless it moved on meanwhile.
            if order.status == OrderStatus::Reserved {
                match self.store.release(sale, order_id).await? {
                    Moved::Changed(released) => {
                        tally.released += 1;
                        info!(
                            order_id,
                            request_id = self.request_id(order_id),
                            sale,
                            "released a reservation that never reached the log"
                        );
                        self.produce(&event_for(&released, OrderChange::Released))
                            .await?;
                        self.store
                            .mark_logged(sale, &[(order_id.to_owned(), OrderChange::Released)])
                            .await?;
                    }
                    // A replay answered it 200 on some node: it is kept, so
                    // its reservation is logged instead of released.
                    Moved::Kept(kept) => {
                        let key = self.store.order_key(sale, order_id).await?;
                        self.produce(&reserved_event(&kept, key)).await?;
                        tally.relogged += 1;
                    }
                    _ => {}
                }
            }
            self.store
                .mark_logged(sale, &[(order_id.to_owned(), OrderChange::Reserved)])
                .await?;
            return Ok(());
        }
        let event = event_for(&order, change);
        self.produce(&event).await?;
        tally.relogged += 1;
        self.store
            .mark_logged(sale, &[(order_id.to_owned(), change)])
            .await?;
        Ok(())
    }
}

/// Decodes one message of the order log: an error (why) for a message
/// without a value, one that is not an order event, or one of a newer
/// schema version than this build's.
fn decode(payload: Option<&[u8]>) -> Result<Event, String> {
    let payload = payload.ok_or("a message without a value")?;
    match Event::from_json(payload) {
        Ok(event) if event.v <= queue::event::SCHEMA_VERSION => Ok(event),
        Ok(event) => Err(format!(
            "schema version {} is newer than this build's {}",
            event.v,
            queue::event::SCHEMA_VERSION
        )),
        Err(e) => {
            let v = serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|j| j.get("v").and_then(serde_json::Value::as_u64));
            Err(match v {
                Some(v) if v > u64::from(queue::event::SCHEMA_VERSION) => format!(
                    "schema version {v} is newer than this build's {}",
                    queue::event::SCHEMA_VERSION
                ),
                _ => format!("not an order event: {e}"),
            })
        }
    }
}

/// Why `grace_ms` is too short for the live `nodes`: the node with the
/// longest delivery timeout not below it (or whose timeout is unknown).
fn grace_too_short(nodes: &[LiveNode], grace_ms: u64) -> Option<String> {
    let worst = nodes
        .iter()
        .max_by_key(|n| n.kafka_timeout_ms.unwrap_or(u64::MAX))?;
    match worst.kafka_timeout_ms {
        Some(t) if t < grace_ms => None,
        Some(t) => Some(format!(
            "the grace ({grace_ms} ms) is not above the delivery timeout of live node {} \
             (kafka_timeout_ms {t}): an order event of that node may land after the grace; \
             raise --grace-ms above {t}",
            worst.node
        )),
        None => Some(format!(
            "the claim of live node {} in Redis cannot be read (its delivery timeout is \
             unknown)",
            worst.node
        )),
    }
}

/// The partition ids of `topic`.
fn topic_partitions(
    consumer: &StreamConsumer,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .context("cannot read the order topic's metadata")?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(
        !partitions.is_empty(),
        "the topic {topic} has no partitions"
    );
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserved() -> Event {
        Event::new(
            1,
            EventKind::OrderReserved {
                order_id: "1-1-s".into(),
                sale_id: "s".into(),
                user_id: "u".into(),
                quantity: 1,
                expires_at: 9,
                idempotency_key: None,
                fingerprint: None,
            },
        )
    }

    #[test]
    fn only_events_of_a_known_version_are_read() {
        assert_eq!(decode(Some(&reserved().to_json())), Ok(reserved()));
        let mut newer: serde_json::Value = serde_json::from_slice(&reserved().to_json()).unwrap();
        newer["v"] = 2.into();
        let why = decode(Some(newer.to_string().as_bytes())).unwrap_err();
        assert!(why.contains("schema version 2"), "{why}");
        newer["type"] = "order_teleported".into();
        let why = decode(Some(newer.to_string().as_bytes())).unwrap_err();
        assert!(why.contains("schema version 2"), "{why}");
        assert!(decode(Some(b"\x00garbage")).is_err());
        assert!(decode(Some(br#"{"v":1,"type":"nope"}"#)).is_err());
        assert!(decode(None).is_err());
    }

    #[test]
    fn the_grace_must_be_above_every_live_delivery_timeout() {
        let node = |node, t: Option<u64>| LiveNode {
            node,
            kafka_timeout_ms: t,
            expires_at_ms: 0,
        };
        assert_eq!(grace_too_short(&[], 100), None);
        let nodes = [node(1, Some(2_000)), node(2, Some(0))];
        assert_eq!(grace_too_short(&nodes, 4_000), None);
        let nodes = [node(1, Some(2_000)), node(3, Some(4_000))];
        let why = grace_too_short(&nodes, 4_000).unwrap();
        assert!(why.contains("node 3") && why.contains("4000"), "{why}");
        let why = grace_too_short(&[node(4, None)], 4_000).unwrap();
        assert!(why.contains("node 4"), "{why}");
    }
}
