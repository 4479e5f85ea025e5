//! Client of the inference service's batch endpoint, `POST /v1/infer`, and the classification of
//! its failures that the infer-consumer's retry rules rest on.

use std::time::Duration;

use reqwest::header::RETRY_AFTER;

use crate::backoff::Failure;

use iot_schema::infer::{ErrorResponse, ROUTE_HEALTH, ROUTE_INFER};
pub use iot_schema::infer::{FailureCode, ImageOutcome, InferRequest, InferResponse};

/// Why a request brought no answer, sorted by what retrying it can do.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InferRequestError {
    /// The service refused the request itself (400, 413, 415, 422): retrying cannot help.
    #[error("the service rejected the request ({status}): {reason}")]
    Rejected { status: u16, reason: String },
    /// Down, busy or misrouted (no connection, 503, 429, 404, ...): nothing to do with the images,
    /// so retried for as long as it takes, no sooner than `retry_after` if the service said so.
    #[error("the inference service is unavailable: {why}")]
    Unavailable { why: String, retry_after: Option<Duration> },
    /// The service failed on this request (500, 504, no answer in time, a dropped connection, a
    /// reply it should not have sent): maybe because of one of its images, so retried a bounded
    /// number of times and then narrowed down.
    #[error("the inference service failed: {0}")]
    Failed(String),
}

impl InferRequestError {
    /// How [`crate::backoff::retry_bounded`] treats it.
    pub fn into_failure(self) -> Failure<InferRequestError> {
        match self {
            InferRequestError::Unavailable { why, retry_after } => Failure::Unavailable { why, after: retry_after },
            failed @ InferRequestError::Failed(_) => Failure::Failed(failed),
            rejected @ InferRequestError::Rejected { .. } => Failure::Final(rejected),
        }
    }
}

/// Whether a status is the request's fault. 404/405 mean a wrong `--infer-url`, and 408/429 a
/// busy service: those are retried, never blamed on the images.
pub fn is_rejection(status: u16) -> bool {
    matches!(status, 400 | 413 | 415 | 422)
}

/// Whether a status says the service failed on this very request (an internal error, or a
/// deadline it missed), which one image can cause.
pub fn is_failure(status: u16) -> bool {
    matches!(status, 500 | 504)
}

#[derive(Clone, Debug)]
pub struct InferClient {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
    canary: String,
}

impl InferClient {
    pub fn new(base_url: &str, timeout: Duration) -> anyhow::Result<InferClient> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(InferClient { http, base: base_url.trim_end_matches('/').to_owned(), timeout, canary: canary_image() })
    }

    /// The base URL, for log lines: without its password, should it have one.
    pub fn base_url(&self) -> String {
        iot_schema::redact::uri(&self.base)
    }

    /// Classifies base64 images in one request; the answer has one outcome per image, in order.
    pub async fn infer(&self, images: &[&str]) -> Result<InferResponse, InferRequestError> {
        self.infer_within(images, self.timeout).await
    }

    /// [`InferClient::infer`] with a time limit of its own.
    pub async fn infer_within(&self, images: &[&str], timeout: Duration) -> Result<InferResponse, InferRequestError> {
        let url = format!("{}{ROUTE_INFER}", self.base);
        let request = InferRequest { images: images.iter().map(|&i| i.to_owned()).collect() };
        let sent = self.http.post(&url).timeout(timeout).json(&request).send().await;
        let response = sent.map_err(|e| self.transport_error(e, timeout))?;
        let status = response.status().as_u16();
        let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        let body = response.bytes().await.map_err(|e| self.transport_error(e, timeout))?;
        interpret(status, retry_after, &body, images.len())
    }

    /// The time limit of a request (`--request-timeout-s`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// No connection at all is unavailability; anything that goes wrong once the request is
    /// sent (no answer in time, the connection dropped: a crash or an out-of-memory kill) may be
    /// the request's doing.
    fn transport_error(&self, err: reqwest::Error, timeout: Duration) -> InferRequestError {
        let url = self.base_url();
        if err.is_connect() {
            InferRequestError::Unavailable { why: format!("{url}: {}", err.without_url()), retry_after: None }
        } else if err.is_timeout() {
            InferRequestError::Failed(format!("{url}: no answer within {} s", timeout.as_secs_f64()))
        } else {
            InferRequestError::Failed(format!("{url}: {}", err.without_url()))
        }
    }

    /// True when `GET /healthz` answers 2xx.
    pub async fn healthy(&self) -> bool {
        let url = format!("{}{ROUTE_HEALTH}", self.base);
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }

    /// True when the service classifies a known-good image: it works, so an image it keeps
    /// failing on is that image's problem, not the service's.
    pub async fn classifies_known_good_image(&self) -> bool {
        match self.infer(&[self.canary.as_str()]).await {
            Ok(response) => matches!(response.results.first(), Some(ImageOutcome::Classified(_))),
            Err(_) => false,
        }
    }
}

/// The known-good image of [`InferClient::classifies_known_good_image`]: a 32×32 PNG gradient,
/// base64.
pub fn canary_image() -> String {
    let gradient = image::RgbImage::from_fn(32, 32, |x, y| image::Rgb([(x * 8) as u8, (y * 8) as u8, 96]));
    let png = crate::images::encode::Encoding { format: crate::images::encode::Format::Png, jpeg_quality: 90 };
    // Encoding a small in-memory image as PNG cannot fail.
    png.encode_base64(&gradient).unwrap_or_default()
}

