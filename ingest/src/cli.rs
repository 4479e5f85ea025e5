//! What every binary's `main` does around its library call: logging, a runtime, signals, and
//! the exit status.

use std::future::Future;
use std::process::ExitCode;

use crate::shutdown::{self, Shutdown};

/// Runs `body` on a multi-threaded runtime with SIGTERM/Ctrl-C wired to a graceful shutdown.
/// Exit status 0 on success (also after a graceful stop), 1 on error.
pub fn run_service<F, Fut>(body: F) -> ExitCode
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    crate::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return report_outcome(Err(err.into())),
    };
    let outcome = runtime.block_on(async {
        let (trigger, shutdown) = shutdown::channel();
        shutdown::listen_for_signals(trigger);
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
            ExitCode::FAILURE
        }
    }
}
