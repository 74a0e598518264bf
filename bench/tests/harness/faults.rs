//! Transport failures and stalls: the harness counts them and finishes.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use bench::cli::{main_to, Cli};
use bench::report::RunRecord;
use bench::{run_load, LoadConfig, Mode, Schedule, Summary, Workload};
use clap::Parser;

use crate::support::{exclusive, AbruptOptions, AbruptServer};

fn healthz() -> Workload {
    Workload::Get {
        path: "/healthz".into(),
    }
}

fn kinds(s: &Summary) -> BTreeMap<&str, u64> {
    s.io_errors_by_kind
        .iter()
        .map(|(k, n)| (k.as_str(), *n))
        .collect()
}

#[test]
fn connections_reset_mid_run_are_counted_and_replaced() {
    let _one = exclusive();
    let server = AbruptServer::start(AbruptOptions {
        reset_every: Some(10),
        ..AbruptOptions::default()
    });
    let mut cfg = LoadConfig::new(server.addr(), healthz());
    cfg.connections = 4;
    cfg.threads = 2;
    cfg.max_requests = Some(500);
    let rec = run_load(&cfg, &mut |_, _| {}).expect("a run with resets finishes");
    let s = rec.summary(Duration::ZERO);
    let resets = server.count(|c| &c.resets);
    assert_eq!(resets, 50, "every 10th of 500: {s:?}");
    assert_eq!(s.completed, server.count(|c| &c.answered));
    assert_eq!(s.completed + s.io_errors, 500, "{s:?}");
    assert_eq!(s.io_errors, resets, "each reset costs its request: {s:?}");
    assert_eq!(kinds(&s), BTreeMap::from([("connection reset", resets)]));
    assert!(s.first_io_error.is_some());
    assert_eq!(s.timeouts + s.unfinished, 0);
    assert_eq!(rec.failures(), resets);
    // Each reset connection was replaced on its next request (at most the
    // last one per connection had no next request).
    let conns = server.count(|c| &c.connections);
    assert!(conns >= 4 + resets - 4, "{conns} connections");
}

