//! Files that are wrong rather than missing: model folders whose config does not fit
//! their tensors, spoiled GGUF files. Each is refused with exit status 2 and a
//! message naming the file and the tensor or key, never a panic, and nothing is
//! changed.

mod common;

use candle_core::quantized::gguf_file::Value;
use common::*;
use std::path::{Path, PathBuf};

fn encoder() -> PathBuf {
    repo().join("assets/models/all-MiniLM-L6-v2")
}

/// A model folder beside the real encoder: its weights and tokenizer linked, its
/// `config.json` the real one with `edit` applied.
fn folder_with_config(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).expect("mkdir");
    for f in ["model.safetensors", "tokenizer.json"] {
        std::os::unix::fs::symlink(encoder().join(f), out.join(f)).expect("link");
    }
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(encoder().join("config.json")).expect("config"))
            .expect("json");
    edit(&mut cfg);
    std::fs::write(out.join("config.json"), cfg.to_string()).expect("write config");
    out
}

fn labeled_file(dir: &Path) -> PathBuf {
    let p = dir.join("eval.jsonl");
    std::fs::write(
        &p,
        "{\"prompt\":\"Say hi\",\"chosen\":\"Hello there!\",\"rejected\":\"Go away.\"}\n",
    )
    .expect("write");
    p
}

/// Runs `duel` with `args` and checks: exit status 2, no panic, every `needles` in
/// the message.
fn refused(db: &Path, args: &[&str], needles: &[&str]) {
    let out = duel(db, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected {n:?} in {err}");
    }
}

#[test]
fn a_model_folder_whose_config_does_not_fit_its_tensors_is_refused_by_every_command() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    assert!(
        duel(&db, &["import", demo().to_str().expect("utf8")])
            .status
            .success()
    );
    // A few judgements so that train and review have something to read.
    let script = "1 2 1 2 1 1 2 2 1 2 q";
    assert!(
        duel(&db, &["label", "--annotator", "t", "--script", script])
            .status
            .success()
    );
    let eval = labeled_file(dir.path());
    let eval = eval.to_str().expect("utf8");

    let wide = folder_with_config(dir.path(), "wide", |c| c["hidden_size"] = 768.into());
    let wide_s = wide.to_str().expect("utf8");
    let shape = "model.safetensors: tensor `embeddings.word_embeddings.weight`: expected shape \
                 [30522, 768] from config.json, found [30522, 384]";
    let before = std::fs::read(&db).expect("db");
    for args in [
        vec!["eval", "--model", wide_s, eval],
        vec!["score", "--model", wide_s, eval],
        vec!["train", "--model-dir", wide_s, "--out", "never"],
        vec!["review", "--model", wide_s, "--script", "q"],
    ] {
        refused(&db, &args, &[shape]);
    }
    assert!(!dir.path().join("never").exists(), "train wrote nothing");
    assert_eq!(
        std::fs::read(&db).expect("db"),
        before,
        "database unchanged"
    );

    // Narrower with as many heads as divide it: ran before, with the wrong shapes.
    let narrow = folder_with_config(dir.path(), "narrow", |c| {
        c["hidden_size"] = 192.into();
        c["num_attention_heads"] = 6.into();
    });
    refused(
        &db,
        &["eval", "--model", narrow.to_str().expect("utf8"), eval],
        &["expected shape [30522, 192] from config.json, found [30522, 384]"],
    );
    for (name, edit, needle) in [
        (
            "heads",
            Box::new(|c: &mut serde_json::Value| c["num_attention_heads"] = 7.into())
                as Box<dyn FnOnce(&mut serde_json::Value)>,
            "config.json: `hidden_size` 384 is not a multiple of `num_attention_heads` 7",
        ),
        (
            "zero",
            Box::new(|c: &mut serde_json::Value| c["num_hidden_layers"] = 0.into()),
            "config.json: `num_hidden_layers` is 0",
        ),
        (
            "deeper",
            Box::new(|c: &mut serde_json::Value| c["num_hidden_layers"] = 12.into()),
            "model.safetensors: no tensor `encoder.layer.11.attention.self.query.weight`",
        ),
        (
            "shallower",
            Box::new(|c: &mut serde_json::Value| c["num_hidden_layers"] = 3.into()),
            "tensor `encoder.layer.3.attention.self.query.weight`: the file has more layers \
             than `num_hidden_layers` 3",
        ),
        (
            "vocab",
            Box::new(|c: &mut serde_json::Value| c["vocab_size"] = 1000.into()),
            "expected shape [1000, 384] from config.json, found [30522, 384]",
        ),
        (
            "positions",
            Box::new(|c: &mut serde_json::Value| c["max_position_embeddings"] = 99.into()),
            "`embeddings.position_embeddings.weight`: expected shape [99, 384]",
        ),
        (
            "eps",
            Box::new(|c: &mut serde_json::Value| c["layer_norm_eps"] = (-1.0).into()),
            "`layer_norm_eps` -1 must be a positive number",
        ),
        (
            "not json",
            Box::new(|c: &mut serde_json::Value| *c = "[".into()),
            "config.json: invalid type",
        ),
    ] {
        let folder = folder_with_config(dir.path(), name, edit);
        refused(
            &db,
            &["eval", "--model", folder.to_str().expect("utf8"), eval],
            &[needle],
        );
    }
}

