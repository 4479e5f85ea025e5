//! `dataflow count` on files: both formats, any worker count, bad records, bad flags.

mod common;

use std::io::Write;

use common::*;
use iot_bench::{write_records, Spec};

fn spec(records: u64) -> Spec {
    Spec { records, producers: 23, awkward_names: true, seed: 7, ..Spec::default() }
}

#[test]
fn json_lines_and_json_array_give_the_producers_answer_with_any_worker_count() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(200_000);
    let lines = dir.path().join("records.jsonl");
    let array = dir.path().join("records.json");
    let answer = write_records(&spec, std::fs::File::create(&lines).unwrap(), false).unwrap();
    assert_eq!(write_records(&spec, std::fs::File::create(&array).unwrap(), true).unwrap(), answer);
    for input in [&lines, &array] {
        for workers in ["1", "2", "3"] {
            let (counts, _) = count(dir.path(), "out.csv", &["--input", input.to_str().unwrap(), "-w", workers]);
            assert_eq!(counts, expected(&answer), "{} with -w {workers}", input.display());
        }
    }
}

#[test]
fn the_shipped_sample_counts_and_reports_pending_records() {
    let dir = tempfile::tempdir().unwrap();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mongo_entries.json");
    let (counts, output) = count(dir.path(), "sample.csv", &["--input", sample, "--detail"]);
    assert!(!counts.is_empty());
    let text = std::fs::read_to_string(dir.path().join("sample.csv")).unwrap();
    assert!(text.starts_with("ProducerID,total_errors,total,error_rate\n"), "{text}");
    assert!(stderr(&output).contains("pending inference"), "{}", stderr(&output));
}

