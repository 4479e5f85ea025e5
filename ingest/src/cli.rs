//! What every binary's `main` does around its library call: parsing, logging, a runtime,
//! signals, and the exit status (`iot_schema::exit`: 0 done, 1 failed, 2 usage error).

use std::future::Future;
use std::process::ExitCode;

use crate::shutdown::{self, CancellationToken};

/// Parses the command line. A combination of flags `check` refuses is a usage error like
/// clap's own: the message, the usage line, and exit code 2 ([`iot_schema::exit::USAGE`]).
pub fn parse_args<A: clap::Parser>(check: impl FnOnce(&A) -> Result<(), String>) -> A {
    let args = A::parse();
    if let Err(message) = check(&args) {
        A::command().error(clap::error::ErrorKind::ValueValidation, message).exit();
    }
    args
}

/// Runs `body` on a multi-threaded runtime with SIGTERM/Ctrl-C wired to a graceful shutdown.
/// Exit status 0 on success (also after a graceful stop), 1 ([`iot_schema::exit::FAILED`]) on error.
pub fn run_service<F, Fut>(body: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    crate::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return report_outcome(Err(err.into())),
    };
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        shutdown::listen_for_signals(shutdown.clone());
        body(shutdown).await
    });
    report_outcome(outcome)
}

pub fn report_outcome(outcome: anyhow::Result<()>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            ExitCode::from(iot_schema::exit::FAILED)
        }
    }
}
