//! Counters a consumer keeps, served in Prometheus text format (`--metrics-listen`) and read
//! directly by `pipeline-bench`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus::core::{Atomic, GenericCounter};
use prometheus::{
    Counter, Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Which consumer keeps the counters: the `consumer` label of every series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Db,
    Infer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Db => "db",
            Role::Infer => "infer",
        }
    }
}

/// A step a record goes through in a consumer; the `stage` label of
/// `iot_ingest_consumer_stage_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// One `recv` from Kafka, per record (idle waits for new records included).
    KafkaRead,
    /// From a batch's first record read to the batch's start: filling the batch, and waiting for
    /// a free batch slot.
    BatchWait,
    /// Parsing and checking a batch's records, the image decode included.
    Parse,
    /// One request to the inference service (the infer-consumer), failed ones included.
    Infer,
    /// One `update` command of record upserts (with its one-by-one fallback, if needed).
    WriteRecords,
    /// One `update` command of change-log entries.
    WriteChanges,
    /// Sending one record to the dead-letter topic.
    DeadLetter,
    /// Handing a commit of the offsets done to Kafka (asynchronous: the call, not the broker).
    Commit,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::KafkaRead,
        Stage::BatchWait,
        Stage::Parse,
        Stage::Infer,
        Stage::WriteRecords,
        Stage::WriteChanges,
        Stage::DeadLetter,
        Stage::Commit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::KafkaRead => "kafka_read",
            Stage::BatchWait => "batch_wait",
            Stage::Parse => "parse",
            Stage::Infer => "infer",
            Stage::WriteRecords => "write_records",
            Stage::WriteChanges => "write_changes",
            Stage::DeadLetter => "dead_letter",
            Stage::Commit => "commit",
        }
    }
}

/// Time per [`Stage`]: a histogram per stage, in seconds.
#[derive(Clone, Debug)]
pub struct Stages(HistogramVec);

impl Stages {
    /// Bucket bounds: 100 µs to about 52 s, doubling.
    fn buckets() -> Vec<f64> {
        prometheus::exponential_buckets(1e-4, 2.0, 20).expect("valid buckets")
    }

    pub fn observe(&self, stage: Stage, took: Duration) {
        self.0.with_label_values(&[stage.as_str()]).observe(took.as_secs_f64());
    }

    /// Observations and their total seconds so far for `stage`.
    pub fn totals(&self, stage: Stage) -> (u64, f64) {
        let histogram = self.0.with_label_values(&[stage.as_str()]);
        (histogram.get_sample_count(), histogram.get_sample_sum())
    }
}

pub struct ConsumerMetrics {
    registry: Registry,
    pub received: IntCounter,
    pub written: IntCounter,
    pub dead_lettered: IntCounter,
    pub mongo_batches: IntCounter,
    pub mongo_write_seconds: Counter,
    pub mongo_retries: IntCounter,
    pub infer_requests: IntCounter,
    pub infer_images: IntCounter,
    pub infer_seconds: Counter,
    pub infer_retries: IntCounter,
    pub infer_splits: IntCounter,
    pub commits: IntCounter,
    pub commit_errors: IntCounter,
    pub id_collisions: IntCounter,
    pub mongo_stalls: IntCounter,
    /// Set from `stalled_since` when rendered.
    mongo_stall_seconds: Gauge,
    stalled_since: Mutex<Option<Instant>>,
    pub pauses: IntCounter,
    /// By `topic` and `partition`.
    pub offsets_skipped: IntCounterVec,
    /// By `stage`.
    pub stages: Stages,
}

