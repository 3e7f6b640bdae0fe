//! A trainable BERT reward model in the Hugging Face
//! `BertForSequenceClassification` layout (`bert.*` + `classifier.*`, one output):
//! the reward is `classifier(dropout(tanh(pooler(h[CLS]))))`.
//!
//! Every op in the forward has a backward (see `ops`); candle-transformers' BERT is
//! not used because its encoder gets no gradient.

use super::ops::{gelu, layer_norm, softmax_last_dim};
use candle_core::{D, DType, Device, Result, Tensor, Var, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The fields of a Hugging Face BERT `config.json` that the forward uses; the rest of
/// the file is kept as is when a checkpoint is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_dropout() -> f64 {
    0.1
}
fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    /// The config against itself: sizes positive, heads dividing the width, rates
    /// that are rates. What it says of the tensors is checked by `check_weights`.
    pub fn check(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return Err(format!("`{name}` is 0; it must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(format!(
                "`layer_norm_eps` {} must be a positive number",
                self.layer_norm_eps
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("`{name}` {p} must be from 0 to below 1"));
            }
        }
        if self.hidden_act != "gelu" {
            return Err(format!(
                "`hidden_act` {:?} is not supported (only \"gelu\")",
                self.hidden_act.escape_debug().to_string()
            ));
        }
        Ok(())
    }

    /// Every tensor the model reads, with the shape this config gives it, by its
    /// name in a bare `BertModel` file (a sequence-classification checkpoint adds
    /// `bert.`). The classifier is optional (a base encoder has none).
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, f) = (self.hidden_size, self.intermediate_size);
        let embedding = [
            vec![self.vocab_size, h],
            vec![self.max_position_embeddings, h],
            vec![self.type_vocab_size, h],
            vec![h],
            vec![h],
        ];
        let mut v: Vec<(String, Vec<usize>)> = EMBEDDING_TENSORS
            .iter()
            .zip(embedding)
            .map(|(n, shape)| ((*n).to_owned(), shape))
            .collect();
        let layer_shape = |name: &str| -> Vec<usize> {
            match name {
                "intermediate.dense.weight" => vec![f, h],
                "intermediate.dense.bias" => vec![f],
                "output.dense.weight" => vec![h, f],
                n if n.ends_with(".bias") || n.contains("LayerNorm") => vec![h],
                _ => vec![h, h],
            }
        };
        for i in 0..self.num_hidden_layers {
            for n in LAYER_TENSORS {
                v.push((format!("encoder.layer.{i}.{n}"), layer_shape(n)));
            }
        }
        v.push((POOLER_TENSORS[0].to_owned(), vec![h, h]));
        v.push((POOLER_TENSORS[1].to_owned(), vec![h]));
        v
    }
}

/// A tensor of a model file that does not fit its config.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightError {
    #[error("no tensor `{name}` (the config asks for it)")]
    Missing { name: String },
    #[error("tensor `{name}`: expected shape {expected:?} from config.json, found {found:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}`: dtype {dtype}, expected a float type (f32, f16, bf16, f64)")]
    DType { name: String, dtype: String },
    #[error("tensor `{name}`: the file has more layers than `num_hidden_layers` {layers}")]
    ExtraLayer { name: String, layers: usize },
}

/// Checks that `weights` hold every tensor `config` asks for, each in its shape and
/// in a float type, and no layer beyond the config's count. Run before anything is
/// sized from the config, so a wrong file is an error, never an index out of range.
pub fn check_weights(
    config: &BertConfig,
    weights: &Weights,
) -> std::result::Result<(), WeightError> {
    let find = |name: &str| {
        let full = format!("bert.{name}");
        weights
            .get_key_value(&full)
            .or_else(|| weights.get_key_value(name))
            .map(|(k, t)| (k.clone(), t))
    };
    // The layer count sizes everything below: a config claiming more layers than
    // the file could hold is refused before a list of that length is made.
    let beyond = |i: usize| format!("encoder.layer.{i}.attention.self.query.weight");
    let last = config.num_hidden_layers.saturating_sub(1);
    if find(&beyond(last)).is_none() {
        return Err(WeightError::Missing { name: beyond(last) });
    }
    if let Some((name, _)) = find(&beyond(config.num_hidden_layers)) {
        return Err(WeightError::ExtraLayer {
            name,
            layers: config.num_hidden_layers,
        });
    }
    let check = |name: String, expected: Vec<usize>, t: &Tensor| {
        if !matches!(
            t.dtype(),
            DType::F32 | DType::F16 | DType::BF16 | DType::F64
        ) {
            return Err(WeightError::DType {
                name,
                dtype: format!("{:?}", t.dtype()),
            });
        }
        if t.dims() != expected.as_slice() {
            return Err(WeightError::Shape {
                name,
                expected,
                found: t.dims().to_vec(),
            });
        }
        Ok(())
    };
    for (name, expected) in config.tensor_shapes() {
        match find(&name) {
            Some((full, t)) => check(full, expected, t)?,
            None => return Err(WeightError::Missing { name }),
        }
    }
    let h = config.hidden_size;
    for (name, expected) in [
        ("classifier.weight", vec![1, h]),
        ("classifier.bias", vec![1]),
    ] {
        if let Some(t) = weights.get(name) {
            check(name.to_owned(), expected, t)?;
        }
    }
    Ok(())
}

