//! Fuzz target `journal`: see `trackd::fuzzing::journal`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackd::fuzzing::journal(data));
