//! `KafkaLog` under injected faults, on librdkafka's in-process mock
//! cluster (the tests of the real broker are in `seckill/tests/node/kafka.rs`
//! and `queue/tests/kafka_broker.rs`): an append resolves only on its
//! delivery report; a refused produce is `Unavailable` (nothing recorded);
//! a produce whose answer never comes is `Undetermined`, within the
//! configured delivery timeout.

use std::time::{Duration, Instant};

use queue::{Event, EventKind, KafkaLog, KafkaOptions, LogError, OrderLog};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn reserved(n: u32) -> Event {
    Event::new(
        1_000,
        EventKind::OrderReserved {
            order_id: format!("1-{n}-s"),
            sale_id: "s".into(),
            user_id: format!("u{n}"),
            quantity: 1,
            expires_at: 2_000,
            idempotency_key: None,
            fingerprint: None,
        },
    )
}

fn log_on(cluster: &MockCluster<'_, DefaultProducerContext>, timeout: Duration) -> KafkaLog {
    cluster.create_topic("orders", 3, 1).expect("mock topic");
    let mut opts = KafkaOptions::new(cluster.bootstrap_servers());
    opts.topic = "orders".into();
    opts.partitions = 3;
    opts.message_timeout = timeout;
    KafkaLog::connect(&opts).expect("connect to the mock cluster")
}

#[tokio::test]
async fn appends_resolve_on_delivery() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let log = log_on(&cluster, Duration::from_secs(5));
    let events: Vec<Event> = (0..100).map(reserved).collect();
    let appends: Vec<_> = events.iter().map(|e| log.append(e)).collect();
    for a in appends {
        a.await.expect("delivered");
    }
    log.close();
}

#[tokio::test]
async fn a_refused_produce_is_unavailable() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let log = log_on(&cluster, Duration::from_secs(5));
    log.append(&reserved(0)).await.expect("delivered");
    // A permanent refusal: the record is not written.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let err = log.append(&reserved(1)).await.expect_err("refused");
    assert!(matches!(err, LogError::Unavailable(_)), "{err:?}");
    assert_eq!(err.code(), "unavailable");
}

#[tokio::test]
async fn a_produce_without_an_answer_is_undetermined_within_the_timeout() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let timeout = Duration::from_millis(1_500);
    let log = log_on(&cluster, timeout);
    log.append(&reserved(0)).await.expect("delivered");
    cluster.broker_down(1).expect("broker down");
    let started = Instant::now();
    let err = log.append(&reserved(1)).await.expect_err("no broker");
    assert!(matches!(err, LogError::Undetermined(_)), "{err:?}");
    assert!(
        started.elapsed() < timeout + Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // The broker back: appends go through again.
    cluster.broker_up(1).expect("broker up");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match log.append(&reserved(2)).await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "still failing: {e}"),
        }
    }
}
