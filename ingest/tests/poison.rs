//! An image the inference service fails on must not wedge its partition: the infer-consumer
//! retries it a bounded number of times, isolates it by splitting its batch, dead-letters it
//! (`inference_failed`) and labels and stores everything else. A service that fails every image
//! must not empty the topic into the dead letters either.
//!
//! The real `infer_service` (MobileNetV2 int8) answers; a stub proxy in front of it plays the
//! faults the real service cannot be made to show on one chosen image: an HTTP 500, and a
//! request that hangs past the consumer's timeout. Needs the shared stack (Kafka, MongoDB), the
//! ONNX Runtime library and the assets, as `end_to_end.rs` does.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use common::{png_base64, record, Run};
use iot_bench::testkit::Children;
use iot_ingest::consumer::infer::InferConsumerArgs;
use iot_ingest::metrics::{Metrics, Role};

const RECORDS: i64 = 200;
/// The record whose image the stub fails on.
const MARKED: i64 = 137;
/// Longest wait for a run to settle, from its last record sent.
const SETTLE: Duration = Duration::from_secs(90);

/// What the stub does with a request that contains the marked image.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// HTTP 500, as a model that crashes on the image would.
    InternalError,
    /// No answer at all, as a model that hangs on it would.
    Hang,
}

/// The stub in front of the real service.
struct Stub {
    service: String,
    http: reqwest::Client,
    /// Base64 of the image to fail on.
    marked: Option<String>,
    fault: Fault,
    /// While set, every inference request fails (HTTP 500), marked or not.
    fail_all: AtomicBool,
    /// Requests for the consumer's known-good image alone (its health check).
    canary_requests: AtomicUsize,
}

