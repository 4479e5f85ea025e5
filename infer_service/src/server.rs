//! HTTP layer: routes, thin handlers, request metrics, the request deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Extension, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::future::join_all;

use crate::api::{
    FailureCode, HealthResponse, ImageOutcome, InferRequest, InferResponse, InferResult, LegacyInferRequest,
    LegacyInferResponse, ROUTE_HEALTH, ROUTE_INFER, ROUTE_LEGACY, ROUTE_METRICS,
};
use crate::batcher::{Batcher, PredictionError, QueueSlot};
use crate::error::{ApiError, ErrorKind};
use crate::labels::Labeller;
use crate::linger::{self, Linger};
use crate::metrics::ServiceMetrics;
use crate::model::Prediction;
use crate::preprocess::Preprocessor;

/// Everything the handlers need; shared by all requests.
pub struct AppState {
    pub model_id: String,
    pub batcher: Batcher,
    pub preprocessor: Preprocessor,
    pub labeller: Labeller,
    pub metrics: ServiceMetrics,
    pub max_images_per_request: usize,
    pub request_timeout: Duration,
}

/// When the request in hand must be answered (set by [`enforce_deadline`]).
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Instant);

pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route(ROUTE_LEGACY, post(legacy_infer))
        .route(ROUTE_INFER, post(infer))
        .route(ROUTE_HEALTH, get(health))
        .route(ROUTE_METRICS, get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), enforce_deadline))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), track_requests))
        .layer(middleware::from_fn_with_state(Linger::default(), linger::drain_unread_bodies))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

async fn legacy_infer(
    State(state): State<Arc<AppState>>,
    Extension(Deadline(deadline)): Extension<Deadline>,
    payload: Result<Json<LegacyInferRequest>, JsonRejection>,
) -> Result<Json<LegacyInferResponse>, ApiError> {
    let Json(request) = payload?;
    let slot = state.batcher.admit_one()?;
    let result = classify_one(state, request.image, slot, deadline).await?;
    Ok(Json(LegacyInferResponse { inferred: result.label }))
}

async fn infer(
    State(state): State<Arc<AppState>>,
    Extension(Deadline(deadline)): Extension<Deadline>,
    payload: Result<Json<InferRequest>, JsonRejection>,
) -> Result<Json<InferResponse>, ApiError> {
    let Json(request) = payload?;
    check_image_count(&state, request.images.len())?;
    let slots = state.batcher.admit(request.images.len())?;
    let results = classify_all(&state, request.images, slots, deadline).await?;
    Ok(Json(InferResponse { model_id: state.model_id.clone(), results }))
}

async fn health(State(state): State<Arc<AppState>>) -> Result<Json<HealthResponse>, ApiError> {
    if !state.batcher.is_alive() {
        return Err(ApiError::new(ErrorKind::Unavailable, "the inference thread has stopped"));
    }
    Ok(Json(HealthResponse { status: "ok".into(), model_id: state.model_id.clone() }))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render()).into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(ErrorKind::NotFound, format!("no route {} {}", request.method(), request.uri().path()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        ErrorKind::MethodNotAllowed,
        format!("method {} not allowed on {}", request.method(), request.uri().path()),
    )
}

/// Counts every request by matched route and status, and refused ones by error kind.
async fn track_requests(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    state.metrics.observe_request(&route, status.as_u16(), started.elapsed());
    if let Some(kind) = response.extensions().get::<ErrorKind>() {
        state.metrics.count_error(kind.as_str());
        if status.is_server_error() {
            tracing::error!(route, status = status.as_u16(), kind = kind.as_str(), "request failed");
        } else {
            tracing::info!(route, status = status.as_u16(), kind = kind.as_str(), "request refused");
        }
    }
    response
}

/// Answers 504 once `--request-timeout-ms` has passed since the request arrived (its body upload
/// included). The handler is dropped then, and with it the receivers of its images, so the
/// batcher drops those images unrun; a client that disconnects has its handler dropped the same way.
async fn enforce_deadline(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let deadline = Instant::now() + state.request_timeout;
    request.extensions_mut().insert(Deadline(deadline));
    match tokio::time::timeout_at(deadline.into(), next.run(request)).await {
        Ok(response) => response,
        Err(_) => timed_out(&state).into_response(),
    }
}

fn timed_out(state: &AppState) -> ApiError {
    ApiError::new(
        ErrorKind::Timeout,
        format!(
            "no answer within the request timeout of {} ms; the request's images were dropped",
            state.request_timeout.as_millis()
        ),
    )
}

