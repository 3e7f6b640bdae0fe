//! The reward model's forward and backward written out by hand over flat f32
//! buffers: what training and scoring run.
//!
//! candle's autograd gives every intermediate tensor a zeroed gradient and adds into
//! it, allocating afresh for each op; on two cores that bookkeeping cost more than the
//! matrix products. Here each layer keeps what its backward needs, the products go
//! through `sgemm`, and the element-wise passes are one loop each, parallel over rows.
//! The candle forward in `bert` stays as the reference: tests check that both give
//! the same rewards and the same gradients, dropout masks included (the same
//! counter-based masks, drawn in the same order).

use super::bert::{DropoutRng, EMBEDDING_TENSORS, LAYER_TENSORS, RewardModel, draw, dropout_mask};
use super::bf16::{Bf16, Left, Packed};
use super::int8::{self, Int8};
use super::ops::row_stats;
use super::sgemm::{Par, View, ViewMut, matmul};
use super::wide;
use candle_core::{Result, Storage, Tensor, bail};
use rayon::prelude::*;

/// Rows per rayon task for the element-wise passes.
const ROWS_PER_TASK: usize = 16;

/// A buffer of f32 that goes back to its thread's pool when dropped, so that each
/// training step reuses the last one's activations instead of having the system
/// map and zero hundreds of megabytes afresh (a sixth of a step, measured).
pub struct Buf {
    v: Vec<f32>,
    len: usize,
}

/// Buffers smaller than this are left to the allocator.
const MIN_POOLED: usize = 1 << 16;
/// The most a thread's pool keeps, in floats (1 GiB).
const POOL_MAX: usize = 1 << 28;

#[derive(Default)]
struct Pool {
    free: Vec<Vec<f32>>,
    floats: usize,
}

thread_local! {
    static POOL: std::cell::RefCell<Pool> = std::cell::RefCell::new(Pool::default());
}

/// A buffer of `len` floats whose contents are whatever was there before: for
/// outputs written whole.
fn buf(len: usize) -> Buf {
    if len >= MIN_POOLED {
        let found = POOL.with(|p| {
            let mut p = p.borrow_mut();
            let best = p
                .free
                .iter()
                .enumerate()
                .filter(|(_, v)| v.len() >= len)
                .min_by_key(|(_, v)| v.len())
                .map(|(i, _)| i)?;
            let v = p.free.swap_remove(best);
            p.floats -= v.len();
            Some(v)
        });
        if let Some(v) = found {
            return Buf { v, len };
        }
    }
    Buf {
        v: vec![0f32; len],
        len,
    }
}

fn zeros(len: usize) -> Buf {
    let mut b = buf(len);
    b.fill(0.0);
    b
}

fn copy_of(x: &[f32]) -> Buf {
    let mut b = buf(x.len());
    b.copy_from_slice(x);
    b
}

impl std::ops::Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.v[..self.len]
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.v[..self.len]
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.v);
        if v.len() < MIN_POOLED {
            return;
        }
        // A thread that is going away has no pool to give back to.
        let _ = POOL.try_with(|p| {
            let mut p = p.borrow_mut();
            if p.floats + v.len() <= POOL_MAX {
                p.floats += v.len();
                p.free.push(v);
            }
        });
    }
}

/// A padded batch: `ids` and `mask` are `seqs × len`, row-major.
pub struct Batch<'a> {
    pub ids: &'a [u32],
    pub mask: &'a [f32],
    pub seqs: usize,
    pub len: usize,
}

/// Sequences padded to the longest (ids with the pad id, mask 0), owning what a
/// `Batch` borrows.
pub struct Padded {
    pub ids: Vec<u32>,
    pub mask: Vec<f32>,
    pub seqs: usize,
    pub len: usize,
}

impl Padded {
    pub fn new(seqs: &[&[u32]], pad: u32) -> Padded {
        let len = seqs.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
        let mut ids = Vec::with_capacity(seqs.len() * len);
        let mut mask = Vec::with_capacity(seqs.len() * len);
        for s in seqs {
            ids.extend_from_slice(s);
            ids.extend(std::iter::repeat_n(pad, len - s.len()));
            mask.extend(std::iter::repeat_n(1f32, s.len()));
            mask.extend(std::iter::repeat_n(0f32, len - s.len()));
        }
        Padded {
            ids,
            mask,
            seqs: seqs.len(),
            len,
        }
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch {
            ids: &self.ids,
            mask: &self.mask,
            seqs: self.seqs,
            len: self.len,
        }
    }
}

/// The model's parameters as slices, in `RewardModel::named_vars` order, read in
/// place from the variables' storage.
struct Params<'a> {
    all: Vec<&'a [f32]>,
}

const PER_LAYER: usize = LAYER_TENSORS.len();
const EMB: usize = EMBEDDING_TENSORS.len();

/// The index of a layer tensor in `LAYER_TENSORS` (a name not there fails the build).
const fn at(name: &str) -> usize {
    let mut i = 0;
    while i < LAYER_TENSORS.len() {
        let (a, b) = (LAYER_TENSORS[i].as_bytes(), name.as_bytes());
        if a.len() == b.len() {
            let mut j = 0;
            while j < a.len() && a[j] == b[j] {
                j += 1;
            }
            if j == a.len() {
                return i;
            }
        }
        i += 1;
    }
    panic!("not a layer tensor")
}

/// Indexes into a layer's parameters, by their names in `LAYER_TENSORS`.
mod p {
    use super::at;
    pub const WQ: usize = at("attention.self.query.weight");
    pub const BQ: usize = at("attention.self.query.bias");
    pub const WK: usize = at("attention.self.key.weight");
    pub const BK: usize = at("attention.self.key.bias");
    pub const WV: usize = at("attention.self.value.weight");
    pub const BV: usize = at("attention.self.value.bias");
    pub const WO: usize = at("attention.output.dense.weight");
    pub const BO: usize = at("attention.output.dense.bias");
    pub const WI: usize = at("intermediate.dense.weight");
    pub const BI: usize = at("intermediate.dense.bias");
    pub const WOUT: usize = at("output.dense.weight");
    pub const BOUT: usize = at("output.dense.bias");
    pub const G1: usize = at("attention.output.LayerNorm.weight");
    pub const B1: usize = at("attention.output.LayerNorm.bias");
    pub const G2: usize = at("output.LayerNorm.weight");
    pub const B2: usize = at("output.LayerNorm.bias");
}

impl<'a> Params<'a> {
    fn layer(&self, l: usize, i: usize) -> &'a [f32] {
        self.all[EMB + l * PER_LAYER + i]
    }
    fn tail(&self, i: usize) -> &'a [f32] {
        self.all[self.all.len() - 4 + i]
    }
}

/// Read guards on every parameter's storage, held while a pass runs.
fn guards(
    model: &RewardModel,
) -> Vec<(
    impl std::ops::Deref<Target = Storage> + '_,
    &'_ candle_core::Layout,
)> {
    model
        .named_vars()
        .into_iter()
        .map(|(_, v)| v.as_tensor().storage_and_layout())
        .collect()
}

fn params<'g, G: std::ops::Deref<Target = Storage>>(
    guards: &'g [(G, &'g candle_core::Layout)],
) -> Result<Params<'g>> {
    let mut all = Vec::with_capacity(guards.len());
    for (g, l) in guards {
        let Storage::Cpu(cpu) = &**g else {
            bail!("the model must be on the CPU")
        };
        all.push(super::ops::slice(cpu, l, "parameter")?);
    }
    Ok(Params { all })
}