impl ConsumerMetrics {
    pub fn new(role: Role) -> Arc<ConsumerMetrics> {
        let registry = Registry::new_custom(Some("iot_ingest".to_owned()), None).expect("a valid metric prefix");
        let register = Registrar { registry: &registry, role };
        let metrics = ConsumerMetrics {
            received: register.counter("records_received_total", "Kafka records read"),
            written: register.counter("records_written_total", "records durably written to MongoDB"),
            dead_lettered: register
                .counter("records_dead_lettered_total", "malformed records sent to the dead-letter topic"),
            mongo_batches: register.counter("mongo_batches_total", "batches of upserts sent to MongoDB"),
            mongo_write_seconds: register.counter("mongo_write_seconds_total", "time spent writing batches to MongoDB"),
            mongo_retries: register.counter("mongo_retries_total", "failed MongoDB writes that were retried"),
            infer_requests: register.counter("infer_requests_total", "successful inference service requests"),
            infer_images: register.counter("infer_images_total", "images classified by the inference service"),
            infer_seconds: register.counter("infer_seconds_total", "time spent in successful inference requests"),
            infer_retries: register
                .counter("infer_retries_total", "inference requests retried (service down or failing)"),
            infer_splits: register.counter(
                "infer_splits_total",
                "inference requests split in halves to isolate an image the service fails on or refuses",
            ),
            commits: register.counter("offset_commits_total", "offset commits sent to Kafka"),
            commit_errors: register.counter("offset_commit_errors_total", "offset commits Kafka refused"),
            id_collisions: register.counter(
                "id_collisions_total",
                "records dead-lettered because their _id holds another message's content",
            ),
            mongo_stalls: register
                .counter("mongo_stalls_total", "batch writes MongoDB did not answer within --mongo-op-timeout-ms"),
            mongo_stall_seconds: register.gauge(
                "mongo_stall_seconds",
                "how long MongoDB writes have been failing or unanswered (0 while they succeed)",
            ),
            stalled_since: Mutex::new(None),
            pauses: register.counter("consumer_pauses_total", "times reading paused because every batch slot was busy"),
            offsets_skipped: register.counter_vec(
                "offsets_skipped_total",
                "offsets Kafka deleted (retention) before this group read them",
                &["topic", "partition"],
            ),
            stages: register.stages(),
            registry,
        };
        Arc::new(metrics)
    }

    /// A MongoDB write failed or stalled; the first of a run marks when the stall began (`at`,
    /// the start of that write).
    pub fn stall_began(&self, at: Instant) {
        self.stalled_since.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(at);
    }

    /// A MongoDB write succeeded: returns how long the stall it ends lasted, if there was one.
    pub fn stall_ended(&self) -> Option<Duration> {
        let since = self.stalled_since.lock().unwrap_or_else(PoisonError::into_inner).take();
        since.map(|at| at.elapsed())
    }

    /// How long the current stall has lasted so far (none while writes succeed).
    pub fn stalled_for(&self) -> Option<Duration> {
        self.stalled_since.lock().unwrap_or_else(PoisonError::into_inner).map(|at| at.elapsed())
    }

    /// Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        self.mongo_stall_seconds.set(self.stalled_for().unwrap_or_default().as_secs_f64());
        let mut out = Vec::new();
        // Encoding counters into memory cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

struct Registrar<'a> {
    registry: &'a Registry,
    role: Role,
}

