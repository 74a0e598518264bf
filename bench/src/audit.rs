//! The invariants a run is checked against once the load is over
//! (docs/guarantees.md), each one a [`Check`] that can fail:
//!
//! - `log_readable`: the order log reads whole (a torn tail is allowed).
//!   The events are only those of the audited sale's orders where it
//!   matters: the log (a Kafka topic in particular) may hold other sales.
//!   A Kafka source has already left out redeliveries of the same event
//!   (`orderlog::drop_redeliveries`); what stays twice is a finding.
//! - `no_oversell`: live units (reserved, not cancelled or expired) never
//!   exceed the stock at any point of the log; the node's `sold` and the
//!   units acknowledged with 200 do not exceed it either.
//! - `per_user_limit`: no user holds more than the limit at any point of the
//!   log, nor in the 200 answers.
//! - `acked_orders_logged_once`: every order answered 200 is in the log
//!   exactly once, for the same sale, user and quantity.
//! - `idempotency`: one key never yields two orders (answers and log).
//! - `sold_matches_log`: the node's `sold` equals the log's live units.
//! - `sells_out`: when the node said `sold_out` or demand reached the stock,
//!   and nothing failed, every unit is sold (sold == stock) — no stranded
//!   stock.
//! - `acked_never_released`: no order answered 200 (first or as a replay)
//!   has a `stock_released` event: compensation never takes a 200 back.
//! - `no_false_sold_out`: no `410 sold_out` answer came while units were
//!   unsold (not in a reserved or paid order, by the log's timeline) for
//!   longer than [`FALSE_SOLD_OUT_TOLERANCE_MS`] before the request was
//!   sent through the moment it was answered.
//! - `orders_settled` ([`settled`], for an audit run once the sale's payment
//!   timeout and the settler's grace have passed): every order of the sale
//!   ended paid, cancelled, expired or released.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use queue::EventKind;
use serde::{Deserialize, Serialize};

use crate::admin::SaleView;
use crate::orderlog::LogContents;
use crate::recorder::{AckedOrder, SoldOutAt};

/// How long units may have been unsold, before a purchase was sent, for a
/// `410 sold_out` answer to it still to be right. The contract lets a node
/// answer from its last view of the cluster, at most about 200 ms old (the
/// poller reads Redis every 200 ms); a unit given back (cancel, expiry) to
/// the pool or held in another node's lease then reaches a node with dry
/// shards by a lease or a rebalance (`want.lua`, seen by the holders on
/// their next poll, `give_back.lua`, the asker's lease: up to two more
/// polls, 400 ms). 600 ms in all; the rest, to 1.5 s, is for a shared
/// 2-core machine, where a poll tick or the stamp of an event (`at`, made
/// by the process that wrote it) can be late by hundreds of milliseconds
/// under load. A node answering from a view older than this is wrong, not
/// slow. Embedded mode is exact (one authority), so there the tolerance
/// only absorbs clock reads.
pub const FALSE_SOLD_OUT_TOLERANCE_MS: u64 = 1_500;

/// How old the contract lets a node's view be: answers after units had
/// been unsold longer than this (but within the tolerance) are counted
/// apart, as the figure to watch.
pub const SOLD_OUT_VIEW_MS: u64 = 200;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Fail,
    /// The check does not apply to this run (the detail says why).
    Skip,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "SKIP",
        })
    }
}

/// One audited invariant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
}

impl Check {
    fn new(name: &str, ok: bool, detail: String) -> Self {
        Check {
            name: name.into(),
            verdict: if ok { Verdict::Pass } else { Verdict::Fail },
            detail,
        }
    }

    fn skip(name: &str, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            verdict: Verdict::Skip,
            detail: detail.into(),
        }
    }
}

/// Whether every check passed (skips are not failures).
pub fn passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.verdict != Verdict::Fail)
}