/// Dropout masks come from a counter-based hash of (seed, call, index), so a run is
/// reproducible from its seed and backward regenerates the mask instead of storing it.
#[derive(Debug, Clone)]
pub struct DropoutRng {
    pub seed: u64,
    pub calls: u64,
}

impl DropoutRng {
    pub fn new(seed: u64) -> DropoutRng {
        DropoutRng { seed, calls: 0 }
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.calls += 1;
        splitmix(self.seed ^ splitmix(self.calls))
    }
}

#[inline(always)]
pub(crate) fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes the dropout mask `key` of rate `p` for elements `start..start + out.len()`
/// (1 kept, 0 dropped). Each hash gives two elements 24 random bits each, against
/// the threshold: element `i` reads hash `i / 2`, its high bits when `i` is even.
pub(crate) fn dropout_mask(key: u64, p: f32, start: usize, out: &mut [u8]) {
    let threshold = (f64::from(p) * f64::from(1u32 << 24)).ceil() as u64;
    let mut i = start;
    let rest: &mut [u8] = match out.split_first_mut() {
        Some((first, tail)) if i % 2 == 1 => {
            let h = splitmix(key ^ (i as u64 >> 1));
            *first = u8::from((h >> 16) & 0xFF_FFFF >= threshold);
            i += 1;
            tail
        }
        _ => out,
    };
    // `i` is even here: the pairs read hashes `i / 2` on.
    let whole = rest.len() & !1;
    let (pairs, last) = rest.split_at_mut(whole);
    super::wide::dropout_pairs(key, i as u64 >> 1, threshold, pairs);
    if let [last] = last {
        let h = splitmix(key ^ ((i + whole) as u64 >> 1));
        *last = u8::from(h >> 40 >= threshold);
    }
}

struct Dropout {
    p: f32,
    key: u64,
}

impl Dropout {
    fn apply(&self, s: &candle_core::CpuStorage, l: &candle_core::Layout) -> Result<Vec<f32>> {
        let candle_core::CpuStorage::F32(v) = s else {
            bail!("dropout: f32 only")
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            bail!("dropout: input must be contiguous")
        };
        let scale = 1.0 / (1.0 - self.p);
        let mut mask = vec![0u8; b - a];
        dropout_mask(self.key, self.p, 0, &mut mask);
        Ok(v[a..b]
            .iter()
            .zip(&mask)
            .map(|(x, &m)| x * f32::from(m) * scale)
            .collect())
    }
}

impl candle_core::CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "duel-dropout"
    }
    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        Ok((
            candle_core::CpuStorage::F32(self.apply(s, l)?),
            l.shape().clone(),
        ))
    }
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let same = Dropout {
            p: self.p,
            key: self.key,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&same)?))
    }
}

/// The key of the next dropout mask of rate `p`: none when not training or `p` is 0.
/// Both forwards draw their masks through this, in the same order.
pub(crate) fn draw(rng: &mut Option<&mut DropoutRng>, p: f64) -> Option<u64> {
    match rng {
        Some(r) if p > 0.0 => Some(r.next()),
        _ => None,
    }
}

fn dropout(x: &Tensor, p: f64, rng: &mut Option<&mut DropoutRng>) -> Result<Tensor> {
    match draw(rng, p) {
        Some(key) => x.contiguous()?.apply_op1(Dropout { p: p as f32, key }),
        None => Ok(x.clone()),
    }
}

