//! Fuzz target `instant`: see `trackd::fuzzing::instant`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackd::fuzzing::instant(data));