#[test]
fn malformed_records_are_skipped_named_and_the_rest_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.jsonl");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, r#"{{"_id":"a/1","ProducerID":"a","GroundTruth":"cat","Inferred":"dog"}}"#).unwrap();
    writeln!(file, r#"{{"_id":"a/2","ProducerID":"a","GroundTruth":"cat","Inferred":"cat"}}"#).unwrap();
    writeln!(file, r#"{{"_id":"a/3","ProducerID":"a","GroundTruth":7,"Inferred":"cat"}}"#).unwrap();
    writeln!(file, r#"{{"_id":"b/1","GroundTruth":"cat","Inferred":"dog"}}"#).unwrap();
    writeln!(file, r#"{{"_id":"b/2","ProducerID":"b","GroundTruth":"cat"}}"#).unwrap();
    writeln!(file, "this is not json").unwrap();
    writeln!(file, r#"{{"_id":"c/1","ProducerID":"c","GroundTruth":"dog","Inferred":"dog"}}"#).unwrap();
    drop(file);
    let (counts, output) = count(dir.path(), "out.csv", &["--input", path.to_str().unwrap(), "-w", "2"]);
    assert_eq!(counts, [("a".to_owned(), 1), ("b".to_owned(), 0), ("c".to_owned(), 0)].into());
    let log = stderr(&output);
    assert!(log.contains("skipped 3 malformed record(s)"), "{log}");
    assert!(log.contains("a/3: GroundTruth is not a string"), "{log}");
    assert!(log.contains("b/1: ProducerID is missing"), "{log}");
    assert!(log.contains("not a JSON object"), "{log}");
    assert!(log.contains("1 pending inference"), "{log}");

    // The sidecar says what the CSV counts, and when.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out.csv.meta.json")).unwrap()).unwrap();
    assert_eq!((&meta["records"], &meta["pending"], &meta["malformed"]), (&4.into(), &1.into(), &3.into()), "{meta}");
    assert_eq!(meta["source"], path.to_str().unwrap(), "{meta}");
    assert!(meta.get("position").is_none(), "a batch count has no position: {meta}");
    let as_of = meta["as_of"].as_str().unwrap();
    assert!(bson::DateTime::parse_rfc3339_str(as_of).is_ok(), "{meta}");
    assert!(log.contains(&format!("(as of {as_of};")), "the summary says it too: {log}");
}

#[test]
fn the_csv_and_its_sidecar_are_0644_unless_told_otherwise() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.jsonl");
    write_records(&spec(100), std::fs::File::create(&path).unwrap(), false).unwrap();
    let mode = |name: &str| std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode() & 0o777;
    for (flags, expected) in [(vec![], 0o644), (vec!["--output-mode", "600"], 0o600)] {
        let mut args = vec!["--input", path.to_str().unwrap()];
        args.extend(flags);
        count(dir.path(), "out.csv", &args);
        assert_eq!((mode("out.csv"), mode("out.csv.meta.json")), (expected, expected), "{args:?}");
    }
    let output = dataflow().args(["count", "--output-mode", "rw-r--r--"]).output().unwrap();
    assert_eq!(output.status.code(), Some(iot_schema::exit::USAGE.into()));
    assert!(stderr(&output).contains("not an octal file mode"), "{}", stderr(&output));
}

#[test]
fn an_input_file_wins_over_a_mongo_uri_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/mongo_entries.json");
    let output = dir.path().join("out.csv");
    let result = dataflow()
        .env("IOT_MONGO_URI", "mongodb://127.0.0.1:9")
        .args(["count", "--input", sample, "--output", output.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(output.exists());
}

#[test]
fn an_empty_file_gives_a_header_only_csv() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.jsonl");
    std::fs::write(&path, "").unwrap();
    let (counts, _) = count(dir.path(), "out.csv", &["--input", path.to_str().unwrap(), "-w", "2"]);
    assert!(counts.is_empty());
    assert_eq!(std::fs::read_to_string(dir.path().join("out.csv")).unwrap(), "ProducerID,total_errors\n");
}

#[test]
fn bad_flags_and_inputs_are_usage_errors_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad_hosts = dir.path().join("bad-hosts.txt");
    std::fs::write(&bad_hosts, "localhost\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["count", "--workers", "zero"], "invalid value 'zero'"),
        (vec!["count", "--no-such-flag"], "unexpected argument '--no-such-flag'"),
        (vec!["count", "--input", "/nonexistent.jsonl"], "does not exist"),
        (vec!["count", "-n", "2", "-p", "0"], "needs a host file"),
        (vec!["count", "-n", "2", "-p", "5", "-h", bad_hosts.to_str().unwrap()], "-p 5 is not a process index"),
        (vec!["count", "-n", "2", "-p", "0", "-h", bad_hosts.to_str().unwrap()], "is not host:port"),
    ];
    for (args, message) in cases {
        let output = dataflow().args(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(iot_schema::exit::USAGE.into()), "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains(message), "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains("try '--help'"), "{args:?}: {}", stderr(&output));
    }
}

#[test]
fn the_timely_style_launch_without_a_subcommand_counts_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.jsonl");
    let answer = write_records(&spec(5_000), std::fs::File::create(&path).unwrap(), false).unwrap();
    let output_csv = dir.path().join("out.csv");
    let result = dataflow()
        .args(["-w", "2", "--input", path.to_str().unwrap(), "--output", output_csv.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(result.status.success(), "{}", stderr(&result));
    assert_eq!(iot_bench::expected::read_error_counts(&output_csv).unwrap(), expected(&answer));
}

#[test]
fn an_unreachable_peer_is_an_error_within_the_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.jsonl");
    write_records(&spec(10), std::fs::File::create(&path).unwrap(), false).unwrap();
    let hosts = hostfile(dir.path(), 2);
    // Process 1 starts alone: process 0 never comes.
    let started = std::time::Instant::now();
    let output = dataflow()
        .args(["count", "--input", path.to_str().unwrap(), "-n", "2", "-p", "1", "--connect-timeout", "3", "-h"])
        .arg(&hosts)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(iot_schema::exit::PEER_TIMEOUT.into()));
    assert!(stderr(&output).contains("could not connect to every process"), "{}", stderr(&output));
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "bounded by the timeout");
}
