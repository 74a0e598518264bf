//! Capacity harness and micro-benchmark support for seckill.
//!
//! The harness (`seckill-bench`) is how an operator decides, before the big
//! day, how many nodes a sale needs: it creates a sale through the admin
//! API, drives a node with a crowd of buyers open-loop (fixed rate, latency
//! corrected for coordinated omission) or closed-loop (N connections),
//! audits the invariants against the order log, and writes a JSON result and
//! an HTML report under `bench/runs/<date>-<host>/`.
//!
//! Layout:
//! - `schedule`: [`Schedule`], the open-loop send times (with the sale-start
//!   ramp); duration parsing.
//! - `scenario`: [`Workload`], [`PurchaseMix`] and [`RequestGen`]: which
//!   requests are sent and by which buyers (cold crowd, hot retriers,
//!   Idempotency-Keys).
//! - `client`: the load HTTP/1.1 client on monoio ([`client::Connection`])
//!   and the response parser.
//! - `engine`: [`run_load`]: thread per core, the pacer and slot queue of
//!   the open loop, the closed loop.
//! - `recorder`: [`Recorder`]: HdrHistograms (corrected and service
//!   latency), counts per status and code, timeline, acknowledged orders;
//!   [`Summary`], the JSON result.
//! - `admin`: blocking control-plane calls: create a sale, read its state.
//! - `orderlog`: [`OrderLogSource`], the seam for the order log: a
//!   read-only journal reader, and the Kafka topic of cluster mode (read to
//!   the high watermarks, redeliveries counted once).
//! - `audit`: [`audit::audit`], the invariant checks, PASS/FAIL each.
//! - `findmax`: [`findmax::find_max`], raise the rate until p99 breaks the
//!   SLO; capacity per node, per core, and nodes needed.
//! - `report`: the run directory: JSON, HTML with inline SVG plots, the
//!   `.hgrm` percentile table, machine and versions.
//! - `tokens`: [`tokens::BuyerTokens`], one pre-minted buyer token per
//!   simulated buyer (`--buyer-key`), for nodes with `buyer_keys`.
//! - `user`: [`user::User`], a simulated buyer (hot or cold, and its index).
//! - `summarize`: `seckill-bench summarize`, the medians over rounds and
//!   the ratios the bench scripts print, from CSV rows and run records.
//! - `cli`: the command line of `seckill-bench` (`run`, `find-max`,
//!   `summarize`).

pub mod admin;
pub mod audit;
pub mod cli;
pub mod client;
pub mod engine;
pub mod findmax;
pub mod orderlog;
pub mod recorder;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod summarize;
pub mod tokens;
pub mod user;

pub use engine::{run_load, LoadConfig, Mode};
pub use orderlog::{LogSpec, OrderLogSource};
pub use recorder::{Recorder, Summary};
pub use scenario::{PurchaseMix, RequestGen, Workload};
pub use schedule::Schedule;

/// Why the harness could not do what it was asked (as opposed to a
/// failed audit check, which is a finding).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The load could not run (cannot connect, thread died).
    #[error("load: {0}")]
    Load(String),
    /// A control-plane call failed (sale creation, sale state).
    #[error("admin: {0}")]
    Admin(String),
    /// The order log could not be read.
    #[error("order log: {0}")]
    Log(String),
    /// Writing the run's files failed.
    #[error("report: {0}")]
    Report(String),
    /// Bad arguments.
    #[error("usage: {0}")]
    Usage(String),
}
