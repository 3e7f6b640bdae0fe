//! Model folders in the Hugging Face layout: loaded (checked against their config
//! first) and written (atomically, as checkpoints).
//!
//! A checkpoint folder holds `model.safetensors` (`bert.*` + `classifier.*`),
//! `config.json` (`BertForSequenceClassification`, one label), the tokenizer files,
//! and `duel.json` (how it was trained). It loads unchanged with
//! `transformers.AutoModelForSequenceClassification.from_pretrained(dir)`.

use super::bert::{BertConfig, ModelError, RewardModel, check_weights};
use candle_core::Device;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `config.json` of a model folder, checked against itself.
pub fn load_config(dir: &Path) -> Result<BertConfig, ModelError> {
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| ModelError::file(&path, e))?;
    let config: BertConfig =
        serde_json::from_slice(&bytes).map_err(|e| ModelError::file(&path, e))?;
    config.check().map_err(|e| ModelError::file(&path, e))?;
    Ok(config)
}

/// Loads `config.json` and `model.safetensors` from a folder (a base encoder or a
/// checkpoint of ours), checking the config against itself and every tensor against
/// the config first. A missing classifier is initialised from `seed`.
pub fn load(dir: &Path, seed: u64) -> Result<RewardModel, ModelError> {
    let config = load_config(dir)?;
    let st = dir.join("model.safetensors");
    let bytes = std::fs::read(&st).map_err(|e| ModelError::file(&st, e))?;
    let weights = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| ModelError::file(&st, format!("not a readable safetensors file: {e}")))?;
    drop(bytes);
    check_weights(&config, &weights).map_err(|e| ModelError::file(&st, e))?;
    RewardModel::from_weights(config, &weights, seed)
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Model(#[from] candle_core::Error),
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Tokenizer files copied from the base model when present.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
];

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut f = fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Writes `model` to `out`: everything goes to a temporary sibling folder first,
/// which then replaces `out` by rename, so a crash leaves the old checkpoint or the
/// new one, never half of one.
pub fn save(
    model: &RewardModel,
    base_dir: &Path,
    out: &Path,
    meta: &serde_json::Value,
    card: Option<&str>,
) -> Result<(), CheckpointError> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io(parent))?;
    let name =
        out.file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| CheckpointError::Invalid {
                path: out.to_owned(),
                msg: "not a folder name".into(),
            })?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;

    let tensors: HashMap<String, candle_core::Tensor> = model
        .named_vars()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    let st = tmp.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &st)?;
    fs::File::open(&st)
        .and_then(|f| f.sync_all())
        .map_err(io(&st))?;

    // The base config with the classification head declared.
    let base_cfg = base_dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&fs::read(&base_cfg).map_err(io(&base_cfg))?).map_err(|e| {
            CheckpointError::Invalid {
                path: base_cfg.clone(),
                msg: e.to_string(),
            }
        })?;
    if let Some(m) = cfg.as_object_mut() {
        m.insert(
            "architectures".into(),
            serde_json::json!(["BertForSequenceClassification"]),
        );
        m.insert("id2label".into(), serde_json::json!({"0": "LABEL_0"}));
        m.insert("label2id".into(), serde_json::json!({"LABEL_0": 0}));
        m.insert("num_labels".into(), serde_json::json!(1));
        // Training may have added a layer (mean pooling).
        m.insert(
            "num_hidden_layers".into(),
            serde_json::json!(model.config.num_hidden_layers),
        );
        m.entry("model_type")
            .or_insert_with(|| serde_json::json!("bert"));
        m.remove("_name_or_path");
    }
    let text = serde_json::to_vec_pretty(&cfg).map_err(|e| CheckpointError::Invalid {
        path: base_cfg.clone(),
        msg: e.to_string(),
    })?;
    write_synced(&tmp.join("config.json"), &text)?;
    for f in TOKENIZER_FILES {
        let src = base_dir.join(f);
        if src.exists() {
            let bytes = fs::read(&src).map_err(io(&src))?;
            write_synced(&tmp.join(f), &bytes)?;
        }
    }
    let meta_bytes = serde_json::to_vec_pretty(meta).unwrap_or_default();
    write_synced(&tmp.join("duel.json"), &meta_bytes)?;
    if let Some(card) = card {
        write_synced(&tmp.join("README.md"), card.as_bytes())?;
    }

    // Swap: out -> old, tmp -> out, drop old.
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let had_old = out.exists();
    if had_old {
        fs::rename(out, &old).map_err(io(out))?;
    }
    if let Err(e) = fs::rename(&tmp, out) {
        // Put the old one back rather than leave nothing.
        if had_old {
            let _ = fs::rename(&old, out);
        }
        return Err(io(out)(e));
    }
    if had_old {
        let _ = fs::remove_dir_all(&old);
    }
    if let Ok(d) = fs::File::open(parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads `duel.json` of a checkpoint, if any.
pub fn meta(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&fs::read(dir.join("duel.json")).ok()?).ok()
}

/// Puts back a checkpoint left aside by a `save` that was interrupted between its two
/// renames (the old folder is `.<name>.old-<pid>` beside `out`).
pub fn recover(out: &Path) {
    if out.exists() {
        return;
    }
    let (Some(parent), Some(name)) = (out.parent(), out.file_name().and_then(|n| n.to_str()))
    else {
        return;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let prefix = format!(".{name}.old-");
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix)
            && e.path().join("model.safetensors").exists()
            && fs::rename(e.path(), out).is_ok()
        {
            tracing::warn!(
                "recovered checkpoint {} from {}",
                out.display(),
                e.path().display()
            );
            return;
        }
    }
}
