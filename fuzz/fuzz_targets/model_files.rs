#![no_main]
//! `duel::fuzzing::model_files` under libFuzzer; what it checks is documented there.

libfuzzer_sys::fuzz_target!(|data: &[u8]| duel::fuzzing::model_files(data));
