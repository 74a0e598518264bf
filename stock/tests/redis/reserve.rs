use std::time::Duration;

use stock::redis::{ReserveCall, ReserveOutcome};
use stock::{OrderStatus, StockError, Switch};

use crate::{call, counts, setup, spec};

const TTL: Duration = Duration::from_secs(30);

fn with_key(mut c: ReserveCall, key: &str, fingerprint: u64) -> ReserveCall {
    c.idempotency_key = Some(key.to_owned());
    c.fingerprint = fingerprint;
    c
}

fn outcomes(results: Vec<Result<ReserveOutcome, StockError>>) -> Vec<ReserveOutcome> {
    results.into_iter().map(|r| r.expect("reserve")).collect()
}

#[tokio::test]
async fn the_per_user_limit_holds_across_two_nodes() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 100, 2)).await.unwrap();
    store.lease("s1", 1, 10, TTL).await.unwrap();
    store.lease("s1", 2, 10, TTL).await.unwrap();

    let first = store
        .reserve_batch(&[call("s1", 1, "o1", "alice"), call("s1", 2, "o2", "alice")])
        .await;
    assert_eq!(
        outcomes(first),
        [ReserveOutcome::Reserved, ReserveOutcome::Reserved]
    );
    let more = store
        .reserve_batch(&[
            call("s1", 2, "o3", "alice"),
            call("s1", 1, "o4", "alice"),
            call("s1", 1, "o5", "bob"),
        ])
        .await;
    assert_eq!(
        outcomes(more),
        [
            ReserveOutcome::LimitExceeded,
            ReserveOutcome::LimitExceeded,
            ReserveOutcome::Reserved
        ]
    );
    // A refused reservation charges nothing.
    assert_eq!(counts(&store, "s1").await, (80, 17, 3));

    // Quantity counts against the limit too.
    let mut two = call("s1", 1, "o6", "carol");
    two.quantity = 3;
    assert_eq!(
        outcomes(store.reserve_batch(&[two]).await),
        [ReserveOutcome::LimitExceeded]
    );
}

/// One script call decides its reservations in order, each seeing what the
/// earlier ones wrote (the script reads Redis once for the batch and keeps
/// its own writes until the end): the per-user limit, a key recorded and
/// replayed, an order id given twice.
#[tokio::test]
async fn a_batch_sees_what_its_earlier_reservations_wrote() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 100, 2)).await.unwrap();
    store.lease("s1", 1, 10, TTL).await.unwrap();

    let keyed = with_key(call("s1", 1, "o4", "bob"), "k1", 0xfeed);
    let batch = [
        call("s1", 1, "o1", "alice"),
        call("s1", 1, "o2", "alice"),
        call("s1", 1, "o3", "alice"),
        keyed.clone(),
        with_key(call("s1", 1, "o5", "bob"), "k1", 0xfeed),
        with_key(call("s1", 1, "o6", "bob"), "k1", 0xbeef),
        call("s1", 1, "o1", "alice"),
        call("s1", 1, "o7", "bob"),
        call("s1", 1, "o8", "bob"),
    ];
    let answers = outcomes(store.reserve_batch(&batch).await);
    assert_eq!(
        answers[..4],
        [
            ReserveOutcome::Reserved,
            ReserveOutcome::Reserved,
            ReserveOutcome::LimitExceeded,
            ReserveOutcome::Reserved,
        ]
    );
    assert!(
        matches!(&answers[4], ReserveOutcome::Replay(o) if o.order_id == "o4"),
        "{answers:?}"
    );
    assert_eq!(
        answers[5..],
        [
            ReserveOutcome::KeyReused,
            ReserveOutcome::Reserved,
            ReserveOutcome::Reserved,
            ReserveOutcome::LimitExceeded,
        ]
    );
    // o1, o2, o4, o7 charged once each.
    assert_eq!(counts(&store, "s1").await, (90, 6, 4));
    for (order, user) in [
        ("o1", "alice"),
        ("o2", "alice"),
        ("o4", "bob"),
        ("o7", "bob"),
    ] {
        let order = store.order("s1", order).await.unwrap().unwrap();
        assert_eq!(order.user_id, user);
        assert_eq!(order.status, OrderStatus::Reserved);
    }
    for order in ["o3", "o5", "o6", "o8"] {
        assert!(store.order("s1", order).await.unwrap().is_none(), "{order}");
    }
    // The next batch reads what this one wrote: the holdings, the key.
    let next = [
        call("s1", 1, "o9", "alice"),
        with_key(call("s1", 1, "o10", "bob"), "k1", 0xfeed),
    ];
    let answers = outcomes(store.reserve_batch(&next).await);
    assert_eq!(answers[0], ReserveOutcome::LimitExceeded);
    assert!(
        matches!(&answers[1], ReserveOutcome::Replay(o) if o.order_id == "o4"),
        "{answers:?}"
    );
    assert_eq!(counts(&store, "s1").await, (90, 6, 4));
}

