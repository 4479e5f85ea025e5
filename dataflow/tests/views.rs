//! The monitoring views of `dataflow count` (`--confusion`, `--classes`, `--windows`, `--drift`)
//! against an independent computation over generated records with known answers: labels with
//! commas and quotes, a producer with no judged record, windows with no records, every form of
//! `InferredAt` that mongoexport and producers write, and records whose time cannot be read.
//! Read from a JSON Lines file, a JSON array, a 2x2 cluster and MongoDB, the files are the same.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use statrs::distribution::{ChiSquared, ContinuousCDF};

const HOUR: i64 = 3_600_000;
const LABELS: [&str; 5] = ["cat", "dog", "bird", "a,\"quoted\" label", "<ship>"];
/// Per producer, the hours (after the base time) in which it sends records; the gaps are
/// windows with no records.
const SCHEDULE: [(&str, &[i64]); 5] =
    [("cam-a", &[0, 1, 2, 5, 9]), ("cam \"b\", east", &[0, 1, 6]), ("cam,c", &[3, 4]), ("idle", &[0]), ("late", &[7])];
/// The drift reference: each producer's windows within two hours of its first.
const REFERENCE_HOURS: i64 = 2;

#[derive(Clone, Debug)]
enum Time {
    At(i64),
    Unreadable,
    Missing,
}

#[derive(Clone, Debug)]
struct Rec {
    id: String,
    producer: String,
    truth: &'static str,
    inferred: Option<&'static str>,
    time: Time,
}

fn base() -> i64 {
    bson::DateTime::parse_rfc3339_str("2026-11-01T00:00:00Z").unwrap().timestamp_millis()
}

fn generate(seed: u64) -> Vec<Rec> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut records = Vec::new();
    for (producer, hours) in SCHEDULE {
        for &hour in hours {
            for _ in 0..rng.random_range(20..60) {
                let truth = LABELS[rng.random_range(0..LABELS.len())];
                // `idle` has records but none judged; cam-a's model drifts to "dog" from hour 5.
                let pending = producer == "idle" || rng.random_bool(0.05);
                let inferred = if pending {
                    None
                } else if producer == "cam-a" && hour >= 5 && rng.random_bool(0.6) {
                    Some("dog")
                } else if rng.random_bool(0.3) {
                    Some(LABELS[rng.random_range(0..LABELS.len())])
                } else {
                    Some(truth)
                };
                let time = match (inferred, rng.random_range(0..50)) {
                    (None, _) => Time::Missing,
                    (Some(_), 0) => Time::Unreadable,
                    (Some(_), 1) => Time::Missing,
                    _ => Time::At(base() + hour * HOUR + rng.random_range(0..HOUR)),
                };
                let id = format!("{producer}/{}", records.len());
                records.push(Rec { id, producer: producer.to_owned(), truth, inferred, time });
            }
        }
    }
    records
}

/// A record as mongoexport or a producer may have written it: `InferredAt` in one of five forms.
fn json(record: &Rec, form: usize) -> serde_json::Value {
    let mut value = serde_json::json!({ "_id": record.id, "ProducerID": record.producer, "GroundTruth": record.truth });
    if let Some(label) = record.inferred {
        value["Inferred"] = label.into();
    }
    let rfc3339 = |ms: i64| bson::DateTime::from_millis(ms).try_to_rfc3339_string().unwrap();
    match record.time {
        Time::At(ms) => {
            value["InferredAt"] = match form % 5 {
                0 => serde_json::json!({ "$date": rfc3339(ms) }),
                1 => serde_json::json!({ "$date": { "$numberLong": ms.to_string() } }),
                2 => serde_json::json!({ "$date": ms }),
                3 => rfc3339(ms).into(),
                _ => ms.into(),
            }
        }
        Time::Unreadable => value["InferredAt"] = "soon".into(),
        Time::Missing => {}
    }
    value
}

fn bson_document(record: &Rec) -> bson::Document {
    let mut document = bson::doc! { "_id": &record.id, "ProducerID": &record.producer, "GroundTruth": record.truth };
    if let Some(label) = record.inferred {
        document.insert("Inferred", label);
    }
    match record.time {
        Time::At(ms) => drop(document.insert("InferredAt", bson::DateTime::from_millis(ms))),
        Time::Unreadable => drop(document.insert("InferredAt", "soon")),
        Time::Missing => {}
    }
    document
}

