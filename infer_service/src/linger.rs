//! Lingering close. A request answered before its body was read to the end (the body is over
//! the limit, the content type is wrong, the deadline passed) cannot leave its connection usable,
//! so the answer says `Connection: close`. But closing a socket that still holds unread data makes
//! the kernel reset the connection, and a client that writes its whole body before reading gets
//! a broken pipe or ECONNRESET instead of the answer. So the rest of the body is read and thrown
//! away, for a bounded time and number of bytes, before the connection is closed.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

/// How much of an unread body is discarded before the connection is closed anyway.
#[derive(Debug, Clone, Copy)]
pub struct Linger {
    pub max_bytes: u64,
    pub max_time: Duration,
}

impl Default for Linger {
    /// Enough for a client on a slow link to finish writing a body a few times the default limit.
    fn default() -> Linger {
        Linger { max_bytes: 64 << 20, max_time: Duration::from_secs(5) }
    }
}

/// Middleware: the handler gets a body that, if dropped unfinished, is drained in the background;
/// the answer then says `Connection: close`.
pub async fn drain_unread_bodies(State(linger): State<Linger>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let finished = Arc::new(AtomicBool::new(body.is_end_stream()));
    let body = DrainOnDrop { inner: Some(body), finished: Arc::clone(&finished), linger };
    let mut response = next.run(Request::from_parts(parts, Body::new(body))).await;
    if !finished.load(Ordering::Acquire) {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that notes when it has been read to the end, and that hands itself to
/// [`drain`] when dropped before.
struct DrainOnDrop {
    inner: Option<Body>,
    finished: Arc<AtomicBool>,
    linger: Linger,
}

impl HttpBody for DrainOnDrop {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.finished.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if self.finished.load(Ordering::Acquire) || body.is_end_stream() {
            self.finished.store(true, Ordering::Release);
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body, self.linger));
        }
    }
}

/// Reads and discards `body` until it ends, fails, or the linger bounds are reached; dropping it
/// then lets the server close the connection.
async fn drain(mut body: Body, linger: Linger) {
    let mut discarded = 0u64;
    let read_all = tokio::time::timeout(linger.max_time, async {
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            let Ok(frame) = frame else {
                return true; // the client went away: nothing left to read
            };
            discarded += frame.data_ref().map_or(0, |data| data.len() as u64);
            if discarded > linger.max_bytes {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false);
    if read_all {
        tracing::debug!(discarded, "discarded the unread rest of a request body");
    } else {
        tracing::info!(
            discarded,
            max_bytes = linger.max_bytes,
            max_secs = linger.max_time.as_secs_f64(),
            "closing a connection whose request body is still coming after the linger bound"
        );
    }
}