/// Shapes of one pass.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    nh: usize,
    hd: usize,
    inter: usize,
    /// Rows computed: every sequence's own tokens, packed (`Rows`).
    n: usize,
}

/// Which rows of the padded batch a pass computes: each sequence's tokens before its
/// padding (`unpadded_lengths`), one sequence after another. Nothing reads a padded
/// position (the pooler reads the first token, and a padded key gets no attention),
/// so its rows are left out of every product and every element-wise pass.
struct Rows {
    lens: Vec<usize>,
    /// Each sequence's first row among the computed ones.
    offs: Vec<usize>,
    /// Each computed row's place in the padded batch (`sequence · t + position`).
    at: Vec<usize>,
}

impl Rows {
    fn new(mask: &[f32], t: usize) -> Rows {
        let lens = unpadded_lengths(mask, t);
        let offs = lens
            .iter()
            .scan(0, |o, &l| {
                *o += l;
                Some(*o - l)
            })
            .collect();
        let at = (lens.iter().enumerate())
            .flat_map(|(b, &l)| (0..l).map(move |i| b * t + i))
            .collect();
        Rows { lens, offs, at }
    }

    /// Sequence `b`'s rows of a buffer of `cols` values a row.
    fn of<'a>(&self, x: &'a [f32], b: usize, cols: usize) -> &'a [f32] {
        &x[self.offs[b] * cols..(self.offs[b] + self.lens[b]) * cols]
    }

    /// Every sequence's rows of a buffer, apart, to be written in parallel.
    fn split<'a>(&self, mut x: &'a mut [f32], cols: usize) -> Vec<&'a mut [f32]> {
        let mut parts = Vec::with_capacity(self.lens.len());
        for &l in &self.lens {
            let (head, rest) = std::mem::take(&mut x).split_at_mut(l * cols);
            parts.push(head);
            x = rest;
        }
        parts
    }
}

impl Dims {
    /// One attention head's columns of a sequence's first `rows` rows (its tokens
    /// without its padding).
    fn head_rows<'a>(&self, block: &'a [f32], head: usize, rows: usize) -> View<'a> {
        View::cols_of(block, rows, self.h, head * self.hd, self.hd)
    }

    fn head_rows_mut<'a>(&self, block: &'a mut [f32], head: usize, rows: usize) -> ViewMut<'a> {
        ViewMut::cols_of(block, rows, self.h, head * self.hd, self.hd)
    }
}

/// What one layer's backward needs from its forward.
struct LayerCache {
    x: Buf,
    q: Buf,
    k: Buf,
    v: Buf,
    /// Attention probabilities before dropout, `(b, heads, t, t)`; in the last layer,
    /// where only each sequence's first token queries (`first_attention_fwd`),
    /// `(b, heads, t)`, and `q` and every buffer after attention have one row a
    /// sequence.
    probs: Buf,
    /// The same after dropout (empty without dropout).
    probs_d: Buf,
    ctx: Buf,
    xhat1: Buf,
    rstd1: Buf,
    x1: Buf,
    pre: Buf,
    act: Buf,
    xhat2: Buf,
    rstd2: Buf,
    /// Dropout masks of the attention output and the feed-forward output.
    masks: [Option<Vec<u8>>; 2],
}

/// A forward pass kept for its backward.
pub struct Tape {
    dims: Dims,
    ids: Vec<u32>,
    emb_xhat: Buf,
    emb_rstd: Buf,
    emb_mask: Option<Vec<u8>>,
    layers: Vec<LayerCache>,
    cls: Buf,
    pooled: Buf,
    pool_mask: Option<Vec<u8>>,
    /// The pooled vector after dropout, which the classifier read.
    pooled_d: Buf,
    p_hidden: f32,
    /// The products' kernels when they multiply in bf16.
    bf: Option<Bf16>,
    /// The rows computed.
    rows: Rows,
}

impl Tape {
    /// The pooled vectors (`tanh` of the pooler, before dropout), `hidden` values for
    /// each sequence of the batch.
    pub fn pooled(&self) -> &[f32] {
        &self.pooled
    }
}

/// Applies the dropout mask `key` of rate `p` (as drawn from `DropoutRng`) to the
/// computed rows of a batch (`at`: each row's place in the padded batch, whose mask
/// it takes): kept elements are scaled by `1 / (1 - p)`, the others zeroed. Returns
/// the mask, which the backward applies to the gradient.
fn dropout_in_place(x: &mut [f32], at: &[usize], key: Option<u64>, p: f32) -> Option<Vec<u8>> {
    let key = key?;
    let cols = x.len() / at.len().max(1);
    let mut mask = vec![0u8; x.len()];
    mask.par_chunks_mut(cols)
        .zip(at.par_iter())
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(m, &row)| dropout_mask(key, p, row * cols, m));
    apply_mask(x, Some(&mask), p);
    Some(mask)
}

/// Multiplies by a dropout mask and its scale (nothing without a mask).
fn apply_mask(x: &mut [f32], mask: Option<&[u8]>, p: f32) {
    let Some(mask) = mask else { return };
    let scale = 1.0 / (1.0 - p);
    x.par_chunks_mut(4096)
        .zip(mask.par_chunks(4096))
        .for_each(|(x, m)| {
            for (v, &k) in x.iter_mut().zip(m) {
                *v = if k != 0 { *v * scale } else { 0.0 };
            }
        });
}

/// `x · wᵀ + b` for `x` of `rows × inp` and `w` of `out × inp`.
fn linear(x: &[f32], rows: usize, inp: usize, w: &[f32], b: &[f32]) -> Buf {
    let out = b.len();
    let mut y = buf(rows * out);
    y.par_chunks_mut(out * ROWS_PER_TASK).for_each(|c| {
        for row in c.chunks_mut(out) {
            row.copy_from_slice(b);
        }
    });
    matmul(
        ViewMut::new(&mut y, rows, out),
        View::new(x, rows, inp),
        View::new(w, out, inp).t(),
        true,
        1.0,
        Par::Pool,
    );
    y
}

/// Rows below which a product stays in f32 even when bf16 or 8-bit integers are asked
/// for: packing the weights to bf16 costs about what multiplying this many rows by them
/// does. (Rounding them to 8 bits costs less, 0.7 ns a weight on an AMD EPYC Zen 3;
/// the same threshold was kept, not measured for it.)
const FAST_MIN_ROWS: usize = 256;

/// The kernels a pass's large products may use in place of f32's.
#[derive(Clone, Copy)]
enum Fast {
    Bf16(Bf16),
    Int8(Int8),
}

impl Fast {
    /// What scoring for ordering pairs multiplies in on this CPU: bf16 where it
    /// multiplies it, else 8-bit integers where it has AVX2, else nothing (f32).
    fn for_scoring() -> Option<Fast> {
        Bf16::detect()
            .map(Fast::Bf16)
            .or_else(|| Int8::detect().map(Fast::Int8))
    }
}

/// The products `RewardModel::rewards_fast` multiplies in on this CPU: `"bf16"`,
/// `"int8"` or `"f32"`.
pub fn fast_products() -> &'static str {
    match Fast::for_scoring() {
        Some(Fast::Bf16(_)) => "bf16",
        Some(Fast::Int8(_)) => "int8",
        None => "f32",
    }
}

