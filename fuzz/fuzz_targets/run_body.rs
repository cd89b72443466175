//! Fuzz target `run_body`: see `trackd::fuzzing::run_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackd::fuzzing::run_body(data));
