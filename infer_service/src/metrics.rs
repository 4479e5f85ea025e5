//! Prometheus metrics of one service instance (its own registry, so several instances can run
//! in one process, as the tests do).

use std::time::Duration;

use crate::error::ErrorKind;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct ServiceMetrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    errors: IntCounterVec,
    batch_size: Histogram,
    batch_duration: Histogram,
    queue_wait: Histogram,
    queue_depth: IntGauge,
    abandoned: IntCounter,
    failed_runs: IntCounter,
    images: IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

impl ServiceMetrics {
    pub fn new(model_id: &str) -> prometheus::Result<ServiceMetrics> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new("infer_http_requests_total", "HTTP requests by route and status code"),
            &["route", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new("infer_http_request_duration_seconds", "HTTP request latency by route")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let errors =
            IntCounterVec::new(Opts::new("infer_errors_total", "Refused or failed requests by kind"), &["kind"])?;
        // Every kind is exposed from the start (at 0), so rates and alerts need no special case.
        for kind in ErrorKind::ALL {
            errors.with_label_values(&[kind.as_str()]);
        }
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("infer_batch_size", "Images per ONNX Runtime run").buckets(BATCH_BUCKETS.to_vec()),
        )?;
        let batch_duration = Histogram::with_opts(
            HistogramOpts::new("infer_batch_duration_seconds", "Duration of one ONNX Runtime run")
                .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let queue_wait = Histogram::with_opts(
            HistogramOpts::new("infer_queue_wait_seconds", "Time an image waited for its batch to start")
                .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let queue_depth = IntGauge::new(
            "infer_queue_depth",
            "Images admitted and not yet started on the model (being decoded or waiting for a batch)",
        )?;
        let abandoned = IntCounter::new(
            "infer_abandoned_images_total",
            "Images dropped unrun because their request was abandoned (deadline passed or client gone)",
        )?;
        let failed_runs = IntCounter::new(
            "infer_failed_runs_total",
            "ONNX Runtime runs that failed (the batch is then rerun by halves to isolate the failing images)",
        )?;
        let images = IntCounter::new("infer_images_total", "Images classified")?;
        let model_info = IntGauge::with_opts(
            Opts::new("infer_model_info", "The loaded model (always 1)").const_label("model_id", model_id),
        )?;
        model_info.set(1);

        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(batch_duration.clone()))?;
        registry.register(Box::new(queue_wait.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(abandoned.clone()))?;
        registry.register(Box::new(failed_runs.clone()))?;
        registry.register(Box::new(images.clone()))?;
        registry.register(Box::new(model_info))?;
        Ok(ServiceMetrics {
            registry,
            http_requests,
            http_duration,
            errors,
            batch_size,
            batch_duration,
            queue_wait,
            queue_depth,
            abandoned,
            failed_runs,
            images,
        })
    }

    pub fn observe_request(&self, route: &str, status: u16, elapsed: Duration) {
        self.http_requests.with_label_values(&[route, &status.to_string()]).inc();
        self.http_duration.with_label_values(&[route]).observe(elapsed.as_secs_f64());
    }

    pub fn count_error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    pub fn observe_batch(&self, size: usize, elapsed: Duration) {
        self.batch_size.observe(size as f64);
        self.batch_duration.observe(elapsed.as_secs_f64());
        self.images.inc_by(size as u64);
    }

    pub fn observe_queue_wait(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    pub fn queue_depth_changed(&self, by: i64) {
        self.queue_depth.add(by);
    }

    pub fn count_abandoned(&self, images: usize) {
        self.abandoned.inc_by(images as u64);
    }

    pub fn count_failed_run(&self) {
        self.failed_runs.inc();
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