/// `linear`, in bf16 or 8-bit integers when asked for (`fast`) and there are rows
/// enough to pay for packing the weights.
fn linear_with(
    fast: Option<Fast>,
    x: &[f32],
    rows: usize,
    inp: usize,
    w: &[f32],
    b: &[f32],
) -> Buf {
    let out = b.len();
    match fast {
        Some(Fast::Bf16(bf)) if rows >= FAST_MIN_ROWS => {
            let mut y = buf(rows * out);
            bf.linear(x, rows, &Packed::new(w, out, inp), b, &mut y);
            y
        }
        Some(Fast::Int8(k8)) if rows >= FAST_MIN_ROWS => {
            let mut y = buf(rows * out);
            k8.linear(x, rows, &int8::Packed::new(k8, w, out, inp), b, &mut y);
            y
        }
        _ => linear(x, rows, inp, w, b),
    }
}

/// Gradients of `y = x · wᵀ + b`: `dw` and `db` are written; `dx` is written, or
/// added to with `accumulate`. With `bf` (the kernels and `x` packed for them) the
/// products multiply in bf16.
#[allow(clippy::too_many_arguments)]
fn linear_bwd(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rows: usize,
    inp: usize,
    dw: &mut [f32],
    db: &mut [f32],
    dx: Option<(&mut [f32], bool)>,
    bf: Option<&(Bf16, Packed)>,
) {
    let out = db.len();
    if let Some(&(bf, ref xp)) = bf {
        bf.product(Left::Transposed(dy), out, xp, None, dw, false);
        col_sums(dy, out, db);
        if let Some((dx, accumulate)) = dx {
            let wp = Packed::from_rows(w, out, inp);
            bf.product(Left::Rows(dy), rows, &wp, None, dx, accumulate);
        }
        return;
    }
    matmul(
        ViewMut::new(dw, out, inp),
        View::new(dy, rows, out).t(),
        View::new(x, rows, inp),
        false,
        1.0,
        Par::Pool,
    );
    col_sums(dy, out, db);
    if let Some((dx, accumulate)) = dx {
        matmul(
            ViewMut::new(dx, rows, inp),
            View::new(dy, rows, out),
            View::new(w, out, inp),
            accumulate,
            1.0,
            Par::Pool,
        );
    }
}

fn col_sums(x: &[f32], cols: usize, out: &mut [f32]) {
    out.fill(0.0);
    for row in x.chunks(cols) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += v;
        }
    }
}

/// Layer norm over rows of `h`: returns the output, and keeps `xhat` and `1/std`.
fn ln_fwd(x: &[f32], g: &[f32], b: &[f32], eps: f32) -> (Buf, Buf, Buf) {
    let h = g.len();
    let rows = x.len() / h;
    let mut y = buf(x.len());
    let mut xhat = buf(x.len());
    let mut rstd = buf(rows);
    y.par_chunks_mut(h)
        .zip(xhat.par_chunks_mut(h))
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(h))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(((y, xh), rs), x)| {
            let (mean, r) = row_stats(x, eps);
            *rs = r;
            for i in 0..h {
                xh[i] = (x[i] - mean) * r;
                y[i] = xh[i] * g[i] + b[i];
            }
        });
    (y, xhat, rstd)
}

/// Layer norm backward: returns `dx`; writes `dg` and `db`.
fn ln_bwd(
    dy: &[f32],
    xhat: &[f32],
    rstd: &[f32],
    g: &[f32],
    dg: &mut [f32],
    db: &mut [f32],
) -> Buf {
    let h = g.len();
    let mut dx = buf(dy.len());
    dx.par_chunks_mut(h)
        .zip(dy.par_chunks(h))
        .zip(xhat.par_chunks(h))
        .zip(rstd.par_iter())
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(((dx, dy), xh), &r)| {
            let (mut s1, mut s2) = (0f32, 0f32);
            for i in 0..h {
                let d = dy[i] * g[i];
                s1 += d;
                s2 += d * xh[i];
            }
            let (m1, m2) = (s1 / h as f32, s2 / h as f32);
            for i in 0..h {
                dx[i] = r * (dy[i] * g[i] - m1 - xh[i] * m2);
            }
        });
    dg.fill(0.0);
    db.fill(0.0);
    for (dy, xh) in dy.chunks(h).zip(xhat.chunks(h)) {
        for i in 0..h {
            dg[i] += dy[i] * xh[i];
            db[i] += dy[i];
        }
    }
    dx
}

fn gelu(x: &[f32]) -> Buf {
    let mut y = buf(x.len());
    y.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(y, x)| wide::gelu(y, x));
    y
}

/// `dy * gelu'(x)`, in place in `dy`.
fn gelu_bwd(x: &[f32], dy: &mut [f32]) {
    dy.par_chunks_mut(4096)
        .zip(x.par_chunks(4096))
        .for_each(|(d, x)| wide::gelu_bwd(d, x));
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(4096)
        .zip(y.par_chunks(4096))
        .for_each(|(x, y)| {
            for (a, b) in x.iter_mut().zip(y) {
                *a += b;
            }
        });
}

impl RewardModel {
    fn dims(&self, batch: &Batch<'_>) -> Result<Dims> {
        let c = &self.config;
        if batch.len > c.max_position_embeddings {
            bail!(
                "sequence of {} tokens is longer than the model's {}",
                batch.len,
                c.max_position_embeddings
            );
        }
        let n = batch.seqs * batch.len;
        if batch.ids.len() != n || batch.mask.len() != n {
            bail!("batch of {n} tokens with {} ids", batch.ids.len());
        }
        if let Some(&bad) = batch.ids.iter().find(|&&i| i as usize >= c.vocab_size) {
            bail!("token id {bad} is outside the vocabulary");
        }
        Ok(Dims {
            b: batch.seqs,
            t: batch.len,
            h: c.hidden_size,
            nh: c.num_attention_heads,
            hd: c.hidden_size / c.num_attention_heads,
            inter: c.intermediate_size,
            n,
        })
    }

    /// Rewards of a batch, and the tape its backward needs. Dropout is on when `rng`
    /// is given (training), drawing masks in the order the candle forward does. With
    /// `bf16` the large products, here and in the backward, multiply in bf16 where the
    /// CPU does so natively (`bf16.rs`; sums stay f32), otherwise in f32.
    pub fn forward_tape(
        &self,
        batch: &Batch<'_>,
        rng: Option<&mut DropoutRng>,
        bf16: bool,
    ) -> Result<(Vec<f32>, Tape)> {
        self.forward_impl(batch, rng, true, bf16)
    }

