//! The consumer binaries and the flags every test gives them, on the shared stack.

use std::path::Path;

use iot_bench::testkit::env_or;
use iot_ingest::args::KafkaArgs;

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

pub fn kafka_args(topic: &str) -> KafkaArgs {
    KafkaArgs { brokers: brokers(), topic: topic.to_owned(), kafka_opts: Vec::new() }
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
