//! The service under overload and faults, with the real model: a full queue, a request past its
//! deadline, a client that writes a too-large body before reading the answer.
//!
//! Where no socket is needed the router is called directly; the body tests need a raw TCP client.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::Router;
use iot_infer_service::api::{encode_base64, ErrorResponse, InferResponse, LegacyInferResponse};
use iot_infer_service::{RunningService, Service, ServiceConfig};
use serde_json::json;
use tower::ServiceExt;

/// Record 4 of the CIFAR-10 test set (a frog) is classified 32 "tailed frog" (see reference.rs).
const FROG_RECORD: usize = 4;
const TAILED_FROG: usize = 32;

fn config(configure: impl FnOnce(&mut ServiceConfig)) -> ServiceConfig {
    let mut config = ServiceConfig::new(common::int8_model(), common::imagenet_classes());
    config.label_map = Some(common::label_map());
    config.ort_library = Some(common::onnxruntime());
    configure(&mut config);
    config
}

async fn load(configure: impl FnOnce(&mut ServiceConfig)) -> Service {
    let config = config(configure);
    tokio::task::spawn_blocking(move || Service::load(&config)).await.expect("load task").expect("service loads")
}

async fn start(configure: impl FnOnce(&mut ServiceConfig)) -> RunningService {
    RunningService::start(config(configure), "127.0.0.1:0".parse().expect("address")).await.expect("service starts")
}

fn frog() -> String {
    encode_base64(common::png_bytes(&common::cifar_record(FROG_RECORD).1))
}

fn post(uri: &str, body: serde_json::Value) -> Request<Body> {
    Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn error(&self) -> String {
        self.json::<ErrorResponse>().error
    }
}

async fn call(router: &Router, request: Request<Body>) -> Answer {
    let response = router.clone().oneshot(request).await.expect("the router answers");
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.expect("response body").to_vec();
    Answer { status: parts.status, headers: parts.headers, body }
}

async fn metrics(router: &Router) -> String {
    let answer = call(router, Request::get("/metrics").body(Body::empty()).expect("request")).await;
    assert_eq!(answer.status, StatusCode::OK);
    String::from_utf8(answer.body).expect("UTF-8 metrics")
}

/// Value of the sample `series` (exact series text, labels included) in Prometheus text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (name, value) = line.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