// ---- The expected files, computed record by record --------------------------------------------

type Rows = Vec<Vec<String>>;

fn rate(numerator: u64, denominator: u64) -> String {
    if denominator == 0 {
        String::new()
    } else {
        format!("{:.6}", numerator as f64 / denominator as f64)
    }
}

fn timestamp(ms: i64) -> String {
    bson::DateTime::from_millis(ms).try_to_rfc3339_string().unwrap()
}

fn window_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR) * HOUR
}

/// `(scope, truth, inferred) -> count`, the scope "" for all producers.
fn confusion(records: &[Rec]) -> BTreeMap<(String, String, String), u64> {
    let mut cells = BTreeMap::new();
    for record in records {
        let Some(inferred) = record.inferred else { continue };
        for scope in ["", record.producer.as_str()] {
            *cells.entry((scope.to_owned(), record.truth.to_owned(), inferred.to_owned())).or_default() += 1;
        }
    }
    cells
}

fn expected_confusion(records: &[Rec]) -> Rows {
    confusion(records)
        .into_iter()
        .map(|((scope, truth, inferred), n)| vec![scope, truth, inferred, n.to_string()])
        .collect()
}

fn expected_classes(records: &[Rec]) -> Rows {
    let cells = confusion(records);
    let scopes: BTreeSet<&String> = cells.keys().map(|(scope, _, _)| scope).collect();
    let mut rows = Vec::new();
    for scope in scopes {
        let mine: Vec<_> = cells.iter().filter(|((s, _, _), _)| s == scope).collect();
        let classes: BTreeSet<&String> = mine.iter().flat_map(|((_, t, i), _)| [t, i]).collect();
        for class in classes {
            let support: u64 = mine.iter().filter(|((_, t, _), _)| t == class).map(|(_, n)| **n).sum();
            let predicted: u64 = mine.iter().filter(|((_, _, i), _)| i == class).map(|(_, n)| **n).sum();
            let correct: u64 = mine.iter().filter(|((_, t, i), _)| t == class && i == class).map(|(_, n)| **n).sum();
            let precision = (predicted > 0).then(|| correct as f64 / predicted as f64);
            let recall = (support > 0).then(|| correct as f64 / support as f64);
            let f1 = match (precision, recall) {
                (Some(p), Some(r)) if p + r > 0.0 => format!("{:.6}", 2.0 * p * r / (p + r)),
                (Some(_), Some(_)) => format!("{:.6}", 0.0),
                _ => String::new(),
            };
            let decimal = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
            rows.push(vec![
                scope.clone(),
                class.clone(),
                support.to_string(),
                predicted.to_string(),
                correct.to_string(),
                decimal(precision),
                decimal(recall),
                f1,
            ]);
        }
    }
    rows
}

fn timed(records: &[Rec]) -> impl Iterator<Item = (&Rec, &'static str, i64)> {
    records.iter().filter_map(|r| match (r.inferred, &r.time) {
        (Some(label), Time::At(ms)) => Some((r, label, window_of(*ms))),
        _ => None,
    })
}

fn expected_windows(records: &[Rec]) -> Rows {
    let mut windows = BTreeMap::<(String, i64), (u64, u64)>::new();
    for (record, label, window) in timed(records) {
        let entry = windows.entry((record.producer.clone(), window)).or_default();
        entry.0 += 1;
        entry.1 += u64::from(label != record.truth);
    }
    windows
        .into_iter()
        .map(|((producer, window), (judged, errors))| {
            vec![producer, timestamp(window), judged.to_string(), errors.to_string(), rate(errors, judged)]
        })
        .collect()
}

