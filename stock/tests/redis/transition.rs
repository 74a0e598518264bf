use std::time::Duration;

use stock::redis::{Moved, RedisStore, ReserveOutcome};
use stock::{OrderStatus, StockError};

use crate::{call, counts, now_s, setup, spec};

const TTL: Duration = Duration::from_secs(30);

/// A sale of 20 with one reserved order `o1` of `alice` (limit 1), charged
/// to node 1's lease of 5.
async fn one_order(store: &RedisStore) {
    store.create_sale(&spec("s1", 20, 1)).await.unwrap();
    store.lease("s1", 1, 5, TTL).await.unwrap();
    let answers = store.reserve_batch(&[call("s1", 1, "o1", "alice")]).await;
    assert_eq!(answers[0].as_ref().unwrap(), &ReserveOutcome::Reserved);
    assert_eq!(counts(store, "s1").await, (15, 4, 1));
}

#[tokio::test]
async fn cancel_returns_one_unit_to_the_pool_once() {
    let (_server, store) = setup().await;
    one_order(&store).await;

    let moved = store
        .transition("s1", "o1", OrderStatus::Cancelled, now_s())
        .await
        .unwrap();
    let Moved::Changed(order) = moved else {
        panic!("expected Changed, got {moved:?}");
    };
    assert_eq!(order.status, OrderStatus::Cancelled);
    assert_eq!(order.order_id, "o1");
    assert_eq!(counts(&store, "s1").await, (16, 4, 0));

    let again = store
        .transition("s1", "o1", OrderStatus::Cancelled, now_s())
        .await
        .unwrap();
    assert!(matches!(again, Moved::Unchanged(ref o) if o.status == OrderStatus::Cancelled));
    assert_eq!(counts(&store, "s1").await, (16, 4, 0));

    // The user's count dropped: alice may buy again.
    let answers = store.reserve_batch(&[call("s1", 1, "o2", "alice")]).await;
    assert_eq!(answers[0].as_ref().unwrap(), &ReserveOutcome::Reserved);

    // Pay after cancel, expire after cancel: the current status.
    for to in [OrderStatus::Paid, OrderStatus::Expired] {
        let moved = store
            .transition("s1", "o1", to, u64::MAX / 2)
            .await
            .unwrap();
        assert_eq!(moved, Moved::Invalid(OrderStatus::Cancelled));
    }
    assert!(store.due("s1", u64::MAX / 2, 10).await.unwrap() == vec!["o2"]);
}

