//! The `producer` binary: labelled images to Kafka, one task per ProducerID.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use iot_schema::ImageMessage;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use crate::args::KafkaArgs;
use crate::images::cifar::CifarBatch;
use crate::images::encode::{Encoding, Format};
use crate::images::folder::FolderImages;
use crate::images::synthetic::Synthetic;
use crate::images::ImageSource;
use crate::shutdown::CancellationToken;
use crate::truth_log::{TruthLog, TruthRow};

/// Sends labelled images to Kafka as `ImageMessage` JSON, keyed by ProducerID.
#[derive(Clone, Debug, Parser)]
#[command(name = "producer", version)]
pub struct ProducerArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// A ProducerID to send as (repeatable; comma-separated in the environment).
    #[arg(long = "producer-id", env = "IOT_PRODUCER_IDS", value_delimiter = ',', conflicts_with = "producers")]
    pub producer_ids: Vec<String>,
    /// Number of producers, named PREFIX1..PREFIXN (default 1 when no --producer-id is given).
    #[arg(long, env = "IOT_PRODUCERS", value_parser = clap::value_parser!(u32).range(1..))]
    pub producers: Option<u32>,
    /// Prefix of the names `--producers N` makes.
    #[arg(long, env = "IOT_PRODUCER_PREFIX", default_value = "producer-")]
    pub producer_prefix: String,
    /// Read images from this CIFAR-10 binary batch [default: $IOT_ASSETS_DIR/cifar10_test_batch.bin].
    #[arg(long, env = "IOT_CIFAR", value_name = "FILE", conflicts_with_all = ["images", "synthetic"])]
    pub cifar: Option<PathBuf>,
    /// Class names of the CIFAR batch, one per line [default: cifar10_classes.txt beside it].
    #[arg(long, env = "IOT_CIFAR_CLASSES", value_name = "FILE")]
    pub cifar_classes: Option<PathBuf>,
    /// Read images from DIR/LABEL/*.{jpg,jpeg,png} instead.
    #[arg(long, env = "IOT_IMAGES_DIR", value_name = "DIR", conflicts_with = "synthetic")]
    pub images: Option<PathBuf>,
    /// Make coloured-square images with known labels instead (no files needed).
    #[arg(long, env = "IOT_SYNTHETIC")]
    pub synthetic: bool,
    /// Side in pixels of synthetic images.
    #[arg(long, env = "IOT_SYNTHETIC_SIZE", default_value_t = 32)]
    pub synthetic_size: u32,
    /// Folder holding the CIFAR-10 batch and class names.
    #[arg(long, env = "IOT_ASSETS_DIR", value_name = "DIR")]
    pub assets_dir: Option<PathBuf>,
    /// Use only the first N images of the source (e.g. 1017 for the bit-exact CIFAR records).
    #[arg(long, env = "IOT_IMAGE_LIMIT", value_parser = clap::value_parser!(u64).range(1..))]
    pub image_limit: Option<u64>,
    /// Messages per producer.
    #[arg(long, env = "IOT_COUNT", default_value_t = 100)]
    pub count: u64,
    /// Messages per second per producer; 0 sends as fast as Kafka takes them.
    #[arg(long, env = "IOT_RATE", default_value_t = 0.0)]
    pub rate: f64,
    /// First message ID. Message ID n carries image n of the source (wrapping around).
    #[arg(long, env = "IOT_START_ID", default_value_t = 0)]
    pub start_id: u64,
    /// Give producer k (0-based) the IDs start+k*count.. so that producers send different images.
    #[arg(long, env = "IOT_DISJOINT_IDS")]
    pub disjoint_ids: bool,
    /// Image encoding in `Data`.
    #[arg(long, env = "IOT_IMAGE_FORMAT", value_enum, default_value = "jpeg")]
    pub format: Format,
    /// JPEG quality, 1..=100.
    #[arg(long, env = "IOT_JPEG_QUALITY", default_value_t = 90, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub jpeg_quality: u8,
    /// Write `ProducerID,ID,GroundTruth,SentAt` here for every message Kafka acknowledged.
    #[arg(long, env = "IOT_TRUTH_LOG", value_name = "FILE")]
    pub truth_log: Option<PathBuf>,
    /// Most unacknowledged messages per producer.
    #[arg(long, env = "IOT_PRODUCER_IN_FLIGHT", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub in_flight: u64,
}

impl ProducerArgs {
    /// What clap cannot check by itself: a refused combination is a usage error.
    pub fn check(&self) -> Result<(), String> {
        if self.producer_ids().iter().any(|id| id.trim().is_empty()) {
            return Err("a --producer-id is empty".to_owned());
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            return Err(format!("--rate must be a number >= 0, got {}", self.rate));
        }
        Ok(())
    }

    pub fn producer_ids(&self) -> Vec<String> {
        if !self.producer_ids.is_empty() {
            return self.producer_ids.clone();
        }
        let n = self.producers.unwrap_or(1);
        (1..=n).map(|k| format!("{}{k}", self.producer_prefix)).collect()
    }

