//! An image the inference service fails on must not wedge its partition: the infer-consumer
//! retries it a bounded number of times, isolates it by splitting its batch, dead-letters it
//! (`inference_failed`) and labels and stores everything else. A service that fails every image
//! must not empty the topic into the dead letters either.
//!
//! The real `infer-service` (MobileNetV2 int8) answers; a stub proxy in front of it plays the
//! faults the real service cannot be made to show on one chosen image: an HTTP 500, and a
//! request that hangs past the consumer's timeout. Needs the shared stack (Kafka, MongoDB), the
//! ONNX Runtime library and the assets, as `end_to_end.rs` does.

mod common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use common::stub::{Fault, Stub};
use common::{png_base64, record, Run};
use iot_bench::testkit::Children;
use iot_ingest::consumer::infer::InferConsumerArgs;
use iot_ingest::metrics::{ConsumerMetrics, Role};

const RECORDS: i64 = 200;
/// The record whose image the stub fails on.
const MARKED: i64 = 137;
/// Longest wait for a run to settle, from its last record sent.
const SETTLE: Duration = Duration::from_secs(90);

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
) -> (iot_ingest::shutdown::CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let mut flags = vec!["infer-consumer".to_owned()];
    flags.extend(run.consumer_flags());
    // Light load: the machine running the tests is small, and a request that waits too long in
    // the service's queue counts as a failed try.
    flags.extend([format!("--infer-url={infer_url}"), "--in-flight=2".to_owned(), "--images-per-request=8".to_owned()]);
    flags.extend(extra.iter().map(|f| f.to_string()));
    let args = InferConsumerArgs::try_parse_from(flags).expect("infer-consumer flags");
    let trigger = iot_ingest::shutdown::CancellationToken::new();
    let shutdown = trigger.clone();
    let task = tokio::spawn(iot_ingest::consumer::infer::run(args, ConsumerMetrics::new(Role::Infer), shutdown));
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
    let stub = Stub::new(service, fault);
    stub.mark(marked);
    let url = stub.clone().serve().await;
    let (stop, consumer) = start_consumer(&run, &url, extra_flags);

    let expected: HashSet<String> = (0..RECORDS).filter(|&id| id != MARKED).map(doc_id).collect();
    run.wait_for("every other record stored, the marked one dead-lettered, offsets committed", SETTLE, || async {
        run.stored_with("Inferred").await.len() == expected.len()
            && run.dead_letter_count() >= 1
            && run.committed_to_the_end()
    })
    .await;
    stop.cancel();
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
    let stub = Stub::new(service, Fault::InternalError);
    stub.fail_all.store(true, Ordering::SeqCst);
    let url = stub.clone().serve().await;
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
    stop.cancel();
    consumer.await.expect("consumer task").expect("consumer ends cleanly");
    assert_eq!(run.dead_letter_count(), 0, "dead letters from a service that only failed for a while");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_image_the_service_fails_on_is_dead_lettered_and_the_rest_stored() {
    common::show_logs();
    let port = iot_bench::testkit::free_port();
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