fn expected_drift(records: &[Rec], alpha: f64) -> Rows {
    let mut by_producer = BTreeMap::<String, Vec<(i64, &str)>>::new();
    for (record, label, window) in timed(records) {
        by_producer.entry(record.producer.clone()).or_default().push((window, label));
    }
    let mut rows = Vec::new();
    for (producer, labels) in by_producer {
        let first = labels.iter().map(|(w, _)| *w).min().unwrap();
        let latest = labels.iter().map(|(w, _)| *w).max().unwrap();
        let end = first + REFERENCE_HOURS * HOUR;
        let distribution = |keep: &dyn Fn(i64) -> bool| {
            let mut counts = BTreeMap::<&str, f64>::new();
            labels.iter().filter(|(w, _)| keep(*w)).for_each(|(_, l)| *counts.entry(l).or_default() += 1.0);
            counts
        };
        let reference = distribution(&|w| w < end);
        let window = if latest < end { BTreeMap::new() } else { distribution(&|w| w == latest) };
        let (n_ref, n_win) = (reference.values().sum::<f64>(), window.values().sum::<f64>());
        let mut row =
            vec![producer, timestamp(first), timestamp(end), n_ref.to_string(), timestamp(latest), n_win.to_string()];
        if n_win == 0.0 {
            row.extend(std::iter::repeat_n(String::new(), 5));
        } else {
            let classes: BTreeSet<&str> = reference.keys().chain(window.keys()).copied().collect();
            let (mut chi, mut bc) = (0.0, 0.0);
            for class in &classes {
                let (a, b) = (reference.get(class).copied().unwrap_or(0.0), window.get(class).copied().unwrap_or(0.0));
                let expected_a = n_ref * (a + b) / (n_ref + n_win);
                let expected_b = n_win * (a + b) / (n_ref + n_win);
                chi += (a - expected_a).powi(2) / expected_a + (b - expected_b).powi(2) / expected_b;
                bc += (a / n_ref * b / n_win).sqrt();
            }
            let dof = classes.len() - 1;
            let p = if dof == 0 { 1.0 } else { ChiSquared::new(dof as f64).unwrap().sf(chi) };
            row.extend([
                format!("{chi:.6}"),
                dof.to_string(),
                format!("{p:.6e}"),
                format!("{:.6}", (1.0 - bc).max(0.0).sqrt()),
                (p < alpha).to_string(),
            ]);
        }
        rows.push(row);
    }
    rows
}

// ---- Running and comparing ----------------------------------------------------------------------

const VIEWS: [&str; 4] = ["confusion", "classes", "windows", "drift"];

/// The view flags, writing each view to `<dir>/<prefix>.<view>.csv`.
fn view_args(dir: &Path, prefix: &str) -> Vec<String> {
    let mut args: Vec<String> = ["--window", "1h", "--reference", "2h"].map(String::from).to_vec();
    for view in VIEWS {
        args.push(format!("--{view}"));
        args.push(dir.join(format!("{prefix}.{view}.csv")).display().to_string());
    }
    args
}

fn read_rows(path: &Path, header: &[&str]) -> Rows {
    let mut reader = csv::Reader::from_path(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), header, "{}", path.display());
    reader.records().map(|r| r.unwrap().iter().map(str::to_owned).collect()).collect()
}