/// What the audit looks at.
pub struct AuditInput<'a> {
    pub sale_id: &'a str,
    pub stock: u64,
    pub per_user_limit: u32,
    /// The node's view of the sale after the run (`GET /sales/{id}`).
    pub view: Result<SaleView, String>,
    /// Every 200 answer to a purchase (replays included).
    pub acked: &'a [AckedOrder],
    /// Distinct users known to hold a unit (a 200 or `limit_exceeded`).
    pub holders: u64,
    /// Answers with the `sold_out` code.
    pub sold_out_answers: u64,
    /// When purchases were answered `sold_out` (all, or the first ones).
    pub sold_out_at: &'a [SoldOutAt],
    /// `sold_out` answers whose times were not kept.
    pub sold_out_untimed: u64,
    /// Requests whose outcome is unknown (transport errors, no answer, 5xx).
    pub failures: u64,
    /// Requests still unanswered when the run ended.
    pub unfinished: u64,
    /// The order log, or why it could not be read.
    pub log: Result<LogContents, String>,
}

/// Runs every check.
pub fn audit(input: &AuditInput<'_>) -> Vec<Check> {
    let mut checks = Vec::new();
    let log = match &input.log {
        Ok(log) => {
            checks.push(Check::new(
                "log_readable",
                true,
                format!(
                    "{} events, torn tail {} bytes, {} redeliveries counted once",
                    log.events.len(),
                    log.torn_tail_bytes,
                    log.redeliveries
                ),
            ));
            Some(replay(
                log,
                input.sale_id,
                input.stock,
                input.per_user_limit,
            ))
        }
        Err(e) => {
            checks.push(Check::new("log_readable", false, e.clone()));
            None
        }
    };
    let acked = distinct_acked(input.acked);
    // Units acknowledged and not given back since (cancelled or expired).
    let acked_units: u64 = acked
        .values()
        .filter(|o| {
            !log.as_ref()
                .is_some_and(|r| r.released.contains(o.order_id.as_str()))
        })
        .map(|o| u64::from(o.quantity))
        .sum();

    // no_oversell
    let mut problems = Vec::new();
    if let Ok(view) = &input.view {
        if view.sold > input.stock {
            problems.push(format!("node sold {} > stock {}", view.sold, input.stock));
        }
    }
    if acked_units > input.stock {
        problems.push(format!(
            "{} units acknowledged with 200 > stock {}",
            acked_units, input.stock
        ));
    }
    if let Some(r) = &log {
        if r.peak_live > input.stock {
            problems.push(format!(
                "the log holds {} live units at its peak > stock {}",
                r.peak_live, input.stock
            ));
        }
    }
    checks.push(Check::new(
        "no_oversell",
        problems.is_empty(),
        if problems.is_empty() {
            format!(
                "stock {}, node sold {}, acked units {}, log live units {}",
                input.stock,
                input
                    .view
                    .as_ref()
                    .map(|v| v.sold.to_string())
                    .unwrap_or("?".into()),
                acked_units,
                log.as_ref()
                    .map(|r| r.live_units.to_string())
                    .unwrap_or("?".into()),
            )
        } else {
            problems.join("; ")
        },
    ));

    // per_user_limit
    let mut problems = Vec::new();
    if let Some(r) = &log {
        if let Some((user, held)) = &r.over_limit {
            problems.push(format!(
                "the log has user {user} holding {held} units > limit {}",
                input.per_user_limit
            ));
        }
    }
    let mut per_user: HashMap<&str, u64> = HashMap::new();
    for o in acked.values() {
        let released = log
            .as_ref()
            .is_some_and(|r| r.released.contains(o.order_id.as_str()));
        if !released {
            *per_user.entry(o.user_id.as_str()).or_insert(0) += u64::from(o.quantity);
        }
    }
    if let Some((user, held)) = per_user
        .iter()
        .filter(|(_, held)| **held > u64::from(input.per_user_limit))
        .max_by_key(|(_, held)| **held)
    {
        problems.push(format!(
            "user {user} was answered 200 for {held} live units > limit {}",
            input.per_user_limit
        ));
    }
    checks.push(Check::new(
        "per_user_limit",
        problems.is_empty(),
        if problems.is_empty() {
            format!(
                "limit {}, {} users hold units",
                input.per_user_limit,
                log.as_ref().map(|r| r.users).unwrap_or(per_user.len())
            )
        } else {
            problems.join("; ")
        },
    ));

    // acked_orders_logged_once
    match &log {
        None => checks.push(Check::new(
            "acked_orders_logged_once",
            false,
            "the log could not be read".into(),
        )),
        Some(r) => {
            let mut missing = Vec::new();
            let mut duplicated = Vec::new();
            let mut mismatched = Vec::new();
            for (id, o) in &acked {
                match r.reserved.get(id.as_str()) {
                    None => missing.push(id.as_str()),
                    Some(entries) if entries.len() > 1 => duplicated.push(id.as_str()),
                    Some(entries) => {
                        let (sale, user, qty) = &entries[0];
                        if sale != &o.sale_id || user != &o.user_id || *qty != o.quantity {
                            mismatched.push(id.as_str());
                        }
                    }
                }
            }
            let ok = missing.is_empty() && duplicated.is_empty() && mismatched.is_empty();
            let detail = if ok {
                format!(
                    "{} orders acknowledged, all in the log once ({} replays)",
                    acked.len(),
                    input.acked.iter().filter(|o| o.replayed).count()
                )
            } else {
                format!(
                    "{} of {} acknowledged orders missing from the log{}, {} logged more than once{}, {} logged differently{}",
                    missing.len(),
                    acked.len(),
                    examples(&missing),
                    duplicated.len(),
                    examples(&duplicated),
                    mismatched.len(),
                    examples(&mismatched)
                )
            };
            checks.push(Check::new("acked_orders_logged_once", ok, detail));
        }
    }

    // idempotency
    let mut problems = Vec::new();
    let mut by_key: HashMap<&str, HashSet<&str>> = HashMap::new();
    for o in input.acked {
        if let Some(k) = &o.key {
            by_key
                .entry(k.as_str())
                .or_default()
                .insert(o.order_id.as_str());
        }
    }
    let split: Vec<&str> = by_key
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(k, _)| *k)
        .collect();
    if !split.is_empty() {
        problems.push(format!(
            "{} keys were answered with more than one order{}",
            split.len(),
            examples(&split)
        ));
    }
    if let Some(r) = &log {
        if !r.keys_with_two_orders.is_empty() {
            let keys: Vec<&str> = r.keys_with_two_orders.iter().map(|k| k.as_str()).collect();
            problems.push(format!(
                "{} keys have more than one order in the log{}",
                keys.len(),
                examples(&keys)
            ));
        }
    }
    checks.push(Check::new(
        "idempotency",
        problems.is_empty(),
        if problems.is_empty() {
            format!("{} keys answered 200, one order each", by_key.len())
        } else {
            problems.join("; ")
        },
    ));

    // acked_never_released
    match &log {
        None => checks.push(Check::skip("acked_never_released", "no log")),
        Some(r) => {
            let taken_back: Vec<&str> = acked
                .keys()
                .map(String::as_str)
                .filter(|id| r.stock_released.contains(*id))
                .collect();
            checks.push(Check::new(
                "acked_never_released",
                taken_back.is_empty(),
                format!(
                    "{} of {} orders answered 200 were released by compensation{}",
                    taken_back.len(),
                    acked.len(),
                    examples(&taken_back)
                ),
            ));
        }
    }

    // sold_matches_log
    match (&input.view, &log) {
        (Err(e), _) => checks.push(Check::new(
            "sold_matches_log",
            false,
            format!("no sale view: {e}"),
        )),
        (_, None) => checks.push(Check::skip("sold_matches_log", "no log")),
        (Ok(_), Some(_)) if input.unfinished > 0 => checks.push(Check::skip(
            "sold_matches_log",
            format!("{} requests were still unanswered", input.unfinished),
        )),
        (Ok(view), Some(r)) => checks.push(Check::new(
            "sold_matches_log",
            view.sold == r.live_units,
            format!("node sold {}, log live units {}", view.sold, r.live_units),
        )),
    }

    // no_false_sold_out
    match &input.log {
        Err(_) => checks.push(Check::skip("no_false_sold_out", "no log")),
        Ok(log) => checks.push(no_false_sold_out(
            log,
            input.sale_id,
            input.stock,
            input.sold_out_at,
            input.sold_out_untimed,
        )),
    }

    // sells_out
    let demand_met = input.sold_out_answers > 0 || input.holders >= input.stock;
    if input.failures > 0 {
        checks.push(Check::skip(
            "sells_out",
            format!("{} requests failed or went unanswered", input.failures),
        ));
    } else if !demand_met {
        checks.push(Check::skip(
            "sells_out",
            format!(
                "demand below stock: no sold_out answer, {} holders < stock {}",
                input.holders, input.stock
            ),
        ));
    } else {
        let sold = input.view.as_ref().map(|v| v.sold).ok();
        let live = log.as_ref().map(|r| r.live_units);
        let ok = sold == Some(input.stock) && live.is_none_or(|l| l == input.stock);
        checks.push(Check::new(
            "sells_out",
            ok,
            format!(
                "stock {}, node sold {}, log live units {} ({} sold_out answers, {} holders)",
                input.stock,
                sold.map(|s| s.to_string()).unwrap_or("?".into()),
                live.map(|s| s.to_string()).unwrap_or("?".into()),
                input.sold_out_answers,
                input.holders
            ),
        ));
    }
    checks
}

