//! Graceful shutdown: SIGTERM or Ctrl-C cancels one [`CancellationToken`] that every loop
//! watches (clones share it: cancelling any clone stops them all).

pub use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM (Kubernetes) or Ctrl-C.
pub fn listen_for_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!("{signal} received: stopping (finishing in-flight writes, then committing)");
        token.cancel();
    });
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "Ctrl-C",
        },
        Err(err) => {
            tracing::warn!("cannot listen for SIGTERM ({err}); only Ctrl-C stops gracefully");
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_cancellation() {
        let shutdown = CancellationToken::new();
        let watcher = shutdown.clone();
        assert!(!watcher.is_cancelled());
        let waiter = tokio::spawn(async move { watcher.cancelled().await });
        shutdown.clone().cancel();
        waiter.await.unwrap();
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn a_token_nobody_cancels_never_completes() {
        let never = CancellationToken::new();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), never.cancelled());
        assert!(waited.await.is_err());
    }
}
