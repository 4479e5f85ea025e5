//! A MongoDB server that is up but stalled (here: a private MongoDB-compatible server frozen with SIGSTOP, never
//! the shared one): the batch job fails with exit code 2 instead of hanging, and the follower
//! logs the stall, keeps its last CSV and catches up once the server answers again.

mod common;

use std::time::Duration;

use common::*;
use iot_bench::testkit::PrivateMongo;

#[test]
fn a_stalled_server_fails_the_batch_job_with_exit_code_2() {
    let server = PrivateMongo::start();
    let (db, model) = base_at(&server.uri.clone(), 100, 41);
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("never.csv");
    let uri = server.uri.clone();
    let args = ["--mongo-uri", uri.as_str(), "--db", db.name.as_str(), "--mongo-op-timeout", "2"];
    assert_eq!(count(dir.path(), "before.csv", &args).0, errors_of(&model), "the server answers at first");

    server.freeze();
    let log = dir.path().join("batch.log");
    let mut batch = ChildGuard::spawn(
        dataflow().arg("count").args(args).arg("--output").arg(&output).stderr(std::fs::File::create(&log).unwrap()),
    );
    let status = batch.expect_exit(Duration::from_secs(60));
    server.thaw();
    let said = read_log(&log);
    assert_eq!(status.code(), Some(2), "{said}");
    assert!(said.contains(&format!("MongoDB at {uri} stopped answering")), "{said}");
    assert!(said.contains("no answer within 2s (--mongo-op-timeout)"), "{said}");
    assert!(!output.exists(), "no CSV");
}

#[test]
fn a_follower_logs_a_stall_and_catches_up_once_the_server_answers() {
    let server = PrivateMongo::start();
    let (db, mut model) = base_at(&server.uri.clone(), 300, 42);
    let dir = tempfile::tempdir().unwrap();
    let (output, log) = (dir.path().join("follow.csv"), dir.path().join("follower.log"));
    let uri = server.uri.clone();
    let args = ["--mongo-uri", uri.as_str(), "--db", db.name.as_str(), "--mongo-op-timeout", "2"];
    let _follower = start_follower_logged(&args, &output, &log);
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(60));

    server.freeze();
    wait_for_log(&log, "MongoDB stalled", Duration::from_secs(30));
    server.thaw();
    let said = read_log(&log);
    assert!(said.contains("no answer within 2s") && said.contains("failing_s="), "{said}");
    assert_eq!(iot_bench::expected::read_error_counts(&output).unwrap(), errors_of(&model), "the last CSV stays");

    let database = db.database();
    for id in &correct_ids(&model)[..20] {
        let flipped = flip(&database, &model, id);
        model.insert(id.clone(), flipped);
    }
    wait_for_csv(&output, &errors_of(&model), Duration::from_secs(60));
    assert_eq!(count(dir.path(), "batch.csv", &args).0, errors_of(&model));
}
