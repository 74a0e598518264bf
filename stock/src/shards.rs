//! The per-core stock counters of one sale: [`ShardedStock`], and [`Units`],
//! the guard for units taken but not yet sold.
//!
//! PERFORMANCE-CRITICAL PATH: [`ShardedStock::take`] and [`ShardedStock::is_sold_out`]
//! run on every purchase request, on the core that received it. Banned here:
//! locks, allocation, logging, blocking, and any read-modify-write of a cache
//! line shared between cores on the sold-out path.
//!
//! How a purchase on core `c` finds its units:
//! 1. the sold-out flag: one load of a read-mostly line; set → rejected at once;
//! 2. shard `c % shards`: a CAS loop on a line that only core `c` normally
//!    writes, so a shard with units serves its core without sharing anything;
//! 3. a dry shard steals from its siblings, `c + 1` onwards round-robin,
//!    taking what it still needs plus up to half of the sibling's rest, and
//!    keeps that surplus in its own shard so its next requests are local again;
//! 4. if nothing was found anywhere, the sold-out flag is set (and re-checked,
//!    see `ShardedStock::mark_sold_out`), so later requests stop at step 1.
//!
//! Units come back through [`ShardedStock::put_back`] (a cancelled or expired
//! order, a top-up, a dropped [`Units`]), which adds first and then clears the
//! flag. Invariant: at rest, the flag is never set while a shard holds a unit.

use std::fmt;

use crate::sync::{AtomicBool, AtomicU64, Ordering};

/// The stock of one sale, split into one counter per core.
///
/// Each counter sits alone on its own 128-byte block (two 64-byte lines: the
/// x86 adjacent-line prefetcher fetches lines in pairs, and some ARM cores
/// have 128-byte lines), and so does the sold-out flag, so that a core
/// writing its shard never invalidates a sibling's shard or the flag.
pub struct ShardedStock {
    shards: Box<[Padded<AtomicU64>]>,
    /// Set when a take found no unit anywhere; cleared by every return of
    /// units. Read on every request, written only on those transitions.
    sold_out: Padded<AtomicBool>,
}

impl ShardedStock {
    /// `total` units spread evenly over `shards` shards, the remainder one
    /// each to the first shards. A stock of zero starts sold out.
    ///
    /// # Panics
    /// If `shards` is zero.
    pub fn new(total: u64, shards: usize) -> Self {
        assert!(shards >= 1, "a ShardedStock needs at least one shard");
        let n = shards as u64;
        let (base, rem) = (total / n, total % n);
        let shards = (0..n)
            .map(|i| Padded(AtomicU64::new(base + u64::from(i < rem))))
            .collect();
        Self {
            shards,
            sold_out: Padded(AtomicBool::new(total == 0)),
        }
    }