/// `x @ w.T + b` for `x` of shape `(..., in)`.
pub struct Linear {
    pub weight: Var,
    pub bias: Var,
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inner = dims[dims.len() - 1];
        let rows = x.elem_count() / inner;
        let y = x
            .reshape((rows, inner))?
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?;
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = self.bias.dim(0)?;
        y.reshape(out)
    }
}

pub struct Norm {
    pub weight: Var,
    pub bias: Var,
}

/// The embeddings' tensors, by their names in a bare `BertModel` file (a
/// sequence-classification checkpoint adds `bert.`), in `named_vars` order. Loading,
/// saving and the engine's indices all read these tables.
pub const EMBEDDING_TENSORS: [&str; 5] = [
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
];

/// One encoder layer's tensors, under `encoder.layer.{i}.`, in `named_vars` order
/// (`Layer::vars`).
pub const LAYER_TENSORS: [&str; 16] = [
    "attention.self.query.weight",
    "attention.self.query.bias",
    "attention.self.key.weight",
    "attention.self.key.bias",
    "attention.self.value.weight",
    "attention.self.value.bias",
    "attention.output.dense.weight",
    "attention.output.dense.bias",
    "intermediate.dense.weight",
    "intermediate.dense.bias",
    "output.dense.weight",
    "output.dense.bias",
    "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias",
    "output.LayerNorm.weight",
    "output.LayerNorm.bias",
];

/// The pooler's tensors (part of the encoder: `bert.` in a checkpoint).
pub const POOLER_TENSORS: [&str; 2] = ["pooler.dense.weight", "pooler.dense.bias"];

/// The reward head's tensors (no `bert.` prefix in a checkpoint).
pub const CLASSIFIER_TENSORS: [&str; 2] = ["classifier.weight", "classifier.bias"];

pub struct Layer {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub attn_out: Linear,
    pub attn_norm: Norm,
    pub intermediate: Linear,
    pub output: Linear,
    pub out_norm: Norm,
}

impl Layer {
    /// Its tensors, in `LAYER_TENSORS` order.
    pub fn vars(&self) -> [&Var; 16] {
        [
            &self.query.weight,
            &self.query.bias,
            &self.key.weight,
            &self.key.bias,
            &self.value.weight,
            &self.value.bias,
            &self.attn_out.weight,
            &self.attn_out.bias,
            &self.intermediate.weight,
            &self.intermediate.bias,
            &self.output.weight,
            &self.output.bias,
            &self.attn_norm.weight,
            &self.attn_norm.bias,
            &self.out_norm.weight,
            &self.out_norm.bias,
        ]
    }

    /// A layer from its tensors, in `LAYER_TENSORS` order.
    fn from_vars(v: [Var; 16]) -> Layer {
        let [
            wq,
            bq,
            wk,
            bk,
            wv,
            bv,
            wo,
            bo,
            wi,
            bi,
            wout,
            bout,
            g1,
            b1,
            g2,
            b2,
        ] = v;
        let lin = |weight, bias| Linear { weight, bias };
        let norm = |weight, bias| Norm { weight, bias };
        Layer {
            query: lin(wq, bq),
            key: lin(wk, bk),
            value: lin(wv, bv),
            attn_out: lin(wo, bo),
            intermediate: lin(wi, bi),
            output: lin(wout, bout),
            attn_norm: norm(g1, b1),
            out_norm: norm(g2, b2),
        }
    }
}

pub struct RewardModel {
    pub config: BertConfig,
    pub word: Var,
    pub position: Var,
    pub token_type: Var,
    pub emb_norm: Norm,
    pub layers: Vec<Layer>,
    pub pooler: Linear,
    pub classifier: Linear,
    /// The reward head was read from the folder (a trained model), not initialised
    /// (a base encoder).
    pub head_from_file: bool,
}

/// Tensors by their names in the Hugging Face layout.
pub type Weights = HashMap<String, Tensor>;

/// Why a model folder cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file of the folder is missing, unreadable or does not fit the others: the
    /// user's to fix (exit status 2), and the message names the file.
    #[error("{path}: {msg}")]
    File {
        path: std::path::PathBuf,
        msg: String,
    },
    /// A config that contradicts itself, given in code rather than read from a file.
    #[error("config: {0}")]
    Config(String),
    /// Tensors that do not fit the config, given in code.
    #[error(transparent)]
    Weights(#[from] WeightError),
    #[error(transparent)]
    Compute(#[from] candle_core::Error),
}

impl ModelError {
    pub fn file(path: &Path, msg: impl std::fmt::Display) -> ModelError {
        ModelError::File {
            path: path.to_owned(),
            msg: msg.to_string(),
        }
    }

    /// Whether the files, not the program, are at fault.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ModelError::File { .. })
    }
}

