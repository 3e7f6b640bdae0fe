//! The import record parser on arbitrary bytes: it must return a record or an error,
//! never panic, and a record it accepts must have the invariants import relies on.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pair) = duel::io::import::parse_json_line(data) {
        assert!(!pair.prompt.text.is_empty());
        assert!(!pair.response_a.is_empty() && !pair.response_b.is_empty());
    }
});
