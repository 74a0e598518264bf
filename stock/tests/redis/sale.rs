use stock::redis::{Created, SaleSwitchState};
use stock::{StockError, Switch};

use crate::{counts, setup, spec};

#[tokio::test]
async fn create_twice_with_the_same_spec_is_same_and_another_spec_is_refused() {
    let (_server, store) = setup().await;
    let s = spec("s1", 100, 2);
    assert_eq!(store.create_sale(&s).await.unwrap(), Created::New);
    assert_eq!(store.create_sale(&s).await.unwrap(), Created::Same);

    let mut other = s.clone();
    other.stock = 200;
    let err = store.create_sale(&other).await.unwrap_err();
    assert!(matches!(err, StockError::InvalidState(_)), "{err:?}");

    // Nothing was overwritten: the stock and the pool are the first spec's.
    let status = store.status("s1").await.unwrap().unwrap();
    assert_eq!(status.spec, s);
    assert_eq!(status.switch, SaleSwitchState::Live);
    assert_eq!(counts(&store, "s1").await, (100, 0, 0));
}

#[tokio::test]
async fn create_does_not_overwrite_a_sale_that_is_selling() {
    let (_server, store) = setup().await;
    let s = spec("s1", 10, 2);
    store.create_sale(&s).await.unwrap();
    store.lease("s1", 1, 3, crate::TIMEOUT).await.unwrap();
    // The same spec again (a second node's PUT) leaves pool and leases alone.
    assert_eq!(store.create_sale(&s).await.unwrap(), Created::Same);
    assert_eq!(counts(&store, "s1").await, (7, 3, 0));
}

#[tokio::test]
async fn sales_are_listed_and_unknown_ones_have_no_status() {
    let (_server, store) = setup().await;
    assert!(store.sale_ids().await.unwrap().is_empty());
    store.create_sale(&spec("b", 1, 1)).await.unwrap();
    store.create_sale(&spec("a", 1, 1)).await.unwrap();
    assert_eq!(store.sale_ids().await.unwrap(), vec!["a", "b"]);
    assert_eq!(store.status("nope").await.unwrap(), None);
}

#[tokio::test]
async fn a_spec_with_an_end_reads_back_the_same() {
    let (_server, store) = setup().await;
    let mut s = spec("s1", 5, 1);
    s.ends_at = Some(s.starts_at + 3600);
    s.payment_timeout_s = 60;
    store.create_sale(&s).await.unwrap();
    assert_eq!(store.status("s1").await.unwrap().unwrap().spec, s);
}

#[tokio::test]
async fn switches_pause_resume_and_close_is_final() {
    let (_server, store) = setup().await;
    store.create_sale(&spec("s1", 5, 1)).await.unwrap();
    let state = |store: &stock::redis::RedisStore| {
        let store = store.clone();
        async move { store.status("s1").await.unwrap().unwrap().switch }
    };

    store.switch("s1", Switch::Pause).await.unwrap();
    assert_eq!(state(&store).await, SaleSwitchState::Paused);
    store.switch("s1", Switch::Pause).await.unwrap();
    store.switch("s1", Switch::Resume).await.unwrap();
    assert_eq!(state(&store).await, SaleSwitchState::Live);
    store.switch("s1", Switch::Close).await.unwrap();
    assert_eq!(state(&store).await, SaleSwitchState::Closed);

    // Closing again is a no-op; anything else is refused.
    store.switch("s1", Switch::Close).await.unwrap();
    for refused in [Switch::Resume, Switch::Pause] {
        let err = store.switch("s1", refused).await.unwrap_err();
        assert!(matches!(err, StockError::InvalidState(_)), "{err:?}");
    }
    assert_eq!(state(&store).await, SaleSwitchState::Closed);

    let err = store.switch("nope", Switch::Pause).await.unwrap_err();
    assert!(matches!(err, StockError::SaleNotFound), "{err:?}");
}
