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

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;
use parking_lot::{Condvar, Mutex};
use queue::{Event, EventKind, KafkaOptions};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

/// Longest latency the histogram holds, microseconds (60 s).
const MAX_LATENCY_US: u64 = 60_000_000;

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
    });
    println!("{json}");
    std::process::exit(if s.failed == 0 && drained { 0 } else { 1 });
}
