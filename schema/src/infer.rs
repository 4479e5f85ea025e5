//! Wire types of the inference service's HTTP API (`infer-service`), shared by the service and
//! its clients (the ingest consumers, tests, the benchmark), and the one base64 engine both
//! sides use for images.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Route of the request/response pair compatible with the original Flask server.
pub const ROUTE_LEGACY: &str = "/";
/// Route of the batch API.
pub const ROUTE_INFER: &str = "/v1/infer";
/// Liveness/readiness probe.
pub const ROUTE_HEALTH: &str = "/healthz";
/// Prometheus text exposition.
pub const ROUTE_METRICS: &str = "/metrics";

/// `POST /` body: one base64-encoded JPEG or PNG image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyInferRequest {
    pub image: String,
}

/// `POST /` answer: the label only (CIFAR-10 name through the label map, else the raw class name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyInferResponse {
    pub inferred: String,
}

/// `POST /v1/infer` body: base64-encoded JPEG or PNG images, classified independently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferRequest {
    pub images: Vec<String>,
}

/// `POST /v1/infer` answer: one outcome per image, in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    pub model_id: String,
    pub results: Vec<ImageOutcome>,
}

/// What became of one image: its prediction, or why it has none. A failed image fails only
/// itself; the other images of the request keep their results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageOutcome {
    Classified(InferResult),
    Failed(ImageFailure),
}

impl ImageOutcome {
    pub fn classified(&self) -> Option<&InferResult> {
        match self {
            ImageOutcome::Classified(result) => Some(result),
            ImageOutcome::Failed(_) => None,
        }
    }

    pub fn failure(&self) -> Option<&ImageFailure> {
        match self {
            ImageOutcome::Classified(_) => None,
            ImageOutcome::Failed(failure) => Some(failure),
        }
    }

    pub fn into_result(self) -> Result<InferResult, ImageFailure> {
        match self {
            ImageOutcome::Classified(result) => Ok(result),
            ImageOutcome::Failed(failure) => Err(failure),
        }
    }
}

impl From<Result<InferResult, ImageFailure>> for ImageOutcome {
    fn from(outcome: Result<InferResult, ImageFailure>) -> ImageOutcome {
        match outcome {
            Ok(result) => ImageOutcome::Classified(result),
            Err(failure) => ImageOutcome::Failed(failure),
        }
    }
}

/// Top-1 prediction for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResult {
    /// Mapped label (e.g. `cat`, `other`), or the raw class name when no label map is loaded.
    pub label: String,
    /// The model's class name, as written in the classes file.
    #[serde(rename = "class")]
    pub class_name: String,
    /// Index of the class in the model output.
    pub class_index: usize,
    /// Softmax probability of that class.
    pub score: f32,
}

/// Why one image has no prediction: `{"error": "<reason>", "code": "bad_image"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFailure {
    pub error: String,
    pub code: FailureCode,
}

/// Whether retrying an image can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The image can never be classified: not base64, not a decodable JPEG/PNG, or over the
    /// service's pixel limit. Retrying the same bytes gives the same answer.
    BadImage,
    /// The model failed on this image; this may be transient, so a retry may succeed.
    InferenceFailed,
}

impl FailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCode::BadImage => "bad_image",
            FailureCode::InferenceFailed => "inference_failed",
        }
    }
}

/// Body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
}

/// `GET /healthz` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthResponse {
    pub status: String,
    pub model_id: String,
}

/// Standard alphabet; encodes with padding, decodes with or without it (clients differ on it).
pub const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Base64 of an image file, as requests carry it.
pub fn encode_base64(bytes: impl AsRef<[u8]>) -> String {
    BASE64.encode(bytes)
}

/// Decodes an image as clients write it: standard alphabet, padding optional, spaces and line
/// breaks ignored, a `data:<type>;base64,` prefix accepted.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let body = match text.strip_prefix("data:").and_then(|rest| rest.split_once(";base64,")) {
        Some((_, payload)) => payload,
        None => text,
    };
    if body.bytes().any(|b| b.is_ascii_whitespace()) {
        let compact: Vec<u8> = body.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        BASE64.decode(compact)
    } else {
        BASE64.decode(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_variants_are_accepted() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVs\nbG8=\n").unwrap(), b"hello");
        assert_eq!(decode_base64(" aGVsbG8= ").unwrap(), b"hello");
        assert_eq!(decode_base64("data:image/png;base64,aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64(&encode_base64(b"\x89PNG\r\n")).unwrap(), b"\x89PNG\r\n");
        assert_eq!(encode_base64(b"hello"), "aGVsbG8=");
    }

    #[test]
    fn bad_base64_is_refused() {
        assert!(decode_base64("not base64!!").is_err());
        assert!(decode_base64("aGVsbG8==x").is_err());
    }

    #[test]
    fn a_result_keeps_its_original_json() {
        let wire = r#"{"label":"frog","class":"tailed frog","class_index":32,"score":0.5}"#;
        let outcome: ImageOutcome = serde_json::from_str(wire).unwrap();
        let result = outcome.classified().expect("a classification");
        assert_eq!((result.label.as_str(), result.class_index), ("frog", 32));
        assert_eq!(serde_json::to_string(&outcome).unwrap(), wire);
        assert_eq!(serde_json::to_string(result).unwrap(), wire);
    }

    #[test]
    fn a_failure_is_an_error_with_its_code() {
        for (wire, code) in [
            (r#"{"error":"not a JPEG or PNG","code":"bad_image"}"#, FailureCode::BadImage),
            (r#"{"error":"ONNX Runtime run failed","code":"inference_failed"}"#, FailureCode::InferenceFailed),
        ] {
            let outcome: ImageOutcome = serde_json::from_str(wire).unwrap();
            assert_eq!(outcome.failure().map(|f| f.code), Some(code), "{wire}");
            assert_eq!(serde_json::to_string(&outcome).unwrap(), wire);
        }
        assert!(serde_json::from_str::<ImageOutcome>(r#"{"error":"x","code":"other"}"#).is_err());
        assert!(serde_json::from_str::<ImageOutcome>(r#"{"label":"cat"}"#).is_err());
    }

    #[test]
    fn a_response_mixes_results_and_failures_in_order() {
        let wire = r#"{"model_id":"m","results":[{"label":"cat","class":"tabby","class_index":281,"score":0.25},{"error":"image is empty","code":"bad_image"}]}"#;
        let response: InferResponse = serde_json::from_str(wire).unwrap();
        assert!(response.results[0].classified().is_some());
        assert_eq!(response.results[1].failure().map(|f| f.error.as_str()), Some("image is empty"));
        assert_eq!(serde_json::to_string(&response).unwrap(), wire);
    }
}
