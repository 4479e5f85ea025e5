//! The `infer-consumer`: asks the inference service for each record's label and stores it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;

use super::{Handled, Handler};
use crate::args::{ConsumerArgs, KafkaArgs, MongoArgs};
use crate::backoff::{Backoff, ShutdownRequested};
use crate::infer_client::{InferClient, InferError, InferReply};
use crate::latency::{LatencyLog, LatencyRow};
use crate::message::{Malformed, Parsed};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::Store;

/// Sends image records to the inference service (several images per request, several requests
/// in flight) and upserts the label into MongoDB, committing Kafka offsets only after the write.
#[derive(Clone, Debug, Parser)]
#[command(name = "infer-consumer", version)]
pub struct InferConsumerArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub mongo: MongoArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    /// Kafka consumer group.
    #[arg(long, env = "IOT_GROUP", default_value = "iot-infer-consumer")]
    pub group: String,
    /// Base URL of the inference service (its `POST /v1/infer`).
    #[arg(long, env = "IOT_INFER_URL", default_value = "http://127.0.0.1:5000")]
    pub infer_url: String,
    /// Images per inference request.
    #[arg(long, env = "IOT_IMAGES_PER_REQUEST", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub images_per_request: u64,
    /// Inference requests (each followed by its MongoDB write) in flight at once.
    #[arg(long, env = "IOT_IN_FLIGHT", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub in_flight: u64,
    /// Time limit of one inference request.
    #[arg(long, env = "IOT_REQUEST_TIMEOUT_S", default_value_t = 60, value_name = "SECONDS")]
    pub request_timeout_s: u64,
    /// Append `ProducerID,ID,SentAt,InferredAt,latency_ms` for each stored inference here.
    #[arg(long, env = "IOT_LATENCY_LOG", value_name = "FILE")]
    pub latency_log: Option<PathBuf>,
}

pub struct InferenceWriter {
    client: InferClient,
    store: Store,
    backoff: Backoff,
    metrics: Arc<Metrics>,
    latency: Option<LatencyLog>,
}

/// The service's verdict on one image.
enum Verdict {
    Label { label: String, model_id: String },
    Refused(String),
}

impl InferenceWriter {
    /// One request, retried while the service is down or failing; a rejection is returned.
    async fn infer_with_retry(
        &self,
        images: &[&str],
        shutdown: &Shutdown,
    ) -> Result<Result<InferReply, InferError>, ShutdownRequested> {
        let mut backoff = self.backoff.clone();
        let mut shutdown = shutdown.clone();
        loop {
            let started = Instant::now();
            match self.client.infer(images).await {
                Ok(reply) => {
                    self.metrics.infer_requests.inc();
                    self.metrics.infer_images.inc_by(images.len() as u64);
                    self.metrics.infer_seconds.inc_by(started.elapsed().as_secs_f64());
                    return Ok(Ok(reply));
                }
                Err(rejected @ InferError::Rejected { .. }) => return Ok(Err(rejected)),
                Err(InferError::Unavailable(why)) => {
                    self.metrics.infer_retries.inc();
                    if shutdown.is_requested() {
                        return Err(ShutdownRequested);
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        "inference of {} image(s) failed (attempt {}): {why}; retrying in {} ms",
                        images.len(),
                        backoff.attempts(),
                        delay.as_millis()
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.requested() => return Err(ShutdownRequested),
                    }
                }
            }
        }
    }

    /// A verdict per record. When the service rejects a batch, each image is sent alone so that
    /// only the bad ones are refused.
    async fn classify(&self, batch: &[Parsed], shutdown: &Shutdown) -> Result<Vec<Verdict>, ShutdownRequested> {
        let images: Vec<&str> = batch.iter().map(|p| p.msg.data.as_str()).collect();
        let verdicts = |reply: InferReply| {
            reply.results.into_iter().map(move |r| Verdict::Label { label: r.label, model_id: reply.model_id.clone() })
        };
        match self.infer_with_retry(&images, shutdown).await? {
            Ok(reply) => return Ok(verdicts(reply).collect()),
            Err(InferError::Rejected { reason, .. }) if images.len() == 1 => return Ok(vec![Verdict::Refused(reason)]),
            Err(err) => tracing::info!("{err}; sending the {} images one by one", images.len()),
        }
        let mut out = Vec::with_capacity(images.len());
        for image in images {
            match self.infer_with_retry(&[image], shutdown).await? {
                Ok(reply) => out.extend(verdicts(reply)),
                Err(err) => out.push(Verdict::Refused(err.to_string())),
            }
        }
        Ok(out)
    }
}

