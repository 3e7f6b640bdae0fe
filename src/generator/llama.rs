//! A llama-architecture decoder over quantized GGUF weights, written for generating
//! pairs: every buffer is allocated once and reused, the key/value cache is
//! preallocated, several sequences advance in one batch (both responses of a pair
//! share each weight read), and a prompt's cache can be copied to a second sequence.

use super::quant::{BLOCK, Kernel, Q41, Q80, QActs, QMatrix, matmul};
use anyhow::{Context, Result, bail};
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use rayon::prelude::*;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Config {
    pub n_layer: usize,
    pub dim: usize,
    pub ff: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub ctx: usize,
    pub rope_base: f32,
    pub eps: f32,
}

impl Config {
    fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }
    fn qkv_dim(&self) -> usize {
        self.dim + 2 * self.kv_dim()
    }
}

struct Layer {
    attn_norm: Vec<f32>,
    /// q, k and v stacked: one product per layer instead of three.
    wqkv: QMatrix,
    wo: QMatrix,
    ffn_norm: Vec<f32>,
    /// gate and up stacked.
    w13: QMatrix,
    w2: QMatrix,
}

pub struct Llama {
    pub cfg: Config,
    embed: Q80,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: QMatrix,
    /// cos and sin of each position and frequency: `[pos][head_dim / 2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    kernel: Kernel,
}

/// The keys and values one sequence has seen, preallocated to a fixed length.
#[derive(Clone)]
pub struct KvCache {
    k: Vec<f32>,
    v: Vec<f32>,
    /// Positions filled.
    pub len: usize,
    cap: usize,
    layer_stride: usize,
}

impl KvCache {
    pub fn new(cfg: &Config, cap: usize) -> KvCache {
        let layer_stride = cap * cfg.kv_dim();
        KvCache {
            k: vec![0.0; cfg.n_layer * layer_stride],
            v: vec![0.0; cfg.n_layer * layer_stride],
            len: 0,
            cap,
            layer_stride,
        }
    }
    pub fn capacity(&self) -> usize {
        self.cap
    }
    /// Makes this cache hold the same prefix as `other` (a shared prompt).
    pub fn copy_from(&mut self, other: &KvCache) {
        assert_eq!(self.cap, other.cap);
        let kv = self.layer_stride / self.cap;
        let n = other.len * kv;
        for l in 0..self.k.len() / self.layer_stride {
            let at = l * self.layer_stride;
            self.k[at..at + n].copy_from_slice(&other.k[at..at + n]);
            self.v[at..at + n].copy_from_slice(&other.v[at..at + n]);
        }
        self.len = other.len;
    }
}

/// Buffers for one forward pass, grown as needed and kept.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    scores: Vec<f32>,
    proj: Vec<f32>,
    ff: Vec<f32>,
    h: Vec<f32>,
    acts: QActs,
    t: Vec<f32>,
    pub logits: Vec<f32>,
}

/// A GGUF file that cannot be used, and why: the user's to fix (exit status 2).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {msg}")]
pub struct BadGguf {
    pub path: std::path::PathBuf,
    pub msg: String,
}

/// The longest context a sequence gets, whatever the file says it was trained for:
/// the rotary tables are sized by it, never by a number from the file.
pub const MAX_CONTEXT: usize = 8192;

/// The most layers, heads and widths accepted; far above any model this runs, and
/// low enough that no product of them overflows.
const MAX_SIZE: usize = 1 << 20;

fn meta_usize(ct: &gguf_file::Content, key: &str) -> Result<Option<usize>, String> {
    let Some(v) = ct.metadata.get(key) else {
        return Ok(None);
    };
    let n = v
        .to_u32()
        .map(u64::from)
        .or_else(|_| v.to_u64())
        .map_err(|_| format!("metadata `{key}`: not an unsigned integer"))?;
    match usize::try_from(n) {
        Ok(n) if (1..=MAX_SIZE).contains(&n) => Ok(Some(n)),
        _ => Err(format!("metadata `{key}`: {n} is outside 1 to {MAX_SIZE}")),
    }
}

fn required(ct: &gguf_file::Content, key: &str) -> Result<usize, String> {
    meta_usize(ct, key)?.ok_or_else(|| format!("metadata has no `{key}`"))
}

fn meta_f32(ct: &gguf_file::Content, key: &str, default: f32) -> Result<f32, String> {
    match ct.metadata.get(key) {
        None => Ok(default),
        Some(v) => match v.to_f32() {
            Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
            _ => Err(format!("metadata `{key}`: not a positive number")),
        },
    }
}

