//! Admin switches (pause, resume, close) racing with a crowd of purchases,
//! pays and cancels, then SIGKILL: the node starts again, and shows the
//! state it showed before the kill (each sale's sold count and state, each
//! order's status); every order answered 200 is still there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Client, Node, TOKEN};

/// Large enough that no sale sells out during a round.
const STOCK: u64 = 1_000_000;
const BUYERS: usize = 8;

/// How one round ends.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// Pause/resume race with the buyers, then one close races with them.
    CloseUnderLoad,
    /// Only pause/resume race with the buyers (two admins at once).
    PauseResume,
    /// Close and pause/resume requests race with each other and the buyers.
    CloseAmongSwitches,
}

/// Orders answered 200 in a round: id → the status last answered.
type Acked = Arc<Mutex<HashMap<String, String>>>;

#[test]
fn sigkill_after_switches_racing_with_purchases_restarts_to_the_same_state() {
    let mut node = Node::start();
    let mut acked_all: HashMap<String, String> = HashMap::new();
    let mut sales = Vec::new();
    for (round, ending) in [
        Ending::CloseUnderLoad,
        Ending::PauseResume,
        Ending::CloseAmongSwitches,
        Ending::CloseUnderLoad,
    ]
    .into_iter()
    .enumerate()
    {
        let sale = format!("race-{round}");
        node.client()
            .create_sale(&sale, &json!({ "stock": STOCK, "per_user_limit": 1 }));
        sales.push(sale.clone());

        let acked = race(node.addr(), &sale, round, ending);
        assert!(
            !acked.is_empty(),
            "round {round}: no order was acknowledged"
        );
        acked_all.extend(acked);

        // Everything answered; what the node shows now must survive a kill.
        let mut c = node.client();
        let before = snapshot(&mut c, &sales, &acked_all);
        drop(c);
        node.kill();
        node.restart();
        let mut c = node.client();
        let after = snapshot(&mut c, &sales, &acked_all);
        for (what, seen) in &before {
            assert_eq!(
                after.get(what),
                Some(seen),
                "round {round} ({ending:?}): {what} changed over SIGKILL + restart"
            );
        }
        for (id, status) in &acked_all {
            assert_eq!(
                before[&format!("order {id}")]["status"],
                status.as_str(),
                "order {id} is not as last answered"
            );
        }
    }
}

/// SIGKILL while buyers and switches are still running: the node starts
/// again, every order keeps the status last answered (or a later one whose
/// answer was lost), and each sale shows what its journal says.
#[test]
fn sigkill_while_switches_race_with_purchases_restarts_to_the_journal() {
    let mut node = Node::start();
    let mut acked_all: HashMap<String, String> = HashMap::new();
    let mut sales = Vec::new();
    for (round, kill_after_ms) in [150, 260, 90].into_iter().enumerate() {
        let sale = format!("live-{round}");
        node.client()
            .create_sale(&sale, &json!({ "stock": STOCK, "per_user_limit": 1 }));
        sales.push(sale.clone());
        let acked: Acked = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let buyers = spawn_buyers(node.addr(), &sale, round, &acked, &stop);
        let switchers = spawn_switchers(node.addr(), &sale, Ending::CloseAmongSwitches);
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        node.kill();
        stop.store(true, Ordering::Relaxed);
        for t in buyers.into_iter().chain(switchers) {
            t.join().expect("client thread");
        }
        acked_all.extend(std::mem::take(&mut *acked.lock().expect("lock")));

        let journal = node.journal();
        node.restart();
        let mut c = node.client();
        for (id, status) in &acked_all {
            let order = c.order(id);
            let now = order["status"].as_str().expect("status");
            assert!(
                now == status || status == "reserved",
                "order {id} answered {status}, now {now}"
            );
        }
        for sale in &sales {
            let (sold, state) = from_journal(&journal, sale);
            let view = c.sale(sale);
            assert_eq!(view["sold"], sold, "round {round}: {view}");
            assert_eq!(view["state"], state, "round {round}: {view}");
        }
    }
}

/// A sale's sold count and state as its journal events say.
fn from_journal(journal: &crate::support::Journal, sale: &str) -> (u64, &'static str) {
    let (mut sold, mut state) = (0i64, "open");
    for e in journal.events.iter().filter(|e| e["sale_id"] == sale) {
        let qty = e["quantity"].as_i64().unwrap_or(0);
        match e["type"].as_str().expect("type") {
            "order_reserved" => sold += qty,
            "order_cancelled" | "order_expired" => sold -= qty,
            "sale_switched" if state != "closed" => {
                state = match e["switch"].as_str().expect("switch") {
                    "paused" => "paused",
                    "resumed" => "open",
                    _ => "closed",
                };
            }
            _ => {}
        }
    }
    (u64::try_from(sold).expect("sold >= 0"), state)
}