impl RewardModel {
    /// Builds the model from named tensors. Names may carry the `bert.` prefix (a
    /// sequence-classification checkpoint) or not (a bare `BertModel` file). A
    /// missing classifier is initialised from `seed` (normal, std 0.02; bias 0).
    pub fn from_weights(
        config: BertConfig,
        weights: &Weights,
        seed: u64,
    ) -> std::result::Result<RewardModel, ModelError> {
        config.check().map_err(ModelError::Config)?;
        check_weights(&config, weights)?;
        let get = |name: &str| -> std::result::Result<Var, ModelError> {
            let t = weights
                .get(&format!("bert.{name}"))
                .or_else(|| weights.get(name))
                .ok_or_else(|| WeightError::Missing { name: name.into() })?;
            Ok(Var::from_tensor(&t.to_dtype(DType::F32)?.contiguous()?)?)
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let vars = LAYER_TENSORS
                .iter()
                .map(|n| get(&format!("encoder.layer.{i}.{n}")))
                .collect::<std::result::Result<Vec<Var>, ModelError>>()?;
            let Ok(vars) = <[Var; 16]>::try_from(vars) else {
                unreachable!("one tensor for each name of LAYER_TENSORS")
            };
            layers.push(Layer::from_vars(vars));
        }
        let h = config.hidden_size;
        let found = (
            weights.get(CLASSIFIER_TENSORS[0]),
            weights.get(CLASSIFIER_TENSORS[1]),
        );
        let head_from_file = matches!(found, (Some(_), Some(_)));
        let classifier = match found {
            (Some(w), Some(b)) => Linear {
                weight: Var::from_tensor(&w.to_dtype(DType::F32)?)?,
                bias: Var::from_tensor(&b.to_dtype(DType::F32)?)?,
            },
            _ => Linear {
                weight: Var::from_tensor(&seeded_normal(seed, h, 0.02)?.reshape((1, h))?)?,
                bias: Var::zeros(1, DType::F32, &Device::Cpu)?,
            },
        };
        let [word, position, token_type, g, b] = EMBEDDING_TENSORS;
        let [pw, pb] = POOLER_TENSORS;
        Ok(RewardModel {
            word: get(word)?,
            position: get(position)?,
            token_type: get(token_type)?,
            emb_norm: Norm {
                weight: get(g)?,
                bias: get(b)?,
            },
            layers,
            pooler: Linear {
                weight: get(pw)?,
                bias: get(pb)?,
            },
            classifier,
            head_from_file,
            config,
        })
    }

    /// Every parameter with its Hugging Face name, in a fixed order.
    pub fn named_vars(&self) -> Vec<(String, &Var)> {
        let embeddings = [
            &self.word,
            &self.position,
            &self.token_type,
            &self.emb_norm.weight,
            &self.emb_norm.bias,
        ];
        let mut v: Vec<(String, &Var)> = EMBEDDING_TENSORS
            .iter()
            .zip(embeddings)
            .map(|(n, var)| (format!("bert.{n}"), var))
            .collect();
        for (i, l) in self.layers.iter().enumerate() {
            for (n, var) in LAYER_TENSORS.iter().zip(l.vars()) {
                v.push((format!("bert.encoder.layer.{i}.{n}"), var));
            }
        }
        for (n, var) in POOLER_TENSORS
            .iter()
            .zip([&self.pooler.weight, &self.pooler.bias])
        {
            v.push((format!("bert.{n}"), var));
        }
        for (n, var) in CLASSIFIER_TENSORS
            .iter()
            .zip([&self.classifier.weight, &self.classifier.bias])
        {
            v.push(((*n).to_owned(), var));
        }
        v
    }

    /// Rewards for a padded batch: `ids` `(B, T)` u32, `mask` `(B, T)` f32 (1 for a
    /// token, 0 for padding). Dropout is on when `rng` is given (training).
    pub fn forward(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        rng: Option<&mut DropoutRng>,
    ) -> Result<Tensor> {
        Ok(self.forward_pooled(ids, mask, rng)?.0)
    }

