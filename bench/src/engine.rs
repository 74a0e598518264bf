//! The load engine: one thread per core, each with its own monoio runtime
//! (epoll driver) and its share of keep-alive connections.
//!
//! Two modes:
//! - open loop ([`Mode::Open`]): a pacer task per thread releases the
//!   thread's slots of the [`Schedule`] at their intended times into a slot
//!   queue; any idle connection takes the oldest slot. When every
//!   connection is busy (a slow or stalled server) slots wait in the queue
//!   and their latency keeps counting from the intended time: the
//!   coordinated-omission correction of wrk2.
//! - closed loop ([`Mode::Closed`]): each connection sends its next request
//!   as soon as the previous answer arrived.
//!
//! Life of a run ([`run_load`]):
//! 1. Each thread connects all its connections, then reports ready.
//! 2. The controller (the calling thread) picks one start instant for all.
//! 3. Threads send until the duration (or the request budget) is used up,
//!    then wait up to `grace` for the answers still due.
//! 4. Each thread hands back its [`Recorder`]; the controller merges them.
//!
//! Pacing: while the next slot is more than 200 µs away the pacer sleeps on
//! a helper thread's precise sleep (`Ticker`; monoio's own timer wheel
//! has 1 ms ticks), then it spins by yielding to the runtime (`Spinner`),
//! so slots are released within microseconds of their time. Connections
//! never use timers (monoio fires timers only when it parks, which a
//! spinning pacer delays). At rates above ~500 req/s per thread the generator
//! thread therefore runs at 100% of its core, by design.
//!
//! Failures never end a run: a connection that fails (refused, reset,
//! broken pipe, closed mid-response, unreadable answer) costs its request,
//! counted as a transport error, and is replaced on its next request. A
//! request with no answer within [`LoadConfig::timeout`] is a timeout: a
//! per-thread watchdog (woken by its own `Ticker`, so it runs while the
//! pacer spins) marks it, the request is abandoned with its latency
//! recorded as the timeout, and the connection is replaced. So a stalled
//! or dead server cannot hang a run.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::task::{Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use crate::client::{Connection, ResponseHead};
use crate::recorder::Recorder;
use crate::scenario::{RequestGen, Workload};
use crate::schedule::Schedule;
use crate::BenchError;

/// Open or closed loop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// A fixed schedule, latency from the intended send times.
    Open(Schedule),
    /// Each connection sends again as soon as it has its answer.
    Closed,
}

/// Everything one load run needs.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    pub addr: SocketAddr,
    /// Further nodes: the connections are spread round-robin over `addr`
    /// and these (each connection, reconnects included, keeps its node).
    pub more_addrs: Vec<SocketAddr>,
    pub workload: Workload,
    pub mode: Mode,
    /// Connections over all threads (at least one per thread).
    pub connections: usize,
    pub threads: usize,
    pub duration: Duration,
    /// Stop after this many requests in all (open loop: schedule slots).
    pub max_requests: Option<u64>,
    /// How long to wait after the end for answers still due.
    pub grace: Duration,
    /// A request with no answer this long after it was sent (connecting
    /// included) is a timeout; `Duration::ZERO`: wait for ever.
    pub timeout: Duration,
    /// Timeline resolution.
    pub interval: Duration,
    pub seed: u64,
}

impl LoadConfig {
    /// A closed-loop `GET /healthz` run with one thread; adjust fields.
    pub fn new(addr: SocketAddr, workload: Workload) -> Self {
        LoadConfig {
            addr,
            more_addrs: Vec::new(),
            workload,
            mode: Mode::Closed,
            connections: 64,
            threads: 1,
            duration: Duration::from_secs(10),
            max_requests: None,
            grace: Duration::from_secs(5),
            timeout: DEFAULT_TIMEOUT,
            interval: Duration::from_secs(1),
            seed: 1,
        }
    }
}