impl Registrar<'_> {
    /// Names and help texts are constants of this module, so a failure here is a bug in it.
    fn counter<P: Atomic + 'static>(&self, name: &str, help: &str) -> GenericCounter<P> {
        let opts = Opts::new(name, help).const_label("consumer", self.role.as_str());
        let counter = GenericCounter::with_opts(opts).expect("a valid counter definition");
        self.registry.register(Box::new(counter.clone())).expect("each counter registered once");
        counter
    }

    fn gauge(&self, name: &str, help: &str) -> Gauge {
        let opts = Opts::new(name, help).const_label("consumer", self.role.as_str());
        let gauge = Gauge::with_opts(opts).expect("a valid gauge definition");
        self.registry.register(Box::new(gauge.clone())).expect("each gauge registered once");
        gauge
    }

    fn stages(&self) -> Stages {
        let help = "time per step of a record's way through a consumer (see docs/ingest.md)";
        let opts = HistogramOpts::new("consumer_stage_seconds", help)
            .const_label("consumer", self.role.as_str())
            .buckets(Stages::buckets());
        let histograms = HistogramVec::new(opts, &["stage"]).expect("a valid histogram definition");
        self.registry.register(Box::new(histograms.clone())).expect("each histogram registered once");
        // Every stage shows from the start, at zero, so that dashboards need no special case.
        for stage in Stage::ALL {
            histograms.with_label_values(&[stage.as_str()]);
        }
        Stages(histograms)
    }

    fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        let opts = Opts::new(name, help).const_label("consumer", self.role.as_str());
        let counters = IntCounterVec::new(opts, labels).expect("a valid counter definition");
        self.registry.register(Box::new(counters.clone())).expect("each counter registered once");
        counters
    }
}

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(addr: std::net::SocketAddr, metrics: Arc<ConsumerMetrics>) -> anyhow::Result<()> {
    use axum::routing::get;
    // The path is the service's too: one name for the scrape annotations of every pod.
    let app = axum::Router::new().route(
        iot_schema::infer::ROUTE_METRICS,
        get(move || {
            let metrics = metrics.clone();
            async move { ([(axum::http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], metrics.render()) }
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
        let m = ConsumerMetrics::new(Role::Db);
        m.written.inc_by(3);
        m.mongo_write_seconds.inc_by(1.5);
        let text = m.render();
        assert!(text.contains("iot_ingest_records_written_total{consumer=\"db\"} 3\n"), "{text}");
        assert!(text.contains("iot_ingest_mongo_write_seconds_total{consumer=\"db\"} 1.5\n"), "{text}");
        assert!(text.contains("# TYPE iot_ingest_records_received_total counter"), "{text}");
    }

    #[test]
    fn stall_gauge_follows_the_stall() {
        let m = ConsumerMetrics::new(Role::Infer);
        assert!(m.render().contains("iot_ingest_mongo_stall_seconds{consumer=\"infer\"} 0\n"));
        m.stall_began(Instant::now() - Duration::from_secs(5));
        m.stall_began(Instant::now()); // a later failure of the same stall does not restart it
        let line = m.render().lines().find(|l| l.starts_with("iot_ingest_mongo_stall_seconds")).unwrap().to_owned();
        let seconds: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((5.0..60.0).contains(&seconds), "{line}");
        assert!(m.stall_ended().unwrap() >= Duration::from_secs(5));
        assert_eq!(m.stall_ended(), None);
        assert!(m.render().contains("iot_ingest_mongo_stall_seconds{consumer=\"infer\"} 0\n"));
    }

    #[test]
    fn every_stage_is_a_histogram_labelled_with_its_consumer() {
        let m = ConsumerMetrics::new(Role::Infer);
        m.stages.observe(Stage::Infer, Duration::from_millis(30));
        m.stages.observe(Stage::Infer, Duration::from_millis(10));
        assert_eq!(m.stages.totals(Stage::Infer).0, 2);
        assert!((m.stages.totals(Stage::Infer).1 - 0.04).abs() < 1e-9);
        let text = m.render();
        assert!(text.contains("# TYPE iot_ingest_consumer_stage_seconds histogram"), "{text}");
        assert!(
            text.contains("iot_ingest_consumer_stage_seconds_count{consumer=\"infer\",stage=\"infer\"} 2\n"),
            "{text}"
        );
        for stage in Stage::ALL {
            let series =
                format!("iot_ingest_consumer_stage_seconds_count{{consumer=\"infer\",stage=\"{}\"}}", stage.as_str());
            assert!(text.contains(&series), "{series} missing from {text}");
        }
    }

    #[test]
    fn skipped_offsets_name_their_partition() {
        let m = ConsumerMetrics::new(Role::Db);
        m.offsets_skipped.with_label_values(&["iot_images", "3"]).inc_by(7);
        let text = m.render();
        assert!(
            text.contains("iot_ingest_offsets_skipped_total{consumer=\"db\",partition=\"3\",topic=\"iot_images\"} 7\n"),
            "{text}"
        );
    }
}
