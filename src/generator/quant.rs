//! Quantized matrices and the dot products the generator spends its time in.
//!
//! Weights stay in the GGUF's 4-bit (Q4_1) or 8-bit (Q8_0) blocks of 32; activations
//! are quantized once per matrix product to 8-bit blocks (Q8_1: a scale and the sum),
//! so each block's dot product is integer arithmetic plus two multiply-adds:
//! `Σ w·x = d_w·d_x·Σ q_w·q_x + m_w·(d_x·Σ q_x)`.
//!
//! At load the blocks are regrouped (`QMatrix`): sixteen rows side by side, four
//! bytes of each, so that one 512-bit integer multiply-add takes four weights of each
//! of sixteen rows against the same four activations (broadcast). Each lane then sums
//! one row and no horizontal sums are left to do; the scales of the sixteen rows are
//! one vector too. Read row by row, the same product spent most of its instructions
//! on per-block scalar work and on folding lanes together.
//!
//! candle 0.11 has no SIMD kernel for Q4_1 (its `vec_dot` is the scalar loop), which
//! made generation four times slower than it needs to be; hence these. The kernels
//! pick AVX-512 VNNI, AVX-VNNI or AVX2 at run time and fall back to portable code.
//! This is the one module that uses `unsafe`: the SIMD intrinsics, each behind a
//! runtime feature check.
#![allow(unsafe_code)]

use half::f16;
use rayon::prelude::*;

pub const BLOCK: usize = 32;

/// A row-major matrix of Q4_1 blocks: `w = d·q + m`, `q` in 0..16.
pub struct Q41 {
    pub rows: usize,
    pub cols: usize,
    /// 16 bytes a block: low nibbles are elements 0..16, high nibbles 16..32.
    qs: Vec<u8>,
    d: Vec<f32>,
    m: Vec<f32>,
}

/// A row-major matrix of Q8_0 blocks: `w = d·q`, `q` in -127..=127.
pub struct Q80 {
    pub rows: usize,
    pub cols: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
}

/// Rows stored side by side in the kernels' layout.
pub const GROUP: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Format {
    Q41,
    Q80,
}

/// A weight matrix as the kernels read it. Rows go in groups of `GROUP` (the last
/// one padded with zero rows); a group's blocks follow each other, and a block is
/// slices of 64 bytes, each holding 4 bytes of every row of the group: slice `k` is
/// row `i`'s bytes `4k..4k+4` at `64k + 4i`. Q4_1 has 4 slices a block (16 packed
/// bytes: element `j` in the low nibble of byte `j`, element `j + 16` in its high
/// nibble); Q8_0 has 8 (32 signed bytes).
pub struct QMatrix {
    rows: usize,
    cols: usize,
    format: Format,
    qs: Vec<u8>,
    /// Scales, `[group][block][row in group]`, in f16 as the file has them: the
    /// products stream every weight once a token and are bound by memory, where f32
    /// scales made a Q4_1 block a fifth larger.
    d: Vec<f16>,
    /// Q4_1 only, same layout: the block's offset `m`.
    m: Vec<f16>,
    /// Q8_0 only, same layout: `Σq` of the block, which kernels that take the
    /// activations unsigned (`q + 128`) take off again, times 128.
    qsum: Vec<i16>,
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

impl Q41 {
    /// From GGUF bytes: blocks of `{d: f16, m: f16, qs: [u8; 16]}`.
    pub fn from_gguf(rows: usize, cols: usize, bytes: &[u8]) -> anyhow::Result<Q41> {
        anyhow::ensure!(
            cols.is_multiple_of(BLOCK),
            "Q4_1 row of {cols} is not whole blocks"
        );
        let n = rows * cols / BLOCK;
        anyhow::ensure!(
            bytes.len() == n * 20,
            "Q4_1 data has {} bytes, expected {}",
            bytes.len(),
            n * 20
        );
        let mut m = Q41 {
            rows,
            cols,
            qs: Vec::with_capacity(n * 16),
            d: Vec::with_capacity(n),
            m: Vec::with_capacity(n),
        };
        for b in bytes.chunks_exact(20) {
            m.d.push(f16_at(b, 0));
            m.m.push(f16_at(b, 2));
            m.qs.extend_from_slice(&b[4..20]);
        }
        Ok(m)
    }

