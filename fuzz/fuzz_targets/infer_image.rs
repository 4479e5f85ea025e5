#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| infer_service::fuzzing::image(data));
