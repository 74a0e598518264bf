//! `seckill trace ORDER_ID`: an order's life in time order, read from the
//! sources themselves (no node needs to be up): the journal files of
//! `--data-dir` (a node's `orders.journal` and its sealed segments), the
//! order's record in Redis (`--redis`), and the order topic (`--kafka`).
//!
//! Every event of the order is shown with when it was made, its request id
//! and `traceparent`, who produced it (the Kafka header `x-origin`:
//! `node-<id>` or `settler`) and where it was found (the journal file, or
//! the partition and offset). The node that took the order is the order id's
//! first part (`{node}-{random}`, `-{sale}` appended in cluster mode).
//!
//! Cost: a journal is read whole (events folded into the embedded snapshot
//! by compaction are gone from it: only their current state remains, in
//! the node); a topic is read from the start of every partition to the
//! high watermark, skipping messages keyed by other orders without
//! decoding them. It is an operator's tool, not for a loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use queue::{Event, EventKind};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use stock::redis::RedisStore;

/// Flags of `seckill trace`.
#[derive(Debug, clap::Args)]
pub struct TraceFlags {
    /// The order id, as answered to the buyer.
    pub order_id: String,
    /// A node's data dir whose journal is read (repeat for several nodes).
    #[arg(long = "data-dir")]
    pub data_dirs: Vec<PathBuf>,
    /// Redis URL of the cluster: the order's record.
    #[arg(long, env = "SECKILL_REDIS")]
    pub redis: Option<String>,
    /// Kafka bootstrap brokers: the order's events in the topic.
    #[arg(long, env = "SECKILL_KAFKA")]
    pub kafka: Option<String>,
    /// The order topic.
    #[arg(long, env = "SECKILL_KAFKA_TOPIC", default_value = "seckill.orders")]
    pub kafka_topic: String,
    /// Longest wait for Redis or the broker.
    #[arg(long, default_value_t = 5_000)]
    pub timeout_ms: u64,
    /// Prints one JSON document instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// An order's life, as printed.
#[derive(Debug, Serialize)]
pub struct OrderTrace {
    pub order_id: String,
    /// The node that took the order (the id's first part).
    pub node: Option<u32>,
    /// The sale, from the events or the id (cluster mode).
    pub sale_id: Option<String>,
    /// Every request id of its events, first seen first.
    pub request_ids: Vec<String>,
    /// The order as Redis holds it now (cluster mode, `--redis`).
    pub record: Option<Record>,
    /// Its events, in time order (`at`, then as found).
    pub events: Vec<Traced>,
}

/// The order's record in Redis.
#[derive(Debug, Serialize)]
pub struct Record {
    pub status: &'static str,
    pub user_id: String,
    pub quantity: u32,
    pub expires_at: u64,
}

/// One event of the order, and where it was found.
#[derive(Debug, Serialize)]
pub struct Traced {
    /// Unix milliseconds when it was made.
    pub at: u64,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
    /// Who produced it (Kafka's `x-origin`): `node-<id>` or `settler`;
    /// none for a journal's events (`source` names the journal).
    pub by: Option<String>,
    /// `journal <path>` or `kafka <partition>/<offset>`.
    pub source: String,
}

/// Runs `seckill trace`: prints the order's life to stdout.
pub fn run(flags: TraceFlags) -> anyhow::Result<()> {
    anyhow::ensure!(
        !flags.data_dirs.is_empty() || flags.redis.is_some() || flags.kafka.is_some(),
        "say where to look: --data-dir (a journal), --redis, --kafka"
    );
    let trace = collect(&flags)?;
    if flags.json {
        println!("{}", serde_json::to_string_pretty(&trace)?);
    } else {
        print!("{}", render(&trace));
    }
    Ok(())
}

/// Reads every source named in `flags`.
pub fn collect(flags: &TraceFlags) -> anyhow::Result<OrderTrace> {
    let order_id = flags.order_id.as_str();
    let timeout = Duration::from_millis(flags.timeout_ms);
    let mut parts = order_id.splitn(3, '-');
    let node = parts.next().and_then(|n| n.parse::<u32>().ok());
    let id_sale = parts.nth(1).map(str::to_owned);
    let mut events = Vec::new();
    for dir in &flags.data_dirs {
        read_journal(dir, order_id, &mut events)?;
    }
    if let Some(brokers) = &flags.kafka {
        read_topic(brokers, &flags.kafka_topic, order_id, timeout, &mut events)?;
    }
    // Stable: events made in the same millisecond keep the order found.
    events.sort_by_key(|(e, _): &(Event, Traced)| e.at);
    let sale_id = events
        .iter()
        .find_map(|(e, _)| sale_of(&e.kind))
        .map(str::to_owned)
        .or(id_sale);
    let record = match (&flags.redis, &sale_id) {
        (Some(url), Some(sale)) => read_record(url, sale, order_id, timeout)?,
        _ => None,
    };
    let mut request_ids: Vec<String> = Vec::new();
    for (_, t) in &events {
        if let Some(id) = &t.request_id {
            if !request_ids.contains(id) {
                request_ids.push(id.clone());
            }
        }
    }
    Ok(OrderTrace {
        order_id: order_id.to_owned(),
        node,
        sale_id,
        request_ids,
        record,
        events: events.into_iter().map(|(_, t)| t).collect(),
    })
}

/// The trace as lines for a terminal.
pub fn render(trace: &OrderTrace) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let node = trace.node.map_or("?".into(), |n| n.to_string());
    let sale = trace.sale_id.as_deref().unwrap_or("?");
    let _ = writeln!(out, "order {} (node {node}, sale {sale})", trace.order_id);
    let _ = writeln!(out, "request ids: {}", trace.request_ids.join(", "));
    if let Some(r) = &trace.record {
        let _ = writeln!(
            out,
            "redis: {} user {} quantity {} expires_at {}",
            r.status, r.user_id, r.quantity, r.expires_at
        );
    }
    if trace.events.is_empty() {
        let _ = writeln!(out, "no event of this order in the sources read");
    }
    for e in &trace.events {
        let _ = writeln!(
            out,
            "{}  {:<16} by {:<9} request {:<24} {}{}",
            utc_ms(e.at),
            e.kind,
            e.by.as_deref().unwrap_or("-"),
            e.request_id.as_deref().unwrap_or("-"),
            e.source,
            e.traceparent
                .as_deref()
                .map_or(String::new(), |t| format!(" traceparent {t}")),
        );
    }
    out
}

