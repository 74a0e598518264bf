//! The command line of `seckill-bench`:
//!
//! ```text
//! seckill-bench run      --target URL [--rate R | closed loop] [scenario, sale, audit, output flags]
//! seckill-bench find-max --target URL --slo-p99 5ms [--start-rate R --factor F ...] [same flags]
//! ```
//!
//! `run` creates the sale (unless `--no-create`), drives the load, audits
//! the invariants against the order log (`--journal DIR|FILE`, or `--kafka
//! BROKERS [--kafka-topic T]` in cluster mode), prints the result
//! and PASS/FAIL per check, and keeps the run under `--out`. Exit code: 0,
//! 1 when an audit check failed, 2 when the harness could not run.
//!
//! Output goes to the writer given to [`main_to`] (stdout for
//! [`main_with`]) through `say!`, which drops what cannot be written: a
//! closed stdout (`| head`, a `tee` that died) must not turn into a
//! broken-pipe panic (`println!`'s) that loses the run's files.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::admin::{self, SaleSetup};
use crate::audit::{self, AuditInput, Check};
use crate::engine::{run_load, LoadConfig, Mode};
use crate::findmax::{self, FindMaxConfig, StepOutcome};
use crate::orderlog::{KafkaTopic, LogContents, LogSpec, OrderLogSource};
use crate::recorder::Recorder;
use crate::report::{self, Machine, RunRecord, Versions};
use crate::scenario::{KeyMode, PurchaseMix, Workload};
use crate::schedule::{parse_duration, Schedule};
use crate::BenchError;
use queue::EventKind;

/// `writeln!` to the output that never fails: when the output is gone
/// (`EPIPE`), the line is dropped and the run goes on to be audited and
/// saved.
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

/// Capacity harness of seckill: open- and closed-loop load, invariant
/// audit, reports.
#[derive(Debug, Parser)]
#[command(name = "seckill-bench", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One load run (open loop with --rate, else closed loop), then the audit.
    Run(RunArgs),
    /// Raise the open-loop rate until p99 breaks the SLO; report capacity.
    FindMax(FindMaxArgs),
    /// Medians over rounds and ratios between them, from `label,metric,value`
    /// CSV rows and `LABEL=RUN.json` run records (what the bench scripts print).
    Summarize(crate::summarize::SummarizeArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: Common,
    /// Open loop at this many requests/s (all threads); without it, closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
}

#[derive(Debug, Args)]
pub struct FindMaxArgs {
    #[command(flatten)]
    pub common: Common,
    /// The latency objective: p99 (corrected) at most this.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub slo_p99: Duration,
    /// First rate tried, requests/s.
    #[arg(long, default_value_t = 5000.0)]
    pub start_rate: f64,
    /// Highest rate tried.
    #[arg(long, default_value_t = 2_000_000.0)]
    pub max_rate: f64,
    /// Each step offers this many times the previous rate.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// Bisection steps between the last pass and the first failure.
    #[arg(long, default_value_t = 3)]
    pub refine: u32,
    /// Largest share of failed or unanswered requests a passing step may have.
    #[arg(long, default_value_t = 0.001)]
    pub max_failure_ratio: f64,
    /// Cores the node runs on (for the per-core figure).
    #[arg(long, default_value_t = 1)]
    pub node_cores: u32,
    /// Report the nodes needed for this many requests/s at the SLO.
    #[arg(long)]
    pub plan_rate: Option<f64>,
}

/// What the load is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScenarioKind {
    /// GET --path (default /healthz): the harness's own ceiling.
    Healthz,
    /// Purchases by a crowd of buyers against a sale with stock.
    Purchase,
    /// Purchases against a sale that is already sold out (the 410 path).
    Soldout,
}

