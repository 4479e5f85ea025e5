use std::io::IsTerminal;

use clap::Parser;

/// A follower's rounds with views build and free tens of thousands of small strings (the live
/// page's board): with glibc's allocator half of a round went to sorting its bins, and a single
/// change cost 44-54 ms of CPU; with mimalloc 14.5 ms (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    // Fault tests pause the process at named points (`FAILPOINTS=name=sleep(ms)`; see
    // docs/reliability.md); without the variable this does nothing.
    let _failpoints = fail::FailScenario::setup();
    // A usage error exits here with clap's code and message; everything after is a run.
    let plan = iot_dataflow::cli::Cli::parse().plan().unwrap_or_else(|err| err.exit());
    match iot_dataflow::cli::run(plan) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(iot_schema::exit::FAILED)
        }
    }
}
