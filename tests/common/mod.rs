#![allow(dead_code)]

use duel::domain::Prompt;
use duel::store::{NewPair, Store};
use duel::tui::{App, Config};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use std::io::Write;
use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tiny random BERT reward model (MiniLM's tokenizer) written to `dir`, for
/// tests that need a model to train but not the real one's weights.
pub fn write_tiny_model(dir: &Path, seed: u64) {
    duel::model::bert::write_tiny_model(
        dir,
        &repo().join("assets/models/all-MiniLM-L6-v2/tokenizer.json"),
        seed,
    )
    .expect("tiny model");
}

/// The Python with `datasets`, `trl` and `huggingface_hub`, made by
/// `scripts/pyenv.sh` (which `make test` runs).
pub fn python() -> PathBuf {
    let p = std::env::var_os("DUEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} missing: run `make test` (it creates .venv with `datasets`)",
        p.display()
    );
    p
}

/// Runs `script` with `args` in that Python, offline, and returns the JSON value
/// it printed last.
pub fn py_json(script: &str, args: &[&Path]) -> serde_json::Value {
    let home = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", home.path().join("hf"))
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(
        out.stdout
            .rsplit(|b| *b == b'\n')
            .find(|l| !l.is_empty())
            .expect("output"),
    )
    .expect("json")
}

pub fn demo() -> PathBuf {
    repo().join("data/demo_pairs.jsonl")
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_duel"))
}

/// Runs `duel --db DB ARGS...` to the end.
pub fn duel(db: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("run duel")
}

pub fn config(annotator: &str) -> Config {
    Config {
        annotator: annotator.into(),
        overlap: 1,
        always_strength: false,
        guidelines: "Be kind.\nPrefer correct answers.".into(),
        seed: Some(7),
        order: duel::store::QueueOrder::Sequential,
        random_share: 0.2,
        show_model: false,
        gold_rate: 0.0,
    }
}

pub fn store_with(pairs: &[(&str, &str, &str)]) -> Store {
    let mut s = Store::open_in_memory().expect("store");
    let v: Vec<NewPair> = pairs
        .iter()
        .map(|(p, a, b)| NewPair::new(Prompt::from_text((*p).into()), (*a).into(), (*b).into()))
        .collect();
    s.insert_pairs(&v).expect("insert");
    s
}

pub fn demo_store(path: &Path) -> Store {
    let mut s = Store::open(path).expect("store");
    duel::io::import::import_file(&mut s, &demo(), &Default::default()).expect("import demo");
    s
}

/// Draws the app on a test terminal, as the event loop does (what the frame learned
/// goes back to the app), and returns the screen as text lines.
pub fn render(app: &mut App, w: u16, h: u16) -> (Terminal<TestBackend>, String) {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    let mut cache = duel::tui::view::Cache::default();
    let mut drawn = duel::tui::app::Drawn::default();
    t.draw(|f| drawn = duel::tui::view::draw(app, f, &mut cache))
        .expect("draw");
    app.drawn(drawn);
    let text = screen_text(&t);
    (t, text)
}

pub fn screen_text(t: &Terminal<TestBackend>) -> String {
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

/// `n` distinct pairs `({tag} question i, …)` written to `path` as JSON Lines.
pub fn pairs_file(path: &Path, n: usize, tag: &str) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for i in 0..n {
        writeln!(
            f,
            "{}",
            serde_json::json!({
                "prompt": format!("{tag} question {i}: what is {i} + {i}?"),
                "response_a": format!("It is {}.", 2 * i),
                "response_b": format!("Probably {}, or so.", 2 * i + 1),
            })
        )
        .expect("write");
    }
}

/// A store with `n` pairs `(q{i}, a{i}, b{i})`, ids 1..=n.
pub fn numbered_store(n: usize) -> Store {
    let pairs: Vec<(String, String, String)> = (1..=n)
        .map(|i| (format!("q{i}"), format!("a{i}"), format!("b{i}")))
        .collect();
    let refs: Vec<(&str, &str, &str)> = pairs
        .iter()
        .map(|(p, a, b)| (p.as_str(), a.as_str(), b.as_str()))
        .collect();
    store_with(&refs)
}

/// Records a plain judgement (no side, strength, note or time) by `who`.
pub fn judge(store: &mut Store, pair_id: i64, who: &str, choice: duel::domain::Choice) -> i64 {
    store
        .record_label(&duel::domain::NewLabel::plain(pair_id, who, choice, "test"))
        .expect("label")
}

/// GPT-2's byte-level alphabet: the printable characters for each byte, in byte order.
fn byte_level_alphabet() -> Vec<String> {
    let printable = |b: u32| {
        (u32::from(b'!')..=u32::from(b'~')).contains(&b)
            || (0xA1..=0xAC).contains(&b)
            || (0xAE..=0xFF).contains(&b)
    };
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).expect("char").to_string()
        })
        .collect()
}