    /// The forward; with `keep` false each layer's activations are given back as soon
    /// as the next layer has read them (the tape then has no layers).
    fn forward_impl(
        &self,
        batch: &Batch<'_>,
        mut rng: Option<&mut DropoutRng>,
        keep: bool,
        bf16: bool,
    ) -> Result<(Vec<f32>, Tape)> {
        let mut d = self.dims(batch)?;
        let rows = Rows::new(batch.mask, d.t);
        d.n = rows.at.len();
        let cfg = &self.config;
        let eps = cfg.layer_norm_eps as f32;
        let (p_hidden, p_attn) = (
            cfg.hidden_dropout_prob as f32,
            cfg.attention_probs_dropout_prob as f32,
        );
        let guards = guards(self);
        let w = params(&guards)?;
        let (h, t) = (d.h, d.t);

        let (word, pos, typ) = (w.all[0], w.all[1], w.all[2]);
        let mut emb = buf(d.n * h);
        emb.par_chunks_mut(h)
            .zip(rows.at.par_iter())
            .with_min_len(ROWS_PER_TASK)
            .for_each(|(e, &row)| {
                let tok = batch.ids[row] as usize;
                let pos_row = &pos[(row % t) * h..][..h];
                let word_row = &word[tok * h..][..h];
                for i in 0..h {
                    e[i] = word_row[i] + pos_row[i] + typ[i];
                }
            });
        let (mut x, emb_xhat, emb_rstd) = ln_fwd(&emb, w.all[3], w.all[4], eps);
        drop(emb);
        let emb_key = draw(&mut rng, cfg.hidden_dropout_prob);
        let emb_mask = dropout_in_place(&mut x, &rows.at, emb_key, p_hidden);

        let bias: Vec<f32> = batch.mask.iter().map(|m| (m - 1.0) * 1e4).collect();
        let scale = 1.0 / (d.hd as f32).sqrt();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        // The products in bf16 where asked for and the CPU multiplies it; for
        // rewards alone (no tape, no dropout), as `fast_products` says.
        let fast = if !bf16 {
            None
        } else if keep || rng.is_some() {
            Bf16::detect().map(Fast::Bf16)
        } else {
            Fast::for_scoring()
        };
        let bf = match fast {
            Some(Fast::Bf16(bf)) => Some(bf),
            _ => None,
        };
        let linear =
            |x: &[f32], rows, inp, w: &[f32], b: &[f32]| linear_with(fast, x, rows, inp, w, b);
        // Each sequence's first token's place in the padded batch.
        let firsts: Vec<usize> = (0..d.b).map(|b| b * t).collect();
        for l in 0..cfg.num_hidden_layers {
            let lw = |i| w.layer(l, i);
            // The last layer runs for the first token of each sequence only, the one
            // row the pooler reads; its keys and values still come from every token.
            let top = l + 1 == cfg.num_hidden_layers;
            let probs_key = draw(&mut rng, cfg.attention_probs_dropout_prob);
            let attn_key = draw(&mut rng, cfg.hidden_dropout_prob);
            let out_key = draw(&mut rng, cfg.hidden_dropout_prob);
            let k = linear(&x, d.n, h, lw(p::WK), lw(p::BK));
            let v = linear(&x, d.n, h, lw(p::WV), lw(p::BV));
            // The rows past the keys and values, and their places in the padded batch.
            let x0 = top.then(|| first_rows(&x, &rows, h));
            let (m, at) = if top {
                (d.b, &firsts[..])
            } else {
                (d.n, &rows.at[..])
            };
            let res: &[f32] = x0.as_deref().unwrap_or(&x);
            let q = linear(res, m, h, lw(p::WQ), lw(p::BQ));
            let queries = if top { 1 } else { t };
            let mut probs = buf(d.b * d.nh * queries * t);
            let mut probs_d = buf(if probs_key.is_some() { probs.len() } else { 0 });
            let mut ctx = buf(m * h);
            let attention = if top {
                first_attention_fwd
            } else {
                attention_fwd
            };
            attention(
                d,
                scale,
                (&q, &k, &v),
                (&bias, &rows),
                (probs_key, p_attn),
                (&mut probs, &mut probs_d),
                &mut ctx,
            );
            let mut attn = linear(&ctx, m, h, lw(p::WO), lw(p::BO));
            let attn_mask = dropout_in_place(&mut attn, at, attn_key, p_hidden);
            add_in_place(&mut attn, res);
            let (x1, xhat1, rstd1) = ln_fwd(&attn, lw(p::G1), lw(p::B1), eps);
            drop(attn);
            drop(x0);
            let pre = linear(&x1, m, h, lw(p::WI), lw(p::BI));
            let act = gelu(&pre);
            let mut out = linear(&act, m, d.inter, lw(p::WOUT), lw(p::BOUT));
            let out_mask = dropout_in_place(&mut out, at, out_key, p_hidden);
            add_in_place(&mut out, &x1);
            let (x2, xhat2, rstd2) = ln_fwd(&out, lw(p::G2), lw(p::B2), eps);
            let cache = LayerCache {
                x: std::mem::replace(&mut x, x2),
                q,
                k,
                v,
                probs,
                probs_d,
                ctx,
                xhat1,
                rstd1,
                x1,
                pre,
                act,
                xhat2,
                rstd2,
                masks: [attn_mask, out_mask],
            };
            if keep {
                layers.push(cache);
            }
        }
        // Past the last layer, `x` holds one row a sequence.
        let cls = if cfg.num_hidden_layers > 0 {
            x
        } else {
            first_rows(&x, &rows, h)
        };
        let mut pooled = linear(&cls, d.b, h, w.tail(0), w.tail(1));
        for v in pooled.iter_mut() {
            *v = v.tanh();
        }
        let pool_key = draw(&mut rng, cfg.hidden_dropout_prob);
        let mut pooled_d = copy_of(&pooled);
        let seqs: Vec<usize> = (0..d.b).collect();
        let pool_mask = dropout_in_place(&mut pooled_d, &seqs, pool_key, p_hidden);
        let (cw, cb) = (w.tail(2), w.tail(3));
        if cw.len() != h || cb.len() != 1 {
            bail!("the classifier must have one output");
        }
        let rewards: Vec<f32> = pooled_d
            .chunks(h)
            .map(|p| p.iter().zip(cw).map(|(a, b)| a * b).sum::<f32>() + cb[0])
            .collect();
        let tape = Tape {
            dims: d,
            ids: batch.ids.to_vec(),
            emb_xhat,
            emb_rstd,
            emb_mask,
            layers,
            cls,
            pooled,
            pool_mask,
            pooled_d,
            p_hidden,
            bf,
            rows,
        };
        Ok((rewards, tape))
    }

    /// Rewards only (dropout off), in f32: what `duel score` and `duel eval` report.
    pub fn rewards(&self, batch: &Batch<'_>) -> Result<Vec<f32>> {
        Ok(self.forward_impl(batch, None, false, false)?.0)
    }

    /// Rewards for ordering pairs (the background scorer, `duel review`): the
    /// large products in bf16 where the CPU multiplies it (`bf16.rs`; a reward moves
    /// by a few thousandths), else in 8-bit integers where it has AVX2 (`int8.rs`; a
    /// few hundredths of the rewards' spread), otherwise as `rewards`.
    pub fn rewards_fast(&self, batch: &Batch<'_>) -> Result<Vec<f32>> {
        Ok(self.forward_impl(batch, None, false, true)?.0)
    }

