#![no_main]
//! `duel::fuzzing::parse_record` under libFuzzer; what it checks is documented there.

libfuzzer_sys::fuzz_target!(|data: &[u8]| duel::fuzzing::parse_record(data));
