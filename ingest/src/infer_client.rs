//! Client of the inference service's batch endpoint, `POST /v1/infer`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The service's answer for one image.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Classification {
    /// The label to store (the ImageNet class mapped to the dataset's label set, if configured).
    pub label: String,
    /// The model's own class name.
    #[serde(default)]
    pub class: Option<String>,
    #[serde(default)]
    pub class_index: Option<i64>,
    #[serde(default)]
    pub score: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct InferReply {
    pub model_id: String,
    pub results: Vec<Classification>,
}

#[derive(Serialize)]
struct InferRequest<'a> {
    images: &'a [&'a str],
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InferError {
    /// The service refused the input itself (400, 413, 415, 422): retrying cannot help.
    #[error("the service rejected the request ({status}): {reason}")]
    Rejected { status: u16, reason: String },
    /// Down, overloaded, misconfigured or answering nonsense: retry later.
    #[error("the inference service is unavailable: {0}")]
    Unavailable(String),
}

/// Whether a status is the input's fault. 404/405 mean a wrong `--infer-url`, and 408/429 a busy
/// service: those are retried, never blamed on the record.
pub fn is_rejection(status: u16) -> bool {
    matches!(status, 400 | 413 | 415 | 422)
}

#[derive(Clone, Debug)]
pub struct InferClient {
    http: reqwest::Client,
    base: String,
}

impl InferClient {
    pub fn new(base_url: &str, timeout: Duration) -> anyhow::Result<InferClient> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(InferClient { http, base: base_url.trim_end_matches('/').to_owned() })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Classifies base64 images in one request; the reply has one result per image, in order.
    pub async fn infer(&self, images: &[&str]) -> Result<InferReply, InferError> {
        let url = format!("{}/v1/infer", self.base);
        let response = self
            .http
            .post(&url)
            .json(&InferRequest { images })
            .send()
            .await
            .map_err(|e| InferError::Unavailable(format!("{url}: {e}")))?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| InferError::Unavailable(format!("{url}: {e}")))?;
        interpret(status, &body, images.len())
    }

    /// True when `GET /healthz` answers 2xx.
    pub async fn healthy(&self) -> bool {
        let url = format!("{}/healthz", self.base);
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }
}

/// Reads a reply: success with one result per image, a rejection with the service's reason, or
/// anything else as unavailability.
pub fn interpret(status: u16, body: &[u8], images: usize) -> Result<InferReply, InferError> {
    if (200..300).contains(&status) {
        let reply: InferReply = serde_json::from_slice(body)
            .map_err(|e| InferError::Unavailable(format!("unreadable reply ({e}): {}", excerpt(body))))?;
        if reply.results.len() != images {
            return Err(InferError::Unavailable(format!("{} results for {images} images", reply.results.len())));
        }
        return Ok(reply);
    }
    #[derive(Deserialize)]
    struct ErrorBody {
        error: String,
    }
    let reason = serde_json::from_slice::<ErrorBody>(body).map(|e| e.error).unwrap_or_else(|_| excerpt(body));
    if is_rejection(status) {
        Err(InferError::Rejected { status, reason })
    } else {
        Err(InferError::Unavailable(format!("HTTP {status}: {reason}")))
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"model_id":"m1","results":[{"label":"cat","class":"tabby, tabby cat","class_index":281,"score":0.5},{"label":"other"}]}"#;

    #[test]
    fn a_good_reply() {
        let reply = interpret(200, OK.as_bytes(), 2).unwrap();
        assert_eq!(reply.model_id, "m1");
        assert_eq!(reply.results[0].class_index, Some(281));
        assert_eq!(reply.results[1].label, "other");
    }

    #[test]
    fn a_reply_with_the_wrong_number_of_results_is_retried() {
        assert!(matches!(interpret(200, OK.as_bytes(), 3), Err(InferError::Unavailable(_))));
        assert!(matches!(interpret(200, b"<html>", 1), Err(InferError::Unavailable(_))));
    }

    #[test]
    fn input_errors_are_rejections_with_the_reason() {
        let err = interpret(400, br#"{"error":"image 0 is not a decodable image"}"#, 1).unwrap_err();
        assert_eq!(err, InferError::Rejected { status: 400, reason: "image 0 is not a decodable image".into() });
        assert!(matches!(interpret(413, b"too big", 1), Err(InferError::Rejected { status: 413, .. })));
    }

    #[test]
    fn server_and_routing_errors_are_retried() {
        for status in [500, 502, 503, 404, 405, 408, 429] {
            assert!(matches!(interpret(status, b"{}", 1), Err(InferError::Unavailable(_))), "{status}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_unavailable() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = InferClient::new(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(2)).unwrap();
        assert_eq!(client.base_url(), format!("http://127.0.0.1:{port}"));
        assert!(matches!(client.infer(&["aGk="]).await, Err(InferError::Unavailable(_))));
        assert!(!client.healthy().await);
    }
}
