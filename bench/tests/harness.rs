//! Integration tests of the capacity harness: each test starts its own
//! server on `127.0.0.1:0` inside the test (no node build needed) and
//! drives it with the harness.
//!
//! Layout:
//! - `support`: the test servers: [`support::DelayServer`] (known delay,
//!   injected stall, optional `connection: close`),
//!   [`support::AbruptServer`] (resets, dies, swallows requests) and
//!   [`support::FakeNode`] (a small seckill lookalike that writes a real
//!   journal, with injectable faults: oversell, lost order, ignored limit,
//!   stranded stock).
//! - `timing`: open-loop percentiles against a known delay and a stall
//!   (coordinated-omission correction), closed loop, reconnects, ramp.
//! - `audit`: the audit passes a clean sale and fails on every injected
//!   fault, including a corrupted copy of a journal; the CLI's exit codes
//!   and run files.
//! - `kafka`: the audit against the Kafka order topic on a real broker
//!   (tansu via `seckill_testkit::kafka::Broker`; `scripts/kafka.sh`
//!   installs it) with [`support::FakeNode::start_kafka`]: clean sales on
//!   a shared topic and redeliveries pass, lost orders, oversell and
//!   doctored copies fail, a missing topic or broker fails in bounded time.
//! - `faults`: connections reset mid-run, a node killed mid-run, requests
//!   never answered ([`support::AbruptServer`]): counted as transport
//!   errors or timeouts, and the run always finishes.

#[path = "harness/support.rs"]
mod support;

#[path = "harness/audit.rs"]
mod audit;
#[path = "harness/faults.rs"]
mod faults;
#[path = "harness/kafka.rs"]
mod kafka;
#[path = "harness/timing.rs"]
mod timing;
