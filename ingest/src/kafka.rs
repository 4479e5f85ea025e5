//! librdkafka clients configured the way the pipeline needs them.

use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::FutureProducer;

use crate::args::KafkaArgs;

fn base_config(kafka: &KafkaArgs) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    config
}

/// An idempotent producer: acks from all in-sync replicas, no duplicates or reordering on retry.
pub fn producer(kafka: &KafkaArgs) -> Result<FutureProducer> {
    let mut config = base_config(kafka);
    config.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5").set("compression.type", "lz4");
    apply_overrides(&mut config, kafka);
    config.create().with_context(|| format!("cannot create a Kafka producer for {}", kafka.brokers))
}

/// Consumer settings: offsets are committed by hand, only after the writes they cover.
pub fn consumer_config(kafka: &KafkaArgs, group: &str, session_timeout_ms: u64) -> ClientConfig {
    let mut config = base_config(kafka);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", (session_timeout_ms / 3).max(100).to_string())
        .set("enable.partition.eof", "false");
    apply_overrides(&mut config, kafka);
    config
}

/// `--kafka-opt` wins over our defaults.
fn apply_overrides(config: &mut ClientConfig, kafka: &KafkaArgs) {
    for (key, value) in &kafka.kafka_opts {
        config.set(key, value);
    }
}

pub fn admin(kafka: &KafkaArgs) -> Result<AdminClient<DefaultClientContext>> {
    let mut config = base_config(kafka);
    apply_overrides(&mut config, kafka);
    config.create().context("cannot create a Kafka admin client")
}

/// Creates topics (ignoring those that exist) with `partitions` partitions, replication 1.
pub async fn create_topics(kafka: &KafkaArgs, topics: &[&str], partitions: i32) -> Result<()> {
    let admin = admin(kafka)?;
    let new: Vec<_> = topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics(&new, &options).await.context("cannot create topics")? {
        match result {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("cannot create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Deletes topics, ignoring those that do not exist.
pub async fn delete_topics(kafka: &KafkaArgs, topics: &[&str]) -> Result<()> {
    let admin = admin(kafka)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.delete_topics(topics, &options).await.context("cannot delete topics")? {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => anyhow::bail!("cannot delete topic {topic}: {code}"),
        }
    }
    Ok(())
}
