//! `--follow --alert RULE`: alerts fire and resolve on Kafka topic `iot_alerts` (created by
//! `scripts/stack`) and at a webhook, as the records the test writes say they must: with
//! hysteresis, resolved by a corrected label and by deleted records, and never announced twice
//! by a follower killed and started again.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use iot_schema::alert::{AlertEvent, AlertState, TOPIC_ALERTS};
use iot_schema::write;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const HOUR: i64 = 3_600_000;
/// 2026-11-30T00:00:00Z: every record's InferredAt is whole hours after it.
const BASE: i64 = 1_795_996_800_000;
const ABSOLUTE: &str = "error_rate > 0.3 over 1h min 50";
const ABSOLUTE_NAME: &str = "error_rate > 0.3 over 1h min 50 clear 0.24";
const RELATIVE: &str = "error_rate > reference + 3 sd over 1h min 50";
const RELATIVE_NAME: &str = "error_rate > reference + 3 sd over 1h min 50 clear reference + 2 sd";

/// One producer's records of one hour: `judged` records of which the first `wrong` are labelled
/// wrong.
struct Batch {
    producer: &'static str,
    hour: i64,
    judged: usize,
    wrong: usize,
}

fn id(producer: &str, hour: i64, n: usize) -> String {
    format!("{producer}/{}", hour * 1000 + n as i64)
}

fn write_batch(db: &mongodb::sync::Database, batch: &Batch) {
    let at = bson::DateTime::from_millis(BASE + batch.hour * HOUR + 60_000);
    for n in 0..batch.judged {
        let msg = message(&id(batch.producer, batch.hour, n), batch.producer, "cat");
        apply(db, write::store_metadata(&msg, at));
        apply(db, write::store_inference(&msg, if n < batch.wrong { "dog" } else { "cat" }, "model-v1", at));
    }
}

/// Relabels records `range` of a batch: `wrong` or right.
fn relabel(db: &mongodb::sync::Database, producer: &str, hour: i64, range: std::ops::Range<usize>, wrong: bool) {
    for n in range {
        apply(db, write::set_inferred(&id(producer, hour, n), if wrong { "dog" } else { "cat" }));
    }
}

/// Every event of this database's follower on the shared stack's topic, in order.
fn events(db: &str) -> Vec<AlertEvent> {
    events_at(&kafka_brokers(), db)
}

fn events_at(brokers: &str, db: &str) -> Vec<AlertEvent> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "alerts-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let (low, high) = consumer.fetch_watermarks(TOPIC_ALERTS, 0, Duration::from_secs(10)).unwrap();
    let mut events = Vec::new();
    if high == low {
        return events;
    }
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(TOPIC_ALERTS, 0, Offset::Beginning).unwrap();
    consumer.assign(&assignment).unwrap();
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < Duration::from_secs(30), "reading {TOPIC_ALERTS} took too long");
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message.unwrap();
        let event: AlertEvent = serde_json::from_slice(message.payload().unwrap()).unwrap();
        if event.source.ends_with(&format!(" {db}.inferences")) {
            events.push(event);
        }
        if message.offset() + 1 >= high {
            return events;
        }
    }
}

/// `(state, rule, producer)` of each event.
fn summary(events: &[AlertEvent]) -> Vec<(AlertState, &str, &str)> {
    events.iter().map(|e| (e.state, e.rule.as_str(), e.producer.as_str())).collect()
}