/// `no_false_sold_out`: each `sold_out` answer against the log's timeline
/// of live units (in orders reserved and not cancelled, expired or
/// released; a paid order stays live). An answer is false when the sale had no moment with every
/// unit live from [`FALSE_SOLD_OUT_TOLERANCE_MS`] before its request was
/// sent through its answer.
fn no_false_sold_out(
    log: &LogContents,
    sale_id: &str,
    stock: u64,
    answers: &[SoldOutAt],
    untimed: u64,
) -> Check {
    let full = full_spans(log, sale_id, stock);
    let origin = log.events.iter().map(|e| e.at).min().unwrap_or(0);
    let mut false_answers = 0u64;
    let mut beyond_view = 0u64;
    // The first false answers: (sent, ms units had been unsold or None).
    let mut flagged: Vec<(u64, Option<u64>)> = Vec::new();
    // The longest time units had been unsold when a request answered
    // sold_out was sent: (ms, sent at); None: never all live before.
    let mut worst: Option<(Option<u64>, u64)> = None;
    for a in answers {
        // The last moment at or before the answer when every unit was live.
        let i = full.partition_point(|(start, _)| *start <= a.answered_ms);
        let last_full = i.checked_sub(1).map(|i| full[i].1.min(a.answered_ms));
        let unsold = last_full.map(|t| a.sent_ms.saturating_sub(t));
        if unsold.is_none_or(|ms| ms > FALSE_SOLD_OUT_TOLERANCE_MS) {
            false_answers += 1;
            if flagged.len() < 5 {
                flagged.push((a.sent_ms, unsold));
            }
        } else if unsold.is_some_and(|ms| ms > SOLD_OUT_VIEW_MS) {
            beyond_view += 1;
        }
        let longer = match (worst, unsold) {
            (None, _) | (Some((Some(_), _)), None) => true,
            (Some((Some(w), _)), Some(ms)) => ms > w,
            (Some((None, _)), _) => false,
        };
        if longer {
            worst = Some((unsold, a.sent_ms));
        }
    }
    let mut detail = format!(
        "{false_answers} of {} sold_out answers to requests sent after units had been unsold \
         for more than {FALSE_SOLD_OUT_TOLERANCE_MS} ms; {beyond_view} more than \
         {SOLD_OUT_VIEW_MS} ms",
        answers.len()
    );
    match worst {
        Some((Some(ms), at)) => {
            detail += &format!(
                "; longest: {ms} ms (sent {:.1} s into the log)",
                at.saturating_sub(origin) as f64 / 1e3
            )
        }
        Some((None, at)) => {
            detail += &format!(
                "; one sent {:.1} s into the log, before the stock was ever all live",
                at.saturating_sub(origin) as f64 / 1e3
            )
        }
        None => {}
    }
    if !flagged.is_empty() {
        let shown: Vec<String> = flagged
            .iter()
            .map(|(sent, unsold)| match unsold {
                Some(ms) => format!("sent at {sent} ms, unsold {ms} ms"),
                None => format!("sent at {sent} ms, never all live before"),
            })
            .collect();
        detail += &format!(" (the first: {})", shown.join("; "));
    }
    if untimed > 0 {
        detail += &format!("; {untimed} answers not timed");
    }
    Check::new("no_false_sold_out", false_answers == 0, detail)
}