#[tokio::test]
async fn a_key_replays_its_order_and_refuses_another_request() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 100, 5)).await.unwrap();
    store.lease("s1", 1, 10, TTL).await.unwrap();

    let first = with_key(call("s1", 1, "o1", "alice"), "k1", 0xfeed);
    assert_eq!(
        outcomes(store.reserve_batch(std::slice::from_ref(&first)).await),
        [ReserveOutcome::Reserved]
    );

    // Same key and fingerprint under a new order id (another node's retry):
    // the first order comes back, nothing is charged.
    let retry = with_key(call("s1", 2, "o2", "alice"), "k1", 0xfeed);
    let reused = with_key(call("s1", 1, "o3", "alice"), "k1", 0xbeef);
    let answers = outcomes(store.reserve_batch(&[retry, reused]).await);
    match &answers[0] {
        ReserveOutcome::Replay(order) => {
            assert_eq!(order.order_id, "o1");
            assert_eq!(order.sale_id, "s1");
            assert_eq!(order.user_id, "alice");
            assert_eq!(order.quantity, 1);
            assert_eq!(order.status, OrderStatus::Reserved);
            assert_eq!(order.expires_at, first.expires_at);
        }
        other => panic!("expected a replay, got {other:?}"),
    }
    assert_eq!(answers[1], ReserveOutcome::KeyReused);
    assert_eq!(counts(&store, "s1").await, (90, 9, 1));

    // The replay still works once the sale is closed.
    store.switch("s1", Switch::Close).await.unwrap();
    let late = with_key(call("s1", 1, "o4", "alice"), "k1", 0xfeed);
    assert!(matches!(
        &outcomes(store.reserve_batch(&[late]).await)[0],
        ReserveOutcome::Replay(order) if order.order_id == "o1"
    ));
}

#[tokio::test]
async fn a_short_lease_answers_no_lease() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 100, 5)).await.unwrap();
    assert_eq!(store.lease("s1", 1, 2, TTL).await.unwrap().granted, 2);

    let mut three = call("s1", 1, "o1", "alice");
    three.quantity = 3;
    let answers = store
        .reserve_batch(&[
            three,
            call("s1", 7, "o2", "bob"),
            call("s1", 1, "o3", "carol"),
        ])
        .await;
    assert_eq!(
        outcomes(answers),
        [
            ReserveOutcome::NoLease,
            ReserveOutcome::NoLease,
            ReserveOutcome::Reserved
        ]
    );
    assert_eq!(counts(&store, "s1").await, (98, 1, 1));
    assert_eq!(store.order("s1", "o1").await.unwrap(), None);
}

#[tokio::test]
async fn retrying_the_same_order_id_charges_once() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 100, 5)).await.unwrap();
    store.lease("s1", 1, 10, TTL).await.unwrap();

    let c = with_key(call("s1", 1, "o1", "alice"), "k1", 7);
    // In one batch and across batches: the order is written once.
    let answers = store.reserve_batch(&[c.clone(), c.clone()]).await;
    assert_eq!(
        outcomes(answers),
        [ReserveOutcome::Reserved, ReserveOutcome::Reserved]
    );
    let again = store.reserve_batch(&[c]).await;
    assert_eq!(outcomes(again), [ReserveOutcome::Reserved]);
    assert_eq!(counts(&store, "s1").await, (90, 9, 1));

    let order = store.order("s1", "o1").await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Reserved);
    assert_eq!(order.shard, 0);
}

#[tokio::test]
async fn classic_mode_takes_from_the_pool_until_sold_out() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 3, 1)).await.unwrap();
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let mut c = call("s1", 1, &format!("o{i}"), &format!("u{i}"));
            c.from_pool = true;
            c
        })
        .collect();
    let answers = outcomes(store.reserve_batch(&calls).await);
    assert_eq!(
        answers,
        [
            ReserveOutcome::Reserved,
            ReserveOutcome::Reserved,
            ReserveOutcome::Reserved,
            ReserveOutcome::SoldOut,
            ReserveOutcome::SoldOut
        ]
    );
    assert_eq!(counts(&store, "s1").await, (0, 0, 3));
}

