//! Entry point for the `infer_image` fuzz target in `fuzz/` and for the corpus replay in
//! `tests/fuzz_corpus.rs`: request bodies are outside input, so no bytes may make them panic.

use crate::preprocess::{Preprocessor, DEFAULT_RESIZE_RATIO};
use crate::server::decode_base64;

/// The service's model input size; the pixel limit is lower than the service's default only so
/// that each input stays fast to decode (the refusal above the limit is the same code).
const SIDE: u32 = 224;
const MAX_PIXELS: u64 = 1 << 20;

/// Decodes and preprocesses `data` as an image, and as the base64 text of one when it is text.
pub fn image(data: &[u8]) {
    let preprocessor = Preprocessor::new(SIDE, SIDE, DEFAULT_RESIZE_RATIO, MAX_PIXELS);
    prepare(&preprocessor, data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(bytes) = decode_base64(text) {
            prepare(&preprocessor, &bytes);
        }
    }
}

/// An accepted image must become a whole tensor of finite values.
fn prepare(preprocessor: &Preprocessor, encoded: &[u8]) {
    match preprocessor.prepare(encoded) {
        Ok(tensor) => {
            assert_eq!(tensor.len(), preprocessor.tensor_len());
            assert!(tensor.iter().all(|v| v.is_finite()));
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
}