#[test]
fn a_truncated_or_foreign_weights_file_is_bad_input() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    let eval = labeled_file(dir.path());
    let bytes = std::fs::read(encoder().join("model.safetensors")).expect("weights");
    for (name, content) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("header only", bytes[..64].to_vec()),
        ("text", b"not safetensors at all".to_vec()),
    ] {
        let folder = dir.path().join(name);
        std::fs::create_dir_all(&folder).expect("mkdir");
        for f in ["config.json", "tokenizer.json"] {
            std::fs::copy(encoder().join(f), folder.join(f)).expect("copy");
        }
        std::fs::write(folder.join("model.safetensors"), content).expect("write");
        refused(
            &db,
            &[
                "eval",
                "--model",
                folder.to_str().expect("utf8"),
                eval.to_str().expect("utf8"),
            ],
            &["model.safetensors: not a readable safetensors file"],
        );
    }
}

/// A small model whose embedding has fewer rows than the tokenizer has ids: every
/// tensor fits the config, and the config does not fit the tokenizer.
#[test]
fn a_tokenizer_with_ids_past_the_vocabulary_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let folder = dir.path().join("small-vocab");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let cfg = duel::model::BertConfig {
        vocab_size: 1000,
        ..duel::model::bert::tiny_config()
    };
    let w = duel::model::bert::random_weights(&cfg, 1).expect("weights");
    candle_core::safetensors::save(&w, folder.join("model.safetensors")).expect("save");
    std::fs::write(
        folder.join("config.json"),
        serde_json::to_vec(&cfg).expect("json"),
    )
    .expect("write");
    std::fs::copy(
        encoder().join("tokenizer.json"),
        folder.join("tokenizer.json"),
    )
    .expect("copy");
    let eval = labeled_file(dir.path());
    refused(
        &dir.path().join("d.db"),
        &[
            "eval",
            "--model",
            folder.to_str().expect("utf8"),
            eval.to_str().expect("utf8"),
        ],
        &["tokenizer.json: gives token ids up to 30521, but `vocab_size` in config.json is 1000"],
    );
}

fn prompts(dir: &Path) -> PathBuf {
    let p = dir.join("prompts.txt");
    std::fs::write(&p, "Say hello.\n").expect("write");
    p
}

fn set(meta: &mut [(String, Value)], key: &str, v: Value) {
    let slot = meta.iter_mut().find(|(k, _)| k == key).expect("key");
    slot.1 = v;
}