impl Handler for InferenceWriter {
    async fn handle(&self, batch: Vec<Parsed>, shutdown: &Shutdown) -> Vec<Handled> {
        let verdicts = match self.classify(&batch, shutdown).await {
            Ok(verdicts) => verdicts,
            Err(ShutdownRequested) => return batch.into_iter().map(|p| Handled::Abandoned(p.inbound.pos)).collect(),
        };
        let inferred_at = crate::now_ms();
        let stamp = bson::DateTime::from_millis(inferred_at);
        let mut writes = Vec::with_capacity(batch.len());
        for (parsed, verdict) in batch.iter().zip(&verdicts) {
            if let Verdict::Label { label, model_id } = verdict {
                writes.push(iot_schema::write::store_inference(&parsed.msg, label, model_id, stamp));
            }
        }
        let written = match writes.is_empty() {
            true => Ok(super::Written::default()),
            false => super::write_durably(&self.store, &writes, &self.metrics, self.backoff.clone(), shutdown).await,
        };
        if written.is_ok() {
            self.log_latencies(&batch, &verdicts, inferred_at);
        }
        batch
            .into_iter()
            .zip(verdicts)
            .map(|(parsed, verdict)| match (verdict, &written) {
                (Verdict::Refused(reason), _) => {
                    Handled::Rejected(Box::new(parsed), Malformed::RejectedByService(reason))
                }
                (Verdict::Label { .. }, Ok(written)) => written.outcome(parsed),
                (Verdict::Label { .. }, Err(_)) => Handled::Abandoned(parsed.inbound.pos),
            })
            .collect()
    }
}

impl InferenceWriter {
    fn log_latencies(&self, batch: &[Parsed], verdicts: &[Verdict], inferred_at: i64) {
        let Some(log) = &self.latency else { return };
        let rows: Vec<LatencyRow> = batch
            .iter()
            .zip(verdicts)
            .filter(|(_, v)| matches!(v, Verdict::Label { .. }))
            .filter_map(|(p, _)| {
                p.msg.sent_at_ms.map(|sent| LatencyRow::new(&p.msg.producer_id, p.msg.id, sent, inferred_at))
            })
            .collect();
        if let Err(err) = log.append(&rows) {
            tracing::error!("cannot write the latency log: {err:#}");
        }
    }
}

pub async fn run(args: InferConsumerArgs, metrics: Arc<Metrics>, shutdown: Shutdown) -> Result<()> {
    if let Some(addr) = args.consumer.metrics_listen {
        crate::metrics::serve(addr, metrics.clone()).await?;
    }
    let client = InferClient::new(&args.infer_url, Duration::from_secs(args.request_timeout_s.max(1)))?;
    let latency = args.latency_log.as_deref().map(LatencyLog::open).transpose()?;
    let store = Store::open(&args.mongo).await?;
    super::prepare_store(&store, args.consumer.backoff(), &shutdown).await?;
    if !client.healthy().await {
        tracing::warn!("the inference service at {} does not answer yet; records wait for it", client.base_url());
    }
    let handler = Arc::new(InferenceWriter {
        client,
        store,
        backoff: args.consumer.backoff(),
        metrics: metrics.clone(),
        latency,
    });
    let settings = super::EngineSettings {
        group: args.group.clone(),
        batch_size: args.images_per_request as usize,
        in_flight: args.in_flight as usize,
        consumer: args.consumer.clone(),
    };
    super::run(&args.kafka, settings, handler, metrics, shutdown).await
}
