//! `seckill`: load the configuration, start the node, serve until SIGTERM;
//! `seckill settle`: run the settler of a Kafka cluster;
//! `seckill token`: print a buyer token;
//! `seckill trace ORDER_ID`: print an order's life.

use std::io::IsTerminal;

use seckill::config::LogFormat;

fn main() -> anyhow::Result<()> {
    let mut flags = <seckill::config::Flags as clap::Parser>::parse();
    init_logging(flags.log_format.unwrap_or_default());
    match flags.command.take() {
        Some(seckill::config::Command::Settle(settle)) => match seckill::settle::run(settle) {
            // Stopped at an event it cannot read (logged): a status of its
            // own, so that a supervisor can tell it from a crash.
            Err(e) if e.is::<seckill::settle::Unreadable>() => {
                std::process::exit(seckill::settle::EXIT_UNREADABLE)
            }
            other => other,
        },
        Some(seckill::config::Command::Trace(trace)) => seckill::trace::run(trace),
        Some(seckill::config::Command::Token(token)) => {
            seckill::app::token(&seckill::config::Config::from_flags(flags)?, &token)
        }
        None => seckill::app::run(seckill::config::Config::from_flags(flags)?),
    }
}

/// Log lines go to stderr: text (colours only on a terminal, so a log file
/// or a pipe gets no escape codes) or JSON, one object a line.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}
