#![no_main]
//! `duel::fuzzing::csv_file` under libFuzzer; what it checks is documented there.

libfuzzer_sys::fuzz_target!(|data: &[u8]| duel::fuzzing::csv_file(data));
