//! The audit against the Kafka order topic of cluster mode, on a real
//! broker (tansu, `seckill_testkit::kafka::Broker`; `scripts/kafka.sh`
//! installs it): a clean sale passes on a topic shared with another sale, a
//! redelivered event passes (at least once), a lost order, an oversell, a
//! conflicting second record of an order and a key with two orders fail;
//! an unreadable topic fails within its time bound.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bench::admin;
use bench::audit::{audit, AuditInput, Verdict};
use bench::cli::Cli;
use bench::orderlog::{KafkaTopic, LogSpec, OrderLogSource};
use bench::Recorder;
use clap::Parser;
use queue::{Event, EventKind};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use seckill_testkit::kafka::Broker;

use crate::audit::{run_cli_without, verdicts};
use crate::support::{clean_sale_load, exclusive, FakeNode, Fault};

const TOPIC: &str = "seckill.orders";

/// A broker with the order topic (3 partitions, so the audit merges them).
fn broker() -> Broker {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 3);
    broker
}

/// `seckill-bench run` (the journal test's flags) audited against the topic.
fn run_on_kafka(
    node: &FakeNode,
    broker: &Broker,
    more: &[(&str, &str)],
) -> (i32, bench::report::RunRecord) {
    let bootstrap = broker.bootstrap();
    let mut overrides = vec![("--kafka", bootstrap.as_str())];
    overrides.extend_from_slice(more);
    run_cli_without(node, &overrides, &["--journal"])
}

fn read_topic(broker: &Broker, topic: &str) -> Result<bench::orderlog::LogContents, String> {
    LogSpec::Kafka {
        brokers: broker.bootstrap(),
        topic: topic.into(),
    }
    .source()
    .read()
    .map_err(|e| e.to_string())
}

#[test]
fn a_clean_sale_on_a_shared_topic_passes() {
    let _one = exclusive();
    let broker = broker();
    let node = FakeNode::start_kafka(Fault::None, &broker.bootstrap(), TOPIC);
    // Two sales on one topic, bought by the same users (u<n>, limit 1):
    // each audit counts its own sale only.
    for sale in ["s1", "s2"] {
        let (code, record) = run_on_kafka(&node, &broker, &[("--sale", sale)]);
        let v = verdicts(&record);
        assert_eq!(code, 0, "{sale}: {:#?}", record.audit);
        assert_eq!(v.len(), 9);
        assert!(
            v.values().all(|v| *v == Verdict::Pass),
            "{sale}: {:#?}",
            record.audit
        );
        assert_eq!(record.summary.as_ref().unwrap().orders_acked, 50);
        assert_eq!(
            record.config["order_log"],
            serde_json::json!({"kind": "kafka", "brokers": broker.bootstrap(), "topic": TOPIC})
        );
    }
    let log = read_topic(&broker, TOPIC).unwrap();
    assert_eq!(log.events.len(), 102, "both sales and their orders");
    assert_eq!(log.redeliveries, 0);
}

/// The `log_readable` check's detail: "N events, ...".
fn events_read(record: &bench::report::RunRecord) -> u64 {
    let readable = record
        .audit
        .iter()
        .find(|c| c.name == "log_readable")
        .expect("a log_readable check");
    readable
        .detail
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {:?}", readable.detail))
}