    /// Stacks matrices with the same column count (q, k and v become one product).
    pub fn concat(parts: Vec<Q41>) -> Q41 {
        let cols = parts[0].cols;
        let mut out = Q41 {
            rows: 0,
            cols,
            qs: Vec::new(),
            d: Vec::new(),
            m: Vec::new(),
        };
        for p in parts {
            assert_eq!(p.cols, cols, "stacked matrices must have the same width");
            out.rows += p.rows;
            out.qs.extend(p.qs);
            out.d.extend(p.d);
            out.m.extend(p.m);
        }
        out
    }
}

impl Q80 {
    /// From GGUF bytes: blocks of `{d: f16, qs: [i8; 32]}`.
    pub fn from_gguf(rows: usize, cols: usize, bytes: &[u8]) -> anyhow::Result<Q80> {
        anyhow::ensure!(
            cols.is_multiple_of(BLOCK),
            "Q8_0 row of {cols} is not whole blocks"
        );
        let n = rows * cols / BLOCK;
        anyhow::ensure!(
            bytes.len() == n * 34,
            "Q8_0 data has {} bytes, expected {}",
            bytes.len(),
            n * 34
        );
        let mut m = Q80 {
            rows,
            cols,
            qs: Vec::with_capacity(n * 32),
            d: Vec::with_capacity(n),
        };
        for b in bytes.chunks_exact(34) {
            m.d.push(f16_at(b, 0));
            m.qs.extend(b[2..34].iter().map(|&v| v as i8));
        }
        Ok(m)
    }

    /// Quantizes f32 rows (for weights stored in other formats).
    pub fn from_f32(rows: usize, cols: usize, data: &[f32]) -> anyhow::Result<Q80> {
        anyhow::ensure!(
            cols.is_multiple_of(BLOCK),
            "row of {cols} is not whole blocks"
        );
        anyhow::ensure!(
            data.len() == rows * cols,
            "matrix data has the wrong length"
        );
        let n = rows * cols / BLOCK;
        let mut m = Q80 {
            rows,
            cols,
            qs: vec![0; n * 32],
            d: vec![0.0; n],
        };
        for (b, x) in data.chunks_exact(BLOCK).enumerate() {
            let (d, _) = quantize_block(x, &mut m.qs[b * 32..b * 32 + 32]);
            m.d[b] = d;
        }
        Ok(m)
    }

    /// Row `r` as f32 (token embeddings).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let bpr = self.cols / BLOCK;
        for b in 0..bpr {
            let d = self.d[r * bpr + b];
            let q = &self.qs[(r * bpr + b) * 32..(r * bpr + b + 1) * 32];
            for (o, &v) in out[b * 32..b * 32 + 32].iter_mut().zip(q) {
                *o = d * v as f32;
            }
        }
    }
}

impl QMatrix {
    fn regroup(rows: usize, cols: usize, format: Format) -> QMatrix {
        let (bpr, groups) = (cols / BLOCK, rows.div_ceil(GROUP));
        let slices = match format {
            Format::Q41 => 4,
            Format::Q80 => 8,
        };
        let (n, zero) = (groups * bpr * GROUP, f16::from_f32(0.0));
        QMatrix {
            rows,
            cols,
            format,
            qs: vec![0; groups * bpr * slices * 64],
            d: vec![zero; n],
            m: vec![zero; if format == Format::Q41 { n } else { 0 }],
            qsum: vec![0; if format == Format::Q80 { n } else { 0 }],
        }
    }

    /// Row `r`, block `b`'s place in `d`, `m` and `qsum`, and its first byte in `qs`.
    fn at(&self, r: usize, b: usize) -> (usize, usize) {
        let bpr = self.cols / BLOCK;
        let gb = (r / GROUP) * bpr + b;
        (
            gb * GROUP + r % GROUP,
            gb * self.block_bytes() + (r % GROUP) * 4,
        )
    }

    /// Bytes a block of `GROUP` rows takes in `qs`.
    fn block_bytes(&self) -> usize {
        match self.format {
            Format::Q41 => 4 * 64,
            Format::Q80 => 8 * 64,
        }
    }

    pub fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }
}

