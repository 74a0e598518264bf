//! The record of a run, kept under `bench/runs/<date>-<host>/`:
//!
//! - `<name>.json`: [`RunRecord`]: the exact command, versions, machine,
//!   configuration, summary (percentiles, throughput per status and code,
//!   timeline), the audit and find-max steps;
//! - `<name>.html`: the same as a self-contained page with inline SVG plots
//!   (latency over time, latency distribution, throughput over time, and
//!   p99 against the offered rate for find-max); no script, no network;
//! - `<name>.hgrm`: the corrected-latency percentile table, HdrHistogram's
//!   text format, for plotting beside other tools' output;
//! - `summary.md`: one line per run appended, the directory's index.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::audit::{Check, Verdict};
use crate::findmax::FindMaxResult;
use crate::recorder::Summary;
use crate::BenchError;

/// Everything kept about one run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub name: String,
    /// The command line, as typed (arguments shell-quoted).
    pub command: String,
    /// Unix seconds when the run started.
    pub started_at: u64,
    pub machine: Machine,
    pub versions: Versions,
    /// The run's settings (scenario, mode, rate, connections, ...).
    pub config: serde_json::Value,
    /// The load's result (for find-max: the last step's).
    pub summary: Option<Summary>,
    #[serde(default)]
    pub audit: Vec<Check>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub find_max: Option<FindMaxResult>,
}

/// The machine the run was on.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub host: String,
    pub nproc: usize,
    pub memory_kib: u64,
    pub kernel: String,
    pub cpu: String,
}

impl Machine {
    /// Reads `/proc` and the host name (fields left empty where unknown).
    pub fn detect() -> Self {
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        // The machine's processors, not this process's affinity (a pinned
        // harness would otherwise report one core).
        let processors = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            .unwrap_or_default();
        Machine {
            host: hostname(),
            nproc: if processors > 0 {
                processors
            } else {
                std::thread::available_parallelism().map_or(0, |n| n.get())
            },
            memory_kib,
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            cpu,
        }
    }
}

/// Versions of what was measured and what measured it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Versions {
    pub harness: String,
    pub rustc: String,
    /// `git rev-parse HEAD` of the working tree (the node's source), with
    /// `-dirty` when it has uncommitted changes.
    pub seckill_commit: String,
    /// `GET /healthz` body or the node's own version string, if given.
    #[serde(default)]
    pub node: String,
}

