//! The operator's Prometheus side: `deploy/prometheus/alerts.yml` passes
//! `promtool check rules` (Debian's prometheus package; installed by
//! `scripts/prometheus.sh`), and the Grafana dashboard
//! (`deploy/grafana/seckill.json`) and the alert rules name only metrics a
//! running cluster node exposes on `/metrics`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use seckill_testkit::RedisServer;
use serde_json::{json, Value};

use crate::cluster::cluster_node;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

#[test]
fn the_alert_rules_pass_promtool() {
    let rules = deploy("prometheus/alerts.yml");
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool cannot be run ({e}): run scripts/prometheus.sh \
                 (Debian's prometheus package ships it)"
            )
        });
    assert!(
        out.status.success(),
        "promtool check rules {}:\n{}{}",
        rules.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dashboard_and_alerts_name_only_metrics_a_node_exposes() {
    let grafana: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/seckill.json")).expect("read the dashboard"),
    )
    .expect("the Grafana dashboard is JSON");
    assert!(grafana["title"].is_string(), "no title");
    assert!(grafana["uid"].is_string(), "no uid");
    assert!(grafana["schemaVersion"].is_u64(), "no schemaVersion");
    let panels = grafana["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6, "{} panels", panels.len());
    let mut ids = HashSet::new();
    let mut exprs = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id {p}"
        );
        assert!(p["title"].is_string(), "untitled panel {p}");
        assert!(
            ["timeseries", "stat", "table", "gauge", "bargauge"]
                .contains(&p["type"].as_str().unwrap_or("")),
            "panel type {}",
            p["type"]
        );
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_u64(), "gridPos.{k} of {}", p["title"]);
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} queries nothing", p["title"]);
        for t in targets {
            exprs.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }

    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).expect("read the rules");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    for wanted in [
        "SeckillOversold",
        "SeckillUnavailableRatio",
        "SeckillPurchaseP99OverSlo",
        "SeckillRedisStatsErrors",
        "SeckillRedisUndetermined",
        "SeckillOrderLogFailures",
        "SeckillNodeDown",
        "SeckillSettlerLagging",
    ] {
        assert!(alerts.contains(&wanted), "no alert {wanted}: {alerts:?}");
    }
    let severities = rules
        .lines()
        .filter(|l| l.trim().starts_with("severity: "))
        .count();
    assert_eq!(severities, alerts.len(), "an alert without a severity");
    exprs.extend(
        rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("expr: "))
            .map(str::to_owned),
    );

    // What a cluster node exposes.
    let redis = RedisServer::start();
    let node = cluster_node(&redis, 1, &[]);
    let mut c = node.client();
    c.create_sale("m", &json!({ "stock": 3, "per_user_limit": 1 }));
    let mut text = c.get("/metrics").text();
    // And a Kafka node: the settlers' lag, once measured at the broker.
    let broker = seckill_testkit::kafka::Broker::start();
    let kafka = crate::kafka::kafka_node(&redis, &broker, 2, &[]);
    let mut k = kafka.client();
    text.push_str(&crate::support::eventually(
        Duration::from_secs(20),
        "the settler lag on /metrics",
        || {
            let text = k.get("/metrics").text();
            text.contains("seckill_settler_lag_events ").then_some(text)
        },
    ));
    let exposed: HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or(""))
        .collect();
    for expr in &exprs {
        for name in metric_names(expr) {
            assert!(
                exposed.contains(name.as_str()),
                "{name} (in `{expr}`) is not on /metrics:\n{text}"
            );
        }
    }
}

/// The `seckill_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("seckill_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}
