//! A stub in front of the real inference service, for the faults the real service cannot be
//! made to show on one chosen image: an HTTP 500 (a model that crashes on it) or no answer at
//! all (a model that hangs on it). Everything else is forwarded to the real service.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// What the stub does with a request that contains the marked image.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// HTTP 500, as a model that crashes on the image would.
    InternalError,
    /// No answer at all, as a model that hangs on it would.
    Hang,
}

pub struct Stub {
    service: String,
    http: reqwest::Client,
    fault: Fault,
    /// Base64 of the image to fail on.
    marked: Mutex<Option<String>>,
    /// While set, the first image of the next inference request becomes the marked one.
    mark_next: AtomicBool,
    /// While set, every inference request fails (HTTP 500), marked or not.
    pub fail_all: AtomicBool,
    /// Requests for the consumer's known-good image alone (its health check).
    pub canary_requests: AtomicUsize,
    /// Inference requests that contained the marked image.
    pub marked_requests: AtomicUsize,
}

impl Stub {
    /// A stub that forwards to the service at `service` and plays `fault` on a marked image.
    pub fn new(service: &str, fault: Fault) -> Arc<Stub> {
        Arc::new(Stub {
            service: service.to_owned(),
            http: reqwest::Client::new(),
            fault,
            marked: Mutex::new(None),
            mark_next: AtomicBool::new(false),
            fail_all: AtomicBool::new(false),
            canary_requests: AtomicUsize::new(0),
            marked_requests: AtomicUsize::new(0),
        })
    }

    pub fn mark(&self, image_base64: String) {
        *self.marked.lock().expect("marked image") = Some(image_base64);
    }

    /// Marks the first image of the next inference request that is not the consumer's canary:
    /// for a caller that does not know which images will come.
    pub fn mark_next(&self) {
        self.mark_next.store(true, Ordering::SeqCst);
    }

    pub fn marked(&self) -> Option<String> {
        self.marked.lock().expect("marked image").clone()
    }

    async fn handle(&self, method: Method, uri: Uri, body: Bytes) -> Response {
        let canary = format!(r#"{{"images":["{}"]}}"#, iot_ingest::infer_client::canary_image());
        let is_canary = body == canary.as_bytes();
        if is_canary {
            self.canary_requests.fetch_add(1, Ordering::SeqCst);
        }
        let is_inference = uri.path() == "/v1/infer";
        if is_inference && !is_canary && self.mark_next.swap(false, Ordering::SeqCst) {
            let request: Option<iot_schema::infer::InferRequest> = serde_json::from_slice(&body).ok();
            if let Some(first) = request.and_then(|r| r.images.into_iter().next()) {
                self.mark(first);
            }
        }
        let marked = self.marked().is_some_and(|m| contains(&body, m.as_bytes()));
        if is_inference && marked {
            self.marked_requests.fetch_add(1, Ordering::SeqCst);
        }
        if is_inference
            && (self.fail_all.load(Ordering::SeqCst) || (marked && matches!(self.fault, Fault::InternalError)))
        {
            return (StatusCode::INTERNAL_SERVER_ERROR, r#"{"error":"the model crashed"}"#).into_response();
        }
        if is_inference && marked {
            std::future::pending::<()>().await;
        }
        self.forward(method, uri, body).await
    }

    async fn forward(&self, method: Method, uri: Uri, body: Bytes) -> Response {
        let url = format!("{}{}", self.service, uri.path());
        let request = self.http.request(method, url).header("content-type", "application/json").body(body);
        match request.send().await {
            Ok(answer) => {
                let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                let bytes = answer.bytes().await.unwrap_or_default();
                (status, [("content-type", "application/json")], bytes).into_response()
            }
            Err(err) => (StatusCode::BAD_GATEWAY, err.to_string()).into_response(),
        }
    }

    /// Serves the stub on a free port of 127.0.0.1, on the caller's runtime; returns its URL.
    pub async fn serve(self: Arc<Stub>) -> String {
        let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
            let stub = self.clone();
            async move { stub.handle(method, uri, body).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("stub port");
        let addr: SocketAddr = listener.local_addr().expect("stub address");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// Serves the stub from a thread of its own (for tests without a runtime); returns its URL.
    /// The thread lives as long as the test process.
    pub fn serve_in_background(self: Arc<Stub>) -> String {
        let (url_tx, url_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("stub runtime");
            runtime.block_on(async move {
                let _ = url_tx.send(self.serve().await);
                std::future::pending::<()>().await
            })
        });
        url_rx.recv().expect("the stub's URL")
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
