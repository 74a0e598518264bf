//! `kafka-ceiling`: the order log's ceiling, the broker measured alone.
//!
//! A plain rdkafka `FutureProducer` with the node's producer settings
//! (`queue::KafkaOptions::producer_config`: idempotent, acks=all, small
//! linger) writes `order_reserved` events (by default the real JSON of one,
//! keyed by a fresh order id each) to a topic as fast as it can, with at most
//! `--in-flight` events awaiting their delivery report, for `--duration-s`
//! seconds or `--messages` events. It prints delivered events/s and the
//! delivery latency (send to delivery report) percentiles, then the same as
//! one line of JSON.
//!
//! ```text
//! scripts/kafka.sh start 19092 /tmp/kafka-bench
//! cargo run --release -p bench --bin kafka-ceiling -- \
//!     --brokers 127.0.0.1:19092 --topic seckill.bench --duration-s 10
//! ```
//!
//! The topic is created (with `--partitions`) when it does not exist; tansu
//! does not auto-create topics.
//!
//! `--consume` measures the same producer while one plain consumer reads the
//! topic beside it, as the settler (`seckill settle`) does in a cluster: on
//! tansu 0.6 (SQLite engine) every record fetched is a SQL query, so reading
//! costs the broker about as much as writing, and a producer-only ceiling is
//! not the broker's capacity in the deployed shape. The reader is assigned
//! every partition at the high watermarks read before the clock starts (it
//! reads only this run's events), fetches with the settler's settings and
//! commits its offsets every 512 messages as the settler does; once the
//! producer is done it reads up to the high watermarks after the last
//! delivery (at most 30 s more), and its count and rate are reported beside
//! the produce rate, which stays the number that counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;
use parking_lot::{Condvar, Mutex};
// The reader fetches with the settler's settings, so that the broker serves
// its fetches as it serves the settler's.
use queue::kafka::{
    SETTLER_FETCH_MIN_BYTES as FETCH_MIN_BYTES, SETTLER_FETCH_WAIT_MAX_MS as FETCH_WAIT_MAX_MS,
};
use queue::{Event, EventKind, KafkaOptions};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// Longest latency the histogram holds, microseconds (60 s).
const MAX_LATENCY_US: u64 = 60_000_000;

/// The reader commits its offsets every this many messages (the settler's
/// batch).
const COMMIT_EVERY: u64 = 512;
/// How long the reader may take to catch up once the producer is done.
const CATCH_UP_LIMIT: Duration = Duration::from_secs(30);
/// Longest wait for the broker's watermarks.
const WATERMARKS_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    name = "kafka-ceiling",
    about = "Throughput and delivery latency of the node's Kafka producer against a broker alone"
)]
struct Args {
    /// Bootstrap brokers, host:port[,host:port...].
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic to write to (created if missing).
    #[arg(long, default_value = "seckill.bench")]
    topic: String,
    /// Partitions of the topic when this tool creates it.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// How long to send, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Stop after this many events (whichever comes first with the duration).
    #[arg(long)]
    messages: Option<u64>,
    /// Event size in bytes; default the size of a real order_reserved event.
    /// Larger pads the JSON with spaces, smaller truncates it.
    #[arg(long)]
    size: Option<usize>,
    /// At most this many events awaiting their delivery report.
    #[arg(long, default_value_t = 1000)]
    in_flight: usize,
    /// linger.ms; default the node's own setting.
    #[arg(long)]
    linger_ms: Option<u64>,
    /// Read the topic while producing, with one consumer and the settler's
    /// fetch settings: the ceiling with the settler's read load.
    #[arg(long)]
    consume: bool,
    /// Consumer group of the --consume reader (it only keeps the reader's
    /// committed offsets; partitions are assigned manually).
    #[arg(long, default_value = "kafka-ceiling-reader")]
    group: String,
}

/// What the delivery tasks report.
struct Stats {
    latency_us: Histogram<u64>,
    delivered: u64,
    failed: u64,
    first_error: Option<String>,
}

