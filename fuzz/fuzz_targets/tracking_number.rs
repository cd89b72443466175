//! Fuzz target `tracking_number`: see `trackd::fuzzing::tracking_number`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackd::fuzzing::tracking_number(data));
