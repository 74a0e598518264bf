//! Journal compaction in embedded mode: with `journal_segment_bytes` set,
//! full journal segments are folded into a snapshot and removed, so the
//! data dir stays small however many orders the node takes; and a SIGKILL
//! or abort at any step of a compaction restarts to the same state.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually, Client, Node};

const SALE: &str = "compact";

/// A node that seals its journal every 4 KiB (about 15 events).
fn compacting_node(extra: &str, env: &[(&str, &str)]) -> Node {
    let root = seckill_testkit::temp_dir("seckill-it-");
    std::fs::write(
        root.path().join("seckill.toml"),
        format!("journal_segment_bytes = 4096\n{extra}"),
    )
    .expect("write config");
    Node::start_in_env(root, &["--config", "{root}/seckill.toml"], env)
}

/// Bytes of journal files (the live file and sealed segments) in `dir`,
/// and whether a snapshot is there.
fn journal_files(dir: &Path) -> (u64, bool) {
    let mut bytes = 0;
    let mut snapshot = false;
    for entry in std::fs::read_dir(dir).expect("read data dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("orders.journal") {
            bytes += entry.metadata().expect("metadata").len();
        }
        snapshot |= name == "orders.snapshot";
    }
    (bytes, snapshot)
}

/// The model of what the node answered: order → status.
#[derive(Default)]
struct Model {
    orders: HashMap<String, &'static str>,
    /// The order whose last request got no answer (the node died).
    uncertain: Option<String>,
    /// A purchase got no answer.
    purchase_unanswered: bool,
}

impl Model {
    fn sold(&self) -> usize {
        self.orders
            .values()
            .filter(|s| matches!(**s, "reserved" | "paid"))
            .count()
    }
}

/// One cycle `i`: buy; pay every third order, cancel every fourth, leave
/// the rest reserved. Returns false when the node stopped answering.
fn cycle(c: &mut Client, model: &mut Model, i: usize) -> bool {
    let Ok(resp) = c.try_purchase(SALE, &format!("u{i}")) else {
        model.purchase_unanswered = true;
        return false;
    };
    assert_eq!(resp.status, 200, "purchase: {resp}");
    let id = resp.str("order_id");
    model.orders.insert(id.clone(), "reserved");
    let (action, status) = match i % 12 {
        0 | 3 | 6 | 9 => ("pay", "paid"),
        4 | 8 => ("cancel", "cancelled"),
        _ => return true,
    };
    match c.try_request("POST", &format!("/orders/{id}/{action}"), &[], None) {
        Ok(resp) => {
            assert_eq!(resp.status, 200, "{action}: {resp}");
            model.orders.insert(id, status);
            true
        }
        Err(_) => {
            model.uncertain = Some(id);
            false
        }
    }
}

/// What the node shows: the sale and every order the model knows.
fn state(c: &mut Client, model: &Model) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    let mut sale = c.sale(SALE);
    sale.as_object_mut().expect("sale view").remove("starts_at");
    out.insert("sale".to_owned(), sale);
    for id in model.orders.keys() {
        out.insert(id.clone(), c.order(id));
    }
    out
}

/// The node's state agrees with every answer it gave.
fn check_against_model(c: &mut Client, model: &Model) {
    for (id, status) in &model.orders {
        let order = c.order(id);
        if model.uncertain.as_deref() == Some(id) {
            continue;
        }
        assert_eq!(order["status"], *status, "order {id}: {order}");
    }
    let sold = c.sale(SALE)["sold"].as_u64().expect("sold") as usize;
    let (lo, hi) = (
        model
            .sold()
            .saturating_sub(usize::from(model.uncertain.is_some())),
        model.sold() + usize::from(model.purchase_unanswered),
    );
    assert!((lo..=hi).contains(&sold), "sold {sold}, model {lo}..={hi}");
}

#[test]
fn compaction_keeps_the_journal_small_and_restarts_to_the_same_state() {
    let mut node = compacting_node("order_retention_s = 1\n", &[]);
    let mut c = node.client();
    c.create_sale(SALE, &json!({ "stock": 1_000_000, "per_user_limit": 1 }));
    let mut model = Model::default();
    for i in 0..1_500 {
        assert!(cycle(&mut c, &mut model, i), "the node stopped answering");
    }
    // About 300 KiB of events went through the journal; what is left on
    // disk is the live file and at most a few segments not yet folded.
    let dir = node.data_dir();
    let (bytes, snapshot) = eventually(Duration::from_secs(10), "the journal is compacted", || {
        let (bytes, snapshot) = journal_files(&dir);
        (snapshot && bytes <= 3 * 4096 + 1024).then_some((bytes, snapshot))
    });
    eprintln!(
        "compaction: {bytes} journal bytes on disk after 1,500 cycles (snapshot: {snapshot})"
    );
    // Finished orders past their retention are gone; the live ones stay.
    model.orders.retain(|_, s| *s == "reserved");
    std::thread::sleep(Duration::from_millis(2_000));
    let before = state(&mut c, &model);
    drop(c);
    node.kill();
    node.restart();
    let after = state(&mut node.client(), &model);
    assert_eq!(after, before, "state changed over SIGKILL + restart");
}

#[test]
fn a_crash_at_each_step_of_a_compaction_restarts_to_the_same_state() {
    for failpoint in [
        "compact_before_install",
        "compact_after_install",
        "compact_mid_delete",
    ] {
        let mut node = compacting_node("", &[("SECKILL_FAILPOINT", failpoint)]);
        let mut c = node.client();
        c.create_sale(SALE, &json!({ "stock": 1_000_000, "per_user_limit": 1 }));
        let mut model = Model::default();
        let mut died = false;
        for i in 0..2_000 {
            if !cycle(&mut c, &mut model, i) {
                died = true;
                break;
            }
        }
        assert!(died, "{failpoint}: the node never reached its failpoint");
        drop(c);
        let status = node.wait_exit(Duration::from_secs(10));
        assert!(!status.success(), "{failpoint}: {status}");

        node.set_env(&[]);
        node.restart();
        let mut c = node.client();
        check_against_model(&mut c, &model);
        let first = state(&mut c, &model);
        // The restarted node finishes the interrupted compaction; a kill
        // after it, and a graceful restart, change nothing.
        let dir = node.data_dir();
        eventually(Duration::from_secs(10), "the compaction finishes", || {
            let (bytes, snapshot) = journal_files(&dir);
            (snapshot && bytes <= 2 * 4096 + 1024).then_some(())
        });
        drop(c);
        node.kill();
        node.restart();
        assert_eq!(
            state(&mut node.client(), &model),
            first,
            "{failpoint}: state changed over the compaction and SIGKILL"
        );
        node.restart();
        assert_eq!(
            state(&mut node.client(), &model),
            first,
            "{failpoint}: state changed over a graceful restart"
        );
    }
}
