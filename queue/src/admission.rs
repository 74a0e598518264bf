//! The admission token queue: bounds how many purchases are in flight on one
//! core (waiting on the stock authority or the order log), with a bounded
//! FIFO queue of waiters behind the tokens.
//!
//! PERFORMANCE-CRITICAL PATH: every purchase passes here. Banned: blocking,
//! locks, logging, and allocation per acquire (waiter slots live in a slab
//! that grows once to `max_waiters` and is reused).
//!
//! Per core and not `Send` (`Rc`/`RefCell` inside): each monoio core has its
//! own [`Admission`]. Rules:
//! - [`Admission::acquire`] takes a free token at once when nobody is queued
//!   ahead; otherwise it queues if the queue has room; otherwise it fails at
//!   once with [`Overloaded`] (the node answers 503 `overloaded`).
//! - A [`Permit`] gives its token back on drop, straight to the oldest
//!   waiter (FIFO) if there is one, else to the pool.
//! - A queued [`Acquire`] dropped before it got a token leaves the queue; one
//!   that was handed a token but dropped before it was polled passes the
//!   token on. Tokens are never lost or duplicated:
//!   `available() + permits held + tokens granted but not yet polled == tokens`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A per-core pool of admission tokens with a bounded FIFO of waiters.
/// Cheap to clone (an `Rc` inside); clones share the pool.
#[derive(Clone)]
pub struct Admission {
    state: Rc<RefCell<State>>,
}

/// No admission token is free and the waiter queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overloaded;

impl Overloaded {
    /// The stable error code of the HTTP body (503).
    pub fn code(&self) -> &'static str {
        "overloaded"
    }
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no admission token free and the waiter queue is full")
    }
}

impl std::error::Error for Overloaded {}

impl Admission {
    /// A pool of `tokens` tokens and room for `max_waiters` queued waiters.
    pub fn new(tokens: usize, max_waiters: usize) -> Self {
        Admission {
            state: Rc::new(RefCell::new(State {
                tokens,
                available: tokens,
                max_waiters,
                queue: VecDeque::with_capacity(max_waiters.min(4096)),
                slots: Vec::new(),
                free: Vec::new(),
            })),
        }
    }

    /// A token now if one is free and nobody is queued ahead; else joins the
    /// FIFO queue if it has room (the future resolves when a token is handed
    /// to it); else `Err(Overloaded)` at once.
    pub fn acquire(&self) -> Acquire {
        let mut st = self.state.borrow_mut();
        let step = if st.available > 0 && st.queue.is_empty() {
            st.available -= 1;
            Step::Now(Some(Ok(Permit {
                admission: self.clone(),
            })))
        } else if st.queue.len() < st.max_waiters {
            let slot = st.alloc_slot();
            st.queue.push_back(slot);
            Step::Queued {
                admission: self.clone(),
                slot,
            }
        } else {
            Step::Now(Some(Err(Overloaded)))
        };
        Acquire { step }
    }

    /// A token now if one is free and nobody is queued ahead; never queues.
    pub fn try_acquire(&self) -> Option<Permit> {
        let mut st = self.state.borrow_mut();
        if st.available > 0 && st.queue.is_empty() {
            st.available -= 1;
            Some(Permit {
                admission: self.clone(),
            })
        } else {
            None
        }
    }

    /// Tokens free in the pool.
    pub fn available(&self) -> usize {
        self.state.borrow().available
    }

    /// Waiters queued for a token (not counting those already handed one).
    pub fn waiting(&self) -> usize {
        self.state.borrow().queue.len()
    }

    /// The number of tokens the pool was made with.
    pub fn tokens(&self) -> usize {
        self.state.borrow().tokens
    }

