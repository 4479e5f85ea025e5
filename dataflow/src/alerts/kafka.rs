//! The alert topic: events are sent with an idempotent producer and waited for; at start the
//! topic is read back to learn what was announced.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use iot_schema::alert::AlertEvent;
use iot_schema::redact;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

/// How long one event may take to be acknowledged before the follower tries it again later.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reading the topic back at start may take.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(60);

/// Where alert events go.
#[derive(Clone, Debug)]
pub struct KafkaOptions {
    pub brokers: String,
    pub topic: String,
    /// Extra librdkafka settings, e.g. for SASL.
    pub settings: Vec<(String, String)>,
}

impl KafkaOptions {
    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (key, value) in &self.settings {
            config.set(key, value);
        }
        config
    }

    /// A client's error without the secrets of the settings (librdkafka quotes refused values).
    fn error(&self, err: KafkaError) -> anyhow::Error {
        anyhow!(redact::secret_values(&err.to_string(), &self.settings))
    }
}

pub struct Publisher {
    options: KafkaOptions,
    producer: FutureProducer,
    runtime: tokio::runtime::Runtime,
}

impl Publisher {
    pub fn connect(options: &KafkaOptions) -> Result<Publisher> {
        let mut config = options.config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", SEND_TIMEOUT.as_millis().to_string());
        let producer: FutureProducer = config
            .create()
            .map_err(|err| options.error(err))
            .with_context(|| format!("cannot create a Kafka producer for {}", options.brokers))?;
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("alerts").enable_all().build()?;
        Ok(Publisher { options: options.clone(), producer, runtime })
    }

    pub fn runtime(&self) -> tokio::runtime::Handle {
        self.runtime.handle().clone()
    }

    /// Sends the events at once, in the background: the task ends with each one's outcome, in
    /// order, once Kafka has acknowledged or refused each (at most [`SEND_TIMEOUT`]).
    pub fn send_all(&self, events: Vec<AlertEvent>) -> tokio::task::JoinHandle<Vec<Result<()>>> {
        let (producer, options) = (self.producer.clone(), self.options.clone());
        self.runtime.spawn(async move {
            let sends = events.iter().map(|event| {
                let (producer, options) = (&producer, &options);
                async move {
                    let payload = serde_json::to_string(event)?;
                    let key = event.key();
                    let record = FutureRecord::to(&options.topic).key(&key).payload(&payload);
                    producer
                        .send(record, SEND_TIMEOUT)
                        .await
                        .map(|_| ())
                        .map_err(|(err, _)| options.error(err))
                        .with_context(|| format!("cannot send to Kafka topic {}", options.topic))
                }
            });
            futures_util::future::join_all(sends).await
        })
    }

    /// Every event of `source` on the topic, oldest first per alert (one alert's events share a
    /// key, hence a partition).
    pub fn read_back(&self, source: &str) -> Result<Vec<AlertEvent>> {
        let KafkaOptions { topic, brokers, .. } = &self.options;
        let mut config = self.options.config();
        config.set("group.id", "iot-dataflow-alerts-read-back").set("enable.auto.commit", "false");
        let consumer: BaseConsumer = config.create().map_err(|err| self.options.error(err))?;
        let deadline = Instant::now() + READ_BACK_TIMEOUT;
        let metadata = consumer
            .fetch_metadata(Some(topic), READ_BACK_TIMEOUT)
            .map_err(|err| self.options.error(err))
            .with_context(|| format!("cannot reach Kafka at {brokers} to read alert topic {topic}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            bail!("Kafka topic {topic} does not exist at {brokers}: create it (`scripts/stack up` does), or name another with --alert-topic");
        }
        let mut assignment = TopicPartitionList::new();
        let mut remaining = std::collections::BTreeMap::new();
        for partition in partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, READ_BACK_TIMEOUT)
                .map_err(|err| self.options.error(err))?;
            if high > low {
                assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
                remaining.insert(partition, high);
            }
        }
        consumer.assign(&assignment)?;
        let mut events = Vec::new();
        while !remaining.is_empty() {
            if Instant::now() > deadline {
                bail!("reading alert topic {topic} back took over {}s", READ_BACK_TIMEOUT.as_secs());
            }
            let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
            let message = message.map_err(|err| self.options.error(err))?;
            if remaining.get(&message.partition()).is_some_and(|high| message.offset() + 1 >= *high) {
                remaining.remove(&message.partition());
            }
            // Events of other followers, and anything that is not an event, are not ours.
            let event = message.payload().and_then(|payload| serde_json::from_slice::<AlertEvent>(payload).ok());
            events.extend(event.filter(|event| event.source == source));
        }
        Ok(events)
    }
}
