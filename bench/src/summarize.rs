//! `seckill-bench summarize`: the medians over rounds, and the ratios
//! between them, that the bench scripts print (so that no script parses
//! its own output by column).
//!
//! Inputs, any number, in any mix:
//! - a CSV file of `label,metric,value` rows, one round's measurement a row
//!   (a `label,metric,value` header and `#` comment lines are skipped): what
//!   a script appends as it goes (`echo "healthz,rps,$rps" >>rounds.csv`);
//! - `LABEL=FILE.json`: one harness run record (`seckill-bench run --out`)
//!   gives `throughput_rps`, `orders_per_s` (200s per second), `ok`,
//!   `other`, `completed`, `p50_ms`, `p99_ms` and `audit_failed` (failed
//!   checks); `kafka-ceiling`'s line the same names (`orders_per_s`, `ok`,
//!   `other`, `p50_ms`, `p99_ms`, and `consumed_per_s`, `caught_up` with a
//!   reader); any other JSON object its numeric top-level fields.
//!
//! Output: one line per label and metric — the median (of an even count,
//! the mean of the middle two) and the rounds — then one line per
//! `--ratio A/B:METRIC`, the ratio of the medians. `--rows` prints the
//! inputs' rows as CSV instead, for a script's record of its rounds.

use std::fmt::Write as _;
use std::path::Path;

use clap::Args;
use serde_json::Value;

use crate::report::RunRecord;
use crate::BenchError;

#[derive(Debug, Args)]
pub struct SummarizeArgs {
    /// CSV files of `label,metric,value` rows, or `LABEL=RUN.json`.
    #[arg(required = true)]
    pub inputs: Vec<String>,
    /// `A/B:METRIC`: A's median METRIC over B's (repeatable).
    #[arg(long = "ratio", value_name = "A/B:METRIC")]
    pub ratios: Vec<String>,
    /// Only these metrics (repeatable; default every one).
    #[arg(long = "metric", value_name = "METRIC")]
    pub metrics: Vec<String>,
    /// `NAME=A/B`: a metric per round, A over B of the same label and
    /// round (the n-th A over the n-th B; a zero B gives no value).
    #[arg(long = "derive", value_name = "NAME=A/B")]
    pub derive: Vec<String>,
    /// Print the inputs' rows as `label,metric,value` CSV, no medians.
    #[arg(long)]
    pub rows: bool,
}

/// One measurement of one round.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub label: String,
    pub metric: String,
    pub value: f64,
}