#[tokio::test]
async fn eight_concurrent_cancels_change_the_order_once() {
    let (_server, store) = setup().await;
    one_order(&store).await;

    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .transition("s1", "o1", OrderStatus::Cancelled, now_s())
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut changed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Moved::Changed(_) => changed += 1,
            Moved::Unchanged(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(changed, 1);
    assert_eq!(counts(&store, "s1").await, (16, 4, 0));
}

#[tokio::test]
async fn expiry_returns_the_unit_once_and_only_after_the_deadline() {
    let (_server, store) = setup().await;
    one_order(&store).await;
    let expires_at = store.order("s1", "o1").await.unwrap().unwrap().expires_at;

    assert!(store
        .due("s1", expires_at - 1, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.due("s1", expires_at, 10).await.unwrap(), vec!["o1"]);

    // Before its deadline (Redis time) an order is not expired.
    let early = store
        .transition("s1", "o1", OrderStatus::Expired, expires_at)
        .await
        .unwrap();
    assert_eq!(early, Moved::Invalid(OrderStatus::Reserved));
    assert_eq!(counts(&store, "s1").await, (15, 4, 1));

    // An order whose deadline passed a second ago.
    let mut due = call("s1", 1, "o2", "bob");
    due.expires_at = now_s() - 1;
    store.reserve_batch(std::slice::from_ref(&due)).await[0]
        .as_ref()
        .unwrap();
    assert_eq!(counts(&store, "s1").await, (15, 3, 2));
    let moved = store
        .transition("s1", "o2", OrderStatus::Expired, 0)
        .await
        .unwrap();
    assert!(matches!(moved, Moved::Changed(ref o) if o.status == OrderStatus::Expired));
    let again = store
        .transition("s1", "o2", OrderStatus::Expired, 0)
        .await
        .unwrap();
    assert!(matches!(again, Moved::Unchanged(_)));
    assert_eq!(counts(&store, "s1").await, (16, 3, 1));
    assert!(store
        .due("s1", due.expires_at, 10)
        .await
        .unwrap()
        .is_empty());

    let cancel = store
        .transition("s1", "o2", OrderStatus::Cancelled, 0)
        .await
        .unwrap();
    assert_eq!(cancel, Moved::Invalid(OrderStatus::Expired));
}

#[tokio::test]
async fn pay_in_time_keeps_the_unit_and_pay_after_the_deadline_is_refused() {
    let (_server, store) = setup().await;
    one_order(&store).await;
    // Its deadline passed a second ago (Redis time decides).
    let mut late = call("s1", 1, "o2", "bob");
    late.expires_at = now_s() - 1;
    store.reserve_batch(std::slice::from_ref(&late)).await[0]
        .as_ref()
        .unwrap();

    let paid = store
        .transition("s1", "o1", OrderStatus::Paid, now_s())
        .await
        .unwrap();
    assert!(matches!(paid, Moved::Changed(ref o) if o.status == OrderStatus::Paid));
    assert!(matches!(
        store
            .transition("s1", "o1", OrderStatus::Paid, now_s())
            .await
            .unwrap(),
        Moved::Unchanged(_)
    ));
    assert_eq!(
        store
            .transition("s1", "o1", OrderStatus::Cancelled, now_s())
            .await
            .unwrap(),
        Moved::Invalid(OrderStatus::Paid)
    );
    // Paid units stay sold and count against the user's limit.
    assert_eq!(counts(&store, "s1").await, (15, 3, 2));
    let answers = store.reserve_batch(&[call("s1", 1, "o3", "alice")]).await;
    assert_eq!(answers[0].as_ref().unwrap(), &ReserveOutcome::LimitExceeded);

    // Past expires_at the payment is refused as expired; the order waits
    // for expiry, which then returns its unit.
    let refused = store
        .transition("s1", "o2", OrderStatus::Paid, late.expires_at)
        .await
        .unwrap();
    assert_eq!(refused, Moved::Invalid(OrderStatus::Expired));
    let order = store.order("s1", "o2").await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Reserved);
    assert_eq!(
        store.due("s1", late.expires_at, 10).await.unwrap(),
        vec!["o2"]
    );
    store
        .transition("s1", "o2", OrderStatus::Expired, late.expires_at)
        .await
        .unwrap();
    assert_eq!(counts(&store, "s1").await, (16, 3, 1));
}

#[tokio::test]
async fn unknown_orders_and_moves_back_to_reserved() {
    let (_server, store) = setup().await;
    one_order(&store).await;
    assert_eq!(
        store
            .transition("s1", "nope", OrderStatus::Cancelled, now_s())
            .await
            .unwrap(),
        Moved::NotFound
    );
    assert_eq!(store.order("s1", "nope").await.unwrap(), None);
    let err = store
        .transition("s1", "o1", OrderStatus::Reserved, now_s())
        .await
        .unwrap_err();
    assert!(matches!(err, StockError::InvalidState(_)), "{err:?}");
}

#[tokio::test]
async fn due_lists_reserved_orders_by_deadline_up_to_the_limit() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 100, 5)).await.unwrap();
    store.lease("s1", 1, 10, TTL).await.unwrap();
    let base = now_s() + 100;
    let calls: Vec<_> = (0..4u64)
        .map(|i| {
            let mut c = call("s1", 1, &format!("o{i}"), "u");
            c.expires_at = base + 3 - i;
            c
        })
        .collect();
    store.reserve_batch(&calls).await;
    assert_eq!(
        store.due("s1", base + 3, 3).await.unwrap(),
        vec!["o3", "o2", "o1"]
    );
    assert_eq!(
        store.due("s1", base + 1, 10).await.unwrap(),
        vec!["o3", "o2"]
    );
}