    pub fn source(&self) -> Result<ImageSource> {
        if self.synthetic {
            return Ok(ImageSource::Synthetic(Synthetic { side: self.synthetic_size }));
        }
        if let Some(dir) = &self.images {
            return Ok(ImageSource::Folder(FolderImages::open(dir)?));
        }
        let assets = self.assets_dir.clone().unwrap_or_else(crate::assets::default_dir);
        let batch = self.cifar.clone().unwrap_or_else(|| assets.join(crate::assets::CIFAR_BATCH_FILE));
        let classes = match &self.cifar_classes {
            Some(path) => path.clone(),
            None => batch.with_file_name(crate::assets::CIFAR_CLASSES_FILE),
        };
        if !batch.is_file() {
            bail!(
                "no CIFAR-10 batch at {}: pass --cifar FILE, --images DIR or --synthetic, or set IOT_ASSETS_DIR",
                batch.display()
            );
        }
        Ok(ImageSource::Cifar(CifarBatch::open(&batch, &classes)?))
    }

    /// The IDs producer number `ordinal` (0-based) sends.
    pub fn ids(&self, ordinal: u64) -> std::ops::Range<u64> {
        let first = self.start_id + if self.disjoint_ids { ordinal * self.count } else { 0 };
        first..first + self.count
    }
}