/// The tiny GGUF itself generates a pair: the spoiled copies below differ from a
/// working file in the one thing each test spoils.
#[test]
fn spoiled_gguf_files_are_refused_naming_the_key_or_tensor() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = prompts(dir.path());
    let p = p.to_str().expect("utf8");
    let good = dir.path().join("good.gguf");
    write_tiny_gguf(&good, |_, _| {});
    let db = dir.path().join("good.db");
    let out = duel(
        &db,
        &[
            "generate",
            p,
            "--generator",
            good.to_str().expect("utf8"),
            "--max-new-tokens",
            "4",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        duel::store::Store::open(&db)
            .expect("db")
            .pair_count()
            .expect("n"),
        1
    );

    type Edit = Box<
        dyn FnOnce(&mut Vec<(String, Value)>, &mut Vec<(String, candle_core::quantized::QTensor)>),
    >;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "heads0",
            Box::new(|m, _| set(m, "llama.attention.head_count", Value::U32(0))),
            "metadata `llama.attention.head_count`: 0 is outside 1 to",
        ),
        (
            "kv-heads",
            Box::new(|m, _| set(m, "llama.attention.head_count_kv", Value::U32(3))),
            "metadata `llama.attention.head_count_kv` 3 does not divide",
        ),
        (
            "width",
            Box::new(|m, _| set(m, "llama.embedding_length", Value::U32(96))),
            "tensor `token_embd.weight`: expected shape [258, 96] from the metadata, found [258, 64]",
        ),
        (
            "layers",
            Box::new(|m, _| set(m, "llama.block_count", Value::U32(2))),
            "no tensor `blk.1.attn_norm.weight`",
        ),
        (
            "huge-layers",
            Box::new(|m, _| set(m, "llama.block_count", Value::U64(u64::MAX))),
            "metadata `llama.block_count`: 18446744073709551615 is outside 1 to",
        ),
        (
            "type",
            Box::new(|m, _| set(m, "llama.feed_forward_length", Value::String("64".into()))),
            "metadata `llama.feed_forward_length`: not an unsigned integer",
        ),
        (
            "eps",
            Box::new(|m, _| {
                m.push((
                    "llama.attention.layer_norm_rms_epsilon".into(),
                    Value::F32(f32::NAN),
                ))
            }),
            "`llama.attention.layer_norm_rms_epsilon`: not a positive number",
        ),
        (
            "alignment",
            Box::new(|m, _| m.push(("general.alignment".into(), Value::U32(0)))),
            "metadata `general.alignment`: 0 is not a power of two",
        ),
        (
            "shape",
            Box::new(|_, t| {
                let k = t
                    .iter_mut()
                    .find(|(n, _)| n == "blk.0.attn_k.weight")
                    .expect("k");
                let wide = candle_core::Tensor::zeros(
                    (64, 64),
                    candle_core::DType::F32,
                    &candle_core::Device::Cpu,
                )
                .expect("t");
                k.1 = candle_core::quantized::QTensor::quantize(
                    &wide,
                    candle_core::quantized::GgmlDType::Q4_1,
                )
                .expect("q");
            }),
            "tensor `blk.0.attn_k.weight`: expected shape [32, 64] from the metadata, found [64, 64]",
        ),
        (
            "missing",
            Box::new(|_, t| t.retain(|(n, _)| n != "blk.0.ffn_down.weight")),
            "no tensor `blk.0.ffn_down.weight`",
        ),
        (
            "arch",
            Box::new(|m, _| {
                set(
                    m,
                    "general.architecture",
                    Value::String("gpt\u{1b}[31m".into()),
                )
            }),
            "architecture `gpt\\u{1b}[31m` is not supported",
        ),
        (
            "tokenizer",
            Box::new(|m, _| set(m, "tokenizer.ggml.model", Value::String("llama".into()))),
            "unsupported tokenizer model `llama`",
        ),
    ];
    for (name, edit, needle) in cases {
        let path = dir.path().join(format!("{name}.gguf"));
        write_tiny_gguf(&path, edit);
        let db = dir.path().join(format!("{name}.db"));
        refused(
            &db,
            &["generate", p, "--generator", path.to_str().expect("utf8")],
            &[&format!("{}: ", path.display()), needle],
        );
        assert!(!db.exists(), "{name}: no database was made");
    }
    // Truncated: the header is whole, the last tensor's bytes are not.
    let bytes = std::fs::read(&good).expect("read");
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).expect("write");
    refused(
        &dir.path().join("cut.db"),
        &["generate", p, "--generator", cut.to_str().expect("utf8")],
        &["reach past the end of the file", "is the file truncated?"],
    );
    let text = dir.path().join("text.gguf");
    std::fs::write(&text, b"hello").expect("write");
    refused(
        &dir.path().join("text.db"),
        &["generate", p, "--generator", text.to_str().expect("utf8")],
        &["not a GGUF file"],
    );
}

/// A mistyped `--db` is refused by every command that reads labels, with how to
/// make a database, and no empty file is left behind under the wrong name.
#[test]
fn a_mistyped_database_is_refused_not_created() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("typo.db");
    let report = dir.path().join("r.html");
    let out = dir.path().join("m");
    for args in [
        vec!["label"],
        vec!["export", "--format", "trl"],
        vec!["stats"],
        vec!["review"],
        vec!["report", "--out", report.to_str().expect("utf8")],
        vec!["train", "--out", out.to_str().expect("utf8")],
    ] {
        refused(
            &db,
            &args,
            &["typo.db: no such database (create one with `duel import"],
        );
        assert!(!db.exists(), "{args:?} created the database");
    }
}