/// The spans (start, end) of the log's timeline, in `at` milliseconds,
/// during which every unit of the sale was in a live order (`end`
/// `u64::MAX`: still at the end of the log). Each order counts once, from
/// its first `order_reserved` to its first cancel, expiry or release; an
/// order released without a reservation in the log (compensation of a
/// reservation that was never logged) counts as live from the start, so
/// that the check errs towards passing when the log is incomplete.
fn full_spans(log: &LogContents, sale_id: &str, stock: u64) -> Vec<(u64, u64)> {
    let mut reserved: HashMap<&str, (u64, u32)> = HashMap::new();
    let mut ended: HashMap<&str, u64> = HashMap::new();
    for e in &log.events {
        match &e.kind {
            EventKind::OrderReserved {
                order_id,
                sale_id: sale,
                quantity,
                ..
            } if sale == sale_id => {
                reserved.entry(order_id).or_insert((e.at, *quantity));
            }
            EventKind::OrderCancelled {
                order_id,
                sale_id: sale,
                quantity,
                ..
            }
            | EventKind::OrderExpired {
                order_id,
                sale_id: sale,
                quantity,
                ..
            }
            | EventKind::StockReleased {
                order_id,
                sale_id: sale,
                quantity,
                ..
            } if sale == sale_id => {
                ended.entry(order_id).or_insert(e.at);
                reserved.entry(order_id).or_insert((0, *quantity));
            }
            _ => {}
        }
    }
    // (at, units): reservations before releases of the same millisecond.
    let mut changes: Vec<(u64, i64)> = Vec::with_capacity(reserved.len() * 2);
    for (id, (at, qty)) in &reserved {
        changes.push((*at, i64::from(*qty)));
        if let Some(end) = ended.get(id) {
            changes.push(((*end).max(*at), -i64::from(*qty)));
        }
    }
    changes.sort_unstable_by_key(|(at, delta)| (*at, -*delta));
    let mut spans = Vec::new();
    let mut live = 0i64;
    let mut since = None;
    for (at, delta) in changes {
        live += delta;
        let full = live >= stock as i64;
        match (full, since) {
            (true, None) => since = Some(at),
            (false, Some(start)) => {
                spans.push((start, at));
                since = None;
            }
            _ => {}
        }
    }
    if let Some(start) = since {
        spans.push((start, u64::MAX));
    }
    spans
}

