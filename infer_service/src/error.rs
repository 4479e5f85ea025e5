//! Request errors: each has a kind (the `kind` label of `infer_errors_total`), an HTTP status
//! and a reason sent back as `{"error": "<reason>"}`.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::api::ErrorResponse;
use crate::batcher::InferError;
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
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 12] = [
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
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub reason: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, reason: impl Into<String>) -> ApiError {
        ApiError { kind, reason: reason.into() }
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

impl From<InferError> for ApiError {
    fn from(error: InferError) -> ApiError {
        let kind = match error {
            InferError::Failed(_) => ErrorKind::InferenceFailed,
            InferError::Stopped => ErrorKind::Unavailable,
        };
        ApiError::new(kind, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.kind.status(), Json(ErrorResponse { error: self.reason })).into_response();
        if self.kind == ErrorKind::BodyTooLarge {
            // The rest of the body was never read, so the server drops the connection after this
            // response; saying so keeps a client from sending its next request down a dead one.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // Read back by the metrics middleware to count errors by kind.
        response.extensions_mut().insert(self.kind);
        response
    }
}
