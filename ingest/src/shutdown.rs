//! Graceful shutdown: SIGTERM or Ctrl-C flips one flag that every loop watches.

use tokio::sync::watch;

/// The sending side: whoever may ask for a shutdown (the signal listener, a bench, a test).
#[derive(Clone, Debug)]
pub struct Trigger(std::sync::Arc<watch::Sender<bool>>);

/// The watching side, cloned into every task that must stop.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(std::sync::Arc::new(tx)), Shutdown(rx))
}

impl Trigger {
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// A shutdown that never comes, for callers that stop by other means.
    pub fn never() -> Shutdown {
        let (trigger, shutdown) = channel();
        // Keep the sender alive for ever so that `requested` never completes.
        std::mem::forget(trigger);
        shutdown
    }

    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once a shutdown was asked for (at once if it already was).
    pub async fn requested(&mut self) {
        // An error means every trigger is gone: no shutdown can come any more.
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Triggers a shutdown on the first SIGTERM (Kubernetes) or Ctrl-C.
pub fn listen_for_signals(trigger: Trigger) {
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!("{signal} received: stopping (finishing in-flight writes, then committing)");
        trigger.trigger();
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
    async fn every_watcher_sees_the_trigger() {
        let (trigger, shutdown) = channel();
        let mut a = shutdown.clone();
        assert!(!a.is_requested());
        let waiter = tokio::spawn(async move { a.requested().await });
        trigger.trigger();
        waiter.await.unwrap();
        assert!(shutdown.is_requested());
    }

    #[tokio::test]
    async fn never_does_not_complete() {
        let mut never = Shutdown::never();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(20), never.requested());
        assert!(waited.await.is_err());
    }
}