/// The default of [`LoadConfig::timeout`] (`--timeout-ms 2000`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the load and returns the merged observations. `tick` is called on
/// the calling thread about every 100 ms with (answers so far, time since
/// the start) — for a progress bar.
pub fn run_load(
    cfg: &LoadConfig,
    tick: &mut dyn FnMut(u64, Duration),
) -> Result<Recorder, BenchError> {
    let threads = cfg.threads.max(1);
    let connections = cfg.connections.max(threads);
    let progress: Arc<Vec<AtomicU64>> = Arc::new((0..threads).map(|_| AtomicU64::new(0)).collect());
    let workload = Arc::new(cfg.workload.clone());
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut start_txs = Vec::new();
    let mut handles = Vec::new();
    for t in 0..threads {
        let (start_tx, start_rx) = mpsc::channel::<Instant>();
        start_txs.push(start_tx);
        let plan = ThreadPlan {
            cfg: cfg.clone(),
            thread: t,
            threads,
            connections: connections / threads + usize::from(t < connections % threads),
            workload: Arc::clone(&workload),
            progress: Arc::clone(&progress),
        };
        let ready_tx = ready_tx.clone();
        let handle = thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || run_thread(plan, ready_tx, start_rx))
            .map_err(|e| BenchError::Load(format!("cannot start a load thread: {e}")))?;
        handles.push(handle);
    }
    drop(ready_tx);
    let mut failed = None;
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(_) => failed = failed.or(Some("a load thread died".to_string())),
        }
    }
    // A thread that failed to connect has returned; dropping the senders
    // releases the others (their start channel closes).
    let start = Instant::now() + Duration::from_millis(2);
    if failed.is_none() {
        for tx in &start_txs {
            let _ = tx.send(start);
        }
    }
    drop(start_txs);
    if failed.is_none() {
        let end = start + cfg.duration + cfg.grace;
        while Instant::now() < end && handles.iter().any(|h| !h.is_finished()) {
            thread::sleep(Duration::from_millis(100));
            let done = progress.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            tick(done, start.elapsed());
        }
    }
    let mut merged: Option<Recorder> = None;
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => match merged.as_mut() {
                Some(m) => m.merge(r),
                None => merged = Some(r),
            },
            Ok(Err(e)) => failed = failed.or(Some(e)),
            Err(_) => failed = failed.or(Some("a load thread panicked".to_string())),
        }
    }
    match (failed, merged) {
        (Some(e), _) => Err(BenchError::Load(e)),
        (None, Some(m)) => Ok(m),
        (None, None) => Err(BenchError::Load("no load thread ran".into())),
    }
}

struct ThreadPlan {
    cfg: LoadConfig,
    thread: usize,
    threads: usize,
    connections: usize,
    workload: Arc<Workload>,
    progress: Arc<Vec<AtomicU64>>,
}

fn run_thread(
    plan: ThreadPlan,
    ready: mpsc::Sender<Result<(), String>>,
    start: mpsc::Receiver<Instant>,
) -> Result<Recorder, String> {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| format!("cannot build a monoio runtime: {e}"))?;
    rt.block_on(drive(plan, ready, start))
}

/// Per-thread state shared by the pacer and the connections (one thread,
/// so `Cell`/`RefCell`; no borrow is held across an `.await`).
struct Shared {
    start: Instant,
    end: Instant,
    slots: SlotQueue,
    recorder: RefCell<Recorder>,
    gen: RefCell<RequestGen>,
    /// Requests sent and not yet answered.
    in_flight: Cell<u64>,
    /// Connection tasks still running.
    active: Cell<usize>,
    /// Closed loop: requests this thread may still send.
    budget: Cell<u64>,
    progress: Arc<Vec<AtomicU64>>,
    thread: usize,
    /// Per-request timeout, if any.
    timeout: Option<Duration>,
    /// One per connection task: its request's deadline, for the watchdog.
    watches: RefCell<Vec<Rc<Watch>>>,
    /// Set when the run is over: the watchdog stops.
    finished: Cell<bool>,
    /// The watchdog task is still running.
    watchdog_running: Cell<bool>,
}