impl From<Q41> for QMatrix {
    fn from(w: Q41) -> QMatrix {
        let mut m = QMatrix::regroup(w.rows, w.cols, Format::Q41);
        let bpr = w.cols / BLOCK;
        for r in 0..w.rows {
            for b in 0..bpr {
                let (i, q) = m.at(r, b);
                m.d[i] = f16::from_f32(w.d[r * bpr + b]);
                m.m[i] = f16::from_f32(w.m[r * bpr + b]);
                let src = &w.qs[(r * bpr + b) * 16..(r * bpr + b + 1) * 16];
                for (k, four) in src.chunks_exact(4).enumerate() {
                    m.qs[q + 64 * k..q + 64 * k + 4].copy_from_slice(four);
                }
            }
        }
        m
    }
}

impl From<Q80> for QMatrix {
    fn from(w: Q80) -> QMatrix {
        let mut m = QMatrix::regroup(w.rows, w.cols, Format::Q80);
        let bpr = w.cols / BLOCK;
        for r in 0..w.rows {
            for b in 0..bpr {
                let (i, q) = m.at(r, b);
                let src = &w.qs[(r * bpr + b) * 32..(r * bpr + b + 1) * 32];
                m.d[i] = f16::from_f32(w.d[r * bpr + b]);
                // At most 32 · 128 in magnitude.
                m.qsum[i] = src.iter().map(|&v| i16::from(v)).sum();
                for (k, four) in src.chunks_exact(4).enumerate() {
                    for (o, &v) in m.qs[q + 64 * k..q + 64 * k + 4].iter_mut().zip(four) {
                        *o = v as u8;
                    }
                }
            }
        }
        m
    }
}

/// Rounds like ggml does when it stores a scale in f16, so products match its own.
fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (o, &v) in q.iter_mut().zip(x) {
        // Round to nearest by the float trick (|v·id| ≤ 127): no libm call, so the
        // loop vectorises. The clamp holds that bound when `1/d` overflows (a
        // subnormal `d`) or a value is not finite, as in a corrupt model.
        const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
        let r = (((v * id + MAGIC) - MAGIC) as i32).clamp(-127, 127);
        *o = r as i8;
        sum += r;
    }
    (f16::from_f32(d).to_f32(), sum)
}

/// Activations quantized to Q8_1 blocks, `n` rows of `cols`.
#[derive(Default)]
pub struct QActs {
    pub n: usize,
    pub cols: usize,
    qs: Vec<i8>,
    /// `qs` plus 128, as unsigned bytes (for the Q8_0 kernels).
    qu: Vec<u8>,
    d: Vec<f32>,
    /// `d·Σq` per block (Q4_1's offset term).
    s: Vec<f32>,
}

impl QActs {
    /// Quantizes `x` (`n` rows of `cols`) into this buffer, reusing its memory.
    pub fn quantize(&mut self, x: &[f32], n: usize, cols: usize) {
        debug_assert_eq!(x.len(), n * cols);
        let blocks = n * cols / BLOCK;
        self.n = n;
        self.cols = cols;
        self.qs.resize(blocks * BLOCK, 0);
        self.qu.resize(blocks * BLOCK, 0);
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
            let (d, sum) = quantize_block(xb, &mut self.qs[b * BLOCK..(b + 1) * BLOCK]);
            self.d[b] = d;
            self.s[b] = f16::from_f32(d * sum as f32).to_f32();
        }
        for (u, &q) in self.qu.iter_mut().zip(&self.qs) {
            *u = (q as u8) ^ 0x80;
        }
    }
}

/// A dot product in eight independent lanes, so that it vectorises (a plain sum
/// must keep its order and runs one add at a time).
pub fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for (acc, (x, y)) in acc.iter_mut().zip(x.iter().zip(y)) {
            *acc += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Which dot-product code runs. A `Kernel` can only be had from `detect` or
/// `available`, which check the CPU first: that check is what makes the SIMD calls
/// in `groups_dot` sound, so no safe code can name a kernel the CPU lacks.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Kernel(Isa);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// Two blocks per instruction in 512-bit registers.
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl Kernel {
    /// Every kernel this CPU runs, slowest first.
    pub fn available() -> Vec<Kernel> {
        let mut k = vec![Kernel(Isa::Portable)];
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            if avx2 {
                k.push(Kernel(Isa::Avx2));
            }
            if avx2 && is_x86_feature_detected!("avxvnni") {
                k.push(Kernel(Isa::AvxVnni));
            }
            if avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
            {
                k.push(Kernel(Isa::Avx512Vnni));
            }
        }
        k
    }

    /// The fastest kernel this CPU runs; `DUEL_KERNEL=portable|avx2|avxvnni` forces
    /// a slower one (when the CPU has it).
    pub fn detect() -> Kernel {
        let all = Kernel::available();
        let forced = std::env::var("DUEL_KERNEL").ok();
        let wanted = all.iter().find(|k| {
            forced
                .as_deref()
                .is_some_and(|f| format!("{:?}", k.0).eq_ignore_ascii_case(f))
        });
        *wanted.or(all.last()).unwrap_or(&Kernel(Isa::Portable))
    }
}