/// A tiny llama GGUF (one layer, width 64, two heads sharing one key/value head,
/// Q4_1 matrices, a byte-level vocabulary with `<|im_start|>` and `<|im_end|>`),
/// its metadata and tensors passed through `edit` first, so that tests can spoil
/// one thing at a time.
pub fn write_tiny_gguf(
    path: &Path,
    edit: impl FnOnce(
        &mut Vec<(String, candle_core::quantized::gguf_file::Value)>,
        &mut Vec<(String, candle_core::quantized::QTensor)>,
    ),
) {
    use candle_core::quantized::gguf_file::Value;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    let (dim, ff, kv) = (64usize, 64usize, 32usize);
    let mut tokens = byte_level_alphabet();
    tokens.push("<|im_start|>".into());
    tokens.push("<|im_end|>".into());
    let vocab = tokens.len();
    let mut meta: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("llama.embedding_length".into(), Value::U32(dim as u32)),
        ("llama.feed_forward_length".into(), Value::U32(ff as u32)),
        ("llama.block_count".into(), Value::U32(1)),
        ("llama.attention.head_count".into(), Value::U32(2)),
        ("llama.attention.head_count_kv".into(), Value::U32(1)),
        ("llama.context_length".into(), Value::U32(256)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(Vec::new())),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(vocab as u32 - 1),
        ),
    ];
    let mut seed = 1u64;
    let mut matrix = |rows: usize, cols: usize| {
        seed += 1;
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| (((i as u64 + 1) * seed * 2654435761) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let t = Tensor::from_vec(v, (rows, cols), &Device::Cpu).expect("tensor");
        QTensor::quantize(&t, GgmlDType::Q4_1).expect("quantize")
    };
    let ones = |n: usize| {
        let t = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).expect("ones");
        QTensor::quantize(&t, GgmlDType::F32).expect("f32")
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), matrix(vocab, dim)),
        ("output_norm.weight".into(), ones(dim)),
        ("blk.0.attn_norm.weight".into(), ones(dim)),
        ("blk.0.attn_q.weight".into(), matrix(dim, dim)),
        ("blk.0.attn_k.weight".into(), matrix(kv, dim)),
        ("blk.0.attn_v.weight".into(), matrix(kv, dim)),
        ("blk.0.attn_output.weight".into(), matrix(dim, dim)),
        ("blk.0.ffn_norm.weight".into(), ones(dim)),
        ("blk.0.ffn_gate.weight".into(), matrix(ff, dim)),
        ("blk.0.ffn_up.weight".into(), matrix(ff, dim)),
        ("blk.0.ffn_down.weight".into(), matrix(dim, ff)),
    ];
    edit(&mut meta, &mut tensors);
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut f = std::fs::File::create(path).expect("create gguf");
    candle_core::quantized::gguf_file::write(&mut f, &meta_refs, &tensor_refs).expect("write gguf");
}