#[test]
fn a_run_that_creates_its_sale_reads_the_topic_from_its_creation_on() {
    let _one = exclusive();
    let broker = broker();
    let node = FakeNode::start_kafka(Fault::None, &broker.bootstrap(), TOPIC);
    // Three runs, each on a new sale: each audit reads only what came after
    // the topic's high watermarks taken before it created its sale (its
    // sale_created and 50 orders), not the earlier runs' events.
    for sale in ["m1", "m2", "m3"] {
        let (code, record) = run_on_kafka(&node, &broker, &[("--sale", sale)]);
        assert_eq!(code, 0, "{sale}: {:#?}", record.audit);
        assert_eq!(events_read(&record), 51, "{sale}: {:#?}", record.audit);
    }
    // A sale whose creation is not in the marked range (made on another
    // node, say): the audit falls back to the whole topic, here 10 orders
    // of another sale and this run's 50.
    let broker = self::broker();
    write_events(
        &broker,
        TOPIC,
        &(1..=10).map(order_of_x).collect::<Vec<_>>(),
    );
    let silent = FakeNode::start_kafka(Fault::SilentCreate, &broker.bootstrap(), TOPIC);
    let (code, record) = run_on_kafka(&silent, &broker, &[("--sale", "m4")]);
    assert_eq!(code, 0, "{:#?}", record.audit);
    assert_eq!(events_read(&record), 60, "{:#?}", record.audit);
}

/// Order `x<n>` of sale `x` by user `u<n>`, at time n.
fn order_of_x(n: u64) -> Event {
    Event::new(
        n,
        EventKind::OrderReserved {
            order_id: format!("x{n}"),
            sale_id: "x".into(),
            user_id: format!("u{n}"),
            quantity: 1,
            expires_at: 9,
            idempotency_key: None,
            fingerprint: None,
        },
    )
}

#[test]
fn a_read_from_a_mark_sees_only_later_events() {
    let _one = exclusive();
    let broker = broker();
    write_events(
        &broker,
        TOPIC,
        &(1..=10).map(order_of_x).collect::<Vec<_>>(),
    );
    let mut topic = KafkaTopic::new(&broker.bootstrap(), TOPIC);
    let mark = topic.high_watermarks().unwrap();
    assert_eq!(mark.len(), 3, "every partition: {mark:?}");
    assert_eq!(mark.values().sum::<i64>(), 10);
    write_events(
        &broker,
        TOPIC,
        &(11..=15).map(order_of_x).collect::<Vec<_>>(),
    );
    topic.from = mark;
    let later: Vec<u64> = topic.read().unwrap().events.iter().map(|e| e.at).collect();
    assert_eq!(later, [11, 12, 13, 14, 15]);
    topic.from.clear();
    assert_eq!(topic.read().unwrap().events.len(), 15);
}

#[test]
fn a_redelivered_event_passes_on_kafka_and_fails_in_a_journal() {
    let _one = exclusive();
    let broker = broker();
    let node = FakeNode::start_kafka(Fault::Redeliver(7), &broker.bootstrap(), TOPIC);
    let (code, record) = run_on_kafka(&node, &broker, &[]);
    assert_eq!(code, 0, "{:#?}", record.audit);
    assert!(verdicts(&record).values().all(|v| *v == Verdict::Pass));
    let log = read_topic(&broker, TOPIC).unwrap();
    assert_eq!((log.events.len(), log.redeliveries), (51, 7));
    let readable = &record.audit[0];
    assert!(
        readable.detail.contains("7 redeliveries"),
        "{}",
        readable.detail
    );
    // The same fault in a journal (exactly once) is a double-logged order.
    let node = FakeNode::start(Fault::Redeliver(7));
    let (code, record) = crate::audit::run_cli(&node, &[]);
    assert_eq!(code, 1);
    let v = verdicts(&record);
    assert_eq!(v["acked_orders_logged_once"], Verdict::Fail);
    assert_eq!(v["no_oversell"], Verdict::Fail);
}

#[test]
fn a_lost_order_fails_on_kafka() {
    let _one = exclusive();
    let broker = broker();
    let node = FakeNode::start_kafka(Fault::LoseEvery(10), &broker.bootstrap(), TOPIC);
    let (code, record) = run_on_kafka(&node, &broker, &[]);
    let v = verdicts(&record);
    assert_eq!(code, 1);
    assert_eq!(v["log_readable"], Verdict::Pass, "{:#?}", record.audit);
    assert_eq!(
        v["acked_orders_logged_once"],
        Verdict::Fail,
        "{:#?}",
        record.audit
    );
    assert_eq!(v["sold_matches_log"], Verdict::Fail);
}