    /// How many shards (normally: how many cores) the stock is split into.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Takes `qty` units for a buyer on core `core` (any index: it is taken
    /// modulo [`shards`](Self::shards)). Returns `None`, having taken nothing,
    /// if `qty` units cannot be gathered (or `qty` is zero).
    ///
    /// The units are accounted to the core's own shard: dropping the returned
    /// [`Units`] puts them back there; [`Units::commit`] sells them. A failed
    /// take leaves the total unchanged but may have moved the units it had
    /// gathered from siblings into the own shard. A take racing with a
    /// put_back may answer `None` although the returned units are there a
    /// moment later: it lost that race, and the next take finds them.
    pub fn take(&self, core: usize, qty: u32) -> Option<Units<'_>> {
        // The sold-out path: one load, nothing written. Acquire pairs with the
        // stores of the flag; a stale `true` only means that this request
        // lost the race with a concurrent put_back.
        if qty == 0 || self.sold_out.0.load(Ordering::Acquire) {
            return None;
        }
        let own = core % self.shards.len();
        let need = u64::from(qty);
        let mut got = take_up_to(&self.shards[own].0, need);
        if got < need {
            got += self.steal(own, need - got);
        }
        if got == need {
            return Some(Units {
                stock: self,
                shard: own,
                qty,
            });
        }
        if got > 0 {
            // Not enough anywhere: what was gathered goes back, through
            // put_back, since another take may have set the flag meanwhile.
            self.put_back(own, got);
        } else {
            self.mark_sold_out();
        }
        None
    }

    /// Returns `qty` units to shard `core` (modulo the shard count): a
    /// cancelled or expired order, a dropped [`Units`], or a stock top-up or
    /// lease in cluster mode. Adds first, then clears the sold-out flag.
    pub fn put_back(&self, core: usize, qty: u64) {
        if qty == 0 {
            return;
        }
        let shard = &self.shards[core % self.shards.len()].0;
        // An RMW (so an acquire that reads the latest value of the shard):
        // see `mark_sold_out` for why the flag load below then cannot miss a
        // `true` stored before a re-scan that missed these units.
        shard.fetch_add(qty, Ordering::SeqCst);
        // Written only if set, so that returns do not bounce the flag's line
        // between cores while the sale is not sold out.
        if self.sold_out.0.load(Ordering::SeqCst) {
            self.sold_out.0.store(false, Ordering::SeqCst);
        }
    }

    /// Whether the last take that scanned every shard found nothing, and no
    /// unit has come back since. One load.
    pub fn is_sold_out(&self) -> bool {
        self.sold_out.0.load(Ordering::Acquire)
    }

    /// The sum of the shards: a snapshot for `GET /sales` and the metrics,
    /// not for decisions (units held by live [`Units`] are not counted).
    pub fn available(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }

    /// Empties every shard and returns how many units were removed (a sale
    /// closed, a lease given back); sets the sold-out flag.
    ///
    /// Units held by live [`Units`] guards are not in the shards: if those
    /// guards are dropped rather than committed, their units come back
    /// afterwards (and clear the flag).
    pub fn drain(&self) -> u64 {
        // Flag first, then an RMW per shard: a put_back whose add lands after
        // a shard was swapped reads the flag as set and clears it (the same
        // argument as in `mark_sold_out`); one whose add lands before is
        // drained. Setting the flag last could hide a unit behind it.
        self.sold_out.0.store(true, Ordering::SeqCst);
        self.shards
            .iter()
            .map(|s| s.0.swap(0, Ordering::SeqCst))
            .sum()
    }

    /// Steals up to `need` units for shard `own` from its siblings, `own + 1`
    /// onwards. Returns how many of the `need` it found; a surplus taken along
    /// with them is already in the own shard.
    fn steal(&self, own: usize, need: u64) -> u64 {
        let n = self.shards.len();
        let mut got = 0;
        for step in 1..n {
            let sibling = &self.shards[(own + step) % n].0;
            let mut cur = sibling.load(Ordering::Relaxed);
            while cur > 0 {
                let wanted = need - got;
                // What is still needed, plus half of what is left beyond it.
                let take = if cur <= wanted {
                    cur
                } else {
                    wanted + (cur - wanted) / 2
                };
                match sibling.compare_exchange_weak(
                    cur,
                    cur - take,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        got += take;
                        break;
                    }
                    Err(now) => cur = now,
                }
            }
            if got >= need {
                // The surplus was out of every shard for a moment: it goes
                // back through put_back in case a take saw nothing meanwhile.
                self.put_back(own, got - need);
                return need;
            }
        }
        got
    }

    /// Called by a take that scanned every shard and found nothing: sets the
    /// flag, then re-scans once and clears it again if a unit appeared.
    ///
    /// Why the flag cannot stay set over a unit (the race with a concurrent
    /// [`put_back`](Self::put_back), which adds to a shard `s` and then
    /// clears the flag if it reads it set): this function stores `true`, then
    /// does an RMW on every shard; put_back does an RMW on `s`, then loads the
    /// flag. The two RMWs on `s` are ordered in `s`'s modification order.
    /// - If put_back's add comes first, the re-scan's RMW reads the added
    ///   units (or a later value, once a taker has already sold them) and
    ///   clears the flag itself.
    /// - If the re-scan's RMW comes first, put_back's add reads from it (or
    ///   from later RMWs in its release sequence) and so synchronizes with
    ///   it: the `true` stored before the re-scan happens-before put_back's
    ///   load of the flag, which therefore reads `true` (or a later value)
    ///   and clears it.
    ///
    /// Either way the flag ends clear. The re-scan uses `fetch_add(0)` rather
    /// than a load on purpose: two SeqCst loads/stores would give the same
    /// result through the single total order of SeqCst operations, but the
    /// RMW version needs only acquire/release, which is also exactly what
    /// loom models (loom does not forbid store-buffering between SeqCst
    /// loads and stores, tokio-rs/loom#180), so the model tests check this
    /// very argument. SeqCst is kept on the flag and the re-scan anyway: it
    /// costs nothing on this rare path. The RMWs write to every shard's line,
    /// once per sell-out, never on the sold-out path itself.
    fn mark_sold_out(&self) {
        self.sold_out.0.store(true, Ordering::SeqCst);
        let refilled = self
            .shards
            .iter()
            .any(|s| s.0.fetch_add(0, Ordering::SeqCst) > 0);
        if refilled {
            self.sold_out.0.store(false, Ordering::SeqCst);
        }
    }
}

impl fmt::Debug for ShardedStock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedStock")
            .field("shards", &self.shards())
            .field("available", &self.available())
            .field("sold_out", &self.is_sold_out())
            .finish()
    }
}

