//! HTTP image classification with any ONNX ImageNet-style classifier.
//!
//! - [`api`]: request/response types (cheap to depend on: no runtime initialisation).
//! - [`preprocess`]: image bytes → normalised NCHW tensor ([`resample`]: Pillow-exact bilinear resize).
//! - [`model`]: the ONNX Runtime session and what it expects.
//! - [`batcher`]: dynamic batching on a dedicated inference thread.
//! - [`server`]: axum routes; [`linger`]: draining unread bodies before closing; [`service`]:
//!   assembling and serving an instance.

pub mod api;
pub mod batcher;
pub mod config;
pub mod error;
pub mod fuzzing;
pub mod labels;
pub mod linger;
pub mod metrics;
pub mod model;
pub mod preprocess;
pub mod resample;
pub mod runtime;
pub mod server;
pub mod service;

pub use config::{Args, ServiceConfig};
pub use service::{RunningService, Service};

use anyhow::Context;

/// Logs to stderr; `RUST_LOG` filters (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// The `infer-service` program: load the model, serve until SIGTERM or Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    init_tracing();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let config = args.service_config();
        let service = tokio::task::spawn_blocking(move || Service::load(&config)).await??;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tracing::info!(addr = %listener.local_addr()?, model_id = service.model_id(), "listening");
        service.serve(listener, shutdown_signal()).await
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = interrupt => tracing::info!("Ctrl-C received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