impl Stub {
    async fn handle(&self, method: Method, uri: Uri, body: Bytes) -> Response {
        let canary = format!(r#"{{"images":["{}"]}}"#, iot_ingest::infer_client::canary_image());
        if body == canary.as_bytes() {
            self.canary_requests.fetch_add(1, Ordering::SeqCst);
        }
        let marked = self.marked.as_ref().is_some_and(|m| contains(&body, m.as_bytes()));
        let is_inference = uri.path() == "/v1/infer";
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
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Serves the stub on a free port; returns its URL.
async fn serve(stub: Arc<Stub>) -> String {
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
        let stub = stub.clone();
        async move { stub.handle(method, uri, body).await }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("stub port");
    let addr: SocketAddr = listener.local_addr().expect("stub address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// Sends `RECORDS` records with distinct images through Kafka; returns the marked image.
async fn produce(run: &Run) -> String {
    let producer = run.producer(1_000_000);
    let mut marked = String::new();
    for id in 0..RECORDS {
        let data = png_base64(32, 32, id as u32);
        if id == MARKED {
            marked = data.clone();
        }
        let producer_id = format!("cam-{}", id % 4);
        run.send(&producer, &producer_id, &record(&producer_id, id, "cat", data)).await;
    }
    marked
}

/// Runs the infer-consumer in-process until `stop` is triggered.
fn start_consumer(
    run: &Run,
    infer_url: &str,
    extra: &[&str],
) -> (iot_ingest::shutdown::Trigger, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let mut flags = vec!["infer-consumer".to_owned()];
    flags.extend(run.consumer_flags());
    // Light load: the machine running the tests is small, and a request that waits too long in
    // the service's queue counts as a failed try.
    flags.extend([format!("--infer-url={infer_url}"), "--in-flight=2".to_owned(), "--images-per-request=8".to_owned()]);
    flags.extend(extra.iter().map(|f| f.to_string()));
    let args = InferConsumerArgs::try_parse_from(flags).expect("infer-consumer flags");
    let (trigger, shutdown) = iot_ingest::shutdown::channel();
    let task = tokio::spawn(iot_ingest::consumer::infer::run(args, Metrics::new(Role::Infer), shutdown));
    (trigger, task)
}

fn doc_id(id: i64) -> String {
    iot_schema::doc_id(&format!("cam-{}", id % 4), id)
}

/// One fault on the marked image: everything else is labelled and stored, the marked record is
/// dead-lettered as `inference_failed` naming the fault, and every partition is committed to
/// its end.
async fn marked_image_is_dead_lettered(service: &str, fault: Fault, extra_flags: &[&str], reason_names: &str) {
    let run = Run::new(&format!("poison-{fault:?}").to_lowercase(), &[]).await;
    let marked = produce(&run).await;
    let stub = Arc::new(Stub {
        service: service.to_owned(),
        http: reqwest::Client::new(),
        marked: Some(marked),
        fault,
        fail_all: AtomicBool::new(false),
        canary_requests: AtomicUsize::new(0),
    });
    let url = serve(stub.clone()).await;
    let (stop, consumer) = start_consumer(&run, &url, extra_flags);

    let expected: HashSet<String> = (0..RECORDS).filter(|&id| id != MARKED).map(doc_id).collect();
    run.wait_for("every other record stored, the marked one dead-lettered, offsets committed", SETTLE, || async {
        run.stored_with("Inferred").await.len() == expected.len()
            && run.dead_letter_count() >= 1
            && run.committed_to_the_end()
    })
    .await;
    stop.trigger();
    consumer.await.expect("consumer task").expect("consumer ends cleanly");

    let stored = run.stored_with("Inferred").await;
    assert_eq!(stored.keys().cloned().collect::<HashSet<_>>(), expected, "{fault:?}: stored records");
    for doc in stored.values() {
        assert_eq!(doc.get_str("ModelId"), Ok("mobilenetv2-int8-faults"), "{doc}");
    }
    let letters = run.dead_letters().await;
    assert_eq!(letters.len(), 1, "{fault:?}: exactly the marked record is dead-lettered: {letters:?}");
    let (letter, _) = &letters[0];
    assert_eq!(letter.reason_code, "inference_failed", "{letter:?}");
    assert!(letter.reason.contains(reason_names), "{fault:?}: the reason names the last error: {}", letter.reason);
    let payload: iot_schema::ImageMessage =
        serde_json::from_str(letter.payload.as_deref().expect("text payload")).expect("the original record");
    assert_eq!(payload.id, MARKED);
    assert!(stub.canary_requests.load(Ordering::SeqCst) >= 1, "dead-lettered without checking the service works");
}

/// A service that fails every request: nothing is dead-lettered, nothing is committed past the
/// failing records; once it recovers, everything is stored.
async fn failing_service_dead_letters_nothing(service: &str) {
    let run = Run::new("poison-sick", &[]).await;
    let stub = Arc::new(Stub {
        service: service.to_owned(),
        http: reqwest::Client::new(),
        marked: None,
        fault: Fault::InternalError,
        fail_all: AtomicBool::new(true),
        canary_requests: AtomicUsize::new(0),
    });
    let url = serve(stub.clone()).await;
    let (stop, consumer) = start_consumer(&run, &url, &["--infer-attempts=2"]);
    produce(&run).await;

    // The consumer narrows a batch down to single images, then finds the service failing its
    // known-good image too, several times over.
    run.wait_for("health checks of a failing service", SETTLE, || async {
        stub.canary_requests.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert_eq!(run.dead_letter_count(), 0, "a failing service emptied records into the dead letters");
    assert!(run.stored_with("Inferred").await.is_empty());
    assert!(!run.committed_to_the_end(), "records were committed without being stored");

    stub.fail_all.store(false, Ordering::SeqCst);
    run.wait_for("every record stored once the service recovered", SETTLE, || async {
        run.stored_with("Inferred").await.len() == RECORDS as usize && run.committed_to_the_end()
    })
    .await;
    stop.trigger();
    consumer.await.expect("consumer task").expect("consumer ends cleanly");
    assert_eq!(run.dead_letter_count(), 0, "dead letters from a service that only failed for a while");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_the_service_fails_on_is_dead_lettered_and_the_rest_stored() {
    common::show_logs();
    let port = common::free_port();
    let files = common::service_files(port);
    let work = tempfile::tempdir().expect("temp dir");
    let mut children = Children::new(work.path());
    children.spawn("infer-service", &files.binary, &files.args);
    let service = format!("http://127.0.0.1:{port}");
    let client = iot_ingest::infer_client::InferClient::new(&service, Duration::from_secs(2)).expect("client");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !client.healthy().await {
        let log = children.log("infer-service");
        assert!(std::time::Instant::now() < deadline, "the inference service did not come up:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The three faults at once, each on its own topic, group and database.
    tokio::join!(
        marked_image_is_dead_lettered(&service, Fault::InternalError, &[], "HTTP 500: the model crashed"),
        marked_image_is_dead_lettered(
            &service,
            Fault::Hang,
            &["--request-timeout-s=2", "--infer-attempts=2"],
            "no answer within 4 s"
        ),
        failing_service_dead_letters_nothing(&service),
    );
}
