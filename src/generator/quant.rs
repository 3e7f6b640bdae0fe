//! Quantized matrices and the dot products the generator spends its time in.
//!
//! Weights stay in the GGUF's 4-bit (Q4_1) or 8-bit (Q8_0) blocks of 32; activations
//! are quantized once per matrix product to 8-bit blocks (Q8_1: a scale and the sum),
//! so each block's dot product is integer arithmetic plus two multiply-adds:
//! `Σ w·x = d_w·d_x·Σ q_w·q_x + m_w·(d_x·Σ q_x)`.
//!
//! candle 0.11 has no SIMD kernel for Q4_1 (its `vec_dot` is the scalar loop), which
//! made generation four times slower than it needs to be; hence these. The kernels
//! pick AVX-VNNI, AVX-512 VNNI or AVX2 at run time and fall back to portable code.
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
    /// Σq per block, for kernels that take the activations as unsigned bytes.
    qsum: Vec<i32>,
}

pub enum QMatrix {
    Q41(Q41),
    Q80(Q80),
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
            qsum: Vec::new(),
        };
        for b in bytes.chunks_exact(34) {
            m.d.push(f16_at(b, 0));
            m.qs.extend(b[2..34].iter().map(|&v| v as i8));
        }
        m.sum_blocks();
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
            qsum: Vec::new(),
        };
        for (b, x) in data.chunks_exact(BLOCK).enumerate() {
            let (d, _) = quantize_block(x, &mut m.qs[b * 32..b * 32 + 32]);
            m.d[b] = d;
        }
        m.sum_blocks();
        Ok(m)
    }

    fn sum_blocks(&mut self) {
        self.qsum = self
            .qs
            .chunks_exact(BLOCK)
            .map(|q| q.iter().map(|&v| i32::from(v)).sum())
            .collect();
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
    pub fn rows(&self) -> usize {
        match self {
            QMatrix::Q41(m) => m.rows,
            QMatrix::Q80(m) => m.rows,
        }
    }
    pub fn cols(&self) -> usize {
        match self {
            QMatrix::Q41(m) => m.cols,
            QMatrix::Q80(m) => m.cols,
        }
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
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        for (b, xb) in x.chunks_exact(BLOCK).enumerate() {
            let (d, sum) = quantize_block(xb, &mut self.qs[b * BLOCK..(b + 1) * BLOCK]);
            self.d[b] = d;
            self.s[b] = f16::from_f32(d * sum as f32).to_f32();
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
/// in `rows_dot` sound, so no safe code can name a kernel the CPU lacks.
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
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
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
/// split over the rayon pool by weight rows. `scratch` holds the row-major transpose.
pub fn matmul(kernel: Kernel, w: &QMatrix, x: &QActs, out: &mut [f32], scratch: &mut Vec<f32>) {
    let (rows, n) = (w.rows(), x.n);
    assert_eq!(w.cols(), x.cols, "matrix width and activation width differ");
    assert_eq!(out.len(), rows * n);
    scratch.resize(rows * n, 0.0);
    let threads = rayon::current_num_threads().max(1);
    // Many chunks per thread, so that work stealing evens out cores that run at
    // different speeds (shared machines): 16 a thread measured 75 tokens/s where 4
    // gave 64 and 1 gave 55.
    let chunk_rows = rows.div_ceil(threads * 16).max(8);
    scratch
        .par_chunks_mut(chunk_rows * n)
        .enumerate()
        .for_each(|(c, dst)| {
            let r0 = c * chunk_rows;
            let nr = dst.len() / n;
            rows_dot(kernel, w, x, r0, nr, dst);
        });
    for r in 0..rows {
        for t in 0..n {
            out[t * rows + r] = scratch[r * n + t];
        }
    }
}

/// Rows `r0..r0+nr` of `w` against every activation row: `dst[(r-r0)·n + t]`.
fn rows_dot(kernel: Kernel, w: &QMatrix, x: &QActs, r0: usize, nr: usize, dst: &mut [f32]) {
    match (kernel, w) {
        #[cfg(target_arch = "x86_64")]
        (Kernel(Isa::Avx512Vnni), QMatrix::Q41(m)) => {
            // SAFETY: a `Kernel` holds this only when `Kernel::available` found avx2,
            // fma, avx512f, avx512bw and avx512vnni on this CPU (its field is private).
            unsafe { x86::q41_rows_512(m, x, r0, nr, dst) }
        }
        #[cfg(target_arch = "x86_64")]
        (Kernel(Isa::Avx512Vnni), QMatrix::Q80(m)) => {
            // SAFETY: as above.
            unsafe { x86::q80_rows_512(m, x, r0, nr, dst) }
        }
        #[cfg(target_arch = "x86_64")]
        (Kernel(Isa::AvxVnni), QMatrix::Q41(m)) => {
            // SAFETY: held only when `Kernel::available` found avx2, fma and avxvnni.
            unsafe { x86::q41_rows_vnni(m, x, r0, nr, dst) }
        }
        #[cfg(target_arch = "x86_64")]
        (Kernel(Isa::Avx2), QMatrix::Q41(m)) => {
            // SAFETY: held only when `Kernel::available` found avx2 and fma.
            unsafe { x86::q41_rows_avx2(m, x, r0, nr, dst) }
        }
        #[cfg(target_arch = "x86_64")]
        (Kernel(Isa::AvxVnni | Isa::Avx2), QMatrix::Q80(m)) => {
            // SAFETY: as above; the Q8_0 kernel needs avx2 and fma only.
            unsafe { x86::q80_rows_avx2(m, x, r0, nr, dst) }
        }
        (_, QMatrix::Q41(m)) => q41_rows_portable(m, x, r0, nr, dst),
        (_, QMatrix::Q80(m)) => q80_rows_portable(m, x, r0, nr, dst),
    }
}

fn q41_rows_portable(w: &Q41, x: &QActs, r0: usize, nr: usize, dst: &mut [f32]) {
    let bpr = w.cols / BLOCK;
    for r in 0..nr {
        let wb0 = (r0 + r) * bpr;
        for t in 0..x.n {
            let xb0 = t * bpr;
            let mut acc = 0f32;
            for b in 0..bpr {
                let wq = &w.qs[(wb0 + b) * 16..(wb0 + b + 1) * 16];
                let xq = &x.qs[(xb0 + b) * 32..(xb0 + b + 1) * 32];
                let mut isum = 0i32;
                for j in 0..16 {
                    isum += (wq[j] & 0x0F) as i32 * xq[j] as i32;
                    isum += (wq[j] >> 4) as i32 * xq[j + 16] as i32;
                }
                acc += w.d[wb0 + b] * x.d[xb0 + b] * isum as f32 + w.m[wb0 + b] * x.s[xb0 + b];
            }
            dst[r * x.n + t] = acc;
        }
    }
}

fn q80_rows_portable(w: &Q80, x: &QActs, r0: usize, nr: usize, dst: &mut [f32]) {
    let bpr = w.cols / BLOCK;
    for r in 0..nr {
        let wb0 = (r0 + r) * bpr;
        for t in 0..x.n {
            let xb0 = t * bpr;
            let mut acc = 0f32;
            for b in 0..bpr {
                let wq = &w.qs[(wb0 + b) * 32..(wb0 + b + 1) * 32];
                let xq = &x.qs[(xb0 + b) * 32..(xb0 + b + 1) * 32];
                let isum: i32 = wq.iter().zip(xq).map(|(&a, &b)| a as i32 * b as i32).sum();
                acc += w.d[wb0 + b] * x.d[xb0 + b] * isum as f32;
            }
            dst[r * x.n + t] = acc;
        }
    }
}

// Kernels index several arrays by block and by row; iterators would hide that.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
mod x86 {
    use super::{BLOCK, Q41, Q80, QActs};
    use std::arch::x86_64::*;

    /// Activation rows processed together against one weight row: each weight block
    /// is unpacked once and used this many times.
    const TILE: usize = 4;

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// 16 packed bytes to 32 unsigned 4-bit values in 32 bytes (low nibbles first).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn unpack_q4(p: &[u8]) -> __m256i {
        assert!(p.len() >= 16);
        // SAFETY: 16 bytes are in bounds (asserted); loadu has no alignment needs.
        let b = unsafe { _mm_loadu_si128(p.as_ptr() as *const __m128i) };
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(b, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
        _mm256_set_m128i(hi, lo)
    }

    macro_rules! q41_rows {
        ($name:ident, $features:literal, $dot:ident) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $name(w: &Q41, x: &QActs, r0: usize, nr: usize, dst: &mut [f32]) {
                let bpr = w.cols / BLOCK;
                let n = x.n;
                assert!(w.qs.len() >= (r0 + nr) * bpr * 16 && x.qs.len() >= n * bpr * 32);
                assert!(dst.len() >= nr * n);
                for r in 0..nr {
                    let wb0 = (r0 + r) * bpr;
                    let mut t0 = 0;
                    while t0 < n {
                        let nt = (n - t0).min(TILE);
                        let mut acc = [_mm256_setzero_ps(); TILE];
                        let mut off = [0f32; TILE];
                        for b in 0..bpr {
                            let wi = wb0 + b;
                            // SAFETY: bounds asserted above.
                            let wq = unpack_q4(&w.qs[wi * 16..wi * 16 + 16]);
                            let (wd, wm) = (w.d[wi], w.m[wi]);
                            for j in 0..nt {
                                let xi = (t0 + j) * bpr + b;
                                let xq = unsafe {
                                    _mm256_loadu_si256(x.qs.as_ptr().add(xi * 32) as *const __m256i)
                                };
                                let p = $dot(wq, xq);
                                acc[j] = _mm256_fmadd_ps(
                                    _mm256_set1_ps(wd * x.d[xi]),
                                    _mm256_cvtepi32_ps(p),
                                    acc[j],
                                );
                                off[j] += wm * x.s[xi];
                            }
                        }
                        for j in 0..nt {
                            dst[r * n + t0 + j] = hsum(acc[j]) + off[j];
                        }
                        t0 += nt;
                    }
                }
            }
        };
    }

    /// u8 × i8 products summed in fours into 8 i32 lanes.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn dot_avx2(u: __m256i, s: __m256i) -> __m256i {
        let p16 = _mm256_maddubs_epi16(u, s);
        _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
    }

    #[target_feature(enable = "avx2,fma,avxvnni")]
    #[inline]
    fn dot_vnni(u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s)
    }

    q41_rows!(q41_rows_avx2, "avx2,fma", dot_avx2);

    /// Two Q4_1 blocks (32 packed bytes) as 64 values: each 128-bit lane holds the
    /// low or high nibbles of one block, in element order.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    #[inline]
    fn unpack_q4_pair(p: &[u8]) -> __m512i {
        assert!(p.len() >= 32);
        // SAFETY: 32 bytes are in bounds (asserted).
        let raw = unsafe { _mm256_loadu_si256(p.as_ptr() as *const __m256i) };
        let mask = _mm256_set1_epi8(0x0F);
        let lo = _mm256_and_si256(raw, mask);
        let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), mask);
        // [lo0, lo1, hi0, hi1] -> [lo0, hi0, lo1, hi1]
        let z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        _mm512_shuffle_i64x2(z, z, 0b11_01_10_00)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub unsafe fn q41_rows_512(w: &Q41, x: &QActs, r0: usize, nr: usize, dst: &mut [f32]) {
        let bpr = w.cols / BLOCK;
        let n = x.n;
        let pairs = bpr / 2;
        assert!(w.qs.len() >= (r0 + nr) * bpr * 16 && x.qs.len() >= n * bpr * 32);
        assert!(dst.len() >= nr * n);
        for r in 0..nr {
            let wb0 = (r0 + r) * bpr;
            let mut t0 = 0;
            while t0 < n {
                let nt = (n - t0).min(TILE);
                let mut acc = [_mm512_setzero_ps(); TILE];
                for p in 0..pairs {
                    let wi = wb0 + 2 * p;
                    let wq = unpack_q4_pair(&w.qs[wi * 16..wi * 16 + 32]);
                    for j in 0..nt {
                        let xi = (t0 + j) * bpr + 2 * p;
                        // SAFETY: bounds asserted above.
                        let xq = unsafe {
                            _mm512_loadu_si512(x.qs.as_ptr().add(xi * 32) as *const __m512i)
                        };
                        let p32 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wq, xq);
                        let sc = _mm512_mask_blend_ps(
                            0xFF00,
                            _mm512_set1_ps(w.d[wi] * x.d[xi]),
                            _mm512_set1_ps(w.d[wi + 1] * x.d[xi + 1]),
                        );
                        acc[j] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(p32), acc[j]);
                    }
                }
                for j in 0..nt {
                    let xb0 = (t0 + j) * bpr;
                    let mut v = _mm512_reduce_add_ps(acc[j]);
                    if bpr % 2 == 1 {
                        let (wi, xi) = (wb0 + bpr - 1, xb0 + bpr - 1);
                        let wq = &w.qs[wi * 16..wi * 16 + 16];
                        let xq = &x.qs[xi * 32..xi * 32 + 32];
                        let mut isum = 0i32;
                        for k in 0..16 {
                            isum += i32::from(wq[k] & 0x0F) * i32::from(xq[k]);
                            isum += i32::from(wq[k] >> 4) * i32::from(xq[k + 16]);
                        }
                        v += w.d[wi] * x.d[xi] * isum as f32;
                    }
                    // Σ over blocks of m_w · s_x, Q4_1's offset term.
                    dst[r * n + t0 + j] =
                        v + super::dot8(&w.m[wb0..wb0 + bpr], &x.s[xb0..xb0 + bpr]);
                }
                t0 += nt;
            }
        }
    }

    /// Q8_0 × Q8: the activations become unsigned by adding 128 (a sign flip of the
    /// top bit), and `128·Σw` per block is taken off again.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
    pub unsafe fn q80_rows_512(w: &Q80, x: &QActs, r0: usize, nr: usize, dst: &mut [f32]) {
        let bpr = w.cols / BLOCK;
        let n = x.n;
        let pairs = bpr / 2;
        assert!(w.qs.len() >= (r0 + nr) * bpr * 32 && x.qs.len() >= n * bpr * 32);
        assert!(dst.len() >= nr * n);
        let flip = _mm512_set1_epi8(-128);
        for r in 0..nr {
            let wb0 = (r0 + r) * bpr;
            let mut t0 = 0;
            while t0 < n {
                let nt = (n - t0).min(TILE);
                let mut acc = [_mm512_setzero_ps(); TILE];
                let mut corr = [0f32; TILE];
                for p in 0..pairs {
                    let wi = wb0 + 2 * p;
                    // SAFETY: bounds asserted above.
                    let wq =
                        unsafe { _mm512_loadu_si512(w.qs.as_ptr().add(wi * 32) as *const __m512i) };
                    for j in 0..nt {
                        let xi = (t0 + j) * bpr + 2 * p;
                        let xq = unsafe {
                            _mm512_loadu_si512(x.qs.as_ptr().add(xi * 32) as *const __m512i)
                        };
                        let xu = _mm512_xor_si512(xq, flip);
                        let p32 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), xu, wq);
                        let (s0, s1) = (w.d[wi] * x.d[xi], w.d[wi + 1] * x.d[xi + 1]);
                        let sc =
                            _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(s0), _mm512_set1_ps(s1));
                        acc[j] = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(p32), acc[j]);
                        corr[j] += s0 * w.qsum[wi] as f32 + s1 * w.qsum[wi + 1] as f32;
                    }
                }
                for j in 0..nt {
                    let mut v = _mm512_reduce_add_ps(acc[j]) - 128.0 * corr[j];
                    if bpr % 2 == 1 {
                        let (wi, xi) = (wb0 + bpr - 1, (t0 + j) * bpr + bpr - 1);
                        let isum: i32 = w.qs[wi * 32..wi * 32 + 32]
                            .iter()
                            .zip(&x.qs[xi * 32..xi * 32 + 32])
                            .map(|(&a, &b)| i32::from(a) * i32::from(b))
                            .sum();
                        v += w.d[wi] * x.d[xi] * isum as f32;
                    }
                    dst[r * n + t0 + j] = v;
                }
                t0 += nt;
            }
        }
    }
    q41_rows!(q41_rows_vnni, "avx2,fma,avxvnni", dot_vnni);

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn q80_rows_avx2(w: &Q80, x: &QActs, r0: usize, nr: usize, dst: &mut [f32]) {
        let bpr = w.cols / BLOCK;
        let n = x.n;
        assert!(w.qs.len() >= (r0 + nr) * bpr * 32 && x.qs.len() >= n * bpr * 32);
        assert!(dst.len() >= nr * n);
        for r in 0..nr {
            let wb0 = (r0 + r) * bpr;
            let mut t0 = 0;
            while t0 < n {
                let nt = (n - t0).min(TILE);
                let mut acc = [_mm256_setzero_ps(); TILE];
                for b in 0..bpr {
                    let wi = wb0 + b;
                    // SAFETY: bounds asserted above.
                    let wq =
                        unsafe { _mm256_loadu_si256(w.qs.as_ptr().add(wi * 32) as *const __m256i) };
                    // maddubs wants one unsigned operand: |w| and x with w's sign.
                    let wabs = _mm256_sign_epi8(wq, wq);
                    for j in 0..nt {
                        let xi = (t0 + j) * bpr + b;
                        let xq = unsafe {
                            _mm256_loadu_si256(x.qs.as_ptr().add(xi * 32) as *const __m256i)
                        };
                        let xs = _mm256_sign_epi8(xq, wq);
                        let p = dot_avx2(wabs, xs);
                        acc[j] = _mm256_fmadd_ps(
                            _mm256_set1_ps(w.d[wi] * x.d[xi]),
                            _mm256_cvtepi32_ps(p),
                            acc[j],
                        );
                    }
                }
                for j in 0..nt {
                    dst[r * n + t0 + j] = hsum(acc[j]);
                }
                t0 += nt;
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
    /// to the exact one.
    #[test]
    fn kernels_match_the_dense_product() {
        // 3 blocks a row: the 512-bit kernels' odd tail block is covered too.
        let (rows, cols) = (40, 96);
        let (w, dense) = random_q41(rows, cols, 7);
        let w80 = Q80::from_f32(rows, cols, &dense).expect("whole blocks");
        let dense80: Vec<f32> = (0..rows)
            .flat_map(|r| {
                let mut row = vec![0f32; cols];
                w80.row_into(r, &mut row);
                row
            })
            .collect();
        let wq41 = QMatrix::Q41(w);
        let wq80 = QMatrix::Q80(w80);
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
