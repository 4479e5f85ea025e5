#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iot_infer_service::fuzzing::image(data));
