//! Start-up glue between `main` and the server: the admin token, the demo
//! sale, signal handling, and the "listening" banner that scripts and tests
//! read from standard output.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};

use tracing::info;

use crate::config::Config;
pub use crate::config::TokenFlags;
use crate::http::{Method, Request};
use std::sync::Arc;

use queue::OrderLog;
use stock::StockAuthority;

use crate::node::{ClusterNode, EmbeddedNode, KafkaNode, Node};
use crate::server::{self, Setup};

/// The sale `--demo` pre-loads.
pub const DEMO_SALE: &str = "demo";

/// Runs a node with `config` until SIGTERM or SIGINT: the embedded default,
/// or a cluster node when `--redis` is given.
pub fn run(config: Config) -> anyhow::Result<()> {
    let (token, generated) = match &config.admin_token {
        Some(t) => (t.clone(), false),
        None => (random_token()?, true),
    };
    let demo = config.demo;
    warn_if_trusted(&config);
    if config.kafka.is_some() {
        let node = KafkaNode::open_kafka(config, token.clone())?;
        crate::stats::start_publisher(node.clone(), node.authority.stats_board())?;
        crate::stats::start_lag_probe(node.clone())?;
        info!(
            node_id = node.config.node_id,
            topic = node.log.topic(),
            "cluster mode: Redis is the stock authority, Kafka the order log"
        );
        return serve(node, token, generated, demo);
    }
    if config.redis.is_some() {
        let node = ClusterNode::open_cluster(config, token.clone())?;
        crate::stats::start_publisher(node.clone(), node.authority.stats_board())?;
        info!(
            node_id = node.config.node_id,
            "cluster mode: Redis is the stock authority"
        );
        return serve(node, token, generated, demo);
    }
    let (node, replayed) = EmbeddedNode::open_embedded(config, token.clone())?;
    info!(
        events = replayed.events,
        sales = replayed.sales,
        orders = replayed.orders,
        "journal replayed"
    );
    serve(node, token, generated, demo)
}

fn serve<A: StockAuthority, L: OrderLog>(
    node: Arc<Node<A, L>>,
    token: String,
    generated: bool,
    demo: bool,
) -> anyhow::Result<()> {
    let stopper = node.clone();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    std::thread::Builder::new()
        .name("seckill-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                info!(signal = sig, "stopping: finishing requests in flight");
                stopper.shut_down();
            }
        })?;
    let setup: Option<Setup<A, L>> = demo.then(|| -> Setup<A, L> {
        let admin = format!("Bearer {token}");
        Box::new(move |core| {
            Box::pin(async move {
                let body = br#"{"stock": 100, "per_user_limit": 1}"#;
                let req = Request {
                    method: Method::Put,
                    path: "/admin/sales/demo",
                    idempotency_key: None,
                    authorization: Some(admin.as_bytes()),
                    request_id: None,
                    traceparent: None,
                    body,
                    keep_alive: true,
                    expects_continue: false,
                };
                let (mut out, mut scratch) = (Vec::new(), Vec::new());
                core.handle(&req, Ipv4Addr::LOCALHOST.into(), &mut out, &mut scratch)
                    .await;
                if !out.starts_with(b"HTTP/1.1 200") {
                    tracing::warn!(response = %String::from_utf8_lossy(&out), "demo sale not created");
                }
            })
        })
    });
    server::run(node, setup, |addr| banner(addr, &token, generated, demo))
}

fn banner(addr: SocketAddr, token: &str, generated: bool, demo: bool) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "seckill listening on http://{addr}");
    if generated || demo {
        let _ = writeln!(out, "admin token: {token}");
    }
    if demo {
        let _ = writeln!(
            out,
            "demo sale '{DEMO_SALE}' (stock 100, 1 per user). Try:\n  curl -s http://{addr}/sales/{DEMO_SALE}\n  curl -s -X POST http://{addr}/sales/{DEMO_SALE}/purchase -H 'Content-Type: application/json' -d '{{\"user_id\":\"alice\",\"quantity\":1}}'"
        );
    }
    let _ = out.flush();
}

/// Prints a token signed with the first configured buyer key.
pub fn token(config: &Config, flags: &TokenFlags) -> anyhow::Result<()> {
    let now = crate::clock::now_s();
    let claims = crate::auth::Claims {
        sub: &flags.sub,
        sale: flags.sale.as_deref(),
        exp: now.saturating_add(flags.ttl),
        nbf: None,
    };
    let token = config.buyer_keys.mint(&claims).ok_or_else(|| {
        anyhow::anyhow!("no buyer keys: set buyer_keys in the config file or SECKILL_BUYER_KEYS")
    })?;
    println!("{token}");
    Ok(())
}

/// Without buyer keys the node believes the body's `user_id`: say so.
fn warn_if_trusted(config: &Config) {
    if !config.buyer_keys.is_on() {
        tracing::warn!(
            "trusted mode: no buyer_keys, so the body's user_id is believed and orders are not \
             owner-checked; set buyer_keys (SECKILL_BUYER_KEYS) unless every client is trusted"
        );
    }
}

/// 128 random bits from the kernel, as hex.
fn random_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
