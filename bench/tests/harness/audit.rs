//! The audit must be able to fail: a clean sale passes, every injected
//! fault fails the check that guards against it.

use std::collections::BTreeMap;
use std::fs;

use bench::admin;
use bench::audit::{audit, AuditInput, Verdict};
use bench::cli::{main_to, Cli};
use bench::orderlog::{encode_journal, parse_journal, LogSpec};
use bench::report::RunRecord;
use bench::Recorder;
use clap::Parser;
use queue::EventKind;

use crate::support::{clean_sale_load, exclusive, FakeNode, Fault};

/// Runs `seckill-bench run` against `node` (closed loop, 600 purchases by
/// 300 cold users and 5 hot retriers, stock 50, audited against the node's
/// journal; `overrides` replace these flags or add others) and returns the
/// exit code and the kept record.
pub(crate) fn run_cli(node: &FakeNode, overrides: &[(&str, &str)]) -> (i32, RunRecord) {
    run_cli_without(node, overrides, &[])
}

/// [`run_cli`] with the default flags in `without` left out (e.g.
/// `--journal`, to audit another log).
pub(crate) fn run_cli_without(
    node: &FakeNode,
    overrides: &[(&str, &str)],
    without: &[&str],
) -> (i32, RunRecord) {
    let out = tempfile::tempdir().unwrap();
    let journal = node.journal_path();
    let mut flags: Vec<(&str, String)> = vec![
        ("--target", node.url()),
        ("--admin-token", "t".into()),
        ("--sale", "s1".into()),
        ("--stock", "50".into()),
        ("--users", "300".into()),
        ("--hot-users", "5".into()),
        ("--hot-share", "0.3".into()),
        ("--connections", "4".into()),
        ("--requests", "600".into()),
        ("--journal", journal.to_str().unwrap().into()),
        ("--out", out.path().to_str().unwrap().into()),
        ("--name", "t".into()),
    ];
    flags.retain(|(f, _)| !without.contains(f));
    for (flag, value) in overrides {
        match flags.iter_mut().find(|(f, _)| f == flag) {
            Some(entry) => entry.1 = value.to_string(),
            None => flags.push((flag, value.to_string())),
        }
    }
    let mut args = vec!["seckill-bench".to_string(), "run".into(), "--quiet".into()];
    for (flag, value) in flags {
        args.push(flag.into());
        args.push(value);
    }
    let mut printed = Vec::new();
    let code = main_to(Cli::parse_from(&args), args.join(" "), &mut printed);
    // Through print! so that the test harness captures it.
    print!("{}", String::from_utf8_lossy(&printed));
    let record: RunRecord =
        serde_json::from_slice(&fs::read(out.path().join("t.json")).unwrap()).unwrap();
    assert!(out.path().join("t.html").exists());
    assert!(out.path().join("summary.md").exists());
    (code, record)
}

pub(crate) fn verdicts(record: &RunRecord) -> BTreeMap<String, Verdict> {
    record
        .audit
        .iter()
        .map(|c| (c.name.clone(), c.verdict))
        .collect()
}

#[test]
fn a_clean_sale_passes_every_check() {
    let _one = exclusive();
    let node = FakeNode::start(Fault::None);
    let (code, record) = run_cli(&node, &[]);
    let v = verdicts(&record);
    assert_eq!(code, 0, "{:#?}", record.audit);
    assert_eq!(v.len(), 9);
    assert!(
        v.values().all(|v| *v == Verdict::Pass),
        "{:#?}",
        record.audit
    );
    let s = record.summary.unwrap();
    assert_eq!(s.completed, 600);
    assert_eq!(s.orders_acked, 50, "the stock sells out");
    assert!(s.replays_acked > 0, "hot users' retries replay: {s:?}");
    assert!(s.by_code.contains_key("410 sold_out"));
    assert!(record.command.contains("--journal"));
}

#[test]
fn oversell_fails() {
    let _one = exclusive();
    let node = FakeNode::start(Fault::Oversell(3));
    let (code, record) = run_cli(&node, &[]);
    let v = verdicts(&record);
    assert_eq!(code, 1);
    assert_eq!(v["no_oversell"], Verdict::Fail, "{:#?}", record.audit);
}

#[test]
fn a_lost_order_fails() {
    let _one = exclusive();
    let node = FakeNode::start(Fault::LoseEvery(40));
    let (code, record) = run_cli(&node, &[]);
    let v = verdicts(&record);
    assert_eq!(code, 1);
    assert_eq!(
        v["acked_orders_logged_once"],
        Verdict::Fail,
        "{:#?}",
        record.audit
    );
    assert_eq!(v["sold_matches_log"], Verdict::Fail);
}

#[test]
fn an_ignored_limit_fails() {
    let _one = exclusive();
    let node = FakeNode::start(Fault::IgnoreLimit);
    // Hot users send half the requests and keep buying: past the limit.
    let (code, record) = run_cli(&node, &[("--hot-share", "0.5"), ("--retry", "0")]);
    let v = verdicts(&record);
    assert_eq!(code, 1);
    assert_eq!(v["per_user_limit"], Verdict::Fail, "{:#?}", record.audit);
}