async fn drive(
    plan: ThreadPlan,
    ready: mpsc::Sender<Result<(), String>>,
    start: mpsc::Receiver<Instant>,
) -> Result<Recorder, String> {
    let cfg = &plan.cfg;
    let timeout = (cfg.timeout > Duration::ZERO).then_some(cfg.timeout);
    let mut conns = Vec::with_capacity(plan.connections);
    let targets: Vec<SocketAddr> = std::iter::once(cfg.addr)
        .chain(cfg.more_addrs.iter().copied())
        .collect();
    for k in 0..plan.connections {
        // Connection k of thread t is connection t + k * threads of the
        // run: round-robin over the targets across all threads.
        let addr = targets[(plan.thread + k * plan.threads) % targets.len()];
        // Nothing spins yet, so monoio's timer is fine here.
        let connected = match timeout {
            Some(t) => monoio::time::timeout(t, Connection::connect(addr))
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no connection within {t:?}"),
                    ))
                }),
            None => Connection::connect(addr).await,
        };
        match connected {
            Ok(c) => conns.push((c, addr)),
            Err(e) => {
                let msg = format!("cannot connect to {addr}: {e}");
                let _ = ready.send(Err(msg.clone()));
                return Err(msg);
            }
        }
    }
    let _ = ready.send(Ok(()));
    // Blocking here is fine: nothing else runs on this thread yet.
    let Ok(start) = start.recv() else {
        return Err("the run was called off".into());
    };
    let host = cfg.addr.to_string();
    let threads = plan.threads as u64;
    let thread = plan.thread as u64;
    let budget = cfg
        .max_requests
        .map(|n| n / threads + u64::from(thread < n % threads))
        .unwrap_or(u64::MAX);
    let shared = Rc::new(Shared {
        start,
        end: start + cfg.duration,
        slots: SlotQueue::default(),
        recorder: RefCell::new(Recorder::new(start, cfg.interval)),
        gen: RefCell::new(RequestGen::new(
            Arc::clone(&plan.workload),
            &host,
            plan.thread as u32,
            plan.threads as u32,
            cfg.seed,
        )),
        in_flight: Cell::new(0),
        active: Cell::new(conns.len()),
        budget: Cell::new(budget),
        progress: Arc::clone(&plan.progress),
        thread: plan.thread,
        timeout,
        watches: RefCell::new(Vec::new()),
        finished: Cell::new(false),
        watchdog_running: Cell::new(false),
    });
    // The start is at most a few ms away: the pacer waits for it precisely,
    // closed-loop connections just begin.
    for (conn, addr) in conns {
        let shared = Rc::clone(&shared);
        let watch = Rc::new(Watch::default());
        shared.watches.borrow_mut().push(Rc::clone(&watch));
        match cfg.mode {
            Mode::Open(_) => monoio::spawn(open_connection(shared, conn, addr, watch)),
            Mode::Closed => monoio::spawn(closed_connection(shared, conn, addr, watch)),
        };
    }
    if let Some(t) = timeout {
        shared.watchdog_running.set(true);
        monoio::spawn(watchdog(Rc::clone(&shared), t));
    }
    if let Mode::Open(schedule) = cfg.mode {
        let limit = cfg.max_requests.unwrap_or(u64::MAX);
        monoio::spawn(pace(Rc::clone(&shared), schedule, thread, threads, limit));
    }
    let hard_end = shared.end + cfg.grace;
    while shared.active.get() > 0 && Instant::now() < hard_end {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    shared.slots.close();
    // Let the watchdog see the end and return, so that no waker of this
    // runtime is left with its ticker thread.
    shared.finished.set(true);
    while shared.watchdog_running.get() {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut recorder = shared.recorder.borrow_mut();
    recorder.unfinished += shared.in_flight.get() + shared.slots.len() as u64;
    let result = std::mem::replace(&mut *recorder, Recorder::new(start, cfg.interval));
    Ok(result)
}

/// Releases this thread's slots of the schedule at their intended times.
async fn pace(shared: Rc<Shared>, schedule: Schedule, thread: u64, threads: u64, limit: u64) {
    let spin = Rc::new(Spinner::default());
    monoio::spawn(Rc::clone(&spin).kick());
    let ticker = Ticker::start();
    let span = shared
        .end
        .saturating_duration_since(shared.start)
        .as_nanos() as u64;
    let mut i = thread;
    while i < limit {
        let due = schedule.intended_ns(i);
        if due >= span {
            break;
        }
        let at = shared.start + Duration::from_nanos(due);
        wait_until(at, &spin, &ticker).await;
        shared.slots.push(Slot { intended: at });
        i += threads;
    }
    spin.stop();
    shared.slots.close();
}

async fn open_connection(shared: Rc<Shared>, conn: Connection, addr: SocketAddr, watch: Rc<Watch>) {
    let mut conn = Some(conn);
    let mut request = Vec::with_capacity(512);
    while let Some(slot) = shared.slots.pop().await {
        request = exchange(&shared, &watch, addr, &mut conn, slot.intended, request).await;
    }
    shared.active.set(shared.active.get() - 1);
}

async fn closed_connection(
    shared: Rc<Shared>,
    conn: Connection,
    addr: SocketAddr,
    watch: Rc<Watch>,
) {
    let mut conn = Some(conn);
    let mut request = Vec::with_capacity(512);
    loop {
        let now = Instant::now();
        if now >= shared.end || shared.budget.get() == 0 {
            break;
        }
        shared.budget.set(shared.budget.get() - 1);
        request = exchange(&shared, &watch, addr, &mut conn, now, request).await;
    }
    shared.active.set(shared.active.get() - 1);
}

/// Sends one request on `conn` (reconnecting first if it was lost) and
/// records the outcome: an answer, a transport error or a timeout. A failed
/// or timed-out connection is dropped, to be replaced by the next request.
/// Hands the request buffer back (a new one after a timeout: the abandoned
/// attempt took it).
async fn exchange(
    shared: &Shared,
    watch: &Watch,
    addr: SocketAddr,
    conn: &mut Option<Connection>,
    intended: Instant,
    mut request: Vec<u8>,
) -> Vec<u8> {
    let meta = shared.gen.borrow_mut().next(&mut request);
    shared.in_flight.set(shared.in_flight.get() + 1);
    let sent = Instant::now();
    let deadline = shared.timeout.map(|t| sent + t);
    let outcome = watch.race(deadline, attempt(addr, conn, request)).await;
    let done = Instant::now();
    shared.in_flight.set(shared.in_flight.get() - 1);
    let request = match outcome {
        Some((Ok(head), request)) => {
            let mut recorder = shared.recorder.borrow_mut();
            match conn.as_ref() {
                Some(c) => recorder.response(intended, sent, done, &head, c.body(&head), meta),
                None => recorder.response(intended, sent, done, &head, b"", meta),
            }
            if head.close {
                *conn = None;
            }
            request
        }
        Some((Err(e), request)) => {
            shared.recorder.borrow_mut().io_error(&e, done);
            *conn = None;
            request
        }
        None => {
            let timeout = shared.timeout.unwrap_or_default();
            shared
                .recorder
                .borrow_mut()
                .timeout(intended, sent, timeout, done);
            // The connection may still deliver the late answer: never reuse it.
            *conn = None;
            Vec::with_capacity(512)
        }
    };
    shared.progress[shared.thread].fetch_add(1, Ordering::Relaxed);
    request
}

/// Connects if `conn` is empty, then sends `request` and reads the answer.
async fn attempt(
    addr: SocketAddr,
    conn: &mut Option<Connection>,
    request: Vec<u8>,
) -> (std::io::Result<ResponseHead>, Vec<u8>) {
    let c = match conn {
        Some(c) => c,
        None => match Connection::connect(addr).await {
            Ok(c) => conn.insert(c),
            Err(e) => return (Err(e), request),
        },
    };
    c.exchange(request).await
}

/// The deadline of the request in flight on one connection, shared with
/// the thread's watchdog.
#[derive(Default)]
struct Watch {
    deadline: Cell<Option<Instant>>,
    /// Set by the watchdog once the deadline has passed.
    expired: Cell<bool>,
    /// The connection task, to wake when the deadline passes.
    waker: Cell<Option<Waker>>,
}

impl Watch {
    /// Runs `fut` to completion, or until the watchdog finds `deadline`
    /// passed (`None`; `fut` is dropped, abandoning the attempt).
    async fn race<F: Future>(&self, deadline: Option<Instant>, fut: F) -> Option<F::Output> {
        let Some(deadline) = deadline else {
            return Some(fut.await);
        };
        self.expired.set(false);
        self.deadline.set(Some(deadline));
        let mut fut = std::pin::pin!(fut);
        let out = std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            if self.expired.get() {
                return Poll::Ready(None);
            }
            // The task's waker is the same for every request: clone it once.
            let waker = match self.waker.take() {
                Some(w) if w.will_wake(cx.waker()) => w,
                _ => cx.waker().clone(),
            };
            self.waker.set(Some(waker));
            Poll::Pending
        })
        .await;
        self.deadline.set(None);
        out
    }

    /// Marks the request expired and wakes its task if its deadline is
    /// at or before `now`.
    fn expire_if_due(&self, now: Instant) {
        if self.deadline.get().is_some_and(|d| d <= now) && !self.expired.get() {
            self.expired.set(true);
            if let Some(w) = self.waker.take() {
                w.wake_by_ref();
                self.waker.set(Some(w));
            }
        }
    }
}