fn read_journal(dir: &Path, order_id: &str, out: &mut Vec<(Event, Traced)>) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = queue::journal::sealed_segments(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .into_iter()
        .map(|(_, path)| path)
        .collect();
    let live = dir.join(queue::journal::FILE_NAME);
    if live.exists() {
        files.push(live);
    }
    for path in files {
        let events = queue::journal::read_file(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for event in events {
            if order_of(&event.kind) != Some(order_id) {
                continue;
            }
            // A journal is one node's, but which one it does not say; in
            // cluster mode a reconciler also logs other nodes' changes
            // into its own: `source` names the file.
            let traced = traced(&event, None, format!("journal {}", path.display()));
            out.push((event, traced));
        }
    }
    Ok(())
}

fn read_topic(
    brokers: &str,
    topic: &str,
    order_id: &str,
    timeout: Duration,
    out: &mut Vec<(Event, Traced)>,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "seckill-trace")
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create the Kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .with_context(|| format!("cannot read the metadata of {topic}"))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
        .unwrap_or_default();
    let mut tpl = TopicPartitionList::new();
    let mut left: HashMap<i32, i64> = HashMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        if high > low {
            left.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    if left.is_empty() {
        return Ok(());
    }
    consumer.assign(&tpl)?;
    let mut idle = std::time::Instant::now();
    while !left.is_empty() {
        anyhow::ensure!(
            idle.elapsed() < timeout,
            "the topic {topic} stopped answering before its end"
        );
        let Some(msg) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let msg = msg.context("cannot read the topic")?;
        idle = std::time::Instant::now();
        let (partition, offset) = (msg.partition(), msg.offset());
        if left.get(&partition).is_some_and(|high| offset + 1 >= *high) {
            left.remove(&partition);
        }
        if msg.key() != Some(order_id.as_bytes()) {
            continue;
        }
        let Some(event) = msg.payload().and_then(|p| Event::from_json(p).ok()) else {
            continue;
        };
        let by = msg.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "x-origin")
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        });
        let traced = traced(&event, by, format!("kafka {partition}/{offset}"));
        out.push((event, traced));
    }
    Ok(())
}

fn read_record(
    url: &str,
    sale: &str,
    order_id: &str,
    timeout: Duration,
) -> anyhow::Result<Option<Record>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = RedisStore::connect(url, timeout)
            .await
            .map_err(|e| anyhow::anyhow!("cannot use Redis at {url}: {e}"))?;
        let order = store
            .order(sale, order_id)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the order from Redis: {e}"))?;
        Ok(order.map(|o| Record {
            status: o.status.as_str(),
            user_id: o.user_id,
            quantity: o.quantity,
            expires_at: o.expires_at,
        }))
    })
}

fn traced(event: &Event, by: Option<String>, source: String) -> Traced {
    Traced {
        at: event.at,
        kind: kind_name(&event.kind),
        request_id: event.request_id.clone(),
        traceparent: event.traceparent.clone(),
        by,
        source,
    }
}

fn order_of(kind: &EventKind) -> Option<&str> {
    match kind {
        EventKind::SaleCreated { .. } | EventKind::SaleSwitched { .. } => None,
        other => Some(other.key()),
    }
}

fn sale_of(kind: &EventKind) -> Option<&str> {
    match kind {
        EventKind::OrderReserved { sale_id, .. }
        | EventKind::OrderPaid { sale_id, .. }
        | EventKind::OrderCancelled { sale_id, .. }
        | EventKind::OrderExpired { sale_id, .. }
        | EventKind::StockReleased { sale_id, .. } => Some(sale_id),
        EventKind::SaleCreated { .. } | EventKind::SaleSwitched { .. } => None,
    }
}

fn kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::SaleCreated { .. } => "sale_created",
        EventKind::SaleSwitched { .. } => "sale_switched",
        EventKind::OrderReserved { .. } => "order_reserved",
        EventKind::OrderPaid { .. } => "order_paid",
        EventKind::OrderCancelled { .. } => "order_cancelled",
        EventKind::OrderExpired { .. } => "order_expired",
        EventKind::StockReleased { .. } => "stock_released",
    }
}

/// `at` (Unix milliseconds) as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn utc_ms(at: u64) -> String {
    let (secs, ms) = (at / 1000, at % 1000);
    let (days, day_s) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        day_s / 3600,
        day_s / 60 % 60,
        day_s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc() {
        assert_eq!(utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc_ms(1_796_201_223_407), "2026-12-02T08:47:03.407Z");
    }
}