/// Units taken from a [`ShardedStock`] and not yet sold.
///
/// Dropping the guard returns the units to the shard they are accounted to,
/// so no error path between the take and the durable order can leak a unit or
/// count it twice. [`commit`](Self::commit) consumes the guard: the units are
/// sold and only a later [`ShardedStock::put_back`] (cancel, expiry) returns
/// them.
#[must_use = "dropping Units returns them to the stock; call `commit` once the order is durable"]
pub struct Units<'a> {
    stock: &'a ShardedStock,
    shard: usize,
    /// Zero once committed, so that `Drop` returns nothing.
    qty: u32,
}

impl Units<'_> {
    /// How many units this guard holds.
    pub fn qty(&self) -> u32 {
        self.qty
    }

    /// Sells the units: they leave the stock for good (until a put_back).
    pub fn commit(mut self) {
        self.qty = 0;
    }
}

impl Drop for Units<'_> {
    fn drop(&mut self) {
        if self.qty > 0 {
            self.stock.put_back(self.shard, u64::from(self.qty));
        }
    }
}

impl fmt::Debug for Units<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Units")
            .field("shard", &self.shard)
            .field("qty", &self.qty)
            .finish()
    }
}

/// A value alone on its own 128-byte block (a safe stand-in for crossbeam's
/// `CachePadded`: alignment rounds the size up too).
#[repr(align(128))]
struct Padded<T>(T);