fn assert_all_frogs(answer: &Answer, images: usize) {
    assert_eq!(answer.status, StatusCode::OK, "{}", String::from_utf8_lossy(&answer.body));
    let response: InferResponse = answer.json();
    assert_eq!(response.results.len(), images);
    for outcome in &response.results {
        assert_eq!(outcome.classified().expect("classified").class_index, TAILED_FROG);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_would_overflow_the_queue_gets_503_with_retry_after() {
    let service = load(|config| {
        config.max_queue = Some(4);
        config.max_images_per_request = 4;
    })
    .await;
    let router = service.router();
    assert_all_frogs(&call(&router, post("/v1/infer", json!({"images": [frog()]}))).await, 1);

    // Three images admitted elsewhere and not yet run: two more do not fit in four.
    let held = service.batcher().admit(3).expect("room for three");
    let refused = call(&router, post("/v1/infer", json!({"images": [frog(), frog()]}))).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = refused
        .headers
        .get(header::RETRY_AFTER)
        .expect("Retry-After")
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("whole seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert!(
        refused.error().contains("the queue holds 3 of at most 4 images, 2 more do not fit"),
        "{}",
        refused.error()
    );
    let text = metrics(&router).await;
    assert_eq!(sample(&text, "infer_queue_depth"), Some(3.0), "{text}");
    assert_eq!(sample(&text, "infer_errors_total{kind=\"queue_full\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "infer_images_total"), Some(1.0), "the refused images were not computed\n{text}");

    // What fits is still served, on both routes, and gives its slot back.
    assert_all_frogs(&call(&router, post("/v1/infer", json!({"images": [frog()]}))).await, 1);
    let legacy = call(&router, post("/", json!({"image": frog()}))).await;
    assert_eq!(legacy.status, StatusCode::OK);
    assert_eq!(legacy.json::<LegacyInferResponse>().inferred, "frog");
    let one_more = service.batcher().admit_one().expect("the fourth slot");
    let legacy = call(&router, post("/", json!({"image": frog()}))).await;
    assert_eq!(legacy.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(legacy.headers.contains_key(header::RETRY_AFTER));

    drop((held, one_more));
    assert_all_frogs(&call(&router, post("/v1/infer", json!({"images": vec![frog(); 4]}))).await, 4);
    let text = metrics(&router).await;
    assert_eq!(sample(&text, "infer_queue_depth"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "infer_errors_total{kind=\"queue_full\"}"), Some(2.0), "{text}");
    assert_eq!(sample(&text, "infer_http_requests_total{route=\"/v1/infer\",status=\"503\"}"), Some(1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_deadline_gets_504_and_its_image_is_dropped_unrun() {
    let timeout = Duration::from_millis(2000);
    let service = load(|config| {
        config.request_timeout = timeout;
        config.max_wait = Duration::from_secs(120);
    })
    .await;
    let router = service.router();
    // While an image counts as being prepared, the batcher keeps its batch open for it (up to
    // max_wait): the request's image is queued, and waits there past its deadline.
    let preparing = service.batcher().preparing();
    let started = Instant::now();
    let answer = call(&router, post("/v1/infer", json!({"images": [frog()]}))).await;
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() >= timeout);
    assert!(answer.error().contains("request timeout of 2000 ms"), "{}", answer.error());
    drop(preparing);

    // The batch now runs, without the image nobody waits for.
    let waiting = Instant::now();
    let text = loop {
        let text = metrics(&router).await;
        if sample(&text, "infer_abandoned_images_total") == Some(1.0) {
            break text;
        }
        assert!(waiting.elapsed() < Duration::from_secs(20), "the expired image was not dropped\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(sample(&text, "infer_images_total"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "infer_batch_size_count"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "infer_queue_depth"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "infer_errors_total{kind=\"timeout\"}"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "infer_http_requests_total{route=\"/v1/infer\",status=\"504\"}"), Some(1.0), "{text}");

    assert_all_frogs(&call(&router, post("/v1/infer", json!({"images": [frog()]}))).await, 1);
}

/// Raw HTTP/1.1 over TCP: what a client sees, byte for byte.
fn connect(service: &RunningService) -> TcpStream {
    let stream = TcpStream::connect(service.addr()).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
    stream.set_write_timeout(Some(Duration::from_secs(30))).expect("write timeout");
    stream
}

/// Reads one answer: status, head (lower-cased), body (by its Content-Length).
fn read_answer(stream: &mut TcpStream) -> (u16, String, String) {
    let mut raw = Vec::new();
    let mut byte = [0u8];
    while !raw.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => raw.push(byte[0]),
            other => panic!("the answer's head broke off ({other:?}) after {:?}", String::from_utf8_lossy(&raw)),
        }
    }
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("{head}"));
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length: {head}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("the answer's body");
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_written_before_reading_still_gets_its_413() {
    let service = start(|config| config.max_body_bytes = 1 << 20).await;
    let body_len = 24 << 20; // far more than the socket buffers hold, so unread bytes would be left
    for chunked in [false, true] {
        let mut stream = connect(&service);
        let answer = tokio::task::spawn_blocking(move || {
            let framing =
                if chunked { "Transfer-Encoding: chunked".to_owned() } else { format!("Content-Length: {body_len}") };
            let head =
                format!("POST /v1/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{framing}\r\n\r\n");
            stream.write_all(head.as_bytes()).expect("head written");
            let mut body = br#"{"images": [""#.to_vec();
            body.resize(body_len - 3, b'A');
            body.extend_from_slice(br#""]}"#);
            // The whole body first, as a simple client does, and only then the answer.
            for piece in body.chunks(64 << 10) {
                let written = if chunked {
                    stream
                        .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                        .and_then(|()| stream.write_all(piece))
                        .and_then(|()| stream.write_all(b"\r\n"))
                } else {
                    stream.write_all(piece)
                };
                written.expect("the server reads the whole body rather than resetting the connection");
            }
            if chunked {
                stream.write_all(b"0\r\n\r\n").expect("last chunk written");
            }
            let answer = read_answer(&mut stream);
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).expect("the server closes the connection cleanly, without a reset");
            assert!(rest.is_empty(), "{} bytes after the answer", rest.len());
            answer
        })
        .await
        .expect("client task");
        let (status, head, body) = answer;
        assert_eq!(status, 413, "chunked {chunked}: {head}");
        assert!(head.contains("connection: close"), "{head}");
        let error: ErrorResponse = serde_json::from_str(&body).expect("JSON error body");
        assert!(error.error.contains("length limit"), "{}", error.error);
    }
    // And the service keeps serving.
    let answer: LegacyInferResponse = reqwest::Client::new()
        .post(service.url())
        .json(&json!({"image": frog()}))
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("JSON");
    assert_eq!(answer.inferred, "frog");
    service.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_slower_than_the_deadline_gets_504() {
    let service = start(|config| config.request_timeout = Duration::from_millis(300)).await;
    let mut stream = connect(&service);
    let (status, head, body) = tokio::task::spawn_blocking(move || {
        let body = json!({"images": [frog()]}).to_string();
        let head = format!(
            "POST /v1/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).expect("head written");
        stream.write_all(&body.as_bytes()[..10]).expect("start of the body written");
        // ...and the rest never comes: the answer must not wait for it.
        read_answer(&mut stream)
    })
    .await
    .expect("client task");
    assert_eq!(status, 504, "{head}");
    assert!(head.contains("connection: close"), "the body was not read, so the connection ends: {head}");
    let error: ErrorResponse = serde_json::from_str(&body).expect("JSON error body");
    assert!(error.error.contains("request timeout of 300 ms"), "{}", error.error);
    service.shutdown().await.expect("clean shutdown");
}