/// A webhook receiver that refuses its first request (503) and keeps the bodies it accepts.
fn webhook() -> (SocketAddr, Arc<Mutex<Vec<AlertEvent>>>, std::thread::JoinHandle<()>) {
    use axum::http::StatusCode;
    let received: Arc<Mutex<Vec<AlertEvent>>> = Default::default();
    let refused = Arc::new(Mutex::new(false));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let sink = received.clone();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new().route(
                "/hook/{token}",
                axum::routing::post(move |body: String| {
                    let (sink, refused) = (sink.clone(), refused.clone());
                    async move {
                        if !std::mem::replace(&mut *refused.lock().unwrap(), true) {
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        sink.lock().unwrap().push(serde_json::from_str(&body).unwrap());
                        StatusCode::NO_CONTENT
                    }
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (addr, received, thread)
}

fn wait_for_deliveries(delivered: &Mutex<Vec<AlertEvent>>, n: usize) {
    let started = Instant::now();
    while delivered.lock().unwrap().len() < n && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the follower's CSV shows these error counts: every alert the round called for has
/// been sent by then (alerts are announced before the CSV is written).
fn wait_for_errors(output: &Path, expected: &[(&str, u64)]) {
    let expected: BTreeMap<String, u64> = expected.iter().map(|(p, n)| (p.to_string(), *n)).collect();
    let started = Instant::now();
    while iot_bench::expected::read_error_counts(output).ok().as_ref() != Some(&expected) {
        if started.elapsed() > Duration::from_secs(60) {
            let logs: Vec<String> = ["first", "second"]
                .map(|name| read_log(&output.with_file_name(format!("{name}.log"))))
                .into_iter()
                .collect();
            panic!("after 60 s the CSV is not {expected:?}; the followers' logs:\n{}", logs.join("\n---\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn alerts_fire_resolve_with_hysteresis_and_are_not_repeated_after_a_restart() {
    let db = TestDb::new(&mongo_uri(), "dataflow_alerts");
    let database = db.database();
    // cam-a: 60 judged in hour 5, 24 wrong (0.4 > 0.3): the absolute rule fires. Its only window
    // is its reference period, so the relative rule cannot judge it.
    write_batch(&database, &Batch { producer: "cam-a", hour: 5, judged: 60, wrong: 24 });
    // cam-r: 5 % wrong over its reference (hours 0 and 1), then 20 % in hour 4: 0.2 is under the
    // absolute clear level, and above 0.05 + 3 standard errors (0.141) for the relative rule.
    write_batch(&database, &Batch { producer: "cam-r", hour: 0, judged: 50, wrong: 3 });
    write_batch(&database, &Batch { producer: "cam-r", hour: 1, judged: 50, wrong: 2 });
    write_batch(&database, &Batch { producer: "cam-r", hour: 4, judged: 60, wrong: 12 });
    // cam-ok: 10 % wrong: nothing.
    write_batch(&database, &Batch { producer: "cam-ok", hour: 5, judged: 60, wrong: 6 });

    let (addr, delivered, _server) = webhook();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("counts.csv");
    let (uri, hook) = (mongo_uri(), format!("http://{addr}/hook/s3cret-token"));
    let brokers = kafka_brokers();
    let mut args = vec!["--mongo-uri", &uri, "--db", &db.name, "-w", "2", "--window", "1h", "--reference", "2h"];
    args.extend(["--alert", ABSOLUTE, "--alert", RELATIVE, "--alert-webhook", &hook, "--alert-brokers", &brokers]);
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let start = |name: &str| start_follower_logged(&args, &output, &log(name));

    let mut follower = start("first");
    wait_for_log(&log("first"), "following changes", Duration::from_secs(60));
    wait_for_errors(&output, &[("cam-a", 24), ("cam-ok", 6), ("cam-r", 17)]);
    let mut loaded =
        summary(&events(&db.name)).into_iter().map(|(s, r, p)| (s, r.to_owned(), p.to_owned())).collect::<Vec<_>>();
    loaded.sort_by(|a, b| a.2.cmp(&b.2));
    assert_eq!(
        loaded,
        [
            (AlertState::Firing, ABSOLUTE_NAME.to_owned(), "cam-a".to_owned()),
            (AlertState::Firing, RELATIVE_NAME.to_owned(), "cam-r".to_owned())
        ],
        "{}",
        read_log(&log("first"))
    );
    let fired = events(&db.name).into_iter().find(|e| e.producer == "cam-a").unwrap();
    assert_eq!((fired.judged, fired.errors, fired.threshold), (Some(60), Some(24), Some(0.3)));
    assert_eq!(fired.window_start.as_deref(), Some("2026-11-30T05:00:00Z"));

    // Six corrections: 18 / 60 = 0.3, not above the threshold but above the clear level.
    relabel(&database, "cam-a", 5, 0..6, false);
    wait_for_errors(&output, &[("cam-a", 18), ("cam-ok", 6), ("cam-r", 17)]);
    assert_eq!(events(&db.name).len(), 2, "between the levels an alert holds");
    // Four more: 14 / 60 = 0.233 <= 0.24: resolved.
    relabel(&database, "cam-a", 5, 6..10, false);
    wait_for_errors(&output, &[("cam-a", 14), ("cam-ok", 6), ("cam-r", 17)]);
    // Broken again up to 18 / 60: under the threshold, so still resolved; one more fires it.
    relabel(&database, "cam-a", 5, 6..10, true);
    wait_for_errors(&output, &[("cam-a", 18), ("cam-ok", 6), ("cam-r", 17)]);
    assert_eq!(events(&db.name).len(), 3, "a resolved alert does not fire again at its threshold");
    relabel(&database, "cam-a", 5, 0..1, true);
    wait_for_errors(&output, &[("cam-a", 19), ("cam-ok", 6), ("cam-r", 17)]);
    let after_flips = events(&db.name);
    assert_eq!(
        summary(&after_flips[2..]),
        [(AlertState::Resolved, ABSOLUTE_NAME, "cam-a"), (AlertState::Firing, ABSOLUTE_NAME, "cam-a")]
    );
    assert_eq!(after_flips[2].reason, "error rate 0.2333 <= 0.24 over 60 judged");
    assert_eq!(after_flips[2].fired_at, after_flips.iter().find(|e| e.producer == "cam-a").unwrap().fired_at);

    wait_for_deliveries(&delivered, 4);
    // Killed without a chance to save anything, and started again: both alerts still fire,
    // and nothing is announced again.
    follower.kill();
    drop(follower);
    let restarted = start("second");
    wait_for_log(&log("second"), "following changes", Duration::from_secs(60));
    wait_for_errors(&output, &[("cam-a", 19), ("cam-ok", 6), ("cam-r", 17)]);
    assert!(read_log(&log("second")).contains("alert state read back"), "{}", read_log(&log("second")));
    assert_eq!(events(&db.name).len(), 4, "a restarted follower announces nothing twice");

    // Every record of cam-r is deleted: its alert resolves, for want of records.
    for (hour, judged) in [(0, 50), (1, 50), (4, 60)] {
        for n in 0..judged {
            apply(&database, write::mark_deleted(&id("cam-r", hour, n)));
        }
    }
    wait_for_errors(&output, &[("cam-a", 19), ("cam-ok", 6)]);
    let all = events(&db.name);
    assert_eq!(summary(&all[4..]), [(AlertState::Resolved, RELATIVE_NAME, "cam-r")]);
    assert_eq!(all[4].reason, "no judged record of the producer is left in any window");
    for line in ["alert firing", "alert resolved"] {
        assert!(read_log(&log("first")).contains(line) || read_log(&log("second")).contains(line), "{line}");
    }

    // The webhook refused the first event once; the retry delivered it, and every event after it.
    wait_for_deliveries(&delivered, all.len());
    assert_eq!(*delivered.lock().unwrap(), all, "the webhook got every event, in order");
    for name in ["first", "second"] {
        let text = read_log(&log(name));
        assert!(!text.contains("s3cret-token"), "the webhook's path is never logged:\n{text}");
    }
    assert!(read_log(&log("first")).contains("alert webhook answered 503"), "{}", read_log(&log("first")));
    drop(restarted);
}

#[test]
fn a_broker_that_is_down_holds_up_neither_the_counts_nor_the_alerts_owed() {
    use iot_bench::testkit::{Part, PrivateStack};
    let dir = tempfile::tempdir().unwrap();
    let stack = PrivateStack::new(&dir.path().join("stack"));
    stack.start_missing();
    let db = TestDb::new(&mongo_uri(), "dataflow_alerts_down");
    let database = db.database();
    write_batch(&database, &Batch { producer: "cam-a", hour: 5, judged: 60, wrong: 24 });
    let output = dir.path().join("counts.csv");
    let (uri, brokers) = (mongo_uri(), stack.brokers());
    let args = ["--mongo-uri", &uri, "--db", &db.name, "--alert", ABSOLUTE, "--alert-brokers", &brokers];
    let log = dir.path().join("first.log");
    let _follower = start_follower_logged(&args, &output, &log);
    wait_for_errors(&output, &[("cam-a", 24)]);
    assert_eq!(summary(&events_at(&brokers, &db.name)), [(AlertState::Firing, ABSOLUTE_NAME, "cam-a")]);

    // Kafka dies; ten corrections bring cam-a to 14 / 60, under the clear level.
    stack.kill(Part::Kafka);
    relabel(&database, "cam-a", 5, 0..10, false);
    // The counts go on at once; the resolution waits for Kafka.
    wait_for_errors(&output, &[("cam-a", 14)]);
    wait_for_log(&log, "alert event not sent", Duration::from_secs(60));
    stack.start_missing();
    let started = Instant::now();
    while events_at(&brokers, &db.name).len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no resolution after Kafka came back:\n{}",
            read_log(&log)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        summary(&events_at(&brokers, &db.name)),
        [(AlertState::Firing, ABSOLUTE_NAME, "cam-a"), (AlertState::Resolved, ABSOLUTE_NAME, "cam-a")],
        "announced once, after the broker came back:\n{}",
        read_log(&log)
    );
}

#[test]
fn alert_flags_that_do_not_fit_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("records.jsonl");
    std::fs::write(&input, "").unwrap();
    let reference = dir.path().join("reference.csv");
    std::fs::write(&reference, "ProducerID,Inferred,count\n,cat,1\n").unwrap();
    let input = input.to_str().unwrap();
    let reference = reference.to_str().unwrap();
    let cases: [(&[&str], &str); 5] = [
        (&["--alert", ABSOLUTE], "--follow"),
        (&["--follow", "--alert", "error_rate > 2"], "below 1"),
        (&["--follow", "--alert", "error_rate > 0.3 over 90m"], "whole number of --window"),
        (&["--follow", "--alert", RELATIVE, "--reference-file", reference], "--reference DURATION"),
        (&["--follow", "--alert", ABSOLUTE, "--alert-webhook", "ftp://x/"], "http:// or https://"),
    ];
    for (args, says) in cases {
        let result = dataflow().args(["count", "--input", input]).args(args).output().unwrap();
        let text = stderr(&result);
        assert_eq!(result.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains(says), "{args:?} should say {says:?}: {text}");
    }
}