#[test]
fn stranded_stock_fails() {
    let _one = exclusive();
    let node = FakeNode::start(Fault::Strand(2));
    let (code, record) = run_cli(&node, &[]);
    let v = verdicts(&record);
    assert_eq!(code, 1);
    assert_eq!(v["sells_out"], Verdict::Fail, "{:#?}", record.audit);
    assert_eq!(v["no_oversell"], Verdict::Pass);
    // Its sold_out answers came while 2 units were never sold: all false.
    assert_eq!(v["no_false_sold_out"], Verdict::Fail, "{:#?}", record.audit);
}

/// `--audit-after` audits later and adds `orders_settled`: the fake node
/// never expires its orders, so the 50 it sold are still reserved and the
/// check fails. `--acked-out` lists each order answered 200 once.
#[test]
fn a_late_audit_finds_orders_never_settled_and_lists_the_200s() {
    let _one = exclusive();
    let node = FakeNode::start(Fault::None);
    let dir = tempfile::tempdir().unwrap();
    let acked = dir.path().join("acked.txt");
    let (code, record) = run_cli(
        &node,
        &[
            ("--audit-after", "10ms"),
            ("--acked-out", acked.to_str().unwrap()),
        ],
    );
    let v = verdicts(&record);
    assert_eq!(code, 1);
    assert_eq!(v["orders_settled"], Verdict::Fail, "{:#?}", record.audit);
    assert_eq!(v["acked_never_released"], Verdict::Pass);
    let ids: Vec<String> = fs::read_to_string(&acked)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 50, "one line per order sold");
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 50, "replays are not listed twice");
}

#[test]
fn without_a_journal_the_audit_fails() {
    let _one = exclusive();
    let node = FakeNode::start(Fault::None);
    let (code, record) = run_cli(&node, &[("--journal", "/nonexistent/orders.journal")]);
    assert_eq!(code, 1);
    assert_eq!(verdicts(&record)["log_readable"], Verdict::Fail);
}

/// Drives a clean fake node from the library, then audits doctored copies
/// of its journal against the same answers.
#[test]
fn a_corrupted_copy_of_the_journal_fails() {
    let _one = exclusive();
    let node = FakeNode::start(Fault::None);
    let rec = clean_sale_load(node.addr());
    let image = fs::read(node.journal_path()).unwrap();
    let check = |image: &[u8], rec: &Recorder| {
        let input = AuditInput {
            sale_id: "s2",
            stock: 20,
            per_user_limit: 1,
            view: admin::sale_view(node.addr(), "s2").map_err(|e| e.to_string()),
            acked: rec.acked(),
            holders: rec.holders().len() as u64,
            sold_out_answers: rec.code_count("sold_out"),
            sold_out_at: rec.sold_out_at(),
            sold_out_untimed: rec.sold_out_untimed(),
            failures: rec.failures(),
            unfinished: rec.unfinished,
            log: parse_journal(image),
        };
        audit(&input)
            .into_iter()
            .map(|c| (c.name, c.verdict))
            .collect::<BTreeMap<_, _>>()
    };
    let clean = check(&image, &rec);
    assert!(clean.values().all(|v| *v == Verdict::Pass), "{clean:?}");

    let events = parse_journal(&image).unwrap().events;
    assert_eq!(events.len(), 20);
    // A copy with one order dropped: a lost acknowledgement.
    let dropped = encode_journal(&events[1..]);
    let v = check(&dropped, &rec);
    assert_eq!(v["acked_orders_logged_once"], Verdict::Fail);
    // A copy with one order twice: logged more than once, and one unit too many.
    let mut doubled = events.clone();
    doubled.push(events[3].clone());
    let v = check(&encode_journal(&doubled), &rec);
    assert_eq!(v["acked_orders_logged_once"], Verdict::Fail);
    assert_eq!(v["no_oversell"], Verdict::Fail);
    // A copy with an extra order for a user who already has one: over the limit.
    let mut extra = events.clone();
    let mut clone = events[5].clone();
    if let EventKind::OrderReserved { order_id, .. } = &mut clone.kind {
        order_id.push_str("-extra");
    }
    extra.push(clone);
    let v = check(&encode_journal(&extra), &rec);
    assert_eq!(v["per_user_limit"], Verdict::Fail);
    assert_eq!(v["no_oversell"], Verdict::Fail);
    // A flipped byte mid-file: corruption, not a torn tail.
    let mut flipped = image.clone();
    flipped[40] ^= 0x01;
    let v = check(&flipped, &rec);
    assert_eq!(v["log_readable"], Verdict::Fail);
    assert_eq!(v["acked_orders_logged_once"], Verdict::Fail);
    // The journal source reads the data dir as well as the file.
    let read = LogSpec::Journal(node.dir().to_path_buf())
        .source()
        .read()
        .unwrap();
    assert_eq!(read.events.len(), 20);
}
