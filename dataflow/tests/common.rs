//! Helpers shared by the integration tests: running the real `dataflow` binary and reading its CSV.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bson::Document;
use iot_bench::expected::{error_counts, read_error_counts};
use iot_bench::{generate, Answer, Spec, LABELS};
use iot_schema::write::Upsert;
use iot_schema::{write, ImageMessage};
use mongodb::sync::Database;

pub use iot_bench::testkit::{env_or, ChildGuard, TestDb};

pub fn dataflow() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dataflow"));
    command.env_remove("IOT_MONGO_URI");
    command
}

/// Runs `dataflow count` with `args` plus `--output <dir>/<name>`; returns the CSV's counts.
pub fn count(dir: &Path, name: &str, args: &[&str]) -> (BTreeMap<String, u64>, Output) {
    let output = dir.join(name);
    let result = dataflow().arg("count").args(args).arg("--output").arg(&output).output().unwrap();
    assert!(result.status.success(), "dataflow {args:?} failed:\n{}", String::from_utf8_lossy(&result.stderr));
    (read_error_counts(&output).unwrap(), result)
}

pub fn expected(answer: &Answer) -> BTreeMap<String, u64> {
    error_counts(answer)
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn mongo_uri() -> String {
    env_or("IOT_MONGO_URI", "mongodb://127.0.0.1:27017")
}

/// The shared stack's Kafka (`scripts/stack env`).
pub fn kafka_brokers() -> String {
    env_or("IOT_KAFKA_BROKERS", "127.0.0.1:9092")
}

/// Free loopback ports for a host file: one `127.0.0.1:port` line per process.
pub fn hostfile(dir: &Path, processes: usize) -> PathBuf {
    let ports = iot_bench::testkit::free_ports(processes);
    let lines: String = ports.iter().map(|port| format!("127.0.0.1:{port}\n")).collect();
    let path = dir.join("hosts.txt");
    std::fs::write(&path, lines).unwrap();
    path
}

/// Runs one `dataflow count` process per host-file line, with `workers` each (`None`: the
/// default, one per core); returns process 0's CSV counts. Every process must succeed.
pub fn count_on_cluster(dir: &Path, processes: usize, workers: Option<usize>, args: &[&str]) -> BTreeMap<String, u64> {
    let hosts = hostfile(dir, processes);
    let output = dir.join("cluster.csv");
    let children: Vec<_> = (0..processes)
        .map(|p| {
            dataflow()
                .arg("count")
                .args(args)
                .args(workers.map(|w| format!("-w={w}")))
                .args(["-n", &processes.to_string(), "-p", &p.to_string()])
                .arg("-h")
                .arg(&hosts)
                .arg("--output")
                .arg(&output)
                .arg("--connect-timeout")
                .arg("60")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (p, child) in children.into_iter().enumerate() {
        let result = child.wait_with_output().unwrap();
        assert!(result.status.success(), "process {p} failed:\n{}", stderr(&result));
    }
    read_error_counts(&output).unwrap()
}

/// A `dataflow count --follow` process, killed when dropped.
pub type Follower = ChildGuard;

pub fn start_follower(args: &[&str], output: &Path) -> Follower {
    spawn_follower(args, output, Stdio::inherit())
}

/// A follower whose stderr goes to `log`, for tests that read what it said.
pub fn start_follower_logged(args: &[&str], output: &Path, log: &Path) -> Follower {
    spawn_follower(args, output, std::fs::File::create(log).unwrap().into())
}

fn spawn_follower(args: &[&str], output: &Path, stderr: Stdio) -> Follower {
    ChildGuard::spawn(
        dataflow()
            .args(["count", "--follow", "--poll-interval-ms", "100", "--status-every", "0"])
            .args(args)
            .arg("--output")
            .arg(output)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(stderr),
    )
}

/// One follower per process of a `processes`-process cluster of one worker each on `hosts`;
/// process `p` logs to `<dir>/<name>-<p>.log`.
pub fn start_follower_cluster(args: &[&str], hosts: &Path, output: &Path, dir: &Path, name: &str) -> Vec<Follower> {
    let processes = std::fs::read_to_string(hosts).unwrap().lines().count();
    (0..processes)
        .map(|p| {
            let (n, index) = (processes.to_string(), p.to_string());
            let mut cluster = args.to_vec();
            cluster.extend(["-w", "1", "-n", &n, "-p", &index, "-h", hosts.to_str().unwrap()]);
            start_follower_logged(&cluster, output, &dir.join(format!("{name}-{p}.log")))
        })
        .collect()
}

pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until `log` contains `text`, or fails after `limit` with the log.
pub fn wait_for_log(log: &Path, text: &str, limit: Duration) {
    let started = Instant::now();
    while !read_log(log).contains(text) {
        assert!(
            started.elapsed() < limit,
            "after {limit:?} {} does not say {text:?}:\n{}",
            log.display(),
            read_log(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the CSV says `expected`, or fails after `limit` with what it said last.
pub fn wait_for_csv(path: &Path, expected: &std::collections::BTreeMap<String, u64>, limit: Duration) {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < limit {
        if let Ok(counts) = read_error_counts(path) {
            if &counts == expected {
                return;
            }
            last = Some(counts);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("after {limit:?} the CSV still says\n{last:?}\ninstead of\n{expected:?}");
}

/// The test's own model of a collection: `_id -> (producer, truth, inferred, deleted)`.
pub type Model = HashMap<String, (String, String, Option<String>, bool)>;

/// Errors per producer as a batch count of the modelled collection gives them.
pub fn errors_of(model: &Model) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for (producer, truth, inferred, deleted) in model.values() {
        if *deleted {
            continue;
        }
        let errors = counts.entry(producer.clone()).or_insert(0);
        if inferred.as_ref().is_some_and(|label| label != truth) {
            *errors += 1;
        }
    }
    counts
}

/// The message a record with `doc_id` (`producer/number`) came from.
pub fn message(doc_id: &str, producer: &str, truth: &str) -> ImageMessage {
    let id = doc_id.rsplit_once('/').and_then(|(_, id)| id.parse().ok()).unwrap();
    ImageMessage { id, producer_id: producer.into(), ground_truth: truth.into(), data: String::new(), sent_at_ms: None }
}

/// One write of the write contract to `inferences`.
pub fn apply(db: &Database, write: write::Write) {
    iot_bench::mongo::apply(db, "inferences", &write).unwrap();
}

/// A fresh database at `uri` holding `records` generated records, and the model of them.
pub fn base_at(uri: &str, records: u64, seed: u64) -> (TestDb, Model) {
    let db = TestDb::new(uri, "follow_test");
    let spec = Spec { records, producers: 12, awkward_names: true, seed, ..Spec::default() };
    iot_bench::mongo::load(uri, &db.name, "inferences", &spec, |_| {})
        .unwrap_or_else(|err| panic!("cannot load the base set ({err:#}); start the stack with scripts/stack up"));
    let mut model = Model::new();
    generate(&spec, |r| {
        model.insert(
            r.doc_id.clone(),
            (r.producer_id.to_owned(), r.ground_truth.to_owned(), r.inferred.map(str::to_owned), false),
        );
    });
    (db, model)
}

/// [`base_at`] on the shared stack's server.
pub fn base(records: u64, seed: u64) -> (TestDb, Model) {
    base_at(&mongo_uri(), records, seed)
}

/// Ids of the records the model judged right, sorted: making them wrong moves a count.
pub fn correct_ids(model: &Model) -> Vec<String> {
    let mut ids: Vec<String> = model
        .iter()
        .filter(|(_, (_, truth, inferred, deleted))| !deleted && inferred.as_ref() == Some(truth))
        .map(|(id, _)| id.clone())
        .collect();
    ids.sort();
    ids
}

/// Flips one record's label through the write contract; returns the record's new model entry.
pub fn flip(db: &Database, model: &Model, id: &str) -> (String, String, Option<String>, bool) {
    let (producer, truth, inferred, _) = model[id].clone();
    let flipped = match inferred.as_deref() == Some(truth.as_str()) {
        true => LABELS.iter().find(|l| **l != truth).unwrap().to_string(),
        false => truth.clone(),
    };
    apply(db, write::store_inference(&message(id, &producer, &truth), &flipped, "test", bson::DateTime::now()));
    (producer, truth, Some(flipped), false)
}

/// A hard delete, which the change log makes visible too.
pub fn delete(db: &Database, id: &str) {
    db.collection::<Document>("inferences").delete_one(write::by_doc_id(id)).run().unwrap();
    let Upsert { filter, update } = write::change_entry(id);
    db.collection::<Document>(&write::change_log("inferences")).update_one(filter, update).upsert(true).run().unwrap();
}

/// Several writers at once: each flips labels both ways, deletes and inserts, through the write
/// contract, and records what it did in its own model.
pub fn write_changes(db: &Database, model: &Model, writers: usize) -> Model {
    let ids: Vec<String> = {
        // Not the deleted ones: a tombstone stays one whatever is written to it later.
        let mut ids: Vec<_> = model.iter().filter(|(_, record)| !record.3).map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids
    };
    let results: Vec<Model> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let ids = &ids;
                scope.spawn(move || {
                    let mut mine = Model::new();
                    for (n, id) in ids.iter().skip(w).step_by(writers * 40).take(25).enumerate() {
                        let (producer, truth, inferred, _) = model[id].clone();
                        let now = bson::DateTime::now();
                        match n % 5 {
                            // correct -> wrong, wrong -> correct, pending -> inferred
                            0..=2 => {
                                let flipped = if inferred.as_deref() == Some(&truth) {
                                    LABELS.iter().find(|l| **l != truth).unwrap().to_string()
                                } else {
                                    truth.clone()
                                };
                                apply(
                                    db,
                                    write::store_inference(&message(id, &producer, &truth), &flipped, "test", now),
                                );
                                mine.insert(id.clone(), (producer, truth, Some(flipped), false));
                            }
                            3 => {
                                match w % 2 {
                                    0 => apply(db, write::mark_deleted(id)),
                                    _ => delete(db, id),
                                }
                                mine.insert(id.clone(), (producer, truth, inferred, true));
                            }
                            _ => {
                                let new_id = format!("new-writer-{w}/{n}");
                                let msg = message(&new_id, &format!("new-writer-{w}"), "cat");
                                apply(db, write::store_metadata(&msg, now));
                                apply(db, write::store_inference(&msg, "dog", "test", now));
                                mine.insert(new_id, (msg.producer_id, "cat".into(), Some("dog".into()), false));
                            }
                        }
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut updated = model.clone();
    results.into_iter().for_each(|changes| updated.extend(changes));
    updated
}