/// `orders_settled`: every order of `sale_id` reserved in the log has ended
/// (paid, cancelled, expired or released). Only meaningful once the sale's
/// payment timeout, and the settler's grace, have passed since the last
/// purchase: before that an order may rightly still be reserved.
pub fn settled(log: &Result<LogContents, String>, sale_id: &str) -> Check {
    let Ok(log) = log else {
        return Check::new("orders_settled", false, "the log could not be read".into());
    };
    let r = replay(log, sale_id, 0, u32::MAX);
    let mut open: Vec<&str> = r
        .reserved
        .iter()
        .filter(|(id, entries)| {
            entries.iter().any(|(sale, _, _)| sale == sale_id) && !r.ended.contains(id.as_str())
        })
        .map(|(id, _)| id.as_str())
        .collect();
    open.sort_unstable();
    let orders = r
        .reserved
        .values()
        .filter(|entries| entries.iter().any(|(sale, _, _)| sale == sale_id))
        .count();
    Check::new(
        "orders_settled",
        open.is_empty(),
        format!(
            "{} of {} orders still reserved{}",
            open.len(),
            orders,
            examples(&open)
        ),
    )
}

/// The acknowledged orders by id (a replay names the same order again).
fn distinct_acked(acked: &[AckedOrder]) -> BTreeMap<String, &AckedOrder> {
    let mut out = BTreeMap::new();
    for o in acked {
        out.entry(o.order_id.clone()).or_insert(o);
    }
    out
}

/// The log replayed for one sale.
struct Replayed {
    /// order id → every `order_reserved` for it: (sale, user, quantity).
    reserved: HashMap<String, Vec<(String, String, u32)>>,
    /// Orders cancelled or expired.
    released: HashSet<String>,
    /// Orders of the sale with a `stock_released` event (compensation).
    stock_released: HashSet<String>,
    /// Orders of the sale paid, cancelled, expired or released.
    ended: HashSet<String>,
    live_units: u64,
    peak_live: u64,
    users: usize,
    /// The worst over-limit holding seen at any point: (user, units).
    over_limit: Option<(String, u64)>,
    keys_with_two_orders: Vec<String>,
}

