//! `seckill`: load the configuration, start the node, serve until SIGTERM;
//! `seckill settle`: run the settler of a Kafka cluster.

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut flags = <seckill::config::Flags as clap::Parser>::parse();
    match flags.command.take() {
        Some(seckill::config::Command::Settle(settle)) => match seckill::settle::run(settle) {
            // Stopped at an event it cannot read (logged): a status of its
            // own, so that a supervisor can tell it from a crash.
            Err(e) if e.is::<seckill::settle::Unreadable>() => {
                std::process::exit(seckill::settle::EXIT_UNREADABLE)
            }
            other => other,
        },
        None => seckill::app::run(seckill::config::Config::from_flags(flags)?),
    }
}
