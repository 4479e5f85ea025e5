//! Two processes of two workers each, on loopback with a host file: the same CSV as one worker.

mod common;

use common::*;
use iot_bench::{write_records, Spec};

#[test]
fn two_processes_of_two_workers_give_the_producers_answer_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.jsonl");
    let spec = Spec { records: 100_000, producers: 31, awkward_names: true, seed: 11, ..Spec::default() };
    let answer = write_records(&spec, std::fs::File::create(&path).unwrap(), false).unwrap();
    let counts = count_on_cluster(dir.path(), 2, 2, &["--input", path.to_str().unwrap()]);
    assert_eq!(counts, expected(&answer));
}
