//! Replays every committed input of this crate's fuzz targets (fuzz/corpus/TARGET/) through the
//! entry point the fuzzer calls (docs/fuzzing.md).

use iot_bench::testkit::replay_fuzz_corpus as replay;

#[test]
fn infer_image() {
    replay("infer_image", iot_infer_service::fuzzing::image);
}
