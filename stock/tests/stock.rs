//! Integration tests of the `stock` crate: [`ShardedStock`] under real
//! threads. Model checks of the same logic live in `tests/loom.rs` (built only
//! with `RUSTFLAGS="--cfg loom"`); this binary is empty in that build.
#![cfg(not(loom))]

mod sharded {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Barrier;
    use std::thread;

    use stock::ShardedStock;

    /// A small xorshift generator: deterministic per seed, no dependency.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// What one stress run ended with.
    struct Outcome {
        committed: u64,
        put_back: u64,
        successful_takes: u64,
    }

    /// `threads` threads, thread `t` on core index `t`, each doing `ops`
    /// random operations: takes of 1..=3 units that are committed or (one in
    /// four) dropped, and (one in eight) put_backs of units it committed
    /// earlier. `out` counts the units outside the shards as seen by the
    /// threads: raised after a successful take, lowered before units go
    /// back, so it never exceeds the real number, which never exceeds `total`.
    fn stress(total: u64, shards: usize, threads: usize, ops: usize) -> Outcome {
        let stock = ShardedStock::new(total, shards);
        let out = AtomicU64::new(0);
        let start = Barrier::new(threads);
        let per_thread: Vec<Outcome> = thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|core| {
                    let (stock, out, start) = (&stock, &out, &start);
                    s.spawn(move || {
                        start.wait();
                        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((core as u64 + 1) * 7919));
                        let mut mine = Outcome {
                            committed: 0,
                            put_back: 0,
                            successful_takes: 0,
                        };
                        let mut sold: Vec<u64> = Vec::new();
                        for _ in 0..ops {
                            if !sold.is_empty() && rng.below(8) == 0 {
                                let q = sold.swap_remove(rng.below(sold.len() as u64) as usize);
                                out.fetch_sub(q, Ordering::SeqCst);
                                stock.put_back(core, q);
                                mine.put_back += q;
                                continue;
                            }
                            let qty = 1 + rng.below(3) as u32;
                            let Some(units) = stock.take(core, qty) else {
                                continue;
                            };
                            assert_eq!(units.qty(), qty);
                            let q = u64::from(qty);
                            let now_out = out.fetch_add(q, Ordering::SeqCst) + q;
                            assert!(now_out <= total, "oversold: {now_out} > {total}");
                            mine.successful_takes += 1;
                            if rng.below(4) == 0 {
                                out.fetch_sub(q, Ordering::SeqCst);
                                drop(units);
                            } else {
                                units.commit();
                                mine.committed += q;
                                sold.push(q);
                            }
                        }
                        mine
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("stress thread panicked"))
                .collect()
        });
        let committed: u64 = per_thread.iter().map(|o| o.committed).sum();
        let put_back: u64 = per_thread.iter().map(|o| o.put_back).sum();
        assert_eq!(
            committed - put_back + stock.available(),
            total,
            "units lost or duplicated ({shards} shards, {threads} threads)"
        );
        // At rest the flag may be clear over an empty stock (the last unit
        // went to a successful take), never set over a unit.
        if stock.is_sold_out() {
            assert_eq!(stock.available(), 0, "sold-out flag set over units");
        }
        if stock.available() == 0 {
            assert!(stock.take(0, 1).is_none());
            assert!(
                stock.is_sold_out(),
                "a take that found nothing sets the flag"
            );
        } else {
            assert!(!stock.is_sold_out());
        }
        Outcome {
            committed,
            put_back,
            successful_takes: per_thread.iter().map(|o| o.successful_takes).sum(),
        }
    }

    #[test]
    fn stress_never_oversells_nor_loses_a_unit() {
        for shards in [2, 4] {
            for threads in 2..=4 {
                // Large enough to run dry and come back several times.
                let run = stress(10_000, shards, threads, 200_000);
                assert!(run.committed > 0 && run.put_back > 0);
                assert!(run.successful_takes > 0);
                // Small: most takes race at the sold-out boundary.
                stress(10, shards, threads, 100_000);
            }
        }
    }

    #[test]
    fn stress_with_more_cores_than_shards() {
        stress(1_000, 2, 4, 100_000);
        stress(1_000, 1, 3, 100_000);
    }

    #[test]
    fn once_all_is_committed_every_take_is_refused() {
        const TOTAL: u64 = 5_000;
        for shards in [2, 4] {
            let stock = ShardedStock::new(TOTAL, shards);
            let committed: u64 = thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|core| {
                        let stock = &stock;
                        s.spawn(move || {
                            let mut mine = 0;
                            let mut qty = 1 + core as u32 % 3;
                            loop {
                                match stock.take(core, qty) {
                                    Some(units) => {
                                        mine += u64::from(units.qty());
                                        units.commit();
                                    }
                                    // Fewer left than asked: mop up one by one.
                                    None if qty > 1 => qty = 1,
                                    // Done once a scan found nothing at all (a
                                    // None with the flag clear may mean units
                                    // were in another buyer's hands).
                                    None if stock.is_sold_out() => return mine,
                                    None => {}
                                }
                            }
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("buyer panicked"))
                    .sum()
            });
            assert_eq!(committed, TOTAL);
            assert_eq!(stock.available(), 0);
            assert!(stock.is_sold_out());
            for core in 0..8 {
                for qty in 1..=3 {
                    assert!(stock.take(core, qty).is_none());
                }
            }
            assert!(stock.is_sold_out());
            stock.put_back(3, 1);
            assert!(!stock.is_sold_out());
            stock.take(0, 1).expect("the returned unit").commit();
        }
    }

    #[test]
    fn drain_racing_with_takes_accounts_for_every_unit() {
        const TOTAL: u64 = 20_000;
        let stock = ShardedStock::new(TOTAL, 4);
        let (sold, drained) = thread::scope(|s| {
            let buyers: Vec<_> = (0..2)
                .map(|core| {
                    let stock = &stock;
                    s.spawn(move || {
                        let mut mine = 0;
                        while let Some(units) = stock.take(core, 1) {
                            mine += 1;
                            units.commit();
                        }
                        mine
                    })
                })
                .collect();
            let drained = stock.drain();
            let sold: u64 = buyers
                .into_iter()
                .map(|h| h.join().expect("buyer panicked"))
                .sum();
            (sold, drained)
        });
        assert_eq!(sold + drained + stock.available(), TOTAL);
    }
}
