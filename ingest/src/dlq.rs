//! The dead-letter topic: where a record that can never be handled goes, with the reason, so
//! that nothing is lost and the consumer can move on.
//!
//! The dead letter keeps the original key; its value is a JSON [`DeadLetter`] envelope, and the
//! headers `reason`, `reason_code`, `source_topic`, `source_partition`, `source_offset` and
//! `consumer_group` repeat the envelope's fields for tools that read headers only.
//!
//! A dead letter always fits in a Kafka message: value, key and headers together stay within
//! `--dlq-max-bytes`. When the original payload makes it bigger, the envelope carries only the
//! payload's start (`payload_truncated`), with the whole payload's length and SHA-256.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::args::{ConsumerArgs, KafkaArgs};
use crate::backoff::{retry, Backoff, ShutdownRequested};
use crate::message::{Inbound, Malformed};
use crate::shutdown::CancellationToken;

/// Longest `reason` kept, in characters: serde's messages can quote a whole field value.
const MAX_REASON_CHARS: usize = 1000;
/// Longest `key` text kept in the envelope, in characters (the record key itself is kept whole).
const MAX_KEY_CHARS: usize = 1000;
/// Smallest cap a dead letter is shrunk to when Kafka refuses one as too large.
const MIN_LETTER_BYTES: usize = 16 * 1024;
/// What a header costs besides its key and value (lengths, attributes), at most.
const HEADER_OVERHEAD: usize = 16;

/// The JSON value of a dead letter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Human-readable reason, e.g. "missing field `GroundTruth`" (cut at 1000 characters).
    pub reason: String,
    /// Stable reason name, e.g. `missing_field` (see `Malformed::code`).
    pub reason_code: String,
    /// The record's key as text (lossy if it was not UTF-8, cut at 1000 characters); `null` if
    /// it had none.
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
    /// Length of the original payload in bytes, whether or not it was truncated (0 if none).
    #[serde(default)]
    pub payload_bytes: u64,
    /// SHA-256 of the original payload, lowercase hex (of no bytes if there was none).
    #[serde(default)]
    pub payload_sha256: String,
    /// True when `payload` / `payload_base64` hold only the payload's first bytes.
    #[serde(default)]
    pub payload_truncated: bool,
    /// When it was dead-lettered, ms since the Unix epoch.
    pub dead_lettered_at: i64,
}

impl DeadLetter {
    /// The envelope with the whole payload.
    pub fn new(inbound: &Inbound, reason: &Malformed, group: &str) -> DeadLetter {
        let raw = inbound.payload.as_deref().unwrap_or_default();
        let mut letter = DeadLetter {
            reason: cut_chars(&reason.to_string(), MAX_REASON_CHARS),
            reason_code: reason.code().to_owned(),
            key: inbound.key.as_ref().map(|k| cut_chars(&String::from_utf8_lossy(k), MAX_KEY_CHARS)),
            topic: inbound.pos.topic.clone(),
            partition: inbound.pos.partition,
            offset: inbound.pos.offset,
            consumer_group: group.to_owned(),
            payload: None,
            payload_base64: None,
            payload_bytes: raw.len() as u64,
            payload_sha256: hex::encode(Sha256::digest(raw)),
            payload_truncated: false,
            dead_lettered_at: crate::now_ms(),
        };
        letter.keep_payload(inbound.payload.as_deref(), raw.len());
        letter
    }

    /// Sets the payload fields to the first `kept` bytes of `raw` (fewer, for text, so as not to
    /// split a character).
    fn keep_payload(&mut self, raw: Option<&[u8]>, kept: usize) {
        let Some(raw) = raw else { return };
        self.payload_truncated = kept < raw.len();
        match std::str::from_utf8(raw) {
            Ok(text) => {
                self.payload = Some(text[..text.floor_char_boundary(kept)].to_owned());
                self.payload_base64 = None;
            }
            Err(_) => {
                self.payload = None;
                self.payload_base64 = Some(iot_schema::infer::encode_base64(&raw[..kept]));
            }
        }
    }

