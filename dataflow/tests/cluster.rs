//! Clusters on loopback with a host file (two processes of two workers, three processes at the
//! default worker count): the same CSV as the producers' answer.

mod common;

use common::*;
use iot_bench::{write_records, Spec};

#[test]
fn two_processes_of_two_workers_give_the_producers_answer_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.jsonl");
    let spec = Spec { records: 100_000, producers: 31, awkward_names: true, seed: 11, ..Spec::default() };
    let answer = write_records(&spec, std::fs::File::create(&path).unwrap(), false).unwrap();
    let counts = count_on_cluster(dir.path(), 2, Some(2), &["--input", path.to_str().unwrap()]);
    assert_eq!(counts, expected(&answer));
}

/// Without -w each process runs one worker per core, so the cluster's size depends on the
/// machine; the shares must still cover the file exactly once.
#[test]
fn three_processes_at_the_default_worker_count_give_the_producers_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.jsonl");
    let spec = Spec { records: 60_000, producers: 17, awkward_names: true, seed: 12, ..Spec::default() };
    let answer = write_records(&spec, std::fs::File::create(&path).unwrap(), false).unwrap();
    let counts = count_on_cluster(dir.path(), 3, None, &["--input", path.to_str().unwrap()]);
    assert_eq!(counts, expected(&answer));
}

/// A member killed while the batch job runs: the other process stops with exit code 4 (`iot_schema::exit::PEER_LOST`) and one
/// clear message, not a panic, and writes no CSV.
#[test]
fn a_killed_member_stops_the_batch_job_with_exit_code_4() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = hostfile(dir.path(), 2);
    let output = dir.path().join("never.csv");
    // Nothing listens at port 1, so worker 0 keeps trying to reach MongoDB while process 1 is
    // killed: the job is certainly still running.
    let mut processes: Vec<_> = (0..2)
        .map(|p| {
            let log = std::fs::File::create(dir.path().join(format!("batch-{p}.log"))).unwrap();
            let p = p.to_string();
            let args =
                ["--mongo-uri", "mongodb://127.0.0.1:1", "--mongo-timeout", "120", "-w", "1", "-n", "2", "-p", &p];
            ChildGuard::spawn(
                dataflow()
                    .arg("count")
                    .args(args)
                    .arg("-h")
                    .arg(&hosts)
                    .arg("--output")
                    .arg(&output)
                    .env("RUST_LOG", "info")
                    .stderr(log),
            )
        })
        .collect();
    for p in 0..2 {
        let log = dir.path().join(format!("batch-{p}.log"));
        wait_for_log(&log, "connected to every process of the cluster", std::time::Duration::from_secs(60));
    }
    processes[1].kill();
    let status = processes[0].expect_exit(std::time::Duration::from_secs(30));
    let said = read_log(&dir.path().join("batch-0.log"));
    assert_eq!(status.code(), Some(iot_schema::exit::PEER_LOST.into()), "{said}");
    assert!(said.contains("cluster peer lost: process 0 lost its connection to process 1"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
    assert!(!output.exists(), "no CSV");
}