/// The model's sizes from the metadata, checked against each other.
fn config(ct: &gguf_file::Content) -> Result<Config, String> {
    let arch = ct
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if arch != "llama" {
        return Err(format!(
            "architecture `{}` is not supported (llama only)",
            arch.escape_debug()
        ));
    }
    let dim = required(ct, "llama.embedding_length")?;
    let n_head = required(ct, "llama.attention.head_count")?;
    let n_kv_head = meta_usize(ct, "llama.attention.head_count_kv")?.unwrap_or(n_head);
    if !dim.is_multiple_of(n_head) {
        return Err(format!(
            "metadata `llama.embedding_length` {dim} is not a multiple of \
             `llama.attention.head_count` {n_head}"
        ));
    }
    let head_dim = meta_usize(ct, "llama.rope.dimension_count")?.unwrap_or(dim / n_head);
    if head_dim * n_head != dim || !head_dim.is_multiple_of(2) {
        return Err(format!(
            "metadata `llama.rope.dimension_count` {head_dim}: an even head width, \
             times {n_head} heads, must be `llama.embedding_length` {dim}"
        ));
    }
    if !n_head.is_multiple_of(n_kv_head) {
        return Err(format!(
            "metadata `llama.attention.head_count_kv` {n_kv_head} does not divide \
             `llama.attention.head_count` {n_head}"
        ));
    }
    let ff = required(ct, "llama.feed_forward_length")?;
    for (key, v) in [
        ("llama.embedding_length", dim),
        ("llama.feed_forward_length", ff),
    ] {
        if !v.is_multiple_of(BLOCK) {
            return Err(format!(
                "metadata `{key}` {v} is not a multiple of {BLOCK} (quantized blocks)"
            ));
        }
    }
    Ok(Config {
        n_layer: required(ct, "llama.block_count")?,
        dim,
        ff,
        n_head,
        n_kv_head,
        head_dim,
        vocab: 0,
        ctx: meta_usize(ct, "llama.context_length")?
            .unwrap_or(2048)
            .min(MAX_CONTEXT),
        rope_base: meta_f32(ct, "llama.rope.freq_base", 10_000.0)?,
        eps: meta_f32(ct, "llama.attention.layer_norm_rms_epsilon", 1e-5)?,
    })
}

/// Checks that tensor `name` exists with `shape` (rows, then columns; one number
/// for a vector), before its bytes are read.
fn check_tensor(ct: &gguf_file::Content, name: &str, shape: &[usize]) -> Result<(), String> {
    let info = ct
        .tensor_infos
        .get(name)
        .ok_or_else(|| format!("no tensor `{name}`"))?;
    let found = info.shape.dims();
    if found != shape {
        return Err(format!(
            "tensor `{name}`: expected shape {shape:?} from the metadata, found {found:?}"
        ));
    }
    Ok(())
}

/// Every tensor the forward reads, against the config.
fn check_tensors(ct: &gguf_file::Content, cfg: &Config) -> Result<(), String> {
    let (dim, kv, ff) = (cfg.dim, cfg.kv_dim(), cfg.ff);
    let vocab = ct
        .tensor_infos
        .get("token_embd.weight")
        .and_then(|t| t.shape.dims().first().copied())
        .ok_or("no tensor `token_embd.weight`")?;
    if vocab == 0 {
        return Err("tensor `token_embd.weight` has no rows".into());
    }
    check_tensor(ct, "token_embd.weight", &[vocab, dim])?;
    if ct.tensor_infos.contains_key("output.weight") {
        check_tensor(ct, "output.weight", &[vocab, dim])?;
    }
    check_tensor(ct, "output_norm.weight", &[dim])?;
    for i in 0..cfg.n_layer {
        let p = format!("blk.{i}");
        for (name, shape) in [
            ("attn_norm", vec![dim]),
            ("attn_q", vec![dim, dim]),
            ("attn_k", vec![kv, dim]),
            ("attn_v", vec![kv, dim]),
            ("attn_output", vec![dim, dim]),
            ("ffn_norm", vec![dim]),
            ("ffn_gate", vec![ff, dim]),
            ("ffn_up", vec![ff, dim]),
            ("ffn_down", vec![dim, ff]),
        ] {
            check_tensor(ct, &format!("{p}.{name}.weight"), &shape)?;
        }
    }
    if let Some(gguf_file::Value::Array(tokens)) = ct.metadata.get("tokenizer.ggml.tokens")
        && tokens.len() > vocab
    {
        return Err(format!(
            "metadata `tokenizer.ggml.tokens` holds {} tokens, but `token_embd.weight` has \
             {vocab} rows",
            tokens.len()
        ));
    }
    Ok(())
}

