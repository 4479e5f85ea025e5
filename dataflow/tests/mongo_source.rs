//! `dataflow count` against the real MongoDB-compatible server of the local stack
//! (`scripts/stack up`): 100,000 generated documents with known per-producer errors.

mod common;

use bson::doc;
use common::*;
use iot_bench::Spec;

#[test]
fn every_worker_layout_reads_the_whole_collection_exactly_once() {
    let db = TestDb::new(&mongo_uri(), "dataflow_test");
    let spec = Spec { records: 100_000, producers: 40, awkward_names: true, seed: 3, ..Spec::default() };
    let answer = iot_bench::mongo::load(&mongo_uri(), &db.name, "inferences", &spec, |_| {}).unwrap();
    // Records outside the schema are reported, not counted; tombstones are left out.
    let collection = db.client.database(&db.name).collection::<bson::Document>("inferences");
    collection
        .insert_many([
            doc! { "_id": "bad/1", "ProducerID": "producer-000", "GroundTruth": 3, "Inferred": "cat" },
            doc! { "_id": "bad/2", "GroundTruth": "cat", "Inferred": "dog" },
            doc! { "_id": "gone/1", "ProducerID": "producer-000", "GroundTruth": "cat", "Inferred": "dog", "Deleted": true },
        ])
        .run()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let uri = mongo_uri();
    let args = ["--mongo-uri", uri.as_str(), "--db", db.name.as_str()];
    for workers in ["1", "3"] {
        let mut with_workers = args.to_vec();
        with_workers.extend(["-w", workers]);
        let (counts, output) = count(dir.path(), "mongo.csv", &with_workers);
        assert_eq!(counts, expected(&answer), "-w {workers}");
        let log = stderr(&output);
        assert!(log.contains("counted 100003 records"), "{log}");
        assert!(log.contains("skipped 2 malformed record(s)"), "{log}");
        assert!(log.contains("bad/1: GroundTruth is not a string"), "{log}");
        assert!(log.contains("1 deleted"), "{log}");
    }
    assert_eq!(count_on_cluster(dir.path(), 2, Some(2), &args), expected(&answer), "2 processes x 2 workers");
}

#[test]
fn an_unreachable_server_is_a_clear_error_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let output = dataflow()
        .args(["count", "--mongo-uri", "mongodb://127.0.0.1:9", "--mongo-timeout", "2", "-w", "2", "--output"])
        .arg(dir.path().join("never.csv"))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let log = stderr(&output);
    assert!(log.contains("cannot read iot.inferences from MongoDB at mongodb://127.0.0.1:9"), "{log}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert!(!dir.path().join("never.csv").exists(), "no partial CSV");
}

#[test]
fn the_password_of_the_uri_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    for follow in [false, true] {
        let mut command = dataflow();
        command.args(["count", "--mongo-uri", "mongodb://user:SECRETPW@127.0.0.1:1/", "--mongo-timeout", "1"]);
        if follow {
            command.arg("--follow");
        }
        let output = command.arg("--output").arg(dir.path().join("never.csv")).output().unwrap();
        assert_eq!(output.status.code(), Some(iot_schema::exit::FAILED.into()));
        let said = format!("{}{}", stderr(&output), String::from_utf8_lossy(&output.stdout));
        assert!(said.contains("mongodb://user:****@127.0.0.1:1/"), "the server is still named: {said}");
        assert!(!said.contains("SECRETPW"), "{said}");
    }
}

/// Ids whose JSON text orders unlike the strings (escapes, a quote right after a shared prefix,
/// characters below `"`), ids with a NUL, and ids of other types: each worker layout must read each
/// record once, through whichever `_id` ranges the server is asked for.
#[test]
fn ranges_of_ids_that_need_escaping_or_are_not_strings_lose_and_repeat_nothing() {
    const PARTS: [&str; 14] = [
        "",
        "a",
        "a!",
        "a \"",
        "q\"",
        "back\\slash",
        "é",
        "😀",
        "\u{2028}",
        "<&>",
        "new\nline",
        "\u{1}",
        "tab\t",
        "nul\0",
    ];
    let db = TestDb::new(&mongo_uri(), "dataflow_test");
    let collection = db.client.database(&db.name).collection::<bson::Document>("inferences");
    let mut errors = std::collections::BTreeMap::new();
    let records = 24_000; // above the size that MongoDB's `$sample` planning splits
    let documents: Vec<_> = (0..records)
        .map(|i: i32| {
            let id = match i % 10 {
                7 => bson::Bson::ObjectId(bson::oid::ObjectId::new()),
                8 if i % 20 == 8 => bson::Bson::Int32(i),
                8 => bson::Bson::Double(f64::from(i) + 0.5),
                9 if i % 20 == 9 => bson::Bson::Document(doc! { "n": i }),
                _ => bson::Bson::String(format!("{}{i}{}", PARTS[i as usize % 14], PARTS[i as usize / 14 % 14])),
            };
            let (producer, inferred) = (format!("producer-{}", i % 5), if i % 3 == 0 { "dog" } else { "cat" });
            *errors.entry(producer.clone()).or_insert(0u64) += u64::from(inferred != "cat");
            doc! { "_id": id, "ProducerID": producer, "GroundTruth": "cat", "Inferred": inferred }
        })
        .collect();
    collection.insert_many(documents).run().unwrap();

    let dir = tempfile::tempdir().unwrap();
    let uri = mongo_uri();
    for workers in ["1", "2", "5"] {
        let args = ["--mongo-uri", uri.as_str(), "--db", db.name.as_str(), "-w", workers];
        let (counts, output) = count(dir.path(), "mongo.csv", &args);
        assert_eq!(counts, errors, "-w {workers}");
        let log = stderr(&output);
        assert!(log.contains(&format!("counted {records} records")), "-w {workers}: {log}");
        if workers != "1" {
            assert!(log.contains("split into _id ranges"), "-w {workers} read no _id ranges: {log}");
        }
    }
}