/// Every `timeout / 20` (1 to 50 ms), marks the requests whose deadline
/// has passed. It sleeps on its own [`Ticker`] thread (not monoio's timer,
/// which a spinning pacer keeps from firing). A timeout is thus noticed up
/// to one period late; its recorded latency is the timeout all the same.
async fn watchdog(shared: Rc<Shared>, timeout: Duration) {
    let period = (timeout / 20).clamp(Duration::from_millis(1), Duration::from_millis(50));
    let ticker = Ticker::start();
    while !shared.finished.get() {
        ticker.sleep_until(Instant::now() + period).await;
        let now = Instant::now();
        for watch in shared.watches.borrow().iter() {
            watch.expire_if_due(now);
        }
    }
    shared.watchdog_running.set(false);
}

/// Waits until `at`: asleep on the ticker thread while it is more than
/// [`SPIN_BELOW`] away, then by yielding to the runtime.
async fn wait_until(at: Instant, spin: &Spinner, ticker: &Ticker) {
    loop {
        let now = Instant::now();
        if now >= at {
            return;
        }
        if at - now > SPIN_BELOW {
            ticker.sleep_until(at - SPIN_BELOW / 2).await;
        } else {
            spin.yield_now().await;
        }
    }
}

/// Waits shorter than this are spun; longer ones sleep on the ticker
/// (whose wake-ups are late by the OS timer slack, ~50-100 µs).
const SPIN_BELOW: Duration = Duration::from_micros(200);

