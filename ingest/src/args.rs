//! Flags shared by several binaries. Every flag has an environment variable (for Kubernetes).

use std::time::Duration;

use clap::Args;
use iot_schema::redact::parse_key_value;

use crate::message::ImageLimits;

#[derive(Clone, Debug, Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated.
    #[arg(long, env = "IOT_KAFKA_BROKERS", default_value = "127.0.0.1:9092", value_name = "HOST:PORT,...")]
    pub brokers: String,
    /// Topic the images travel on.
    #[arg(long, env = "IOT_TOPIC", default_value = iot_schema::TOPIC_IMAGES)]
    pub topic: String,
    /// Extra librdkafka settings (e.g. `security.protocol=SASL_SSL`), repeatable; in the
    /// environment, comma-separated.
    #[arg(long = "kafka-opt", env = "IOT_KAFKA_OPTS", value_name = "KEY=VALUE", value_delimiter = ',', value_parser = parse_key_value)]
    pub kafka_opts: Vec<(String, String)>,
}

#[derive(Clone, Debug, Args)]
pub struct MongoArgs {
    /// MongoDB connection string.
    #[arg(long, env = "IOT_MONGO_URI", default_value = "mongodb://127.0.0.1:27017", value_name = "URI")]
    pub mongo_uri: String,
    /// Database.
    #[arg(long, env = "IOT_MONGO_DB", default_value = iot_schema::DEFAULT_DB)]
    pub db: String,
    /// Collection.
    #[arg(long, env = "IOT_MONGO_COLLECTION", default_value = iot_schema::DEFAULT_COLLECTION)]
    pub collection: String,
    /// Upserts sent to MongoDB at once by one batch.
    #[arg(long, env = "IOT_MONGO_WRITE_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub write_concurrency: u64,
    /// Longest wait for one MongoDB operation: a server that stops answering (hung, not down)
    /// fails the write, which is retried, instead of blocking it for ever.
    #[arg(long, env = "IOT_MONGO_OP_TIMEOUT_MS", default_value_t = MongoArgs::DEFAULT_OP_TIMEOUT_MS, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub mongo_op_timeout_ms: u64,
}

impl MongoArgs {
    pub const DEFAULT_OP_TIMEOUT_MS: u64 = 10_000;

    /// The defaults, for `uri` and database `db` (tests and benchmarks).
    pub fn new(uri: &str, db: &str) -> MongoArgs {
        MongoArgs {
            mongo_uri: uri.to_owned(),
            db: db.to_owned(),
            collection: iot_schema::DEFAULT_COLLECTION.to_owned(),
            write_concurrency: 8,
            mongo_op_timeout_ms: MongoArgs::DEFAULT_OP_TIMEOUT_MS,
        }
    }
}

/// Settings both consumers share (the group id has a different default in each).
#[derive(Clone, Debug, Args)]
pub struct ConsumerArgs {
    /// Topic that receives malformed records, with the reason.
    #[arg(long, env = "IOT_DLQ_TOPIC", default_value = iot_schema::TOPIC_DEAD_LETTERS)]
    pub dlq_topic: String,
    /// Longest wait for a batch to fill before it is handled anyway.
    #[arg(long, env = "IOT_BATCH_LINGER_MS", default_value_t = 20, value_name = "MS")]
    pub batch_linger_ms: u64,
    /// Kafka consumer session timeout: how soon a crashed instance's partitions move to another.
    #[arg(long, env = "IOT_SESSION_TIMEOUT_MS", default_value_t = 10_000, value_name = "MS")]
    pub session_timeout_ms: u64,
    /// First retry delay when a service (MongoDB, the inference service, Kafka) fails.
    #[arg(long, env = "IOT_RETRY_INITIAL_MS", default_value_t = 200, value_name = "MS")]
    pub retry_initial_ms: u64,
    /// Longest retry delay.
    #[arg(long, env = "IOT_RETRY_MAX_MS", default_value_t = 10_000, value_name = "MS")]
    pub retry_max_ms: u64,
    /// How long a shutdown waits for in-flight work before committing what is done.
    #[arg(long, env = "IOT_SHUTDOWN_GRACE_S", default_value_t = 20, value_name = "SECONDS")]
    pub shutdown_grace_s: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "IOT_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Largest image accepted (width × height, read from its header before decoding); a larger
    /// one is dead-lettered as `bad_image`.
    #[arg(long, env = "IOT_MAX_IMAGE_PIXELS", default_value_t = ImageLimits::DEFAULT_MAX_PIXELS, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_image_pixels: u64,
    /// Memory for decoding images, which sets how many are decoded at once (budget / 16 bytes
    /// per pixel of `--max-image-pixels`, at least one). Default: a quarter of the cgroup's
    /// memory limit, or 256 without one.
    #[arg(long, env = "IOT_DECODE_MEMORY_MB", value_name = "MIB")]
    pub decode_memory_mb: Option<u64>,
    /// Largest dead letter (envelope, key and headers); a bigger payload is truncated in it. Keep
    /// it under the producer's and the broker's message size limits (1 MB by default).
    #[arg(long, env = "IOT_DLQ_MAX_BYTES", default_value_t = 900_000, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(16_384..))]
    pub dlq_max_bytes: u64,
}

impl ConsumerArgs {
    pub fn image_limits(&self) -> ImageLimits {
        ImageLimits { max_pixels: self.max_image_pixels }
    }

    /// The image decoder, its concurrency sized against `--decode-memory-mb`.
    pub fn decoder(&self) -> crate::decode::Decoder {
        let budget_mb = self.decode_memory_mb.unwrap_or_else(crate::decode::default_budget_mb);
        crate::decode::Decoder::new(self.image_limits(), budget_mb)
    }

    pub fn backoff(&self) -> crate::backoff::Backoff {
        crate::backoff::Backoff::new(
            Duration::from_millis(self.retry_initial_ms.max(1)),
            Duration::from_millis(self.retry_max_ms),
        )
    }
}
