//! `dataflow count --follow --input FILE`: a JSON Lines file whose appended lines are its changes.
//! The CSV must keep equal to a fresh batch count of the file as it grows.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use iot_bench::expected::read_error_counts;
use iot_bench::{write_records, Answer, Spec};

fn append(path: &Path, bytes: &[u8]) {
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
}

/// Records of `spec` as JSON Lines, and the answer the generator recorded for them.
fn records(spec: &Spec) -> (Vec<u8>, Answer) {
    let mut bytes = Vec::new();
    let answer = write_records(spec, &mut bytes, false).unwrap();
    (bytes, answer)
}

fn follow_a_growing_file(processes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("records.jsonl");
    let output = dir.path().join("follow.csv");
    let first = Spec { records: 20_000, producers: 9, awkward_names: true, seed: 31, ..Spec::default() };
    let (bytes, first_answer) = records(&first);
    std::fs::write(&input, &bytes).unwrap();

    let hosts = hostfile(dir.path(), processes);
    let (n, hosts) = (processes.to_string(), hosts.to_str().unwrap().to_owned());
    let _followers: Vec<Follower> = (0..processes)
        .map(|p| {
            let p = p.to_string();
            let mut args = vec!["--input", input.to_str().unwrap(), "-w", "2"];
            if processes > 1 {
                args.extend(["-n", &n, "-p", &p, "-h", &hosts]);
            }
            start_follower(&args, &output)
        })
        .collect();
    let fresh_count = || count(dir.path(), "batch.csv", &["--input", input.to_str().unwrap()]).0;
    assert_eq!(fresh_count(), expected(&first_answer));
    wait_for_csv(&output, &expected(&first_answer), Duration::from_secs(60));

    // More records from other producers and the same ones, appended in pieces, one of them
    // ending in the middle of a line: that line counts once its newline arrives.
    let more = Spec { records: 5_000, producers: 12, awkward_names: true, seed: 32, ..Spec::default() };
    let (bytes, more_answer) = records(&more);
    let middle = bytes.len() / 2;
    let newline = middle + bytes[middle..].iter().position(|b| *b == b'\n').unwrap();
    let unfinished = 9; // bytes of the next line
    let cut = newline + 1 + unfinished;
    append(&input, &bytes[..cut]);
    let mut complete_lines = std::fs::read(&input).unwrap();
    complete_lines.truncate(complete_lines.len() - unfinished);
    let complete = input.with_extension("complete");
    std::fs::write(&complete, complete_lines).unwrap();
    let (before_newline, _) = count(dir.path(), "complete.csv", &["--input", complete.to_str().unwrap()]);
    wait_for_csv(&output, &before_newline, Duration::from_secs(30));
    append(&input, &bytes[cut..]);
    // The producers' own answer for both sets, which a fresh count of the grown file agrees with.
    let mut grown = expected(&first_answer);
    for (producer, errors) in expected(&more_answer) {
        *grown.entry(producer).or_default() += errors;
    }
    assert_eq!(fresh_count(), grown);
    assert_ne!(grown, before_newline, "the appended records must move the counts");
    wait_for_csv(&output, &grown, Duration::from_secs(30));
}

#[test]
fn appended_lines_are_counted_as_a_fresh_count_would() {
    follow_a_growing_file(1);
}

#[test]
fn a_growing_file_on_two_processes_of_two_workers() {
    follow_a_growing_file(2);
}

#[test]
fn a_file_that_shrinks_stops_the_follower_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("records.jsonl");
    let output = dir.path().join("follow.csv");
    let (bytes, _) = records(&Spec { records: 1_000, seed: 33, ..Spec::default() });
    std::fs::write(&input, &bytes).unwrap();
    let mut follower = dataflow()
        .args(["count", "--follow", "--poll-interval-ms", "100", "--input", input.to_str().unwrap()])
        .arg("--output")
        .arg(&output)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while read_error_counts(&output).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "no CSV from --follow");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&input, &bytes[..bytes.len() / 2]).unwrap();
    let status = loop {
        if let Some(status) = follower.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "--follow kept running on a shrunk file");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut follower.stderr.take().unwrap(), &mut log).unwrap();
    assert!(!status.success());
    assert!(log.contains("shrank") && log.contains("restart"), "{log}");
}

/// A bug that panics worker 0 (made with a failpoint) stops the process with exit code 1: the
/// other workers would otherwise wait for it for ever.
#[test]
fn a_failed_worker_stops_the_follower_instead_of_wedging_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("records.jsonl");
    let output = dir.path().join("follow.csv");
    let (bytes, _) = records(&Spec { records: 1_000, seed: 34, ..Spec::default() });
    std::fs::write(
        &input,
        &bytes[..bytes.len() / 2 + 1 + bytes[bytes.len() / 2..].iter().position(|b| *b == b'\n').unwrap()],
    )
    .unwrap();
    let log = dir.path().join("follow.log");
    let mut follower = iot_bench::testkit::ChildGuard::spawn(
        dataflow()
            .args(["count", "--follow", "--poll-interval-ms", "100", "-w", "2", "--input", input.to_str().unwrap()])
            .arg("--output")
            .arg(&output)
            .env("FAILPOINTS", "follow-after-round=panic(injected)")
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let started = Instant::now();
    while read_error_counts(&output).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "no CSV from --follow");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&input, &bytes).unwrap();
    let status = follower.wait_exit(Duration::from_secs(30)).expect("the follower exits after its worker failed");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("injected") && text.contains("worker 0 of process 0 failed"), "{text}");
}

#[test]
fn a_json_array_cannot_be_followed() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("records.json");
    write_records(&Spec { records: 10, ..Spec::default() }, std::fs::File::create(&input).unwrap(), true).unwrap();
    let output = dataflow().args(["count", "--follow", "--input", input.to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success());
    assert!(stderr(&output).contains("needs JSON Lines"), "{}", stderr(&output));
}
