//! SIGKILL in the middle of a sale: nothing acknowledged is lost, nothing
//! is sold twice, limits still hold, and the sale finishes at exactly its
//! stock after the restart.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::support::{assert_error, assert_ok, Client, Node};

const STOCK: usize = 500;
const SALE: &str = "crash";
const BUYERS: usize = 4;
/// The node is killed once this many orders were acknowledged.
const KILL_AFTER: usize = 120;
/// Each buyer stops after this many orders, so that the sale is still
/// open at the kill however late it comes (4 × 100 < 500).
const PER_BUYER: usize = 100;

/// What the buyers saw before the kill.
#[derive(Default)]
struct Seen {
    /// user → order id, for every 200.
    acked: HashMap<String, String>,
    /// Answers other than 200 (there should be none mid-sale).
    unexpected: Vec<String>,
}

#[test]
fn sigkill_mid_sale_loses_no_acknowledged_order_and_resells_nothing() {
    let mut node = Node::start();
    let mut c = node.client();
    c.create_sale(SALE, &json!({ "stock": STOCK, "per_user_limit": 1 }));
    drop(c);

    let seen = Arc::new(Mutex::new(Seen::default()));
    let done = Arc::new(AtomicBool::new(false));
    let (enough_tx, enough) = mpsc::channel();
    let buyers: Vec<_> = (0..BUYERS)
        .map(|b| {
            let (seen, done, addr) = (seen.clone(), done.clone(), node.addr());
            let enough_tx = enough_tx.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut mine = 0;
                for i in 0.. {
                    if done.load(Ordering::Relaxed) || mine == PER_BUYER {
                        break;
                    }
                    let user = format!("b{b}-u{i}");
                    // An I/O error is the kill: the answer is unknown.
                    let Ok(resp) = client.try_purchase(SALE, &user) else {
                        break;
                    };
                    let mut seen = seen.lock().expect("lock");
                    if resp.status == 200 {
                        mine += 1;
                        seen.acked.insert(user, resp.str("order_id"));
                        if seen.acked.len() == KILL_AFTER {
                            let _ = enough_tx.send(());
                        }
                    } else {
                        seen.unexpected.push(format!("{user}: {resp}"));
                        break;
                    }
                }
            })
        })
        .collect();
    enough
        .recv_timeout(Duration::from_secs(40))
        .expect("orders acknowledged in time");
    node.kill();
    done.store(true, Ordering::Relaxed);
    for b in buyers {
        b.join().expect("buyer thread");
    }
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    assert!(seen.unexpected.is_empty(), "{:?}", seen.unexpected);
    let acked = seen.acked;
    assert!(acked.len() >= KILL_AFTER);

    // The journal as the crash left it: every acknowledged order is there,
    // once, for its user.
    let before = node.journal();
    let counts = before.reserved_counts(SALE);
    for (id, n) in &counts {
        assert_eq!(*n, 1, "order {id} is in the journal {n} times");
    }
    let journal_users: HashMap<String, String> = before
        .reserved(SALE)
        .iter()
        .map(|e| {
            (
                e["user_id"].as_str().expect("user_id").to_owned(),
                e["order_id"].as_str().expect("order_id").to_owned(),
            )
        })
        .collect();
    assert_eq!(journal_users.len(), counts.len(), "one order per user");
    for (user, id) in &acked {
        assert_eq!(
            journal_users.get(user),
            Some(id),
            "acknowledged order {id} of {user} is not in the journal"
        );
    }
    let sold_before = counts.len();
    eprintln!(
        "crash: {} acknowledged, {sold_before} in the journal, {} torn bytes",
        acked.len(),
        before.torn_bytes
    );
    assert!(sold_before >= acked.len());
    assert!(
        sold_before < STOCK,
        "the sale sold out before the kill; the test needs a kill mid-sale"
    );

    node.restart();
    let mut c = node.client();
    let view = c.sale(SALE);
    assert_eq!(view["sold"], sold_before, "sold after restart: {view}");
    assert_eq!(view["remaining"], STOCK - sold_before, "{view}");
    assert_eq!(view["state"], "open", "{view}");
    for (user, id) in &acked {
        let order = c.order(id);
        assert_eq!(order["status"], "reserved", "{order}");
        assert_eq!(order["user_id"], user.as_str(), "{order}");
        assert_eq!(order["sale_id"], SALE, "{order}");
    }
    // Everyone whose order survived is still at the limit.
    for user in journal_users.keys() {
        assert_error(&c.purchase(SALE, user), 409, "limit_exceeded");
    }

    // Finish the sale: exactly the rest is sold.
    let mut after: HashSet<String> = HashSet::new();
    for i in 0.. {
        let resp = c.purchase(SALE, &format!("after-{i}"));
        if resp.status == 410 {
            assert_error(&resp, 410, "sold_out");
            break;
        }
        assert!(after.insert(
            assert_ok(&resp)["order_id"]
                .as_str()
                .expect("id")
                .to_owned()
        ));
        assert!(after.len() <= STOCK, "selling past the stock");
    }
    assert_eq!(after.len(), STOCK - sold_before, "units sold after restart");
    let view = c.sale(SALE);
    assert_eq!(view["sold"], STOCK, "{view}");
    assert_eq!(view["state"], "sold_out", "{view}");

    // No unit sold twice: the orders of both runs are distinct and number
    // exactly the stock, in the journal too.
    let mut all: HashSet<&String> = counts.keys().collect();
    all.extend(acked.values());
    all.extend(after.iter());
    assert_eq!(all.len(), STOCK, "distinct orders across both runs");
    let end = node.journal();
    let end_counts = end.reserved_counts(SALE);
    assert_eq!(end_counts.len(), STOCK, "distinct orders in the journal");
    assert!(
        end_counts.values().all(|n| *n == 1),
        "an order logged twice"
    );
    assert!(all.iter().all(|id| end_counts.contains_key(*id)));

    // And it stays so over one more (graceful) restart.
    node.restart();
    let view = node.client().sale(SALE);
    assert_eq!(view["sold"], STOCK, "{view}");
    assert_eq!(view["state"], "sold_out", "{view}");
}