    /// Gradients of the loss with respect to every parameter, in `named_vars` order,
    /// given the gradient of the loss with respect to each reward and, for a loss
    /// that also reads the pooled vectors (`Tape::pooled`), with respect to them.
    pub fn backward(
        &self,
        tape: Tape,
        d_rewards: &[f32],
        d_pooled: Option<&[f32]>,
    ) -> Result<Vec<Tensor>> {
        let d = tape.dims;
        let (h, t) = (d.h, d.t);
        if d_rewards.len() != d.b {
            bail!("{} reward gradients for {} rewards", d_rewards.len(), d.b);
        }
        let guards = guards(self);
        let w = params(&guards)?;
        let mut grads: Vec<Vec<f32>> = w.all.iter().map(|p| vec![0f32; p.len()]).collect();
        let (emb_grads, rest) = grads.split_at_mut(EMB);
        let (layer_grads, tail_grads) = rest.split_at_mut(self.layers.len() * PER_LAYER);

        // Classifier and pooler.
        {
            let (gw, rest) = tail_grads.split_at_mut(1);
            let (gb, rest) = rest.split_at_mut(1);
            let (gcw, gcb) = rest.split_at_mut(1);
            let cw = w.tail(2);
            gcb[0][0] = d_rewards.iter().sum();
            let mut dpooled = vec![0f32; d.b * h];
            for (b, (&dr, pd)) in d_rewards.iter().zip(tape.pooled_d.chunks(h)).enumerate() {
                for i in 0..h {
                    gcw[0][i] += dr * pd[i];
                    dpooled[b * h + i] = dr * cw[i];
                }
            }
            apply_mask(&mut dpooled, tape.pool_mask.as_deref(), tape.p_hidden);
            if let Some(extra) = d_pooled {
                if extra.len() != dpooled.len() {
                    bail!(
                        "{} pooled gradients for {} values",
                        extra.len(),
                        dpooled.len()
                    );
                }
                for (g, e) in dpooled.iter_mut().zip(extra) {
                    *g += e;
                }
            }
            for (g, p) in dpooled.iter_mut().zip(tape.pooled.iter()) {
                *g *= 1.0 - p * p;
            }
            let mut dcls = vec![0f32; d.b * h];
            linear_bwd(
                &dpooled,
                &tape.cls,
                w.tail(0),
                d.b,
                h,
                &mut gw[0],
                &mut gb[0],
                Some((&mut dcls, false)),
                None,
            );
            // The last layer computed the first tokens only; without layers, the
            // embeddings' first rows get the gradient.
            let dx = if tape.layers.is_empty() {
                let mut dx = zeros(d.n * h);
                add_first_rows(&mut dx, &dcls, &tape.rows, h);
                dx
            } else {
                copy_of(&dcls)
            };
            let mut dx = self.layers_bwd(&tape, &w, layer_grads, dx);
            // Embeddings.
            apply_mask(&mut dx, tape.emb_mask.as_deref(), tape.p_hidden);
            let (g_word, rest) = emb_grads.split_at_mut(1);
            let (g_pos, rest) = rest.split_at_mut(1);
            let (g_typ, rest) = rest.split_at_mut(1);
            let (g_g, g_b) = rest.split_at_mut(1);
            let demb = ln_bwd(
                &dx,
                &tape.emb_xhat,
                &tape.emb_rstd,
                w.all[3],
                &mut g_g[0],
                &mut g_b[0],
            );
            for (de, &row) in demb.chunks(h).zip(&tape.rows.at) {
                let tok = tape.ids[row] as usize;
                let tp = row % t;
                for i in 0..h {
                    g_word[0][tok * h + i] += de[i];
                    g_pos[0][tp * h + i] += de[i];
                    g_typ[0][i] += de[i];
                }
            }
        }

        let vars = self.named_vars();
        grads
            .into_iter()
            .zip(vars)
            .map(|(g, (_, v))| Tensor::from_vec(g, v.shape(), &candle_core::Device::Cpu))
            .collect()
    }

    /// The layers' backward, from the gradient of the last layer's output (one row a
    /// sequence when it computed the first tokens only) to that of the embeddings'.
    fn layers_bwd(&self, tape: &Tape, w: &Params<'_>, grads: &mut [Vec<f32>], mut dx: Buf) -> Buf {
        let d = tape.dims;
        let h = d.h;
        let scale = 1.0 / (d.hd as f32).sqrt();
        // `x` packed for the bf16 products, when they are used for `rows` rows.
        let packed = |x: &[f32], rows, cols| {
            (tape.bf)
                .filter(|_| rows >= FAST_MIN_ROWS)
                .map(|bf| (bf, Packed::from_rows(x, rows, cols)))
        };
        for (l, c) in tape.layers.iter().enumerate().rev() {
            let lw = |i| w.layer(l, i);
            let g = &mut grads[l * PER_LAYER..(l + 1) * PER_LAYER];
            // The last layer computed the first tokens only past its keys and values.
            let top = l + 1 == tape.layers.len();
            let m = if top { d.b } else { d.n };
            // x2 = LN2(dropout(out) + x1)
            let (gg2, gb2) = two(g, p::G2, p::B2);
            let mut d_r2 = ln_bwd(&dx, &c.xhat2, &c.rstd2, lw(p::G2), gg2, gb2);
            let mut dx1 = copy_of(&d_r2);
            apply_mask(&mut d_r2, c.masks[1].as_deref(), tape.p_hidden);
            let mut d_act = buf(m * d.inter);
            {
                let (gw, gb) = two(g, p::WOUT, p::BOUT);
                linear_bwd(
                    &d_r2,
                    &c.act,
                    lw(p::WOUT),
                    m,
                    d.inter,
                    gw,
                    gb,
                    Some((&mut d_act, false)),
                    packed(&c.act, m, d.inter).as_ref(),
                );
            }
            drop(d_r2);
            gelu_bwd(&c.pre, &mut d_act);
            {
                let (gw, gb) = two(g, p::WI, p::BI);
                linear_bwd(
                    &d_act,
                    &c.x1,
                    lw(p::WI),
                    m,
                    h,
                    gw,
                    gb,
                    Some((&mut dx1, true)),
                    packed(&c.x1, m, h).as_ref(),
                );
            }
            drop(d_act);
            // x1 = LN1(dropout(attn) + x)
            let (gg1, gb1) = two(g, p::G1, p::B1);
            let mut d_r1 = ln_bwd(&dx1, &c.xhat1, &c.rstd1, lw(p::G1), gg1, gb1);
            drop(dx1);
            // The residual's gradient, for the rows past the keys and values.
            let mut d_res = copy_of(&d_r1);
            apply_mask(&mut d_r1, c.masks[0].as_deref(), tape.p_hidden);
            let mut d_ctx = buf(m * h);
            {
                let (gw, gb) = two(g, p::WO, p::BO);
                linear_bwd(
                    &d_r1,
                    &c.ctx,
                    lw(p::WO),
                    m,
                    h,
                    gw,
                    gb,
                    Some((&mut d_ctx, false)),
                    packed(&c.ctx, m, h).as_ref(),
                );
            }
            drop(d_r1);
            let mut dq = buf(m * h);
            let mut dk = buf(d.n * h);
            let mut dv = buf(d.n * h);
            let attention = if top {
                first_attention_bwd
            } else {
                attention_bwd
            };
            attention(d, scale, c, &tape.rows, &d_ctx, (&mut dq, &mut dk, &mut dv));
            drop(d_ctx);
            // The queries read the rows past the keys and values: their gradient joins
            // the residual's there.
            let x0 = top.then(|| first_rows(&c.x, &tape.rows, h));
            let xq: &[f32] = x0.as_deref().unwrap_or(&c.x);
            {
                let (gw, gb) = two(g, p::WQ, p::BQ);
                let xp = packed(xq, m, h);
                let dres = Some((&mut d_res[..], true));
                linear_bwd(&dq, xq, lw(p::WQ), m, h, gw, gb, dres, xp.as_ref());
            }
            drop(x0);
            dx = if top {
                let mut full = zeros(d.n * h);
                add_first_rows(&mut full, &d_res, &tape.rows, h);
                full
            } else {
                d_res
            };
            let xp = packed(&c.x, d.n, h);
            for (dy, wi, bi) in [(&dk, p::WK, p::BK), (&dv, p::WV, p::BV)] {
                let (gw, gb) = two(g, wi, bi);
                let dx = Some((&mut dx[..], true));
                linear_bwd(dy, &c.x, lw(wi), d.n, h, gw, gb, dx, xp.as_ref());
            }
        }
        dx
    }
}