#[test]
fn an_oversell_fails_on_kafka() {
    let _one = exclusive();
    let broker = broker();
    let node = FakeNode::start_kafka(Fault::Oversell(3), &broker.bootstrap(), TOPIC);
    let (code, record) = run_on_kafka(&node, &broker, &[]);
    let v = verdicts(&record);
    assert_eq!(code, 1);
    assert_eq!(v["no_oversell"], Verdict::Fail, "{:#?}", record.audit);
    assert!(
        record.audit[1].detail.contains("the log holds"),
        "{}",
        record.audit[1].detail
    );
}

/// Writes `payloads` (key, value) to a fresh topic with a plain producer.
fn write_topic(broker: &Broker, topic: &str, payloads: &[(String, Vec<u8>)]) {
    broker.create_topic(topic, 3);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "1")
        .create()
        .unwrap();
    for (key, value) in payloads {
        producer
            .send(BaseRecord::to(topic).key(key).payload(value))
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(20)).unwrap();
}

fn write_events(broker: &Broker, topic: &str, events: &[Event]) {
    let payloads: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| (e.kind.key().to_string(), e.to_json()))
        .collect();
    write_topic(broker, topic, &payloads);
}

/// Drives a clean fake node from the library, then audits doctored copies
/// of its orders, each written to a topic of its own.
#[test]
fn doctored_copies_of_the_topic_fail_and_redeliveries_do_not() {
    let _one = exclusive();
    let broker = broker();
    // Orders only on the topic: the copies below add their own sale event.
    let node = FakeNode::start_kafka(Fault::SilentCreate, &broker.bootstrap(), TOPIC);
    let rec = clean_sale_load(node.addr());
    let check = |topic: &str, rec: &Recorder| {
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
            log: read_topic(&broker, topic),
        };
        audit(&input)
            .into_iter()
            .map(|c| (c.name, c.verdict))
            .collect::<BTreeMap<_, _>>()
    };
    let clean = check(TOPIC, &rec);
    assert!(clean.values().all(|v| *v == Verdict::Pass), "{clean:?}");
    let events = read_topic(&broker, TOPIC).unwrap().events;
    assert_eq!(events.len(), 20);

    // Every event delivered twice and a sale event between them: one
    // order each, still clean.
    let mut twice = events.clone();
    twice.extend(events.iter().cloned());
    let mut payloads: Vec<(String, Vec<u8>)> = twice
        .iter()
        .map(|e| (e.kind.key().to_string(), e.to_json()))
        .collect();
    let created = Event::new(
        1,
        EventKind::SaleCreated {
            sale_id: "s2".into(),
            stock: 20,
            per_user_limit: 1,
            starts_at: 0,
            ends_at: None,
            payment_timeout_s: 900,
            ticket_required: false,
        },
    );
    payloads.push(("s2".into(), created.to_json()));
    write_topic(&broker, "copy-twice", &payloads);
    let log = read_topic(&broker, "copy-twice").unwrap();
    assert_eq!((log.events.len(), log.redeliveries), (21, 20));
    let v = check("copy-twice", &rec);
    assert!(v.values().all(|v| *v == Verdict::Pass), "{v:?}");

    // An event this build cannot read (a newer schema version, or not an
    // event at all) among them: the audit cannot account for it, so the
    // log is unreadable, never "that order is absent".
    let mut newer: serde_json::Value = serde_json::from_slice(&events[0].to_json()).unwrap();
    newer["v"] = 2.into();
    for (topic, odd) in [
        ("copy-newer", newer.to_string().into_bytes()),
        ("copy-garbage", b"\x00\x01 not an event".to_vec()),
    ] {
        let mut payloads = payloads.clone();
        payloads.push((events[0].kind.key().to_string(), odd));
        write_topic(&broker, topic, &payloads);
        let err = read_topic(&broker, topic).expect_err(topic);
        assert!(err.contains("offset"), "{topic}: {err}");
        let v = check(topic, &rec);
        assert_eq!(v["log_readable"], Verdict::Fail, "{topic}: {v:?}");
    }

    // One order missing from the topic: a lost acknowledgement.
    write_events(&broker, "copy-lost", &events[1..]);
    let v = check("copy-lost", &rec);
    assert_eq!(v["acked_orders_logged_once"], Verdict::Fail);
    assert_eq!(v["sold_matches_log"], Verdict::Fail);

    // A second, different record of one order (another user): not a
    // redelivery but an order logged twice, and a unit too many.
    let mut conflicting = events.clone();
    let mut other = events[3].clone();
    if let EventKind::OrderReserved { user_id, .. } = &mut other.kind {
        user_id.push_str("-other");
    }
    conflicting.push(other);
    write_events(&broker, "copy-conflict", &conflicting);
    let v = check("copy-conflict", &rec);
    assert_eq!(v["acked_orders_logged_once"], Verdict::Fail);
    assert_eq!(v["no_oversell"], Verdict::Fail);

    // The same user and key reserved again under another order id: two
    // orders for one key, over the limit, oversold.
    let mut split = events.clone();
    let mut again = events[5].clone();
    if let EventKind::OrderReserved { order_id, .. } = &mut again.kind {
        order_id.push_str("-again");
    }
    split.push(again);
    write_events(&broker, "copy-split", &split);
    let v = check("copy-split", &rec);
    assert_eq!(v["idempotency"], Verdict::Fail);
    assert_eq!(v["per_user_limit"], Verdict::Fail);
    assert_eq!(v["no_oversell"], Verdict::Fail);

    // A message that is not an event: the log is unreadable.
    let mut garbage: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| (e.kind.key().to_string(), e.to_json()))
        .collect();
    garbage.insert(4, ("k".into(), b"not json".to_vec()));
    write_topic(&broker, "copy-garbage", &garbage);
    let err = read_topic(&broker, "copy-garbage").unwrap_err();
    assert!(err.contains("is not JSON"), "{err}");
    let v = check("copy-garbage", &rec);
    assert_eq!(v["log_readable"], Verdict::Fail);
    assert_eq!(v["acked_orders_logged_once"], Verdict::Fail);
}

