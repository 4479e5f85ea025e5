//! `dataflow report`: the page written from a JSON Lines file holds every producer's figures as
//! counted independently here from the generated records, escaped, and nothing external.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use common::*;
use iot_dataflow::views::sink::timestamp;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const HOUR: i64 = 3_600_000;
/// 2026-01-01T00:00:00Z.
const START: i64 = 1_767_225_600_000;
const LABELS: [&str; 6] = ["cat", "dog", "a,\"b\"", "<fox>", "owl & emu", "yak"];
const PRODUCERS: [&str; 6] = ["cam-0", "cam-1", "cam \"7\", <b>&co</b>", "a,b & c", "gappy", "only-pending"];

/// One generated record, as the test models it.
struct Record {
    producer: &'static str,
    truth: &'static str,
    inferred: Option<&'static str>,
    inferred_at: Option<i64>,
}

/// Records in eight hourly windows; `gappy` has none in hours 3 to 5, `only-pending` is never
/// inferred, and each producer's error rate differs.
fn generate() -> Vec<Record> {
    let mut rng = SmallRng::seed_from_u64(12);
    let mut records = Vec::new();
    for (p, producer) in PRODUCERS.iter().enumerate() {
        let error_rate = 0.05 + 0.08 * p as f64;
        for hour in 0..8 {
            if *producer == "gappy" && (3..6).contains(&hour) {
                continue;
            }
            for _ in 0..rng.random_range(5..25) {
                let truth = LABELS[rng.random_range(0..LABELS.len())];
                let pending = *producer == "only-pending" || rng.random_bool(0.05);
                let inferred = (!pending).then(|| {
                    if rng.random_bool(error_rate) {
                        LABELS[rng.random_range(0..LABELS.len())]
                    } else {
                        truth
                    }
                });
                let inferred_at = inferred.map(|_| START + hour * HOUR + rng.random_range(0..HOUR));
                records.push(Record { producer, truth, inferred, inferred_at });
            }
        }
    }
    // Inferred, but with no time it can be read: counted, in no window.
    records.push(Record { producer: "cam-0", truth: "cat", inferred: Some("dog"), inferred_at: None });
    records
}

fn write_json_lines(path: &Path, records: &[Record]) {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for (n, record) in records.iter().enumerate() {
        let mut line = serde_json::json!({
            "_id": format!("{}/{n}", record.producer), "ID": n, "ProducerID": record.producer, "GroundTruth": record.truth,
        });
        if let Some(label) = record.inferred {
            line["Inferred"] = label.into();
        }
        if let Some(at) = record.inferred_at {
            line["InferredAt"] = serde_json::json!({ "$date": at });
        }
        writeln!(file, "{line}").unwrap();
    }
    writeln!(file, r#"{{"_id": "broken/1", "ProducerID": "broken"}}"#).unwrap();
    file.flush().unwrap();
}

/// `(judged, wrong, pending)`.
type Counts = (u64, u64, u64);

fn add(counts: &mut Counts, record: &Record) {
    match record.inferred {
        None => counts.2 += 1,
        Some(label) => {
            counts.0 += 1;
            counts.1 += u64::from(label != record.truth);
        }
    }
}

fn per_producer(records: &[Record]) -> BTreeMap<&'static str, Counts> {
    let mut table = BTreeMap::new();
    for record in records {
        add(table.entry(record.producer).or_default(), record);
    }
    table
}

fn per_window(records: &[Record]) -> BTreeMap<(&'static str, i64), Counts> {
    let mut windows = BTreeMap::new();
    for record in records {
        if let Some(at) = record.inferred_at {
            add(windows.entry((record.producer, at - (at - START) % HOUR)).or_default(), record);
        }
    }
    windows
}

fn rate(wrong: u64, judged: u64) -> String {
    format!("{:.2}%", wrong as f64 / judged as f64 * 100.0)
}