/// Two distinct gradients of a layer, mutably (`a < b`).
fn two(g: &mut [Vec<f32>], a: usize, b: usize) -> (&mut [f32], &mut [f32]) {
    let (lo, hi) = g.split_at_mut(b);
    (&mut lo[a], &mut hi[0])
}

/// Each sequence's first row of `x` (`cols` values a row), one after another.
fn first_rows(x: &[f32], rows: &Rows, cols: usize) -> Buf {
    let mut x0 = buf(rows.lens.len() * cols);
    for (c, &off) in x0.chunks_mut(cols).zip(&rows.offs) {
        c.copy_from_slice(&x[off * cols..][..cols]);
    }
    x0
}

/// Each sequence's first row of `dx` plus `d0` (one row a sequence).
fn add_first_rows(dx: &mut [f32], d0: &[f32], rows: &Rows, cols: usize) {
    for (c, &off) in d0.chunks(cols).zip(&rows.offs) {
        for (o, v) in dx[off * cols..][..cols].iter_mut().zip(c) {
            *o += v;
        }
    }
}

/// The probabilities after dropout, `per_seq` values for each of `b` sequences; an
/// empty slice for each without dropout, where nothing is written.
fn per_sequence(probs_d: &mut [f32], per_seq: usize, b: usize) -> Vec<&mut [f32]> {
    if probs_d.is_empty() {
        (0..b).map(|_| Default::default()).collect()
    } else {
        probs_d.chunks_mut(per_seq).collect()
    }
}

/// `attention_fwd` for the last layer, where only each sequence's first token
/// queries (`q` and `ctx` have one row a sequence; `k` and `v` every computed row):
/// the pooler reads nothing else of that layer, so its queries, output and
/// feed-forward part cost one row a sequence. The probabilities are `(b, heads, t)`,
/// the first row of `attention_fwd`'s, their dropout masks drawn at the same places.
fn first_attention_fwd(
    d: Dims,
    scale: f32,
    (q, k, v): (&[f32], &[f32], &[f32]),
    (bias, rows): (&[f32], &Rows),
    (key, p): (Option<u64>, f32),
    (probs, probs_d): (&mut [f32], &mut [f32]),
    ctx: &mut [f32],
) {
    let (t, h, hd, nh) = (d.t, d.h, d.hd, d.nh);
    let sc = 1.0 / (1.0 - p);
    let per_seq = nh * t;
    probs
        .par_chunks_mut(per_seq)
        .zip(per_sequence(probs_d, per_seq, d.b))
        .zip(ctx.par_chunks_mut(h))
        .enumerate()
        .for_each(|(b, ((pb, db), c))| {
            let len = rows.lens[b];
            let (kb, vb) = (rows.of(k, b, h), rows.of(v, b, h));
            let bias = &bias[b * t..][..len];
            let mut mask = vec![0u8; if key.is_some() { len } else { 0 }];
            for head in 0..nh {
                let cols = head * hd..(head + 1) * hd;
                let qh = &q[b * h..][cols.clone()];
                let pr = &mut pb[head * t..][..t];
                for (j, pj) in pr[..len].iter_mut().enumerate() {
                    let kj = &kb[j * h..][cols.clone()];
                    *pj = qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
                }
                wide::softmax_biased(&mut pr[..len], bias);
                pr[len..].fill(0.0);
                let used: &[f32] = match key {
                    Some(key) => {
                        dropout_mask(key, p, (b * nh + head) * t * t, &mut mask);
                        let out = &mut db[head * t..][..t];
                        for ((o, &x), &m) in out.iter_mut().zip(pr.iter()).zip(&mask) {
                            *o = if m != 0 { x * sc } else { 0.0 };
                        }
                        out[len..].fill(0.0);
                        out
                    }
                    None => pr,
                };
                let out = &mut c[cols.clone()];
                out.fill(0.0);
                for (j, &pj) in used[..len].iter().enumerate() {
                    for (o, &vj) in out.iter_mut().zip(&vb[j * h..][cols.clone()]) {
                        *o += pj * vj;
                    }
                }
            }
        });
}

/// Backward of `first_attention_fwd`: writes the gradients of q (one row a
/// sequence), k and v (every computed row).
fn first_attention_bwd(
    d: Dims,
    scale: f32,
    c: &LayerCache,
    rows: &Rows,
    d_ctx: &[f32],
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let (t, h, hd, nh) = (d.t, d.h, d.hd, d.nh);
    dq.par_chunks_mut(h)
        .zip(rows.split(dk, h))
        .zip(rows.split(dv, h))
        .enumerate()
        .for_each(|(b, ((dqb, dkb), dvb))| {
            let len = rows.lens[b];
            let (kb, vb) = (rows.of(&c.k, b, h), rows.of(&c.v, b, h));
            let mut g = vec![0f32; len];
            for head in 0..nh {
                let cols = head * hd..(head + 1) * hd;
                let base = (b * nh + head) * t;
                let probs = &c.probs[base..][..len];
                // Pd = P ⊙ mask / (1 − p), or P without dropout.
                let used = if c.probs_d.is_empty() {
                    probs
                } else {
                    &c.probs_d[base..][..len]
                };
                let dch = &d_ctx[b * h..][cols.clone()];
                // dV_j = Pd_j · dC; dPd_j = dC · V_j
                for (j, gj) in g.iter_mut().enumerate() {
                    let vj = &vb[j * h..][cols.clone()];
                    *gj = dch.iter().zip(vj).map(|(a, b)| a * b).sum();
                    for (o, &x) in dvb[j * h..][cols.clone()].iter_mut().zip(dch) {
                        *o = used[j] * x;
                    }
                }
                // dS = dPd ⊙ Pd − P · Σ_j dPd ⊙ Pd (as in `attention_bwd`).
                let dot: f32 = g.iter().zip(used).map(|(a, b)| a * b).sum();
                for ((gj, &pj), &pdj) in g.iter_mut().zip(probs).zip(used) {
                    *gj = *gj * pdj - pj * dot;
                }
                // S_j = scale · q · K_j: dq = scale · Σ_j dS_j K_j, dK_j = scale · dS_j q.
                let qh = &c.q[b * h..][cols.clone()];
                let dqh = &mut dqb[cols.clone()];
                dqh.fill(0.0);
                for (j, &gj) in g.iter().enumerate() {
                    let s = scale * gj;
                    for (o, &x) in dqh.iter_mut().zip(&kb[j * h..][cols.clone()]) {
                        *o += s * x;
                    }
                    for (o, &x) in dkb[j * h..][cols.clone()].iter_mut().zip(qh) {
                        *o = s * x;
                    }
                }
            }
        });
}

/// Each sequence's length without its padding: the tokens up to its last unmasked
/// one, when every token before that is unmasked too. A mask with holes (or none
/// set) gives the whole length, where the mask's bias does the masking.
fn unpadded_lengths(mask: &[f32], t: usize) -> Vec<usize> {
    mask.chunks(t)
        .map(|m| {
            let len = m.iter().rposition(|&v| v != 0.0).map_or(0, |i| i + 1);
            if len > 0 && m[..len].iter().all(|&v| v != 0.0) {
                len
            } else {
                t
            }
        })
        .collect()
}