/// Equal cell by cell; numbers with decimals may differ in the last printed digit (the sums of
/// floating-point terms are added in another order).
fn assert_rows(actual: &Rows, expected: &Rows, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: rows\nactual {actual:#?}\nexpected {expected:#?}");
    for (a, e) in actual.iter().zip(expected) {
        let close = |x: &String, y: &String| match (x.parse::<f64>(), y.parse::<f64>()) {
            (Ok(x), Ok(y)) if x.is_finite() && y.is_finite() => (x - y).abs() <= 2e-6 * x.abs().max(1e-300).max(1.0),
            _ => x == y,
        };
        assert!(a.len() == e.len() && a.iter().zip(e).all(|(x, y)| x == y || close(x, y)), "{what}: {a:?} != {e:?}");
    }
}

fn check_views(dir: &Path, prefix: &str, records: &[Rec]) {
    let path = |view: &str| dir.join(format!("{prefix}.{view}.csv"));
    let drift_header = [
        "ProducerID",
        "reference_start",
        "reference_end",
        "reference_count",
        "window_start",
        "window_count",
        "chi_square",
        "degrees_of_freedom",
        "p_value",
        "hellinger",
        "drifted",
    ];
    let checks: [(&str, &[&str], Rows); 4] = [
        ("confusion", &["ProducerID", "GroundTruth", "Inferred", "count"], expected_confusion(records)),
        (
            "classes",
            &["ProducerID", "class", "support", "predicted", "correct", "precision", "recall", "f1"],
            expected_classes(records),
        ),
        ("windows", &["ProducerID", "window_start", "judged", "errors", "error_rate"], expected_windows(records)),
        ("drift", &drift_header, expected_drift(records, 0.01)),
    ];
    for (view, header, expected) in checks {
        assert_rows(&read_rows(&path(view), header), &expected, &format!("{prefix} {view}"));
    }
}

fn untimed(records: &[Rec]) -> usize {
    records.iter().filter(|r| r.inferred.is_some() && !matches!(r.time, Time::At(_))).count()
}

#[test]
fn views_from_files_and_a_cluster_equal_an_independent_computation() {
    let records = generate(12);
    let dir = tempfile::tempdir().unwrap();
    let lines: String = records.iter().enumerate().map(|(i, r)| json(r, i).to_string() + "\n").collect();
    let jsonl = dir.path().join("records.jsonl");
    std::fs::write(&jsonl, lines).unwrap();
    let array = dir.path().join("records.json");
    let values: Vec<_> = records.iter().enumerate().map(|(i, r)| json(r, i + 1)).collect();
    std::fs::write(&array, serde_json::to_string_pretty(&values).unwrap()).unwrap();

    // The generated data has what the views must handle.
    assert!(records.iter().any(|r| r.truth.contains(',') && r.truth.contains('"')));
    assert!(untimed(&records) > 0);
    let drift = expected_drift(&records, 0.01);
    assert!(drift.iter().any(|row| row[10] == "true") && drift.iter().any(|row| row[10].is_empty()), "{drift:?}");

    for (input, workers, prefix) in [(&jsonl, "2", "lines"), (&array, "1", "array")] {
        let input = input.display().to_string();
        let mut args = vec!["--input".to_owned(), input, "-w".to_owned(), workers.to_owned()];
        args.extend(view_args(dir.path(), prefix));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (_, output) = count(dir.path(), &format!("{prefix}.csv"), &args);
        check_views(dir.path(), prefix, &records);
        let log = stderr(&output);
        assert!(
            log.contains(&format!("{} inferred record(s) have no readable InferredAt", untimed(&records))),
            "{log}"
        );
    }

    let mut args = vec!["--input".to_owned(), jsonl.display().to_string()];
    args.extend(view_args(dir.path(), "cluster"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    count_on_cluster(dir.path(), 2, Some(2), &args);
    check_views(dir.path(), "cluster", &records);
}

/// Generated records stored with BSON dates in a fresh database.
fn stored(seed: u64, prefix: &str) -> (Vec<Rec>, TestDb) {
    let records = generate(seed);
    let db = TestDb::new(&mongo_uri(), prefix);
    let collection = db.client.database(&db.name).collection::<bson::Document>("inferences");
    collection.insert_many(records.iter().map(bson_document)).run().unwrap();
    (records, db)
}

#[test]
fn views_from_mongodb_dates_equal_an_independent_computation() {
    let (records, db) = stored(13, "dataflow_views");
    let dir = tempfile::tempdir().unwrap();
    let uri = mongo_uri();
    let mut args: Vec<String> = ["--mongo-uri", &uri, "--db", &db.name, "-w", "2"].map(String::from).to_vec();
    args.extend(view_args(dir.path(), "mongo"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    count(dir.path(), "mongo.csv", &args);
    check_views(dir.path(), "mongo", &records);
}

#[test]
fn view_flags_that_do_not_fit_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let confusion = dir.path().join("c.csv").display().to_string();
    for (args, expected) in [
        (vec!["--window", "2h", "--reference", "1h"], "--reference (1h) is shorter than one --window (2h)"),
        (vec!["--window", "soon"], "invalid value 'soon' for '--window <DURATION>'"),
        (vec!["--drift-alpha", "1.5"], "is not a probability"),
        (vec!["--reference-file", "/nonexistent.csv"], "cannot read the reference file /nonexistent.csv"),
    ] {
        let output = dataflow()
            .args(["count", "--input", "data/mongo_entries.json", "--confusion", &confusion])
            .args(&args)
            .current_dir(iot_bench::testkit::workspace_root())
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{args:?}: {}", stderr(&output));
    }
    assert!(!Path::new(&confusion).exists());
}

// ---- --follow keeps the views equal to a batch run ----------------------------------------------

/// Waits until every view file of the follower equals the batch run's, byte for byte.
fn wait_for_same_views(dir: &Path, followed: &str, batch: &str) {
    let read = |prefix: &str| VIEWS.map(|view| std::fs::read_to_string(dir.join(format!("{prefix}.{view}.csv"))).ok());
    let started = std::time::Instant::now();
    loop {
        let (now, expected) = (read(followed), read(batch));
        if now == expected {
            return;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            for ((view, now), expected) in VIEWS.iter().zip(now).zip(expected) {
                assert_eq!(now, expected, "{followed} {view} after 30 s");
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn batch_views(dir: &Path, uri: &str, db: &str, prefix: &str) {
    let mut args: Vec<String> = ["--mongo-uri", uri, "--db", db].map(String::from).to_vec();
    args.extend(view_args(dir, prefix));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    count(dir, &format!("{prefix}.csv"), &args);
}

/// Inserts, label flips (which move a record to another window), corrections without a new
/// time, and deletes, through the write contract.
fn change_records(db: &mongodb::sync::Database, records: &[Rec], round: i64) {
    use iot_schema::write;
    let at = |hour: i64, n: usize| bson::DateTime::from_millis(base() + hour * HOUR + n as i64 * 1000);
    for n in 0..30 {
        let id = format!("new-{round}/{n}");
        let msg = message(&id, "cam \"new\", west", LABELS[n % LABELS.len()]);
        apply(db, write::store_metadata(&msg, at(10 + round, n)));
        if n % 3 != 0 {
            apply(db, write::store_inference(&msg, LABELS[(n + round as usize) % 3], "model-v2", at(10 + round, n)));
        }
    }
    for (n, record) in records.iter().filter(|r| r.inferred.is_some()).skip(round as usize * 60).take(60).enumerate() {
        let msg = message(&record.id, &record.producer, record.truth);
        match n % 4 {
            0 => apply(db, write::store_inference(&msg, "dog", "model-v2", at(11 + round, n))),
            1 => apply(db, write::set_inferred(&record.id, record.truth)),
            2 => apply(db, write::mark_deleted(&record.id)),
            _ => apply(db, write::store_inference(&msg, "<ship>", "model-v2", at(3, n))),
        }
    }
}

#[test]
fn a_follower_keeps_every_view_equal_to_a_batch_run_across_a_restart() {
    let (records, db) = stored(14, "dataflow_views_follow");
    let dir = tempfile::tempdir().unwrap();
    let uri = mongo_uri();
    let checkpoints = dir.path().join("checkpoints");
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let mut args: Vec<String> =
        ["--mongo-uri", &uri, "--db", &db.name, "-w", "2", "--checkpoint-dir"].map(String::from).to_vec();
    args.push(checkpoints.display().to_string());
    args.extend(view_args(dir.path(), "follow"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = dir.path().join("follow.csv");

    let follower = start_follower_logged(&args, &output, &log("first"));
    wait_for_log(&log("first"), "following changes", std::time::Duration::from_secs(60));
    batch_views(dir.path(), &uri, &db.name, "loaded");
    wait_for_same_views(dir.path(), "follow", "loaded");

    change_records(&db.database(), &records, 0);
    batch_views(dir.path(), &uri, &db.name, "changed");
    for view in VIEWS {
        let read = |prefix: &str| std::fs::read_to_string(dir.path().join(format!("{prefix}.{view}.csv"))).unwrap();
        assert_ne!(read("loaded"), read("changed"), "the changes change every view, {view} included");
    }
    wait_for_same_views(dir.path(), "follow", "changed");

    // Stopped (a checkpoint is written), changed while down, restarted from the checkpoint.
    follower.signal(iot_bench::testkit::Signal::Term);
    wait_for_log(&log("first"), "stopped;", std::time::Duration::from_secs(30));
    drop(follower);
    change_records(&db.database(), &records, 1);
    let _follower = start_follower_logged(&args, &output, &log("second"));
    wait_for_log(&log("second"), "from checkpoint", std::time::Duration::from_secs(60));
    batch_views(dir.path(), &uri, &db.name, "restarted");
    wait_for_same_views(dir.path(), "follow", "restarted");
}
