//! Criterion benchmarks of the hop that the hot-path rules (ARCHITECTURE.md) ask to
//! measure: a monoio core hands a call to the backend's tokio runtime on
//! its own thread and awaits the reply, as `stock::cluster` does for every
//! Redis call (an unbounded `tokio::sync::mpsc` channel to the backend,
//! which drains it with `recv_many`; a `oneshot` back).
//!
//! - `hop/one`: one call at a time, round trip. `cross_thread` is the real
//!   hop (monoio core → tokio thread → monoio core); the baseline
//!   `same_core` sends the same call to a task on the same monoio core,
//!   which is what the hop costs beyond an in-core hand-off.
//! - `hop/batch_64`: 64 calls sent, then all 64 awaited, so that the
//!   backend takes them in one drain, as concurrent purchases on a core do;
//!   the cost per call when the hop is batched.
//!
//! Run: `cargo bench -p bench --bench hop` (add `-- --quick` for a smoke
//! run).

use std::hint::black_box;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tokio::sync::{mpsc, oneshot};

/// A call and where its answer goes.
struct Call {
    x: u64,
    reply: oneshot::Sender<u64>,
}

/// Answers every call of a drain; ends when every sender is gone.
async fn answer(mut rx: mpsc::UnboundedReceiver<Call>) {
    let mut calls = Vec::with_capacity(512);
    while rx.recv_many(&mut calls, 512).await > 0 {
        for call in calls.drain(..) {
            let _ = call.reply.send(call.x + 1);
        }
    }
}

/// A tokio current-thread runtime on its own thread, answering calls.
fn backend() -> mpsc::UnboundedSender<Call> {
    let (tx, rx) = mpsc::unbounded_channel();
    thread::Builder::new()
        .name("hop-backend".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("tokio runtime")
                .block_on(answer(rx));
        })
        .expect("backend thread");
    tx
}

fn core() -> monoio::Runtime<monoio::LegacyDriver> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .build()
        .expect("monoio runtime")
}

/// Sends `iters` rounds of `batch` calls to `tx`, awaiting each round's
/// answers; the time it took.
async fn rounds(tx: &mpsc::UnboundedSender<Call>, iters: u64, batch: u64) -> Duration {
    let mut replies = Vec::with_capacity(batch as usize);
    let started = Instant::now();
    for i in 0..iters {
        for j in 0..batch {
            let (reply, rx) = oneshot::channel();
            tx.send(Call { x: i + j, reply }).expect("backend alive");
            replies.push(rx);
        }
        for rx in replies.drain(..) {
            black_box(rx.await.expect("an answer"));
        }
    }
    started.elapsed()
}

fn hop(c: &mut Criterion) {
    for batch in [1u64, 64] {
        let name = if batch == 1 {
            "hop/one".to_string()
        } else {
            format!("hop/batch_{batch}")
        };
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(batch));

        let tx = backend();
        let mut rt = core();
        group.bench_function(BenchmarkId::from_parameter("cross_thread"), |b| {
            b.iter_custom(|iters| rt.block_on(rounds(&tx, iters, batch)));
        });
        drop(tx);

        let mut rt = core();
        group.bench_function(BenchmarkId::from_parameter("same_core"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let responder = monoio::spawn(answer(rx));
                    let took = rounds(&tx, iters, batch).await;
                    drop(tx);
                    responder.await;
                    took
                })
            });
        });
        group.finish();
    }
}

criterion_group!(benches, hop);
criterion_main!(benches);
