//! Replays every committed input of this crate's fuzz targets (fuzz/corpus/TARGET/) through the
//! entry point the fuzzer calls (docs/fuzzing.md).

use iot_bench::testkit::replay_fuzz_corpus as replay;

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
