//! `pipeline-bench`: runs the whole pipeline (producers → Kafka → both consumers → inference
//! service → MongoDB) for a bounded number of images, once per producer count, and prints
//! images/s and where the time goes. Producers and consumers run in this process; Kafka,
//! MongoDB and the inference service are the real ones at the given addresses.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bson::doc;
use clap::Parser;

use iot_ingest::args::{KafkaArgs, MongoArgs};
use iot_ingest::consumer::{db::DbConsumerArgs, infer::InferConsumerArgs};
use iot_ingest::metrics::{ConsumerMetrics, Role, Stage};
use iot_ingest::producer::ProducerArgs;
use iot_ingest::shutdown::CancellationToken;
use iot_ingest::store::Store;
use iot_schema::field::{INFERRED, STORED_AT};
use tokio::task::JoinHandle;

use crate::latency_report::RunLatencies;
use crate::stats::percentile;

/// Measures end-to-end throughput of the live pipeline with 1, 2, 4… producers.
#[derive(Clone, Debug, Parser)]
#[command(name = "pipeline-bench", version)]
pub struct BenchArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "IOT_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// MongoDB connection string.
    #[arg(long, env = "IOT_MONGO_URI", default_value = "mongodb://127.0.0.1:27017")]
    pub mongo_uri: String,
    /// The running inference service.
    #[arg(long, env = "IOT_INFER_URL", default_value = "http://127.0.0.1:5000")]
    pub infer_url: String,
    /// Producer counts to run, one run each.
    #[arg(long = "producers", env = "IOT_BENCH_PRODUCERS", value_delimiter = ',', default_value = "1,2,4")]
    pub producer_counts: Vec<u32>,
    /// Instances of each consumer (members of its group) to run, one run each per producer count.
    #[arg(long = "instances", env = "IOT_BENCH_INSTANCES", value_delimiter = ',', default_value = "1")]
    pub instance_counts: Vec<u32>,
    /// Images per run, split evenly among the producers.
    #[arg(long, env = "IOT_BENCH_IMAGES", default_value_t = 2000)]
    pub images: u64,
    /// Messages per second per producer (0 = as fast as possible).
    #[arg(long, env = "IOT_RATE", default_value_t = 0.0)]
    pub rate: f64,
    /// Messages per second of all producers together, split evenly (instead of `--rate`): keeps
    /// the offered load the same whatever the producer count, for latency comparisons.
    #[arg(long, env = "IOT_BENCH_TOTAL_RATE", conflicts_with = "rate")]
    pub total_rate: Option<f64>,
    /// Use only the first N CIFAR images (1017 are bit-exact).
    #[arg(long, env = "IOT_IMAGE_LIMIT", default_value_t = 1017)]
    pub image_limit: u64,
    /// Folder holding the CIFAR-10 batch.
    #[arg(long, env = "IOT_ASSETS_DIR")]
    pub assets_dir: Option<PathBuf>,
    /// Images per inference request.
    #[arg(long, env = "IOT_IMAGES_PER_REQUEST", default_value_t = 16)]
    pub images_per_request: u64,
    /// Inference requests in flight.
    #[arg(long, env = "IOT_IN_FLIGHT", default_value_t = 4)]
    pub in_flight: u64,
    /// db-consumer records per batch of upserts.
    #[arg(long, env = "IOT_BATCH_SIZE", default_value_t = 200)]
    pub batch_size: u64,
    /// Partitions of each run's topic.
    #[arg(long, env = "IOT_BENCH_PARTITIONS", default_value_t = 4)]
    pub partitions: i32,
    /// Where each run's latency and truth logs go.
    #[arg(long, env = "IOT_BENCH_OUT", default_value = "data/output/bench")]
    pub out_dir: PathBuf,
    /// Give up on a run after this long.
    #[arg(long, env = "IOT_BENCH_TIMEOUT_S", default_value_t = 600)]
    pub timeout_s: u64,
    /// Keep each run's topics and database instead of deleting them.
    #[arg(long, env = "IOT_BENCH_KEEP")]
    pub keep: bool,
}

