//! loom model checks of [`ShardedStock`]: every interleaving (and every
//! value loom's memory model lets a load see) of two small threads.
//!
//! Built only with the loom switch:
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=/work/target-loom cargo test -p stock --release --test loom`.
//! In a normal build this binary is empty.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;

use stock::ShardedStock;

/// At rest, the sold-out flag is never set over a unit.
fn assert_flag_consistent(stock: &ShardedStock) {
    if stock.available() > 0 {
        assert!(
            !stock.is_sold_out(),
            "flag set over {} unit(s)",
            stock.available()
        );
    }
}

#[test]
fn last_unit_goes_to_exactly_one_of_two_cores() {
    loom::model(|| {
        let stock = Arc::new(ShardedStock::new(1, 2));
        let buyers: Vec<_> = (0..2)
            .map(|core| {
                let stock = stock.clone();
                thread::spawn(move || match stock.take(core, 1) {
                    Some(units) => {
                        units.commit();
                        true
                    }
                    None => false,
                })
            })
            .collect();
        let wins = buyers
            .into_iter()
            .map(|h| h.join().expect("buyer panicked"))
            .filter(|&won| won)
            .count();
        assert_eq!(wins, 1);
        assert_eq!(stock.available(), 0);
    });
}

#[test]
fn dropped_last_unit_never_hides_behind_the_flag() {
    loom::model(|| {
        let stock = Arc::new(ShardedStock::new(1, 2));
        let dropper = {
            let stock = stock.clone();
            thread::spawn(move || {
                // Takes the last unit and gives it back (an error path).
                drop(stock.take(0, 1));
            })
        };
        let sold = match stock.take(1, 1) {
            Some(units) => {
                units.commit();
                1
            }
            None => 0,
        };
        dropper.join().expect("dropper panicked");
        assert_eq!(stock.available() + sold, 1);
        assert_flag_consistent(&stock);
    });
}

#[test]
fn put_back_racing_with_a_take_that_finds_nothing() {
    // The returned unit lands on the taker's own shard or on the sibling.
    for put_back_core in [0, 1] {
        loom::model(move || {
            let stock = Arc::new(ShardedStock::new(1, 2));
            stock.take(0, 1).expect("the only unit").commit();
            let canceller = {
                let stock = stock.clone();
                thread::spawn(move || stock.put_back(put_back_core, 1))
            };
            let sold = match stock.take(0, 1) {
                Some(units) => {
                    units.commit();
                    1
                }
                None => 0,
            };
            canceller.join().expect("canceller panicked");
            assert_eq!(stock.available() + sold, 1);
            assert_flag_consistent(&stock);
        });
    }
}

#[test]
fn failed_partial_take_gives_back_without_hiding_units() {
    // One unit, a buyer of two gathers it and must give it back, while a
    // buyer of one scans: the unit ends with one of them or in a shard with
    // the flag clear.
    loom::model(|| {
        let stock = Arc::new(ShardedStock::new(1, 2));
        let greedy = {
            let stock = stock.clone();
            thread::spawn(move || assert!(stock.take(1, 2).is_none()))
        };
        let sold = match stock.take(0, 1) {
            Some(units) => {
                units.commit();
                1
            }
            None => 0,
        };
        greedy.join().expect("greedy buyer panicked");
        assert_eq!(stock.available() + sold, 1);
        assert_flag_consistent(&stock);
    });
}

#[test]
fn drain_racing_with_put_back() {
    loom::model(|| {
        let stock = Arc::new(ShardedStock::new(1, 2));
        let canceller = {
            let stock = stock.clone();
            thread::spawn(move || stock.put_back(1, 1))
        };
        let drained = stock.drain();
        canceller.join().expect("canceller panicked");
        assert_eq!(drained + stock.available(), 2);
        assert_flag_consistent(&stock);
    });
}

#[test]
fn stolen_surplus_in_flight_never_hides_behind_the_flag() {
    // Shards [0, 3]: a buyer of one on core 0 steals 1 + (3 - 1) / 2 = 2 and
    // moves the surplus unit into its own shard, while core 1 buys one unit
    // twice: its second scan may find nothing while the surplus is in flight.
    loom::model(|| {
        let stock = Arc::new(ShardedStock::new(6, 2));
        stock.take(0, 3).expect("shard 0").commit();
        let stealer = {
            let stock = stock.clone();
            thread::spawn(move || buy(&stock, 0, 1))
        };
        let sold = buy(&stock, 1, 1) + buy(&stock, 1, 1);
        let stolen = stealer.join().expect("stealer panicked");
        assert_eq!(stock.available() + sold + stolen, 3);
        assert_flag_consistent(&stock);
    });
}

/// Takes and commits `qty` units on `core`; returns how many were sold.
fn buy(stock: &ShardedStock, core: usize, qty: u32) -> u64 {
    stock.take(core, qty).map_or(0, |units| {
        units.commit();
        u64::from(qty)
    })
}
