//! What the ingest tests share, beside the workspace's test kit (`iot_bench::testkit`): a run's
//! topics and database on the shared stack (removed afterwards), the consumer binaries and their
//! flags, the real inference service's files, a stub in front of it, and reading back what Kafka
//! and MongoDB hold.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bson::doc;
use iot_bench::testkit::{self, required, workspace_root};
use iot_ingest::args::{KafkaArgs, MongoArgs};
use iot_ingest::dlq::DeadLetter;
use iot_ingest::store::Store;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

pub mod binaries;
pub mod readback;
pub mod stub;

// Each test binary uses its own part of what is re-exported here.
#[allow(unused_imports)]
pub use binaries::*;
#[allow(unused_imports)]
pub use readback::*;

pub const PARTITIONS: i32 = 4;

/// Log lines of the code under test, shown when a test fails.
pub fn show_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// One test run's topic, dead-letter topic, consumer group and database on the shared stack;
/// topics and database are removed when it is dropped.
pub struct Run {
    pub name: String,
    pub kafka: KafkaArgs,
    pub mongo_uri: String,
    pub dlq: String,
    pub db: String,
    pub group: String,
    pub store: Store,
    _cleanup: Cleanup,
}

impl Run {
    /// Creates the topics (`extra_topic_config` applied to the source topic).
    pub async fn new(tag: &str, extra_topic_config: &[(&str, &str)]) -> Run {
        let name = testkit::unique_name(tag);
        let kafka = kafka_args(&name);
        let mongo_uri = mongo_uri();
        let db = name.replace('-', "_");
        let store = Store::open(&MongoArgs { write_concurrency: 1, ..MongoArgs::new(&mongo_uri, &db) })
            .await
            .expect("MongoDB client");
        let dlq = format!("{name}.dlq");
        let cleanup = Cleanup { kafka: kafka.clone(), topics: vec![name.clone(), dlq.clone()], store: store.clone() };
        let group = format!("{name}-group");
        let run = Run { dlq, group, name, kafka, mongo_uri, db, store, _cleanup: cleanup };
        check_stack(&run.kafka, &run.store).await;
        run.create_topics(extra_topic_config).await;
        run
    }

