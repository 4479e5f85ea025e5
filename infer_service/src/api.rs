//! Wire types of the HTTP API, shared with clients (tests, the ingest crate, the benchmark).
//!
//! Plain serde types only: nothing here touches ONNX Runtime, so depending on this crate for
//! its types costs no initialisation.

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

/// `POST /v1/infer` answer: one result per image, in request order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferResponse {
    pub model_id: String,
    pub results: Vec<InferResult>,
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
