#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| iot_dataflow::fuzzing::hostfile(data));
