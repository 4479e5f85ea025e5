//! The whole pipeline on the real stack: 4 producers × 250 CIFAR-10 images → Kafka → both
//! consumers (the real binaries) → the real inference service → MongoDB → `dataflow count`.
//! During the run the infer-consumer is killed (SIGKILL) and restarted, the inference service is
//! stopped for a few seconds, and a malformed message is injected. At the end every record must
//! be in MongoDB exactly once with its inference, the malformed one in the dead-letter topic, and
//! the dataflow's CSV must equal the error counts computed from the producers' ground truth.
//!
//! Needs Kafka and MongoDB (`scripts/stack up`), the ONNX Runtime library (`scripts/setup`) and
//! the assets in `$IOT_ASSETS_DIR` (default `../shared/assets`).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use common::{check_stack, consumer_args, kafka_args, mongo_uri, service_files, Cleanup};
use iot_bench::testkit::{asset, expect_sample, free_port, unique_name, workspace_binary, Children};
use iot_ingest::args::{KafkaArgs, MongoArgs};
use iot_ingest::dlq::DeadLetter;
use iot_ingest::store::Store;
use iot_ingest::truth_log::{self, TruthRow};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;

const PRODUCERS: usize = 4;
const PER_PRODUCER: u64 = 250;
const TOTAL: u64 = PRODUCERS as u64 * PER_PRODUCER;
const MALFORMED_KEY: &str = "e2e-malformed";
/// A message without GroundTruth.
const MALFORMED: &[u8] = br#"{"ID": 1, "ProducerID": "cam-x", "Data": "aGk="}"#;
const MODEL_ID: &str = "mobilenetv2-int8-e2e";
/// Longest wait for the pipeline to store every record.
const PIPELINE_WAIT: Duration = Duration::from_secs(300);

