#![no_main]
//! `duel::fuzzing::sanitize` under libFuzzer; what it checks is documented there.

libfuzzer_sys::fuzz_target!(|data: &[u8]| duel::fuzzing::sanitize(data));