/// Subtracts up to `want` units from `shard`; returns how many it took.
fn take_up_to(shard: &AtomicU64, want: u64) -> u64 {
    let mut cur = shard.load(Ordering::Relaxed);
    while cur > 0 {
        let take = cur.min(want);
        match shard.compare_exchange_weak(cur, cur - take, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return take,
            Err(now) => cur = now,
        }
    }
    0
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn shard_values(stock: &ShardedStock) -> Vec<u64> {
        stock
            .shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .collect()
    }

    /// A stock whose shards hold exactly `values`.
    fn with_shards(values: &[u64]) -> ShardedStock {
        ShardedStock {
            shards: values.iter().map(|&v| Padded(AtomicU64::new(v))).collect(),
            sold_out: Padded(AtomicBool::new(false)),
        }
    }

    #[test]
    fn spreads_evenly_with_the_remainder_first() {
        assert_eq!(shard_values(&ShardedStock::new(12, 4)), [3, 3, 3, 3]);
        assert_eq!(shard_values(&ShardedStock::new(10, 4)), [3, 3, 2, 2]);
        assert_eq!(shard_values(&ShardedStock::new(2, 4)), [1, 1, 0, 0]);
        assert_eq!(shard_values(&ShardedStock::new(7, 1)), [7]);
        let stock = ShardedStock::new(10, 4);
        assert_eq!(stock.shards(), 4);
        assert_eq!(stock.available(), 10);
        assert!(!stock.is_sold_out());
    }

    #[test]
    fn zero_stock_starts_sold_out() {
        let stock = ShardedStock::new(0, 2);
        assert!(stock.is_sold_out());
        assert!(stock.take(0, 1).is_none());
    }

    #[test]
    #[should_panic(expected = "at least one shard")]
    fn zero_shards_is_refused() {
        let _ = ShardedStock::new(1, 0);
    }

    #[test]
    fn padding_keeps_each_counter_on_its_own_block() {
        assert_eq!(std::mem::align_of::<Padded<AtomicU64>>(), 128);
        assert_eq!(std::mem::size_of::<Padded<AtomicU64>>(), 128);
    }

    #[test]
    fn take_within_own_shard_touches_no_sibling() {
        let stock = ShardedStock::new(12, 4);
        let units = stock.take(1, 2).expect("own shard has 3");
        assert_eq!(units.qty(), 2);
        assert_eq!(shard_values(&stock), [3, 1, 3, 3]);
        units.commit();
        assert_eq!(stock.available(), 10);
    }

    #[test]
    fn core_index_wraps_around_the_shards() {
        let stock = ShardedStock::new(12, 4);
        stock.take(6, 1).expect("shard 2").commit();
        assert_eq!(shard_values(&stock), [3, 3, 2, 3]);
    }

    #[test]
    fn zero_qty_takes_nothing() {
        let stock = ShardedStock::new(4, 2);
        assert!(stock.take(0, 0).is_none());
        assert_eq!(stock.available(), 4);
        assert!(!stock.is_sold_out());
    }

    #[test]
    fn steals_from_the_next_sibling_and_keeps_the_surplus_locally() {
        // [6, 6, 6], core 0 takes 9: 6 local, then from shard 1 the 3 still
        // needed plus (6 - 3) / 2 = 1, which stays in shard 0.
        let stock = ShardedStock::new(18, 3);
        stock.take(0, 9).expect("own shard plus shard 1").commit();
        assert_eq!(shard_values(&stock), [1, 2, 6]);

        // [0, 9, 9], core 0 needs 1: steals 1 + (9 - 1) / 2 = 5 from shard 1
        // and keeps the surplus of 4 in its own shard.
        let stock = with_shards(&[0, 9, 9]);
        let units = stock.take(0, 1).expect("stolen");
        assert_eq!(shard_values(&stock), [4, 4, 9]);
        units.commit();
        // The next request on core 0 is local again.
        stock.take(0, 2).expect("local").commit();
        assert_eq!(shard_values(&stock), [2, 4, 9]);
    }

    #[test]
    fn steal_gathers_over_several_siblings_round_robin() {
        // Core 1 needs 3: its own shard is dry, then shards 2, 3, 0 give one
        // each.
        let stock = with_shards(&[1, 0, 1, 1]);
        let units = stock.take(1, 3).expect("three siblings");
        assert_eq!(shard_values(&stock), [0, 0, 0, 0]);
        drop(units);
        // Dropped: the units come back to the taker's own shard.
        assert_eq!(shard_values(&stock), [0, 3, 0, 0]);
        assert!(!stock.is_sold_out());
    }

    #[test]
    fn partial_own_shard_plus_steal() {
        let stock = with_shards(&[1, 5]);
        // Needs 3: 1 local, then 2 + (5 - 2) / 2 = 3 from shard 1, surplus 1.
        let units = stock.take(0, 3).expect("enough in total");
        assert_eq!(shard_values(&stock), [1, 2]);
        units.commit();
        assert_eq!(stock.available(), 3);
    }

    #[test]
    fn more_than_available_takes_nothing() {
        let stock = ShardedStock::new(5, 2);
        assert!(stock.take(0, 6).is_none());
        assert_eq!(stock.available(), 5);
        // Not sold out: units are there, just not enough for this request.
        assert!(!stock.is_sold_out());
        stock.take(1, 5).expect("exactly all").commit();
        assert_eq!(stock.available(), 0);
    }

    #[test]
    fn dropped_units_come_back_and_committed_ones_do_not() {
        let stock = ShardedStock::new(4, 2);
        let units = stock.take(0, 2).expect("2 in shard 0");
        assert_eq!(stock.available(), 2);
        drop(units);
        assert_eq!(stock.available(), 4);
        stock.take(0, 2).expect("again").commit();
        assert_eq!(stock.available(), 2);
    }

    #[test]
    fn sold_out_flag_is_set_when_empty_and_cleared_by_put_back() {
        let stock = ShardedStock::new(2, 2);
        stock.take(0, 1).expect("first").commit();
        stock.take(0, 1).expect("stolen").commit();
        assert!(
            !stock.is_sold_out(),
            "set only by a take that finds nothing"
        );
        assert!(stock.take(1, 1).is_none());
        assert!(stock.is_sold_out());
        assert!(stock.take(0, 1).is_none());

        stock.put_back(1, 1);
        assert!(!stock.is_sold_out());
        assert_eq!(stock.available(), 1);
        // Stolen by core 0 from shard 1.
        stock.take(0, 1).expect("returned unit").commit();
        assert!(stock.take(1, 1).is_none());
        assert!(stock.is_sold_out());
    }

    #[test]
    fn dropping_units_clears_the_flag() {
        let stock = ShardedStock::new(1, 2);
        let units = stock.take(0, 1).expect("the only unit");
        assert!(stock.take(1, 1).is_none());
        assert!(stock.is_sold_out());
        drop(units);
        assert!(!stock.is_sold_out());
        assert!(stock.take(1, 1).is_some());
    }

    #[test]
    fn put_back_of_nothing_changes_nothing() {
        let stock = ShardedStock::new(0, 2);
        stock.put_back(0, 0);
        assert!(stock.is_sold_out());
        assert_eq!(stock.available(), 0);
    }

    #[test]
    fn drain_empties_every_shard_and_sets_the_flag() {
        let stock = ShardedStock::new(10, 4);
        let held = stock.take(2, 1).expect("unit");
        assert_eq!(stock.drain(), 9);
        assert_eq!(stock.available(), 0);
        assert!(stock.is_sold_out());
        assert!(stock.take(0, 1).is_none());
        assert_eq!(stock.drain(), 0);
        // A guard alive across the drain brings its unit back on drop.
        drop(held);
        assert_eq!(stock.available(), 1);
        assert!(!stock.is_sold_out());
    }

    #[test]
    fn debug_shows_a_summary() {
        let stock = ShardedStock::new(3, 2);
        let units = stock.take(0, 1).expect("unit");
        assert_eq!(format!("{units:?}"), "Units { shard: 0, qty: 1 }");
        assert_eq!(
            format!("{stock:?}"),
            "ShardedStock { shards: 2, available: 2, sold_out: false }"
        );
        units.commit();
    }
}
