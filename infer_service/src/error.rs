//! Request errors: each has a kind (the `kind` label of `infer_errors_total`), an HTTP status
//! and a reason sent back as `{"error": "<reason>"}`. In `/v1/infer`, the kinds that belong to one
//! image ([`ErrorKind::failure_code`]) become that image's outcome instead of failing the request.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::{ErrorResponse, FailureCode, ImageFailure};
use crate::batcher::{PredictionError, QueueFull};
use crate::preprocess::ImageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    MalformedJson,
    UnsupportedContentType,
    BodyTooLarge,
    BadBase64,
    NotAnImage,
    ImageTooLarge,
    EmptyImages,
    TooManyImages,
    NotFound,
    MethodNotAllowed,
    InferenceFailed,
    Unavailable,
    QueueFull,
    Timeout,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::MalformedJson,
        ErrorKind::UnsupportedContentType,
        ErrorKind::BodyTooLarge,
        ErrorKind::BadBase64,
        ErrorKind::NotAnImage,
        ErrorKind::ImageTooLarge,
        ErrorKind::EmptyImages,
        ErrorKind::TooManyImages,
        ErrorKind::NotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::InferenceFailed,
        ErrorKind::Unavailable,
        ErrorKind::QueueFull,
        ErrorKind::Timeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::MalformedJson => "malformed_json",
            ErrorKind::UnsupportedContentType => "unsupported_content_type",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::BadBase64 => "bad_base64",
            ErrorKind::NotAnImage => "not_an_image",
            ErrorKind::ImageTooLarge => "image_too_large",
            ErrorKind::EmptyImages => "empty_images",
            ErrorKind::TooManyImages => "too_many_images",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::InferenceFailed => "inference_failed",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::QueueFull => "queue_full",
            ErrorKind::Timeout => "timeout",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::MalformedJson | ErrorKind::BadBase64 | ErrorKind::NotAnImage | ErrorKind::EmptyImages => {
                StatusCode::BAD_REQUEST
            }
            ErrorKind::UnsupportedContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::BodyTooLarge | ErrorKind::ImageTooLarge | ErrorKind::TooManyImages => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::InferenceFailed => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::Unavailable | ErrorKind::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The outcome code when this error concerns one image rather than the whole request.
    pub fn failure_code(self) -> Option<FailureCode> {
        match self {
            ErrorKind::BadBase64 | ErrorKind::NotAnImage | ErrorKind::ImageTooLarge => Some(FailureCode::BadImage),
            ErrorKind::InferenceFailed => Some(FailureCode::InferenceFailed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub reason: String,
    /// Sent as `Retry-After` (whole seconds).
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, reason: impl Into<String>) -> ApiError {
        ApiError { kind, reason: reason.into(), retry_after: None }
    }

    /// This error as one image's outcome, if it concerns one image.
    pub fn image_failure(&self) -> Option<ImageFailure> {
        let code = self.kind.failure_code()?;
        Some(ImageFailure { error: self.reason.clone(), code })
    }

    /// Prefixes the reason with where in the request the problem is (e.g. `images[3]`).
    pub fn at(mut self, place: &str) -> ApiError {
        self.reason = format!("{place}: {}", self.reason);
        self
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let kind = match &rejection {
            JsonRejection::MissingJsonContentType(_) => ErrorKind::UnsupportedContentType,
            JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => ErrorKind::MalformedJson,
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::BodyTooLarge,
            _ => ErrorKind::MalformedJson,
        };
        ApiError::new(kind, rejection.body_text())
    }
}

impl From<ImageError> for ApiError {
    fn from(error: ImageError) -> ApiError {
        let kind = match error {
            ImageError::TooLarge { .. } => ErrorKind::ImageTooLarge,
            _ => ErrorKind::NotAnImage,
        };
        ApiError::new(kind, error.to_string())
    }
}

impl From<PredictionError> for ApiError {
    fn from(error: PredictionError) -> ApiError {
        let kind = match error {
            PredictionError::Failed(_) => ErrorKind::InferenceFailed,
            PredictionError::Stopped => ErrorKind::Unavailable,
        };
        ApiError::new(kind, error.to_string())
    }
}

impl From<QueueFull> for ApiError {
    fn from(full: QueueFull) -> ApiError {
        ApiError { retry_after: Some(full.retry_after), ..ApiError::new(ErrorKind::QueueFull, full.to_string()) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.kind.status(), Json(ErrorResponse { error: self.reason })).into_response();
        if let Some(wait) = self.retry_after {
            let seconds = wait.as_secs().max(1);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        // Read back by the metrics middleware to count errors by kind.
        response.extensions_mut().insert(self.kind);
        response
    }
}