#[derive(Debug, Args)]
pub struct Common {
    /// The node, e.g. http://127.0.0.1:8080. Several (repeated or
    /// comma-separated: the nodes of one cluster) share the connections
    /// round-robin; the sale is created and read on the first.
    #[arg(
        long,
        env = "SECKILL_TARGET",
        default_value = "http://127.0.0.1:8080",
        value_delimiter = ','
    )]
    pub target: Vec<String>,
    #[arg(long, value_enum, default_value = "purchase")]
    pub scenario: ScenarioKind,
    /// Path of the healthz scenario.
    #[arg(long, default_value = "/healthz")]
    pub path: String,
    /// Load threads (one monoio runtime each).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Keep-alive connections over all threads.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// How long the load runs (find-max: each step).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop after this many requests in all.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Open loop: the rate rises linearly from 0 to --rate over this (the
    /// sale-start spike).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub ramp: Duration,
    /// How long to wait for answers still due after the end.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
    /// A request with no answer this many ms after it was sent is a timeout:
    /// counted as a failure, its latency recorded as the timeout, its
    /// connection replaced. 0: wait for ever.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Timeline resolution.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Sale id (default bench-UNIX_TIME; find-max adds -STEP).
    #[arg(long)]
    pub sale: Option<String>,
    /// Units on sale (soldout: the units bought out before the load).
    #[arg(long)]
    pub stock: Option<u64>,
    #[arg(long, default_value_t = 1)]
    pub per_user_limit: u32,
    /// The sale opens this many seconds after it is created (requests
    /// before are answered 403): the sale-start moment.
    #[arg(long)]
    pub starts_in: Option<u64>,
    #[arg(long)]
    pub payment_timeout_s: Option<u64>,
    /// Use an existing sale instead of creating it.
    #[arg(long)]
    pub no_create: bool,
    #[arg(long, env = "SECKILL_ADMIN_TOKEN", default_value = "")]
    pub admin_token: String,
    /// A buyer key of the nodes (their `buyer_keys`): every buyer gets a
    /// token signed with it, minted before the load (about 100 bytes per
    /// buyer, so --users is at most 2,000,000). Each token is also the
    /// ticket of the run's sale.
    #[arg(long, env = "SECKILL_BENCH_BUYER_KEY")]
    pub buyer_key: Option<String>,

    /// Cold buyers, each of whom comes once.
    #[arg(long, default_value_t = 10_000_000)]
    pub users: u64,
    /// The hot minority that keeps retrying.
    #[arg(long, default_value_t = 100)]
    pub hot_users: u64,
    /// Share of requests sent by hot users.
    #[arg(long, default_value_t = 0.1)]
    pub hot_share: f64,
    /// Probability a hot request retries the previous attempt (same key).
    #[arg(long, default_value_t = 0.5)]
    pub retry: f64,
    /// Which requests carry an Idempotency-Key.
    #[arg(long, value_enum, default_value = "hot")]
    pub keys: KeyMode,
    #[arg(long, default_value_t = 1)]
    pub quantity: u32,

    /// The node's order journal (file or data dir) to audit against.
    #[arg(long, env = "SECKILL_JOURNAL", conflicts_with = "kafka")]
    pub journal: Option<PathBuf>,
    /// Audit against the order topic of cluster mode on these Kafka
    /// bootstrap brokers (host:port[,host:port...]) instead of a journal.
    #[arg(long, value_name = "BROKERS")]
    pub kafka: Option<String>,
    /// The order topic read with --kafka.
    #[arg(
        long,
        value_name = "TOPIC",
        default_value = crate::orderlog::DEFAULT_KAFKA_TOPIC,
        requires = "kafka"
    )]
    pub kafka_topic: String,
    /// Skip the audit.
    #[arg(long)]
    pub no_audit: bool,
    /// `run`: wait this long after the load before auditing (the sale's
    /// payment timeout plus the settler's grace), then also check that every
    /// order of the sale ended: paid, cancelled, expired or released.
    #[arg(long, value_parser = parse_duration)]
    pub audit_after: Option<Duration>,
    /// `run`: write the ids of the orders answered 200 (first answers and
    /// replays, each id once) to this file, one a line, for audits of the
    /// stock authority's side (scripts/soak.sh).
    #[arg(long, value_name = "FILE")]
    pub acked_out: Option<PathBuf>,

    /// Run directory (default bench/runs/DATE-HOST).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Name of the run's files (default SCENARIO-MODE-TIME).
    #[arg(long)]
    pub name: Option<String>,
    /// Keep nothing on disk.
    #[arg(long)]
    pub no_save: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl Common {
    /// The order log to audit (`--journal` or `--kafka`; clap keeps them
    /// apart), if any.
    pub fn order_log(&self) -> Option<LogSpec> {
        match (&self.journal, &self.kafka) {
            (_, Some(brokers)) => Some(LogSpec::Kafka {
                brokers: brokers.clone(),
                topic: self.kafka_topic.clone(),
            }),
            (Some(path), None) => Some(LogSpec::Journal(path.clone())),
            (None, None) => None,
        }
    }
}