    /// The letter of `inbound` as Kafka gets it, within `max_bytes` (value, key and headers
    /// together): the payload is cut as much as needed, and if even no payload is too little,
    /// the record key is left off (the envelope's `key` still names it).
    pub fn fit(&self, inbound: &Inbound, max_bytes: usize) -> Outgoing {
        let (raw, key) = (inbound.payload.as_deref(), inbound.key.as_deref());
        let overhead = self.headers_len() + key.map_or(0, <[u8]>::len);
        let mut letter = self.clone();
        let mut value = serde_json::to_vec(&letter).unwrap_or_default();
        if value.len() + overhead > max_bytes {
            letter.keep_payload(raw, 0);
            let bare = serde_json::to_vec(&letter).unwrap_or_default().len();
            let room = max_bytes.saturating_sub(bare + overhead);
            let mut kept = raw.map_or(0, <[u8]>::len);
            let mut cost = value.len().saturating_sub(bare);
            while value.len() + overhead > max_bytes && kept > 0 {
                // As many payload bytes as fit if the rest escapes like the part kept so far;
                // fewer each turn, since the part kept does not fit yet (`cost > room`).
                kept = (kept as u128 * room as u128 / cost.max(1) as u128) as usize;
                letter.keep_payload(raw, kept);
                value = serde_json::to_vec(&letter).unwrap_or_default();
                cost = value.len().saturating_sub(bare);
            }
        }
        let fits_with_key = value.len() + overhead <= max_bytes;
        Outgoing { headers: letter.headers(), key: key.filter(|_| fits_with_key).map(<[u8]>::to_vec), value, letter }
    }

    fn header_fields(&self) -> [(&'static str, String); 6] {
        [
            ("reason", self.reason.clone()),
            ("reason_code", self.reason_code.clone()),
            ("source_topic", self.topic.clone()),
            ("source_partition", self.partition.to_string()),
            ("source_offset", self.offset.to_string()),
            ("consumer_group", self.consumer_group.clone()),
        ]
    }

    fn headers_len(&self) -> usize {
        self.header_fields().iter().map(|(key, value)| key.len() + value.len() + HEADER_OVERHEAD).sum()
    }

    fn headers(&self) -> OwnedHeaders {
        self.header_fields()
            .iter()
            .fold(OwnedHeaders::new(), |headers, (key, value)| headers.insert(Header { key, value: Some(value) }))
    }
}

/// A dead letter ready to send.
pub struct Outgoing {
    pub letter: DeadLetter,
    pub value: Vec<u8>,
    pub headers: OwnedHeaders,
    pub key: Option<Vec<u8>>,
}

/// At most `max` characters of `text`, with a note of how much was left off.
fn cut_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}… ({} more bytes)", &text[..at], text.len() - at),
        None => text.to_owned(),
    }
}

/// Sends dead letters, retrying until Kafka acknowledged them.
#[derive(Clone)]
pub struct DeadLetters {
    pub producer: FutureProducer,
    pub topic: String,
    pub group: String,
    pub backoff: Backoff,
    /// Most bytes of one dead letter (value, key and headers).
    pub max_bytes: usize,
}

impl DeadLetters {
    pub fn new(kafka: &KafkaArgs, consumer: &ConsumerArgs, group: &str) -> anyhow::Result<DeadLetters> {
        let max_bytes = consumer.dlq_max_bytes as usize;
        Ok(DeadLetters {
            producer: crate::kafka::dead_letter_producer(kafka, max_bytes)?,
            topic: consumer.dlq_topic.clone(),
            group: group.to_owned(),
            backoff: consumer.backoff(),
            max_bytes,
        })
    }

