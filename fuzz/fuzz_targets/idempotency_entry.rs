//! Fuzz target `idempotency_entry`: see `trackd::fuzzing::idempotency_entry`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trackd::fuzzing::idempotency_entry(data));
