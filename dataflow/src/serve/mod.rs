//! `dataflow count --follow --serve ADDR`: the follower's counts and views over HTTP.
//!
//! - `/`: a live page that redraws as counts change, fed by server-sent events;
//! - `/events`: those events, one `board` event with the whole [`Board`] per change;
//! - `/metrics`: Prometheus text, with label cardinality bounded by `--max-series`;
//! - `/api/board`, and `/api/{producers,confusion,classes,windows,drift,alerts}` for one part of it.
//!
//! Worker 0 publishes a new board after every round that changed something; the server runs on
//! its own thread and only ever reads the latest one.

pub mod board;
pub mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use iot_schema::monitor;
use tokio::sync::watch;

pub use board::Board;

/// The live page: one file, no external scripts, styles or fonts.
const PAGE: &str = include_str!("page.html");

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Producers with their own metric series; the rest are summed under `_other`.
    pub max_series: usize,
}

/// What the handlers share: the latest board, and the series bound.
#[derive(Clone)]
pub struct AppState {
    board: watch::Receiver<Arc<Board>>,
    max_series: usize,
}

/// The routes, with no socket: tests call it directly.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route(monitor::ROUTE_PAGE, get(page))
        .route(monitor::ROUTE_EVENTS, get(events))
        .route(monitor::ROUTE_METRICS, get(prometheus_text))
        .route(monitor::ROUTE_API_BOARD, get(whole_board))
        .route("/api/{part}", get(board_part))
        .fallback(not_found)
        .with_state(state)
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn prometheus_text(State(state): State<AppState>) -> Response {
    let text = metrics::render(&state.board.borrow(), state.max_series);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn whole_board(State(state): State<AppState>) -> Response {
    let board = state.board.borrow().clone();
    Json(&*board).into_response()
}

async fn board_part(State(state): State<AppState>, Path(part): Path<String>) -> Result<Response, ApiError> {
    let board = state.board.borrow().clone();
    Ok(match part.as_str() {
        "producers" => Json(&board.producers).into_response(),
        "confusion" => Json(&board.confusion).into_response(),
        "classes" => Json(&board.classes).into_response(),
        "windows" => Json(&board.windows).into_response(),
        "drift" => Json(&board.drift).into_response(),
        "alerts" => Json(&board.alerts).into_response(),
        _ => return Err(ApiError::NotFound(format!("/api/{part}"))),
    })
}

/// The board now, then again after every change, until the client goes away.
async fn events(State(state): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold((state.board, true), |(mut board, first)| async move {
        if !first {
            board.changed().await.ok()?;
        }
        let latest = board.borrow_and_update().clone();
        let event = Event::default().event("board").json_data(&*latest).ok()?;
        Some((Ok(event), (board, false)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(uri.path().to_owned())
}

/// A failed request, as the response it is.
#[derive(Debug)]
pub enum ApiError {
    NotFound(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::NotFound(path) => {
                let error = format!(
                    "{path} is not served here; try /, /metrics, /events, /api/board or \
                     /api/{{producers,confusion,classes,windows,drift,alerts}}"
                );
                (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": error }))).into_response()
            }
        }
    }
}

/// The running server: publish boards to it; it stops when dropped.
pub struct Server {
    board: watch::Sender<Arc<Board>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl Server {
    /// Binds `options.addr` now, so that a port in use is an error at start, and serves on a
    /// thread of its own.
    pub fn start(options: &ServeOptions, board: Board) -> Result<Server> {
        let listener = std::net::TcpListener::bind(options.addr).with_context(|| {
            format!("cannot serve on {}: is the port in use? pick another with --serve", options.addr)
        })?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (sender, receiver) = watch::channel(Arc::new(board));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = app(AppState { board: receiver, max_series: options.max_series });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("serve")
            .enable_all()
            .build()
            .context("cannot start the HTTP server's runtime")?;
        let thread = std::thread::Builder::new().name("serve".into()).spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(err) => return tracing::error!("cannot serve: {err}"),
                };
                let shutdown = async move {
                    let _ = stopped.await;
                };
                if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                    tracing::error!("the HTTP server stopped: {err}");
                }
            });
        })?;
        tracing::info!(%addr, "serving the live page, /metrics and /api");
        Ok(Server { board: sender, stop: Some(stop), thread: Some(thread), addr })
    }

    /// Shows `board` from now on, and sends it to every open page.
    pub fn publish(&self, board: Board) {
        self.board.send_if_modified(|current| {
            let changed = **current != board;
            if changed {
                *current = Arc::new(board);
            }
            changed
        });
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Open event streams end with the sender; the server then shuts down gracefully.
        let (closed, _) = watch::channel(Arc::new(Board::default()));
        drop(std::mem::replace(&mut self.board, closed));
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::serve::board::ProducerRow;

    fn state() -> (watch::Sender<Arc<Board>>, AppState) {
        let board = Board {
            as_of: "2026-11-30T12:00:00Z".into(),
            producers: vec![ProducerRow {
                producer: "cam <1>".into(),
                judged: 4,
                errors: 1,
                pending: 0,
                error_rate: Some(0.25),
                latest_window_error_rate: None,
                drifted: None,
                alerting: false,
            }],
            ..Board::default()
        };
        let (sender, receiver) = watch::channel(Arc::new(board));
        (sender, AppState { board: receiver, max_series: 10 })
    }

    async fn get(app: Router, path: &str) -> (StatusCode, String) {
        let response = app.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn every_route_answers_and_unknown_ones_say_what_is_served() {
        let (_sender, state) = state();
        let (status, body) = get(app(state.clone()), "/api/producers").await;
        assert_eq!(status, StatusCode::OK);
        let producers: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(producers[0]["producer"], "cam <1>");
        assert_eq!(producers[0]["error_rate"], 0.25);
        let (status, body) = get(app(state.clone()), "/api/board").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("\"as_of\":\"2026-11-30T12:00:00Z\""));
        let (status, body) = get(app(state.clone()), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("iot_producer_errors{producer=\"cam <1>\"} 1"), "{body}");
        let (status, body) = get(app(state.clone()), "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("EventSource"));
        for path in ["/api/nothing", "/nothing"] {
            let (status, body) = get(app(state.clone()), path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert!(body.contains("try /, /metrics"), "{body}");
        }
    }
}
