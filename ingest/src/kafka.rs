//! librdkafka clients configured the way the pipeline needs them.

use std::time::Duration;

use anyhow::{Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;

use iot_schema::redact;

use crate::args::KafkaArgs;

fn base_config(kafka: &KafkaArgs) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    config
}

/// An idempotent producer: acks from all in-sync replicas, no duplicates or reordering on retry.
pub fn producer(kafka: &KafkaArgs) -> Result<FutureProducer> {
    create_producer(producer_config(kafka), kafka)
}

fn producer_config(kafka: &KafkaArgs) -> ClientConfig {
    let mut config = base_config(kafka);
    config.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5").set("compression.type", "lz4");
    config
}

fn create_producer(mut config: ClientConfig, kafka: &KafkaArgs) -> Result<FutureProducer> {
    apply_overrides(&mut config, kafka);
    config
        .create()
        .map_err(|e| creation_error(e, kafka))
        .with_context(|| format!("cannot create a Kafka producer for {}", kafka.brokers))
}

/// A client's creation error, without the secrets of `--kafka-opt`: librdkafka's message for a
/// refused setting quotes its value, which may be `sasl.password`'s.
pub fn creation_error(err: KafkaError, kafka: &KafkaArgs) -> anyhow::Error {
    match err {
        KafkaError::ClientConfig(_, description, key, value) => {
            anyhow::anyhow!("{description} ({})", redact::setting(&key, &value))
        }
        other => anyhow::anyhow!(redact::secret_values(&other.to_string(), &kafka.kafka_opts)),
    }
}

/// librdkafka's default `message.max.bytes`, the largest message a producer sends.
pub const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The producer of dead letters: as [`producer`], allowed messages of `max_letter_bytes` plus
/// room for the record's framing when that is over librdkafka's default (`--kafka-opt` still
/// wins).
pub fn dead_letter_producer(kafka: &KafkaArgs, max_letter_bytes: usize) -> Result<FutureProducer> {
    let mut config = producer_config(kafka);
    let message_max = DEFAULT_MESSAGE_MAX_BYTES.max(max_letter_bytes.saturating_add(64 * 1024));
    config.set("message.max.bytes", message_max.to_string());
    create_producer(config, kafka)
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
    config.create().map_err(|e| creation_error(e, kafka)).context("cannot create a Kafka admin client")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_opts(opts: &[(&str, &str)]) -> KafkaArgs {
        KafkaArgs {
            brokers: "127.0.0.1:1".into(),
            topic: "t".into(),
            kafka_opts: opts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn a_refused_secret_setting_is_reported_without_its_value() {
        // An unknown property named like a secret: librdkafka refuses it, quoting the value.
        let kafka = with_opts(&[("sasl.password.typo", "hunter2")]);
        let err = producer(&kafka).err().expect("an unknown property is refused");
        let text = format!("{err:#}");
        assert!(text.contains("sasl.password.typo=****"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let text = format!("{:#}", admin(&kafka).expect_err("refused too"));
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn other_errors_lose_every_secret_value() {
        let kafka = with_opts(&[("sasl.password", "hunter2"), ("client.id", "visible")]);
        let err = creation_error(KafkaError::ClientCreation("hunter2 visible".into()), &kafka);
        assert_eq!(err.to_string(), "Client creation error: **** visible");
    }
}