/// SIGTERM in the middle of a sale: the node exits 0, purchases in flight
/// either finish (200, in the journal) or were never taken; nothing else
/// is answered, and the restart sees exactly the journal.
#[test]
fn sigterm_mid_sale_finishes_what_is_in_flight() {
    let mut node = Node::start();
    let mut c = node.client();
    c.create_sale("term", &json!({ "stock": STOCK, "per_user_limit": 1 }));
    drop(c);

    let seen = Arc::new(Mutex::new(Seen::default()));
    let (enough_tx, enough) = mpsc::channel();
    let buyers: Vec<_> = (0..BUYERS)
        .map(|b| {
            let (seen, addr, enough_tx) = (seen.clone(), node.addr(), enough_tx.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                for i in 0..PER_BUYER {
                    let user = format!("b{b}-u{i}");
                    let Ok(resp) = client.try_purchase("term", &user) else {
                        break;
                    };
                    let mut seen = seen.lock().expect("lock");
                    if resp.status != 200 {
                        seen.unexpected.push(format!("{user}: {resp}"));
                        break;
                    }
                    seen.acked.insert(user, resp.str("order_id"));
                    if seen.acked.len() == KILL_AFTER {
                        let _ = enough_tx.send(());
                    }
                    if resp.closes() {
                        break;
                    }
                }
            })
        })
        .collect();
    enough
        .recv_timeout(Duration::from_secs(40))
        .expect("orders acknowledged in time");
    node.terminate();
    for b in buyers {
        b.join().expect("buyer thread");
    }
    let seen = std::mem::take(&mut *seen.lock().expect("lock"));
    assert!(seen.unexpected.is_empty(), "{:?}", seen.unexpected);

    let journal = node.journal();
    assert_eq!(
        journal.torn_bytes, 0,
        "a graceful stop leaves a whole journal"
    );
    let counts = journal.reserved_counts("term");
    assert!(counts.values().all(|n| *n == 1), "an order logged twice");
    for id in seen.acked.values() {
        assert!(
            counts.contains_key(id),
            "acknowledged order {id} is not in the journal"
        );
    }
    // At most the one request each buyer had in flight is unanswered.
    assert!(
        counts.len() - seen.acked.len() <= BUYERS,
        "{} orders logged, {} answered",
        counts.len(),
        seen.acked.len()
    );
    node.restart();
    let view = node.client().sale("term");
    assert_eq!(view["sold"], counts.len(), "{view}");
}