    /// Gives one token back: to the oldest waiter if any, else to the pool.
    fn release(&self) {
        let waker = {
            let mut st = self.state.borrow_mut();
            match st.queue.pop_front() {
                Some(slot) => {
                    let slot = &mut st.slots[slot];
                    slot.granted = true;
                    slot.waker.take()
                }
                None => {
                    st.available += 1;
                    None
                }
            }
        };
        // Woken outside the borrow, in case the waker re-enters.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state.borrow();
        f.debug_struct("Admission")
            .field("tokens", &st.tokens)
            .field("available", &st.available)
            .field("waiting", &st.queue.len())
            .field("max_waiters", &st.max_waiters)
            .finish()
    }
}

/// One admission token. Dropping it gives the token back.
#[must_use = "the token is given back as soon as the Permit is dropped"]
pub struct Permit {
    admission: Admission,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.release();
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

/// The future of [`Admission::acquire`].
#[must_use = "a queued waiter leaves the queue when its Acquire is dropped"]
pub struct Acquire {
    step: Step,
}

enum Step {
    /// Decided at `acquire` time: a token or `Overloaded`.
    Now(Option<Result<Permit, Overloaded>>),
    /// In the queue (or handed a token not yet collected) under `slot`.
    Queued { admission: Admission, slot: usize },
    /// The output was taken.
    Done,
}

impl Future for Acquire {
    type Output = Result<Permit, Overloaded>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.step {
            Step::Now(out) => {
                let out = out.take().expect("Acquire polled after completion");
                this.step = Step::Done;
                Poll::Ready(out)
            }
            Step::Queued { admission, slot } => {
                let mut st = admission.state.borrow_mut();
                let waiter = &mut st.slots[*slot];
                if !waiter.granted {
                    match &mut waiter.waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        w => *w = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
                st.free_slot(*slot);
                drop(st);
                let Step::Queued { admission, .. } = std::mem::replace(&mut this.step, Step::Done)
                else {
                    unreachable!("matched Queued above")
                };
                Poll::Ready(Ok(Permit { admission }))
            }
            Step::Done => panic!("Acquire polled after completion"),
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let Step::Queued { admission, slot } = &self.step else {
            return; // a Permit inside Now gives its token back by itself
        };
        let granted = {
            let mut st = admission.state.borrow_mut();
            let granted = st.slots[*slot].granted;
            if !granted {
                if let Some(at) = st.queue.iter().position(|s| s == slot) {
                    st.queue.remove(at);
                }
            }
            st.free_slot(*slot);
            granted
        };
        if granted {
            // Handed a token but never collected it: pass it on.
            admission.release();
        }
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = match self.step {
            Step::Now(_) => "now",
            Step::Queued { .. } => "queued",
            Step::Done => "done",
        };
        f.debug_struct("Acquire").field("step", &step).finish()
    }
}

struct State {
    tokens: usize,
    available: usize,
    max_waiters: usize,
    /// Slots of the waiters still waiting, oldest first.
    queue: VecDeque<usize>,
    /// Waiter slots, reused through `free`.
    slots: Vec<Slot>,
    free: Vec<usize>,
}

#[derive(Default)]
struct Slot {
    waker: Option<Waker>,
    /// A token was handed to this waiter; its Acquire owns it now.
    granted: bool,
}

impl State {
    fn alloc_slot(&mut self) -> usize {
        match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
        }
    }