/// One run's figures.
#[derive(Clone, Debug)]
pub struct RunFigures {
    pub producers: u32,
    /// Instances of each consumer.
    pub instances: u32,
    pub images: u64,
    pub produce_s: f64,
    pub stored_s: f64,
    pub inferred_s: f64,
    pub infer_ms_per_image: f64,
    pub infer_ms_per_request: f64,
    pub db_write_ms_per_batch: f64,
    pub db_records_per_batch: f64,
    pub infer_write_ms_per_batch: f64,
    pub infer_retries: u64,
    pub latency_p50_ms: i64,
    pub latency_p99_ms: i64,
    pub latency_logs: Vec<PathBuf>,
    /// [`stage_totals`] of each consumer.
    pub db_stages: Vec<(u64, f64)>,
    pub infer_stages: Vec<(u64, f64)>,
}

impl RunFigures {
    pub fn end_to_end_rate(&self) -> f64 {
        self.images as f64 / self.inferred_s.max(1e-9)
    }
}

fn parse<T: Parser>(name: &str, flags: Vec<String>) -> Result<T> {
    T::try_parse_from(std::iter::once(name.to_owned()).chain(flags)).map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

fn ratio(numerator: f64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator / denominator as f64
    }
}

pub async fn run(args: BenchArgs, shutdown: CancellationToken) -> Result<()> {
    std::fs::create_dir_all(&args.out_dir).with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let mut figures = Vec::new();
    for &instances in &args.instance_counts {
        for &producers in &args.producer_counts {
            if shutdown.is_cancelled() {
                break;
            }
            let run = bench_once(&args, producers.max(1), instances.max(1), &shutdown).await?;
            eprintln!(
                "{} producer(s), {} instance(s) of each consumer: {} images end to end in {:.2}s = {:.1} images/s",
                run.producers,
                run.instances,
                run.images,
                run.inferred_s,
                run.end_to_end_rate()
            );
            figures.push(run);
        }
    }
    println!("{}", table(&figures));
    println!("{}", stage_table(&figures));
    Ok(())
}

/// Time per stage (`iot_ingest_consumer_stage_seconds`) of each run, as a Markdown table: mean
/// ms per observation (observations), per consumer.
pub fn stage_table(figures: &[RunFigures]) -> String {
    let mut header = String::from("| producers | consumer instances | consumer |");
    let mut rule = String::from("|---:|---:|---|");
    for stage in Stage::ALL {
        header += &format!(" {} ms (count) |", stage.as_str());
        rule += "---:|";
    }
    let mut out = format!("{header}\n{rule}\n");
    for f in figures {
        for (consumer, stages) in [("db", &f.db_stages), ("infer", &f.infer_stages)] {
            out += &format!("| {} | {} | {consumer} |", f.producers, f.instances);
            for (count, seconds) in stages {
                out += &format!(" {:.2} ({count}) |", ratio(seconds * 1e3, *count));
            }
            out += "\n";
        }
    }
    out
}

/// Observations and total seconds of every stage, in the order of [`Stage::ALL`].
fn stage_totals(metrics: &ConsumerMetrics) -> Vec<(u64, f64)> {
    Stage::ALL.iter().map(|&stage| metrics.stages.totals(stage)).collect()
}

/// The figures as a Markdown table.
pub fn table(figures: &[RunFigures]) -> String {
    let mut out = String::from(
        "| producers | consumer instances | images | end-to-end images/s | producer send (images/s) | metadata stored (images/s) | inference ms/image (ms/request) | Mongo upsert ms/batch, db (records/batch) | Mongo upsert ms/batch, infer | latency p50 / p99 ms | retries |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for f in figures {
        out += &format!(
            "| {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.2} ({:.1}) | {:.1} ({:.0}) | {:.1} | {} / {} | {} |\n",
            f.producers,
            f.instances,
            f.images,
            f.end_to_end_rate(),
            f.images as f64 / f.produce_s.max(1e-9),
            f.images as f64 / f.stored_s.max(1e-9),
            f.infer_ms_per_image,
            f.infer_ms_per_request,
            f.db_write_ms_per_batch,
            f.db_records_per_batch,
            f.infer_write_ms_per_batch,
            f.latency_p50_ms,
            f.latency_p99_ms,
            f.infer_retries,
        );
    }
    out
}

