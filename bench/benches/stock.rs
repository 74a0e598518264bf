//! Criterion micro-benchmarks of [`stock::ShardedStock`], each beside the
//! naive baselines a reviewer would ask about: one `parking_lot::Mutex<u64>`
//! and one shared `AtomicI64`.
//!
//! - `stock/buy_cancel`: take one unit and commit it, then put it back (so the
//!   stock never runs out): the purchase path plus the cancel path.
//! - `stock/sold_out`: a request on a sold-out sale: the path almost every
//!   request of a flash sale takes.
//!
//! Each at 1 thread and at 2 threads (each thread on its own core index,
//! timed as a whole with `iter_custom`; a thread's spawn is included and
//! amortized over its iterations). Run:
//! `cargo bench -p bench --bench stock` (add `-- --quick` for a smoke run).

use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use parking_lot::Mutex;
use stock::ShardedStock;

/// Enough stock that the buy/cancel loop can never run out.
const STOCK: u64 = 1 << 40;
/// One shard per benchmark thread, as a node with one runtime per core has.
const SHARDS: usize = 2;

fn buy_cancel(c: &mut Criterion) {
    let sharded = ShardedStock::new(STOCK, SHARDS);
    let mutex = Mutex::new(STOCK);
    let atomic = AtomicI64::new(STOCK as i64);
    let mut group = c.benchmark_group("stock/buy_cancel");
    for threads in [1, 2] {
        run(&mut group, "sharded", threads, &|core| {
            let units = sharded.take(core, 1).expect("stock never runs out");
            units.commit();
            sharded.put_back(core, 1);
        });
        run(&mut group, "mutex_u64", threads, &|_| {
            {
                let mut left = mutex.lock();
                assert!(*left >= 1, "stock never runs out");
                *left -= 1;
            }
            *mutex.lock() += 1;
        });
        run(&mut group, "atomic_i64", threads, &|_| {
            let before = atomic.fetch_sub(1, Ordering::AcqRel);
            assert!(before >= 1, "stock never runs out");
            atomic.fetch_add(1, Ordering::AcqRel);
        });
    }
    group.finish();
}

fn sold_out(c: &mut Criterion) {
    let sharded = ShardedStock::new(0, SHARDS);
    let mutex = Mutex::new(0_u64);
    let atomic = AtomicI64::new(0);
    let mut group = c.benchmark_group("stock/sold_out");
    for threads in [1, 2] {
        run(&mut group, "sharded", threads, &|core| {
            assert!(black_box(sharded.take(core, 1)).is_none());
        });
        run(&mut group, "mutex_u64", threads, &|_| {
            assert_eq!(*black_box(mutex.lock()), 0);
        });
        // The naive counter: decrement, and undo when it went below zero.
        run(&mut group, "atomic_i64", threads, &|_| {
            if atomic.fetch_sub(1, Ordering::AcqRel) < 1 {
                atomic.fetch_add(1, Ordering::AcqRel);
            }
        });
    }
    group.finish();
}

/// Benchmarks `op(core)` as `name/threads`: one call per iteration at one
/// thread; at more, each thread calls it once per iteration on its own core
/// index, and the wall time of all of them counts.
fn run(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    threads: usize,
    op: &(dyn Fn(usize) + Sync),
) {
    group.throughput(Throughput::Elements(threads as u64));
    let id = format!("{name}/{threads}t");
    if threads == 1 {
        group.bench_function(id, |b| b.iter(|| op(0)));
        return;
    }
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            thread::scope(|s| {
                for core in 0..threads {
                    s.spawn(move || {
                        for _ in 0..iters {
                            op(core);
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = buy_cancel, sold_out
}
criterion_main!(benches);
