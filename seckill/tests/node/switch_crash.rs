//! Admin switches (pause, resume, close) racing with a crowd of purchases,
//! pays and cancels, then SIGKILL: the node starts again, and shows the
//! state it showed before the kill (each sale's sold count and state, each
//! order's status); every order answered 200 is still there.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Client, Node};

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

/// Runs buyers and switchers on `sale` until the switches are done; returns
/// the orders answered 200, with the status last answered.
fn race(addr: SocketAddr, sale: &str, round: usize, ending: Ending) -> HashMap<String, String> {
    let acked: Acked = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let buyers: Vec<_> = (0..BUYERS)
        .map(|b| {
            let (acked, stop, sale) = (acked.clone(), stop.clone(), sale.to_owned());
            std::thread::spawn(move || {
                buy_until(addr, &sale, &format!("r{round}-b{b}"), &acked, &stop)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let switchers: Vec<_> = (0..2)
        .map(|s| {
            let sale = sale.to_owned();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for i in 0..12 {
                    let action = if (i + s) % 2 == 0 { "pause" } else { "resume" };
                    let action = match ending {
                        Ending::CloseAmongSwitches if s == 1 && i == 6 => "close",
                        _ => action,
                    };
                    let resp = c.switch(&sale, action);
                    assert!(resp.status == 200 || resp.status == 409, "{action}: {resp}");
                    std::thread::sleep(Duration::from_millis(15));
                }
            })
        })
        .collect();
    for s in switchers {
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

/// Buys one unit per fresh user until `stop`; pays every third order and
/// cancels every fifth, right away.
fn buy_until(addr: SocketAddr, sale: &str, who: &str, acked: &Acked, stop: &AtomicBool) {
    let mut c = Client::connect(addr);
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let resp = c.purchase(sale, &format!("{who}-u{i}"));
        match resp.status {
            200 => {}
            // Paused or closed.
            403 if resp.error_code() == "sale_not_open" => continue,
            _ => panic!("purchase: {resp}"),
        }
        let id = resp.str("order_id");
        acked
            .lock()
            .expect("lock")
            .insert(id.clone(), "reserved".into());
        let (resp, status) = match i % 15 {
            0 | 3 | 6 | 9 | 12 => (c.pay(&id), "paid"),
            5 | 10 => (c.cancel(&id), "cancelled"),
            _ => continue,
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