#[tokio::test]
async fn a_paused_closed_or_unstarted_sale_is_not_open() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 10, 1)).await.unwrap();
    store.lease("s1", 1, 5, TTL).await.unwrap();
    store.switch("s1", Switch::Pause).await.unwrap();
    assert_eq!(
        outcomes(store.reserve_batch(&[call("s1", 1, "o1", "a")]).await),
        [ReserveOutcome::SaleNotOpen]
    );
    store.switch("s1", Switch::Resume).await.unwrap();
    assert_eq!(
        outcomes(store.reserve_batch(&[call("s1", 1, "o1", "a")]).await),
        [ReserveOutcome::Reserved]
    );
    store.switch("s1", Switch::Close).await.unwrap();
    assert_eq!(
        outcomes(store.reserve_batch(&[call("s1", 1, "o2", "b")]).await),
        [ReserveOutcome::SaleNotOpen]
    );

    let mut later = spec("s2", 10, 1);
    later.starts_at = crate::now_s() + 3600;
    store.create_sale(&later).await.unwrap();
    let mut early = call("s2", 1, "o3", "c");
    early.from_pool = true;
    let mut ended = spec("s3", 10, 1);
    ended.ends_at = Some(crate::now_s() - 1);
    store.create_sale(&ended).await.unwrap();
    let mut late = call("s3", 1, "o4", "d");
    late.from_pool = true;
    assert_eq!(
        outcomes(store.reserve_batch(&[early, late]).await),
        [ReserveOutcome::SaleNotOpen, ReserveOutcome::SaleNotOpen]
    );
}

#[tokio::test]
async fn an_unknown_sale_is_not_found_and_the_rest_of_the_batch_goes_on() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 10, 1)).await.unwrap();
    store.lease("s1", 1, 5, TTL).await.unwrap();
    let answers = store
        .reserve_batch(&[call("nope", 1, "o1", "a"), call("s1", 1, "o2", "b")])
        .await;
    assert!(
        matches!(answers[0], Err(StockError::SaleNotFound)),
        "{answers:?}"
    );
    assert_eq!(answers[1].as_ref().unwrap(), &ReserveOutcome::Reserved);
    assert!(store.reserve_batch(&[]).await.is_empty());
}

#[tokio::test]
async fn ids_that_need_escaping_read_back_the_same_everywhere() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 100, 5)).await.unwrap();
    store.lease("s1", 1, 10, TTL).await.unwrap();
    // reserve.lua writes the order record by hand, quoting ids as they are
    // when they need no escaping: these do.
    let awkward = [
        ("o1", r#"al"ice"#, r#"k"1"#),
        ("o2", r"b\ob", r"k\2"),
        ("o3", "zoë/東京", "k/3"),
        ("o4", "plain-user_1.x:y", "k4"),
    ];
    for (order_id, user_id, key) in awkward {
        let c = with_key(call("s1", 1, order_id, user_id), key, 0xabc);
        assert_eq!(
            outcomes(store.reserve_batch(std::slice::from_ref(&c)).await),
            [ReserveOutcome::Reserved],
            "{user_id}"
        );
        // Read back as stored, as replayed by its key, and after a move
        // by transition.lua (which decodes and re-encodes the record).
        let order = store.order("s1", order_id).await.unwrap().expect("stored");
        assert_eq!((order.user_id.as_str(), order.quantity), (user_id, 1));
        assert_eq!(order.status, OrderStatus::Reserved);
        assert_eq!(order.expires_at, c.expires_at);
        let retry = with_key(call("s1", 2, "other", user_id), key, 0xabc);
        match &outcomes(store.reserve_batch(&[retry]).await)[0] {
            ReserveOutcome::Replay(o) => {
                assert_eq!(
                    (o.order_id.as_str(), o.user_id.as_str()),
                    (order_id, user_id)
                )
            }
            other => panic!("expected a replay for {user_id}, got {other:?}"),
        }
        let moved = store
            .transition("s1", order_id, OrderStatus::Paid, crate::now_s())
            .await
            .unwrap();
        assert!(
            matches!(&moved, stock::redis::Moved::Changed(o) if o.user_id == user_id),
            "{moved:?}"
        );
    }
    assert_eq!(counts(&store, "s1").await, (90, 6, 4));
}

/// Whoever logs an `order_reserved` from Redis's record (the settler, a
/// node's reconciler) needs the key's fingerprint as well as the key.
#[tokio::test]
async fn a_keyed_order_record_holds_its_key_and_fingerprint() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 100, 5)).await.unwrap();
    store.lease("s1", 1, 10, TTL).await.unwrap();
    let keyed = with_key(call("s1", 1, "o1", "alice"), "k1", 0xfeed);
    let plain = call("s1", 1, "o2", "bob");
    assert_eq!(
        outcomes(store.reserve_batch(&[keyed, plain]).await),
        [ReserveOutcome::Reserved, ReserveOutcome::Reserved]
    );
    // The fingerprint as the nodes log it: lower-case hex.
    assert_eq!(
        store.order_key("s1", "o1").await.unwrap(),
        Some(("k1".to_owned(), Some("feed".to_owned())))
    );
    assert_eq!(store.order_key("s1", "o2").await.unwrap(), None);
    // The record still reads as an order.
    let order = store.order("s1", "o1").await.unwrap().expect("the order");
    assert_eq!(order.user_id, "alice");
}