/// HTML text and attribute escaping, written here rather than taken from the renderer.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The text from `start` to the first `end` after it.
fn between<'a>(page: &'a str, start: &str, end: &str) -> &'a str {
    let from = page.find(start).unwrap_or_else(|| panic!("no {start:?} in the page"));
    let to = page[from..].find(end).unwrap_or_else(|| panic!("no {end:?} after {start:?}"));
    &page[from..from + to]
}

/// Runs `dataflow report` with `source` (the flags that name the records) and `-w workers`.
fn report(dir: &Path, source: &[&str], workers: &str) -> String {
    let output = dir.join(format!("out/report-{workers}.html"));
    let result = dataflow()
        .arg("report")
        .args(source)
        .args(["--window", "1h", "-w", workers, "-o"])
        .arg(&output)
        .output()
        .unwrap();
    assert!(result.status.success(), "dataflow report failed:\n{}", stderr(&result));
    std::fs::read_to_string(&output).unwrap()
}

#[test]
fn the_report_of_a_file_holds_every_producers_figures_escaped_and_self_contained() {
    let dir = tempfile::tempdir().unwrap();
    let records = generate();
    let input = dir.path().join("records.jsonl");
    write_json_lines(&input, &records);
    let source = ["--input", input.to_str().unwrap()];
    let page = report(dir.path(), &source, "1");
    check_page(&page, &records);

    // A second worker counts its share: the same page, but for when it was made.
    let two = report(dir.path(), &source, "2");
    assert_eq!(body(&two), body(&page));
}

#[test]
fn the_report_of_a_mongodb_collection_holds_the_same_figures() {
    let dir = tempfile::tempdir().unwrap();
    let records = generate();
    let db = TestDb::new(&mongo_uri(), "report_test");
    insert(&db.database(), &records);
    let uri = mongo_uri();
    let page = report(dir.path(), &["--mongo-uri", &uri, "--db", &db.name], "2");
    check_page(&page, &records);
    assert!(page.contains(&format!("{}.inferences", db.name)), "the header names the collection");
}

/// The records as the consumers store them, `InferredAt` a BSON date.
fn insert(db: &mongodb::sync::Database, records: &[Record]) {
    use iot_schema::field;
    let documents: Vec<bson::Document> = records
        .iter()
        .enumerate()
        .map(|(n, record)| {
            let mut document = bson::doc! {
                "_id": iot_schema::doc_id(record.producer, n as i64),
                field::ID: n as i64,
                field::PRODUCER_ID: record.producer,
                field::GROUND_TRUTH: record.truth,
            };
            if let Some(label) = record.inferred {
                document.insert(field::INFERRED, label);
            }
            if let Some(at) = record.inferred_at {
                document.insert(field::INFERRED_AT, bson::DateTime::from_millis(at));
            }
            document
        })
        .collect();
    db.collection::<bson::Document>("inferences").insert_many(documents).run().unwrap();
    let broken = bson::doc! { "_id": "broken/1", field::PRODUCER_ID: "broken" };
    db.collection::<bson::Document>("inferences").insert_one(broken).run().unwrap();
}

/// The page from its first section on: what does not depend on when it was made.
fn body(page: &str) -> &str {
    &page[page.find("<section id=\"producers\">").unwrap()..]
}