/// A helper thread that sleeps precisely (`nanosleep`, microseconds, where
/// monoio's timer wheel has 1 ms ticks) and then wakes the pacer across
/// threads (monoio's `sync` feature: an eventfd unparks the runtime).
/// Sleeping rather than spinning matters on a shared machine: a thread
/// that sleeps is scheduled promptly when it wakes, a spinning one is
/// preempted for whole time slices.
struct Ticker {
    tx: Option<mpsc::Sender<(Instant, Waker)>>,
}

impl Ticker {
    fn start() -> Ticker {
        let (tx, rx) = mpsc::channel::<(Instant, Waker)>();
        let started = thread::Builder::new()
            .name("load-ticker".into())
            .spawn(move || {
                while let Ok((at, waker)) = rx.recv() {
                    let now = Instant::now();
                    if at > now {
                        thread::sleep(at - now);
                    }
                    waker.wake();
                }
            });
        Ticker {
            tx: started.ok().map(|_| tx),
        }
    }

    /// Resolves at `at` or soon after (falls back to the runtime's timer
    /// if the ticker thread could not start).
    async fn sleep_until(&self, at: Instant) {
        let Some(tx) = &self.tx else {
            monoio::time::sleep(at.saturating_duration_since(Instant::now())).await;
            return;
        };
        let mut registered = false;
        std::future::poll_fn(|cx| {
            if Instant::now() >= at {
                return Poll::Ready(());
            }
            if !registered {
                registered = true;
                if tx.send((at, cx.waker().clone())).is_err() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// Lets every other ready task run and polls for I/O once, then resumes.
///
/// A task that wakes itself is put back at the *front* of monoio's run
/// queue, so a plain self-waking yield would starve the connections. The
/// pacer instead hands its waker to a second task (the kicker), whose wake
/// puts it at the back: pacer → kicker → pacer ping-pong, each behind the
/// tasks already queued.
#[derive(Default)]
struct Spinner {
    pacer: Cell<Option<Waker>>,
    kicker: Cell<Option<Waker>>,
    done: Cell<bool>,
}

impl Spinner {
    fn yield_now(&self) -> impl Future<Output = ()> + '_ {
        let mut yielded = false;
        std::future::poll_fn(move |cx| {
            if yielded {
                return Poll::Ready(());
            }
            yielded = true;
            self.pacer.set(Some(cx.waker().clone()));
            if let Some(k) = self.kicker.take() {
                k.wake();
            }
            Poll::Pending
        })
    }

    /// The kicker task's body: wakes the pacer whenever it is woken.
    async fn kick(self: Rc<Self>) {
        std::future::poll_fn(|cx| {
            if let Some(p) = self.pacer.take() {
                p.wake();
            }
            if self.done.get() {
                return Poll::Ready(());
            }
            self.kicker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    fn stop(&self) {
        self.done.set(true);
        if let Some(k) = self.kicker.take() {
            k.wake();
        }
    }
}

/// One schedule slot released by the pacer.
#[derive(Clone, Copy, Debug)]
struct Slot {
    intended: Instant,
}

/// Slots waiting for an idle connection, FIFO; single-threaded.
#[derive(Default)]
struct SlotQueue {
    slots: RefCell<VecDeque<Slot>>,
    waiters: RefCell<VecDeque<Waker>>,
    closed: Cell<bool>,
}

impl SlotQueue {
    fn push(&self, slot: Slot) {
        self.slots.borrow_mut().push_back(slot);
        let waiter = self.waiters.borrow_mut().pop_front();
        if let Some(w) = waiter {
            w.wake();
        }
    }

    fn close(&self) {
        self.closed.set(true);
        let waiters: Vec<Waker> = self.waiters.borrow_mut().drain(..).collect();
        for w in waiters {
            w.wake();
        }
    }

    fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    /// The oldest slot, or `None` once the queue is closed and empty.
    fn pop(&self) -> impl Future<Output = Option<Slot>> + '_ {
        std::future::poll_fn(move |cx| {
            if let Some(slot) = self.slots.borrow_mut().pop_front() {
                return Poll::Ready(Some(slot));
            }
            if self.closed.get() {
                return Poll::Ready(None);
            }
            self.waiters.borrow_mut().push_back(cx.waker().clone());
            Poll::Pending
        })
    }
}