/// One run with `producers` producers: `instances` of each consumer in this process, the
/// producers sending, the clock running until every record is stored and inferred, then every
/// record checked.
async fn bench_once(args: &BenchArgs, producers: u32, instances: u32, outer: &CancellationToken) -> Result<RunFigures> {
    let per_producer = (args.images / producers as u64).max(1);
    let total = per_producer * producers as u64;
    let run = RunNames::new(args, producers, instances);
    // Fresh latency logs per run: the infer-consumers append.
    for log in &run.latency_logs {
        let _ = std::fs::remove_file(log);
    }
    let kafka = KafkaArgs { brokers: args.brokers.clone(), topic: run.topic.clone(), kafka_opts: Vec::new() };
    iot_ingest::kafka::create_topics(&kafka, &[&run.topic, &run.dlq], args.partitions).await?;
    let consumers = Consumers::start(args, &run)?;
    // Let both groups join before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let started = Instant::now();
    let produced = iot_ingest::producer::run(run.producer_args(args, producers, per_producer)?, outer.clone()).await?;
    if produced.acknowledged != total {
        bail!("only {} of {total} messages were acknowledged", produced.acknowledged);
    }
    let store = Store::open(&MongoArgs { write_concurrency: 1, ..MongoArgs::new(&args.mongo_uri, &run.db) }).await?;
    let deadline = started + Duration::from_secs(args.timeout_s);
    let done = consumers.wait_until_done(&store, total, started, deadline, outer).await;
    let metrics = consumers.stop().await;
    // A consumer's own error says more than "it stopped early".
    let (db_metrics, infer_metrics) = metrics?;
    let (stored_s, inferred_s) = done.with_context(|| format!("run with {producers} producer(s)"))?;
    check_every_record_complete(&store, total).await?;
    if !args.keep {
        Store::open(&MongoArgs::new(&args.mongo_uri, &run.db))
            .await?
            .database()
            .drop()
            .await
            .context("cannot drop the bench database")?;
        iot_ingest::kafka::delete_topics(&kafka, &[&run.topic, &run.dlq]).await?;
    }

    let mut rows = Vec::new();
    for log in &run.latency_logs {
        rows.extend(iot_ingest::latency::read(log)?);
    }
    let latencies = RunLatencies::from_rows("", rows).sorted_ms();
    let ms = |seconds: f64| seconds * 1e3;
    Ok(RunFigures {
        producers,
        instances,
        images: total,
        produce_s: produced.elapsed.as_secs_f64(),
        stored_s,
        inferred_s,
        infer_ms_per_image: ratio(ms(infer_metrics.infer_seconds.get()), infer_metrics.infer_images.get()),
        infer_ms_per_request: ratio(ms(infer_metrics.infer_seconds.get()), infer_metrics.infer_requests.get()),
        db_write_ms_per_batch: ratio(ms(db_metrics.mongo_write_seconds.get()), db_metrics.mongo_batches.get()),
        db_records_per_batch: ratio(db_metrics.written.get() as f64, db_metrics.mongo_batches.get()),
        infer_write_ms_per_batch: ratio(ms(infer_metrics.mongo_write_seconds.get()), infer_metrics.mongo_batches.get()),
        infer_retries: infer_metrics.infer_retries.get(),
        latency_p50_ms: percentile(&latencies, 50.0).unwrap_or_default(),
        latency_p99_ms: percentile(&latencies, 99.0).unwrap_or_default(),
        latency_logs: run.latency_logs,
        db_stages: stage_totals(&db_metrics),
        infer_stages: stage_totals(&infer_metrics),
    })
}

/// One run's topic, dead-letter topic, consumer groups, database and logs.
struct RunNames {
    tag: String,
    topic: String,
    dlq: String,
    db: String,
    /// One per infer-consumer instance.
    latency_logs: Vec<PathBuf>,
    truth_log: PathBuf,
}