/// `page` against the records: nothing external, every name escaped, the header's figures,
/// one row per producer in error-rate order, and a dot per judged window.
fn check_page(page: &str, records: &[Record]) {
    for external in ["http://", "https://", "src=", "<link", "url(", "fetch("] {
        assert!(!page.contains(external), "{external:?} in the page");
    }
    for name in PRODUCERS.iter().chain(&LABELS) {
        if name.contains(['<', '&', '"']) {
            assert!(!page.contains(name), "{name:?} unescaped");
        }
    }

    let table = per_producer(records);
    let total = table.values().fold((0, 0, 0), |t, c| (t.0 + c.0, t.1 + c.1, t.2 + c.2));
    for (figure, value) in [
        ("overall-rate", rate(total.1, total.0)),
        ("figure-producers", PRODUCERS.len().to_string()),
        ("figure-records", (total.0 + total.2).to_string()),
        ("figure-judged", total.0.to_string()),
        ("figure-wrong", total.1.to_string()),
        ("figure-pending", total.2.to_string()),
        ("figure-malformed", "1".into()),
        ("figure-untimed", "1".into()),
    ] {
        assert!(page.contains(&format!("<dd id=\"{figure}\">{value}</dd>")), "{figure} is not {value}");
    }

    // One row per producer with its counts, highest error rate first, no judged record last.
    let producers = between(page, "<section id=\"producers\">", "</section>");
    let mut expected_order: Vec<(&str, Option<f64>)> =
        table.iter().map(|(p, c)| (*p, (c.0 > 0).then(|| c.1 as f64 / c.0 as f64))).collect();
    expected_order.sort_by(|a, b| match (a.1, b.1) {
        (Some(x), Some(y)) => y.total_cmp(&x).then(a.0.cmp(b.0)),
        (x, y) => y.is_some().cmp(&x.is_some()).then(a.0.cmp(b.0)),
    });
    let mut last = 0;
    for (producer, _) in &expected_order {
        let (judged, wrong, pending) = table[producer];
        let (shown, sort) = match judged {
            0 => ("–".to_owned(), "-1".to_owned()),
            _ => (rate(wrong, judged), (wrong as f64 / judged as f64).to_string()),
        };
        let row = between(producers, &format!("<tr data-producer=\"{}\">", escape(producer)), "</tr>");
        let cells = format!(
            ">{}</a></th><td class=\"num\">{judged}</td><td class=\"num\">{wrong}</td><td class=\"num\">{pending}</td><td class=\"num\" data-sort=\"{sort}\">{shown}</td>",
            escape(producer)
        );
        assert!(row.contains(&cells), "{producer}: expected {cells} in {row}");
        let at = producers.find(row).unwrap();
        assert!(at > last, "{producer} out of order");
        last = at;
    }

    // Every judged window is a dot with its own figures; gappy's line breaks at its gap.
    let charts = between(page, "<section id=\"time-series\">", "</section>");
    let windows = per_window(records);
    for producer in PRODUCERS {
        let chart = between(charts, &format!("<figcaption>{}</figcaption>", escape(producer)), "</figure>");
        let mine: Vec<_> = windows.iter().filter(|((p, _), c)| *p == producer && c.0 > 0).collect();
        assert_eq!(chart.matches("<circle").count(), mine.len(), "{producer}");
        for ((_, window), (judged, wrong, _)) in mine {
            let title = format!("{}: {} ({wrong} of {judged})", timestamp(*window), rate(*wrong, *judged));
            assert!(chart.contains(&title), "{producer}: no {title:?}");
        }
        let lines = match producer {
            "only-pending" => 0,
            "gappy" => 2,
            _ => 1,
        };
        assert_eq!(chart.matches("<polyline").count(), lines, "{producer}");
    }
}

#[test]
fn a_missing_input_is_a_usage_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("report.html");
    let result = dataflow()
        .args(["report", "--input", dir.path().join("absent.jsonl").to_str().unwrap(), "-o"])
        .arg(&output)
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(2), "{}", stderr(&result));
    assert!(stderr(&result).contains("does not exist"), "{}", stderr(&result));
    assert!(!output.exists());
}

#[test]
fn a_failed_read_keeps_the_last_page() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("report.html");
    std::fs::write(&output, "the last page").unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"[{"_id": "a/1", "ProducerID": "a", "GroundTruth": "cat"}, {"_id": "#).unwrap();
    let result = dataflow().args(["report", "--input", broken.to_str().unwrap(), "-o"]).arg(&output).output().unwrap();
    assert_eq!(result.status.code(), Some(1), "{}", stderr(&result));
    assert_eq!(std::fs::read_to_string(&output).unwrap(), "the last page");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
}