async fn wait_healthy(url: &str, within: Duration, children: &Children) {
    let client = iot_ingest::infer_client::InferClient::new(url, Duration::from_secs(2)).expect("client");
    let deadline = Instant::now() + within;
    while !client.healthy().await {
        assert!(Instant::now() < deadline, "the inference service at {url} did not come up{}", children.log_tails());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

use common::count;

fn inferred_filter() -> Document {
    doc! { "Inferred": { "$exists": true } }
}

/// Polls until at least `n` records carry an inference.
async fn wait_inferred(store: &Store, n: u64, within: Duration, children: &Children) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let have = count(store, inferred_filter()).await;
        if have >= n {
            return have;
        }
        assert!(
            Instant::now() < deadline,
            "only {have} of {n} records were inferred after {within:?}{}",
            children.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads the dead-letter topic from the start until it has a letter for the malformed record
/// from each consumer group.
async fn read_dead_letters(kafka: &KafkaArgs, dlq: &str, groups: &[&str]) -> Vec<(DeadLetter, String)> {
    let consumer: StreamConsumer =
        iot_ingest::kafka::consumer_config(kafka, &format!("{dlq}-reader"), 6000).create().expect("DLQ reader");
    consumer.subscribe(&[dlq]).expect("subscribe to the DLQ");
    let mut letters = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !groups.iter().all(|g| letters.iter().any(|(l, _): &(DeadLetter, String)| l.consumer_group == *g)) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the dead-letter topic {dlq} lacks letters from {groups:?}: got {letters:?}");
        let Ok(Ok(msg)) = tokio::time::timeout(left, consumer.recv()).await else {
            continue;
        };
        let letter: DeadLetter = serde_json::from_slice(msg.payload().unwrap_or_default())
            .unwrap_or_else(|e| panic!("a dead letter that is not an envelope ({e}): {:?}", msg.payload()));
        assert_eq!(msg.key(), Some(MALFORMED_KEY.as_bytes()), "dead letter keeps the original key");
        let reason_header = msg
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "reason").and_then(|h| h.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        letters.push((letter, reason_header));
    }
    letters
}

/// `ProducerID,total_errors` from the ground-truth logs and the stored inferences.
fn expected_csv(truth: &[TruthRow], inferred: &HashMap<String, String>) -> String {
    let mut errors: BTreeMap<&str, u64> = BTreeMap::new();
    for row in truth {
        let label = &inferred[&iot_schema::doc_id(&row.producer_id, row.id)];
        *errors.entry(&row.producer_id).or_default() += u64::from(*label != row.ground_truth);
    }
    let mut csv = String::from("ProducerID,total_errors\n");
    for (producer, n) in errors {
        csv += &format!("{producer},{n}\n");
    }
    csv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_stores_every_record_once_through_crashes_and_outages() {
    let mut run = Pipeline::start().await;
    let at_kill = run.kill_and_restart_the_infer_consumer().await;
    let malformed_at = run.inject_a_malformed_message().await;
    let (at_outage, during_outage) = run.stop_the_inference_service_for_a_while(at_kill).await;
    run.wait_until_every_record_is_complete().await;
    run.check_the_db_consumer_metrics().await;
    run.stop_the_consumers_gracefully();

    let truth = run.truth();
    let inferred = run.check_mongodb_holds_exactly_the_truth(&truth).await;
    let letters = run.check_the_malformed_message_was_dead_lettered(malformed_at).await;
    run.check_the_infer_consumer_retried_during_the_outage();
    run.check_every_record_has_a_latency_row(&truth);
    let produced = run.check_the_dataflow_count(&truth, &inferred);
    eprintln!(
        "end-to-end: {TOTAL} records in {:.1}s (kill at {at_kill} inferred, outage from {at_outage} to {during_outage}), {letters} dead letter(s)\n{produced}",
        run.started.elapsed().as_secs_f64(),
    );
}

/// One run of the pipeline: its topics, groups and database on the shared stack, and the
/// processes it started (the inference service, both consumers, the producer).
struct Pipeline {
    started: Instant,
    kafka: KafkaArgs,
    dlq: String,
    db: String,
    db_group: String,
    infer_group: String,
    store: Store,
    service: common::ServiceFiles,
    infer_url: String,
    db_metrics_url: String,
    children: Children,
    work: tempfile::TempDir,
    _cleanup: Cleanup,
}

impl Pipeline {
    /// Starts the inference service and both consumers, then the producers, which send for about
    /// ten seconds: long enough to break things in the middle.
    async fn start() -> Pipeline {
        let started = Instant::now();
        let run = unique_name("e2e");
        let (dlq, db) = (format!("{run}.dlq"), run.replace('-', "_"));
        let kafka = kafka_args(&run);
        let store = Store::open(&MongoArgs { write_concurrency: 1, ..MongoArgs::new(&mongo_uri(), &db) })
            .await
            .expect("MongoDB client");
        check_stack(&kafka, &store).await;
        let _cleanup = Cleanup { kafka: kafka.clone(), topics: vec![run.clone(), dlq.clone()], store: store.clone() };
        workspace_binary("dataflow");
        let port = free_port();
        let mut service = service_files(port);
        service.args.retain(|arg| !arg.starts_with("--model-id="));
        service.args.push(format!("--model-id={MODEL_ID}"));
        let work = tempfile::tempdir().expect("temp dir");
        let mut pipeline = Pipeline {
            started,
            db_group: format!("{run}-db"),
            infer_group: format!("{run}-infer"),
            kafka,
            dlq,
            db,
            store,
            service,
            infer_url: format!("http://127.0.0.1:{port}"),
            db_metrics_url: String::new(),
            children: Children::new(work.path()),
            work,
            _cleanup,
        };
        pipeline.phase("binaries ready");
        iot_ingest::kafka::create_topics(&pipeline.kafka, &[&run, &pipeline.dlq], 4).await.expect("create topics");
        pipeline.start_the_inference_service("infer-service-1").await;
        pipeline.start_the_consumers();
        pipeline.start_the_producers();
        pipeline
    }

    fn phase(&self, what: &str) {
        eprintln!("[{:6.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    fn topic(&self) -> &str {
        &self.kafka.topic
    }

    async fn start_the_inference_service(&mut self, name: &str) {
        self.children.spawn(name, &self.service.binary, &self.service.args);
        wait_healthy(&self.infer_url, Duration::from_secs(60), &self.children).await;
        self.phase(&format!("{name} up"));
    }

    fn consumer_args(&self, group: &str) -> Vec<String> {
        consumer_args(self.topic(), &self.dlq, &mongo_uri(), &self.db, group)
    }

    fn start_the_consumers(&mut self) {
        let mut db_args = self.consumer_args(&self.db_group);
        let port = free_port();
        db_args.extend(["--batch-size=50".to_owned(), format!("--metrics-listen=127.0.0.1:{port}")]);
        self.db_metrics_url = format!("http://127.0.0.1:{port}/metrics");
        self.children.spawn("db-consumer", Path::new(env!("CARGO_BIN_EXE_db-consumer")), &db_args);
        self.start_an_infer_consumer(1);
    }

    fn start_an_infer_consumer(&mut self, n: u32) {
        let mut args = self.consumer_args(&self.infer_group);
        args.extend([
            format!("--infer-url={}", self.infer_url),
            "--images-per-request=8".to_owned(),
            "--in-flight=3".to_owned(),
            format!("--latency-log={}", self.latency_log(n).display()),
        ]);
        let name = format!("infer-consumer-{n}");
        self.children.spawn(&name, Path::new(env!("CARGO_BIN_EXE_infer-consumer")), args);
    }

    fn latency_log(&self, n: u32) -> PathBuf {
        self.work.path().join(format!("latency-{n}.csv"))
    }

    fn truth_log(&self) -> PathBuf {
        self.work.path().join("truth.csv")
    }

    fn start_the_producers(&mut self) {
        let args: Vec<String> = vec![
            format!("--brokers={}", self.kafka.brokers),
            format!("--topic={}", self.topic()),
            format!("--producers={PRODUCERS}"),
            "--producer-prefix=cam-".to_owned(),
            format!("--count={PER_PRODUCER}"),
            "--disjoint-ids".to_owned(),
            // Records 0..1016 are the bit-exact CIFAR-10 pixels.
            "--image-limit=1017".to_owned(),
            format!("--cifar={}", asset("cifar10_test_batch.bin").display()),
            // 4 × 25 msg/s: the run lasts ten seconds.
            "--rate=25".to_owned(),
            format!("--truth-log={}", self.truth_log().display()),
        ];
        self.children.spawn("producer", Path::new(env!("CARGO_BIN_EXE_producer")), &args);
    }

    /// Kills the infer-consumer without warning once it has done some work, then restarts it.
    /// Returns how many records were inferred at the kill.
    async fn kill_and_restart_the_infer_consumer(&mut self) -> u64 {
        let at_kill = wait_inferred(&self.store, 100, Duration::from_secs(120), &self.children).await;
        self.children.kill("infer-consumer-1");
        self.phase(&format!("infer-consumer killed with {at_kill} records inferred"));
        assert!(at_kill < TOTAL, "the infer-consumer finished before it could be killed");
        tokio::time::sleep(Duration::from_secs(1)).await;
        self.start_an_infer_consumer(2);
        at_kill
    }

    /// Sends a message without GroundTruth among the good ones; returns its partition and offset.
    async fn inject_a_malformed_message(&self) -> (i32, i64) {
        let producer = iot_ingest::kafka::producer(&self.kafka).expect("Kafka producer");
        let record = FutureRecord::to(self.topic()).key(MALFORMED_KEY).payload(MALFORMED);
        match producer.send(record, Duration::from_secs(30)).await {
            Ok(delivery) => (delivery.partition, delivery.offset),
            Err((err, _)) => panic!("cannot inject the malformed message: {err}"),
        }
    }

    /// Stops the inference service for a few seconds while records keep coming. Returns how many
    /// records were inferred when it stopped and when it came back.
    async fn stop_the_inference_service_for_a_while(&mut self, at_kill: u64) -> (u64, u64) {
        let at_outage = wait_inferred(&self.store, at_kill + 150, Duration::from_secs(180), &self.children).await;
        assert!(at_outage < TOTAL, "every record was inferred before the outage could happen");
        let _ = self.children.terminate("infer-service-1", Duration::from_secs(10));
        self.phase(&format!("inference service stopped with {at_outage} records inferred"));
        tokio::time::sleep(Duration::from_secs(4)).await;
        let during_outage = count(&self.store, inferred_filter()).await;
        self.start_the_inference_service("infer-service-2").await;
        (at_outage, during_outage)
    }

    async fn wait_until_every_record_is_complete(&mut self) {
        assert!(
            self.children.wait_exit("producer", Duration::from_secs(120)).is_some_and(|s| s.success()),
            "the producer failed or did not finish{}",
            self.children.log_tails()
        );
        self.phase("producer done");
        let deadline = Instant::now() + PIPELINE_WAIT;
        let complete = doc! { "Inferred": { "$exists": true }, "StoredAt": { "$exists": true } };
        loop {
            let have = count(&self.store, complete.clone()).await;
            if have >= TOTAL {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {have} of {TOTAL} records are complete (metadata and inference) after {PIPELINE_WAIT:?}{}",
                self.children.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.phase("all records complete in MongoDB");
    }

    /// The db-consumer's Prometheus counters agree with what it did.
    async fn check_the_db_consumer_metrics(&self) {
        let exposition = reqwest::get(&self.db_metrics_url).await.expect("scrape").text().await.expect("metrics text");
        let counter = |name: &str| expect_sample(&exposition, &format!("iot_ingest_{name}{{consumer=\"db\"}}"));
        assert!(counter("records_written_total") >= TOTAL as f64, "{exposition}");
        assert!(counter("records_dead_lettered_total") >= 1.0, "{exposition}");
    }

    /// Both consumers stop on SIGTERM with status 0.
    fn stop_the_consumers_gracefully(&mut self) {
        for name in ["infer-consumer-2", "db-consumer"] {
            let stopped = self.children.terminate(name, Duration::from_secs(30));
            assert!(stopped, "{name} did not exit 0 on SIGTERM{}", self.children.log_tails());
        }
    }

    /// Every acknowledged message, from the producers' truth log, each once.
    fn truth(&self) -> Vec<TruthRow> {
        let truth = truth_log::read(&self.truth_log()).expect("truth log");
        assert_eq!(truth.len() as u64, TOTAL, "truth log rows");
        assert_eq!(expected_ids(&truth).len() as u64, TOTAL, "truth log has duplicate records");
        truth
    }

    /// MongoDB holds exactly the records of `truth`, each once, each with metadata and an
    /// inference. Returns the inferred label of each record.
    async fn check_mongodb_holds_exactly_the_truth(&self, truth: &[TruthRow]) -> HashMap<String, String> {
        let mut cursor = self.store.collection().find(doc! {}).await.expect("find");
        let mut inferred: HashMap<String, String> = HashMap::new();
        let truth_by_id: HashMap<String, &TruthRow> =
            truth.iter().map(|r| (iot_schema::doc_id(&r.producer_id, r.id), r)).collect();
        while cursor.advance().await.expect("cursor") {
            let doc: Document = cursor.deserialize_current().expect("document");
            let id = doc.get_str("_id").expect("_id").to_owned();
            let row = truth_by_id.get(&id).unwrap_or_else(|| panic!("MongoDB has a record no producer sent: {doc}"));
            assert_eq!(doc.get_str("GroundTruth"), Ok(row.ground_truth.as_str()), "{doc}");
            assert_eq!(doc.get_str("ModelId"), Ok(MODEL_ID), "{doc}");
            assert!(doc.get_datetime("StoredAt").is_ok() && doc.get_datetime("InferredAt").is_ok(), "{doc}");
            assert_eq!(doc.get_datetime("SentAt").map(|d| d.timestamp_millis()), Ok(row.sent_at_ms), "{doc}");
            let label = doc.get_str("Inferred").unwrap_or_else(|_| panic!("no inference: {doc}"));
            assert!(inferred.insert(id, label.to_owned()).is_none(), "a record appears twice");
        }
        assert_eq!(inferred.len() as u64, TOTAL, "records in MongoDB");
        let labels: HashSet<&str> = inferred.values().map(String::as_str).collect();
        assert!(labels.len() > 2, "the model gave suspiciously few distinct labels: {labels:?}");
        inferred
    }

    /// The malformed message is in the dead-letter topic, once per consumer group at least, and
    /// not in MongoDB. Returns the number of dead letters.
    async fn check_the_malformed_message_was_dead_lettered(&self, (partition, offset): (i32, i64)) -> usize {
        let letters = read_dead_letters(&self.kafka, &self.dlq, &[&self.db_group, &self.infer_group]).await;
        for (letter, reason_header) in &letters {
            assert_eq!(letter.reason_code, "missing_field", "{letter:?}");
            assert_eq!(letter.reason, "missing field `GroundTruth`");
            assert_eq!(reason_header, &letter.reason);
            assert_eq!(letter.key.as_deref(), Some(MALFORMED_KEY));
            assert_eq!((letter.topic.as_str(), letter.partition, letter.offset), (self.topic(), partition, offset));
            assert_eq!(letter.payload.as_deref().map(str::as_bytes), Some(MALFORMED));
        }
        assert_eq!(count(&self.store, doc! { "ProducerID": "cam-x" }).await, 0, "the malformed record was stored");
        letters.len()
    }

    fn check_the_infer_consumer_retried_during_the_outage(&self) {
        let infer_log = self.children.log("infer-consumer-2");
        assert!(
            infer_log.contains("retrying in"),
            "the infer-consumer never retried during the outage{}",
            self.children.log_tails()
        );
    }

    /// Every record has a latency row, in one log or the other.
    fn check_every_record_has_a_latency_row(&self, truth: &[TruthRow]) {
        let mut latency_ids = HashSet::new();
        for n in [1, 2] {
            for row in iot_ingest::latency::read(&self.latency_log(n)).unwrap_or_default() {
                assert!(row.latency_ms >= 0, "{row:?}");
                latency_ids.insert(iot_schema::doc_id(&row.producer_id, row.id));
            }
        }
        assert_eq!(latency_ids, expected_ids(truth), "latency logs cover every record");
    }

    /// The dataflow's error counts equal the ones computed from the ground truth; returns its CSV.
    fn check_the_dataflow_count(&self, truth: &[TruthRow], inferred: &HashMap<String, String>) -> String {
        let output = self.work.path().join("errors.csv");
        let status = Command::new(workspace_binary("dataflow"))
            .args(["count", "--mongo-uri", &mongo_uri(), "--db", &self.db, "--output"])
            .arg(&output)
            .status()
            .expect("run dataflow");
        assert!(status.success(), "dataflow count failed");
        let produced = std::fs::read_to_string(&output).expect("dataflow CSV");
        assert_eq!(produced, expected_csv(truth, inferred), "dataflow CSV vs ground truth");
        produced
    }
}

fn expected_ids(truth: &[TruthRow]) -> HashSet<String> {
    truth.iter().map(|r| iot_schema::doc_id(&r.producer_id, r.id)).collect()
}