/// Softmax attention per sequence and head: keeps the probabilities (before and,
/// with a dropout `key`, after dropout) and writes the heads' outputs side by side
/// into `ctx`.
///
/// Only a sequence's own tokens (`Rows`) are computed: its padding gets no
/// attention (the mask's bias would give it exactly 0) and has no queries. The
/// probabilities keep the padded layout, `(b, heads, t, t)`, zero outside each
/// sequence's own square.
fn attention_fwd(
    d: Dims,
    scale: f32,
    (q, k, v): (&[f32], &[f32], &[f32]),
    (bias, rows): (&[f32], &Rows),
    (key, p): (Option<u64>, f32),
    (probs, probs_d): (&mut [f32], &mut [f32]),
    ctx: &mut [f32],
) {
    let (t, h, nh) = (d.t, d.h, d.nh);
    let sc = 1.0 / (1.0 - p);
    let per_seq = nh * t * t;
    probs
        .par_chunks_mut(per_seq)
        .zip(per_sequence(probs_d, per_seq, d.b))
        .zip(rows.split(ctx, h))
        .enumerate()
        .for_each(|(b, ((pb, db), cb))| {
            let (qb, kb, vb) = (rows.of(q, b, h), rows.of(k, b, h), rows.of(v, b, h));
            let len = rows.lens[b];
            let bias = &bias[b * t..b * t + len];
            let mut mask = vec![0u8; if key.is_some() { t * t } else { 0 }];
            for head in 0..nh {
                let s = &mut pb[head * t * t..(head + 1) * t * t];
                matmul(
                    ViewMut::cols_of(s, len, t, 0, len),
                    d.head_rows(qb, head, len),
                    d.head_rows(kb, head, len).t(),
                    false,
                    scale,
                    Par::Serial,
                );
                for (i, row) in s.chunks_mut(t).enumerate() {
                    if i < len {
                        wide::softmax_biased(&mut row[..len], bias);
                        row[len..].fill(0.0);
                    } else {
                        row.fill(0.0);
                    }
                }
                let used: &[f32] = match key {
                    Some(key) => {
                        dropout_mask(key, p, (b * nh + head) * t * t, &mut mask);
                        let out = &mut db[head * t * t..(head + 1) * t * t];
                        for ((o, &x), &m) in out.iter_mut().zip(s.iter()).zip(&mask) {
                            *o = if m != 0 { x * sc } else { 0.0 };
                        }
                        out
                    }
                    None => s,
                };
                matmul(
                    d.head_rows_mut(cb, head, len),
                    View::cols_of(used, len, t, 0, len),
                    d.head_rows(vb, head, len),
                    false,
                    1.0,
                    Par::Serial,
                );
            }
        });
}