#[tokio::test]
async fn release_is_a_cancel_that_forgets_the_key_and_happens_once() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 20, 1)).await.unwrap();
    store.lease("s1", 1, 5, TTL).await.unwrap();
    let mut c = call("s1", 1, "o1", "alice");
    c.idempotency_key = Some("k1".into());
    c.fingerprint = 7;
    let answers = store.reserve_batch(&[c.clone()]).await;
    assert_eq!(answers[0].as_ref().unwrap(), &ReserveOutcome::Reserved);

    let released = store.release("s1", "o1").await.unwrap();
    assert!(
        matches!(released, Moved::Changed(ref o) if o.status == OrderStatus::Cancelled),
        "{released:?}"
    );
    assert_eq!(counts(&store, "s1").await, (16, 4, 0));
    // Twice: one unit back, not two.
    let again = store.release("s1", "o1").await.unwrap();
    assert!(matches!(again, Moved::Unchanged(_)), "{again:?}");
    assert_eq!(counts(&store, "s1").await, (16, 4, 0));

    // The key no longer names the released order: a retry is a fresh
    // attempt (a new order id), not a replay of an order never answered.
    let mut retry = c.clone();
    retry.order_id = "o2".into();
    let answers = store.reserve_batch(&[retry]).await;
    assert_eq!(answers[0].as_ref().unwrap(), &ReserveOutcome::Reserved);

    // A paid order is not released.
    store
        .transition("s1", "o2", OrderStatus::Paid, now_s())
        .await
        .unwrap();
    assert_eq!(
        store.release("s1", "o2").await.unwrap(),
        Moved::Invalid(OrderStatus::Paid)
    );
}

#[tokio::test]
async fn a_tracking_store_records_every_change_until_it_is_marked_logged() {
    let (_server, plain) = setup().await;
    let store = plain.clone().tracking_log();
    store.create_sale(&spec("s1", 20, 2)).await.unwrap();
    store.lease("s1", 1, 5, TTL).await.unwrap();
    let answers = store
        .reserve_batch(&[call("s1", 1, "o1", "alice"), call("s1", 1, "o2", "bob")])
        .await;
    assert!(answers
        .iter()
        .all(|a| a.as_ref().unwrap() == &ReserveOutcome::Reserved));
    store
        .transition("s1", "o1", OrderStatus::Paid, now_s())
        .await
        .unwrap();
    store.release("s1", "o2").await.unwrap();
    // A store that does not track adds nothing.
    plain.reserve_batch(&[call("s1", 1, "o3", "carol")]).await[0]
        .as_ref()
        .unwrap();

    let later = store.time_ms().await.unwrap() + 1;
    let mut entries = store.unlogged("s1", later, 100).await.unwrap();
    entries.sort();
    let expect = |o: &str, c: &str| (o.to_owned(), c.to_owned());
    assert_eq!(
        entries,
        vec![
            expect("o1", "paid"),
            expect("o1", "reserved"),
            expect("o2", "released"),
            expect("o2", "reserved"),
        ]
    );
    // Nothing is older than a time before the first change.
    assert!(store.unlogged("s1", 1, 100).await.unwrap().is_empty());

    store
        .mark_logged("s1", &[("o1".into(), "reserved"), ("o1".into(), "paid")])
        .await
        .unwrap();
    // Marking twice (a re-delivered event) is harmless.
    store
        .mark_logged("s1", &[("o1".into(), "reserved")])
        .await
        .unwrap();
    let left = store.unlogged("s1", later, 100).await.unwrap();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().all(|(o, _)| o == "o2"));
}

