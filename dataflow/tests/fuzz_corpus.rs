//! Replays every committed input of this crate's fuzz targets (fuzz/corpus/TARGET/) through the
//! entry point the fuzzer calls, on the stable toolchain: a fixed find stays fixed without
//! nightly or cargo-fuzz. docs/fuzzing.md says how the corpora are made.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

#[test]
fn dataflow_record_file() {
    replay("dataflow_record_file", iot_dataflow::fuzzing::record_file);
}

#[test]
fn dataflow_hostfile() {
    replay("dataflow_hostfile", iot_dataflow::fuzzing::hostfile);
}

#[test]
fn dataflow_mongo_document() {
    replay("dataflow_mongo_document", iot_dataflow::fuzzing::mongo_document);
}

fn replay(target: &str, entry_point: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{} has no inputs", dir.display());
    for input in inputs {
        let data = std::fs::read(&input).unwrap();
        let outcome = catch_unwind(AssertUnwindSafe(|| entry_point(&data)));
        assert!(outcome.is_ok(), "{target} panicked on {}", input.display());
    }
}