    /// The rewards and the pooled vectors they were computed from (before dropout).
    pub fn forward_pooled(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        mut rng: Option<&mut DropoutRng>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t) = ids.dims2()?;
        let cfg = &self.config;
        if t > cfg.max_position_embeddings {
            bail!(
                "sequence of {t} tokens is longer than the model's {}",
                cfg.max_position_embeddings
            );
        }
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps as f32;
        let hd = h / cfg.num_attention_heads;
        let nh = cfg.num_attention_heads;

        let words = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, h))?;
        let pos = self.position.narrow(0, 0, t)?;
        let typ = self.token_type.narrow(0, 0, 1)?;
        let emb = words.broadcast_add(&pos)?.broadcast_add(&typ)?;
        let mut x = layer_norm(&emb, &self.emb_norm.weight, &self.emb_norm.bias, eps)?;
        x = dropout(&x, cfg.hidden_dropout_prob, &mut rng)?;

        // Padding gets a large negative score before the softmax.
        let bias = ((mask.to_dtype(DType::F32)? - 1.0)? * 1e4)?.reshape((b, 1, 1, t))?;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in &self.layers {
            let heads = |lin: &Linear| -> Result<Tensor> {
                lin.forward(&x)?
                    .reshape((b, t, nh, hd))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = (heads(&l.query)? * scale)?;
            let k = heads(&l.key)?;
            let v = heads(&l.value)?;
            let scores = q.matmul(&k.t()?.contiguous()?)?.broadcast_add(&bias)?;
            let probs = softmax_last_dim(&scores)?;
            let probs = dropout(&probs, cfg.attention_probs_dropout_prob, &mut rng)?;
            let ctx = probs
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((b, t, h))?;
            let attn = dropout(
                &l.attn_out.forward(&ctx)?,
                cfg.hidden_dropout_prob,
                &mut rng,
            )?;
            let x1 = layer_norm(&(attn + &x)?, &l.attn_norm.weight, &l.attn_norm.bias, eps)?;
            let inter = gelu(&l.intermediate.forward(&x1)?)?;
            let out = dropout(
                &l.output.forward(&inter)?,
                cfg.hidden_dropout_prob,
                &mut rng,
            )?;
            x = layer_norm(&(out + &x1)?, &l.out_norm.weight, &l.out_norm.bias, eps)?;
        }
        let cls = x.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pooler.forward(&cls)?.tanh()?;
        let dropped = dropout(&pooled, cfg.hidden_dropout_prob, &mut rng)?;
        let rewards = self.classifier.forward(&dropped)?.squeeze(D::Minus1)?;
        Ok((rewards, pooled))
    }
}

/// How many times the mean layer weighs the tokens' mean against the first token's
/// own state (its residual) before the layer norm.
pub const MEAN_LAYER_GAIN: f64 = 8.0;

impl RewardModel {
    /// Appends an encoder layer that gives the first position the mean of all the
    /// tokens' states (mean pooling, which the bundled sentence encoder was trained
    /// for), while the model stays a plain `BertForSequenceClassification` that
    /// `transformers` runs unchanged. Its queries and keys are zero, so every token
    /// attends to all the others equally; zero queries and keys also get zero
    /// gradients, so the attention stays uniform while the rest trains. Its values
    /// pass the states through, its output weighs their mean `MEAN_LAYER_GAIN` times
    /// the first token's own state, and its feed-forward part starts at zero.
    pub fn add_mean_layer(&mut self) -> Result<()> {
        let (h, f) = (self.config.hidden_size, self.config.intermediate_size);
        let cpu = &Device::Cpu;
        let zeros = |shape: &[usize]| Var::zeros(shape, DType::F32, cpu);
        let eye = |gain: f64| Var::from_tensor(&(Tensor::eye(h, DType::F32, cpu)? * gain)?);
        let lin = |weight, bias| Linear { weight, bias };
        let norm = || -> Result<Norm> {
            Ok(Norm {
                weight: Var::ones(h, DType::F32, cpu)?,
                bias: zeros(&[h])?,
            })
        };
        self.layers.push(Layer {
            query: lin(zeros(&[h, h])?, zeros(&[h])?),
            key: lin(zeros(&[h, h])?, zeros(&[h])?),
            value: lin(eye(1.0)?, zeros(&[h])?),
            attn_out: lin(eye(MEAN_LAYER_GAIN)?, zeros(&[h])?),
            attn_norm: norm()?,
            intermediate: lin(zeros(&[f, h])?, zeros(&[f])?),
            output: lin(zeros(&[h, f])?, zeros(&[h])?),
            out_norm: norm()?,
        });
        self.config.num_hidden_layers += 1;
        Ok(())
    }
}

