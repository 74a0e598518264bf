//! Criterion benchmark of an embedded node's restart (journal recovery and
//! replay into a fresh authority, `EmbeddedNode::open_embedded`) against
//! the number of orders the node took in its life, with compaction
//! (`journal_segment_bytes` = 1 MiB: the snapshot plus the last, partial
//! segment) beside the baseline without it (every event replayed).
//!
//! The history: one sale, then `orders` orders, each reserved and then paid
//! (every other one) or cancelled, all two days ago, so every finished order
//! is past its retention (as in a node that has run for a long time), plus
//! 1,000 orders still reserved now.
//!
//! - `restart/replay_all/<orders>`: no compaction, the baseline.
//! - `restart/snapshot/<orders>`: compacted history.
//!
//! Throughput is the orders of the history per second of restart. Run:
//! `cargo bench -p bench --bench restart` (add `-- --quick` for a smoke
//! run). `RESTART_ORDERS=10000,100000` picks the history sizes.

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use queue::{Event, EventKind, Journal, JournalOptions};
use seckill::config::Config;
use seckill::node::{compact, now_ms, EmbeddedNode};
use seckill_testkit::block_on;

const SALE: &str = "bench";
/// Orders left reserved at the end of the history.
const LIVE: u64 = 1_000;
/// The compacted variant's segment size.
const SEGMENT: u64 = 1024 * 1024;

fn restart(c: &mut Criterion) {
    let sizes: Vec<u64> = std::env::var("RESTART_ORDERS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    let mut group = c.benchmark_group("restart");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5));
    for &orders in &sizes {
        group.throughput(Throughput::Elements(orders + LIVE));
        for (name, segment_bytes) in [("replay_all", 0), ("snapshot", SEGMENT)] {
            let tmp = tempfile::tempdir().expect("temp dir");
            let config = Config {
                data_dir: tmp.path().join("data"),
                cores: 2,
                journal_segment_bytes: segment_bytes,
                ..Config::default()
            };
            write_history(&config.data_dir, orders, segment_bytes);
            if segment_bytes > 0 {
                compact(&config).expect("compact");
            }
            eprintln!(
                "restart/{name}/{orders}: {} bytes on disk",
                dir_bytes(&config.data_dir)
            );
            group.bench_with_input(BenchmarkId::new(name, orders), &config, |b, config| {
                b.iter(|| {
                    let (node, replayed) =
                        EmbeddedNode::open_embedded(config.clone(), "bench".into()).expect("open");
                    node.log.close();
                    replayed
                });
            });
        }
    }
    group.finish();
}

/// Writes the history of `orders` finished orders and `LIVE` live ones.
fn write_history(dir: &Path, orders: u64, segment_bytes: u64) {
    std::fs::create_dir_all(dir).expect("data dir");
    let opts = JournalOptions {
        segment_bytes,
        ..JournalOptions::default()
    };
    let (journal, _) = Journal::recover(dir, opts).expect("journal");
    let long_ago = now_ms() - 2 * 24 * 3600 * 1000;
    let sale = EventKind::SaleCreated {
        sale_id: SALE.into(),
        stock: orders + LIVE,
        per_user_limit: 1,
        starts_at: 0,
        ends_at: None,
        payment_timeout_s: 900,
        ticket_required: false,
    };
    block_on(journal.append(&Event::new(long_ago, sale))).expect("durable");
    let mut last = None;
    for n in 0..orders + LIVE {
        let live = n >= orders;
        let at = if live { now_ms() } else { long_ago };
        let (order_id, user_id) = (format!("1-{n}"), format!("user-{n}"));
        let reserved = EventKind::OrderReserved {
            order_id: order_id.clone(),
            sale_id: SALE.into(),
            user_id: user_id.clone(),
            quantity: 1,
            expires_at: at / 1000 + 900,
            idempotency_key: Some(format!("key-{n}")),
            fingerprint: Some("9f86d081884c7d65".into()),
        };
        last = Some(journal.append(&Event::new(at, reserved)));
        if !live {
            let (sale_id, quantity) = (SALE.into(), 1);
            let done = if n % 2 == 0 {
                EventKind::OrderPaid {
                    order_id,
                    sale_id,
                    user_id,
                    quantity,
                }
            } else {
                EventKind::OrderCancelled {
                    order_id,
                    sale_id,
                    user_id,
                    quantity,
                }
            };
            last = Some(journal.append(&Event::new(at, done)));
        }
        // Bounded queue: wait for the writer now and then.
        if n % 10_000 == 9_999 {
            block_on(last.take().expect("appended")).expect("durable");
        }
    }
    if let Some(last) = last {
        block_on(last).expect("durable");
    }
    journal.close();
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("data dir")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

criterion_group!(benches, restart);
criterion_main!(benches);
