//! The ingest binaries' exit codes (`iot_schema::exit`): a bad flag, or a combination the
//! program refuses after parsing, is a usage error (2, with the usage line); a failure is 1.

use std::process::{Command, Output};

use iot_schema::exit;

fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let Output { status, stderr, .. } = Command::new(bin)
        .args(args)
        .env_remove("IOT_ASSETS_DIR")
        .env_remove("IOT_PRODUCER_IDS")
        .output()
        .expect("the binary runs");
    (status.code(), String::from_utf8_lossy(&stderr).into_owned())
}

#[test]
fn a_refused_flag_combination_is_a_usage_error() {
    let (code, stderr) = run(env!("CARGO_BIN_EXE_producer"), &["--producer-id", " "]);
    assert_eq!(code, Some(exit::USAGE.into()), "{stderr}");
    assert!(stderr.contains("a --producer-id is empty") && stderr.contains("Usage: producer"), "{stderr}");
}

#[test]
fn an_unknown_flag_is_a_usage_error() {
    for bin in [env!("CARGO_BIN_EXE_db-consumer"), env!("CARGO_BIN_EXE_infer-consumer")] {
        let (code, stderr) = run(bin, &["--no-such-flag"]);
        assert_eq!(code, Some(exit::USAGE.into()), "{bin}: {stderr}");
        assert!(stderr.contains("Usage:"), "{stderr}");
    }
}

#[test]
fn a_run_time_failure_exits_1_with_the_reason() {
    let (code, stderr) = run(env!("CARGO_BIN_EXE_producer"), &["--assets-dir", "/nonexistent", "--count", "1"]);
    assert_eq!(code, Some(exit::FAILED.into()), "{stderr}");
    assert!(stderr.contains("error: no CIFAR-10 batch at /nonexistent"), "{stderr}");
}