    async fn create_topics(&self, extra: &[(&str, &str)]) {
        let admin = iot_ingest::kafka::admin(&self.kafka).expect("Kafka admin client");
        let mut source = NewTopic::new(&self.name, PARTITIONS, TopicReplication::Fixed(1));
        for (key, value) in extra {
            source = source.set(key, value);
        }
        let dlq = NewTopic::new(&self.dlq, 1, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in admin.create_topics(&[source, dlq], &options).await.expect("create topics") {
            result.unwrap_or_else(|(topic, code)| panic!("cannot create topic {topic}: {code}"));
        }
    }

    /// The flags every consumer of this run gets.
    pub fn consumer_flags(&self) -> Vec<String> {
        vec![
            format!("--brokers={}", self.kafka.brokers),
            format!("--topic={}", self.name),
            format!("--dlq-topic={}", self.dlq),
            format!("--mongo-uri={}", self.mongo_uri),
            format!("--db={}", self.db),
            format!("--group={}", self.group),
            "--session-timeout-ms=6000".to_owned(),
            "--retry-initial-ms=50".to_owned(),
            "--retry-max-ms=500".to_owned(),
        ]
    }

    /// A producer allowed messages of `max_bytes`.
    pub fn producer(&self, max_bytes: usize) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.brokers)
            .set("message.max.bytes", max_bytes.to_string())
            .create()
            .expect("Kafka producer")
    }

    /// Sends `payload` with `key` and waits for Kafka's acknowledgement.
    pub async fn send(&self, producer: &FutureProducer, key: &str, payload: &[u8]) {
        let record = FutureRecord::to(&self.name).key(key).payload(payload);
        if let Err((err, _)) = producer.send(record, Duration::from_secs(30)).await {
            panic!("cannot send the record {key}: {err}");
        }
    }

    /// Documents in the run's collection that carry `field`, by `_id`.
    pub async fn stored_with(&self, field: &str) -> HashMap<String, bson::Document> {
        let mut cursor = self.store.collection().find(doc! { field: { "$exists": true } }).await.expect("find");
        let mut out = HashMap::new();
        while cursor.advance().await.expect("cursor") {
            let doc: bson::Document = cursor.deserialize_current().expect("document");
            out.insert(doc.get_str("_id").expect("_id").to_owned(), doc);
        }
        out
    }

    /// Whether the group's committed offset of every partition is its end.
    pub fn committed_to_the_end(&self) -> bool {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.brokers)
            .set("group.id", &self.group)
            .create()
            .expect("offset reader");
        let mut tpl = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            tpl.add_partition(&self.name, partition);
        }
        let Ok(committed) = consumer.committed_offsets(tpl, Duration::from_secs(10)) else { return false };
        (0..PARTITIONS).all(|partition| {
            let (_, high) =
                consumer.fetch_watermarks(&self.name, partition, Duration::from_secs(10)).expect("watermarks");
            let at = committed.find_partition(&self.name, partition).map(|e| e.offset());
            at == Some(Offset::Offset(high)) || (high == 0 && at == Some(Offset::Invalid))
        })
    }

    /// Messages in the dead-letter topic so far.
    pub fn dead_letter_count(&self) -> i64 {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", &self.kafka.brokers).create().expect("watermark reader");
        let (low, high) = consumer.fetch_watermarks(&self.dlq, 0, Duration::from_secs(10)).expect("watermarks");
        high - low
    }

    /// Every dead letter, with the size Kafka holds of each (value, key and headers).
    pub async fn dead_letters(&self) -> Vec<(DeadLetter, usize)> {
        let expected = self.dead_letter_count();
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka.brokers)
            .set("group.id", format!("{}-dlq-reader", self.name))
            .set("enable.auto.commit", "false")
            .create()
            .expect("dead-letter reader");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.dlq, 0, Offset::Beginning).expect("partition");
        consumer.assign(&tpl).expect("assign");
        let mut letters = Vec::new();
        while (letters.len() as i64) < expected {
            let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .expect("a dead letter within 30 s")
                .expect("a readable dead letter");
            let headers = msg.headers().map_or(0, |h| {
                use rdkafka::message::Headers;
                h.iter().map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len)).sum()
            });
            let size = msg.payload_len() + msg.key().map_or(0, <[u8]>::len) + headers;
            let letter: DeadLetter = serde_json::from_slice(msg.payload().unwrap_or_default())
                .unwrap_or_else(|e| panic!("a dead letter that is not an envelope ({e})"));
            letters.push((letter, size));
        }
        letters
    }

    /// Polls `done` until it holds, failing with `what` after `within`.
    pub async fn wait_for<F, Fut>(&self, what: &str, within: Duration, mut done: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        while !done().await {
            assert!(Instant::now() < deadline, "{}: {what} not reached within {within:?}", self.name);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Fails early, with the fix, when Kafka or MongoDB does not answer.
pub async fn check_stack(kafka: &KafkaArgs, store: &Store) {
    let admin = iot_ingest::kafka::admin(kafka).expect("Kafka admin client");
    let metadata = admin.inner().fetch_metadata(None, Duration::from_secs(10));
    assert!(
        metadata.is_ok(),
        "Kafka does not answer at {} ({:?}): start the stack with scripts/stack up",
        kafka.brokers,
        metadata.err()
    );
    let ping = store.database().run_command(doc! { "ping": 1 }).await;
    assert!(ping.is_ok(), "MongoDB does not answer ({:?}): start the stack with scripts/stack up", ping.err());
}

/// Drops the test database and deletes the test topics when the test ends, passes or fails.
pub struct Cleanup {
    pub kafka: KafkaArgs,
    pub topics: Vec<String>,
    pub store: Store,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (kafka, topics, store) = (self.kafka.clone(), self.topics.clone(), self.store.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread of its own.
        let cleaner = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                if let Err(err) = store.database().drop().await {
                    eprintln!("cannot drop the test database: {err}");
                }
                let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                if let Err(err) = iot_ingest::kafka::delete_topics(&kafka, &topics).await {
                    eprintln!("cannot delete the test topics: {err:#}");
                }
            });
        });
        let _ = cleaner.join();
    }
}

/// A `width × height` PNG, base64, whose pixels encode `seed`: different seeds, different bytes.
pub fn png_base64(width: u32, height: u32, seed: u32) -> String {
    let [a, b, c, _] = seed.to_le_bytes();
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([a.wrapping_add((x * 7) as u8), b.wrapping_add((y * 5) as u8), c.wrapping_add(((x + y) * 3) as u8)])
    });
    let mut png = Vec::new();
    img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).expect("PNG encoding");
    iot_schema::infer::encode_base64(png)
}

/// A well-formed record's JSON.
pub fn record(producer: &str, id: i64, truth: &str, data: String) -> Vec<u8> {
    let msg = iot_schema::ImageMessage {
        id,
        producer_id: producer.to_owned(),
        ground_truth: truth.to_owned(),
        data,
        sent_at_ms: Some(iot_ingest::now_ms()),
    };
    serde_json::to_vec(&msg).expect("JSON")
}

/// The model and files the real inference service needs, or a failure that says how to get them.
pub struct ServiceFiles {
    pub binary: PathBuf,
    pub args: Vec<String>,
}

pub fn service_files(port: u16) -> ServiceFiles {
    let (model, classes) = (testkit::asset("mobilenetv2-12-int8.onnx"), testkit::asset("imagenet_classes.txt"));
    let label_map =
        required(workspace_root().join("data/label_maps/imagenet_to_cifar10.csv"), "it is part of the repository");
    ServiceFiles {
        binary: testkit::workspace_binary("infer-service"),
        args: vec![
            format!("--model={}", model.display()),
            format!("--classes={}", classes.display()),
            format!("--label-map={}", label_map.display()),
            format!("--listen=127.0.0.1:{port}"),
            format!("--ort-dylib={}", testkit::ort_library().display()),
            "--model-id=mobilenetv2-int8-faults".to_owned(),
        ],
    }
}