impl Llama {
    /// Checks a GGUF file without loading its tensors: its layout
    /// (`gguf::check`), every metadata value the model reads and every tensor's
    /// type and shape. Returns the parsed header, the configuration and a reader.
    pub fn check(path: &Path) -> Result<(gguf_file::Content, Config, BufReader<File>)> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata()?.len();
        Ok(
            Llama::check_from(BufReader::new(file), len).map_err(|msg| BadGguf {
                path: path.to_owned(),
                msg,
            })?,
        )
    }

    /// `check` over any reader of `len` bytes.
    pub fn check_from<R: BufRead + Seek>(
        mut r: R,
        len: u64,
    ) -> std::result::Result<(gguf_file::Content, Config, R), String> {
        super::gguf::check_reader(&mut r, len)?;
        r.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
        let ct = gguf_file::Content::read(&mut r)
            .map_err(|e| format!("not a readable GGUF file: {e}"))?;
        let cfg = config(&ct)?;
        check_tensors(&ct, &cfg)?;
        Ok((ct, cfg, r))
    }

    /// Loads a GGUF file, checked first (`Llama::check`): a file that fails is a
    /// `BadGguf` naming the key or tensor.
    pub fn load(path: &Path) -> Result<(Llama, gguf_file::Content)> {
        let (ct, cfg, r) = Llama::check(path)?;
        Llama::from_checked(ct, cfg, r, path)
    }

    /// Loads the tensors of a checked file (`check_from`); `path` names it in errors.
    pub fn from_checked<R: Read + Seek>(
        ct: gguf_file::Content,
        cfg: Config,
        mut r: R,
        path: &Path,
    ) -> Result<(Llama, gguf_file::Content)> {
        let dev = candle_core::Device::Cpu;
        let mut tensor = |name: &str| -> Result<QTensor> {
            ct.tensor(&mut r, name, &dev)
                .with_context(|| format!("{}: tensor `{name}`", path.display()))
        };
        let embed_t = tensor("token_embd.weight")?;
        let embed = to_q80(&embed_t)?;
        let output = match tensor("output.weight") {
            Ok(t) => to_qmatrix(&t)?,
            Err(_) => QMatrix::from(to_q80(&embed_t)?),
        };
        let norm = to_f32(&tensor("output_norm.weight")?)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("blk.{i}");
            let q = tensor(&format!("{p}.attn_q.weight"))?;
            let k = tensor(&format!("{p}.attn_k.weight"))?;
            let v = tensor(&format!("{p}.attn_v.weight"))?;
            let gate = tensor(&format!("{p}.ffn_gate.weight"))?;
            let up = tensor(&format!("{p}.ffn_up.weight"))?;
            layers.push(Layer {
                attn_norm: to_f32(&tensor(&format!("{p}.attn_norm.weight"))?)?,
                wqkv: stack(&[&q, &k, &v])?,
                wo: to_qmatrix(&tensor(&format!("{p}.attn_output.weight"))?)?,
                ffn_norm: to_f32(&tensor(&format!("{p}.ffn_norm.weight"))?)?,
                w13: stack(&[&gate, &up])?,
                w2: to_qmatrix(&tensor(&format!("{p}.ffn_down.weight"))?)?,
            });
        }
        let mut cfg = cfg;
        cfg.vocab = output.rows();
        let half = cfg.head_dim / 2;
        let max_pos = cfg.ctx;
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for pos in 0..max_pos {
            for i in 0..half {
                let freq = 1.0 / (cfg.rope_base as f64).powf(2.0 * i as f64 / cfg.head_dim as f64);
                let a = pos as f64 * freq;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        let model = Llama {
            cfg,
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            kernel: Kernel::detect(),
        };
        Ok((model, ct))
    }

    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Runs `tokens[i]` through the model as the next token of `caches[i]`'s sequence
    /// (one row each), or, with one cache, a whole prompt chunk. Leaves the logits of
    /// the last row of each sequence in `s.logits` (`[seq][vocab]`).
    pub fn forward(
        &self,
        caches: &mut [&mut KvCache],
        tokens: &[&[u32]],
        s: &mut Scratch,
    ) -> Result<()> {
        let cfg = &self.cfg;
        assert_eq!(caches.len(), tokens.len());
        // Rows: (sequence, position, token), sequences in order.
        let mut rows = Vec::new();
        for (si, toks) in tokens.iter().enumerate() {
            let start = caches[si].len;
            if start + toks.len() > caches[si].cap.min(cfg.ctx) {
                bail!(
                    "the sequence would exceed its context of {} tokens",
                    caches[si].cap.min(cfg.ctx)
                );
            }
            for (i, &t) in toks.iter().enumerate() {
                if t as usize >= self.embed.rows {
                    bail!("token id {t} is outside the vocabulary");
                }
                rows.push((si, start + i, t));
            }
        }
        let n = rows.len();
        let (dim, kv_dim, qkv_dim, hd) = (cfg.dim, cfg.kv_dim(), cfg.qkv_dim(), cfg.head_dim);
        s.x.resize(n * dim, 0.0);
        s.xn.resize(n * dim, 0.0);
        s.qkv.resize(n * qkv_dim, 0.0);
        s.att.resize(n * dim, 0.0);
        s.proj.resize(n * dim, 0.0);
        s.ff.resize(n * 2 * cfg.ff, 0.0);
        s.h.resize(n * cfg.ff, 0.0);
        let max_len = rows.iter().map(|r| r.1 + 1).max().unwrap_or(1);
        s.scores.resize(n * cfg.n_head * max_len, 0.0);
        for (i, &(_, _, t)) in rows.iter().enumerate() {
            self.embed
                .row_into(t as usize, &mut s.x[i * dim..(i + 1) * dim]);
        }
        let group = cfg.n_head / cfg.n_kv_head;
        let scale = 1.0 / (hd as f32).sqrt();
        for (l, layer) in self.layers.iter().enumerate() {
            rms_norm(&s.x, &layer.attn_norm, cfg.eps, &mut s.xn, dim);
            s.acts.quantize(&s.xn, n, dim);
            matmul(self.kernel, &layer.wqkv, &s.acts, &mut s.qkv, &mut s.t);
            // Rotary embedding on q and k, then k and v into the caches.
            for (i, &(si, pos, _)) in rows.iter().enumerate() {
                let row = &mut s.qkv[i * qkv_dim..(i + 1) * qkv_dim];
                self.rope(&mut row[..dim + kv_dim], pos);
                let c = &mut *caches[si];
                let at = l * c.layer_stride + pos * kv_dim;
                c.k[at..at + kv_dim].copy_from_slice(&row[dim..dim + kv_dim]);
                c.v[at..at + kv_dim].copy_from_slice(&row[dim + kv_dim..]);
            }
            // Attention, one task per (row, head).
            let caches_ro: Vec<&KvCache> = caches.iter().map(|c| &**c).collect();
            let qkv = &s.qkv;
            s.att
                .par_chunks_mut(hd)
                .zip(s.scores.par_chunks_mut(max_len))
                .enumerate()
                .for_each(|(task, (out, scores))| {
                    let (i, h) = (task / cfg.n_head, task % cfg.n_head);
                    let (si, pos, _) = rows[i];
                    let c = caches_ro[si];
                    let q = &qkv[i * qkv_dim + h * hd..i * qkv_dim + (h + 1) * hd];
                    let kvo = (h / group) * hd;
                    let base = l * c.layer_stride;
                    let scores = &mut scores[..=pos];
                    let mut max = f32::NEG_INFINITY;
                    for (p, sc) in scores.iter_mut().enumerate() {
                        let k = &c.k[base + p * kv_dim + kvo..base + p * kv_dim + kvo + hd];
                        *sc = super::quant::dot8(q, k) * scale;
                        max = max.max(*sc);
                    }
                    let mut sum = 0.0;
                    for sc in scores.iter_mut() {
                        *sc = (*sc - max).exp();
                        sum += *sc;
                    }
                    out.fill(0.0);
                    for (p, &w) in scores.iter().enumerate() {
                        let v = &c.v[base + p * kv_dim + kvo..base + p * kv_dim + kvo + hd];
                        let w = w / sum;
                        for (o, &vv) in out.iter_mut().zip(v) {
                            *o += w * vv;
                        }
                    }
                });
            s.acts.quantize(&s.att, n, dim);
            matmul(self.kernel, &layer.wo, &s.acts, &mut s.proj, &mut s.t);
            for (x, p) in s.x.iter_mut().zip(&s.proj) {
                *x += p;
            }
            rms_norm(&s.x, &layer.ffn_norm, cfg.eps, &mut s.xn, dim);
            s.acts.quantize(&s.xn, n, dim);
            matmul(self.kernel, &layer.w13, &s.acts, &mut s.ff, &mut s.t);
            let ff = cfg.ff;
            for i in 0..n {
                let gu = &s.ff[i * 2 * ff..(i + 1) * 2 * ff];
                let (g, u) = gu.split_at(ff);
                for ((h, &g), &u) in s.h[i * ff..(i + 1) * ff].iter_mut().zip(g).zip(u) {
                    *h = g / (1.0 + (-g).exp()) * u;
                }
            }
            s.acts.quantize(&s.h, n, ff);
            matmul(self.kernel, &layer.w2, &s.acts, &mut s.proj, &mut s.t);
            for (x, p) in s.x.iter_mut().zip(&s.proj) {
                *x += p;
            }
        }
        for (si, toks) in tokens.iter().enumerate() {
            caches[si].len += toks.len();
        }
        // Logits for the last row of each sequence only.
        let last: Vec<usize> = {
            let mut v = Vec::new();
            let mut i = 0;
            for toks in tokens {
                i += toks.len();
                if !toks.is_empty() {
                    v.push(i - 1);
                }
            }
            v
        };
        // Gathered into the attention buffer and normed into `xn`, both free by now
        // and at least this long: no allocation per token.
        let k = last.len();
        for (j, &i) in last.iter().enumerate() {
            s.att[j * dim..(j + 1) * dim].copy_from_slice(&s.x[i * dim..(i + 1) * dim]);
        }
        rms_norm(
            &s.att[..k * dim],
            &self.norm,
            cfg.eps,
            &mut s.xn[..k * dim],
            dim,
        );
        s.acts.quantize(&s.xn[..k * dim], k, dim);
        s.logits.resize(last.len() * cfg.vocab, 0.0);
        matmul(self.kernel, &self.output, &s.acts, &mut s.logits, &mut s.t);
        Ok(())
    }

    /// llama.cpp's "normal" rotary layout: adjacent pairs rotate together.
    fn rope(&self, qk: &mut [f32], pos: usize) {
        let half = self.cfg.head_dim / 2;
        let (cos, sin) = (
            &self.cos[pos * half..(pos + 1) * half],
            &self.sin[pos * half..(pos + 1) * half],
        );
        for head in qk.chunks_exact_mut(self.cfg.head_dim) {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
    }
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32], dim: usize) {
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let k = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * k * g;
        }
    }
}