fn replay(log: &LogContents, sale_id: &str, _stock: u64, limit: u32) -> Replayed {
    let mut r = Replayed {
        reserved: HashMap::new(),
        released: HashSet::new(),
        stock_released: HashSet::new(),
        ended: HashSet::new(),
        live_units: 0,
        peak_live: 0,
        users: 0,
        over_limit: None,
        keys_with_two_orders: Vec::new(),
    };
    let mut live: HashMap<String, (String, u32)> = HashMap::new();
    let mut held: HashMap<String, u64> = HashMap::new();
    let mut keys: HashMap<(String, String), String> = HashMap::new();
    for e in &log.events {
        match &e.kind {
            EventKind::OrderReserved {
                order_id,
                sale_id: sale,
                user_id,
                quantity,
                idempotency_key,
                ..
            } => {
                r.reserved.entry(order_id.clone()).or_default().push((
                    sale.clone(),
                    user_id.clone(),
                    *quantity,
                ));
                if sale != sale_id {
                    continue;
                }
                if let Some(k) = idempotency_key {
                    let slot = keys
                        .entry((user_id.clone(), k.clone()))
                        .or_insert(order_id.clone());
                    if slot != order_id {
                        r.keys_with_two_orders.push(k.clone());
                    }
                }
                // A duplicate record of the same order counts again: a
                // double-logged order is a double-sold unit downstream.
                live.insert(order_id.clone(), (user_id.clone(), *quantity));
                r.live_units += u64::from(*quantity);
                r.peak_live = r.peak_live.max(r.live_units);
                let h = held.entry(user_id.clone()).or_insert(0);
                *h += u64::from(*quantity);
                if *h > u64::from(limit)
                    && r.over_limit.as_ref().is_none_or(|(_, worst)| *h > *worst)
                {
                    r.over_limit = Some((user_id.clone(), *h));
                }
            }
            EventKind::OrderCancelled {
                order_id,
                sale_id: sale,
                ..
            }
            | EventKind::OrderExpired {
                order_id,
                sale_id: sale,
                ..
            }
            | EventKind::StockReleased {
                order_id,
                sale_id: sale,
                ..
            } if sale == sale_id => {
                r.ended.insert(order_id.clone());
                if matches!(e.kind, EventKind::StockReleased { .. }) {
                    r.stock_released.insert(order_id.clone());
                }
                if let Some((user, qty)) = live.remove(order_id) {
                    r.live_units -= u64::from(qty);
                    if let Some(h) = held.get_mut(&user) {
                        *h = h.saturating_sub(u64::from(qty));
                    }
                    r.released.insert(order_id.clone());
                }
            }
            EventKind::OrderPaid {
                order_id,
                sale_id: sale,
                ..
            } if sale == sale_id => {
                r.ended.insert(order_id.clone());
            }
            _ => {}
        }
    }
    r.users = held.values().filter(|h| **h > 0).count();
    r
}

