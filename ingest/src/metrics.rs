//! Counters a consumer keeps, served in Prometheus text format (`--metrics-listen`) and read
//! directly by `pipeline-bench`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Metrics {
    pub received: AtomicU64,
    pub written: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub mongo_batches: AtomicU64,
    pub mongo_write_nanos: AtomicU64,
    pub mongo_retries: AtomicU64,
    pub infer_requests: AtomicU64,
    pub infer_images: AtomicU64,
    pub infer_nanos: AtomicU64,
    pub infer_retries: AtomicU64,
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
}

/// `Metrics` counters are plain monotonic counts: relaxed ordering is enough.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

pub fn add_duration(counter: &AtomicU64, elapsed: Duration) {
    add(counter, u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
}

pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// Prometheus text exposition of every counter, labelled with the consumer's role.
    pub fn render(&self, role: &str) -> String {
        let seconds = |c: &AtomicU64| get(c) as f64 / 1e9;
        let rows: [(&str, &str, f64); 12] = [
            ("records_received_total", "Kafka records read", get(&self.received) as f64),
            ("records_written_total", "records durably written to MongoDB", get(&self.written) as f64),
            (
                "records_dead_lettered_total",
                "malformed records sent to the dead-letter topic",
                get(&self.dead_lettered) as f64,
            ),
            ("mongo_batches_total", "batches of upserts sent to MongoDB", get(&self.mongo_batches) as f64),
            ("mongo_write_seconds_total", "time spent writing batches to MongoDB", seconds(&self.mongo_write_nanos)),
            ("mongo_retries_total", "failed MongoDB writes that were retried", get(&self.mongo_retries) as f64),
            ("infer_requests_total", "successful inference service requests", get(&self.infer_requests) as f64),
            ("infer_images_total", "images classified by the inference service", get(&self.infer_images) as f64),
            ("infer_seconds_total", "time spent in successful inference requests", seconds(&self.infer_nanos)),
            (
                "infer_retries_total",
                "inference requests retried (service down or 5xx)",
                get(&self.infer_retries) as f64,
            ),
            ("offset_commits_total", "offset commits sent to Kafka", get(&self.commits) as f64),
            ("offset_commit_errors_total", "offset commits Kafka refused", get(&self.commit_errors) as f64),
        ];
        let mut out = String::new();
        for (name, help, value) in rows {
            let _ = writeln!(out, "# HELP iot_ingest_{name} {help}");
            let _ = writeln!(out, "# TYPE iot_ingest_{name} counter");
            let _ = writeln!(out, "iot_ingest_{name}{{consumer=\"{role}\"}} {value}");
        }
        out
    }
}

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(addr: std::net::SocketAddr, metrics: Arc<Metrics>, role: &'static str) -> anyhow::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render(role)) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e}"))?;
    tracing::info!("metrics at http://{addr}/metrics");
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!("metrics server stopped: {err}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        add(&m.written, 3);
        add_duration(&m.mongo_write_nanos, Duration::from_millis(1500));
        let text = m.render("db");
        assert!(text.contains("iot_ingest_records_written_total{consumer=\"db\"} 3\n"), "{text}");
        assert!(text.contains("iot_ingest_mongo_write_seconds_total{consumer=\"db\"} 1.5\n"), "{text}");
        assert!(text.contains("# TYPE iot_ingest_records_received_total counter"));
    }
}