fn dims2(t: &QTensor) -> Result<(usize, usize)> {
    let d = t.shape().dims();
    match d {
        [rows, cols] => Ok((*rows, *cols)),
        _ => bail!("expected a matrix, found shape {d:?}"),
    }
}

fn to_f32(t: &QTensor) -> Result<Vec<f32>> {
    Ok(t.dequantize(&candle_core::Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn to_q80(t: &QTensor) -> Result<Q80> {
    let (rows, cols) = dims2(t)?;
    if t.dtype() == GgmlDType::Q8_0 {
        return Q80::from_gguf(rows, cols, &t.data()?);
    }
    Q80::from_f32(rows, cols, &to_f32(t)?)
}

/// Q4_1 stays as it is; any other format is requantized to Q8_0 at load.
fn to_qmatrix(t: &QTensor) -> Result<QMatrix> {
    let (rows, cols) = dims2(t)?;
    if t.dtype() == GgmlDType::Q4_1 {
        return Ok(QMatrix::from(Q41::from_gguf(rows, cols, &t.data()?)?));
    }
    Ok(QMatrix::from(to_q80(t)?))
}

fn stack(ts: &[&QTensor]) -> Result<QMatrix> {
    if ts.iter().all(|t| t.dtype() == GgmlDType::Q4_1) {
        let parts = ts
            .iter()
            .map(|t| {
                let (rows, cols) = dims2(t)?;
                Q41::from_gguf(rows, cols, &t.data()?)
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok(QMatrix::from(Q41::concat(parts)));
    }
    let mut data = Vec::new();
    let (mut rows, mut cols) = (0, 0);
    for t in ts {
        let (r, c) = dims2(t)?;
        rows += r;
        cols = c;
        data.extend(to_f32(t)?);
    }
    Ok(QMatrix::from(Q80::from_f32(rows, cols, &data)?))
}