/// The in-flight bound: a counter the sender waits on.
struct Window {
    in_flight: Mutex<usize>,
    freed: Condvar,
}

impl Window {
    fn acquire(&self, max: usize) {
        let mut n = self.in_flight.lock();
        while *n >= max {
            self.freed.wait(&mut n);
        }
        *n += 1;
    }

    fn release(&self) {
        *self.in_flight.lock() -= 1;
        self.freed.notify_one();
    }

    /// Waits until nothing is in flight, or `limit` passed; true if drained.
    fn drain(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut n = self.in_flight.lock();
        while *n > 0 {
            if self.freed.wait_until(&mut n, deadline).timed_out() {
                return *n == 0;
            }
        }
        true
    }
}

/// A real `order_reserved` event with a fixed-width order id (so every
/// event has the same size), as the node writes it in cluster mode.
fn reserved_event(seq: u64) -> (String, Vec<u8>) {
    let order_id = format!("7-{seq:012}-flash-1111");
    let at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let event = Event::new(
        at_ms,
        EventKind::OrderReserved {
            order_id: order_id.clone(),
            sale_id: "flash-1111".into(),
            user_id: format!("user-{:08}", seq % 100_000_000),
            quantity: 1,
            expires_at: at_ms / 1000 + 900,
            idempotency_key: Some(format!("{:08x}-7c1e-4b5a-9d3f-{seq:012x}", seq as u32)),
            fingerprint: Some(format!("{:016x}", seq.wrapping_mul(0x9e37_79b9_7f4a_7c15))),
        },
    );
    (order_id, event.to_json())
}

fn sized(mut payload: Vec<u8>, size: Option<usize>) -> Vec<u8> {
    if let Some(size) = size {
        payload.resize(size, b' ');
    }
    payload
}

fn ensure_topic(brokers: &str, topic: &str, partitions: i32, rt: &tokio::runtime::Runtime) {
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("create an admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let results = rt
        .block_on(admin.create_topics([&new], &opts))
        .unwrap_or_else(|e| panic!("create topic {topic} on {brokers}: {e}"));
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => panic!("create topic {name}: {code}"),
        }
    }
}

/// Counts the reader's failed offset commits (async commits report on poll).
#[derive(Default)]
struct ReaderContext {
    commit_failures: AtomicU64,
}

impl ClientContext for ReaderContext {}

