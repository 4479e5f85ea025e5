//! The ingest side of iot-dataflow: producers that send labelled images to Kafka, and the two
//! consumer groups that turn them into MongoDB records (metadata, then the model's label).
//!
//! Delivery is at-least-once (offsets are committed only after MongoDB acknowledged the write)
//! and every write is an idempotent upsert by `_id`, so each record ends up exactly once in
//! MongoDB whatever crashes, redeliveries or consumer orderings happen. `docs/ingest.md` has the
//! details.

pub mod args;
pub mod assets;
pub mod backoff;
pub mod cli;
pub mod consumer;
pub mod decode;
pub mod dlq;
pub mod fuzzing;
pub mod images;
pub mod infer_client;
pub mod kafka;
pub mod latency;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod offsets;
pub mod producer;
pub mod shutdown;
pub mod store;
pub mod truth_log;

/// Milliseconds since the Unix epoch, the unit of `SentAt` on the wire.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