/// Backward of `attention_fwd`: writes the gradients of q, k and v.
fn attention_bwd(
    d: Dims,
    scale: f32,
    c: &LayerCache,
    rows: &Rows,
    d_ctx: &[f32],
    (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
) {
    let (t, h, nh) = (d.t, d.h, d.nh);
    rows.split(dq, h)
        .into_par_iter()
        .zip(rows.split(dk, h))
        .zip(rows.split(dv, h))
        .enumerate()
        .for_each(|(b, ((dqb, dkb), dvb))| {
            let (qb, kb, vb) = (
                rows.of(&c.q, b, h),
                rows.of(&c.k, b, h),
                rows.of(&c.v, b, h),
            );
            let dcb = rows.of(d_ctx, b, h);
            let len = rows.lens[b];
            let mut dp = vec![0f32; len * len];
            for head in 0..nh {
                let base = (b * nh + head) * t * t;
                let probs = &c.probs[base..base + t * t];
                // Pd = P ⊙ mask / (1 − p), or P without dropout.
                let used = if c.probs_d.is_empty() {
                    probs
                } else {
                    &c.probs_d[base..base + t * t]
                };
                let dch = d.head_rows(dcb, head, len);
                // dV = Pdᵀ · dC; dPd = dC · Vᵀ
                matmul(
                    d.head_rows_mut(dvb, head, len),
                    View::cols_of(used, len, t, 0, len).t(),
                    dch,
                    false,
                    1.0,
                    Par::Serial,
                );
                matmul(
                    ViewMut::new(&mut dp, len, len),
                    dch,
                    d.head_rows(vb, head, len).t(),
                    false,
                    1.0,
                    Par::Serial,
                );
                // Through dropout and softmax: with dP = dPd ⊙ mask / (1 − p),
                // dS = P ⊙ (dP − Σ_j P ⊙ dP) = dPd ⊙ Pd − P · Σ_j dPd ⊙ Pd, so the
                // mask itself is not needed.
                for ((g, pr), pd) in dp.chunks_mut(len).zip(probs.chunks(t)).zip(used.chunks(t)) {
                    let dot: f32 = g.iter().zip(pd).map(|(a, b)| a * b).sum();
                    for ((gi, &pi), &pdi) in g.iter_mut().zip(pr).zip(pd) {
                        *gi = *gi * pdi - pi * dot;
                    }
                }
                // S = scale · Q Kᵀ: dQ = scale · dS K, dK = scale · dSᵀ Q.
                matmul(
                    d.head_rows_mut(dqb, head, len),
                    View::new(&dp, len, len),
                    d.head_rows(kb, head, len),
                    false,
                    scale,
                    Par::Serial,
                );
                matmul(
                    d.head_rows_mut(dkb, head, len),
                    View::new(&dp, len, len).t(),
                    d.head_rows(qb, head, len),
                    false,
                    scale,
                    Par::Serial,
                );
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bert::{random_weights, tiny_config};
    use candle_core::Device;

    fn model(dropout: f64) -> RewardModel {
        let mut cfg = tiny_config();
        cfg.hidden_dropout_prob = dropout;
        cfg.attention_probs_dropout_prob = dropout;
        let w = random_weights(&cfg, 7).expect("weights");
        RewardModel::from_weights(cfg, &w, 3).expect("model")
    }

    fn padded() -> Padded {
        let seqs: Vec<Vec<u32>> = vec![
            vec![101, 2023, 2003, 1037, 3231, 102],
            vec![101, 7592, 102],
            vec![101, 2054, 2055, 2056, 2057, 2058, 2059, 102],
            vec![101, 1996, 102],
        ];
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        Padded::new(&refs, 0)
    }

    fn close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * scale,
                "{what}[{i}]: {x} vs {y} (scale {scale})"
            );
        }
    }

    /// Training and scoring compute the last layer for the first tokens only: the
    /// rewards are those of the reference forward over every token, padding
    /// included, with and without a mean layer.
    #[test]
    fn the_last_layer_for_first_tokens_gives_the_full_forwards_rewards() {
        let padded = padded();
        let (b, t) = (padded.seqs, padded.len);
        let ids_t = Tensor::from_vec(padded.ids.clone(), (b, t), &Device::Cpu).expect("ids");
        let mask_t = Tensor::from_vec(padded.mask.clone(), (b, t), &Device::Cpu).expect("mask");
        let mut m = model(0.0);
        for _ in 0..2 {
            let (want, _) = m.forward_pooled(&ids_t, &mask_t, None).expect("reference");
            let want = want.to_vec1::<f32>().expect("v");
            let (taped, tape) = m.forward_tape(&padded.batch(), None, false).expect("tape");
            // Only the last layer's queries were cut to one row a sequence.
            let h = m.config.hidden_size;
            let (last, below) = tape.layers.split_last().expect("layers");
            assert_eq!(last.q.len(), b * h, "the last layer's queries");
            let tokens = padded.mask.iter().filter(|&&v| v == 1.0).count();
            assert!(below.iter().all(|c| c.q.len() == tokens * h));
            close(&taped, &want, 1e-5, "training's rewards");
            let scored = m.rewards(&padded.batch()).expect("scored");
            close(&scored, &want, 1e-5, "scoring's rewards");
            m.add_mean_layer().expect("mean layer");
        }
    }

    /// Padding gets exactly zero attention, not subnormal numbers: products over
    /// subnormals ran nine times slower on real (padded) batches.
    #[test]
    fn padding_gets_zero_attention_and_nothing_is_subnormal() {
        let m = model(0.1);
        let padded = padded();
        let (mask, t) = (&padded.mask, padded.len);
        let mut rng = DropoutRng::new(5);
        let (_, tape) = m
            .forward_tape(&padded.batch(), Some(&mut rng), false)
            .expect("forward");
        for (l, c) in tape.layers.iter().enumerate() {
            // The last layer has each sequence's first query only.
            let queries = if l + 1 == tape.layers.len() { 1 } else { t };
            for (i, p) in c.probs.iter().enumerate() {
                let (seq, col) = (i / (m.config.num_attention_heads * queries * t), i % t);
                if mask[seq * t + col] == 0.0 {
                    assert_eq!(*p, 0.0, "layer {l}: padding got attention {p}");
                }
                assert!(!p.is_subnormal(), "layer {l}: subnormal probability {p}");
            }
            for buf in [&c.act, &c.x1, &c.ctx] {
                assert!(buf.iter().all(|v| !v.is_subnormal()), "layer {l}");
            }
        }
    }

    /// Rewards and every gradient agree with candle's autograd through the reference
    /// forward, with and without dropout, for a loss on the rewards and the pooled
    /// vectors.
    #[test]
    fn rewards_and_gradients_match_the_autograd_reference() {
        for dropout in [0.0, 0.1] {
            let m = model(dropout);
            let padded = padded();
            let (b, t) = (padded.seqs, padded.len);
            let ids_t = Tensor::from_vec(padded.ids.clone(), (b, t), &Device::Cpu).expect("ids");
            let mask_t = Tensor::from_vec(padded.mask.clone(), (b, t), &Device::Cpu).expect("mask");
            // A loss that weighs each reward differently: sum of c_i * r_i.
            let coef: Vec<f32> = (0..b).map(|i| 0.5 + i as f32).collect();
            let mut rng = DropoutRng::new(11);
            let (r_ref, pooled_ref) = m
                .forward_pooled(&ids_t, &mask_t, Some(&mut rng))
                .expect("fwd");
            // Plus a term on the pooled vectors, as the length objective adds.
            let h = m.config.hidden_size;
            let pcoef: Vec<f32> = (0..b * h)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1)
                .collect();
            let pcoef_t = Tensor::from_vec(pcoef.clone(), (b, h), &Device::Cpu).expect("pc");
            let loss = ((&r_ref * Tensor::new(coef.as_slice(), &Device::Cpu).expect("c"))
                .expect("mul")
                .sum_all()
                .expect("sum")
                + (&pooled_ref * &pcoef_t)
                    .expect("mul")
                    .sum_all()
                    .expect("sum"))
            .expect("add");
            let store = loss.backward().expect("bwd");

            let mut rng = DropoutRng::new(11);
            let (r, tape) = m
                .forward_tape(&padded.batch(), Some(&mut rng), false)
                .expect("tape");
            close(&r, &r_ref.to_vec1::<f32>().expect("v"), 1e-4, "rewards");
            let want_pooled = pooled_ref
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("v");
            close(tape.pooled(), &want_pooled, 1e-4, "pooled");
            let grads = m.backward(tape, &coef, Some(&pcoef)).expect("backward");
            for ((name, var), g) in m.named_vars().into_iter().zip(&grads) {
                let want = store
                    .get(var.as_tensor())
                    .expect("reference gradient")
                    .flatten_all()
                    .expect("flat")
                    .to_vec1::<f32>()
                    .expect("v");
                let got = g.flatten_all().expect("flat").to_vec1::<f32>().expect("v");
                close(&got, &want, 2e-3, &format!("{name} (dropout {dropout})"));
            }
        }
    }

    /// Attention leaves out what follows a sequence's last token only when every
    /// token before it is unmasked; a mask with holes, or none set, keeps the whole
    /// length for the bias to mask.
    #[test]
    fn unpadded_lengths_are_the_tokens_before_the_padding() {
        let mask = [
            [1., 1., 1., 0., 0.],
            [1., 1., 1., 1., 1.],
            [1., 0., 1., 0., 0.],
            [0., 0., 0., 0., 0.],
            [1., 0., 0., 0., 0.],
        ];
        assert_eq!(unpadded_lengths(mask.as_flattened(), 5), [3, 5, 5, 5, 1]);
    }

    /// Training's bf16 products give the f32 gradients to within bf16's rounding, on
    /// a batch large enough to take them (256 rows and more), dropout included.
    #[test]
    fn bf16_products_give_the_f32_gradients_within_rounding() {
        let Some(_) = Bf16::detect() else {
            eprintln!("this CPU has no AVX512-BF16: training multiplies in f32 here");
            return;
        };
        let m = model(0.1);
        let seqs: Vec<Vec<u32>> = (0..6u32)
            .map(|s| {
                (0..70 - 9 * s)
                    .map(|i| 1000 + (i * 37 + s * 101) % 20000)
                    .collect()
            })
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
        let padded = Padded::new(&refs, 0);
        let tokens: usize = seqs.iter().map(Vec::len).sum();
        assert!(tokens >= FAST_MIN_ROWS);
        let coef: Vec<f32> = (0..padded.seqs).map(|i| 1.0 - 0.4 * i as f32).collect();
        let grads = |bf16: bool| {
            let mut rng = DropoutRng::new(5);
            let (r, tape) = m
                .forward_tape(&padded.batch(), Some(&mut rng), bf16)
                .expect("forward");
            let g = m.backward(tape, &coef, None).expect("backward");
            let g: Vec<Vec<f32>> = g
                .iter()
                .map(|g| g.flatten_all().expect("flat").to_vec1().expect("v"))
                .collect();
            (r, g)
        };
        let ((r32, g32), (r16, g16)) = (grads(false), grads(true));
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let diff = |a: &[f32], b: &[f32], floor: f64| {
            let d: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
            norm(&d) / norm(b).max(floor)
        };
        let moved_r = diff(&r16, &r32, 1e-12);
        assert!(moved_r < 0.02, "rewards moved by {moved_r}");
        // Against a floor of a thousandth of the whole gradient: some gradients are
        // zero up to rounding (the keys' bias does not change a softmax).
        let all: Vec<f32> = g32.concat();
        let floor = 1e-3 * norm(&all);
        let mut moved = 0.0f64;
        for ((name, _), (a, b)) in m.named_vars().into_iter().zip(g16.iter().zip(&g32)) {
            let d = diff(a, b, floor);
            assert!(d < 0.02, "{name}: bf16 gradient {d} of the f32 one away");
            moved = moved.max(d);
        }
        // The bf16 kernels were taken: rounding moved some gradient.
        assert!(moved > 1e-4, "the bf16 products were not used ({moved})");
    }
}
