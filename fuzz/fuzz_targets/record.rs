//! Fuzz target `record`: see `trackd::fuzzing::record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackd::fuzzing::record(data));
