//! Criterion benchmark of the embedded order log ([`queue::Journal`]): append
//! throughput with group commit (one `fdatasync` per batch, the default)
//! beside the naive baseline, one `fdatasync` per record
//! (`JournalOptions { group_commit: false, .. }`).
//!
//! - `journal/append_durable`: `THREADS` appender threads, each appending one
//!   order event, waiting until it is durable, `RECORDS_PER_THREAD` times (a
//!   closed loop, as purchase handlers waiting on the log are). Throughput is
//!   records per second; the journal is a real file in a temp dir, so the
//!   figures are those of the disk under the temp dir.
//!
//! Run: `cargo bench -p bench --bench journal` (add `-- --quick` for a smoke
//! run). Per-record fsync is slow, so samples are few and short.

use std::thread;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use queue::{Event, EventKind, Journal, JournalOptions};
use seckill_testkit::block_on;

/// Concurrent appenders: purchases waiting on the log at once.
const THREADS: u64 = 8;
/// Records each appender writes per iteration.
const RECORDS_PER_THREAD: u64 = 16;

fn append_durable(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal/append_durable");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(THREADS * RECORDS_PER_THREAD));
    let payload = order_event().to_json();
    for (name, group_commit) in [("group_commit", true), ("fsync_per_record", false)] {
        let tmp = tempfile::tempdir().expect("temp dir");
        let opts = JournalOptions {
            group_commit,
            ..JournalOptions::default()
        };
        let (journal, _) = Journal::open(tmp.path(), opts).expect("open journal");
        group.bench_function(name, |b| {
            b.iter(|| appenders(&journal, &payload));
        });
        let stats = journal.stats();
        journal.close();
        eprintln!(
            "journal/append_durable/{name}: {} records in {} syncs ({:.1} per sync)",
            stats.records,
            stats.syncs,
            stats.records as f64 / stats.syncs.max(1) as f64
        );
    }
    group.finish();
}

/// `THREADS` threads, each appending and awaiting `RECORDS_PER_THREAD`
/// records one after the other.
fn appenders(journal: &Journal, payload: &[u8]) {
    thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..RECORDS_PER_THREAD {
                    block_on(journal.append_encoded(payload.to_vec())).expect("durable");
                }
            });
        }
    });
}

fn order_event() -> Event {
    Event::new(
        1_763_784_000_123,
        EventKind::OrderReserved {
            order_id: "1-1763784000123456".into(),
            sale_id: "s1".into(),
            user_id: "u7".into(),
            quantity: 1,
            expires_at: 1_763_784_900,
            idempotency_key: Some("k-1".into()),
            fingerprint: Some("9f86d081884c7d65".into()),
        },
    )
}

criterion_group!(benches, append_durable);
criterion_main!(benches);
