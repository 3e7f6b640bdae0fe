//! Replays every fuzz target (`duel::fuzzing`) on its seeds (`fuzz/seeds/<target>/`)
//! and on every input kept from a finding (`tests/fixtures/fuzz-regressions/<target>/`).
//! The fuzzing itself runs under libFuzzer, opt-in (see the README); this keeps what
//! it found fixed.

mod common;

use common::*;
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

#[test]
fn every_fuzz_target_holds_on_its_seeds_and_past_findings() {
    for (name, target) in duel::fuzzing::TARGETS {
        let seeds = inputs(&repo().join("fuzz/seeds").join(name));
        assert!(!seeds.is_empty(), "{name}: no seeds in fuzz/seeds/{name}");
        let found = inputs(&repo().join("tests/fixtures/fuzz-regressions").join(name));
        for (path, bytes) in seeds.iter().chain(&found) {
            if let Err(e) = std::panic::catch_unwind(|| target(bytes)) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("{name} on {path}: {msg}");
            }
        }
    }
}

/// The seeds are real files of each kind, so that the fuzzer starts from inputs
/// that reach deep: the GGUF and model seeds pass every check.
#[test]
fn the_gguf_and_model_seeds_are_accepted_files() {
    let gguf = std::fs::read(repo().join("fuzz/seeds/gguf_file/tiny.gguf")).expect("seed");
    assert!(
        duel::generator::llama::Llama::check_from(std::io::Cursor::new(&gguf), gguf.len() as u64)
            .is_ok()
    );
    let model = std::fs::read(repo().join("fuzz/seeds/model_files/tiny")).expect("seed");
    let at = model.iter().position(|&b| b == 0).expect("two parts");
    let cfg: duel::model::bert::BertConfig = serde_json::from_slice(&model[..at]).expect("config");
    let w = candle_core::safetensors::load_buffer(&model[at + 1..], &candle_core::Device::Cpu)
        .expect("weights");
    duel::model::bert::check_weights(&cfg, &w).expect("fits");
}

/// Writes the seed files (run once when a target is added:
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
    let dir = tempfile::tempdir().expect("tmp");
    let g = dir.path().join("tiny.gguf");
    write_tiny_gguf(&g, |_, _| {});
    put("gguf_file", "tiny.gguf", &std::fs::read(&g).expect("read"));
    // A BERT small enough for the fuzzer to mutate: width 8, one layer.
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
    let mut bytes = serde_json::to_vec(&cfg).expect("json");
    bytes.push(0);
    bytes.extend(std::fs::read(&st).expect("read"));
    put("model_files", "tiny", &bytes);
    put(
        "sanitize",
        "escapes.txt",
        "plain\n\ttab \u{1b}[31mred\u{1b}[0m \u{9b}2J \r\n bidi \u{202e}abc\u{2066} zw\u{200b}j \u{feff}"
            .as_bytes(),
    );
}