impl RunNames {
    fn new(args: &BenchArgs, producers: u32, instances: u32) -> RunNames {
        let tag = format!("bench-{}-{}-{producers}p{instances}i", std::process::id(), iot_ingest::now_ms());
        // One instance keeps the file names of the runs before instances existed.
        let (name, latency_name) = match instances {
            1 => (format!("{producers}p"), vec![format!("{producers}p")]),
            _ => {
                let name = format!("{producers}p-{instances}i");
                let each = (0..instances).map(|i| format!("{name}-{i}")).collect();
                (name, each)
            }
        };
        RunNames {
            topic: tag.clone(),
            dlq: format!("{tag}.dlq"),
            db: tag.replace('-', "_"),
            latency_logs: latency_name.iter().map(|n| args.out_dir.join(format!("latency-{n}.csv"))).collect(),
            truth_log: args.out_dir.join(format!("truth-{name}.csv")),
            tag,
        }
    }

    /// The flags both consumers share.
    fn consumer_flags(&self, args: &BenchArgs) -> Vec<String> {
        vec![
            format!("--brokers={}", args.brokers),
            format!("--topic={}", self.topic),
            format!("--mongo-uri={}", args.mongo_uri),
            format!("--db={}", self.db),
            format!("--dlq-topic={}", self.dlq),
        ]
    }

    fn db_consumer_args(&self, args: &BenchArgs) -> Result<DbConsumerArgs> {
        let mut flags = self.consumer_flags(args);
        flags.extend([format!("--group={}-db", self.tag), format!("--batch-size={}", args.batch_size)]);
        parse("db-consumer", flags)
    }

    fn infer_consumer_args(&self, args: &BenchArgs, instance: usize) -> Result<InferConsumerArgs> {
        let mut flags = self.consumer_flags(args);
        flags.extend([
            format!("--group={}-infer", self.tag),
            format!("--infer-url={}", args.infer_url),
            format!("--images-per-request={}", args.images_per_request),
            format!("--in-flight={}", args.in_flight),
            format!("--latency-log={}", self.latency_logs[instance].display()),
        ]);
        parse("infer-consumer", flags)
    }

    fn producer_args(&self, args: &BenchArgs, producers: u32, per_producer: u64) -> Result<ProducerArgs> {
        let mut flags = vec![
            format!("--brokers={}", args.brokers),
            format!("--topic={}", self.topic),
            format!("--producers={producers}"),
            format!("--count={per_producer}"),
            format!("--rate={}", args.total_rate.map_or(args.rate, |total| total / producers as f64)),
            "--disjoint-ids".to_owned(),
            format!("--image-limit={}", args.image_limit),
            format!("--truth-log={}", self.truth_log.display()),
        ];
        if let Some(dir) = &args.assets_dir {
            flags.push(format!("--assets-dir={}", dir.display()));
        }
        parse("producer", flags)
    }
}

/// Both consumers, each as one or more members of its group, running as tasks of this process.
/// The instances of one consumer share its metrics (the counters add up).
struct Consumers {
    stop: CancellationToken,
    db_metrics: Arc<ConsumerMetrics>,
    infer_metrics: Arc<ConsumerMetrics>,
    db_tasks: Vec<JoinHandle<Result<()>>>,
    infer_tasks: Vec<JoinHandle<Result<()>>>,
}

impl Consumers {
    fn start(args: &BenchArgs, run: &RunNames) -> Result<Consumers> {
        let stop = CancellationToken::new();
        let (db_metrics, infer_metrics) = (ConsumerMetrics::new(Role::Db), ConsumerMetrics::new(Role::Infer));
        let (mut db_tasks, mut infer_tasks) = (Vec::new(), Vec::new());
        for instance in 0..run.latency_logs.len() {
            let (db_args, infer_args) = (run.db_consumer_args(args)?, run.infer_consumer_args(args, instance)?);
            db_tasks.push(tokio::spawn(iot_ingest::consumer::db::run(db_args, db_metrics.clone(), stop.clone())));
            let infer = iot_ingest::consumer::infer::run(infer_args, infer_metrics.clone(), stop.clone());
            infer_tasks.push(tokio::spawn(infer));
        }
        Ok(Consumers { stop, db_metrics, infer_metrics, db_tasks, infer_tasks })
    }

