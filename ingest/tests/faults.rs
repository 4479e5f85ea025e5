//! The consumers under faults, with the real binaries on the real services (Kafka and MongoDB
//! from `scripts/stack up`; a private MongoDB-compatible server where one must be frozen):
//!
//! - two producers with the same ProducerID and overlapping IDs: the second one's colliding
//!   records are dead-lettered (`id_collision`), never merged into the first one's;
//! - MongoDB hangs (SIGSTOP) for longer than the operation timeout and the consumer's poll
//!   interval: writes stall and are retried, the member keeps its partitions, nothing is lost;
//! - Kafka deletes records before the group read them (retention): the skipped offsets are
//!   reported by partition, and reading goes on;
//! - a paused member loses half its partitions in a rebalance and gets them back later: it reads
//!   them again;
//!
//! A member joining and leaving mid-run is a case of the pipeline fault suite
//! (`tests/pipeline_faults`), with both consumers and the exactness check.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bson::{doc, Document};
use common::*;
use iot_bench::testkit::{asset, free_port, scrape_sample as metric, unique_name, Children, PrivateMongo};
use iot_ingest::args::MongoArgs;
use iot_ingest::dlq::DeadLetter;
use iot_ingest::store::Store;
use iot_ingest::truth_log::{self, TruthRow};
use iot_schema::ImageMessage;
use rdkafka::admin::AdminOptions;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

/// What one test run uses: its topic, dead-letter topic, database and group names.
struct Names {
    topic: String,
    dlq: String,
    db: String,
    group: String,
}

/// What every test here starts with: its names, topics (created, and deleted afterwards), a
/// store on `mongo_uri` (its database dropped afterwards), a work folder and its children.
struct Fixture {
    _cleanup: Cleanup,
    names: Names,
    kafka: iot_ingest::args::KafkaArgs,
    store: Store,
    work: tempfile::TempDir,
    children: Children,
}

impl Fixture {
    async fn new(what: &str, mongo_uri: &str, partitions: i32) -> Fixture {
        let names = Names::new(what);
        let kafka = kafka_args(&names.topic);
        let store = Store::open(&MongoArgs::new(mongo_uri, &names.db)).await.expect("MongoDB client");
        check_stack(&kafka, &store).await;
        let topics = vec![names.topic.clone(), names.dlq.clone()];
        let _cleanup = Cleanup { kafka: kafka.clone(), topics, store: store.clone() };
        iot_ingest::kafka::create_topics(&kafka, &[&names.topic, &names.dlq], partitions).await.expect("topics");
        let work = tempfile::tempdir().expect("temp dir");
        let children = Children::new(work.path());
        Fixture { _cleanup, names, kafka, store, work, children }
    }
}

impl Names {
    fn new(what: &str) -> Names {
        let run = unique_name(what);
        Names { topic: run.clone(), dlq: format!("{run}.dlq"), db: run.replace('-', "_"), group: format!("{run}-db") }
    }
}