/// `out[t][r] = Σ_c w[r][c]·x[t][c]` for every activation row `t` and weight row `r`,
/// split over the rayon pool by groups of rows. `scratch` holds the kernels' layout
/// (`[group][t][row in group]`) where it differs from `out`'s.
pub fn matmul(kernel: Kernel, w: &QMatrix, x: &QActs, out: &mut [f32], scratch: &mut Vec<f32>) {
    let (rows, n, groups) = (w.rows, x.n, w.groups());
    assert_eq!(w.cols, x.cols, "matrix width and activation width differ");
    assert_eq!(out.len(), rows * n);
    let threads = rayon::current_num_threads().max(1);
    // Many chunks per thread, so that work stealing evens out cores that run at
    // different speeds (shared machines): 16 a thread measured 75 tokens/s where 4
    // gave 64 and 1 gave 55.
    let chunk = groups.div_ceil(threads * 16) * n * GROUP;
    let run = |dst: &mut [f32]| {
        dst.par_chunks_mut(chunk).enumerate().for_each(|(c, part)| {
            groups_dot(kernel, w, x, c * chunk / (n * GROUP), part);
        });
    };
    // One activation row and whole groups: `out` is already in the kernels' layout.
    if n == 1 && rows.is_multiple_of(GROUP) {
        run(out);
        return;
    }
    scratch.resize(groups * n * GROUP, 0.0);
    run(scratch);
    for g in 0..groups {
        let r0 = g * GROUP;
        let nr = GROUP.min(rows - r0);
        for t in 0..n {
            let from = (g * n + t) * GROUP;
            out[t * rows + r0..t * rows + r0 + nr].copy_from_slice(&scratch[from..from + nr]);
        }
    }
}

/// Groups `g0..` of `w` (as many as `dst` holds) against every activation row:
/// row `g·GROUP + i` with activation row `t` goes to `dst[((g - g0)·n + t)·GROUP + i]`.
fn groups_dot(kernel: Kernel, w: &QMatrix, x: &QActs, g0: usize, dst: &mut [f32]) {
    let ng = dst.len() / (x.n * GROUP);
    match (kernel.0, w.format) {
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni, Format::Q41) => {
            // SAFETY: a `Kernel` holds this only when `Kernel::available` found avx2,
            // fma, f16c, avx512f, avx512bw and avx512vnni on this CPU (its field is
            // private).
            unsafe { x86::q41_512(w, x, g0, ng, dst) }
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx512Vnni, Format::Q80) => {
            // SAFETY: as above.
            unsafe { x86::q80_512(w, x, g0, ng, dst) }
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::AvxVnni, Format::Q41) => {
            // SAFETY: held only when `Kernel::available` found avx2, fma, f16c and
            // avxvnni.
            unsafe { x86::q41_vnni(w, x, g0, ng, dst) }
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, Format::Q41) => {
            // SAFETY: held only when `Kernel::available` found avx2, fma and f16c.
            unsafe { x86::q41_avx2(w, x, g0, ng, dst) }
        }
        #[cfg(target_arch = "x86_64")]
        (Isa::AvxVnni | Isa::Avx2, Format::Q80) => {
            // SAFETY: as above; the Q8_0 kernel needs avx2, fma and f16c only.
            unsafe { x86::q80_avx2(w, x, g0, ng, dst) }
        }
        _ => portable(w, x, g0, ng, dst),
    }
}

