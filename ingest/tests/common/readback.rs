//! Reading back what Kafka and MongoDB hold at the end of a test.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bson::{doc, Document};
use iot_bench::testkit::{unique_name, Children};
use iot_ingest::args::KafkaArgs;
use iot_ingest::store::Store;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

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
        iot_ingest::kafka::consumer_config(kafka, &unique_name("reader"), 6000).create().expect("reader");
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