fn examples(ids: &[&str]) -> String {
    if ids.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = ids.iter().take(3).copied().collect();
    format!(" (e.g. {})", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use queue::Event;

    fn reserved(id: &str, user: &str) -> Event {
        Event::new(
            1,
            EventKind::OrderReserved {
                order_id: id.into(),
                sale_id: "s".into(),
                user_id: user.into(),
                quantity: 1,
                expires_at: 9,
                idempotency_key: Some(format!("k-{id}")),
                fingerprint: None,
            },
        )
    }

    fn acked(id: &str, user: &str) -> AckedOrder {
        AckedOrder {
            order_id: id.into(),
            sale_id: "s".into(),
            user_id: user.into(),
            quantity: 1,
            key: Some(format!("k-{id}")),
            replayed: false,
        }
    }

    fn view(sold: u64) -> SaleView {
        SaleView {
            sale_id: "s".into(),
            state: "sold_out".into(),
            stock: 2,
            sold,
            remaining: 2u64.saturating_sub(sold),
            per_user_limit: 1,
        }
    }

    fn run(events: Vec<Event>, acks: &[AckedOrder], sold: u64) -> BTreeMap<String, Verdict> {
        let input = AuditInput {
            sale_id: "s",
            stock: 2,
            per_user_limit: 1,
            view: Ok(view(sold)),
            acked: acks,
            holders: 2,
            sold_out_answers: 5,
            sold_out_at: &[],
            sold_out_untimed: 0,
            failures: 0,
            unfinished: 0,
            log: Ok(LogContents {
                events,
                ..LogContents::default()
            }),
        };
        audit(&input)
            .into_iter()
            .map(|c| (c.name, c.verdict))
            .collect()
    }

    #[test]
    fn a_clean_sale_passes_every_check() {
        let v = run(
            vec![reserved("o1", "a"), reserved("o2", "b")],
            &[acked("o1", "a"), acked("o2", "b")],
            2,
        );
        assert!(v.values().all(|v| *v == Verdict::Pass), "{v:?}");
        assert_eq!(v.len(), 9);
    }

    #[test]
    fn oversell_lost_and_duplicate_orders_fail() {
        let v = run(
            vec![
                reserved("o1", "a"),
                reserved("o2", "b"),
                reserved("o3", "c"),
            ],
            &[acked("o1", "a"), acked("o2", "b"), acked("o3", "c")],
            3,
        );
        assert_eq!(v["no_oversell"], Verdict::Fail);
        let v = run(
            vec![reserved("o1", "a")],
            &[acked("o1", "a"), acked("o2", "b")],
            2,
        );
        assert_eq!(v["acked_orders_logged_once"], Verdict::Fail);
        assert_eq!(v["sold_matches_log"], Verdict::Fail);
        let v = run(
            vec![reserved("o1", "a"), reserved("o1", "a")],
            &[acked("o1", "a")],
            1,
        );
        assert_eq!(v["acked_orders_logged_once"], Verdict::Fail);
        assert_eq!(v["sells_out"], Verdict::Fail, "sold 1 of 2 after sold_out");
    }

    #[test]
    fn over_limit_and_split_keys_fail() {
        let v = run(
            vec![reserved("o1", "a"), reserved("o2", "a")],
            &[acked("o1", "a"), acked("o2", "a")],
            2,
        );
        assert_eq!(v["per_user_limit"], Verdict::Fail);
        let mut second = acked("o2", "b");
        second.key = Some("k-o1".into());
        let v = run(
            vec![reserved("o1", "a"), reserved("o2", "b")],
            &[acked("o1", "a"), second],
            2,
        );
        assert_eq!(v["idempotency"], Verdict::Fail);
    }

    #[test]
    fn released_units_do_not_count() {
        let cancel = Event::new(
            2,
            EventKind::OrderCancelled {
                order_id: "o1".into(),
                sale_id: "s".into(),
                user_id: "a".into(),
                quantity: 1,
            },
        );
        let v = run(
            vec![
                reserved("o1", "a"),
                cancel,
                reserved("o2", "a"),
                reserved("o3", "b"),
            ],
            &[acked("o1", "a"), acked("o2", "a"), acked("o3", "b")],
            2,
        );
        assert!(v.values().all(|v| *v == Verdict::Pass), "{v:?}");
    }

    fn ended(kind: fn(String, String, String, u32) -> EventKind, id: &str, user: &str) -> Event {
        Event::new(2, kind(id.into(), "s".into(), user.into(), 1))
    }

    fn released(order_id: String, sale_id: String, user_id: String, quantity: u32) -> EventKind {
        EventKind::StockReleased {
            order_id,
            sale_id,
            user_id,
            quantity,
        }
    }

    fn paid(order_id: String, sale_id: String, user_id: String, quantity: u32) -> EventKind {
        EventKind::OrderPaid {
            order_id,
            sale_id,
            user_id,
            quantity,
        }
    }

    #[test]
    fn a_200_released_by_compensation_fails() {
        // o2 was never answered 200: releasing it is compensation at work.
        let v = run(
            vec![
                reserved("o1", "a"),
                reserved("o2", "b"),
                ended(released, "o2", "b"),
            ],
            &[acked("o1", "a")],
            1,
        );
        assert_eq!(v["acked_never_released"], Verdict::Pass, "{v:?}");
        // o1 was: taking it back breaks the buyer's 200.
        let v = run(
            vec![
                reserved("o1", "a"),
                ended(released, "o1", "a"),
                reserved("o2", "b"),
            ],
            &[acked("o1", "a"), acked("o2", "b")],
            1,
        );
        assert_eq!(v["acked_never_released"], Verdict::Fail, "{v:?}");
    }

    #[test]
    fn an_order_still_reserved_is_not_settled() {
        let log = |events| {
            Ok(LogContents {
                events,
                ..LogContents::default()
            })
        };
        let all_ended = log(vec![
            reserved("o1", "a"),
            ended(paid, "o1", "a"),
            reserved("o2", "b"),
            ended(released, "o2", "b"),
        ]);
        assert_eq!(settled(&all_ended, "s").verdict, Verdict::Pass);
        let one_open = log(vec![
            reserved("o1", "a"),
            ended(paid, "o1", "a"),
            reserved("o2", "b"),
        ]);
        let check = settled(&one_open, "s");
        assert_eq!(check.verdict, Verdict::Fail);
        assert!(check.detail.contains("o2"), "{}", check.detail);
        // Orders of other sales are not this sale's business.
        assert_eq!(settled(&one_open, "other").verdict, Verdict::Pass);
        assert_eq!(settled(&Err("gone".into()), "s").verdict, Verdict::Fail);
    }

    fn at(mut e: Event, ms: u64) -> Event {
        e.at = ms;
        e
    }

    fn sold_out_check(events: Vec<Event>, answers: &[(u64, u64)]) -> Check {
        let log = LogContents {
            events,
            ..LogContents::default()
        };
        let answers: Vec<SoldOutAt> = answers
            .iter()
            .map(|&(sent_ms, answered_ms)| SoldOutAt {
                sent_ms,
                answered_ms,
            })
            .collect();
        no_false_sold_out(&log, "s", 2, &answers, 0)
    }

    #[test]
    fn a_sold_out_answer_while_units_stay_unsold_fails() {
        const TOL: u64 = FALSE_SOLD_OUT_TOLERANCE_MS;
        // Stock 2: all live from 1,000 ms; o1 cancelled at 10,000 (one
        // unit unsold), o3 reserves it again at 20,000; o2 expires at
        // 30,000 and stays unsold.
        let events = vec![
            at(reserved("o1", "a"), 1_000),
            at(reserved("o2", "b"), 1_000),
            at(ended(released, "o1", "a"), 10_000),
            at(reserved("o3", "c"), 20_000),
            at(ended(paid, "o3", "c"), 21_000),
            at(
                Event::new(
                    0,
                    EventKind::OrderExpired {
                        order_id: "o2".into(),
                        sale_id: "s".into(),
                        user_id: "b".into(),
                        quantity: 1,
                    },
                ),
                30_000,
            ),
        ];
        // While every unit was live, and within the tolerance after a
        // unit came back (the node's view may be that old): right.
        let right = [
            (1_000, 1_001),
            (9_999, 10_002),
            (10_000 + TOL, 10_000 + TOL + 5),
            (20_000, 20_001),
            (25_000, 25_001),
            (30_000 + TOL - 1, 30_000 + TOL + 100),
        ];
        let check = sold_out_check(events.clone(), &right);
        assert_eq!(check.verdict, Verdict::Pass, "{}", check.detail);
        // Units unsold for longer than the tolerance when the request was
        // sent: false, each counted; so is one before the sale ever sold
        // out, and a paid order keeps its unit.
        let wrong = [
            (10_000 + TOL + 1, 10_000 + TOL + 2),
            (35_000, 35_000),
            (500, 600),
        ];
        let check = sold_out_check(events, &wrong);
        assert_eq!(check.verdict, Verdict::Fail, "{}", check.detail);
        assert!(check.detail.starts_with("3 of 3"), "{}", check.detail);
        assert!(
            check.detail.contains("before the stock was ever all live"),
            "{}",
            check.detail
        );
        assert!(
            check.detail.contains("sent at 35000 ms, unsold 5000 ms"),
            "{}",
            check.detail
        );
    }

    #[test]
    fn unreadable_log_fails() {
        let input = AuditInput {
            sale_id: "s",
            stock: 2,
            per_user_limit: 1,
            view: Ok(view(0)),
            acked: &[],
            holders: 0,
            sold_out_answers: 0,
            sold_out_at: &[],
            sold_out_untimed: 0,
            failures: 0,
            unfinished: 0,
            log: Err("corrupt".into()),
        };
        let checks = audit(&input);
        assert!(!passed(&checks));
    }
}
