//! What the fuzz targets check, one function each, on arbitrary bytes: each must
//! return, never panic, and what it accepts must hold what the rest of `duel`
//! relies on. `fuzz/` runs them under libFuzzer (coverage-guided, on the stable
//! toolchain with `--sanitizer none`); `tests/fuzz.rs` replays the seeds and every
//! input kept from a finding, so `make test` fails if one comes back.

use crate::generator::llama::Llama;
use crate::io::import::{self, Format, RecordError};
use crate::model::bert::{BertConfig, RewardModel, check_weights};
use crate::store::NewPair;
use candle_core::{DType, Device, Tensor};
use std::io::Cursor;
use std::path::Path;

/// A fuzz target: arbitrary bytes in, a panic if something it relies on breaks.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/` and the seed folders call them.
pub const TARGETS: &[(&str, Target)] = &[
    ("parse_record", parse_record),
    ("csv_file", csv_file),
    ("jsonl_file", jsonl_file),
    ("parquet_file", parquet_file),
    ("gguf_file", gguf_file),
    ("model_files", model_files),
    ("sanitize", sanitize),
];

/// A pair import accepts: a prompt with text, two different responses.
fn check_pair(pair: &NewPair) {
    let p = &pair.prompt;
    let has_text = !p.text.trim().is_empty()
        || p.messages
            .as_ref()
            .is_some_and(|m| m.iter().any(|m| !m.content.trim().is_empty()));
    assert!(has_text, "a prompt with no text was accepted: {p:?}");
    assert_ne!(
        pair.response_a, pair.response_b,
        "identical responses were accepted as a pair"
    );
}

/// One JSON Lines record.
pub fn parse_record(data: &[u8]) {
    if let Ok(pair) = import::parse_json_line(data) {
        check_pair(&pair);
    }
}

fn records(data: &[u8], format: Format) {
    let mut handle = |_line: u64, rec: Result<NewPair, RecordError>| {
        if let Ok(pair) = rec {
            check_pair(&pair);
        }
        Ok(())
    };
    let _ = import::read_records(Cursor::new(data), format, 1 << 20, &mut handle);
}

/// A whole CSV file, header included.
pub fn csv_file(data: &[u8]) {
    records(data, Format::Csv);
}

/// A whole JSON Lines file: line splitting, blank lines, CRLF, a byte-order mark.
pub fn jsonl_file(data: &[u8]) {
    records(data, Format::Jsonl);
}

/// A whole Parquet file: footer, schema, pages (compressed or not), nested columns
/// turned into records.
pub fn parquet_file(data: &[u8]) {
    let mut handle = |_row: u64, rec: Result<NewPair, RecordError>| {
        if let Ok(pair) = rec {
            check_pair(&pair);
        }
        Ok(())
    };
    let _ = crate::io::parquet::read_rows(
        bytes::Bytes::copy_from_slice(data),
        1 << 20,
        &indicatif::ProgressBar::hidden(),
        &mut handle,
    );
}

/// A GGUF file: the header walk, candle's parser on what it lets through, the
/// configuration and tensor checks, then the tensors loaded and the tokenizer
/// built. Whatever passes the checks must load.
pub fn gguf_file(data: &[u8]) {
    let Ok((ct, cfg, r)) = Llama::check_from(Cursor::new(data), data.len() as u64) else {
        return;
    };
    let tokenizer = crate::generator::chat::ChatTokenizer::from_gguf(&ct);
    if let Err(e) = Llama::from_checked(ct, cfg, r, Path::new("fuzz.gguf")) {
        panic!("a file that passed the checks did not load: {e:#}");
    }
    drop(tokenizer);
}

/// A reward-model folder as one input: `config.json`, a zero byte,
/// `model.safetensors`. What passes the checks builds a model, and both forwards
/// (candle's and the training engine's) run on a short sequence.
pub fn model_files(data: &[u8]) {
    let Some(at) = data.iter().position(|&b| b == 0) else {
        return;
    };
    let (json, st) = (&data[..at], &data[at + 1..]);
    let Ok(config) = serde_json::from_slice::<BertConfig>(json) else {
        return;
    };
    if config.check().is_err() {
        return;
    }
    let Ok(weights) = candle_core::safetensors::load_buffer(st, &Device::Cpu) else {
        return;
    };
    if check_weights(&config, &weights).is_err() {
        return;
    }
    let model = RewardModel::from_weights(config.clone(), &weights, 0)
        .expect("checked weights build a model");
    let t = config.max_position_embeddings.min(3);
    let ids: Vec<u32> = (0..t).map(|i| (i % config.vocab_size) as u32).collect();
    let ids_t = Tensor::from_vec(ids.clone(), (1, t), &Device::Cpu).expect("ids");
    let mask = Tensor::ones((1, t), DType::F32, &Device::Cpu).expect("mask");
    let r = model
        .forward(&ids_t, &mask, None)
        .expect("a checked model runs");
    assert_eq!(r.dims(), [1]);
    let padded = crate::model::engine::Padded::new(&[&ids], 0);
    let r = model
        .rewards(&padded.batch())
        .expect("a checked model runs in the engine");
    assert_eq!(r.len(), 1);
}

/// Text from data on its way to the terminal: nothing but newlines, tabs and
/// printable characters comes out.
pub fn sanitize(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let out = crate::tui::sanitize::sanitize(&text);
    for c in out.chars() {
        let control = (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}')
            || matches!(c, '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{E0000}'..='\u{E007F}');
        assert!(!control, "{c:?} reached the terminal from {text:?}");
    }
}
