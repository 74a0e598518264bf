//! `seckill-bench`: the capacity harness's command line (see `bench::cli`).

use clap::Parser;

fn main() {
    let command_line = std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$|&;<>*?".contains(c))
            {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    let cli = bench::cli::Cli::parse();
    std::process::exit(bench::cli::main_with(cli, command_line));
}
