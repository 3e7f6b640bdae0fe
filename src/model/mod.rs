//! The reward model: tokenizer, trainable BERT encoder with a reward head,
//! checkpoints in the Hugging Face layout.

pub mod bert;
pub mod bf16;
pub mod checkpoint;
pub mod engine;
pub mod int8;
pub mod ops;
pub mod sgemm;
pub mod tokenize;
pub mod wide;

pub use bert::{BertConfig, DropoutRng, ModelError, RewardModel};
pub use tokenize::TextEncoder;

use std::path::{Path, PathBuf};

/// Where `scripts/fetch-models.sh` puts the encoder.
pub const DEFAULT_ENCODER_DIR: &str = "assets/models/all-MiniLM-L6-v2";

/// The encoder folder: `--model-dir`, or the fetched default next to the binary's
/// working directory.
pub fn encoder_dir(arg: Option<&Path>) -> PathBuf {
    arg.map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ENCODER_DIR))
}
