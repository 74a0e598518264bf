//! The seckill node: a thread-per-core flash-sale HTTP service.
//!
//! Layout:
//! - `config`: [`config::Config`], loaded once from flags, env and TOML;
//!   the subcommands' flags.
//! - `clock`: the wall clock (Unix seconds, milliseconds, microseconds).
//! - `server`: one monoio runtime and SO_REUSEPORT listener per core, the
//!   connection loop, the expiry sweeper, graceful stop.
//! - `http`: HTTP/1.1 parsing (httparse) with limits, response writing,
//!   [`http::Reply`] (what a handler answers).
//! - `api`: routing and the handlers of the API (docs/api.md); the purchase hot
//!   path is `Core::purchase`.
//! - `node`: [`node::Node`] (shared: config, stock authority, order log,
//!   metrics) and [`node::Core`] (per core: sale cache, admission queue),
//!   and the journal replay.
//! - `error`: [`error::ApiError`], the one place errors become statuses and
//!   stable codes.
//! - `reqid`: request ids (`X-Request-Id`, made on the core when the
//!   client sent none valid) and the client's `traceparent`.
//! - `ratelimit`: per-core per-user and per-IP purchase rate limits (GCRA).
//! - `metrics`: per-core counters, Prometheus text on `/metrics`.
//! - `stats`: `GET /admin/stats`, the operator's numbers; in cluster mode
//!   every live node's record (published in Redis each second).
//! - `dashboard`: `GET /dashboard`, the live page embedded in the binary.
//! - `timefmt`: RFC 3339 times for the admin API.
//! - `openapi`: the OpenAPI document of the API (`docs/openapi.yaml`),
//!   served at `GET /openapi.json`.
//! - `app`: start-up glue used by `main`: token, demo sale, signals.
//! - `trace`: `seckill trace ORDER_ID`, an order's life from the journal,
//!   Redis and the Kafka topic.
//! - `settle`: `seckill settle`, the settler of a Kafka cluster (expiry,
//!   reconciliation of changes that never reached the log).

pub mod api;
pub mod app;
pub mod auth;
pub mod clock;
pub mod config;
pub mod dashboard;
pub mod error;
pub mod http;
pub mod metrics;
pub mod node;
pub mod openapi;
pub mod ratelimit;
pub mod reqid;
pub mod server;
pub mod settle;
pub mod stats;
pub mod timefmt;
pub mod trace;