    /// Seconds from `started` until every record was stored, and until every one was inferred.
    /// The consumers' write counters only say when to look: a record redelivered after a
    /// rebalance is written twice, so the counters can reach `total` while records are still
    /// missing. MongoDB's count of records with the field decides.
    async fn wait_until_done(
        &self,
        store: &Store,
        total: u64,
        started: Instant,
        deadline: Instant,
        outer: &CancellationToken,
    ) -> Result<(f64, f64)> {
        let (mut stored_s, mut inferred_s) = (None, None);
        loop {
            if let (Some(stored), Some(inferred)) = (stored_s, inferred_s) {
                return Ok((stored, inferred));
            }
            if Instant::now() > deadline || outer.is_cancelled() {
                bail!(
                    "run did not finish: {} stored, {} inferred of {total}",
                    self.db_metrics.written.get(),
                    self.infer_metrics.written.get()
                );
            }
            if self.db_tasks.iter().chain(&self.infer_tasks).any(JoinHandle::is_finished) {
                bail!("a consumer stopped early");
            }
            if stored_s.is_none() && self.db_metrics.written.get() >= total && holds(store, STORED_AT, total).await? {
                stored_s = Some(started.elapsed().as_secs_f64());
            }
            if inferred_s.is_none()
                && self.infer_metrics.written.get() >= total
                && holds(store, INFERRED, total).await?
            {
                inferred_s = Some(started.elapsed().as_secs_f64());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every consumer; their metrics, or the first error one of them ended with.
    async fn stop(self) -> Result<(Arc<ConsumerMetrics>, Arc<ConsumerMetrics>)> {
        self.stop.cancel();
        let mut first_error = None;
        let tasks = self.db_tasks.into_iter().map(|t| ("db-consumer", t));
        for (name, task) in tasks.chain(self.infer_tasks.into_iter().map(|t| ("infer-consumer", t))) {
            let ended = task.await.with_context(|| format!("{name} task")).and_then(|r| r.context(name));
            if let Err(err) = ended {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok((self.db_metrics, self.infer_metrics)), Err)
    }
}

/// Whether `total` records in MongoDB have `field`.
async fn holds(store: &Store, field: &str, total: u64) -> Result<bool> {
    Ok(store.collection().count_documents(doc! { field: { "$exists": true } }).await? >= total)
}

/// Every record is in MongoDB with its metadata and its inference.
async fn check_every_record_complete(store: &Store, total: u64) -> Result<()> {
    let complete = store
        .collection()
        .count_documents(doc! { iot_schema::field::INFERRED: { "$exists": true }, iot_schema::field::STORED_AT: { "$exists": true } })
        .await?;
    if complete != total {
        bail!("MongoDB holds {complete} complete records, expected {total}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_flags_parse() {
        let args = BenchArgs::try_parse_from(["pipeline-bench"]).unwrap();
        assert_eq!(args.producer_counts, [1, 2, 4]);
    }

    #[test]
    fn table_has_a_row_per_run() {
        let f = RunFigures {
            producers: 2,
            instances: 1,
            images: 1000,
            produce_s: 0.5,
            stored_s: 1.0,
            inferred_s: 4.0,
            infer_ms_per_image: 3.0,
            infer_ms_per_request: 48.0,
            db_write_ms_per_batch: 20.0,
            db_records_per_batch: 100.0,
            infer_write_ms_per_batch: 5.0,
            infer_retries: 0,
            latency_p50_ms: 900,
            latency_p99_ms: 2000,
            latency_logs: Vec::new(),
            db_stages: vec![(2, 0.5); Stage::ALL.len()],
            infer_stages: Vec::new(),
        };
        let text = table(std::slice::from_ref(&f));
        assert!(text.lines().nth(2).unwrap().starts_with("| 2 | 1 | 1000 | 250.0 | 2000 | 1000 |"), "{text}");
        let stages = stage_table(&[f]);
        assert!(stages.lines().nth(2).unwrap().starts_with("| 2 | 1 | db | 250.00 (2) |"), "{stages}");
        assert_eq!(stages.lines().nth(3), Some("| 2 | 1 | infer |"), "{stages}");
    }
}
