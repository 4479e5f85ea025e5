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
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use common::{check_stack, Cleanup};
use iot_bench::testkit::{
    assets_dir, env_or, free_port, ort_library, required, workspace_binary, workspace_root, Children,
};
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
/// Longest wait for the pipeline to store every record.
const PIPELINE_WAIT: Duration = Duration::from_secs(300);

/// Drops the test database and deletes the test topics when the test ends, passes or fails.
async fn wait_healthy(url: &str, within: Duration, children: &Children) {
    let client = iot_ingest::infer_client::InferClient::new(url, Duration::from_secs(2)).expect("client");
    let deadline = Instant::now() + within;
    while !client.healthy().await {
        assert!(Instant::now() < deadline, "the inference service at {url} did not come up{}", children.log_tails());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count(store: &Store, filter: Document) -> u64 {
    store.collection().count_documents(filter).await.expect("MongoDB count")
}

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
    let started = Instant::now();
    let root = workspace_root();
    let assets = assets_dir();
    let ort = ort_library().display().to_string();
    let model = required(assets.join("mobilenetv2-12-int8.onnx"), "set IOT_ASSETS_DIR to the assets folder");
    let classes = required(assets.join("imagenet_classes.txt"), "set IOT_ASSETS_DIR to the assets folder");
    let cifar = required(assets.join("cifar10_test_batch.bin"), "set IOT_ASSETS_DIR to the assets folder");
    let label_map = required(root.join("data/label_maps/imagenet_to_cifar10.csv"), "it is part of the repository");

    let brokers = env_or("IOT_KAFKA_BROKERS", "127.0.0.1:9092");
    let mongo_uri = env_or("IOT_MONGO_URI", "mongodb://127.0.0.1:27017");
    let run = format!("e2e-{}-{}", std::process::id(), iot_ingest::now_ms());
    let (topic, dlq, db) = (run.clone(), format!("{run}.dlq"), run.replace('-', "_"));
    let (db_group, infer_group) = (format!("{run}-db"), format!("{run}-infer"));
    let kafka = KafkaArgs { brokers: brokers.clone(), topic: topic.clone(), kafka_opts: Vec::new() };
    let store = Store::open(&MongoArgs { write_concurrency: 1, ..MongoArgs::new(&mongo_uri, &db) })
        .await
        .expect("MongoDB client");
    check_stack(&kafka, &store).await;
    let _cleanup = Cleanup { kafka: kafka.clone(), topics: vec![topic.clone(), dlq.clone()], store: store.clone() };

    let infer_service = workspace_binary("infer-service");
    let dataflow = workspace_binary("dataflow");
    let phase = |what: &str| eprintln!("[{:6.1}s] {what}", started.elapsed().as_secs_f64());
    phase("binaries ready");
    let work = tempfile::tempdir().expect("temp dir");
    let mut children = Children::new(work.path());
    iot_ingest::kafka::create_topics(&kafka, &[&topic, &dlq], 4).await.expect("create topics");

    let port = free_port();
    let infer_url = format!("http://127.0.0.1:{port}");
    let service_args: Vec<String> = vec![
        format!("--model={}", model.display()),
        format!("--classes={}", classes.display()),
        format!("--label-map={}", label_map.display()),
        format!("--listen=127.0.0.1:{port}"),
        format!("--ort-dylib={ort}"),
        "--model-id=mobilenetv2-int8-e2e".to_owned(),
    ];
    children.spawn("infer-service-1", &infer_service, &service_args);
    wait_healthy(&infer_url, Duration::from_secs(60), &children).await;
    phase("inference service up");

    let common = |group: &str| -> Vec<String> {
        vec![
            format!("--brokers={brokers}"),
            format!("--topic={topic}"),
            format!("--dlq-topic={dlq}"),
            format!("--mongo-uri={mongo_uri}"),
            format!("--db={db}"),
            format!("--group={group}"),
            // A killed member's partitions move on after 6 s instead of 45 s.
            "--session-timeout-ms=6000".to_owned(),
            "--retry-max-ms=1000".to_owned(),
        ]
    };
    let mut db_args = common(&db_group);
    let db_metrics_url = {
        let port = free_port();
        db_args.extend(["--batch-size=50".to_owned(), format!("--metrics-listen=127.0.0.1:{port}")]);
        format!("http://127.0.0.1:{port}/metrics")
    };
    let infer_args = |n: u32| -> Vec<String> {
        let mut args = common(&infer_group);
        args.extend([
            format!("--infer-url={infer_url}"),
            "--images-per-request=8".to_owned(),
            "--in-flight=3".to_owned(),
            format!("--latency-log={}", work.path().join(format!("latency-{n}.csv")).display()),
        ]);
        args
    };
    children.spawn("db-consumer", Path::new(env!("CARGO_BIN_EXE_db-consumer")), &db_args);
    children.spawn("infer-consumer-1", Path::new(env!("CARGO_BIN_EXE_infer-consumer")), infer_args(1));

    let truth_path = work.path().join("truth.csv");
    let producer_args: Vec<String> = vec![
        format!("--brokers={brokers}"),
        format!("--topic={topic}"),
        format!("--producers={PRODUCERS}"),
        "--producer-prefix=cam-".to_owned(),
        format!("--count={PER_PRODUCER}"),
        "--disjoint-ids".to_owned(),
        // Records 0..1016 are the bit-exact CIFAR-10 pixels.
        "--image-limit=1017".to_owned(),
        format!("--cifar={}", cifar.display()),
        // 4 × 25 msg/s: the run lasts ten seconds, long enough to break things in the middle.
        "--rate=25".to_owned(),
        format!("--truth-log={}", truth_path.display()),
    ];
    children.spawn("producer", Path::new(env!("CARGO_BIN_EXE_producer")), &producer_args);

    // 1. Kill the infer-consumer without warning once it has done some work, then restart it.
    let at_kill = wait_inferred(&store, 100, Duration::from_secs(120), &children).await;
    children.kill("infer-consumer-1");
    phase(&format!("infer-consumer killed with {at_kill} records inferred"));
    assert!(at_kill < TOTAL, "the infer-consumer finished before it could be killed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    children.spawn("infer-consumer-2", Path::new(env!("CARGO_BIN_EXE_infer-consumer")), infer_args(2));

    // 2. A malformed message (no GroundTruth) among the good ones.
    let malformed = br#"{"ID": 1, "ProducerID": "cam-x", "Data": "aGk="}"#;
    let producer = iot_ingest::kafka::producer(&kafka).expect("Kafka producer");
    let delivered = producer
        .send(FutureRecord::to(&topic).key(MALFORMED_KEY).payload(&malformed[..]), Duration::from_secs(30))
        .await;
    let (malformed_partition, malformed_offset) = match delivered {
        Ok(delivery) => (delivery.partition, delivery.offset),
        Err((err, _)) => panic!("cannot inject the malformed message: {err}"),
    };

    // 3. Stop the inference service for a few seconds while records keep coming.
    let at_outage = wait_inferred(&store, at_kill + 150, Duration::from_secs(180), &children).await;
    assert!(at_outage < TOTAL, "every record was inferred before the outage could happen");
    let _ = children.terminate("infer-service-1", Duration::from_secs(10));
    phase(&format!("inference service stopped with {at_outage} records inferred"));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during_outage = count(&store, inferred_filter()).await;
    children.spawn("infer-service-2", &infer_service, &service_args);
    wait_healthy(&infer_url, Duration::from_secs(60), &children).await;
    phase("inference service restarted");

    // 4. Everything arrives.
    assert!(
        children.wait_exit("producer", Duration::from_secs(120)).is_some_and(|s| s.success()),
        "the producer failed or did not finish{}",
        children.log_tails()
    );
    phase("producer done");
    let deadline = Instant::now() + PIPELINE_WAIT;
    let complete = doc! { "Inferred": { "$exists": true }, "StoredAt": { "$exists": true } };
    loop {
        let have = count(&store, complete.clone()).await;
        if have >= TOTAL {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {have} of {TOTAL} records are complete (metadata and inference) after {PIPELINE_WAIT:?}{}",
            children.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    phase("all records complete in MongoDB");
    // The db-consumer's Prometheus counters agree with what it did.
    let exposition = reqwest::get(&db_metrics_url).await.expect("scrape").text().await.expect("metrics text");
    let counter = |name: &str| -> f64 {
        let series = format!("iot_ingest_{name}{{consumer=\"db\"}} ");
        let line = exposition.lines().find(|l| l.starts_with(&series));
        line.and_then(|l| l[series.len()..].parse().ok()).unwrap_or_else(|| panic!("no {series}in\n{exposition}"))
    };
    assert!(counter("records_written_total") >= TOTAL as f64, "{exposition}");
    assert!(counter("records_dead_lettered_total") >= 1.0, "{exposition}");
    // Both consumers stop gracefully on SIGTERM with status 0.
    assert!(
        children.terminate("infer-consumer-2", Duration::from_secs(30)),
        "infer-consumer did not exit 0 on SIGTERM{}",
        children.log_tails()
    );
    assert!(
        children.terminate("db-consumer", Duration::from_secs(30)),
        "db-consumer did not exit 0 on SIGTERM{}",
        children.log_tails()
    );

    // Every acknowledged message is in the truth log, once.
    let truth = truth_log::read(&truth_path).expect("truth log");
    assert_eq!(truth.len() as u64, TOTAL, "truth log rows");
    let expected_ids: HashSet<String> = truth.iter().map(|r| iot_schema::doc_id(&r.producer_id, r.id)).collect();
    assert_eq!(expected_ids.len() as u64, TOTAL, "truth log has duplicate records");

    // MongoDB holds exactly those records, each once, each with metadata and an inference.
    let mut cursor = store.collection().find(doc! {}).await.expect("find");
    let mut inferred: HashMap<String, String> = HashMap::new();
    let truth_by_id: HashMap<String, &TruthRow> =
        truth.iter().map(|r| (iot_schema::doc_id(&r.producer_id, r.id), r)).collect();
    while cursor.advance().await.expect("cursor") {
        let doc: Document = cursor.deserialize_current().expect("document");
        let id = doc.get_str("_id").expect("_id").to_owned();
        let row = truth_by_id.get(&id).unwrap_or_else(|| panic!("MongoDB has a record no producer sent: {doc}"));
        assert_eq!(doc.get_str("GroundTruth"), Ok(row.ground_truth.as_str()), "{doc}");
        assert_eq!(doc.get_str("ModelId"), Ok("mobilenetv2-int8-e2e"), "{doc}");
        assert!(doc.get_datetime("StoredAt").is_ok() && doc.get_datetime("InferredAt").is_ok(), "{doc}");
        assert_eq!(doc.get_datetime("SentAt").map(|d| d.timestamp_millis()), Ok(row.sent_at_ms), "{doc}");
        let label = doc.get_str("Inferred").unwrap_or_else(|_| panic!("no inference: {doc}"));
        assert!(inferred.insert(id, label.to_owned()).is_none(), "a record appears twice");
    }
    assert_eq!(inferred.len() as u64, TOTAL, "records in MongoDB");
    let labels: HashSet<&str> = inferred.values().map(String::as_str).collect();
    assert!(labels.len() > 2, "the model gave suspiciously few distinct labels: {labels:?}");

    // The malformed message is in the dead-letter topic, once per consumer group at least.
    let letters = read_dead_letters(&kafka, &dlq, &[&db_group, &infer_group]).await;
    for (letter, reason_header) in &letters {
        assert_eq!(letter.reason_code, "missing_field", "{letter:?}");
        assert_eq!(letter.reason, "missing field `GroundTruth`");
        assert_eq!(reason_header, &letter.reason);
        assert_eq!(letter.key.as_deref(), Some(MALFORMED_KEY));
        assert_eq!(
            (letter.topic.as_str(), letter.partition, letter.offset),
            (topic.as_str(), malformed_partition, malformed_offset)
        );
        assert_eq!(letter.payload.as_deref().map(str::as_bytes), Some(&malformed[..]));
    }
    assert_eq!(count(&store, doc! { "ProducerID": "cam-x" }).await, 0, "the malformed record was stored");

    // The consumers saw the outage and retried.
    let infer_log = std::fs::read_to_string(children.log_path("infer-consumer-2")).unwrap_or_default();
    assert!(
        infer_log.contains("retrying in"),
        "the infer-consumer never retried during the outage{}",
        children.log_tails()
    );

    // Every record has a latency row, in one log or the other.
    let mut latency_ids = HashSet::new();
    for n in [1, 2] {
        let path = work.path().join(format!("latency-{n}.csv"));
        for row in iot_ingest::latency::read(&path).unwrap_or_default() {
            assert!(row.latency_ms >= 0, "{row:?}");
            latency_ids.insert(iot_schema::doc_id(&row.producer_id, row.id));
        }
    }
    assert_eq!(latency_ids, expected_ids, "latency logs cover every record");

    // The dataflow's error counts equal the ones computed from the ground truth.
    let output = work.path().join("errors.csv");
    let status = Command::new(&dataflow)
        .args(["count", "--mongo-uri", &mongo_uri, "--db", &db, "--output"])
        .arg(&output)
        .status()
        .expect("run dataflow");
    assert!(status.success(), "dataflow count failed");
    let produced = std::fs::read_to_string(&output).expect("dataflow CSV");
    assert_eq!(produced, expected_csv(&truth, &inferred), "dataflow CSV vs ground truth");

    eprintln!(
        "end-to-end: {TOTAL} records in {:.1}s (kill at {at_kill} inferred, outage from {at_outage} to {during_outage}), {} dead letter(s)\n{produced}",
        started.elapsed().as_secs_f64(),
        letters.len()
    );
}