fn check_image_count(state: &AppState, count: usize) -> Result<(), ApiError> {
    if count == 0 {
        return Err(ApiError::new(ErrorKind::EmptyImages, "`images` is empty; send at least one base64 image"));
    }
    if count > state.max_images_per_request {
        return Err(ApiError::new(
            ErrorKind::TooManyImages,
            format!("{count} images in one request; the limit is {}", state.max_images_per_request),
        ));
    }
    Ok(())
}

/// Classifies the images of one request concurrently, each into its own outcome. Only a
/// problem of the whole service (inference thread gone, deadline passed) fails the request.
async fn classify_all(
    state: &Arc<AppState>,
    images: Vec<String>,
    slots: Vec<QueueSlot>,
    deadline: Instant,
) -> Result<Vec<ImageOutcome>, ApiError> {
    // Polled in this task rather than spawned: when the request is dropped, so is every image's
    // wait, which is what tells the batcher to drop the images unrun.
    let classified =
        images.into_iter().zip(slots).map(|(image, slot)| classify_one(Arc::clone(state), image, slot, deadline));
    let outcomes = join_all(classified).await;
    outcomes.into_iter().enumerate().map(|(index, outcome)| image_outcome(state, index, outcome)).collect()
}

/// One image's outcome, or the error that fails the whole request.
fn image_outcome(
    state: &AppState,
    index: usize,
    outcome: Result<InferResult, ApiError>,
) -> Result<ImageOutcome, ApiError> {
    let error = match outcome {
        Ok(result) => return Ok(ImageOutcome::Classified(result)),
        Err(error) => error,
    };
    let Some(failure) = error.image_failure() else {
        return Err(error);
    };
    let kind = error.kind.as_str();
    state.metrics.count_error(kind);
    match failure.code {
        FailureCode::BadImage => tracing::info!(index, kind, reason = failure.error, "image refused"),
        FailureCode::InferenceFailed => tracing::error!(index, kind, reason = failure.error, "image failed"),
    }
    Ok(ImageOutcome::Failed(failure))
}

/// Decode and preprocess on the blocking pool, then queue for the next batch.
async fn classify_one(
    state: Arc<AppState>,
    encoded: String,
    slot: QueueSlot,
    deadline: Instant,
) -> Result<InferResult, ApiError> {
    let preparing = state.batcher.preparing();
    let worker_state = Arc::clone(&state);
    let pixels = tokio::task::spawn_blocking(move || -> Result<Vec<f32>, ApiError> {
        let bytes = decode_base64(&encoded)?;
        Ok(worker_state.preprocessor.prepare(&bytes)?)
    })
    .await
    .map_err(|e| ApiError::new(ErrorKind::InferenceFailed, format!("preprocessing task failed: {e}")))??;
    let pending = state.batcher.submit(pixels, slot, deadline)?;
    drop(preparing);
    let prediction = match pending.await {
        Ok(prediction) => prediction?,
        // Unanswered: the batcher dropped the image as expired, or has stopped.
        Err(_) if Instant::now() >= deadline => return Err(timed_out(&state)),
        Err(_) => return Err(PredictionError::Stopped.into()),
    };
    describe(&state, prediction)
}

fn describe(state: &AppState, prediction: Prediction) -> Result<InferResult, ApiError> {
    let index = prediction.class_index;
    let (Some(class_name), Some(label)) = (state.labeller.class_name(index), state.labeller.label(index)) else {
        return Err(ApiError::new(
            ErrorKind::InferenceFailed,
            format!("model predicted class {index}, which has no name"),
        ));
    };
    Ok(InferResult {
        label: label.to_owned(),
        class_name: class_name.to_owned(),
        class_index: index,
        score: prediction.score,
    })
}

/// The shared lenient decoder (see `iot_schema::infer::decode_base64`); an empty image is refused.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, ApiError> {
    let bytes = crate::api::decode_base64(text)
        .map_err(|e| ApiError::new(ErrorKind::BadBase64, format!("image is not valid base64: {e}")))?;
    if bytes.is_empty() {
        return Err(ApiError::new(ErrorKind::NotAnImage, "image is empty"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_base64_is_refused_with_its_kind() {
        assert_eq!(decode_base64("data:image/png;base64,aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("not base64!!").unwrap_err().kind, ErrorKind::BadBase64);
        assert_eq!(decode_base64("").unwrap_err().kind, ErrorKind::NotAnImage);
    }
}
