//! What the tests of the consumer binaries share, beside `common`: the binaries as child
//! processes, the shared stack's addresses, a private MongoDB-compatible server to freeze, and
//! readers of what Kafka and MongoDB hold at the end.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bson::{doc, Document};
use iot_ingest::args::{KafkaArgs, MongoArgs};
use iot_ingest::store::Store;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

pub use crate::common::{check_stack, Cleanup};
pub use iot_bench::testkit::{env_or, free_port, workspace_binary, workspace_root, Children};

pub fn producer_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_producer"))
}

pub fn db_consumer_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_db-consumer"))
}

pub fn infer_consumer_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_infer-consumer"))
}

pub fn brokers() -> String {
    env_or("IOT_KAFKA_BROKERS", "127.0.0.1:9092")
}

pub fn mongo_uri() -> String {
    env_or("IOT_MONGO_URI", "mongodb://127.0.0.1:27017")
}

/// A name no other test run uses, for topics, groups and databases.
pub fn unique(what: &str) -> String {
    format!("{what}-{}-{}", std::process::id(), iot_ingest::now_ms())
}

/// `kill -SIG pid`: no libc binding needed for a few signals.
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status();
    assert!(status.is_ok_and(|s| s.success()), "kill -{sig} {pid} failed");
}

/// A MongoDB-compatible server of the test's own, which it may freeze: `mongod` when on PATH
/// (as `scripts/stack` prefers), else the FerretDB binary `scripts/setup` installs.
pub struct PrivateMongo {
    pub uri: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl PrivateMongo {
    pub async fn start() -> PrivateMongo {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let log = File::create(dir.path().join("server.log")).expect("log file");
        let mut command = match which("mongod") {
            Some(mongod) => {
                let mut c = Command::new(mongod);
                c.arg("--dbpath").arg(dir.path()).args(["--bind_ip", "127.0.0.1", "--port", &port.to_string()]);
                c
            }
            None => {
                let cache = PathBuf::from(env_or("IOT_CACHE_DIR", &workspace_root().join(".cache").to_string_lossy()));
                let ferretdb = cache.join("bin/ferretdb");
                assert!(ferretdb.is_file(), "no mongod on PATH and no {}: run scripts/setup", ferretdb.display());
                std::fs::create_dir_all(dir.path().join("data")).expect("data dir");
                let mut c = Command::new(ferretdb);
                c.arg("--handler=sqlite")
                    .arg(format!("--sqlite-url=file:{}/", dir.path().join("data").display()))
                    .arg(format!("--listen-addr=127.0.0.1:{port}"))
                    .arg(format!("--state-dir={}", dir.path().display()))
                    .args(["--debug-addr=-", "--telemetry=disable", "--log-level=warn"]);
                c
            }
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start the private MongoDB server");
        let server = PrivateMongo { uri: format!("mongodb://127.0.0.1:{port}"), child, _dir: dir };
        let store = Store::open(&MongoArgs::new(&server.uri, "admin")).await.expect("client");
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.database().run_command(doc! { "ping": 1 }).await.is_err() {
            assert!(Instant::now() < deadline, "the private MongoDB server at {} did not come up", server.uri);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        server
    }

    pub fn freeze(&self) {
        signal(self.child.id(), "STOP");
    }

    pub fn thaw(&self) {
        signal(self.child.id(), "CONT");
    }
}

impl Drop for PrivateMongo {
    fn drop(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

pub fn kafka_args(topic: &str) -> KafkaArgs {
    KafkaArgs { brokers: brokers(), topic: topic.to_owned(), kafka_opts: Vec::new() }
}

pub async fn count(store: &Store, filter: Document) -> u64 {
    store.collection().count_documents(filter).await.expect("MongoDB count")
}

/// Polls until at least `n` records match `filter`.
pub async fn wait_count(store: &Store, filter: Document, n: u64, within: Duration, children: &Children) {
    let deadline = Instant::now() + within;
    loop {
        let have = count(store, filter.clone()).await;
        if have >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {have} of {n} records match {filter} after {within:?}{}",
            children.log_tails()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record of the collection, by `_id`.
pub async fn all_documents(store: &Store) -> HashMap<String, Document> {
    let mut cursor = store.collection().find(doc! {}).await.expect("find");
    let mut out = HashMap::new();
    while cursor.advance().await.expect("cursor") {
        let doc: Document = cursor.deserialize_current().expect("document");
        let id = doc.get_str("_id").expect("_id").to_owned();
        assert!(out.insert(id, doc).is_none(), "an _id appears twice");
    }
    out
}

/// A counter or gauge of a consumer's `/metrics`, labels included in `series` (e.g.
/// `iot_ingest_mongo_stalls_total{consumer="db"}`).
pub async fn metric(url: &str, series: &str) -> f64 {
    let text = reqwest::get(url).await.expect("scrape").text().await.expect("metrics text");
    let prefix = format!("{series} ");
    let line = text.lines().find(|l| l.starts_with(&prefix));
    line.and_then(|l| l[prefix.len()..].parse().ok()).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// A record as read back from Kafka.
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// Every record of `topic`, from the start of each partition to its end as of now.
pub fn read_topic(kafka: &KafkaArgs, topic: &str) -> Vec<Record> {
    let consumer: BaseConsumer =
        iot_ingest::kafka::consumer_config(kafka, &unique("reader"), 6000).create().expect("reader");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut ends = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10)).expect("watermarks");
        if high > low {
            ends.insert(*p, high);
            tpl.add_partition_offset(topic, *p, Offset::Offset(low)).expect("partition");
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ends.is_empty() {
        assert!(Instant::now() < deadline, "could not read {topic} to its end; partitions left: {ends:?}");
        let Some(Ok(msg)) = consumer.poll(Duration::from_millis(200)) else { continue };
        let (partition, offset) = (msg.partition(), msg.offset());
        let (key, payload) = (msg.key().map(<[u8]>::to_vec), msg.payload().unwrap_or_default().to_vec());
        records.push(Record { partition, offset, key, payload });
        if ends.get(&partition).is_some_and(|end| offset + 1 >= *end) {
            ends.remove(&partition);
        }
    }
    records
}

/// The group's committed offset and the end (high watermark) of each partition of `topic`.
pub fn committed_and_ends(kafka: &KafkaArgs, group: &str, topic: &str) -> Vec<(i32, Option<i64>, i64)> {
    let consumer: StreamConsumer = iot_ingest::kafka::consumer_config(kafka, group, 6000).create().expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    let mut out: Vec<_> = committed
        .elements()
        .iter()
        .map(|e| {
            let (_, high) =
                consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(10)).expect("watermarks");
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), offset, high)
        })
        .collect();
    out.sort();
    out
}

/// The arguments every consumer of a test gets.
pub fn consumer_args(topic: &str, dlq: &str, mongo_uri: &str, db: &str, group: &str) -> Vec<String> {
    vec![
        format!("--brokers={}", brokers()),
        format!("--topic={topic}"),
        format!("--dlq-topic={dlq}"),
        format!("--mongo-uri={mongo_uri}"),
        format!("--db={db}"),
        format!("--group={group}"),
        // A member that leaves is noticed within seconds.
        "--session-timeout-ms=6000".to_owned(),
        "--retry-max-ms=500".to_owned(),
    ]
}
