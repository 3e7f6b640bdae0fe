//! Fuzzing in every `make test`: a bounded, seeded pass of each target in
//! `duel::fuzzing` over mutations of its seeds (`fuzz/seeds/<target>/`), after
//! replaying the seeds and every input kept from a finding
//! (`tests/fixtures/fuzz-regressions/<target>/`). The same seed gives the same
//! cases; `DUEL_FUZZ_SEED` and `DUEL_FUZZ_CASES` change them. A failing case is
//! written to `target/fuzz-failures/<target>/` with the seed that made it.
//!
//! The mutator is a few dozen lines of our own rather than libFuzzer's: that one
//! needs its runtime and an instrumented build of every dependency (`make fuzz`
//! runs it, coverage-guided, for as long as asked), while this pass must fit in
//! seconds inside an ordinary test build.

mod common;

use common::*;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use std::panic::AssertUnwindSafe;
use std::path::Path;

fn inputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .map(|e| {
            let path = e.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read");
            (path.display().to_string(), bytes)
        })
        .collect();
    out.sort();
    out
}

/// A target's seeds: the files in `fuzz/seeds/<target>/` and, for the GGUF and
/// model targets, the tiny model files written here (model files are made, never
/// committed).
fn seeds(name: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = inputs(&repo().join("fuzz/seeds").join(name));
    out.extend(
        model_seeds()
            .into_iter()
            .filter(|(target, _, _)| *target == name)
            .map(|(_, file, bytes)| (format!("generated {file}"), bytes)),
    );
    out
}

/// The seeds that are model files, as (target, file name, bytes): a tiny llama GGUF
/// that passes every check, and a BERT small enough for the fuzzer to mutate (width
/// 8, one layer; its config, a zero byte, its safetensors). The same bytes every time.
fn model_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let dir = tempfile::tempdir().expect("tmp");
    let g = dir.path().join("tiny.gguf");
    write_tiny_gguf(&g, |_, _| {});
    let cfg = duel::model::bert::BertConfig {
        vocab_size: 6,
        hidden_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 8,
        max_position_embeddings: 4,
        ..duel::model::bert::tiny_config()
    };
    let w = duel::model::bert::random_weights(&cfg, 1).expect("weights");
    let st = dir.path().join("m.safetensors");
    candle_core::safetensors::save(&w, &st).expect("save");
    let mut model = serde_json::to_vec(&cfg).expect("json");
    model.push(0);
    model.extend(std::fs::read(&st).expect("read"));
    vec![
        ("gguf_file", "tiny.gguf", std::fs::read(&g).expect("read")),
        ("model_files", "tiny", model),
    ]
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Bytes and numbers that parsers treat specially.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"\\u001b",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"1e999",
    b"-0",
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b"\xef\xbb\xbf",
    b"\xff",
    b"\xc3",
    b"\x1b[31m",
    b"\xe2\x80\xae",
    b"\n\nHuman:",
    b"\n\nAssistant:",
    b"\"prompt\"",
    b"\"chosen\"",
    b"\"rejected\"",
    b"\"response_a\"",
    b"\"response_b\"",
    b"\"role\"",
    b"\"content\"",
    b"\"messages\"",
    b"\"hidden_size\"",
    b"\"num_attention_heads\"",
    b"\"vocab_size\"",
    b"GGUF",
];
const NUMBERS: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    31,
    32,
    33,
    64,
    255,
    256,
    4095,
    65535,
    65536,
    1 << 20,
    1 << 31,
    u32::MAX as u64 - 1,
    u32::MAX as u64,
    1 << 32,
    1 << 62,
    u64::MAX - 1,
    u64::MAX,
];