fn portable(w: &QMatrix, x: &QActs, g0: usize, ng: usize, dst: &mut [f32]) {
    let (bpr, n) = (w.cols / BLOCK, x.n);
    for g in 0..ng {
        for t in 0..n {
            for i in 0..GROUP {
                let r = (g0 + g) * GROUP + i;
                let mut acc = 0f32;
                for b in 0..bpr {
                    let (at, q) = w.at(r, b);
                    let xb = t * bpr + b;
                    let xq = &x.qs[xb * BLOCK..(xb + 1) * BLOCK];
                    // Byte `j` of the row's block.
                    let byte = |j: usize| w.qs[q + 64 * (j / 4) + j % 4];
                    let mut isum = 0i32;
                    match w.format {
                        Format::Q41 => {
                            for j in 0..16 {
                                isum += i32::from(byte(j) & 0x0F) * i32::from(xq[j]);
                                isum += i32::from(byte(j) >> 4) * i32::from(xq[j + 16]);
                            }
                            acc += w.m[at].to_f32() * x.s[xb];
                        }
                        Format::Q80 => {
                            for (j, &xj) in xq.iter().enumerate() {
                                isum += i32::from(byte(j) as i8) * i32::from(xj);
                            }
                        }
                    }
                    acc += w.d[at].to_f32() * x.d[xb] * isum as f32;
                }
                dst[(g * n + t) * GROUP + i] = acc;
            }
        }
    }
}

// Kernels index several arrays by block and by row; iterators would hide that.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
mod x86 {
    use super::{BLOCK, Format, GROUP, QActs, QMatrix};
    use std::arch::x86_64::*;

    /// Activation rows taken together: a block's weights are unpacked once for these.
    const TILE: usize = 4;

    /// What every kernel reads lies in its buffers: the pointer arithmetic below
    /// stays inside these bounds.
    fn check(w: &QMatrix, x: &QActs, g0: usize, ng: usize, dst: &[f32]) {
        let bpr = w.cols / BLOCK;
        let blocks = (g0 + ng) * bpr;
        assert!(w.qs.len() >= blocks * w.block_bytes());
        assert!(w.d.len() >= blocks * GROUP);
        match w.format {
            Format::Q41 => assert!(w.m.len() >= blocks * GROUP),
            Format::Q80 => assert!(w.qsum.len() >= blocks * GROUP),
        }
        let xb = x.n * bpr;
        assert!(x.qs.len() >= xb * BLOCK && x.qu.len() >= xb * BLOCK);
        assert!(x.d.len() >= xb && x.s.len() >= xb);
        assert!(dst.len() >= ng * x.n * GROUP);
    }

    /// Checks the buffers (`check`), then runs `$tile::<NT>` over each group's
    /// activation rows in tiles of up to `TILE`.
    macro_rules! tiles {
        ($tile:ident, $w:expr, $x:expr, $g0:expr, $ng:expr, $dst:expr) => {{
            check($w, $x, $g0, $ng, $dst);
            let n = $x.n;
            for g in 0..$ng {
                let mut t0 = 0;
                while t0 < n {
                    let nt = (n - t0).min(TILE);
                    let out = &mut $dst[(g * n + t0) * GROUP..(g * n + t0 + nt) * GROUP];
                    // SAFETY: the caller's features; `check` bounds every read and
                    // `out` holds the tile's `nt · GROUP` results.
                    unsafe {
                        match nt {
                            1 => $tile::<1>($w, $x, $g0 + g, t0, out),
                            2 => $tile::<2>($w, $x, $g0 + g, t0, out),
                            3 => $tile::<3>($w, $x, $g0 + g, t0, out),
                            _ => $tile::<TILE>($w, $x, $g0 + g, t0, out),
                        }
                    }
                    t0 += nt;
                }
            }
        }};
    }