/// What a run sent.
#[derive(Clone, Debug, Default)]
pub struct ProduceSummary {
    pub acknowledged: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

/// Everything a producer task needs, shared by all of them.
struct ProducerKit {
    kafka: FutureProducer,
    topic: String,
    source: ImageSource,
    image_limit: Option<u64>,
    encoding: Encoding,
    truth: Option<TruthLog>,
    progress: ProgressBar,
    acknowledged: AtomicU64,
    failed: AtomicU64,
}

/// Sends every producer's messages, then flushes Kafka and the truth log and says what was sent.
pub async fn run(args: ProducerArgs, shutdown: CancellationToken) -> Result<ProduceSummary> {
    args.check().map_err(anyhow::Error::msg)?;
    let kit = Arc::new(ProducerKit::new(&args)?);
    let started = Instant::now();
    let sent = send_from_every_producer(&args, &kit, &shutdown).await;
    let summary = kit.finish(started.elapsed())?;
    tracing::info!(
        "{} message(s) acknowledged in {:.2}s ({:.0} msg/s){}",
        summary.acknowledged,
        summary.elapsed.as_secs_f64(),
        summary.acknowledged as f64 / summary.elapsed.as_secs_f64().max(1e-9),
        if shutdown.is_cancelled() { ", stopped early by a signal" } else { "" }
    );
    sent?;
    if summary.failed > 0 {
        bail!("{} message(s) were not acknowledged by Kafka (see the errors above)", summary.failed);
    }
    Ok(summary)
}

impl ProducerKit {
    fn new(args: &ProducerArgs) -> Result<ProducerKit> {
        let total = args.count * args.producer_ids().len() as u64;
        let progress = ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{spinner} {pos}/{len} acknowledged {per_sec} [{elapsed_precise}] {wide_bar}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Ok(ProducerKit {
            kafka: crate::kafka::producer(&args.kafka)?,
            topic: args.kafka.topic.clone(),
            source: args.source()?,
            image_limit: args.image_limit,
            encoding: Encoding { format: args.format, jpeg_quality: args.jpeg_quality },
            truth: args.truth_log.as_deref().map(TruthLog::create).transpose()?,
            progress,
            acknowledged: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// Drains what librdkafka still holds (every delivery was awaited already), flushes the
    /// truth log, and counts.
    fn finish(&self, elapsed: Duration) -> Result<ProduceSummary> {
        self.kafka.flush(Duration::from_secs(30)).context("cannot flush the Kafka producer")?;
        if let Some(truth) = &self.truth {
            truth.flush()?;
        }
        self.progress.finish_and_clear();
        Ok(ProduceSummary {
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            elapsed,
        })
    }
}

/// One task per producer ID, all at once; the first error any of them met.
async fn send_from_every_producer(
    args: &ProducerArgs,
    kit: &Arc<ProducerKit>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let ids = args.producer_ids();
    tracing::info!(
        "sending {} message(s) per producer as {} to {} at {}",
        args.count,
        ids.join(","),
        args.kafka.topic,
        if args.rate > 0.0 { format!("{} msg/s each", args.rate) } else { "full speed".into() }
    );
    let mut tasks = tokio::task::JoinSet::new();
    for (ordinal, producer_id) in ids.into_iter().enumerate() {
        let ids = args.ids(ordinal as u64);
        let (kit, shutdown) = (kit.clone(), shutdown.clone());
        let (rate, in_flight) = (args.rate, args.in_flight as usize);
        tasks.spawn(async move { produce(&kit, &producer_id, ids, rate, in_flight, shutdown).await });
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        if let Err(err) = joined.context("a producer task panicked").and_then(|r| r) {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// One producer: encodes and sends its IDs in order at `rate`, keeping at most `in_flight`
/// messages unacknowledged; records each acknowledged one in the truth log.
async fn produce(
    kit: &ProducerKit,
    producer_id: &str,
    ids: std::ops::Range<u64>,
    rate: f64,
    in_flight: usize,
    shutdown: CancellationToken,
) -> Result<()> {
    let started = tokio::time::Instant::now();
    let mut pending: VecDeque<(TruthRow, DeliveryFuture)> = VecDeque::new();
    for (n, id) in ids.enumerate() {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64(n as f64 / rate);
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        if shutdown.is_cancelled() {
            break;
        }
        let index = kit.image_limit.map_or(id, |limit| id % limit);
        let (label, img) = kit.source.get(index as usize)?;
        let message = ImageMessage {
            id: i64::try_from(id).context("message ID out of range")?,
            producer_id: producer_id.to_owned(),
            ground_truth: label,
            data: kit.encoding.encode_base64(&img)?,
            sent_at_ms: Some(crate::now_ms()),
        };
        let payload = serde_json::to_vec(&message)?;
        let delivery = enqueue(kit, producer_id, &payload, &mut pending).await?;
        let row = TruthRow {
            producer_id: message.producer_id,
            id: message.id,
            ground_truth: message.ground_truth,
            sent_at_ms: message.sent_at_ms.unwrap_or_default(),
        };
        pending.push_back((row, delivery));
        while pending.len() >= in_flight {
            settle_oldest(kit, &mut pending).await?;
        }
    }
    while !pending.is_empty() {
        settle_oldest(kit, &mut pending).await?;
    }
    Ok(())
}

/// Hands a message to librdkafka, waiting for older deliveries while its queue is full.
async fn enqueue(
    kit: &ProducerKit,
    key: &str,
    payload: &[u8],
    pending: &mut VecDeque<(TruthRow, DeliveryFuture)>,
) -> Result<DeliveryFuture> {
    loop {
        let record = FutureRecord::to(&kit.topic).key(key).payload(payload);
        match kit.kafka.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                if pending.is_empty() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                } else {
                    settle_oldest(kit, pending).await?;
                }
            }
            Err((err, _)) => bail!("cannot send to Kafka topic {}: {err}", kit.topic),
        }
    }
}

/// Waits for the oldest unacknowledged message; logs it in the truth log if Kafka took it.
async fn settle_oldest(kit: &ProducerKit, pending: &mut VecDeque<(TruthRow, DeliveryFuture)>) -> Result<()> {
    let Some((row, delivery)) = pending.pop_front() else {
        return Ok(());
    };
    match delivery.await {
        Ok(Ok(_)) => {
            kit.acknowledged.fetch_add(1, Ordering::Relaxed);
            kit.progress.inc(1);
            if let Some(truth) = &kit.truth {
                truth.record(&row)?;
            }
        }
        Ok(Err((err, _))) => {
            kit.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(key = %row.producer_id, id = row.id, "Kafka did not take the message: {err}");
        }
        Err(_) => {
            kit.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(key = %row.producer_id, id = row.id, "the Kafka producer dropped the message");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ProducerArgs, clap::Error> {
        ProducerArgs::try_parse_from(std::iter::once("producer").chain(args.iter().copied()))
    }

    #[test]
    fn producer_ids_from_flags_or_a_count() {
        let args = parse(&["--producer-id", "cam-1", "--producer-id", "cam-2"]).unwrap();
        assert_eq!(args.producer_ids(), ["cam-1", "cam-2"]);
        let args = parse(&["--producers", "3", "--producer-prefix", "p"]).unwrap();
        assert_eq!(args.producer_ids(), ["p1", "p2", "p3"]);
        assert_eq!(parse(&[]).unwrap().producer_ids(), ["producer-1"]);
    }

    #[test]
    fn bad_flags_get_a_usage_error() {
        assert!(parse(&["--producers", "0"]).is_err());
        assert!(parse(&["--producers", "2", "--producer-id", "x"]).is_err());
        assert!(parse(&["--synthetic", "--images", "dir"]).is_err());
        assert!(parse(&["--jpeg-quality", "0"]).is_err());
        assert!(parse(&["--count", "-3"]).is_err());
    }

    #[test]
    fn disjoint_ids_give_each_producer_its_own_range() {
        let args = parse(&["--count", "250", "--disjoint-ids", "--start-id", "10"]).unwrap();
        assert_eq!(args.ids(0), 10..260);
        assert_eq!(args.ids(3), 760..1010);
        let kit = parse(&["--count", "5"]).unwrap();
        assert_eq!(kit.ids(2), 0..5);
    }

    #[test]
    fn a_missing_cifar_file_says_what_to_do() {
        let err = parse(&["--cifar", "/nonexistent/batch.bin"]).unwrap().source().unwrap_err();
        assert!(err.to_string().contains("--synthetic"), "{err}");
    }
}