fn spawn_buyers(
    addr: SocketAddr,
    sale: &str,
    round: usize,
    acked: &Acked,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    (0..BUYERS)
        .map(|b| {
            let (acked, stop, sale) = (acked.clone(), stop.clone(), sale.to_owned());
            std::thread::spawn(move || {
                buy_until(addr, &sale, &format!("r{round}-b{b}"), &acked, &stop);
            })
        })
        .collect()
}

/// Two admins toggling pause/resume (one of them closes midway in
/// `CloseAmongSwitches`). They stop at an I/O error (the kill).
fn spawn_switchers(addr: SocketAddr, sale: &str, ending: Ending) -> Vec<JoinHandle<()>> {
    (0..2)
        .map(|s| {
            let sale = sale.to_owned();
            std::thread::spawn(move || {
                let Ok(mut c) = Client::try_connect(addr) else {
                    return;
                };
                let auth = format!("Bearer {TOKEN}");
                for i in 0..12 {
                    let action = if (i + s) % 2 == 0 { "pause" } else { "resume" };
                    let action = match ending {
                        Ending::CloseAmongSwitches if s == 1 && i == 6 => "close",
                        _ => action,
                    };
                    let path = format!("/admin/sales/{sale}/{action}");
                    let Ok(resp) = c.try_request("POST", &path, &[("Authorization", &auth)], None)
                    else {
                        return;
                    };
                    assert!(resp.status == 200 || resp.status == 409, "{action}: {resp}");
                    std::thread::sleep(Duration::from_millis(15));
                }
            })
        })
        .collect()
}

/// Runs buyers and switchers on `sale` until the switches are done; returns
/// the orders answered 200, with the status last answered.
fn race(addr: SocketAddr, sale: &str, round: usize, ending: Ending) -> HashMap<String, String> {
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let buyers = spawn_buyers(addr, sale, round, &acked, &stop);
    std::thread::sleep(Duration::from_millis(100));
    for s in spawn_switchers(addr, sale, ending) {
        s.join().expect("switcher thread");
    }
    if let Ending::CloseUnderLoad = ending {
        let mut c = Client::connect(addr);
        assert_eq!(c.switch(sale, "resume").status, 200);
        std::thread::sleep(Duration::from_millis(50));
        let resp = c.switch(sale, "close");
        assert_eq!(resp.status, 200, "close: {resp}");
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    for b in buyers {
        b.join().expect("buyer thread");
    }
    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    acked
}

/// Buys one unit per fresh user until `stop` (or an I/O error: the kill);
/// pays every third order and cancels every fifth, right away.
fn buy_until(addr: SocketAddr, sale: &str, who: &str, acked: &Acked, stop: &AtomicBool) {
    let Ok(mut c) = Client::try_connect(addr) else {
        return;
    };
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(resp) = c.try_purchase(sale, &format!("{who}-u{i}")) else {
            return;
        };
        match resp.status {
            200 => {}
            // Paused or closed.
            403 if resp.error_code() == "sale_not_open" => continue,
            // Past the gate just before a close, then the close drained the
            // shards: nothing left to take (the stock is never sold out).
            410 if resp.error_code() == "sold_out" => continue,
            _ => panic!("purchase: {resp}"),
        }
        let id = resp.str("order_id");
        acked
            .lock()
            .expect("lock")
            .insert(id.clone(), "reserved".into());
        let (action, status) = match i % 15 {
            0 | 3 | 6 | 9 | 12 => ("pay", "paid"),
            5 | 10 => ("cancel", "cancelled"),
            _ => continue,
        };
        let Ok(resp) = c.try_request("POST", &format!("/orders/{id}/{action}"), &[], None) else {
            return;
        };
        assert_eq!(resp.status, 200, "{status} {id}: {resp}");
        acked.lock().expect("lock").insert(id, status.into());
    }
}

/// What the node shows: each sale's view, each order's.
fn snapshot(
    c: &mut Client,
    sales: &[String],
    orders: &HashMap<String, String>,
) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for sale in sales {
        let mut view = c.sale(sale);
        // The view's clock-dependent fields are not state.
        view.as_object_mut().expect("sale view").remove("starts_at");
        out.insert(format!("sale {sale}"), view);
    }
    for id in orders.keys() {
        out.insert(format!("order {id}"), c.order(id));
    }
    out
}