/// Normal(0, std) values from a seed (Box–Muller over the counter hash).
pub fn seeded_normal(seed: u64, n: usize, std: f32) -> Result<Tensor> {
    let u = |i: u64| ((splitmix(seed ^ splitmix(i)) >> 40) as f32 + 0.5) / (1u64 << 24) as f32;
    let v: Vec<f32> = (0..n as u64)
        .map(|i| {
            let (u1, u2) = (u(2 * i), u(2 * i + 1));
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect();
    Tensor::from_vec(v, n, &Device::Cpu)
}

/// Random weights for `cfg` in the bare `BertModel` naming (normal std 0.02 for
/// matrices, ones and zeros for norms and biases): tiny models for tests and benches.
pub fn random_weights(cfg: &BertConfig, seed: u64) -> Result<Weights> {
    let mut w = Weights::new();
    // Each matrix draws from its own stream, numbered in `tensor_shapes` order (the
    // PyTorch gradient fixture is drawn the same way).
    let mut n = 0u64;
    for (name, shape) in cfg.tensor_shapes() {
        let t = if name.contains("LayerNorm.weight") {
            Tensor::ones(shape.as_slice(), DType::F32, &Device::Cpu)?
        } else if name.ends_with(".bias") {
            Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu)?
        } else {
            n += 1;
            let count: usize = shape.iter().product();
            seeded_normal(splitmix(seed ^ n), count, 0.02)?.reshape(shape.as_slice())?
        };
        w.insert(name, t);
    }
    Ok(w)
}

/// A small configuration with MiniLM's vocabulary, so its tokenizer applies.
pub fn tiny_config() -> BertConfig {
    BertConfig {
        vocab_size: 30522,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 512,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        hidden_act: "gelu".into(),
    }
}

/// Writes a tiny random model folder (config, safetensors, and the tokenizer copied
/// from `tokenizer_from`), loadable like any BERT folder.
pub fn write_tiny_model(dir: &Path, tokenizer_from: &Path, seed: u64) -> Result<()> {
    let cfg = tiny_config();
    std::fs::create_dir_all(dir).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let weights = random_weights(&cfg, seed)?;
    candle_core::safetensors::save(&weights, dir.join("model.safetensors"))?;
    let json =
        serde_json::to_vec_pretty(&cfg).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    std::fs::write(dir.join("config.json"), json)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    std::fs::copy(tokenizer_from, dir.join("tokenizer.json"))
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", tokenizer_from.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::dropout_mask;

    /// A mask is the same whether drawn at once or in pieces from any offset, and
    /// keeps about `1 - p` of the elements.
    #[test]
    fn dropout_masks_do_not_depend_on_how_they_are_cut() {
        let (key, p) = (0xDEAD_BEEF, 0.1);
        let mut whole = vec![0u8; 10_001];
        dropout_mask(key, p, 0, &mut whole);
        for (start, len) in [(0, 1), (1, 1), (1, 2), (3, 7), (4, 4096), (777, 1234)] {
            let mut part = vec![0u8; len];
            dropout_mask(key, p, start, &mut part);
            assert_eq!(part, whole[start..start + len], "from {start}, {len}");
        }
        let kept = whole.iter().filter(|&&m| m == 1).count() as f64 / whole.len() as f64;
        assert!((kept - 0.9).abs() < 0.01, "{kept}");
        let mut other = vec![0u8; 10_001];
        dropout_mask(key + 1, p, 0, &mut other);
        assert_ne!(whole, other);
        // Element by element, as the comment on `dropout_mask` says: trained models
        // depend on these masks, so they may not change with the code that draws them.
        let threshold = (f64::from(p) * f64::from(1u32 << 24)).ceil() as u64;
        for (i, &m) in whole.iter().enumerate() {
            let h = super::splitmix(key ^ (i as u64 >> 1));
            let bits = if i % 2 == 0 {
                h >> 40
            } else {
                (h >> 16) & 0xFF_FFFF
            };
            assert_eq!(m, u8::from(bits >= threshold), "element {i}");
        }
    }
}