    /// 16 f16 values at `p` as f32.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn f16x16(p: *const half::f16) -> __m512 {
        // SAFETY: the caller's pointer has 16 readable values.
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p as *const __m256i) })
    }

    /// 8 f16 values at `p` as f32.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn f16x8(p: *const half::f16) -> __m256 {
        // SAFETY: as above, 8 values.
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p as *const __m128i) })
    }

    /// The four bytes at `p` in every 32-bit lane.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn splat4_512(p: *const u8) -> __m512i {
        // SAFETY: the caller's pointer has 4 readable bytes.
        _mm512_set1_epi32(unsafe { (p as *const i32).read_unaligned() })
    }

    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn splat4_256(p: *const u8) -> __m256i {
        // SAFETY: as above.
        _mm256_set1_epi32(unsafe { (p as *const i32).read_unaligned() })
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub unsafe fn q41_512(w: &QMatrix, x: &QActs, g0: usize, ng: usize, dst: &mut [f32]) {
        tiles!(q41_tile_512, w, x, g0, ng, dst);
    }

    /// Group `g` against activation rows `t0..t0 + NT`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    unsafe fn q41_tile_512<const NT: usize>(
        w: &QMatrix,
        x: &QActs,
        g: usize,
        t0: usize,
        out: &mut [f32],
    ) {
        let bpr = w.cols / BLOCK;
        let mask = _mm512_set1_epi8(0x0F);
        let mut acc = [_mm512_setzero_ps(); NT];
        for b in 0..bpr {
            let gb = g * bpr + b;
            let mut lo = [_mm512_setzero_si512(); 4];
            let mut hi = [_mm512_setzero_si512(); 4];
            // SAFETY (every pointer in this loop): within the bounds `check` asserted.
            let (dw, mw) = unsafe {
                let wp = w.qs.as_ptr().add(gb * 256);
                for k in 0..4 {
                    let v = _mm512_loadu_si512(wp.add(64 * k) as *const __m512i);
                    lo[k] = _mm512_and_si512(v, mask);
                    hi[k] = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
                }
                (
                    f16x16(w.d.as_ptr().add(gb * GROUP)),
                    f16x16(w.m.as_ptr().add(gb * GROUP)),
                )
            };
            for j in 0..NT {
                let xb = (t0 + j) * bpr + b;
                let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                unsafe {
                    let xp = x.qs.as_ptr().add(xb * BLOCK) as *const u8;
                    for k in 0..4 {
                        s0 = _mm512_dpbusd_epi32(s0, lo[k], splat4_512(xp.add(4 * k)));
                        s1 = _mm512_dpbusd_epi32(s1, hi[k], splat4_512(xp.add(16 + 4 * k)));
                    }
                }
                let s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(x.d[xb]));
                acc[j] = _mm512_fmadd_ps(s, scale, acc[j]);
                acc[j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(x.s[xb]), acc[j]);
            }
        }
        for j in 0..NT {
            // SAFETY: `out` holds NT · GROUP values.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(j * GROUP), acc[j]) }
        }
    }

    /// Q8_0 × Q8: the activations are taken unsigned (`q + 128`), and `128·Σq_w` per
    /// block taken off again.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub unsafe fn q80_512(w: &QMatrix, x: &QActs, g0: usize, ng: usize, dst: &mut [f32]) {
        tiles!(q80_tile_512, w, x, g0, ng, dst);
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    unsafe fn q80_tile_512<const NT: usize>(
        w: &QMatrix,
        x: &QActs,
        g: usize,
        t0: usize,
        out: &mut [f32],
    ) {
        let bpr = w.cols / BLOCK;
        let mut acc = [_mm512_setzero_ps(); NT];
        for b in 0..bpr {
            let gb = g * bpr + b;
            let mut wq = [_mm512_setzero_si512(); 8];
            // SAFETY (every pointer in this loop): within the bounds `check` asserted.
            let (dw, corr) = unsafe {
                let wp = w.qs.as_ptr().add(gb * 512);
                for k in 0..8 {
                    wq[k] = _mm512_loadu_si512(wp.add(64 * k) as *const __m512i);
                }
                let qsum = _mm256_loadu_si256(w.qsum.as_ptr().add(gb * GROUP) as *const __m256i);
                (
                    f16x16(w.d.as_ptr().add(gb * GROUP)),
                    _mm512_slli_epi32(_mm512_cvtepi16_epi32(qsum), 7),
                )
            };
            for j in 0..NT {
                let xb = (t0 + j) * bpr + b;
                let (mut s0, mut s1) = (_mm512_setzero_si512(), _mm512_setzero_si512());
                unsafe {
                    let xp = x.qu.as_ptr().add(xb * BLOCK);
                    for k in 0..4 {
                        s0 = _mm512_dpbusd_epi32(s0, splat4_512(xp.add(4 * k)), wq[k]);
                        s1 = _mm512_dpbusd_epi32(s1, splat4_512(xp.add(16 + 4 * k)), wq[k + 4]);
                    }
                }
                // Exact: Σ(q_x + 128)·q_w − 128·Σq_w.
                let s = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), corr);
                let scale = _mm512_mul_ps(dw, _mm512_set1_ps(x.d[xb]));
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[j]);
            }
        }
        for j in 0..NT {
            // SAFETY: `out` holds NT · GROUP values.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(j * GROUP), acc[j]) }
        }
    }

    /// u8 × i8 products summed in fours onto 8 i32 lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn dot_avx2(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        let p16 = _mm256_maddubs_epi16(u, s);
        _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }

    #[target_feature(enable = "avx2,fma,avxvnni")]
    #[inline]
    fn dot_vnni(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    }

    /// The 256-bit kernels take a group as two halves of 8 rows: the first and
    /// second 32 bytes of each 64-byte slice.
    macro_rules! q41_256 {
        ($name:ident, $tile:ident, $features:literal, $dot:ident) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $name(w: &QMatrix, x: &QActs, g0: usize, ng: usize, dst: &mut [f32]) {
                tiles!($tile, w, x, g0, ng, dst);
            }

            #[target_feature(enable = $features)]
            unsafe fn $tile<const NT: usize>(
                w: &QMatrix,
                x: &QActs,
                g: usize,
                t0: usize,
                out: &mut [f32],
            ) {
                let bpr = w.cols / BLOCK;
                let mask = _mm256_set1_epi8(0x0F);
                for h in 0..2 {
                    let mut acc = [_mm256_setzero_ps(); NT];
                    for b in 0..bpr {
                        let gb = g * bpr + b;
                        let mut lo = [_mm256_setzero_si256(); 4];
                        let mut hi = [_mm256_setzero_si256(); 4];
                        // SAFETY (every pointer here): within the bounds `check` asserted.
                        let (dw, mw) = unsafe {
                            let wp = w.qs.as_ptr().add(gb * 256 + 32 * h);
                            for k in 0..4 {
                                let v = _mm256_loadu_si256(wp.add(64 * k) as *const __m256i);
                                lo[k] = _mm256_and_si256(v, mask);
                                hi[k] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
                            }
                            let at = gb * GROUP + 8 * h;
                            (f16x8(w.d.as_ptr().add(at)), f16x8(w.m.as_ptr().add(at)))
                        };
                        for j in 0..NT {
                            let xb = (t0 + j) * bpr + b;
                            let (mut s0, mut s1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                            unsafe {
                                let xp = x.qs.as_ptr().add(xb * BLOCK) as *const u8;
                                for k in 0..4 {
                                    s0 = $dot(s0, lo[k], splat4_256(xp.add(4 * k)));
                                    s1 = $dot(s1, hi[k], splat4_256(xp.add(16 + 4 * k)));
                                }
                            }
                            let s = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
                            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(x.d[xb]));
                            acc[j] = _mm256_fmadd_ps(s, scale, acc[j]);
                            acc[j] = _mm256_fmadd_ps(mw, _mm256_set1_ps(x.s[xb]), acc[j]);
                        }
                    }
                    for j in 0..NT {
                        // SAFETY: `out` holds NT · GROUP values.
                        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(j * GROUP + 8 * h), acc[j]) }
                    }
                }
            }
        };
    }

    q41_256!(q41_avx2, q41_tile_avx2, "avx2,fma,f16c", dot_avx2);
    q41_256!(q41_vnni, q41_tile_vnni, "avx2,fma,f16c,avxvnni", dot_vnni);

    /// Q8_0 in 256 bits: `maddubs` wants one unsigned operand, so it takes `|w|` and
    /// the activations with `w`'s sign (no sum to take off afterwards).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn q80_avx2(w: &QMatrix, x: &QActs, g0: usize, ng: usize, dst: &mut [f32]) {
        tiles!(q80_tile_avx2, w, x, g0, ng, dst);
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q80_tile_avx2<const NT: usize>(
        w: &QMatrix,
        x: &QActs,
        g: usize,
        t0: usize,
        out: &mut [f32],
    ) {
        let bpr = w.cols / BLOCK;
        for h in 0..2 {
            let mut acc = [_mm256_setzero_ps(); NT];
            for b in 0..bpr {
                let gb = g * bpr + b;
                let mut wq = [_mm256_setzero_si256(); 8];
                // SAFETY (every pointer here): within the bounds `check` asserted.
                let dw = unsafe {
                    let wp = w.qs.as_ptr().add(gb * 512 + 32 * h);
                    for k in 0..8 {
                        wq[k] = _mm256_loadu_si256(wp.add(64 * k) as *const __m256i);
                    }
                    f16x8(w.d.as_ptr().add(gb * GROUP + 8 * h))
                };
                let wabs = wq.map(|v| _mm256_sign_epi8(v, v));
                for j in 0..NT {
                    let xb = (t0 + j) * bpr + b;
                    let mut s = _mm256_setzero_si256();
                    unsafe {
                        let xp = x.qs.as_ptr().add(xb * BLOCK) as *const u8;
                        for k in 0..8 {
                            let xs = _mm256_sign_epi8(splat4_256(xp.add(4 * k)), wq[k]);
                            s = dot_avx2(s, wabs[k], xs);
                        }
                    }
                    let scale = _mm256_mul_ps(dw, _mm256_set1_ps(x.d[xb]));
                    acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), scale, acc[j]);
                }
            }
            for j in 0..NT {
                // SAFETY: `out` holds NT · GROUP values.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(j * GROUP + 8 * h), acc[j]) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    fn random_q41(rows: usize, cols: usize, seed: u64) -> (Q41, Vec<f32>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut bytes = Vec::new();
        let mut dense = vec![0f32; rows * cols];
        for blk in 0..rows * cols / BLOCK {
            let d = f16::from_f32(rng.random_range(0.001..0.05));
            let m = f16::from_f32(rng.random_range(-0.2..0.2));
            bytes.extend(d.to_le_bytes());
            bytes.extend(m.to_le_bytes());
            for j in 0..16 {
                let (lo, hi): (u8, u8) = (rng.random_range(0..16), rng.random_range(0..16));
                bytes.push(lo | (hi << 4));
                dense[blk * 32 + j] = d.to_f32() * lo as f32 + m.to_f32();
                dense[blk * 32 + j + 16] = d.to_f32() * hi as f32 + m.to_f32();
            }
        }
        (
            Q41::from_gguf(rows, cols, &bytes).expect("valid blocks"),
            dense,
        )
    }

    fn dense_matmul(w: &[f32], x: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; rows * n];
        for t in 0..n {
            for r in 0..rows {
                out[t * rows + r] = (0..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum();
            }
        }
        out
    }

    /// Every kernel computes the product of the dequantized weights with the
    /// dequantized activations (up to the f16 rounding of the block sums), for 1 to 7
    /// activation rows (the tails of the tile), and the quantized product stays close
    /// to the exact one. 40 rows leave the last group of 16 half empty; 48 fill it
    /// (one activation row is then written straight into the output).
    #[test]
    fn kernels_match_the_dense_product() {
        for rows in [40, 48] {
            kernels_match_the_dense_product_for(rows, 96);
        }
    }

    fn kernels_match_the_dense_product_for(rows: usize, cols: usize) {
        let (w, dense) = random_q41(rows, cols, 7);
        let w80 = Q80::from_f32(rows, cols, &dense).expect("whole blocks");
        let dense80: Vec<f32> = (0..rows)
            .flat_map(|r| {
                let mut row = vec![0f32; cols];
                w80.row_into(r, &mut row);
                row
            })
            .collect();
        let wq41 = QMatrix::from(w);
        let wq80 = QMatrix::from(w80);
        let mut rng = StdRng::seed_from_u64(9);
        for n in 1..8 {
            let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-1.0..1.0)).collect();
            let exact = dense_matmul(&dense, &x, rows, cols, n);
            let mut acts = QActs::default();
            acts.quantize(&x, n, cols);
            let xq: Vec<f32> = acts
                .qs
                .iter()
                .enumerate()
                .map(|(i, &q)| acts.d[i / BLOCK] * q as f32)
                .collect();
            let want41 = dense_matmul(&dense, &xq, rows, cols, n);
            let want80 = dense_matmul(&dense80, &xq, rows, cols, n);
            for (a, b) in want41.iter().zip(&exact) {
                assert!(
                    (a - b).abs() < 0.1,
                    "8-bit activations are too coarse: {a} vs {b}"
                );
            }
            for k in Kernel::available() {
                for (w, want) in [(&wq41, &want41), (&wq80, &want80)] {
                    let mut out = vec![0f32; rows * n];
                    matmul(k, w, &acts, &mut out, &mut Vec::new());
                    for (i, (a, b)) in out.iter().zip(want).enumerate() {
                        assert!(
                            (a - b).abs() < 0.005 + 1e-3 * b.abs(),
                            "{k:?} n={n} [{i}]: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