#[test]
fn a_node_killed_mid_run_ends_in_counted_errors() {
    let _one = exclusive();
    let server = AbruptServer::start(AbruptOptions {
        die_after: Some(300),
        ..AbruptOptions::default()
    });
    let mut cfg = LoadConfig::new(server.addr(), healthz());
    cfg.mode = Mode::Open(Schedule::new(1000.0, Duration::ZERO));
    cfg.connections = 8;
    cfg.threads = 2;
    cfg.duration = Duration::from_secs(1);
    let began = Instant::now();
    let rec = run_load(&cfg, &mut |_, _| {}).expect("a run whose node dies finishes");
    let took = began.elapsed();
    let s = rec.summary(cfg.duration);
    assert_eq!(s.completed, 300, "answers before the death: {s:?}");
    assert_eq!(s.by_status["200"], 300);
    // Every later slot was tried and failed: the open connections were
    // reset, the reconnects refused.
    assert_eq!(s.io_errors, 700, "{s:?}");
    assert_eq!(s.sent, 1000);
    let k = kinds(&s);
    assert!(k.get("connection reset").is_some_and(|n| *n >= 1), "{k:?}");
    assert!(k.get("connect refused").is_some_and(|n| *n >= 600), "{k:?}");
    assert_eq!(k.values().sum::<u64>(), s.io_errors);
    assert_eq!(s.timeouts + s.unfinished, 0);
    assert_eq!(rec.failures(), 700);
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[test]
fn requests_without_an_answer_time_out() {
    let _one = exclusive();
    let server = AbruptServer::start(AbruptOptions {
        ignore_every: Some(20),
        ..AbruptOptions::default()
    });
    let mut cfg = LoadConfig::new(server.addr(), healthz());
    cfg.mode = Mode::Open(Schedule::new(400.0, Duration::ZERO));
    cfg.connections = 8;
    cfg.duration = Duration::from_secs(1);
    cfg.timeout = Duration::from_millis(100);
    let rec = run_load(&cfg, &mut |_, _| {}).expect("a run with stalls finishes");
    let s = rec.summary(cfg.duration);
    let ignored = server.count(|c| &c.ignored);
    assert_eq!(ignored, 20, "every 20th of 400");
    assert_eq!(s.timeouts, ignored, "{s:?}");
    assert_eq!(s.completed, 380);
    assert_eq!(s.io_errors + s.unfinished, 0, "{s:?}");
    assert_eq!(s.sent, 400);
    assert_eq!(rec.failures(), ignored);
    // A timeout's latency is the timeout: 5% of the requests took 100 ms.
    assert!(
        (s.service_latency_ms.max - 100.0).abs() < 0.2,
        "{:?}",
        s.service_latency_ms
    );
    assert!(
        s.service_latency_ms.p99 > 99.0,
        "{:?}",
        s.service_latency_ms
    );
    assert!(s.latency_ms.p99 >= 100.0, "{:?}", s.latency_ms);
    assert_eq!(s.latency_ms.count, 400, "answers and timeouts are both in");
    // Each stalled connection was replaced (the last ones maybe not: no
    // request was left for them).
    let conns = server.count(|c| &c.connections);
    assert!(conns > 8 + ignored / 2, "{conns} connections");
}

#[test]
fn timeouts_fire_while_the_pacer_spins() {
    let _one = exclusive();
    let server = AbruptServer::start(AbruptOptions {
        ignore_every: Some(400),
        ..AbruptOptions::default()
    });
    let mut cfg = LoadConfig::new(server.addr(), healthz());
    // 125 µs apart: the pacer never sleeps, so monoio's timers never fire.
    cfg.mode = Mode::Open(Schedule::new(8000.0, Duration::ZERO));
    cfg.connections = 16;
    cfg.duration = Duration::from_millis(1200);
    cfg.interval = Duration::from_millis(400);
    cfg.timeout = Duration::from_millis(100);
    let rec = run_load(&cfg, &mut |_, _| {}).expect("finishes");
    let s = rec.summary(cfg.duration);
    let ignored = server.count(|c| &c.ignored);
    assert_eq!(ignored, 24);
    assert_eq!(s.timeouts, ignored, "{s:?}");
    assert_eq!(s.completed + s.timeouts, 9600, "{s:?}");
    // Noticed during the run, not when the pacing stopped: the first
    // 400 ms hold the timeouts of the requests sent at 50 to 250 ms (every
    // 400th, 100 ms each).
    let first = s.timeline[0]
        .rps_by_class
        .get("errors")
        .copied()
        .unwrap_or(0.0);
    assert!((first * 0.4).round() >= 3.0, "{:?}", s.timeline[0]);
}

#[test]
fn a_server_that_never_answers_cannot_hang_a_run() {
    let _one = exclusive();
    let server = AbruptServer::start(AbruptOptions {
        ignore_every: Some(1),
        ..AbruptOptions::default()
    });
    let mut cfg = LoadConfig::new(server.addr(), healthz());
    cfg.connections = 2;
    cfg.duration = Duration::from_millis(500);
    cfg.grace = Duration::from_secs(30);
    cfg.timeout = Duration::from_millis(100);
    let began = Instant::now();
    let rec = run_load(&cfg, &mut |_, _| {}).expect("finishes");
    let took = began.elapsed();
    let s = rec.summary(cfg.duration);
    assert_eq!(s.completed, 0);
    // Closed loop: each connection waits out one timeout, reconnects, sends
    // again: about 500 / 100 per connection.
    assert!((6..=12).contains(&s.timeouts), "{s:?}");
    assert_eq!(s.unfinished + s.io_errors, 0, "{s:?}");
    assert!(
        took < Duration::from_secs(2),
        "took {took:?}, grace is 30 s"
    );
}

/// An output whose reader has gone away (`seckill-bench ... | head`).
struct ClosedPipe;

impl Write for ClosedPipe {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::BrokenPipe.into())
    }

    fn flush(&mut self) -> io::Result<()> {
        Err(io::ErrorKind::BrokenPipe.into())
    }
}

#[test]
fn a_closed_output_pipe_neither_panics_nor_loses_the_run() {
    let _one = exclusive();
    let server = AbruptServer::start(AbruptOptions {
        reset_every: Some(25),
        ..AbruptOptions::default()
    });
    let out = tempfile::tempdir().unwrap();
    let target = format!("http://{}", server.addr());
    let args = [
        "seckill-bench",
        "run",
        "--quiet",
        "--scenario",
        "healthz",
        "--target",
        &target,
        "--connections",
        "2",
        "--requests",
        "100",
        "--out",
        out.path().to_str().unwrap(),
        "--name",
        "t",
    ];
    let code = main_to(Cli::parse_from(args), args.join(" "), &mut ClosedPipe);
    assert_eq!(code, 0, "no audit for healthz: a clean exit");
    let record: RunRecord =
        serde_json::from_slice(&std::fs::read(out.path().join("t.json")).unwrap()).unwrap();
    let s = record.summary.unwrap();
    assert_eq!((s.completed, s.io_errors), (96, 4), "{s:?}");
    assert_eq!(s.io_errors_by_kind["connection reset"], 4);
    let page = std::fs::read_to_string(out.path().join("t.html")).unwrap();
    assert!(page.contains("connection reset"));
}
