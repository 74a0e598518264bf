//! Integration tests of the `queue` crate through its public API, one binary
//! with a module per area.
//!
//! - `crash`: a child process appends to a journal and is killed with
//!   SIGKILL mid-stream; every record it saw acknowledged as durable must be
//!   in the journal when it is reopened, exactly once.

use seckill_testkit::block_on;

mod crash {
    use super::block_on;
    use queue::{Event, EventKind, Journal, JournalOptions};
    use seckill_testkit::Process;
    use std::collections::HashSet;
    use std::io::Write;
    use std::path::Path;
    use std::process::Command;
    use std::time::{Duration, Instant};

    /// Set in the child process: the data directory it appends to.
    const CHILD_DIR: &str = "SECKILL_TEST_JOURNAL_CRASH_DIR";
    const THREADS: u64 = 4;

    fn event(thread: u64, i: u64) -> Event {
        Event::new(
            thread * 1_000_000 + i,
            EventKind::OrderReserved {
                order_id: format!("{thread}-{i}"),
                sale_id: "s1".into(),
                user_id: format!("u{thread}"),
                quantity: 1,
                expires_at: 900,
                idempotency_key: None,
                fingerprint: None,
            },
        )
    }

    /// The child's body: only does something when started by
    /// `acknowledged_records_survive_sigkill` with `CHILD_DIR` set. Appends
    /// from several threads, printing `acked <thread> <i>` once each record
    /// is durable, until it is killed (or gives up after 30 s).
    #[test]
    fn child_appends_until_killed() {
        let Some(dir) = std::env::var_os(CHILD_DIR) else {
            return;
        };
        let (journal, _) = Journal::open(Path::new(&dir), JournalOptions::default()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let journal = journal.clone();
                s.spawn(move || {
                    let mut i = 0;
                    while Instant::now() < deadline {
                        // A few in flight at once, so batches form.
                        let waits: Vec<_> =
                            (i..i + 8).map(|n| journal.append(&event(t, n))).collect();
                        for (n, w) in (i..).zip(waits) {
                            block_on(w).unwrap();
                            let mut out = std::io::stdout().lock();
                            writeln!(out, "acked {t} {n}").unwrap();
                            out.flush().unwrap();
                        }
                        i += 8;
                    }
                });
            }
        });
    }

    #[test]
    fn acknowledged_records_survive_sigkill() {
        let tmp = seckill_testkit::temp_dir("seckill-crash-");
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "crash::child_appends_until_killed",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, tmp.path());
        let mut child = Process::spawn(&mut cmd, &tmp.path().join("child.log"));
        let mut acked: HashSet<(u64, u64)> = HashSet::new();
        let mut take = |line: String| {
            if let Some(rest) = line.strip_prefix("acked ") {
                let (t, n) = rest.split_once(' ').unwrap();
                acked.insert((t.parse().unwrap(), n.parse().unwrap()));
            }
        };
        let mut taken = 0;
        while taken < 2_000 {
            let line = child
                .next_line(Duration::from_secs(30))
                .expect("child ended before it was killed");
            taken += usize::from(line.starts_with("acked "));
            take(line);
        }
        child.kill(); // SIGKILL: no destructor, no close()
                      // Acknowledgements printed before the kill landed count too.
        while let Some(line) = child.next_line(Duration::from_secs(5)) {
            take(line);
        }

        let (journal, events) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        let mut seen: HashSet<(u64, u64)> = HashSet::new();
        let mut last = [None::<u64>; THREADS as usize];
        for e in &events {
            let (t, n) = (e.at / 1_000_000, e.at % 1_000_000);
            assert_eq!(e, &event(t, n));
            assert!(seen.insert((t, n)), "record {t}-{n} appears twice");
            let prev = &mut last[t as usize];
            assert!(prev.is_none_or(|p| p < n), "thread {t} out of order at {n}");
            *prev = Some(n);
        }
        let lost: Vec<_> = acked.difference(&seen).collect();
        assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
        assert!(events.len() >= acked.len());

        // The journal keeps working after the crash.
        block_on(journal.append(&event(9, 0))).unwrap();
        drop(journal);
        let (_, again) = Journal::open(tmp.path(), JournalOptions::default()).unwrap();
        assert_eq!(again.len(), events.len() + 1);
        assert_eq!(again.last(), Some(&event(9, 0)));
    }
}