#[test]
fn a_missing_topic_or_broker_fails_in_bounded_time() {
    let _one = exclusive();
    let broker = broker();
    let err = read_topic(&broker, "no-such-topic").unwrap_err();
    assert!(err.contains("no-such-topic"), "{err}");
    // An empty topic is an empty log.
    broker.create_topic("empty", 2);
    assert_eq!(read_topic(&broker, "empty").unwrap().events.len(), 0);
    // Nothing listening: an error within the bound, not a hang.
    let port = broker.port();
    drop(broker);
    let mut source = KafkaTopic::new(&format!("127.0.0.1:{port}"), TOPIC);
    source.timeout = Duration::from_secs(3);
    let started = Instant::now();
    let err = source.read().unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    assert!(err.contains(&port.to_string()), "{err}");
}

#[test]
fn journal_and_kafka_are_exclusive_flags() {
    let parse = |extra: &[&str]| {
        let mut args = vec!["seckill-bench", "run"];
        args.extend_from_slice(extra);
        Cli::try_parse_from(args)
    };
    let err = parse(&["--journal", "/tmp/j", "--kafka", "127.0.0.1:9092"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--journal") && err.contains("--kafka"),
        "{err}"
    );
    let err = parse(&["--kafka-topic", "t"]).unwrap_err().to_string();
    assert!(err.contains("--kafka"), "{err}");
    let cli = parse(&["--kafka", "127.0.0.1:9092"]).unwrap();
    let bench::cli::Command::Run(args) = cli.command else {
        panic!("not run")
    };
    assert_eq!(
        args.common.order_log(),
        Some(LogSpec::Kafka {
            brokers: "127.0.0.1:9092".into(),
            topic: TOPIC.into()
        })
    );
}
