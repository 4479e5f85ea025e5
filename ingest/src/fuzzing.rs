//! Entry point for the `ingest_message` fuzz target in `fuzz/` and for the corpus replay in
//! `tests/fuzz_corpus.rs`: a Kafka payload is outside input, so no bytes may make it panic.

use crate::message::{parse, ImageLimits, Malformed};

/// Parses `data` as a Kafka payload under the consumers' default image limit; what it accepts
/// must be a message both consumers can store.
pub fn message(data: &[u8]) {
    let limits = ImageLimits { max_pixels: ImageLimits::DEFAULT_MAX_PIXELS };
    match parse(Some(data), &limits) {
        Ok(msg) => assert!(!msg.producer_id.trim().is_empty(), "accepted an empty ProducerID"),
        Err(reason) => describe(&reason),
    }
}

/// The dead-letter header and log line of a refusal must be printable too.
fn describe(reason: &Malformed) {
    assert!(!reason.code().is_empty());
    let _ = reason.to_string();
}
