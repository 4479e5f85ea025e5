//! The `infer-consumer`: asks the inference service for each record's label and stores it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;

use super::{Handled, Handler};
use crate::args::{ConsumerArgs, KafkaArgs, MongoArgs};
use crate::backoff::{Backoff, Failure, ShutdownRequested};
use crate::infer_client::{FailureCode, ImageOutcome, InferClient, InferRequestError, InferResponse};
use crate::latency::{LatencyLog, LatencyRow};
use crate::message::{Malformed, Parsed};
use crate::metrics::{ConsumerMetrics, Stage};
use crate::shutdown::CancellationToken;
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
    /// Time limit of one inference request (its retries get twice, then four times as long).
    #[arg(long, env = "IOT_REQUEST_TIMEOUT_S", default_value_t = 60, value_name = "SECONDS")]
    pub request_timeout_s: u64,
    /// Failed tries (HTTP 500/504, no answer in time, a per-image `inference_failed`) of one
    /// request before its images are narrowed down, and of one image before it is dead-lettered.
    #[arg(long, env = "IOT_INFER_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub infer_attempts: u32,
    /// Append `ProducerID,ID,SentAt,InferredAt,latency_ms` for each stored inference here.
    #[arg(long, env = "IOT_LATENCY_LOG", value_name = "FILE")]
    pub latency_log: Option<PathBuf>,
}

pub struct InferenceWriter {
    client: InferClient,
    store: Store,
    backoff: Backoff,
    /// Failed tries of one request before its images are narrowed down (`--infer-attempts`).
    attempts: u32,
    metrics: Arc<ConsumerMetrics>,
    latency: Option<LatencyLog>,
}

/// The service's verdict on one image.
enum Classification {
    Label {
        label: String,
        model_id: String,
    },
    /// Dead-letter it, for this reason.
    Refused(Malformed),
}

/// Images of a batch (indices) still without a verdict, sent together in one request, and how
/// many failed tries that request gets before the group is split.
struct Group {
    images: Vec<usize>,
    attempts: u32,
}

/// Why a request gave no verdict for every image of its group, once its tries are used up.
#[derive(Debug, thiserror::Error)]
enum Unsettled {
    #[error(transparent)]
    Request(#[from] InferRequestError),
    /// The service answered, but failed on some of the images (`inference_failed`).
    #[error("the service failed on {failed} of the images: {reason}")]
    SomeImages { response: InferResponse, failed: usize, reason: String },
}

impl Unsettled {
    fn into_failure(self) -> Failure<Unsettled> {
        match self {
            Unsettled::Request(err) => match err.into_failure() {
                Failure::Unavailable { why, after } => Failure::Unavailable { why, after },
                Failure::Failed(err) => Failure::Failed(Unsettled::Request(err)),
                Failure::Final(err) => Failure::Final(Unsettled::Request(err)),
            },
            some @ Unsettled::SomeImages { .. } => Failure::Failed(some),
        }
    }
}

/// An answer in which the service failed on some images (it may succeed on a retry).
fn check_failures(response: InferResponse) -> Result<InferResponse, Unsettled> {
    let failures: Vec<&str> = response
        .results
        .iter()
        .filter_map(|outcome| match outcome {
            ImageOutcome::Failed(f) if f.code == FailureCode::InferenceFailed => Some(f.error.as_str()),
            _ => None,
        })
        .collect();
    match failures.first() {
        None => Ok(response),
        Some(first) => {
            let (failed, reason) = (failures.len(), (*first).to_owned());
            Err(Unsettled::SomeImages { response, failed, reason })
        }
    }
}

impl InferenceWriter {
    /// One request for `images`, retried without limit while the service is unavailable and up
    /// to `attempts` times while it fails; what it could not settle is handed back. Each retry
    /// waits longer for its answer (twice, then four times `--request-timeout-s`), so that a
    /// service that is merely slow under load is not mistaken for one that hangs on an image.
    async fn infer_with_retry(
        &self,
        images: &[&str],
        attempts: u32,
        shutdown: &CancellationToken,
    ) -> Result<Result<InferResponse, Unsettled>, ShutdownRequested> {
        let what = format!("inference of {} image(s)", images.len());
        let mut tries = 0u32;
        crate::backoff::retry_bounded(&what, self.backoff.clone(), attempts, shutdown, || {
            tries += 1;
            if tries > 1 {
                self.metrics.infer_retries.inc();
            }
            let timeout = self.client.timeout() * 2u32.pow(tries.saturating_sub(1).min(2));
            async move {
                let started = Instant::now();
                let answer = self.client.infer_within(images, timeout).await;
                self.metrics.stages.observe(Stage::Infer, started.elapsed());
                let response = answer.map_err(|e| Unsettled::from(e).into_failure())?;
                self.metrics.infer_requests.inc();
                self.metrics.infer_images.inc_by(images.len() as u64);
                self.metrics.infer_seconds.inc_by(started.elapsed().as_secs_f64());
                check_failures(response).map_err(Unsettled::into_failure)
            }
        })
        .await
    }

