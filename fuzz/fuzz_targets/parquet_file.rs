#![no_main]
//! `duel::fuzzing::parquet_file` under libFuzzer; what it checks is documented there.

libfuzzer_sys::fuzz_target!(|data: &[u8]| duel::fuzzing::parquet_file(data));