impl Versions {
    /// `SECKILL_COMMIT` (set by `scripts/bench.sh`, which knows what it
    /// built) wins over asking git in the working directory.
    pub fn detect() -> Self {
        if let Ok(commit) = std::env::var("SECKILL_COMMIT") {
            return Versions {
                harness: env!("CARGO_PKG_VERSION").to_string(),
                rustc: run_text("rustc", &["--version"]),
                seckill_commit: commit,
                node: String::new(),
            };
        }
        let commit = run_text("git", &["rev-parse", "--short=12", "HEAD"]);
        let dirty = !run_text("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
        Versions {
            harness: env!("CARGO_PKG_VERSION").to_string(),
            rustc: run_text("rustc", &["--version"]),
            seckill_commit: if commit.is_empty() {
                "unknown".into()
            } else if dirty {
                format!("{commit}-dirty")
            } else {
                commit
            },
            node: String::new(),
        }
    }
}

/// `bench/runs/<date>-<host>` (relative to the working directory).
pub fn default_run_dir(now_unix: u64) -> PathBuf {
    PathBuf::from("bench/runs").join(format!("{}-{}", date(now_unix), hostname()))
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYY-MM-DD` (UTC) of a Unix time.
pub fn date(unix: u64) -> String {
    let (y, m, d) = civil_from_days((unix / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `HHMMSS` (UTC) of a Unix time.
pub fn time_of_day(unix: u64) -> String {
    let s = unix % 86_400;
    format!("{:02}{:02}{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Writes the run's files into `dir`; returns the JSON path.
pub fn write_run(
    dir: &Path,
    record: &RunRecord,
    histogram: Option<&Histogram<u64>>,
) -> Result<PathBuf, BenchError> {
    let fail = |what: &str, e: std::io::Error| BenchError::Report(format!("{what}: {e}"));
    fs::create_dir_all(dir).map_err(|e| fail(&dir.display().to_string(), e))?;
    let json_path = dir.join(format!("{}.json", record.name));
    let json = serde_json::to_vec_pretty(record).map_err(|e| BenchError::Report(e.to_string()))?;
    fs::write(&json_path, json).map_err(|e| fail("json", e))?;
    fs::write(dir.join(format!("{}.html", record.name)), html(record))
        .map_err(|e| fail("html", e))?;
    if let Some(h) = histogram {
        fs::write(dir.join(format!("{}.hgrm", record.name)), hgrm(h))
            .map_err(|e| fail("hgrm", e))?;
    }
    let index = dir.join("summary.md");
    let mut text = fs::read_to_string(&index).unwrap_or_else(|_| {
        format!(
            "# Capacity runs {} on {}\n\nmachine: {} cores, {} MiB, kernel {}, {}\n\n| run | result | command |\n|---|---|---|\n",
            date(record.started_at),
            record.machine.host,
            record.machine.nproc,
            record.machine.memory_kib / 1024,
            record.machine.kernel,
            record.machine.cpu
        )
    });
    let _ = writeln!(
        text,
        "| [{}]({}.html) | {} | `{}` |",
        record.name,
        record.name,
        headline(record).replace('|', "/"),
        record.command.replace('|', "\\|")
    );
    fs::write(&index, text).map_err(|e| fail("summary.md", e))?;
    Ok(json_path)
}

/// One line about a run's outcome.
pub fn headline(record: &RunRecord) -> String {
    let audit = if record.audit.is_empty() {
        String::new()
    } else if record.audit.iter().any(|c| c.verdict == Verdict::Fail) {
        ", audit FAIL".into()
    } else {
        ", audit PASS".into()
    };
    if let Some(fm) = &record.find_max {
        return format!("{}{audit}", fm.headline());
    }
    match &record.summary {
        Some(s) => format!(
            "{:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms{}{audit}",
            s.throughput_rps,
            s.latency_ms.p50,
            s.latency_ms.p99,
            s.latency_ms.p999,
            s.latency_ms.max,
            if s.io_errors + s.timeouts > 0 {
                format!(
                    ", {} transport errors, {} timeouts",
                    s.io_errors, s.timeouts
                )
            } else {
                String::new()
            }
        ),
        None => format!("no load ran{audit}"),
    }
}

/// HdrHistogram's percentile-distribution text (values in ms).
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    for v in h.iter_quantiles(1) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 {
            1.0 / (1.0 - q)
        } else {
            f64::INFINITY
        };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {:14.2}",
            v.value_iterated_to() as f64 / 1e3,
            q,
            v.count_since_last_iteration(),
            inv
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]",
        h.mean() / 1e3,
        h.stdev() / 1e3,
        h.max() as f64 / 1e3,
        h.len()
    );
    out
}

/// The self-contained HTML report.
pub fn html(r: &RunRecord) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>seckill-bench {name}</title>\n<style>{STYLE}</style></head><body>\n<h1>seckill-bench: {name}</h1>\n<p class=\"head\">{head}</p>\n",
        name = esc(&r.name),
        head = esc(&headline(r))
    );
    let _ = writeln!(
        page,
        "<table><tr><th>command</th><td><code>{}</code></td></tr><tr><th>started</th><td>{} {} UTC</td></tr><tr><th>machine</th><td>{} — {} cores, {} MiB, kernel {}, {}</td></tr><tr><th>versions</th><td>seckill {} · {} · seckill-bench {}</td></tr><tr><th>config</th><td><code>{}</code></td></tr></table>",
        esc(&r.command),
        date(r.started_at),
        time_of_day(r.started_at),
        esc(&r.machine.host),
        r.machine.nproc,
        r.machine.memory_kib / 1024,
        esc(&r.machine.kernel),
        esc(&r.machine.cpu),
        esc(&r.versions.seckill_commit),
        esc(&r.versions.rustc),
        esc(&r.versions.harness),
        esc(&r.config.to_string())
    );
    if !r.audit.is_empty() {
        page.push_str(
            "<h2>Audit</h2><table><tr><th>check</th><th>verdict</th><th>detail</th></tr>",
        );
        for c in &r.audit {
            let _ = write!(
                page,
                "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
                esc(&c.name),
                c.verdict.to_string().to_lowercase(),
                c.verdict,
                esc(&c.detail)
            );
        }
        page.push_str("</table>\n");
    }
    if let Some(fm) = &r.find_max {
        page.push_str("<h2>Find-max</h2><table><tr><th>offered req/s</th><th>answered req/s</th><th>p50 ms</th><th>p99 ms</th><th>p99.9 ms</th><th>failures</th><th>verdict</th></tr>");
        for s in &fm.steps {
            let o = &s.outcome;
            let _ = write!(
                page,
                "<tr><td>{:.0}</td><td>{:.0}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                o.rate,
                o.achieved_rps,
                o.p50_ms,
                o.p99_ms,
                o.p999_ms,
                o.failures,
                if s.pass { "pass" } else { "fail" },
                esc(&s.reason)
            );
        }
        page.push_str("</table>\n");
        let mut steps: Vec<(f64, f64)> = fm
            .steps
            .iter()
            .map(|s| (s.outcome.rate, s.outcome.p99_ms))
            .collect();
        steps.sort_by(|a, b| a.0.total_cmp(&b.0));
        let slo: Vec<(f64, f64)> = steps
            .iter()
            .map(|(x, _)| (*x, fm.config.slo_p99_ms))
            .collect();
        page.push_str(&chart(
            "p99 against the offered rate",
            "offered req/s",
            "p99 ms",
            &[("p99", "#d62728", steps), ("SLO", "#7f7f7f", slo)],
            Axis::Linear,
        ));
    }
    if let Some(s) = &r.summary {
        page.push_str("<h2>Latency (coordinated-omission corrected)</h2><table><tr><th></th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>mean</th><th>count</th></tr>");
        for (label, p) in [
            ("corrected", &s.latency_ms),
            ("service (uncorrected)", &s.service_latency_ms),
        ] {
            let _ = write!(
                page,
                "<tr><th>{label}</th><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
                p.p50, p.p90, p.p99, p.p999, p.max, p.mean, p.count
            );
        }
        page.push_str("</table><p>milliseconds</p>\n<h2>Throughput</h2><table><tr><th>status</th><th>answers</th><th>per second</th></tr>");
        for (status, n) in &s.by_status {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{:.0}</td></tr>",
                esc(status),
                n,
                s.rps_by_status.get(status).copied().unwrap_or(0.0)
            );
        }
        let _ = write!(
            page,
            "<tr><td>transport errors</td><td>{}</td><td></td></tr>",
            s.io_errors
        );
        for (kind, n) in &s.io_errors_by_kind {
            let _ = write!(
                page,
                "<tr><td>&nbsp;&nbsp;{}</td><td>{n}</td><td></td></tr>",
                esc(kind)
            );
        }
        let _ = writeln!(
            page,
            "<tr><td>timeouts (latency recorded as the timeout)</td><td>{}</td><td></td></tr><tr><td>unanswered at the end</td><td>{}</td><td></td></tr><tr><th>all answers</th><th>{}</th><th>{:.0}</th></tr></table>",
            s.timeouts, s.unfinished, s.completed, s.throughput_rps
        );
        if !s.by_code.is_empty() {
            page.push_str("<table><tr><th>error code</th><th>answers</th></tr>");
            for (code, n) in &s.by_code {
                let _ = write!(page, "<tr><td>{}</td><td>{n}</td></tr>", esc(code));
            }
            page.push_str("</table>\n");
        }
        let t = |f: fn(&crate::recorder::TimelinePoint) -> f64| -> Vec<(f64, f64)> {
            s.timeline.iter().map(|p| (p.t_s, f(p))).collect()
        };
        page.push_str(&chart(
            "Latency over time (answers completing in each interval)",
            "seconds",
            "ms",
            &[
                ("p50", "#1f77b4", t(|p| p.p50_ms)),
                ("p99", "#ff7f0e", t(|p| p.p99_ms)),
                ("max", "#d62728", t(|p| p.max_ms)),
            ],
            Axis::Linear,
        ));
        page.push_str(&chart(
            "Latency distribution (percentile spectrum)",
            "percentile",
            "ms",
            &[("corrected", "#ff7f0e", s.spectrum.clone())],
            Axis::Percentile,
        ));
        let mut series: Vec<Series> = vec![("all", "#333333", t(|p| p.rps))];
        for (class, color) in [
            ("2xx", "#2ca02c"),
            ("4xx", "#1f77b4"),
            ("5xx", "#d62728"),
            ("errors", "#9467bd"),
        ] {
            if s.timeline
                .iter()
                .any(|p| p.rps_by_class.contains_key(class))
            {
                let pts = s
                    .timeline
                    .iter()
                    .map(|p| (p.t_s, p.rps_by_class.get(class).copied().unwrap_or(0.0)))
                    .collect();
                series.push((class, color, pts));
            }
        }
        page.push_str(&chart(
            "Throughput over time",
            "seconds",
            "answers/s",
            &series,
            Axis::Linear,
        ));
    }
    page.push_str("</body></html>\n");
    page
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}code{font-size:.85em;word-break:break-all}.pass{color:#2a7a2a;font-weight:bold}.fail{color:#b00;font-weight:bold}.skip{color:#777}.head{font-size:1.1em}svg{display:block;margin:1em 0}";

/// A plotted line: name, colour, (x, y) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// How the x axis is laid out.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Axis {
    Linear,
    /// Percentiles on a log scale of 1/(1-p): 0, 90, 99, 99.9, ...
    Percentile,
}

/// A line chart as inline SVG.
fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series], axis: Axis) -> String {
    const W: f64 = 760.0;
    const H: f64 = 300.0;
    const L: f64 = 70.0;
    const R: f64 = 110.0;
    const T: f64 = 30.0;
    const B: f64 = 45.0;
    let xf = |x: f64| match axis {
        Axis::Linear => x,
        // 100 would be infinite: cap at the 99.9999th percentile's place.
        Axis::Percentile => (1.0 / (1.0 - (x / 100.0).min(0.999_999))).log10(),
    };
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, _, pts)| pts.iter().map(|(x, y)| (xf(*x), *y)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let mut svg = format!(
        "<h3>{}</h3><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-size=\"11\">",
        esc(title)
    );
    if all.is_empty() {
        svg.push_str("<text x=\"20\" y=\"40\">no data</text></svg>");
        return svg;
    }
    let (x0, mut x1) = all.iter().fold((f64::MAX, f64::MIN), |(a, b), (x, _)| {
        (a.min(*x), b.max(*x))
    });
    let x0 = if axis == Axis::Linear {
        x0.min(0.0)
    } else {
        0.0
    };
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y_max = all.iter().fold(0.0_f64, |m, (_, y)| m.max(*y));
    let (y_top, y_step) = nice_scale(y_max);
    let px = |x: f64| L + (x - x0) / (x1 - x0) * (W - L - R);
    let py = |y: f64| H - B - y / y_top * (H - T - B);
    let _ = write!(
        svg,
        "<rect x=\"{L}\" y=\"{T}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#999\"/>",
        W - L - R,
        H - T - B
    );
    let mut y = 0.0;
    while y <= y_top * 1.0001 {
        let _ = write!(
            svg,
            "<line x1=\"{L}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\" stroke=\"#eee\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            W - R,
            L - 4.0,
            py(y) + 4.0,
            fmt_num(y),
            py = py(y)
        );
        y += y_step;
    }
    let ticks: Vec<(f64, String)> = match axis {
        Axis::Linear => {
            let (top, step) = nice_scale(x1 - x0);
            let mut v = Vec::new();
            let mut x = 0.0;
            while x <= top * 1.0001 && x0 + x <= x1 * 1.0001 {
                v.push((x0 + x, fmt_num(x0 + x)));
                x += step;
            }
            v
        }
        Axis::Percentile => ["0", "90", "99", "99.9", "99.99", "99.999", "99.9999"]
            .iter()
            .enumerate()
            .filter(|(i, _)| (*i as f64) <= x1 + 1e-9)
            .map(|(i, l)| (i as f64, format!("{l}%")))
            .collect(),
    };
    for (x, label) in ticks {
        let _ = write!(
            svg,
            "<line x1=\"{p:.1}\" x2=\"{p:.1}\" y1=\"{T}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{p:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            H - B,
            H - B + 14.0,
            esc(&label),
            p = px(x)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text><text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">{}</text>",
        L + (W - L - R) / 2.0,
        H - 8.0,
        esc(x_label),
        T + (H - T - B) / 2.0,
        T + (H - T - B) / 2.0,
        esc(y_label)
    );
    for (i, (name, color, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|(x, y)| (xf(*x), *y))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\" points=\"{}\"/><rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            path.join(" "),
            W - R + 10.0,
            T + 10.0 + 16.0 * i as f64,
            W - R + 26.0,
            T + 14.0 + 16.0 * i as f64,
            esc(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A round top and step for an axis from 0 to `max`.
fn nice_scale(max: f64) -> (f64, f64) {
    if max.is_nan() || max <= 0.0 {
        return (1.0, 0.2);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn hostname() -> String {
    let h = read_trim("/proc/sys/kernel/hostname");
    if h.is_empty() {
        "localhost".into()
    } else {
        h
    }
}

fn read_trim(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn run_text(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::Recorder;
    use std::time::{Duration, Instant};

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400), "2000-02-29");
        assert_eq!(date(1_763_784_000), "2025-11-22");
        assert_eq!(time_of_day(3_723), "010203");
    }

    #[test]
    fn scales_are_round() {
        assert_eq!(nice_scale(9.3), (10.0, 2.0));
        assert_eq!(nice_scale(230_000.0), (250_000.0, 50_000.0));
        assert_eq!(nice_scale(0.0), (1.0, 0.2));
    }

    #[test]
    fn writes_a_self_contained_report() {
        let t0 = Instant::now();
        let mut rec = Recorder::new(t0, Duration::from_millis(100));
        for i in 1..=500u64 {
            let head = crate::client::ResponseHead {
                status: if i % 10 == 0 { 410 } else { 200 },
                replayed: false,
                close: false,
                body: 0..0,
            };
            rec.response(
                t0,
                t0,
                t0 + Duration::from_micros(i * 400),
                &head,
                b"",
                None,
            );
        }
        let record = RunRecord {
            name: "test-<run>".into(),
            command: "seckill-bench run --rate 10 | x".into(),
            started_at: 1_763_784_000,
            machine: Machine::detect(),
            versions: Versions::default(),
            config: serde_json::json!({"rate": 10}),
            summary: Some(rec.summary(Duration::from_millis(200))),
            audit: vec![Check {
                name: "no_oversell".into(),
                verdict: Verdict::Pass,
                detail: "ok".into(),
            }],
            find_max: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let json = write_run(dir.path(), &record, Some(rec.corrected())).unwrap();
        let back: RunRecord = serde_json::from_slice(&fs::read(&json).unwrap()).unwrap();
        assert_eq!(back.summary.unwrap().completed, 500);
        let page = fs::read_to_string(dir.path().join("test-<run>.html")).unwrap();
        assert_eq!(page.matches("<svg").count(), 3, "three plots");
        assert!(page.contains("test-&lt;run&gt;"));
        assert!(!page.contains("<script"), "no script");
        assert!(page.contains("PASS"));
        let hgrm = fs::read_to_string(dir.path().join("test-<run>.hgrm")).unwrap();
        assert!(hgrm.contains("Total count    =          500"), "{hgrm}");
        let index = fs::read_to_string(dir.path().join("summary.md")).unwrap();
        assert!(
            index.contains("audit PASS") && index.contains("\\|"),
            "{index}"
        );
    }
}