#[tokio::test]
async fn moves_are_judged_by_redis_time_not_the_callers_clock() {
    let (_server, store) = setup().await;
    one_order(&store).await;
    store.reserve_batch(&[call("s1", 1, "o2", "bob")]).await[0]
        .as_ref()
        .unwrap();
    let expires_at = store.order("s1", "o1").await.unwrap().unwrap().expires_at;
    // A caller whose clock runs an hour fast: the payment window is still
    // open by Redis's clock, and the order is not due yet.
    let skewed = expires_at + 3600;
    let paid = store
        .transition("s1", "o1", OrderStatus::Paid, skewed)
        .await
        .unwrap();
    assert!(
        matches!(paid, Moved::Changed(ref o) if o.status == OrderStatus::Paid),
        "{paid:?}"
    );
    let early = store
        .transition("s1", "o2", OrderStatus::Expired, skewed)
        .await
        .unwrap();
    assert_eq!(early, Moved::Invalid(OrderStatus::Reserved));
    assert_eq!(counts(&store, "s1").await, (15, 3, 2));
}

#[tokio::test]
async fn a_tracked_move_repeats_as_unlogged_until_it_is_marked_logged() {
    let (_server, store) = setup().await;
    let store = store.tracking_moves();
    one_order(&store).await;
    let paid = store
        .transition("s1", "o1", OrderStatus::Paid, 0)
        .await
        .unwrap();
    assert!(matches!(paid, Moved::Changed(_)), "{paid:?}");
    // The log append after it failed: a repeat is told to log it.
    let again = store
        .transition("s1", "o1", OrderStatus::Paid, 0)
        .await
        .unwrap();
    assert!(matches!(again, Moved::Unlogged(ref o) if o.status == OrderStatus::Paid));
    store
        .mark_logged("s1", &[("o1".to_owned(), "paid")])
        .await
        .unwrap();
    let logged = store
        .transition("s1", "o1", OrderStatus::Paid, 0)
        .await
        .unwrap();
    assert!(matches!(logged, Moved::Unchanged(_)), "{logged:?}");
    // Reservations are tracked too (the node removes the entry once its
    // event is durable; else a reconciler takes it); releases are not.
    let reserved = |o: &str| (o.to_owned(), "reserved".to_owned());
    let left = store.unlogged("s1", u64::MAX, 10).await.unwrap();
    assert_eq!(left, vec![reserved("o1")]);
    store.reserve_batch(&[call("s1", 1, "o2", "bob")]).await[0]
        .as_ref()
        .unwrap();
    store.release("s1", "o2").await.unwrap();
    let mut left = store.unlogged("s1", u64::MAX, 10).await.unwrap();
    left.sort();
    assert_eq!(left, vec![reserved("o1"), reserved("o2")]);
}

#[tokio::test]
async fn one_claimer_takes_an_unlogged_change_until_its_claim_comes_due_again() {
    let (_server, store) = setup().await;
    let store = store.tracking_moves();
    one_order(&store).await;
    let grace = Duration::from_millis(300);
    // Too young: no one takes it.
    assert!(store
        .claim_unlogged("s1", grace, 10)
        .await
        .unwrap()
        .is_empty());
    tokio::time::sleep(grace + Duration::from_millis(50)).await;
    let (first, second) = tokio::join!(
        store.claim_unlogged("s1", grace, 10),
        store.claim_unlogged("s1", grace, 10)
    );
    let mut taken = first.unwrap();
    taken.extend(second.unwrap());
    assert_eq!(taken, vec![("o1".to_owned(), "reserved".to_owned())]);
    // Still in the set (a repeat of a move still finds it): a claimer that
    // died loses nothing, its claim comes due again after the grace.
    assert_eq!(store.unlogged("s1", u64::MAX, 10).await.unwrap().len(), 1);
    assert!(store
        .claim_unlogged("s1", grace, 10)
        .await
        .unwrap()
        .is_empty());
    tokio::time::sleep(grace + Duration::from_millis(50)).await;
    assert_eq!(
        store.claim_unlogged("s1", grace, 10).await.unwrap().len(),
        1
    );
    store
        .mark_logged("s1", &[("o1".to_owned(), "reserved")])
        .await
        .unwrap();
    tokio::time::sleep(grace + Duration::from_millis(50)).await;
    assert!(store
        .claim_unlogged("s1", grace, 10)
        .await
        .unwrap()
        .is_empty());
}
