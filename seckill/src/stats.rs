//! `GET /admin/stats`: the operator's numbers in one JSON document, what
//! the dashboard polls and tests read.
//!
//! A node's own record ([`NodeRecord`]: purchases by outcome and their
//! rates, purchase latency p50/p99, admission) is computed from the per-core
//! counters of [`crate::metrics`] when read; nothing here runs per request.
//! In cluster mode the node also publishes its record in Redis once a
//! second ([`start_publisher`] → `stock::redis::stats`), and the document
//! lists every live node's record and their totals; in embedded mode the
//! list is the node itself.

use std::sync::Arc;
use std::time::Duration;

use queue::OrderLog;
use serde::{Deserialize, Serialize};
use stock::redis::stats::StatsBoard;
use stock::StockAuthority;

use crate::clock::{now_ms, now_s};
use crate::error::ApiError;
use crate::metrics::OUTCOMES;
use crate::node::{Core, Node};

/// Counts or rates by purchase outcome (the keys of [`OUTCOMES`]).
#[derive(Serialize, Deserialize, Clone, Copy, Default, Debug, PartialEq)]
pub struct Outcomes<T> {
    #[serde(rename = "200")]
    pub ok: T,
    #[serde(rename = "410")]
    pub sold_out: T,
    #[serde(rename = "409")]
    pub conflict: T,
    #[serde(rename = "429")]
    pub rate_limited: T,
    #[serde(rename = "503")]
    pub unavailable: T,
    pub other: T,
}

impl<T: Copy> Outcomes<T> {
    fn from_array(a: [T; OUTCOMES.len()]) -> Self {
        Outcomes {
            ok: a[0],
            sold_out: a[1],
            conflict: a[2],
            rate_limited: a[3],
            unavailable: a[4],
            other: a[5],
        }
    }
}

impl<T: Copy + std::ops::Add<Output = T>> Outcomes<T> {
    fn add(self, o: Self) -> Self {
        Outcomes {
            ok: self.ok + o.ok,
            sold_out: self.sold_out + o.sold_out,
            conflict: self.conflict + o.conflict,
            rate_limited: self.rate_limited + o.rate_limited,
            unavailable: self.unavailable + o.unavailable,
            other: self.other + o.other,
        }
    }
}

/// One node's numbers: what it shows and, in cluster mode, publishes.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct NodeRecord {
    pub node_id: u32,
    pub mode: String,
    pub at_ms: u64,
    pub purchases: Outcomes<u64>,
    /// Purchases a second between the last two samples
    /// (`Metrics::purchase_rates`).
    pub rates: Outcomes<f64>,
    pub latency_ms: Latency,
    pub admission: AdmissionStats,
    /// Purchases failed by a backend.
    pub backend: BackendErrors,
    /// Cluster mode: the node's stats exchange with Redis.
    pub redis: Option<RedisHealth>,
    /// Kafka mode: the order log's consumers. Absent in the records of
    /// older nodes.
    #[serde(default)]
    pub kafka: Option<KafkaHealth>,
}

/// The order topic's consumers, as a node sees them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub struct KafkaHealth {
    /// The settlers' lag, measured at the broker each second; `null`
    /// until measured (or while the broker does not answer).
    pub settler_lag: Option<SettlerLag>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub struct SettlerLag {
    /// Events past the settlers' committed offsets.
    pub events: u64,
    /// Age of the oldest of them, seconds (0 when caught up).
    pub seconds: f64,
}