/// Runs the command line; returns the process exit code.
pub fn main_with(cli: Cli, command_line: String) -> i32 {
    main_to(cli, command_line, &mut std::io::stdout())
}

/// [`main_with`], printing the results to `out` (write errors are ignored).
pub fn main_to(cli: Cli, command_line: String, out: &mut dyn Write) -> i32 {
    let result = match cli.command {
        Command::Run(args) => run(&args, &command_line, out),
        Command::FindMax(args) => find_max(&args, &command_line, out),
        Command::Summarize(args) => crate::summarize::summarize(&args).map(|text| {
            let _ = out.write_all(text.as_bytes());
            0
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // Not eprintln!: a closed stderr must not panic either.
            say!(std::io::stderr(), "seckill-bench: {e}");
            2
        }
    }
}

/// A scenario made concrete: the sale it needs and the workload.
struct Prepared {
    /// The first target: admin calls and the sale view.
    addr: SocketAddr,
    /// The other targets.
    more: Vec<SocketAddr>,
    sale: Option<(String, SaleSetup)>,
    workload: Workload,
    /// With `--kafka`, when this run created its sale: the topic's high
    /// watermarks taken just before, where the audit starts reading.
    log_mark: Option<HashMap<i32, i64>>,
}

fn target_addr(target: &str) -> Result<SocketAddr, BenchError> {
    let hostport = target
        .strip_prefix("http://")
        .unwrap_or(target)
        .trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .map_err(|e| BenchError::Usage(format!("bad --target {target}: {e}")))?
        .next()
        .ok_or_else(|| BenchError::Usage(format!("--target {target} resolves to nothing")))
}

/// How long a sale created on the first target may take to show on the
/// others (cluster nodes learn new sales from Redis every 200 ms).
const SALE_VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until every one of `addrs` knows `sale_id`.
fn wait_visible(addrs: &[SocketAddr], sale_id: &str) -> Result<(), BenchError> {
    let deadline = std::time::Instant::now() + SALE_VISIBLE_TIMEOUT;
    for &addr in addrs {
        while let Err(e) = admin::sale_view(addr, sale_id) {
            if std::time::Instant::now() >= deadline {
                return Err(BenchError::Admin(format!(
                    "sale {sale_id} not visible on {addr} within {SALE_VISIBLE_TIMEOUT:?}: {e}"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Creates the sale (and, for soldout, buys it out) and builds the workload.
fn prepare(c: &Common, sale_id: &str) -> Result<Prepared, BenchError> {
    let prepared = prepare_first(c, sale_id)?;
    if let (Some((sale, _)), false) = (&prepared.sale, c.no_create) {
        wait_visible(&prepared.more, sale)?;
    }
    Ok(prepared)
}

/// [`prepare`] on the first target.
fn prepare_first(c: &Common, sale_id: &str) -> Result<Prepared, BenchError> {
    let mut addrs = c
        .target
        .iter()
        .map(|t| target_addr(t))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter();
    let addr = addrs
        .next()
        .ok_or_else(|| BenchError::Usage("no --target".into()))?;
    let more: Vec<SocketAddr> = addrs.collect();
    let tokens = match &c.buyer_key {
        None => None,
        Some(_) if c.users > crate::tokens::MAX_MINTED => {
            return Err(BenchError::Usage(format!(
                "--buyer-key pre-mints a token per buyer: use --users <= {}",
                crate::tokens::MAX_MINTED
            )))
        }
        Some(key) => Some(std::sync::Arc::new(crate::tokens::BuyerTokens::mint(
            key.as_bytes(),
            sale_id,
            c.hot_users,
            c.users.max(1),
            report::now_unix(),
            86_400,
        ))),
    };
    let workload_for = |sale: &str| {
        Workload::Purchase(PurchaseMix {
            tokens: tokens.clone(),
            sale: sale.to_string(),
            users: c.users.max(1),
            hot_users: c.hot_users,
            hot_share: c.hot_share.clamp(0.0, 1.0),
            retry: c.retry.clamp(0.0, 1.0),
            keys: c.keys,
            quantity: c.quantity.max(1),
        })
    };
    let setup = |default_stock: u64| SaleSetup {
        stock: c.stock.unwrap_or(default_stock),
        per_user_limit: c.per_user_limit,
        starts_at: c.starts_in.map(|s| report::now_unix() + s),
        payment_timeout_s: c.payment_timeout_s,
    };
    match c.scenario {
        ScenarioKind::Healthz => Ok(Prepared {
            addr,
            more,
            sale: None,
            workload: Workload::Get {
                path: c.path.clone(),
            },
            log_mark: None,
        }),
        ScenarioKind::Purchase => {
            let setup = setup(1000);
            let log_mark = if c.no_create {
                None
            } else {
                let mark = log_mark(c, addr, sale_id);
                admin::create_sale(addr, &c.admin_token, sale_id, &setup)?;
                mark
            };
            Ok(Prepared {
                addr,
                more: more.clone(),
                sale: Some((sale_id.to_string(), setup)),
                workload: workload_for(sale_id),
                log_mark,
            })
        }
        ScenarioKind::Soldout => {
            let mut setup = setup(1);
            setup.starts_at = None;
            let mut log_mark = None;
            if !c.no_create {
                log_mark = self::log_mark(c, addr, sale_id);
                admin::create_sale(addr, &c.admin_token, sale_id, &setup)?;
                // Buy every unit before the load, one buyer per unit.
                for i in 0..setup.stock {
                    let user = format!("early-{i}");
                    let body = format!("{{\"user_id\":\"{user}\",\"quantity\":1}}");
                    let auth = c.buyer_key.as_ref().map(|key| {
                        let exp = report::now_unix() + 3_600;
                        let token = crate::tokens::mint_one(key.as_bytes(), &user, sale_id, exp);
                        format!("Bearer {token}")
                    });
                    let headers: Vec<(&str, &str)> = auth
                        .as_deref()
                        .map(|a| vec![("Authorization", a)])
                        .unwrap_or_default();
                    let (status, answer) = admin::request(
                        addr,
                        "POST",
                        &format!("/sales/{sale_id}/purchase"),
                        &headers,
                        body.as_bytes(),
                    )?;
                    if status != 200 {
                        return Err(BenchError::Admin(format!(
                            "buying out {sale_id}: {status} {}",
                            String::from_utf8_lossy(&answer)
                        )));
                    }
                }
            }
            Ok(Prepared {
                addr,
                more: more.clone(),
                sale: Some((sale_id.to_string(), setup)),
                workload: workload_for(sale_id),
                log_mark,
            })
        }
    }
}

/// With `--kafka`, before a run creates a sale that does not exist yet: the
/// topic's high watermarks, so that its audit reads only what came after
/// (each step of find-max, or each run on a long-lived topic, reads its own
/// events, not the whole topic). `None` (read everything) when the sale
/// exists already or the marks cannot be read.
fn log_mark(c: &Common, addr: SocketAddr, sale_id: &str) -> Option<HashMap<i32, i64>> {
    let Some(LogSpec::Kafka { brokers, topic }) = c.order_log() else {
        return None;
    };
    if !matches!(admin::sale_exists(addr, sale_id), Ok(false)) {
        return None;
    }
    KafkaTopic::new(&brokers, &topic).high_watermarks().ok()
}

fn load_config(c: &Common, p: &Prepared, mode: Mode) -> LoadConfig {
    LoadConfig {
        addr: p.addr,
        more_addrs: p.more.clone(),
        workload: p.workload.clone(),
        mode,
        connections: c.connections,
        threads: c.threads,
        duration: c.duration,
        max_requests: c.requests,
        grace: c.grace,
        timeout: Duration::from_millis(c.timeout_ms),
        interval: c.interval,
        seed: c.seed,
    }
}

/// Drives the load with a progress bar on stderr.
fn drive(c: &Common, cfg: &LoadConfig, label: &str) -> Result<Recorder, BenchError> {
    let bar = if c.quiet {
        ProgressBar::hidden()
    } else {
        let bar = ProgressBar::with_draw_target(
            Some(cfg.duration.as_millis() as u64),
            ProgressDrawTarget::stderr_with_hz(4),
        );
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {elapsed}/{duration} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        bar
    };
    let mut last = (0u64, Duration::ZERO);
    let result = run_load(cfg, &mut |done, elapsed| {
        bar.set_position((elapsed.as_millis() as u64).min(cfg.duration.as_millis() as u64));
        let dt = (elapsed - last.1).as_secs_f64();
        if dt >= 0.5 {
            bar.set_message(format!(
                "{done} answers, {:.0}/s",
                (done - last.0) as f64 / dt
            ));
            last = (done, elapsed);
        }
    });
    bar.finish_and_clear();
    result
}

/// Audits the run's sale against the node and the order log.
fn audit_run(c: &Common, p: &Prepared, rec: &Recorder) -> Vec<Check> {
    let Some((sale_id, setup)) = &p.sale else {
        return Vec::new();
    };
    if c.no_audit {
        return Vec::new();
    }
    // A cluster node's `sold` is the cluster-wide count as last polled
    // from Redis (every 200 ms): read it once it holds still.
    let cluster = c.kafka.is_some() || !p.more.is_empty();
    let view = if cluster {
        settled_view(p.addr, sale_id)
    } else {
        admin::sale_view(p.addr, sale_id)
    }
    .map_err(|e| e.to_string());
    let (stock, limit) = match &view {
        Ok(v) if c.no_create => (v.stock, v.per_user_limit),
        _ => (setup.stock, setup.per_user_limit),
    };
    let log = match (c.order_log(), &p.log_mark) {
        (Some(LogSpec::Kafka { brokers, topic }), Some(mark)) => {
            read_from_mark(KafkaTopic::new(&brokers, &topic), mark, sale_id)
                .map_err(|e| e.to_string())
        }
        (Some(spec), _) => spec.source().read().map_err(|e| e.to_string()),
        (None, _) => Err("no order log given (--journal or --kafka)".to_string()),
    };
    let settled = c.audit_after.map(|_| audit::settled(&log, sale_id));
    let mut checks = audit::audit(&AuditInput {
        sale_id,
        stock,
        per_user_limit: limit,
        view,
        acked: rec.acked(),
        holders: rec.holders().len() as u64,
        sold_out_answers: rec.code_count("sold_out"),
        sold_out_at: rec.sold_out_at(),
        sold_out_untimed: rec.sold_out_untimed(),
        failures: rec.failures(),
        unfinished: rec.unfinished,
        log,
    });
    checks.extend(settled);
    checks
}

/// `--acked-out`: the ids of the orders answered 200, each once, sorted.
fn write_acked(path: &std::path::Path, rec: &Recorder) -> Result<(), BenchError> {
    let ids: std::collections::BTreeSet<&str> =
        rec.acked().iter().map(|o| o.order_id.as_str()).collect();
    let mut text = String::with_capacity(ids.len() * 24);
    for id in ids {
        text.push_str(id);
        text.push('\n');
    }
    std::fs::write(path, text)
        .map_err(|e| BenchError::Report(format!("--acked-out {}: {e}", path.display())))
}

/// The topic from `mark` on. The sale's creation must be in what was read,
/// else (the sale was made elsewhere meanwhile) the whole topic is read.
fn read_from_mark(
    mut topic: KafkaTopic,
    mark: &HashMap<i32, i64>,
    sale_id: &str,
) -> Result<LogContents, BenchError> {
    topic.from = mark.clone();
    let log = topic.read()?;
    let created = log
        .events
        .iter()
        .any(|e| matches!(&e.kind, EventKind::SaleCreated { sale_id: s, .. } if s == sale_id));
    if created {
        return Ok(log);
    }
    topic.from.clear();
    topic.read()
}

/// The sale view once two reads 300 ms apart agree (at most ~3 s).
fn settled_view(addr: SocketAddr, sale_id: &str) -> Result<admin::SaleView, BenchError> {
    let mut last = admin::sale_view(addr, sale_id)?;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        let now = admin::sale_view(addr, sale_id)?;
        if now.sold == last.sold && now.state == last.state {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

fn run(args: &RunArgs, command_line: &str, out: &mut dyn Write) -> Result<i32, BenchError> {
    let c = &args.common;
    let started = report::now_unix();
    let sale_id = c.sale.clone().unwrap_or_else(|| format!("bench-{started}"));
    let prepared = prepare(c, &sale_id)?;
    let mode = match args.rate {
        Some(r) if r > 0.0 => Mode::Open(Schedule::new(r, c.ramp)),
        Some(_) => return Err(BenchError::Usage("--rate must be positive".into())),
        None => Mode::Closed,
    };
    let cfg = load_config(c, &prepared, mode);
    let mode_name = describe_mode(args.rate, c);
    let rec = drive(
        c,
        &cfg,
        &format!("{:?} {mode_name}", c.scenario).to_lowercase(),
    )?;
    let summary = rec.summary(c.duration);
    if let Some(path) = &c.acked_out {
        write_acked(path, &rec)?;
    }
    if let Some(wait) = c.audit_after {
        say!(
            out,
            "waiting {wait:?} before the audit (payment timeout, settler's grace)"
        );
        std::thread::sleep(wait);
    }
    let checks = audit_run(c, &prepared, &rec);
    let name = c.name.clone().unwrap_or_else(|| {
        format!(
            "{}-{}-{}",
            format!("{:?}", c.scenario).to_lowercase(),
            if args.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            report::time_of_day(started)
        )
    });
    let record = RunRecord {
        name,
        command: command_line.to_string(),
        started_at: started,
        machine: Machine::detect(),
        versions: Versions::detect(),
        config: config_json(c, args.rate, &prepared),
        summary: Some(summary),
        audit: checks,
        find_max: None,
    };
    print_summary(out, &record, &mode_name);
    print_audit(out, c, &record.audit);
    save(out, c, &record, Some(rec.corrected()))?;
    Ok(if audit::passed(&record.audit) { 0 } else { 1 })
}

fn find_max(
    args: &FindMaxArgs,
    command_line: &str,
    out: &mut dyn Write,
) -> Result<i32, BenchError> {
    let c = &args.common;
    let started = report::now_unix();
    let base = c.sale.clone().unwrap_or_else(|| format!("bench-{started}"));
    let cfg = FindMaxConfig {
        slo_p99_ms: args.slo_p99.as_secs_f64() * 1e3,
        start_rate: args.start_rate,
        max_rate: args.max_rate,
        factor: args.factor,
        refine: args.refine,
        max_failure_ratio: args.max_failure_ratio,
        node_cores: args.node_cores,
        plan_rate: args.plan_rate,
    };
    let mut last: Option<(Recorder, Vec<Check>, Prepared)> = None;
    let mut all_checks: Vec<Check> = Vec::new();
    let result = findmax::find_max(
        &cfg,
        |rate, step| {
            let sale = if c.no_create {
                base.clone()
            } else {
                format!("{base}-{step}")
            };
            let prepared = prepare(c, &sale)?;
            let load = load_config(c, &prepared, Mode::Open(Schedule::new(rate, c.ramp)));
            let rec = drive(c, &load, &format!("step {step}: {rate:.0}/s"))?;
            let s = rec.summary(c.duration);
            let checks = audit_run(c, &prepared, &rec);
            for ch in &checks {
                if ch.verdict == audit::Verdict::Fail {
                    let mut ch = ch.clone();
                    ch.detail = format!("step {step} ({rate:.0}/s): {}", ch.detail);
                    all_checks.push(ch);
                }
            }
            let outcome = StepOutcome {
                rate,
                achieved_rps: s.throughput_rps,
                p50_ms: s.latency_ms.p50,
                p99_ms: s.latency_ms.p99,
                p999_ms: s.latency_ms.p999,
                sent: s.sent,
                failures: rec.failures(),
            };
            last = Some((rec, checks, prepared));
            Ok(outcome)
        },
        |step| {
            let o = &step.outcome;
            say!(
                out,
                "  {:>10.0} req/s offered  {:>10.0} answered/s  p50 {:>8.3} ms  p99 {:>8.3} ms  p99.9 {:>8.3} ms  failures {:>6}  {}: {}",
                o.rate,
                o.achieved_rps,
                o.p50_ms,
                o.p99_ms,
                o.p999_ms,
                o.failures,
                if step.pass { "PASS" } else { "FAIL" },
                step.reason
            );
        },
    )?;
    say!(out, "{}", result.headline());
    // The audit of every step: failures of any step, else the last step's checks.
    let checks = if all_checks.is_empty() {
        last.as_ref()
            .map(|(_, ch, _)| ch.clone())
            .unwrap_or_default()
    } else {
        all_checks
    };
    print_audit(out, c, &checks);
    let prepared = last.as_ref().map(|(_, _, p)| p);
    let record = RunRecord {
        name: c.name.clone().unwrap_or_else(|| {
            format!(
                "findmax-{}-{}",
                format!("{:?}", c.scenario).to_lowercase(),
                report::time_of_day(started)
            )
        }),
        command: command_line.to_string(),
        started_at: started,
        machine: Machine::detect(),
        versions: Versions::detect(),
        config: prepared
            .map(|p| config_json(c, None, p))
            .unwrap_or(serde_json::Value::Null),
        summary: last.as_ref().map(|(r, _, _)| r.summary(c.duration)),
        audit: checks,
        find_max: Some(result),
    };
    save(
        out,
        c,
        &record,
        last.as_ref().map(|(r, _, _)| r.corrected()),
    )?;
    Ok(if audit::passed(&record.audit) { 0 } else { 1 })
}

fn save(
    out: &mut dyn Write,
    c: &Common,
    record: &RunRecord,
    hist: Option<&hdrhistogram::Histogram<u64>>,
) -> Result<(), BenchError> {
    if c.no_save {
        return Ok(());
    }
    let dir = c
        .out
        .clone()
        .unwrap_or_else(|| report::default_run_dir(record.started_at));
    let path = report::write_run(&dir, record, hist)?;
    say!(
        out,
        "kept: {} (and .html, .hgrm, summary.md)",
        path.display()
    );
    Ok(())
}

fn describe_mode(rate: Option<f64>, c: &Common) -> String {
    match rate {
        Some(r) => format!(
            "open loop {r:.0} req/s{}, {} connections, {} thread{}",
            if c.ramp > Duration::ZERO {
                format!(" (ramp {:?})", c.ramp)
            } else {
                String::new()
            },
            c.connections,
            c.threads,
            if c.threads == 1 { "" } else { "s" }
        ),
        None => format!(
            "closed loop, {} connections, {} thread{}",
            c.connections,
            c.threads,
            if c.threads == 1 { "" } else { "s" }
        ),
    }
}

fn config_json(c: &Common, rate: Option<f64>, p: &Prepared) -> serde_json::Value {
    serde_json::json!({
        "target": c.target,
        "scenario": format!("{:?}", c.scenario).to_lowercase(),
        "mode": if rate.is_some() { "open" } else { "closed" },
        "rate": rate,
        "ramp_s": c.ramp.as_secs_f64(),
        "timeout_ms": c.timeout_ms,
        "connections": c.connections,
        "threads": c.threads,
        "duration_s": c.duration.as_secs_f64(),
        "requests": c.requests,
        "sale": p.sale.as_ref().map(|(id, setup)| serde_json::json!({"id": id, "setup": setup})),
        "users": c.users,
        "hot_users": c.hot_users,
        "hot_share": c.hot_share,
        "retry": c.retry,
        "keys": format!("{:?}", c.keys).to_lowercase(),
        "journal": c.journal,
        "order_log": c.order_log().map(|l| l.to_json()),
    })
}

fn print_summary(out: &mut dyn Write, r: &RunRecord, mode: &str) {
    let Some(s) = &r.summary else { return };
    say!(out, "seckill-bench {}: {mode}", r.name);
    say!(
        out,
        "  answers {} in {:.2} s = {:.0}/s; transport errors {}; timeouts {}; unanswered {}",
        s.completed,
        s.elapsed_s,
        s.throughput_rps,
        s.io_errors,
        s.timeouts,
        s.unfinished
    );
    if !s.io_errors_by_kind.is_empty() {
        let kinds: Vec<String> = s
            .io_errors_by_kind
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        say!(out, "  transport errors by kind  {}", kinds.join("  "));
    }
    if let Some(e) = &s.first_io_error {
        say!(out, "  first transport error: {e}");
    }
    for (label, p) in [
        ("latency (corrected)", &s.latency_ms),
        ("service (uncorrected)", &s.service_latency_ms),
    ] {
        say!(
            out,
            "  {label:22} p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3} ms",
            p.p50,
            p.p90,
            p.p99,
            p.p999,
            p.max
        );
    }
    let statuses: Vec<String> = s
        .by_status
        .iter()
        .map(|(k, n)| {
            format!(
                "{k}: {n} ({:.0}/s)",
                s.rps_by_status.get(k).copied().unwrap_or(0.0)
            )
        })
        .collect();
    say!(out, "  status  {}", statuses.join("  "));
    if !s.by_code.is_empty() {
        let codes: Vec<String> = s.by_code.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        say!(out, "  codes   {}", codes.join("  "));
    }
    if s.orders_acked + s.replays_acked > 0 {
        say!(
            out,
            "  orders  {} acknowledged, {} replays",
            s.orders_acked,
            s.replays_acked
        );
    }
}

fn print_audit(out: &mut dyn Write, c: &Common, checks: &[Check]) {
    if checks.is_empty() {
        return;
    }
    match c.order_log() {
        Some(log) => say!(out, "audit (order log: {}):", log.describe()),
        None => say!(out, "audit (no order log given):"),
    }
    for ch in checks {
        say!(out, "  {} {}: {}", ch.verdict, ch.name, ch.detail);
    }
    say!(
        out,
        "audit: {}",
        if audit::passed(checks) {
            "PASS"
        } else {
            "FAIL"
        }
    );
}
