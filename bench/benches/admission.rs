//! Criterion benchmarks of the per-core admission token queue
//! ([`queue::Admission`]), each beside naive baselines.
//!
//! - `admission/acquire_release`: take a token with a free pool and give it
//!   back — what every purchase pays. `admission_try` uses
//!   `Admission::try_acquire`, `admission_future` polls `Admission::acquire`
//!   once; baselines: a `parking_lot::Mutex<usize>` counter and
//!   `tokio::sync::Semaphore::try_acquire` (both thread-safe, which a per-core
//!   queue does not need to be).
//! - `admission/handoff`: the queued path under overload — a waiter queues
//!   behind the one token, the holder drops its permit, the token goes to the
//!   waiter, the waiter is polled and becomes the holder. Baseline: a naive
//!   FIFO semaphore, a counter and a `VecDeque<Rc<Cell<bool>>>` behind an
//!   `Rc<RefCell<_>>`, allocating a flag per waiter.
//!
//! Run: `cargo bench -p bench --bench admission` (add `-- --quick` for a
//! smoke run).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use parking_lot::Mutex;
use queue::Admission;

const TOKENS: usize = 64;

fn acquire_release(c: &mut Criterion) {
    let mut group = c.benchmark_group("admission/acquire_release");
    group.throughput(Throughput::Elements(1));

    let adm = Admission::new(TOKENS, 1024);
    group.bench_function("admission_try", |b| {
        b.iter(|| drop(black_box(adm.try_acquire().expect("a free token"))));
    });
    let mut cx = Context::from_waker(Waker::noop());
    group.bench_function("admission_future", |b| {
        b.iter(|| {
            let acquire = pin!(adm.acquire());
            match acquire.poll(&mut cx) {
                Poll::Ready(Ok(permit)) => drop(black_box(permit)),
                _ => panic!("a free token"),
            }
        });
    });

    let counter = Mutex::new(TOKENS);
    group.bench_function("mutex_usize", |b| {
        b.iter(|| {
            {
                let mut free = counter.lock();
                assert!(*free > 0, "a free token");
                *free -= 1;
            }
            black_box(&counter);
            *counter.lock() += 1;
        });
    });

    let semaphore = tokio::sync::Semaphore::new(TOKENS);
    group.bench_function("tokio_semaphore", |b| {
        b.iter(|| drop(black_box(semaphore.try_acquire().expect("a free token"))));
    });
    group.finish();
}

fn handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("admission/handoff");
    group.throughput(Throughput::Elements(1));
    let mut cx = Context::from_waker(Waker::noop());

    let adm = Admission::new(1, 1024);
    let mut held = Some(adm.try_acquire().expect("the one token"));
    group.bench_function("admission", |b| {
        b.iter(|| {
            let mut waiter = pin!(adm.acquire());
            assert!(waiter.as_mut().poll(&mut cx).is_pending());
            drop(held.take());
            match waiter.poll(&mut cx) {
                Poll::Ready(Ok(permit)) => held = Some(permit),
                _ => panic!("the token was handed over"),
            }
        });
    });
    drop(held);

    let naive = NaiveFifo::new(1);
    assert!(naive.try_acquire(), "the one token");
    group.bench_function("naive_rc_vecdeque", |b| {
        b.iter(|| {
            let flag = naive.enqueue();
            assert!(!flag.get());
            naive.release();
            assert!(black_box(flag).get(), "the token was handed over");
        });
    });
    group.finish();
}

/// The naive FIFO semaphore: a counter and a queue of shared flags, one `Rc`
/// allocation per waiter.
struct NaiveFifo {
    state: Rc<RefCell<NaiveState>>,
}

struct NaiveState {
    free: usize,
    waiters: VecDeque<Rc<Cell<bool>>>,
}

impl NaiveFifo {
    fn new(tokens: usize) -> Self {
        NaiveFifo {
            state: Rc::new(RefCell::new(NaiveState {
                free: tokens,
                waiters: VecDeque::new(),
            })),
        }
    }

    fn try_acquire(&self) -> bool {
        let mut st = self.state.borrow_mut();
        if st.free > 0 && st.waiters.is_empty() {
            st.free -= 1;
            true
        } else {
            false
        }
    }

    fn enqueue(&self) -> Rc<Cell<bool>> {
        let flag = Rc::new(Cell::new(false));
        self.state.borrow_mut().waiters.push_back(Rc::clone(&flag));
        flag
    }

    fn release(&self) {
        let mut st = self.state.borrow_mut();
        match st.waiters.pop_front() {
            Some(flag) => flag.set(true),
            None => st.free += 1,
        }
    }
}

criterion_group!(benches, acquire_release, handoff);
criterion_main!(benches);