/// Purchases failed by a backend (`metrics::BACKEND_ERRORS`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default)]
pub struct BackendErrors {
    /// The stock authority refused or could not be reached.
    pub stock_unavailable: u64,
    /// The stock authority's answer never came: abandoned by order id.
    pub undetermined: u64,
    /// The order log failed the append (Kafka: a failed delivery).
    pub log_failed: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    /// Orders measured (new orders answered 200).
    pub count: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub struct AdmissionStats {
    pub tokens: u64,
    pub in_flight: u64,
    pub waiting: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub struct RedisHealth {
    /// Round trip of the last stats exchange (one script call).
    pub last_latency_ms: f64,
    pub publishes: u64,
    pub errors: u64,
    /// The backend's script calls: p50/p99 in ms and how many. Absent in
    /// the records of older nodes.
    #[serde(default)]
    pub calls: Option<RedisCalls>,
}

/// Latency of the backend's Redis script calls, by call.
#[derive(Serialize, Deserialize, Clone, Copy, Debug)]
pub struct RedisCalls {
    /// One pipeline of reservations (`reserve.lua`).
    pub reserve: Latency,
    /// One pipeline of Idempotency-Key recalls (`recall.lua`).
    pub recall: Latency,
    /// One order move: pay, cancel, expiry (`transition.lua`).
    pub transition: Latency,
}

#[derive(Serialize)]
struct SaleStats<'a> {
    sale_id: &'a str,
    state: &'static str,
    stock: u64,
    sold: u64,
    remaining: u64,
}

#[derive(Serialize)]
struct Totals {
    purchases: Outcomes<u64>,
    rates: Outcomes<f64>,
}

#[derive(Serialize)]
struct Document<'a> {
    #[serde(flatten)]
    node: &'a NodeRecord,
    sales: Vec<SaleStats<'a>>,
    nodes: Vec<NodeRecord>,
    totals: Totals,
}

/// Counts one purchase's answer on its core: its outcome, a backend's
/// failure, the core's admission gauges. Plain stores on the core's own
/// metrics slot: no lock, no allocation.
pub fn count_purchase<A: StockAuthority, L: OrderLog>(
    core: &Core<A, L>,
    answer: &Result<crate::http::Reply, ApiError>,
) {
    let m = core.metrics();
    m.purchase(answer.as_ref().map_or_else(ApiError::status, |r| r.status));
    match answer {
        Err(ApiError::Stock(stock::StockError::Unavailable(_))) => m.backend_error(0),
        Err(ApiError::Stock(stock::StockError::Undetermined(_))) => m.backend_error(1),
        Err(ApiError::Log(_)) => m.backend_error(2),
        _ => {}
    }
    let a = &core.admission;
    m.admission(a.tokens() - a.available(), a.waiting());
}

/// Kafka mode: measures the settlers' lag at the broker each second, on a
/// thread of its own (the calls block), into `Metrics::settler_lag`.
pub fn start_lag_probe<A, L>(node: Arc<Node<A, L>>) -> std::io::Result<()>
where
    A: StockAuthority + Send + Sync + 'static,
    L: OrderLog + Send + Sync + 'static,
{
    let Some(brokers) = node.config.kafka.clone() else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name("seckill-lag".into())
        .spawn(move || {
            let config = &node.config;
            let timeout = Duration::from_millis(config.kafka_timeout_ms.min(2_000));
            let probe = match queue::kafka::LagProbe::new(
                &brokers,
                &config.kafka_topic,
                &config.settler_group,
                timeout,
            ) {
                Ok(probe) => probe,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot measure the settlers' lag");
                    return;
                }
            };
            while !node.is_shutting_down() {
                let lag = probe.measure(now_ms());
                if let Err(e) = &lag {
                    tracing::debug!(error = %e, "cannot measure the settlers' lag");
                }
                *node.metrics.settler_lag.lock() = lag.ok();
                std::thread::sleep(Duration::from_secs(1));
            }
        })?;
    Ok(())
}