/// Runs `summarize`: the text it prints.
pub fn summarize(args: &SummarizeArgs) -> Result<String, BenchError> {
    let mut rows = Vec::new();
    for input in &args.inputs {
        rows.extend(read_input(input)?);
    }
    for spec in &args.derive {
        let (name, a, b) = parse_derive(spec)?;
        rows.extend(derive(&rows, &name, &a, &b));
    }
    if args.rows {
        let mut out = String::new();
        for r in rows
            .iter()
            .filter(|r| args.metrics.is_empty() || args.metrics.contains(&r.metric))
        {
            let _ = writeln!(out, "{},{},{}", r.label, r.metric, r.value);
        }
        return Ok(out);
    }
    let ratios = args
        .ratios
        .iter()
        .map(|r| parse_ratio(r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(render(&rows, &args.metrics, &ratios))
}

/// The medians table and the ratios, as text.
pub fn render(rows: &[Row], only: &[String], ratios: &[(String, String, String)]) -> String {
    let mut out = String::new();
    let width = rows.iter().map(|r| r.label.len()).max().unwrap_or(0);
    for (label, metric) in keys(rows) {
        if !only.is_empty() && !only.contains(&metric) {
            continue;
        }
        let values = values(rows, &label, &metric);
        let rounds: Vec<String> = values.iter().map(|v| number(*v)).collect();
        let _ = writeln!(
            out,
            "median {label:width$} {metric} {}  (rounds: {})",
            number(median(&values).unwrap_or(f64::NAN)),
            rounds.join(" ")
        );
    }
    for (a, b, metric) in ratios {
        let ma = median(&values(rows, a, metric));
        let mb = median(&values(rows, b, metric));
        match (ma, mb) {
            (Some(x), Some(y)) if y != 0.0 => {
                let _ = writeln!(out, "ratio {a}/{b} {metric} {:.3}", x / y);
            }
            _ => {
                let _ = writeln!(out, "ratio {a}/{b} {metric}: no rounds of both");
            }
        }
    }
    out
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Distinct (label, metric) pairs in the order they first appear.
fn keys(rows: &[Row]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for r in rows {
        if !out.iter().any(|(l, m)| *l == r.label && *m == r.metric) {
            out.push((r.label.clone(), r.metric.clone()));
        }
    }
    out
}

fn values(rows: &[Row], label: &str, metric: &str) -> Vec<f64> {
    rows.iter()
        .filter(|r| r.label == label && r.metric == metric)
        .map(|r| r.value)
        .collect()
}

/// Whole numbers and large values without decimals, others with two, and
/// those under 1 with four (script calls per sold-out request: 0.0012).
fn number(v: f64) -> String {
    if v.fract() == 0.0 || v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// Rows `name` = the n-th `a` over the n-th `b`, per label.
pub fn derive(rows: &[Row], name: &str, a: &str, b: &str) -> Vec<Row> {
    let mut out = Vec::new();
    let mut labels: Vec<&str> = Vec::new();
    for r in rows {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    for label in labels {
        let (xs, ys) = (values(rows, label, a), values(rows, label, b));
        for (x, y) in xs.iter().zip(&ys).filter(|(_, y)| **y != 0.0) {
            out.push(Row {
                label: label.into(),
                metric: name.into(),
                value: x / y,
            });
        }
    }
    out
}

fn parse_derive(text: &str) -> Result<(String, String, String), BenchError> {
    let usage = || BenchError::Usage(format!("--derive {text}: want NAME=A/B"));
    let (name, pair) = text.split_once('=').ok_or_else(usage)?;
    let (a, b) = pair.split_once('/').ok_or_else(usage)?;
    if name.is_empty() || a.is_empty() || b.is_empty() {
        return Err(usage());
    }
    Ok((name.into(), a.into(), b.into()))
}

fn parse_ratio(text: &str) -> Result<(String, String, String), BenchError> {
    let usage = || BenchError::Usage(format!("--ratio {text}: want A/B:METRIC"));
    let (pair, metric) = text.split_once(':').ok_or_else(usage)?;
    let (a, b) = pair.split_once('/').ok_or_else(usage)?;
    if a.is_empty() || b.is_empty() || metric.is_empty() {
        return Err(usage());
    }
    Ok((a.into(), b.into(), metric.into()))
}

fn read_input(input: &str) -> Result<Vec<Row>, BenchError> {
    match input.split_once('=') {
        Some((label, path)) if path.ends_with(".json") => {
            let text = read(Path::new(path))?;
            json_rows(label, &text).map_err(|e| BenchError::Usage(format!("{path}: {e}")))
        }
        _ => {
            let text = read(Path::new(input))?;
            csv_rows(&text).map_err(|e| BenchError::Usage(format!("{input}: {e}")))
        }
    }
}

fn read(path: &Path) -> Result<String, BenchError> {
    std::fs::read_to_string(path)
        .map_err(|e| BenchError::Usage(format!("cannot read {}: {e}", path.display())))
}

/// Rows of a `label,metric,value` CSV text.
pub fn csv_rows(text: &str) -> Result<Vec<Row>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line == "label,metric,value" {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let [label, metric, value] = fields[..] else {
            return Err(format!("line {}: want label,metric,value: {line}", n + 1));
        };
        let value: f64 = value
            .parse()
            .map_err(|_| format!("line {}: {value:?} is not a number", n + 1))?;
        if label.is_empty() || metric.is_empty() {
            return Err(format!("line {}: empty label or metric", n + 1));
        }
        out.push(Row {
            label: label.into(),
            metric: metric.into(),
            value,
        });
    }
    Ok(out)
}

/// Rows of one JSON document under `label`: a harness run record's
/// summary, or the numeric fields of any other object.
pub fn json_rows(label: &str, text: &str) -> Result<Vec<Row>, String> {
    let row = |metric: &str, value: f64| Row {
        label: label.into(),
        metric: metric.into(),
        value,
    };
    if let Ok(record) = serde_json::from_str::<RunRecord>(text) {
        let s = record
            .summary
            .ok_or("the run record has no summary (the run did not finish)")?;
        let ok = s.by_status.get("200").copied().unwrap_or(0);
        let failed = record
            .audit
            .iter()
            .filter(|c| c.verdict == crate::audit::Verdict::Fail)
            .count();
        return Ok(vec![
            row("throughput_rps", s.throughput_rps),
            row(
                "orders_per_s",
                s.rps_by_status.get("200").copied().unwrap_or(0.0),
            ),
            row("ok", ok as f64),
            row("other", s.completed.saturating_sub(ok) as f64),
            row("completed", s.completed as f64),
            row("p50_ms", s.latency_ms.p50),
            row("p99_ms", s.latency_ms.p99),
            row("audit_failed", failed as f64),
        ]);
    }
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    if value["tool"] == "kafka-ceiling" {
        // The broker's ceiling in the node runs' terms.
        let num = |k: &str| value[k].as_f64();
        let mut out = Vec::new();
        for (metric, v) in [
            ("orders_per_s", num("msgs_per_s")),
            ("ok", num("delivered")),
            ("other", num("failed")),
            ("p50_ms", num("p50_us").map(|us| us / 1000.0)),
            ("p99_ms", num("p99_us").map(|us| us / 1000.0)),
            ("consumed_per_s", num("consumed_per_s")),
            (
                "caught_up",
                value["caught_up"].as_bool().map(|b| f64::from(u8::from(b))),
            ),
        ] {
            if let Some(v) = v {
                out.push(row(metric, v));
            }
        }
        return Ok(out);
    }
    Ok(object
        .iter()
        .filter_map(|(k, v)| match v {
            Value::Number(n) => n.as_f64().map(|x| row(k, x)),
            Value::Bool(b) => Some(row(k, f64::from(u8::from(*b)))),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Vec<Row> {
        csv_rows(text).unwrap()
    }

    #[test]
    fn numbers_keep_their_meaningful_digits() {
        assert_eq!(number(51153.4), "51153");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(2.456), "2.46");
        assert_eq!(number(0.00123), "0.0012");
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn csv_rows_skip_the_header_and_comments_and_refuse_bad_lines() {
        let r = rows("label,metric,value\n# a note\nhealthz,rps,100\n\nsoldout, rps, 50.5\n");
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].label, "soldout");
        assert_eq!(r[1].value, 50.5);
        assert!(csv_rows("healthz,rps").is_err());
        assert!(csv_rows("healthz,rps,fast").is_err());
        assert!(csv_rows(",rps,1").is_err());
    }

    #[test]
    fn render_prints_medians_with_rounds_and_ratios() {
        let r = rows(
            "healthz,rps,100\nsoldout,rps,90\nhealthz,rps,300\nsoldout,rps,60\nhealthz,rps,200\n\
             soldout,rps,75\n",
        );
        let ratio = [("soldout".into(), "healthz".into(), "rps".into())];
        let text = render(&r, &[], &ratio);
        assert_eq!(
            text,
            "median healthz rps 200  (rounds: 100 300 200)\n\
             median soldout rps 75  (rounds: 90 60 75)\n\
             ratio soldout/healthz rps 0.375\n"
        );
        let missing = [("purchase".into(), "healthz".into(), "rps".into())];
        assert!(render(&r, &["rps".into()], &missing).contains("no rounds of both"));
    }

    #[test]
    fn json_objects_give_their_numbers() {
        let r = json_rows(
            "ceiling",
            r#"{"msgs_per_s": 1234.5, "failed": 0, "caught_up": true, "note": "x"}"#,
        )
        .unwrap();
        let names: Vec<&str> = r.iter().map(|r| r.metric.as_str()).collect();
        assert_eq!(names, ["caught_up", "failed", "msgs_per_s"]);
        assert_eq!(r[0].value, 1.0);
        assert!(json_rows("x", "[1]").is_err());
        let ceiling = json_rows(
            "ceiling",
            r#"{"tool": "kafka-ceiling", "msgs_per_s": 900.0, "delivered": 1800,
                "failed": 0, "p50_us": 1500, "p99_us": 4000, "consumed_per_s": null,
                "caught_up": null}"#,
        )
        .unwrap();
        let got: Vec<(&str, f64)> = ceiling
            .iter()
            .map(|r| (r.metric.as_str(), r.value))
            .collect();
        assert_eq!(
            got,
            [
                ("orders_per_s", 900.0),
                ("ok", 1800.0),
                ("other", 0.0),
                ("p50_ms", 1.5),
                ("p99_ms", 4.0)
            ]
        );
    }

    #[test]
    fn a_run_record_gives_its_summary_and_audit() {
        use std::time::{Duration, Instant};
        let t0 = Instant::now();
        let mut rec = crate::Recorder::new(t0, Duration::from_millis(100));
        for i in 1..=100u64 {
            let head = crate::client::ResponseHead {
                status: if i % 4 == 0 { 410 } else { 200 },
                replayed: false,
                close: false,
                body: 0..0,
            };
            let done = t0 + Duration::from_micros(i * 100);
            rec.response(t0, t0, done, &head, b"", None);
        }
        let record = RunRecord {
            name: "r".into(),
            command: "seckill-bench run".into(),
            started_at: 0,
            machine: crate::report::Machine::default(),
            versions: crate::report::Versions::default(),
            config: serde_json::json!({}),
            summary: Some(rec.summary(Duration::from_secs(1))),
            audit: vec![crate::audit::Check {
                name: "no_oversell".into(),
                verdict: crate::audit::Verdict::Fail,
                detail: "sold 2 of 1".into(),
            }],
            find_max: None,
        };
        let text = serde_json::to_string(&record).unwrap();
        let r = json_rows("off", &text).unwrap();
        let get = |m: &str| r.iter().find(|r| r.metric == m).unwrap().value;
        assert!(r.iter().all(|r| r.label == "off"));
        assert_eq!(get("ok"), 75.0);
        assert_eq!(get("other"), 25.0);
        assert_eq!(get("completed"), 100.0);
        assert_eq!(get("audit_failed"), 1.0);
        assert!(get("p99_ms") >= get("p50_ms") && get("p50_ms") > 0.0);
        assert!(get("throughput_rps") > 0.0);
    }

    #[test]
    fn derived_metrics_pair_the_rounds_of_a_label() {
        let r = rows("a,calls,10\na,sold,4\nb,calls,9\nb,sold,0\na,calls,30\na,sold,10\n");
        let d = derive(&r, "per", "calls", "sold");
        let got: Vec<(&str, f64)> = d.iter().map(|r| (r.label.as_str(), r.value)).collect();
        assert_eq!(got, [("a", 2.5), ("a", 3.0)]);
        assert!(parse_derive("per=calls/sold").is_ok());
        assert!(parse_derive("per=calls").is_err());
    }

    #[test]
    fn ratios_must_name_two_labels_and_a_metric() {
        assert!(parse_ratio("a/b:rps").is_ok());
        for bad in ["a/b", "ab:rps", "/b:rps", "a/:rps", "a/b:"] {
            assert!(parse_ratio(bad).is_err(), "{bad}");
        }
    }
}