impl ConsumerContext for ReaderContext {
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if result.is_err() {
            self.commit_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where the reader may stop, sent once the producer is done (with the
/// instant it was done).
enum Goal {
    /// Next offset to reach per partition: the high watermarks after the
    /// last delivery.
    Highs(HashMap<i32, i64>),
    /// The watermarks could not be read: this many messages.
    Count(u64),
}

/// What the reader did.
struct ReadStats {
    consumed: u64,
    /// Consume errors (each logged, then the reader goes on).
    errors: u64,
    /// Offset commits that failed, at once or in their report.
    commit_failures: u64,
    first_error: Option<String>,
    /// From the clock's start to the last message read.
    last_read: Duration,
    /// Time from the producer done to reaching the goal; None if the reader
    /// gave up CATCH_UP_LIMIT after the producer was done.
    catch_up: Option<Duration>,
    /// Messages known not read when the reader stopped.
    unread: u64,
}

/// The `--consume` reader: a plain consumer of every partition of the topic.
struct Reader {
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
    /// Next offset per partition (the start: the high watermarks).
    next: HashMap<i32, i64>,
}

impl Reader {
    /// Creates the consumer and assigns it every partition at its high
    /// watermark, before the clock starts. A broker that does not answer
    /// here is a setup failure, as for the producer's warm-up.
    fn connect(args: &Args, partitions: i32) -> Reader {
        let consumer: BaseConsumer<ReaderContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &args.brokers)
            .set("group.id", &args.group)
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "10000")
            .set("fetch.min.bytes", FETCH_MIN_BYTES)
            .set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS)
            .create_with_context(ReaderContext::default())
            .expect("create the reader");
        let mut next = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            let (_, high) = consumer
                .fetch_watermarks(&args.topic, p, WATERMARKS_TIMEOUT)
                .unwrap_or_else(|e| panic!("watermarks of {} partition {p}: {e}", args.topic));
            next.insert(p, high);
            tpl.add_partition_offset(&args.topic, p, Offset::Offset(high))
                .expect("a valid partition offset");
        }
        consumer
            .assign(&tpl)
            .expect("assign the topic's partitions");
        Reader {
            consumer,
            topic: args.topic.clone(),
            next,
        }
    }

    /// Starts reading on its own thread; the clock started at `started`.
    fn spawn(self, started: Instant) -> (mpsc::Sender<(Goal, Instant)>, JoinHandle<ReadStats>) {
        let (goal_tx, goal_rx) = mpsc::channel();
        let reader = std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || self.run(started, goal_rx))
            .expect("start the reader thread");
        (goal_tx, reader)
    }

    fn run(mut self, started: Instant, goal_rx: mpsc::Receiver<(Goal, Instant)>) -> ReadStats {
        let mut stats = ReadStats {
            consumed: 0,
            errors: 0,
            commit_failures: 0,
            first_error: None,
            last_read: Duration::ZERO,
            catch_up: None,
            unread: 0,
        };
        let mut goal: Option<(Goal, Instant)> = None;
        let mut uncommitted = 0u64;
        loop {
            if goal.is_none() {
                goal = goal_rx.try_recv().ok();
            }
            if let Some((goal, producer_done)) = &goal {
                stats.unread = self.unread(goal, stats.consumed);
                if stats.unread == 0 {
                    stats.catch_up = Some(producer_done.elapsed());
                    break;
                }
                if producer_done.elapsed() >= CATCH_UP_LIMIT {
                    break;
                }
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(msg)) => {
                    stats.consumed += 1;
                    stats.last_read = started.elapsed();
                    self.next.insert(msg.partition(), msg.offset() + 1);
                    uncommitted += 1;
                    if uncommitted >= COMMIT_EVERY {
                        uncommitted = 0;
                        self.commit(&mut stats);
                    }
                }
                Some(Err(e)) => {
                    // Logged and counted; the pause (as the settler's) keeps
                    // a broker that is down from flooding the log.
                    stats.errors += 1;
                    eprintln!("kafka-ceiling: consume failed: {e} (counted; going on)");
                    stats.first_error.get_or_insert_with(|| e.to_string());
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        if uncommitted > 0 {
            self.commit(&mut stats);
        }
        // Serve the commits' reports.
        let _ = self.consumer.poll(Duration::ZERO);
        stats.commit_failures += self
            .consumer
            .context()
            .commit_failures
            .load(Ordering::Relaxed);
        stats
    }

    /// Messages of the goal not read yet.
    fn unread(&self, goal: &Goal, consumed: u64) -> u64 {
        match goal {
            Goal::Highs(highs) => highs
                .iter()
                .map(|(p, high)| {
                    let next = self.next.get(p).copied().unwrap_or(0);
                    (high - next).max(0) as u64
                })
                .sum(),
            Goal::Count(n) => n.saturating_sub(consumed),
        }
    }

    /// Commits the next offsets read, asynchronously, as the settler does.
    fn commit(&self, stats: &mut ReadStats) {
        let mut tpl = TopicPartitionList::new();
        for (&p, &next) in &self.next {
            let _ = tpl.add_partition_offset(&self.topic, p, Offset::Offset(next));
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            stats.commit_failures += 1;
            if stats.first_error.is_none() {
                eprintln!("kafka-ceiling: offset commit failed: {e} (counted; going on)");
                stats.first_error = Some(format!("commit: {e}"));
            }
        }
    }
}

/// The reader's goal once the producer is done: the high watermarks now,
/// or the delivered count if they cannot be read.
fn goal_after(producer: &FutureProducer, topic: &str, partitions: i32, delivered: u64) -> Goal {
    let mut highs = HashMap::new();
    for p in 0..partitions {
        match producer
            .client()
            .fetch_watermarks(topic, p, WATERMARKS_TIMEOUT)
        {
            Ok((_, high)) => {
                highs.insert(p, high);
            }
            Err(e) => {
                eprintln!(
                    "kafka-ceiling: watermarks of partition {p}: {e}; the reader reads \
                     {delivered} messages instead"
                );
                return Goal::Count(delivered);
            }
        }
    }
    Goal::Highs(highs)
}

/// Messages per second, 0 for no time.
fn per_s(n: u64, t: Duration) -> f64 {
    if t.is_zero() {
        0.0
    } else {
        n as f64 / t.as_secs_f64()
    }
}

fn main() {
    let args = Args::parse();
    assert!(args.in_flight > 0, "--in-flight must be at least 1");
    // One worker runs the delivery tasks (they wake on librdkafka's delivery
    // reports); this thread sends.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("start a tokio runtime");
    ensure_topic(&args.brokers, &args.topic, args.partitions, &rt);

    let mut opts = KafkaOptions::new(args.brokers.clone());
    if let Some(linger) = args.linger_ms {
        opts.linger = Duration::from_millis(linger);
    }
    let config = opts.producer_config();
    let linger_ms = config.get("linger.ms").unwrap_or("?").to_string();
    let producer: FutureProducer = config.create().expect("create the producer");
    // Warm up before the clock starts: connect, get the producer id and the
    // partition leaders (one event to each partition, awaited).
    let metadata = producer
        .client()
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .expect("broker metadata");
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len() as i32)
        .unwrap_or(1);
    for p in 0..partitions {
        let (key, payload) = reserved_event(u64::MAX - p as u64);
        let record = FutureRecord::to(&args.topic)
            .partition(p)
            .key(&key)
            .payload(&payload);
        let delivery = producer
            .send_result(record)
            .unwrap_or_else(|(e, _)| panic!("warm-up send: {e}"));
        rt.block_on(delivery)
            .expect("warm-up delivery report")
            .unwrap_or_else(|(e, _)| panic!("warm-up delivery to partition {p}: {e}"));
    }

    let reader = args.consume.then(|| Reader::connect(&args, partitions));

    let size = sized(reserved_event(0).1, args.size).len();
    let stats = Arc::new(Mutex::new(Stats {
        latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds"),
        delivered: 0,
        failed: 0,
        first_error: None,
    }));
    let window = Arc::new(Window {
        in_flight: Mutex::new(0),
        freed: Condvar::new(),
    });
    let duration = Duration::from_secs_f64(args.duration_s);
    let limit = args.messages.unwrap_or(u64::MAX);
    let mut queue_full = 0u64;
    let mut sent = 0u64;
    let started = Instant::now();
    let stop_at = started + duration;
    let reader = reader.map(|r| r.spawn(started));
    while sent < limit && Instant::now() < stop_at {
        window.acquire(args.in_flight);
        let (key, payload) = reserved_event(sent);
        let payload = sized(payload, args.size);
        let t0 = Instant::now();
        match producer.send_result(FutureRecord::to(&args.topic).key(&key).payload(&payload)) {
            Ok(delivery) => {
                sent += 1;
                let stats = Arc::clone(&stats);
                let window = Arc::clone(&window);
                rt.spawn(async move {
                    let outcome = delivery.await;
                    let us = (t0.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
                    {
                        let mut s = stats.lock();
                        match outcome {
                            Ok(Ok(_)) => {
                                s.delivered += 1;
                                s.latency_us.saturating_record(us);
                            }
                            Ok(Err((e, _))) => {
                                s.failed += 1;
                                s.first_error.get_or_insert_with(|| e.to_string());
                            }
                            Err(_) => {
                                s.failed += 1;
                                s.first_error
                                    .get_or_insert_with(|| "delivery report dropped".into());
                            }
                        }
                    }
                    window.release();
                });
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                window.release();
                queue_full += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => {
                window.release();
                panic!("send: {e}");
            }
        }
    }
    let sending = started.elapsed();
    let drained = window.drain(Duration::from_secs(30));
    let elapsed = started.elapsed();
    let producer_done = Instant::now();
    let read = reader.map(|(goal_tx, reader)| {
        let delivered = stats.lock().delivered;
        let goal = goal_after(&producer, &args.topic, partitions, delivered);
        // The reader runs until it has a goal; a send fails only if it
        // panicked, which the join reports.
        let _ = goal_tx.send((goal, producer_done));
        reader.join().expect("the reader thread")
    });
    drop(producer);

    let s = stats.lock();
    let h = &s.latency_us;
    let rate = s.delivered as f64 / elapsed.as_secs_f64();
    let pct = |q: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(q)
        }
    };
    println!(
        "kafka-ceiling: {} delivered ({} failed) in {:.2} s (sending {:.2} s): {:.0} msg/s, \
         {:.1} MB/s; delivery latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms \
         [size {size} B, in flight <= {}, linger.ms {linger_ms}, brokers {}, topic {}]",
        s.delivered,
        s.failed,
        elapsed.as_secs_f64(),
        sending.as_secs_f64(),
        rate,
        rate * size as f64 / 1e6,
        pct(0.5) as f64 / 1000.0,
        pct(0.99) as f64 / 1000.0,
        pct(0.999) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
        args.in_flight,
        args.brokers,
        args.topic,
    );
    if let Some(e) = &s.first_error {
        println!("first delivery error: {e}");
    }
    if !drained {
        println!("warning: events still in flight after 30 s");
    }
    if let Some(r) = &read {
        let read_s = r.last_read.as_secs_f64();
        let catch_up = match r.catch_up {
            Some(t) => format!(
                "caught up {:.2} s after the producer was done",
                t.as_secs_f64()
            ),
            None => format!(
                "NOT caught up: {} unread {} s after the producer was done",
                r.unread,
                CATCH_UP_LIMIT.as_secs()
            ),
        };
        println!(
            "kafka-ceiling reader: {} consumed ({} errors, {} failed commits) in {read_s:.2} s: \
             {:.0} msg/s; {catch_up} [group {}, fetch.min.bytes {FETCH_MIN_BYTES}, \
             fetch.wait.max.ms {FETCH_WAIT_MAX_MS}]",
            r.consumed,
            r.errors,
            r.commit_failures,
            per_s(r.consumed, r.last_read),
            args.group,
        );
        if let Some(e) = &r.first_error {
            println!("first reader error: {e}");
        }
    }
    let json = serde_json::json!({
        "tool": "kafka-ceiling",
        "brokers": args.brokers,
        "topic": args.topic,
        "size_bytes": size,
        "in_flight": args.in_flight,
        "linger_ms": linger_ms,
        "duration_s": elapsed.as_secs_f64(),
        "sent": sent,
        "delivered": s.delivered,
        "failed": s.failed,
        "queue_full": queue_full,
        "msgs_per_s": rate,
        "p50_us": pct(0.5),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": h.max(),
        "consume": read.is_some(),
        "consumed": read.as_ref().map(|r| r.consumed),
        "consumed_per_s": read.as_ref().map(|r| per_s(r.consumed, r.last_read)),
        "consume_errors": read.as_ref().map(|r| r.errors),
        "commit_failures": read.as_ref().map(|r| r.commit_failures),
        "caught_up": read.as_ref().map(|r| r.catch_up.is_some()),
        "catch_up_s": read.as_ref().and_then(|r| r.catch_up).map(|t| t.as_secs_f64()),
        "unread": read.as_ref().map(|r| r.unread),
    });
    println!("{json}");
    std::process::exit(if s.failed == 0 && drained { 0 } else { 1 });
}