/// One random edit of `data`; `other` is another seed to splice from.
fn mutate(rng: &mut StdRng, data: &mut Vec<u8>, other: &[u8]) {
    let len = data.len();
    let at = |rng: &mut StdRng, n: usize| if n == 0 { 0 } else { rng.random_range(0..n) };
    match rng.random_range(0..9) {
        0 if len > 0 => {
            let i = at(rng, len);
            data[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = at(rng, len);
            data[i] = [0u8, 1, 0x7f, 0x80, 0xff, b'"', b'\\', b'\n', b','][at(rng, 9)];
        }
        2 if len > 0 => {
            let i = at(rng, len);
            let n = rng.random_range(1..=len.min(64));
            data.drain(i..(i + n).min(len));
        }
        3 if len > 0 => {
            let i = at(rng, len);
            let n = rng.random_range(1..=len.min(256));
            let chunk = data[i..(i + n).min(len)].to_vec();
            let j = at(rng, data.len() + 1);
            data.splice(j..j, chunk);
        }
        4 => {
            let t = TOKENS[at(rng, TOKENS.len())];
            let j = at(rng, len + 1);
            data.splice(j..j, t.iter().copied());
        }
        // A little-endian integer overwritten with a boundary value: counts,
        // lengths, dimensions and offsets in binary headers.
        5 | 6 if len >= 8 => {
            let width = [1usize, 2, 4, 8][at(rng, 4)];
            let i = at(rng, len - width + 1);
            let v = NUMBERS[at(rng, NUMBERS.len())];
            data[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
        }
        7 if !other.is_empty() => {
            let i = at(rng, len + 1);
            let j = at(rng, other.len());
            let n = rng.random_range(1..=(other.len() - j).min(512));
            data.truncate(i);
            data.extend_from_slice(&other[j..j + n]);
        }
        _ if len > 0 => data.truncate(at(rng, len)),
        _ => data.push(rng.random()),
    }
}

fn cases() -> usize {
    std::env::var("DUEL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn seed() -> u64 {
    std::env::var("DUEL_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261202)
}

/// Cases run per target: a whole GGUF or model folder costs more than a record.
fn weight(name: &str) -> usize {
    match name {
        "gguf_file" | "model_files" => 3,
        _ => 1,
    }
}

#[test]
fn a_bounded_seeded_fuzz_pass_finds_nothing() {
    let seed = seed();
    let mut failures = Vec::new();
    for (t, (name, target)) in duel::fuzzing::TARGETS.iter().enumerate() {
        let seeds: Vec<Vec<u8>> = seeds(name).into_iter().map(|(_, b)| b).collect();
        assert!(!seeds.is_empty(), "{name}: no seeds");
        let mut rng = StdRng::seed_from_u64(seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for case in 0..cases() / weight(name) {
            let mut data = seeds[rng.random_range(0..seeds.len())].clone();
            let other = &seeds[rng.random_range(0..seeds.len())];
            for _ in 0..rng.random_range(1..=8) {
                mutate(&mut rng, &mut data, other);
            }
            if let Err(e) = std::panic::catch_unwind(AssertUnwindSafe(|| target(&data))) {
                let dir = repo().join("target/fuzz-failures").join(name);
                std::fs::create_dir_all(&dir).expect("mkdir");
                let file = dir.join(format!("seed-{seed}-case-{case}"));
                std::fs::write(&file, &data).expect("write");
                failures.push(format!(
                    "{name} case {case}: {} ({})",
                    panic_text(&*e),
                    file.display()
                ));
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "DUEL_FUZZ_SEED={seed}:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_fuzz_target_holds_on_its_seeds_and_past_findings() {
    for (name, target) in duel::fuzzing::TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "{name}: no seeds in fuzz/seeds/{name}");
        let found = inputs(&repo().join("tests/fixtures/fuzz-regressions").join(name));
        for (path, bytes) in seeds.iter().chain(&found) {
            if let Err(e) = std::panic::catch_unwind(|| target(bytes)) {
                panic!("{name} on {path}: {}", panic_text(&*e));
            }
        }
    }
}

/// The seeds are real files of each kind, so that the fuzzer starts from inputs
/// that reach deep: the GGUF and model seeds pass every check.
#[test]
fn the_gguf_and_model_seeds_are_accepted_files() {
    let [(_, _, gguf), (_, _, model)] = <[_; 2]>::try_from(model_seeds()).expect("two seeds");
    assert!(
        duel::generator::llama::Llama::check_from(std::io::Cursor::new(&gguf), gguf.len() as u64)
            .is_ok()
    );
    let at = model.iter().position(|&b| b == 0).expect("two parts");
    let cfg: duel::model::bert::BertConfig = serde_json::from_slice(&model[..at]).expect("config");
    let w = candle_core::safetensors::load_buffer(&model[at + 1..], &candle_core::Device::Cpu)
        .expect("weights");
    duel::model::bert::check_weights(&cfg, &w).expect("fits");
}

/// Writes the seed files for libFuzzer (`make fuzz` runs it first:
/// `cargo test --test fuzz -- --ignored write_seeds`).
#[test]
#[ignore]
fn write_seeds() {
    let seeds = repo().join("fuzz/seeds");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = seeds.join(target);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join(name), bytes).expect("write");
    };
    let demo = std::fs::read_to_string(demo()).expect("demo");
    let first: Vec<&str> = demo.lines().take(3).collect();
    let records = [
        first[0].to_owned(),
        r#"{"prompt":"q","chosen":"a","rejected":"b"}"#.to_owned(),
        serde_json::json!({
            "chosen": "\n\nHuman: hi\n\nAssistant: hello",
            "rejected": "\n\nHuman: hi\n\nAssistant: go away"
        })
        .to_string(),
        serde_json::json!({
            "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            "chosen": [{"role": "assistant", "content": "x"}],
            "rejected": [{"role": "assistant", "content": "y"}]
        })
        .to_string(),
        r#"{"prompt":"q","response_a":"x","response_b":"","id":7,"meta":{"k":[1,2.5,null]}}"#
            .to_owned(),
    ];
    for (i, r) in records.iter().enumerate() {
        put("parse_record", &format!("record-{i}.json"), r.as_bytes());
    }
    put(
        "jsonl_file",
        "demo.jsonl",
        (first.join("\n") + "\n").as_bytes(),
    );
    put("jsonl_file", "forms.jsonl", records.join("\r\n").as_bytes());
    put(
        "csv_file",
        "pairs.csv",
        b"prompt,response_a,response_b,id\nq,\"a, with comma\",\"b\"\"quoted\"\"\",1\n\"multi\nline\",x,y,2\n",
    );
    put(
        "csv_file",
        "labeled.csv",
        b"prompt,chosen,rejected\nq,good,bad\nq2,,only one\n",
    );
    // Model files too, for libFuzzer (`make fuzz` writes them; git ignores them).
    for (target, name, bytes) in model_seeds() {
        put(target, name, &bytes);
    }
    put(
        "sanitize",
        "escapes.txt",
        "plain\n\ttab \u{1b}[31mred\u{1b}[0m \u{9b}2J \r\n bidi \u{202e}abc\u{2066} zw\u{200b}j \u{feff}"
            .as_bytes(),
    );
}
