//! Records that can never be stored reach the dead-letter topic whatever their size, and the
//! consumer moves past them: a malformed record of more than 1 MB (the producer's default message
//! limit) is dead-lettered truncated, with its length and SHA-256; an image one pixel over
//! `--max-image-pixels` is dead-lettered as `bad_image`, one exactly at it is stored.
//!
//! Needs the shared stack (Kafka and MongoDB); runs the db-consumer in-process.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use clap::Parser;
use common::{png_base64, record, Run};
use iot_ingest::consumer::db::DbConsumerArgs;
use iot_ingest::metrics::{ConsumerMetrics, Role};
use sha2::{Digest, Sha256};

/// Source topic and test producer limit: room for the 2.5 MB records below.
const BIG_MESSAGES: usize = 3_000_000;
const DLQ_MAX_BYTES: usize = 900_000;
const MAX_PIXELS: u32 = 32 * 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_over_the_limit_records_are_dead_lettered_and_passed() {
    common::show_logs();
    let max_message = BIG_MESSAGES.to_string();
    let run = Run::new("dead-letters", &[("max.message.bytes", max_message.as_str())]).await;
    let producer = run.producer(BIG_MESSAGES);

    // A 2.5 MB record whose `ID` is a string: JSON, but an invalid field, and serde's reason
    // quotes the whole value.
    let huge_id = "7".repeat(2_500_000);
    let invalid =
        format!(r#"{{"ID":"{huge_id}","ProducerID":"cam-1","GroundTruth":"cat","Data":"aGk="}}"#).into_bytes();
    // 1.2 MB of bytes that are not UTF-8.
    let binary: Vec<u8> = (0..1_200_000u32).map(|i| (i % 251) as u8 | 0x80).collect();
    let at_limit = record("cam-1", 1, "cat", png_base64(32, 32, 1));
    let over_limit = record("cam-1", 2, "cat", png_base64(33, 32, 2));
    let sent: Vec<(&str, &[u8])> =
        vec![("invalid", &invalid), ("binary", &binary), ("at-limit", &at_limit), ("over-limit", &over_limit)];
    for (key, payload) in &sent {
        run.send(&producer, key, payload).await;
    }

    let mut flags = vec!["db-consumer".to_owned()];
    flags.extend(run.consumer_flags());
    flags.extend([format!("--max-image-pixels={MAX_PIXELS}"), format!("--dlq-max-bytes={DLQ_MAX_BYTES}")]);
    let args = DbConsumerArgs::try_parse_from(flags).expect("db-consumer flags");
    let stop = iot_ingest::shutdown::CancellationToken::new();
    let shutdown = stop.clone();
    let consumer = tokio::spawn(iot_ingest::consumer::db::run(args, ConsumerMetrics::new(Role::Db), shutdown));
    run.wait_for("three dead letters, one record stored, offsets committed", Duration::from_secs(60), || async {
        run.dead_letter_count() >= 3 && run.stored_with("StoredAt").await.len() == 1 && run.committed_to_the_end()
    })
    .await;
    stop.cancel();
    consumer.await.expect("consumer task").expect("consumer ends cleanly");

    assert!(run.stored_with("StoredAt").await.contains_key("cam-1/1"), "the image at the limit is stored");
    let letters: HashMap<String, _> =
        run.dead_letters().await.into_iter().map(|(l, size)| (l.key.clone().unwrap_or_default(), (l, size))).collect();
    assert_eq!(letters.len(), 3, "{:?}", letters.keys());
    for (key, payload) in &sent[..2] {
        let (letter, size) = &letters[*key];
        assert!(*size <= DLQ_MAX_BYTES, "{key}: a dead letter of {size} bytes");
        assert!(letter.payload_truncated, "{key}");
        assert_eq!(letter.payload_bytes, payload.len() as u64, "{key}");
        assert_eq!(letter.payload_sha256, hex::encode(Sha256::digest(payload)), "{key}");
        let kept = match (&letter.payload, &letter.payload_base64) {
            (Some(text), None) => text.as_bytes().to_vec(),
            (None, Some(b64)) => iot_schema::infer::decode_base64(b64).expect("base64"),
            other => panic!("{key}: payload fields {other:?}"),
        };
        assert!(kept.len() > DLQ_MAX_BYTES / 3, "{key}: only {} bytes of the payload kept", kept.len());
        assert!(payload.starts_with(&kept), "{key}: the kept part is the payload's start");
    }
    assert_eq!(letters["invalid"].0.reason_code, "invalid_field");
    assert!(letters["invalid"].0.reason.len() < 2000, "the reason is cut, not 2.5 MB");
    assert_eq!(letters["binary"].0.reason_code, "not_utf8");
    let (over, _) = &letters["over-limit"];
    assert_eq!(over.reason_code, "bad_image");
    assert!(over.reason.contains("33x32 = 1056 pixels is over the limit of 1024 pixels"), "{}", over.reason);
    assert!(!over.payload_truncated);
    assert_eq!(over.payload.as_deref().map(str::as_bytes), Some(&over_limit[..]));
}