    /// Logs the record by key, then writes it to the dead-letter topic. Returns only once Kafka
    /// acknowledged it (so its offset may be committed), or on shutdown. Should Kafka refuse the
    /// letter as too large (a broker or `--kafka-opt` limit below `--dlq-max-bytes`), it is sent
    /// again cut to half the size, down to 16 KiB.
    pub async fn send(
        &self,
        inbound: &Inbound,
        reason: &Malformed,
        shutdown: &CancellationToken,
    ) -> Result<(), ShutdownRequested> {
        let letter = DeadLetter::new(inbound, reason, &self.group);
        tracing::warn!(
            key = %cut_chars(&inbound.key_text(), MAX_KEY_CHARS),
            topic = %inbound.pos.topic,
            partition = inbound.pos.partition,
            offset = inbound.pos.offset,
            reason = %letter.reason,
            reason_code = %letter.reason_code,
            "record sent to the dead-letter topic {}",
            self.topic
        );
        let cap = AtomicUsize::new(self.max_bytes);
        let what = format!("dead-lettering the record at {}:{}", inbound.pos.partition, inbound.pos.offset);
        retry(&what, self.backoff.clone(), shutdown, || {
            let max_bytes = cap.load(Ordering::Relaxed);
            let outgoing = letter.fit(inbound, max_bytes);
            let (producer, topic, cap) = (self.producer.clone(), &self.topic, &cap);
            async move {
                if outgoing.letter.payload_truncated {
                    tracing::info!(
                        "the dead letter ({} bytes) carries only the start of the {}-byte payload",
                        outgoing.value.len(),
                        outgoing.letter.payload_bytes
                    );
                }
                let mut record = FutureRecord::to(topic).payload(&outgoing.value).headers(outgoing.headers);
                if let Some(key) = &outgoing.key {
                    record = record.key(key.as_slice());
                }
                match producer.send(record, Duration::from_secs(30)).await {
                    Ok(_) => Ok(()),
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                        cap.store((max_bytes / 2).max(MIN_LETTER_BYTES), Ordering::Relaxed);
                        Err(format!("Kafka refused a dead letter of {max_bytes} bytes at most as too large"))
                    }
                    Err((err, _)) => Err(err.to_string()),
                }
            }
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

    const MAX: usize = 900_000;

    fn size(out: &Outgoing) -> usize {
        out.value.len() + out.letter.headers_len() + out.key.as_ref().map_or(0, Vec::len)
    }

    #[test]
    fn length_and_sha256_are_always_there() {
        let letter = DeadLetter::new(&inbound(None, Some(b"abc")), &Malformed::NotObject, "g");
        assert_eq!(letter.payload_bytes, 3);
        assert_eq!(letter.payload_sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(!letter.payload_truncated);
        let empty = DeadLetter::new(&inbound(None, None), &Malformed::Empty, "g");
        assert_eq!(empty.payload_bytes, 0);
        assert_eq!(empty.payload_sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        let json: serde_json::Value = serde_json::to_value(&empty).unwrap();
        for key in ["payload_bytes", "payload_sha256", "payload_truncated"] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
    }

    #[test]
    fn a_small_letter_goes_whole() {
        let record = inbound(Some(b"cam-1"), Some(b"{\"ID\":1}"));
        let letter = DeadLetter::new(&record, &Malformed::MissingField("Data"), "g");
        let out = letter.fit(&record, MAX);
        assert_eq!(out.letter, letter);
        assert_eq!(serde_json::from_slice::<DeadLetter>(&out.value).unwrap(), letter);
        assert_eq!(out.key.as_deref(), Some(&b"cam-1"[..]));
    }

    #[test]
    fn a_big_text_payload_is_cut_to_fit_at_a_character() {
        // Quotes, control characters and two-byte characters: JSON escaping makes the value far
        // bigger than the payload.
        let text = "\"\u{1}é\n".repeat(400_000);
        let record = inbound(Some(b"cam-1"), Some(text.as_bytes()));
        let letter = DeadLetter::new(&record, &Malformed::NotObject, "g");
        let out = letter.fit(&record, MAX);
        assert!(size(&out) <= MAX, "{} bytes", size(&out));
        let sent: DeadLetter = serde_json::from_slice(&out.value).unwrap();
        assert!(sent.payload_truncated);
        assert_eq!(sent.payload_bytes, text.len() as u64);
        assert_eq!(sent.payload_sha256, hex::encode(Sha256::digest(text.as_bytes())));
        let kept = sent.payload.unwrap();
        assert!(text.starts_with(&kept) && kept.len() > 100_000, "kept {} bytes", kept.len());
        assert_eq!(out.key.as_deref(), Some(&b"cam-1"[..]));
    }

    #[test]
    fn a_big_binary_payload_is_cut_to_fit() {
        let bytes: Vec<u8> = (0..2_000_000u32).map(|i| (i % 256) as u8 | 0x80).collect();
        let record = inbound(None, Some(&bytes));
        let out = DeadLetter::new(&record, &Malformed::NotUtf8, "g").fit(&record, MAX);
        assert!(size(&out) <= MAX, "{} bytes", size(&out));
        let sent: DeadLetter = serde_json::from_slice(&out.value).unwrap();
        let kept = iot_schema::infer::decode_base64(&sent.payload_base64.unwrap()).unwrap();
        assert!(bytes.starts_with(&kept) && kept.len() > MAX / 2, "kept {} bytes", kept.len());
        assert_eq!((sent.payload_bytes, sent.payload_truncated), (2_000_000, true));
    }

    #[test]
    fn a_key_too_big_for_any_letter_is_left_off_the_record() {
        let key = vec![b'k'; 2 * MAX];
        let record = inbound(Some(&key), Some(b"x"));
        let out = DeadLetter::new(&record, &Malformed::NotJson("x".into()), "g").fit(&record, MAX);
        assert_eq!(out.key, None);
        assert!(size(&out) <= MAX);
        assert!(out.letter.key.unwrap().ends_with(&format!("… ({} more bytes)", 2 * MAX - 1000)));
    }

    #[test]
    fn a_long_reason_is_cut() {
        let reason = Malformed::InvalidField(format!("invalid type: string \"{}\"", "7".repeat(50_000)));
        let letter = DeadLetter::new(&inbound(None, Some(b"{}")), &reason, "g");
        assert!(letter.reason.chars().count() < 1100, "{} characters", letter.reason.len());
        assert!(letter.reason.starts_with("invalid field: invalid type: string \"777"));
    }
}