    fn free_slot(&mut self, slot: usize) {
        self.slots[slot] = Slot::default();
        self.free.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    #[derive(Default)]
    struct CountWaker(AtomicUsize);

    impl Wake for CountWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A pending acquire with the waker it was polled with.
    struct Waiter {
        fut: Acquire,
        wakes: Arc<CountWaker>,
    }

    impl Waiter {
        fn poll(&mut self) -> Poll<Result<Permit, Overloaded>> {
            let waker = Waker::from(Arc::clone(&self.wakes));
            Pin::new(&mut self.fut).poll(&mut Context::from_waker(&waker))
        }

        fn woken(&self) -> usize {
            self.wakes.0.load(Ordering::SeqCst)
        }
    }

    fn start(adm: &Admission) -> (Waiter, Poll<Result<Permit, Overloaded>>) {
        let mut w = Waiter {
            fut: adm.acquire(),
            wakes: Arc::default(),
        };
        let first = w.poll();
        (w, first)
    }

    fn queued(adm: &Admission) -> Waiter {
        let (w, first) = start(adm);
        assert!(first.is_pending(), "expected to queue");
        w
    }

    fn ready(p: Poll<Result<Permit, Overloaded>>) -> Permit {
        match p {
            Poll::Ready(Ok(permit)) => permit,
            Poll::Ready(Err(e)) => panic!("expected a permit, got {e}"),
            Poll::Pending => panic!("expected a permit, got Pending"),
        }
    }

    #[test]
    fn tokens_are_handed_out_then_queued_then_refused() {
        let adm = Admission::new(2, 1);
        let a = ready(start(&adm).1);
        let b = adm.try_acquire().expect("second token");
        assert_eq!(adm.available(), 0);
        assert!(adm.try_acquire().is_none());
        let w = queued(&adm);
        assert_eq!(adm.waiting(), 1);
        let (_, refused) = start(&adm);
        assert!(matches!(refused, Poll::Ready(Err(Overloaded))));
        assert_eq!(Overloaded.code(), "overloaded");
        drop((a, b, w));
        assert_eq!(adm.available(), 2);
        assert_eq!(adm.waiting(), 0);
    }

    #[test]
    fn released_tokens_go_to_waiters_in_fifo_order() {
        let adm = Admission::new(1, 10);
        let first = ready(start(&adm).1);
        let mut waiters: Vec<Waiter> = (0..5).map(|_| queued(&adm)).collect();
        // A newcomer may not jump the queue even via try_acquire.
        drop(first);
        assert_eq!(
            adm.available(),
            0,
            "the token went to a waiter, not the pool"
        );
        assert!(adm.try_acquire().is_none());
        for i in 0..5 {
            assert_eq!(waiters[i].woken(), 1, "waiter {i} woken");
            for later in &mut waiters[i + 1..] {
                assert!(later.poll().is_pending());
                assert_eq!(later.woken(), 0);
            }
            let permit = ready(waiters[i].poll());
            drop(permit);
        }
        assert_eq!(adm.available(), 1);
    }

    #[test]
    fn a_dropped_queued_waiter_leaves_the_queue() {
        let adm = Admission::new(1, 3);
        let held = adm.try_acquire().unwrap();
        let a = queued(&adm);
        let mut b = queued(&adm);
        let c = queued(&adm);
        assert!(start(&adm).1.is_ready(), "full queue refuses");
        drop(a);
        drop(c);
        assert_eq!(adm.waiting(), 1);
        // Room again for one more.
        let mut d = queued(&adm);
        drop(held);
        assert_eq!(b.woken(), 1);
        let pb = ready(b.poll());
        assert!(d.poll().is_pending());
        drop(pb);
        let pd = ready(d.poll());
        drop(pd);
        assert_eq!(adm.available(), 1);
        assert_eq!(adm.waiting(), 0);
    }

    #[test]
    fn a_waiter_dropped_after_its_grant_passes_the_token_on() {
        let adm = Admission::new(1, 4);
        let held = adm.try_acquire().unwrap();
        let granted = queued(&adm);
        let mut next = queued(&adm);
        drop(held);
        assert_eq!(granted.woken(), 1);
        assert_eq!(adm.available(), 0);
        drop(granted); // never polled again
        assert_eq!(next.woken(), 1, "the token moved to the next waiter");
        let p = ready(next.poll());
        drop(p);
        // And with nobody behind, a dropped grant returns to the pool.
        let held = adm.try_acquire().unwrap();
        let granted = queued(&adm);
        drop(held);
        drop(granted);
        assert_eq!(adm.available(), 1);
    }

    #[test]
    fn zero_tokens_queue_everything() {
        let adm = Admission::new(0, 1);
        let _w = queued(&adm);
        assert!(matches!(start(&adm).1, Poll::Ready(Err(Overloaded))));
        assert_eq!(adm.available(), 0);
    }

    /// xorshift64*: deterministic and dependency-free.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Random acquire/poll/drop sequences against a model of the FIFO.
    #[test]
    fn model_random_sequences_never_lose_or_duplicate_tokens() {
        for seed in 1..=200u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let tokens = rng.below(4);
            let max_waiters = rng.below(5);
            let adm = Admission::new(tokens, max_waiters);

            let mut next_id = 0u64;
            let mut permits: Vec<Permit> = Vec::new();
            let mut futs: HashMap<u64, Waiter> = HashMap::new();
            // The model.
            let mut avail = tokens;
            let mut queue: VecDeque<u64> = VecDeque::new();
            let mut granted: Vec<u64> = Vec::new();
            let release =
                |queue: &mut VecDeque<u64>, granted: &mut Vec<u64>, avail: &mut usize| match queue
                    .pop_front()
                {
                    Some(id) => granted.push(id),
                    None => *avail += 1,
                };

            for step in 0..300 {
                match rng.below(5) {
                    0 => {
                        let (w, first) = start(&adm);
                        if avail > 0 && queue.is_empty() {
                            avail -= 1;
                            permits.push(ready(first));
                        } else if queue.len() < max_waiters {
                            assert!(first.is_pending(), "seed {seed} step {step}");
                            queue.push_back(next_id);
                            futs.insert(next_id, w);
                        } else {
                            assert!(matches!(first, Poll::Ready(Err(Overloaded))));
                        }
                        next_id += 1;
                    }
                    1 => {
                        let got = adm.try_acquire();
                        assert_eq!(got.is_some(), avail > 0 && queue.is_empty());
                        if let Some(p) = got {
                            avail -= 1;
                            permits.push(p);
                        }
                    }
                    2 if !permits.is_empty() => {
                        let i = rng.below(permits.len());
                        drop(permits.swap_remove(i));
                        release(&mut queue, &mut granted, &mut avail);
                    }
                    3 if !futs.is_empty() => {
                        let mut ids: Vec<u64> = futs.keys().copied().collect();
                        ids.sort_unstable();
                        let id = ids[rng.below(ids.len())];
                        drop(futs.remove(&id));
                        if let Some(at) = granted.iter().position(|&g| g == id) {
                            granted.swap_remove(at);
                            release(&mut queue, &mut granted, &mut avail);
                        } else {
                            queue.retain(|&q| q != id);
                        }
                    }
                    _ => {
                        let mut ids: Vec<u64> = futs.keys().copied().collect();
                        ids.sort_unstable();
                        for id in ids {
                            let w = futs.get_mut(&id).unwrap();
                            if let Some(at) = granted.iter().position(|&g| g == id) {
                                assert!(w.woken() > 0, "seed {seed}: granted waiter woken");
                                granted.swap_remove(at);
                                permits.push(ready(w.poll()));
                                futs.remove(&id);
                            } else {
                                assert_eq!(w.woken(), 0, "seed {seed}: woken without a token");
                                assert!(w.poll().is_pending(), "seed {seed} step {step}");
                            }
                        }
                    }
                }
                assert_eq!(adm.available(), avail, "seed {seed} step {step}");
                assert_eq!(adm.waiting(), queue.len(), "seed {seed} step {step}");
                assert_eq!(
                    adm.available() + permits.len() + granted.len(),
                    tokens,
                    "seed {seed} step {step}: tokens conserved"
                );
                assert!(adm.waiting() <= max_waiters);
            }
            drop(permits);
            drop(futs);
            assert_eq!(adm.available(), tokens, "seed {seed}: all tokens back");
            assert_eq!(adm.waiting(), 0);
        }
    }
}