    /// A verdict per record. A request the service keeps failing (or refuses) is split in
    /// halves until the image at fault is alone; that image is dead-lettered, and every other
    /// one gets its label.
    async fn classify(
        &self,
        batch: &[Parsed],
        shutdown: &CancellationToken,
    ) -> Result<Vec<Option<Classification>>, ShutdownRequested> {
        let mut verdicts: Vec<Option<Classification>> = batch.iter().map(|_| None).collect();
        let mut todo = vec![Group { images: (0..batch.len()).collect(), attempts: self.attempts }];
        let mut sick = self.backoff.clone();
        while let Some(group) = todo.pop() {
            let images: Vec<&str> = group.images.iter().map(|&i| batch[i].msg.data.as_str()).collect();
            let (failed, why) = match self.infer_with_retry(&images, group.attempts, shutdown).await? {
                Ok(response) => (settle(&group.images, response, &mut verdicts), String::new()),
                Err(Unsettled::SomeImages { response, reason, .. }) => {
                    (settle(&group.images, response, &mut verdicts), reason)
                }
                Err(Unsettled::Request(InferRequestError::Rejected { reason, .. })) if group.images.len() == 1 => {
                    verdicts[group.images[0]] = Some(Classification::Refused(Malformed::RejectedByService(reason)));
                    continue;
                }
                Err(Unsettled::Request(rejected @ InferRequestError::Rejected { .. })) => {
                    // A refused request has not failed: its halves get their full tries.
                    tracing::info!("{rejected}; sending the {} images in two halves", images.len());
                    self.metrics.infer_splits.inc();
                    todo.extend(halves(group.images, |_| self.attempts));
                    continue;
                }
                Err(Unsettled::Request(err)) => (group.images, err.to_string()),
            };
            if let [alone] = failed[..] {
                if self.client.classifies_known_good_image().await {
                    verdicts[alone] = Some(Classification::Refused(Malformed::InferenceFailed(why)));
                    continue;
                }
                // The service fails a good image too: it is sick, not this image. Waiting for
                // it loses nothing; dead-lettering would empty the topic into the dead letters.
                let delay = sick.next_delay();
                tracing::warn!(
                    "{why}; but the service fails a known-good image as well: trying again in {} ms",
                    delay.as_millis()
                );
                self.metrics.infer_retries.inc();
                crate::backoff::sleep(delay, shutdown).await?;
                todo.push(Group { images: failed, attempts: self.attempts });
            } else if !failed.is_empty() {
                tracing::info!("{why}; sending the {} images that failed in two halves", failed.len());
                self.metrics.infer_splits.inc();
                // The group as a whole failed its tries already: a half that fails once is split
                // again at once; an image alone gets its full tries.
                todo.extend(halves(failed, |n| if n == 1 { self.attempts } else { 1 }));
            }
        }
        // Every group ends with a verdict for each of its images, or in groups that will.
        Ok(verdicts)
    }
}

/// Records the verdicts of a group's answer; returns the images the service failed on.
fn settle(images: &[usize], response: InferResponse, verdicts: &mut [Option<Classification>]) -> Vec<usize> {
    let mut failed = Vec::new();
    for (&i, outcome) in images.iter().zip(response.results) {
        verdicts[i] = match outcome {
            ImageOutcome::Classified(result) => {
                Some(Classification::Label { label: result.label, model_id: response.model_id.clone() })
            }
            ImageOutcome::Failed(f) if f.code == FailureCode::BadImage => {
                Some(Classification::Refused(Malformed::RejectedByService(f.error)))
            }
            ImageOutcome::Failed(_) => {
                failed.push(i);
                None
            }
        };
    }
    failed
}

/// Two groups of (about) half the images each, the first half last so that it is tried first.
fn halves(mut images: Vec<usize>, attempts: impl Fn(usize) -> u32) -> impl Iterator<Item = Group> {
    let second = images.split_off(images.len() / 2);
    [second, images]
        .into_iter()
        .filter(|half| !half.is_empty())
        .map(move |half| Group { attempts: attempts(half.len()), images: half })
}

impl Handler for InferenceWriter {
    async fn handle(&self, batch: Vec<Parsed>, shutdown: &CancellationToken) -> Vec<Handled> {
        let verdicts = match self.classify(&batch, shutdown).await {
            Ok(verdicts) => verdicts,
            Err(ShutdownRequested) => return batch.into_iter().map(|p| Handled::Abandoned(p.inbound.pos)).collect(),
        };
        let inferred_at = crate::now_ms();
        let stamp = bson::DateTime::from_millis(inferred_at);
        let mut writes = Vec::with_capacity(batch.len());
        for (parsed, verdict) in batch.iter().zip(&verdicts) {
            if let Some(Classification::Label { label, model_id }) = verdict {
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
                (Some(Classification::Refused(reason)), _) => Handled::Rejected(Box::new(parsed), reason),
                (Some(Classification::Label { .. }), Ok(written)) => written.outcome(parsed),
                (Some(Classification::Label { .. }), Err(_)) => Handled::Abandoned(parsed.inbound.pos),
                (None, _) => {
                    tracing::error!("no verdict for the record at {:?}: left for redelivery", parsed.inbound.pos);
                    Handled::Abandoned(parsed.inbound.pos)
                }
            })
            .collect()
    }
}

impl InferenceWriter {
    fn log_latencies(&self, batch: &[Parsed], verdicts: &[Option<Classification>], inferred_at: i64) {
        let Some(log) = &self.latency else { return };
        let rows: Vec<LatencyRow> = batch
            .iter()
            .zip(verdicts)
            .filter(|(_, v)| matches!(v, Some(Classification::Label { .. })))
            .filter_map(|(p, _)| {
                p.msg.sent_at_ms.map(|sent| LatencyRow::new(&p.msg.producer_id, p.msg.id, sent, inferred_at))
            })
            .collect();
        if let Err(err) = log.append(&rows) {
            tracing::error!("cannot write the latency log: {err:#}");
        }
    }
}

pub async fn run(args: InferConsumerArgs, metrics: Arc<ConsumerMetrics>, shutdown: CancellationToken) -> Result<()> {
    let client = InferClient::new(&args.infer_url, Duration::from_secs(args.request_timeout_s.max(1)))?;
    let latency = args.latency_log.as_deref().map(LatencyLog::open).transpose()?;
    let store = super::open_store(&args.consumer, &args.mongo, &metrics, &shutdown).await?;
    if !client.healthy().await {
        tracing::warn!("the inference service at {} does not answer yet; records wait for it", client.base_url());
    }
    let handler = Arc::new(InferenceWriter {
        client,
        store,
        backoff: args.consumer.backoff(),
        attempts: args.infer_attempts,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn response(outcomes: &str) -> InferResponse {
        serde_json::from_str(&format!(r#"{{"model_id":"m","results":[{outcomes}]}}"#)).unwrap()
    }

    const CAT: &str = r#"{"label":"cat","class":"tabby","class_index":281,"score":0.5}"#;
    const BAD: &str = r#"{"error":"not a JPEG or PNG","code":"bad_image"}"#;
    const FAILED: &str = r#"{"error":"out of memory","code":"inference_failed"}"#;

    #[test]
    fn halves_split_evenly_first_half_first_and_never_empty() {
        let groups: Vec<Group> = halves(vec![4, 5, 6, 7, 8], |n| n as u32).collect();
        // Popped from the end of the to-do stack: the first half is tried first.
        assert_eq!(groups[1].images, [4, 5]);
        assert_eq!(groups[0].images, [6, 7, 8]);
        assert_eq!((groups[0].attempts, groups[1].attempts), (3, 2));
        assert_eq!(halves(vec![9], |_| 1).map(|g| g.images).collect::<Vec<_>>(), [vec![9]]);
    }

    #[test]
    fn an_answer_with_an_inference_failure_is_retried_with_its_reason() {
        assert!(check_failures(response(&format!("{CAT},{BAD}"))).is_ok());
        let Err(Unsettled::SomeImages { failed, reason, .. }) = check_failures(response(&format!("{CAT},{FAILED}")))
        else {
            panic!("an inference failure must be retried")
        };
        assert_eq!((failed, reason.as_str()), (1, "out of memory"));
    }

    #[test]
    fn settle_labels_refuses_bad_images_and_returns_the_failed_ones() {
        let mut verdicts: Vec<Option<Classification>> = (0..5).map(|_| None).collect();
        let failed = settle(&[1, 3, 4], response(&format!("{CAT},{BAD},{FAILED}")), &mut verdicts);
        assert_eq!(failed, [4]);
        assert!(
            matches!(&verdicts[1], Some(Classification::Label { label, model_id }) if label == "cat" && model_id == "m")
        );
        assert!(matches!(&verdicts[3], Some(Classification::Refused(m)) if m.code() == "rejected_by_service"));
        assert!(verdicts[0].is_none() && verdicts[2].is_none() && verdicts[4].is_none());
    }

    #[test]
    fn failures_are_classified_for_the_retry_loop() {
        let unavailable = Unsettled::Request(InferRequestError::Unavailable { why: "503".into(), retry_after: None });
        assert!(matches!(unavailable.into_failure(), Failure::Unavailable { .. }));
        assert!(matches!(
            Unsettled::Request(InferRequestError::Failed("500".into())).into_failure(),
            Failure::Failed(_)
        ));
        let rejected = Unsettled::Request(InferRequestError::Rejected { status: 413, reason: "too big".into() });
        assert!(matches!(rejected.into_failure(), Failure::Final(_)));
    }
}