/// This node's record, as of now.
pub fn record<A: StockAuthority, L: OrderLog>(node: &Node<A, L>) -> NodeRecord {
    let m = &node.metrics;
    let (p50, count) = m.latency_quantile_ms(0.5);
    let (p99, _) = m.latency_quantile_ms(0.99);
    let (in_flight, waiting) = m.admission();
    let redis = m.board.get().map(|b| {
        let h = b.health();
        let of = |call| {
            let (p50, count) = b.calls.quantile_ms(call, 0.5);
            let (p99, _) = b.calls.quantile_ms(call, 0.99);
            Latency { p50, p99, count }
        };
        use stock::redis::stats::ScriptCall;
        RedisHealth {
            last_latency_ms: h.last_latency_us as f64 / 1e3,
            publishes: h.publishes,
            errors: h.errors,
            calls: Some(RedisCalls {
                reserve: of(ScriptCall::Reserve),
                recall: of(ScriptCall::Recall),
                transition: of(ScriptCall::Transition),
            }),
        }
    });
    let kafka = node.config.kafka.is_some().then(|| KafkaHealth {
        settler_lag: m.settler_lag.lock().map(|l| SettlerLag {
            events: l.events,
            seconds: l.seconds,
        }),
    });
    NodeRecord {
        node_id: node.config.node_id,
        mode: if node.config.redis.is_some() {
            "cluster"
        } else {
            "embedded"
        }
        .to_owned(),
        at_ms: now_ms(),
        purchases: Outcomes::from_array(m.purchases()),
        rates: Outcomes::from_array(m.purchase_rates()),
        latency_ms: Latency { p50, p99, count },
        backend: {
            let [stock_unavailable, undetermined, log_failed] = m.backend_errors();
            BackendErrors {
                stock_unavailable,
                undetermined,
                log_failed,
            }
        },
        admission: AdmissionStats {
            tokens: (node.config.admission_tokens * node.config.cores) as u64,
            in_flight,
            waiting,
        },
        redis,
        kafka,
    }
}

/// Writes the `/admin/stats` document into `body`.
pub fn render<A: StockAuthority, L: OrderLog>(node: &Node<A, L>, body: &mut Vec<u8>) {
    let own = record(node);
    let nodes: Vec<NodeRecord> = match node.metrics.board.get() {
        Some(board) => {
            let mut nodes: Vec<NodeRecord> = board
                .nodes()
                .iter()
                .filter(|(id, _)| *id != own.node_id)
                .filter_map(|(_, json)| serde_json::from_str(json).ok())
                .collect();
            nodes.push(own.clone());
            nodes.sort_by_key(|n| n.node_id);
            nodes
        }
        None => vec![own.clone()],
    };
    let totals = nodes.iter().fold(
        Totals {
            purchases: Outcomes::default(),
            rates: Outcomes::default(),
        },
        |t, n| Totals {
            purchases: t.purchases.add(n.purchases),
            rates: t.rates.add(n.rates),
        },
    );
    let all = node.authority.sales();
    let now = now_s();
    let mut sales: Vec<SaleStats> = all
        .iter()
        .map(|sale| SaleStats {
            sale_id: sale.id(),
            state: sale.state(now).as_str(),
            stock: sale.spec().stock,
            sold: sale.sold(),
            remaining: sale.remaining(),
        })
        .collect();
    sales.sort_by(|a, b| a.sale_id.cmp(b.sale_id));
    let doc = Document {
        node: &own,
        sales,
        nodes,
        totals,
    };
    let _ = serde_json::to_writer(body, &doc);
}

/// Cluster mode: hands this node's record to `board` once a second, on the
/// `seckill-stats` thread, until the node shuts down; the cluster backend
/// publishes it in Redis and reads the other nodes' back.
pub fn start_publisher<A, L>(node: Arc<Node<A, L>>, board: Arc<StatsBoard>) -> std::io::Result<()>
where
    A: StockAuthority + Send + Sync + 'static,
    L: OrderLog + Send + Sync + 'static,
{
    let _ = node.metrics.board.set(board.clone());
    std::thread::Builder::new()
        .name("seckill-stats".into())
        .spawn(move || {
            while !node.is_shutting_down() {
                if let Ok(json) = serde_json::to_string(&record(&node)) {
                    board.set_record(&json);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })?;
    Ok(())
}