/// `Retry-After` in seconds (its HTTP-date form is not worth a date parser here: ignored).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Reads an answer: one outcome per image, a rejection with the service's reason, a failure, or
/// unavailability.
pub fn interpret(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
    images: usize,
) -> Result<InferResponse, InferRequestError> {
    if (200..300).contains(&status) {
        let response: InferResponse = serde_json::from_slice(body)
            .map_err(|e| InferRequestError::Failed(format!("unreadable answer ({e}): {}", excerpt(body))))?;
        if response.results.len() != images {
            return Err(InferRequestError::Failed(format!("{} results for {images} images", response.results.len())));
        }
        return Ok(response);
    }
    let reason = serde_json::from_slice::<ErrorResponse>(body).map(|e| e.error).unwrap_or_else(|_| excerpt(body));
    if is_rejection(status) {
        Err(InferRequestError::Rejected { status, reason })
    } else if is_failure(status) {
        Err(InferRequestError::Failed(format!("HTTP {status}: {reason}")))
    } else {
        Err(InferRequestError::Unavailable { why: format!("HTTP {status}: {reason}"), retry_after })
    }
}

fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"model_id":"m1","results":[{"label":"cat","class":"tabby, tabby cat","class_index":281,"score":0.5},{"label":"other","class":"web site","class_index":916,"score":0.25}]}"#;
    const MIXED: &str = r#"{"model_id":"m1","results":[{"label":"cat","class":"tabby","class_index":281,"score":0.5},{"error":"not a JPEG or PNG","code":"bad_image"},{"error":"ONNX Runtime run failed","code":"inference_failed"}]}"#;

    #[test]
    fn an_answer_of_todays_service() {
        let response = interpret(200, None, OK.as_bytes(), 2).unwrap();
        assert_eq!(response.model_id, "m1");
        let first = response.results[0].classified().expect("a classification");
        assert_eq!((first.label.as_str(), first.class_index), ("cat", 281));
    }

    #[test]
    fn an_answer_with_per_image_errors() {
        let response = interpret(200, None, MIXED.as_bytes(), 3).unwrap();
        let codes: Vec<Option<FailureCode>> = response.results.iter().map(|o| o.failure().map(|f| f.code)).collect();
        assert_eq!(codes, [None, Some(FailureCode::BadImage), Some(FailureCode::InferenceFailed)]);
    }

    #[test]
    fn a_wrong_or_unreadable_answer_is_a_failure() {
        assert!(matches!(interpret(200, None, OK.as_bytes(), 3), Err(InferRequestError::Failed(_))));
        assert!(matches!(interpret(200, None, b"<html>", 1), Err(InferRequestError::Failed(_))));
    }

    #[test]
    fn input_errors_are_rejections_with_the_reason() {
        let err = interpret(400, None, br#"{"error":"image 0 is not a decodable image"}"#, 1).unwrap_err();
        assert_eq!(err, InferRequestError::Rejected { status: 400, reason: "image 0 is not a decodable image".into() });
        assert!(matches!(interpret(413, None, b"too big", 1), Err(InferRequestError::Rejected { status: 413, .. })));
        assert!(matches!(err.into_failure(), Failure::Final(_)));
    }

    #[test]
    fn internal_errors_and_missed_deadlines_are_failures() {
        for status in [500, 504] {
            let err = interpret(status, None, br#"{"error":"model crashed"}"#, 1).unwrap_err();
            assert_eq!(err, InferRequestError::Failed(format!("HTTP {status}: model crashed")));
            assert!(matches!(err.into_failure(), Failure::Failed(_)));
        }
    }

    #[test]
    fn a_full_queue_is_unavailability_with_its_retry_after() {
        let err = interpret(503, Some(Duration::from_secs(2)), br#"{"error":"queue full"}"#, 1).unwrap_err();
        let Failure::Unavailable { why, after } = err.into_failure() else { panic!("not unavailability") };
        assert_eq!((why.as_str(), after), ("HTTP 503: queue full", Some(Duration::from_secs(2))));
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn routing_and_busy_answers_are_unavailability() {
        for status in [502, 503, 404, 405, 408, 429, 401] {
            assert!(
                matches!(interpret(status, None, b"{}", 1), Err(InferRequestError::Unavailable { .. })),
                "{status}"
            );
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_unavailable() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = InferClient::new(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(2)).unwrap();
        assert_eq!(client.base_url(), format!("http://127.0.0.1:{port}"));
        assert!(matches!(client.infer(&["aGk="]).await, Err(InferRequestError::Unavailable { .. })));
        assert!(!client.healthy().await);
        assert!(!client.classifies_known_good_image().await);
    }

    #[tokio::test]
    async fn no_answer_in_time_is_a_failure() {
        // A listener that accepts the connection and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let client = InferClient::new(&format!("http://user:pw@127.0.0.1:{port}"), Duration::from_secs(1)).unwrap();
        let err = client.infer(&["aGk="]).await.unwrap_err();
        assert_eq!(err, InferRequestError::Failed(format!("http://user:****@127.0.0.1:{port}: no answer within 1 s")));
        silent.abort();
    }

    #[test]
    fn the_known_good_image_is_a_good_image() {
        let limits = crate::message::ImageLimits { max_pixels: 32 * 32 };
        assert_eq!(crate::message::check_image(&canary_image(), &limits), Ok(()));
    }
}