fn producer_args(topic: &str, truth: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![format!("--brokers={}", brokers()), format!("--topic={topic}")];
    args.push(format!("--truth-log={}", truth.display()));
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Runs the producer binary to the end.
fn produce(children: &mut Children, name: &str, topic: &str, truth: &std::path::Path, extra: &[&str]) -> Vec<TruthRow> {
    children.spawn(name, producer_bin(), producer_args(topic, truth, extra));
    let status = children.wait_exit(name, Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{name}: {status:?}{}", children.log_tails());
    truth_log::read(truth).expect("truth log")
}

fn metrics_arg() -> (String, String) {
    let port = free_port();
    (format!("--metrics-listen=127.0.0.1:{port}"), format!("http://127.0.0.1:{port}/metrics"))
}

/// The stored record has exactly what the producer sent for it.
fn assert_holds(doc: &Document, row: &TruthRow) {
    assert_eq!(doc.get_str("ProducerID"), Ok(row.producer_id.as_str()), "{doc}");
    assert_eq!(doc.get_i64("ID").or_else(|_| doc.get_i32("ID").map(i64::from)), Ok(row.id), "{doc}");
    assert_eq!(doc.get_str("GroundTruth"), Ok(row.ground_truth.as_str()), "{doc}");
    assert_eq!(doc.get_datetime("SentAt").map(|d| d.timestamp_millis()), Ok(row.sent_at_ms), "{doc}");
}

/// MongoDB holds exactly the records of `truth`, each once with its own content.
async fn assert_stored_exactly(store: &Store, truth: &[TruthRow]) {
    let docs = all_documents(store).await;
    let expected: BTreeSet<String> = truth.iter().map(|r| iot_schema::doc_id(&r.producer_id, r.id)).collect();
    assert_eq!(expected.len(), truth.len(), "the truth logs name a record twice");
    let stored: BTreeSet<String> = docs.keys().cloned().collect();
    assert_eq!(stored, expected, "stored records vs acknowledged messages");
    for row in truth {
        assert_holds(&docs[&iot_schema::doc_id(&row.producer_id, row.id)], row);
    }
}

/// The group committed every partition up to its end.
fn assert_committed_to_the_end(kafka: &iot_ingest::args::KafkaArgs, group: &str, topic: &str) {
    for (partition, committed, end) in committed_and_ends(kafka, group, topic) {
        assert_eq!(committed.unwrap_or(0), end, "{topic}[{partition}]: committed offset vs end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_collisions_are_dead_lettered_and_never_merged() {
    let port = free_port();
    let service = service_files(port);
    let Fixture { _cleanup, names, kafka, store, work, mut children } = Fixture::new("collide", &mongo_uri(), 2).await;
    let infer_group = format!("{}-infer", names.topic);

    let infer_url = format!("http://127.0.0.1:{port}");
    children.spawn("infer-service", &service.binary, &service.args);
    let client = iot_ingest::infer_client::InferClient::new(&infer_url, Duration::from_secs(2)).expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.healthy().await {
        assert!(Instant::now() < deadline, "the inference service did not come up{}", children.log_tails());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (db_metrics_arg, db_metrics) = metrics_arg();
    let (infer_metrics_arg, infer_metrics) = metrics_arg();
    let mut db_args = consumer_args(&names.topic, &names.dlq, &mongo_uri(), &names.db, &names.group);
    db_args.extend(["--batch-size=8".to_owned(), db_metrics_arg]);
    let mut infer_args = consumer_args(&names.topic, &names.dlq, &mongo_uri(), &names.db, &infer_group);
    infer_args.extend([format!("--infer-url={infer_url}"), "--images-per-request=8".to_owned(), infer_metrics_arg]);
    children.spawn("db-consumer", db_consumer_bin(), &db_args);
    children.spawn("infer-consumer", infer_consumer_bin(), &infer_args);

    // The first producer: CIFAR-10 images 0..29. All stored and inferred before the second runs.
    let cifar = format!("--cifar={}", asset("cifar10_test_batch.bin").display());
    let first_args = ["--producer-id=cam-c", "--count=30", "--image-limit=1017", cifar.as_str()];
    let first = produce(&mut children, "producer-1", &names.topic, &work.path().join("t1.csv"), &first_args);
    assert_eq!(first.len(), 30);
    let complete = doc! { "Inferred": { "$exists": true }, "StoredAt": { "$exists": true } };
    wait_count(&store, complete.clone(), 30, Duration::from_secs(120), &children).await;

    // The second: the same ProducerID restarting at ID 15, with other images (synthetic
    // squares) and labels: 15..29 collide, 30..44 are new.
    let second_args = ["--producer-id=cam-c", "--count=30", "--start-id=15", "--synthetic"];
    let second = produce(&mut children, "producer-2", &names.topic, &work.path().join("t2.csv"), &second_args);
    assert_eq!(second.len(), 30);

    // A redelivery: one of the first producer's messages, byte for byte, twice more.
    let records = read_topic(&kafka, &names.topic);
    let message = |payload: &[u8]| serde_json::from_slice::<ImageMessage>(payload).expect("a producer's message");
    let original = records
        .iter()
        .find(|r| message(&r.payload).id == 3 && message(&r.payload).sent_at_ms == Some(first[3].sent_at_ms));
    let original = original.expect("the first producer's message 3 in the topic");
    let producer = iot_ingest::kafka::producer(&kafka).expect("Kafka producer");
    for _ in 0..2 {
        let record = FutureRecord::to(&names.topic).key("cam-c").payload(&original.payload);
        producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| e).expect("redelivery sent");
    }

    // Every record read is either written or dead-lettered, by both consumers.
    let total = (first.len() + second.len() + 2) as f64;
    for (url, consumer) in [(&db_metrics, "db"), (&infer_metrics, "infer")] {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let written = metric(url, &format!("iot_ingest_records_written_total{{consumer=\"{consumer}\"}}")).await;
            let dead = metric(url, &format!("iot_ingest_records_dead_lettered_total{{consumer=\"{consumer}\"}}")).await;
            if written + dead >= total {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{consumer}: {written} written + {dead} dead-lettered of {total}{}",
                children.log_tails()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let collisions = metric(url, &format!("iot_ingest_id_collisions_total{{consumer=\"{consumer}\"}}")).await;
        assert_eq!(collisions, 15.0, "{consumer}: ID collisions counted");
    }
    assert!(children.terminate("db-consumer", Duration::from_secs(30)), "db-consumer exit{}", children.log_tails());
    assert!(
        children.terminate("infer-consumer", Duration::from_secs(30)),
        "infer-consumer exit{}",
        children.log_tails()
    );

    // MongoDB: 0..29 hold the first producer's messages (the redelivered one unchanged), 30..44
    // the second's; each record's fields, inference and digest all come from one message.
    let by_content: HashMap<(i64, i64), ImageMessage> =
        records.iter().map(|r| message(&r.payload)).map(|m| ((m.id, m.sent_at_ms.expect("SentAt")), m)).collect();
    let winners: Vec<TruthRow> = first.iter().chain(second.iter().filter(|r| r.id >= 30)).cloned().collect();
    assert_stored_exactly(&store, &winners).await;
    let docs = all_documents(&store).await;
    for row in &winners {
        let doc = &docs[&iot_schema::doc_id(&row.producer_id, row.id)];
        let sent = &by_content[&(row.id, row.sent_at_ms)];
        assert_eq!(doc.get_str("Digest"), Ok(iot_schema::write::content_digest(sent).as_str()), "{doc}");
        assert!(doc.get_str("Inferred").is_ok() && doc.get_datetime("StoredAt").is_ok(), "{doc}");
    }

    // The dead-letter topic: the second producer's 15 colliding messages, once per group.
    let letters: Vec<DeadLetter> = read_topic(&kafka, &names.dlq)
        .iter()
        .map(|r| serde_json::from_slice(&r.payload).expect("a dead-letter envelope"))
        .collect();
    let collided: Vec<&TruthRow> = second.iter().filter(|r| r.id < 30).collect();
    for group in [&names.group, &infer_group] {
        let mine: Vec<&DeadLetter> = letters.iter().filter(|l| &l.consumer_group == group).collect();
        assert_eq!(mine.len(), collided.len(), "{group}: dead letters {mine:?}");
        for letter in &mine {
            assert_eq!(letter.reason_code, "id_collision", "{letter:?}");
            let msg = message(letter.payload.as_deref().expect("text payload").as_bytes());
            let row = collided.iter().find(|r| r.id == msg.id).unwrap_or_else(|| panic!("unexpected letter {msg:?}"));
            assert_eq!(msg.sent_at_ms, Some(row.sent_at_ms), "the letter holds the second producer's message");
            assert!(letter.reason.contains(&format!("cam-c/{}", msg.id)), "{}", letter.reason);
        }
        let ids: BTreeSet<i64> = mine.iter().map(|l| message(l.payload.as_deref().unwrap().as_bytes()).id).collect();
        assert_eq!(ids, (15..30).collect(), "{group}: each colliding message once");
    }
    let db_log = children.log("db-consumer");
    assert!(db_log.contains("ID collision: record cam-c/15"), "no collision warning{}", children.log_tails());
    assert!(!db_log.contains(&original_data_prefix(&original.payload)), "image data in the log");
}

/// The start of a message's `Data`, which no log line may contain.
fn original_data_prefix(payload: &[u8]) -> String {
    let msg: ImageMessage = serde_json::from_slice(payload).expect("message");
    msg.data.chars().take(40).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_mongodb_stalls_writes_but_the_member_keeps_its_partitions() {
    const FREEZE: Duration = Duration::from_secs(12);
    let mongo = PrivateMongo::start();
    let Fixture { _cleanup, names, kafka, store, work, mut children } = Fixture::new("stall", &mongo.uri, 2).await;

    let (metrics_flag, metrics_url) = metrics_arg();
    let mut args = consumer_args(&names.topic, &names.dlq, &mongo.uri, &names.db, &names.group);
    args.extend([
        "--batch-size=10".to_owned(),
        "--in-flight=1".to_owned(),
        "--mongo-op-timeout-ms=1000".to_owned(),
        // Shorter than the freeze: a member that stopped polling would be thrown out.
        "--kafka-opt=max.poll.interval.ms=7000".to_owned(),
        metrics_flag,
    ]);
    children.spawn("db-consumer", db_consumer_bin(), &args);
    let series = |name: &str| format!("iot_ingest_{name}{{consumer=\"db\"}}");

    let mut truth = produce(
        &mut children,
        "producer-1",
        &names.topic,
        &work.path().join("t1.csv"),
        &["--producer-id=stall-1", "--count=40", "--synthetic"],
    );
    wait_count(&store, doc! {}, 40, Duration::from_secs(60), &children).await;

    // MongoDB hangs (neither down nor answering) while records keep coming.
    mongo.freeze();
    let frozen_at = Instant::now();
    truth.extend(produce(
        &mut children,
        "producer-2",
        &names.topic,
        &work.path().join("t2.csv"),
        &["--producer-id=stall-2", "--count=60", "--synthetic"],
    ));
    tokio::time::sleep((FREEZE / 2).saturating_sub(frozen_at.elapsed())).await;
    let stalled_for = metric(&metrics_url, &series("mongo_stall_seconds")).await;
    tokio::time::sleep(FREEZE.saturating_sub(frozen_at.elapsed())).await;
    mongo.thaw();
    assert!(stalled_for >= 1.0, "the stall gauge read {stalled_for} s during the stall");

    wait_count(&store, doc! {}, truth.len() as u64, Duration::from_secs(60), &children).await;
    let log = children.log("db-consumer");
    assert_eq!(log.matches("partitions assigned").count(), 1, "the member was assigned again{}", children.log_tails());
    assert!(!log.contains("partitions revoked"), "the member lost its partitions{}", children.log_tails());
    assert!(log.contains("did not answer") && log.contains("failing for"), "no stall warning{}", children.log_tails());
    assert!(metric(&metrics_url, &series("mongo_stalls_total")).await >= 1.0);
    assert!(metric(&metrics_url, &series("consumer_pauses_total")).await >= 1.0, "reading never paused");
    assert_eq!(metric(&metrics_url, &series("mongo_stall_seconds")).await, 0.0, "the stall is over");
    assert!(children.terminate("db-consumer", Duration::from_secs(30)), "db-consumer exit{}", children.log_tails());
    assert_stored_exactly(&store, &truth).await;
    assert_committed_to_the_end(&kafka, &names.group, &names.topic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_deleted_before_the_group_read_them_are_reported() {
    let Fixture { _cleanup, names, kafka, store, work, mut children } =
        Fixture::new("retention", &mongo_uri(), 1).await;
    let args = consumer_args(&names.topic, &names.dlq, &mongo_uri(), &names.db, &names.group);

    // Offsets 0..19 are read and committed; then 20..39 arrive while no consumer runs.
    let read = ["--producer-id=ret", "--count=20", "--synthetic"];
    let mut truth = produce(&mut children, "producer-1", &names.topic, &work.path().join("t1.csv"), &read);
    children.spawn("db-consumer-1", db_consumer_bin(), &args);
    wait_count(&store, doc! {}, 20, Duration::from_secs(60), &children).await;
    assert!(children.terminate("db-consumer-1", Duration::from_secs(30)), "exit{}", children.log_tails());
    let unread = ["--producer-id=ret", "--count=20", "--start-id=20", "--synthetic"];
    let later = produce(&mut children, "producer-2", &names.topic, &work.path().join("t2.csv"), &unread);

    // Retention deletes 20..29 before the group reads them (DeleteRecords moves the log start
    // as retention does).
    let admin = iot_ingest::kafka::admin(&kafka).expect("admin");
    let mut before = TopicPartitionList::new();
    before.add_partition_offset(&names.topic, 0, Offset::Offset(30)).expect("partition");
    admin.delete_records(&before, &AdminOptions::new()).await.expect("delete records");

    let (metrics_flag, metrics_url) = metrics_arg();
    let mut args = args.clone();
    args.push(metrics_flag);
    children.spawn("db-consumer-2", db_consumer_bin(), &args);
    truth.extend(later.into_iter().filter(|r| r.id >= 30));
    wait_count(&store, doc! {}, truth.len() as u64, Duration::from_secs(60), &children).await;
    let series =
        format!("iot_ingest_offsets_skipped_total{{consumer=\"db\",partition=\"0\",topic=\"{}\"}}", names.topic);
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(&metrics_url).await.expect("scrape").text().await.expect("text").find(&series).is_none() {
        assert!(Instant::now() < deadline, "no {series}{}", children.log_tails());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric(&metrics_url, &series).await, 10.0);
    let log = children.log("db-consumer-2");
    assert!(
        log.contains(&format!("{}[0]: offsets 20..30 were deleted", names.topic)) && log.contains("10 record(s) lost"),
        "no error naming the partition and the loss{}",
        children.log_tails()
    );
    assert!(children.terminate("db-consumer-2", Duration::from_secs(30)), "exit{}", children.log_tails());
    assert_stored_exactly(&store, &truth).await;
    assert_committed_to_the_end(&kafka, &names.group, &names.topic);
}

/// A pause must not outlive the assignment it was made for. A member paused (its MongoDB hung),
/// lost half its partitions to a newcomer, resumed the half it kept, and got the other half back
/// when the newcomer left: it reads all of them again, nothing is lost or left uncommitted. (The
/// newcomer writes to the shared stack's server, since a member joins its group only once its
/// MongoDB answers; the records of the first two rounds are each in one server or both.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_paused_moved_away_and_given_back_are_read_again() {
    let mongo = PrivateMongo::start();
    let Fixture { _cleanup, names, kafka, store, work, mut children } = Fixture::new("repause", &mongo.uri, 4).await;
    let newcomer_store = shared_store(&names.db).await;
    let _newcomer_db = DropDb(newcomer_store.clone());
    let (metrics_flag, metrics_url) = metrics_arg();
    let flags = ["--batch-size=10", "--in-flight=1", "--mongo-op-timeout-ms=1000"].map(String::from);
    let mut first = consumer_args(&names.topic, &names.dlq, &mongo.uri, &names.db, &names.group);
    first.extend(flags.iter().cloned().chain([metrics_flag]));
    let mut newcomer = consumer_args(&names.topic, &names.dlq, &mongo_uri(), &names.db, &names.group);
    newcomer.extend(flags);
    let assigned = |children: &Children, name: &str| children.log(name).matches("partitions assigned").count();
    // Sixteen producers spread their records over all four partitions (keyed by ProducerID).
    let send = |children: &mut Children, round: u32, count: u32| {
        let (name, truth) = (format!("producer-{round}"), work.path().join(format!("t{round}.csv")));
        let (prefix, count) = (format!("--producer-prefix=round{round}-"), format!("--count={count}"));
        produce(children, &name, &names.topic, &truth, &["--producers=16", &count, &prefix, "--synthetic"])
    };

    children.spawn("db-consumer-1", db_consumer_bin(), &first);
    let mut truth = send(&mut children, 1, 5);
    wait_count(&store, doc! {}, truth.len() as u64, Duration::from_secs(60), &children).await;

    // MongoDB hangs while records keep coming: the member pauses all four partitions.
    let pauses = "iot_ingest_consumer_pauses_total{consumer=\"db\"}";
    let paused_before = metric(&metrics_url, pauses).await;
    mongo.freeze();
    truth.extend(send(&mut children, 2, 5));
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&metrics_url, pauses).await <= paused_before {
        assert!(Instant::now() < deadline, "the member never paused{}", children.log_tails());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A newcomer takes half of them; the paused member keeps the other half.
    children.spawn("db-consumer-2", db_consumer_bin(), &newcomer);
    let deadline = Instant::now() + Duration::from_secs(60);
    while assigned(&children, "db-consumer-1") < 2 || assigned(&children, "db-consumer-2") < 1 {
        assert!(Instant::now() < deadline, "no rebalance to two members{}", children.log_tails());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    mongo.thaw();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored_in_either(&store, &newcomer_store).await.len() < truth.len() {
        assert!(Instant::now() < deadline, "round 2 not stored{}", children.log_tails());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The newcomer leaves; its partitions come back to the first member, which must read them.
    assert!(children.terminate("db-consumer-2", Duration::from_secs(30)), "exit{}", children.log_tails());
    let deadline = Instant::now() + Duration::from_secs(60);
    while assigned(&children, "db-consumer-1") < 3 {
        assert!(Instant::now() < deadline, "the partitions never came back{}", children.log_tails());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Too few to make the member pause (and so resume everything) again: a partition still
    // paused from before its move would never be read.
    let last = send(&mut children, 3, 1);
    let last_ids: BTreeSet<String> = last.iter().map(|r| iot_schema::doc_id(&r.producer_id, r.id)).collect();
    let round = doc! { "ProducerID": { "$regex": "^round3-" } };
    wait_count(&store, round, last.len() as u64, Duration::from_secs(60), &children).await;
    assert!(children.terminate("db-consumer-1", Duration::from_secs(30)), "exit{}", children.log_tails());
    truth.extend(last);
    let stored = stored_in_either(&store, &newcomer_store).await;
    let expected: BTreeSet<String> = truth.iter().map(|r| iot_schema::doc_id(&r.producer_id, r.id)).collect();
    assert_eq!(stored, expected, "records stored by either member vs acknowledged messages");
    let first_member_has: BTreeSet<String> = all_documents(&store).await.into_keys().collect();
    assert!(last_ids.is_subset(&first_member_has), "the last round went to the first member alone");
    assert_committed_to_the_end(&kafka, &names.group, &names.topic);
}

/// The `_id`s stored in either of two servers.
async fn stored_in_either(a: &Store, b: &Store) -> BTreeSet<String> {
    let mut ids: BTreeSet<String> = all_documents(a).await.into_keys().collect();
    ids.extend(all_documents(b).await.into_keys());
    ids
}
