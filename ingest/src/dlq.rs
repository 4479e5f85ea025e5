//! The dead-letter topic: where a malformed record goes, with the reason, so that nothing is lost
//! and the consumer can move on.
//!
//! The dead letter keeps the original key; its value is a JSON [`DeadLetter`] envelope, and the
//! headers `reason`, `reason_code`, `source_topic`, `source_partition`, `source_offset` and
//! `consumer_group` repeat the envelope's fields for tools that read headers only.

use std::time::Duration;

use base64::Engine;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

use crate::backoff::{retry, Backoff, ShutdownRequested};
use crate::message::{Inbound, Malformed};
use crate::shutdown::Shutdown;

/// The JSON value of a dead letter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Human-readable reason, e.g. "missing field `GroundTruth`".
    pub reason: String,
    /// Stable reason name, e.g. `missing_field` (see `Malformed::code`).
    pub reason_code: String,
    /// The record's key as text (lossy if it was not UTF-8); `null` if it had none.
    pub key: Option<String>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The consumer group that gave up on it.
    pub consumer_group: String,
    /// The original payload when it is UTF-8 text (`null` otherwise)...
    pub payload: Option<String>,
    /// ...else its bytes in base64 (`null` when `payload` holds it, or there was none).
    pub payload_base64: Option<String>,
    /// When it was dead-lettered, ms since the Unix epoch.
    pub dead_lettered_at: i64,
}

impl DeadLetter {
    pub fn new(inbound: &Inbound, reason: &Malformed, group: &str) -> DeadLetter {
        let raw = inbound.payload.as_deref();
        let text = raw.and_then(|p| std::str::from_utf8(p).ok());
        DeadLetter {
            reason: reason.to_string(),
            reason_code: reason.code().to_owned(),
            key: inbound.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
            topic: inbound.pos.topic.clone(),
            partition: inbound.pos.partition,
            offset: inbound.pos.offset,
            consumer_group: group.to_owned(),
            payload: text.map(str::to_owned),
            payload_base64: match (raw, text) {
                (Some(bytes), None) => Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                _ => None,
            },
            dead_lettered_at: crate::now_ms(),
        }
    }

    fn headers(&self) -> OwnedHeaders {
        let partition = self.partition.to_string();
        let offset = self.offset.to_string();
        OwnedHeaders::new()
            .insert(Header { key: "reason", value: Some(self.reason.as_str()) })
            .insert(Header { key: "reason_code", value: Some(self.reason_code.as_str()) })
            .insert(Header { key: "source_topic", value: Some(self.topic.as_str()) })
            .insert(Header { key: "source_partition", value: Some(partition.as_str()) })
            .insert(Header { key: "source_offset", value: Some(offset.as_str()) })
            .insert(Header { key: "consumer_group", value: Some(self.consumer_group.as_str()) })
    }
}

/// Sends dead letters, retrying until Kafka acknowledged them.
#[derive(Clone)]
pub struct DeadLetters {
    pub producer: FutureProducer,
    pub topic: String,
    pub group: String,
    pub backoff: Backoff,
}

impl DeadLetters {
    /// Logs the record by key, then writes it to the dead-letter topic. Returns only once Kafka
    /// acknowledged it (so its offset may be committed), or on shutdown.
    pub async fn send(
        &self,
        inbound: &Inbound,
        reason: &Malformed,
        shutdown: &Shutdown,
    ) -> Result<(), ShutdownRequested> {
        let letter = DeadLetter::new(inbound, reason, &self.group);
        tracing::warn!(
            key = %inbound.key_text(),
            topic = %inbound.pos.topic,
            partition = inbound.pos.partition,
            offset = inbound.pos.offset,
            reason = %letter.reason,
            "malformed record sent to the dead-letter topic {}",
            self.topic
        );
        // Serializing a struct of strings and integers cannot fail.
        let value = serde_json::to_vec(&letter).unwrap_or_default();
        let headers = letter.headers();
        let what = format!("dead-lettering the record at {}:{}", inbound.pos.partition, inbound.pos.offset);
        retry(&what, self.backoff.clone(), shutdown, || {
            let mut record = FutureRecord::to(&self.topic).payload(&value).headers(headers.clone());
            if let Some(key) = &inbound.key {
                record = record.key(key.as_slice());
            }
            let producer = self.producer.clone();
            async move { producer.send(record, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e) }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offsets::Position;

    fn inbound(key: Option<&[u8]>, payload: Option<&[u8]>) -> Inbound {
        Inbound {
            pos: Position { topic: "iot_images".into(), partition: 2, offset: 41 },
            key: key.map(<[u8]>::to_vec),
            payload: payload.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn envelope_carries_reason_position_and_text_payload() {
        let letter =
            DeadLetter::new(&inbound(Some(b"cam-1"), Some(b"{\"ID\":1}")), &Malformed::MissingField("ProducerID"), "g");
        assert_eq!(letter.reason, "missing field `ProducerID`");
        assert_eq!(letter.reason_code, "missing_field");
        assert_eq!(letter.key.as_deref(), Some("cam-1"));
        assert_eq!((letter.topic.as_str(), letter.partition, letter.offset), ("iot_images", 2, 41));
        assert_eq!(letter.payload.as_deref(), Some("{\"ID\":1}"));
        assert_eq!(letter.payload_base64, None);
        let json: serde_json::Value = serde_json::to_value(&letter).unwrap();
        for key in ["reason", "key", "topic", "partition", "offset", "payload"] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
    }

    #[test]
    fn binary_payload_is_kept_in_base64() {
        let letter = DeadLetter::new(&inbound(None, Some(&[0xff, 0x00])), &Malformed::NotUtf8, "g");
        assert_eq!(letter.key, None);
        assert_eq!(letter.payload, None);
        assert_eq!(letter.payload_base64.as_deref(), Some("/wA="));
    }

    #[test]
    fn headers_repeat_the_reason() {
        use rdkafka::message::Headers;
        let letter = DeadLetter::new(&inbound(Some(b"k"), None), &Malformed::Empty, "g");
        let headers = letter.headers();
        let reason = headers.iter().find(|h| h.key == "reason").and_then(|h| h.value).unwrap();
        assert_eq!(reason, b"the message has no payload");
        assert_eq!(headers.count(), 6);
    }
}
