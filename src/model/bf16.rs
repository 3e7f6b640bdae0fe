//! Scoring's matrix products in bfloat16, where the CPU multiplies it natively
//! (AVX512-BF16: `vdpbf16ps` multiplies pairs of bf16 and adds them into f32, twice
//! the products of an f32 FMA per instruction).
//!
//! Only scoring that orders pairs uses them (`RewardModel::rewards_fast`: the
//! background scorer and `duel review`); `duel score`, `eval` and training stay in
//! f32. Weights and activations are rounded to bf16 (8 bits of mantissa), products
//! are summed in f32. A reward moves by a few thousandths against the f32 forward
//! (tested on the real model).
//!
//! The weights `w` (`n × k`, PyTorch's `out × in`) are packed once per pass into
//! panels of 32 output columns: for each pair of inputs `(2p, 2p + 1)`, 32 lanes of
//! two bf16, so that one 512-bit load feeds 16 columns. The kernel keeps 12 rows ×
//! 32 columns of sums in 24 registers and broadcasts one pair of an activation row
//! per row and step.
//!
//! `Bf16::detect` is the only way to get the kernels, and it gives them only on a
//! CPU that has the instructions.
#![allow(unsafe_code)]

use rayon::prelude::*;
use std::borrow::Cow;

/// Rows of sums the kernel keeps in registers.
const MR: usize = 12;
/// Columns of a panel (two registers of 16 f32).
const NR: usize = 32;
/// Rows of activations one task converts and multiplies.
const MC: usize = 4 * MR;

/// Proof that this CPU has AVX-512 F, BW and BF16.
#[derive(Debug, Clone, Copy)]
pub struct Bf16(());

impl Bf16 {
    /// The kernels, if this CPU has their instructions and `DUEL_F32_SCORING` is not
    /// set (scoring in f32 everywhere, as training does).
    pub fn detect() -> Option<Bf16> {
        static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let found = *FOUND.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                std::env::var_os("DUEL_F32_SCORING").is_none()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        });
        found.then_some(Bf16(()))
    }
}

/// `x` rounded to the nearest bf16, ties to even (as `vcvtneps2bf16` rounds).
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 a bf16 stands for.
pub fn f32_of_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// A weight matrix packed for the kernel.
pub struct Packed {
    n: usize,
    k: usize,
    /// Pairs of inputs (`k` rounded up to even, halved).
    kp: usize,
    /// `[panel][pair][column of NR]`: two bf16 (inputs `2p`, `2p + 1`) per lane.
    data: Vec<u32>,
}

impl Packed {
    /// Packs `w`, `n × k` row-major (an output's weights in a row).
    pub fn new(w: &[f32], n: usize, k: usize) -> Packed {
        assert_eq!(w.len(), n * k, "weights of {n} × {k}");
        Packed::build(n, k, |panel, out| {
            for c in 0..NR {
                let col = panel * NR + c;
                if col >= n {
                    break;
                }
                let row = &w[col * k..][..k];
                for (p, pair) in row.chunks(2).enumerate() {
                    let hi = pair.get(1).map_or(0, |&x| bf16_bits(x));
                    out[p * NR + c] = u32::from(bf16_bits(pair[0])) | (u32::from(hi) << 16);
                }
            }
        })
    }

    /// Packs `b`, `k × n` row-major, as the right operand of `a · b`: a weight
    /// matrix read untransposed (`dx = dy · w`) or the activations a weight's
    /// gradient sums over (`dw = dyᵀ · x`).
    pub fn from_rows(b: &[f32], k: usize, n: usize) -> Packed {
        assert_eq!(b.len(), k * n, "a matrix of {k} × {n}");
        Packed::build(n, k, |panel, out| {
            let c0 = panel * NR;
            let cols = NR.min(n - c0);
            for (p, lanes) in out.chunks_exact_mut(NR).enumerate() {
                let lo = &b[2 * p * n + c0..][..cols];
                match b.get((2 * p + 1) * n + c0..(2 * p + 1) * n + c0 + cols) {
                    Some(hi) => interleave(lo, hi, lanes),
                    None => {
                        for (l, &v) in lanes.iter_mut().zip(lo) {
                            *l = u32::from(bf16_bits(v));
                        }
                    }
                }
            }
        })
    }

    /// `n` columns of `k` inputs, each panel of NR columns (`kp` pairs × NR lanes,
    /// zeros past the last column or input) written by `fill(panel, lanes)`, the
    /// panels in parallel.
    fn build(n: usize, k: usize, fill: impl Fn(usize, &mut [u32]) + Sync) -> Packed {
        let kp = k.div_ceil(2);
        let mut data = vec![0u32; n.div_ceil(NR) * kp * NR];
        data.par_chunks_mut(kp * NR)
            .enumerate()
            .for_each(|(panel, out)| fill(panel, out));
        Packed { n, k, kp, data }
    }
}

/// Lanes of two bf16, `lo[c]` in the low half and `hi[c]` in the high one.
fn interleave(lo: &[f32], hi: &[f32], lanes: &mut [u32]) {
    let n = lanes.len().min(lo.len()).min(hi.len());
    let mut c = 0;
    if Bf16::detect().is_some() {
        while c + 16 <= n {
            // SAFETY: the instructions exist (`Bf16::detect`), and `c + 16 <= n`
            // elements of each slice are read or written.
            unsafe { interleave16(&lo[c..c + 16], &hi[c..c + 16], &mut lanes[c..c + 16]) };
            c += 16;
        }
    }
    for ((l, &a), &b) in lanes[c..n].iter_mut().zip(&lo[c..n]).zip(&hi[c..n]) {
        *l = u32::from(bf16_bits(a)) | (u32::from(bf16_bits(b)) << 16);
    }
}

/// `interleave` of 16 lanes in three instructions: both halves rounded, then
/// interleaved.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn interleave16(lo: &[f32], hi: &[f32], lanes: &mut [u32]) {
    use std::arch::x86_64::*;
    assert!(lo.len() == 16 && hi.len() == 16 && lanes.len() == 16);
    // Lane c takes the bf16 at 16-bit index c (from `lo`) and c + 16 (from `hi`).
    const ORDER: [i16; 32] = {
        let mut o = [0i16; 32];
        let mut c = 0;
        while c < 16 {
            o[2 * c] = c as i16;
            o[2 * c + 1] = c as i16 + 16;
            c += 1;
        }
        o
    };
    // SAFETY: each slice holds the 16 elements (64 bytes) loaded or stored.
    unsafe {
        let l = _mm512_loadu_ps(lo.as_ptr());
        let h = _mm512_loadu_ps(hi.as_ptr());
        let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(h, l));
        let order = _mm512_loadu_si512(ORDER.as_ptr().cast());
        _mm512_storeu_si512(
            lanes.as_mut_ptr().cast(),
            _mm512_permutexvar_epi16(order, both),
        );
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn interleave16(_: &[f32], _: &[f32], _: &mut [u32]) {
    unreachable!("Bf16 is never detected off x86-64")
}

/// The left operand of a product, `m × k`.
#[derive(Debug, Clone, Copy)]
pub enum Left<'a> {
    /// Its rows, row-major.
    Rows(&'a [f32]),
    /// Its transpose, `k × m` row-major (a weight's gradient `dyᵀ · x` reads `dy`
    /// this way).
    Transposed(&'a [f32]),
}

impl Bf16 {
    /// `x · wᵀ + b` for `x` of `rows × k`, into `y` of `rows × n`.
    pub fn linear(self, x: &[f32], rows: usize, w: &Packed, b: &[f32], y: &mut [f32]) {
        self.product(Left::Rows(x), rows, w, Some(b), y, false);
    }

    /// `y = a · b (+ bias)`, or `y += a · b` with `accumulate`, for `a` of `m × k`
    /// and `b` packed (`k × n`), into `y` of `m × n`.
    pub fn product(
        self,
        a: Left<'_>,
        m: usize,
        b: &Packed,
        bias: Option<&[f32]>,
        y: &mut [f32],
        accumulate: bool,
    ) {
        let (n, k, kp) = (b.n, b.k, b.kp);
        let a_len = match a {
            Left::Rows(a) | Left::Transposed(a) => a.len(),
        };
        assert_eq!(a_len, m * k, "a left operand of {m} × {k}");
        assert_eq!(y.len(), m * n, "outputs of {m} × {n}");
        assert!(bias.is_none_or(|b| b.len() == n), "a bias per output");
        assert!(
            !(accumulate && bias.is_some()),
            "a bias is added only to new sums"
        );
        // The left operand as pairs of bf16 along `k`: its rows converted a block at a
        // time, or, read transposed, packed as the right operand is (panels of NR of
        // its rows, each pair of a row NR lanes after the last).
        enum Source<'a> {
            Rows(&'a [f32]),
            Panels(Packed),
        }
        let source = match a {
            Left::Rows(a) => Source::Rows(a),
            Left::Transposed(a) => Source::Panels(Packed::from_rows(a, k, m)),
        };
        let block_rows = match source {
            Source::Rows(_) => MC,
            Source::Panels(_) => NR,
        };
        y.par_chunks_mut(block_rows * n)
            .enumerate()
            .for_each(|(block, y)| {
                let (r0, mb) = (block * block_rows, y.len() / n);
                // The block's pairs, and the distance from one row's pairs to the
                // next's and from one pair of a row to its next.
                let (xb, row_step, pair_step): (Cow<'_, [u32]>, usize, usize) = match &source {
                    Source::Panels(packed) => (
                        Cow::Borrowed(&packed.data[block * kp * NR..][..kp * NR]),
                        1,
                        NR,
                    ),
                    Source::Rows(a) => {
                        let mut xb = vec![0u32; mb * kp];
                        for (src, dst) in a[r0 * k..][..mb * k]
                            .chunks_exact(k)
                            .zip(xb.chunks_exact_mut(kp))
                        {
                            // SAFETY: `Bf16` exists only where the instructions do.
                            unsafe { to_pairs(src, dst) };
                        }
                        (Cow::Owned(xb), kp, 1)
                    }
                };
                for (panel, wp) in b.data.chunks_exact(kp * NR).enumerate() {
                    let c0 = panel * NR;
                    let cols = NR.min(n - c0);
                    let mut i0 = 0;
                    while i0 < mb {
                        let rs = MR.min(mb - i0);
                        let sums = &mut [[0f32; NR]; MR];
                        let rows = Strided {
                            pairs: &xb[i0 * row_step..],
                            row_step,
                            pair_step,
                            rows: rs,
                            kp,
                        };
                        // SAFETY: as above; `kernel` checks that the rows it reads
                        // and the panel `wp` hold `kp` pairs each.
                        unsafe { kernel(rows, wp, sums) };
                        for (i, s) in sums.iter().take(rs).enumerate() {
                            let out = &mut y[(i0 + i) * n + c0..][..cols];
                            if accumulate {
                                for (o, &v) in out.iter_mut().zip(s) {
                                    *o += v;
                                }
                            } else if let Some(bias) = bias {
                                for ((o, &v), &b) in out.iter_mut().zip(s).zip(&bias[c0..]) {
                                    *o = v + b;
                                }
                            } else {
                                out.copy_from_slice(&s[..cols]);
                            }
                        }
                        i0 += rs;
                    }
                }
            });
    }
}

/// Rows of a left operand's pairs for the kernel: row `r`'s pair `p` is at
/// `r * row_step + p * pair_step`.
#[derive(Clone, Copy)]
struct Strided<'a> {
    pairs: &'a [u32],
    row_step: usize,
    pair_step: usize,
    rows: usize,
    kp: usize,
}

/// A row of activations as pairs of bf16 (the last pair padded with 0 for odd `k`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn to_pairs(x: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    assert_eq!(out.len(), x.len().div_ceil(2), "a pair per two inputs");
    let mut i = 0;
    while i + 32 <= x.len() {
        // SAFETY: `i + 32 <= x.len()`, and `out` holds `x.len() / 2` pairs and more.
        unsafe {
            let lo = _mm512_loadu_ps(x.as_ptr().add(i));
            let hi = _mm512_loadu_ps(x.as_ptr().add(i + 16));
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(out.as_mut_ptr().add(i / 2).cast(), v);
        }
        i += 32;
    }
    while i < x.len() {
        let lo = bf16_bits(x[i]);
        let hi = x.get(i + 1).map_or(0, |&v| bf16_bits(v));
        out[i / 2] = u32::from(lo) | (u32::from(hi) << 16);
        i += 2;
    }
}

/// `sums[r][c] = Σ_p x[r][p] · panel[p][c]` (pairs of bf16 multiplied and added in
/// f32) for the rows of `x`, each `kp` pairs long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn kernel(x: Strided<'_>, panel: &[u32], sums: &mut [[f32; NR]; MR]) {
    assert!(x.rows >= 1 && x.rows <= MR && panel.len() == x.kp * NR);
    if x.kp > 0 {
        let last = (x.rows - 1) * x.row_step + (x.kp - 1) * x.pair_step;
        assert!(last < x.pairs.len(), "rows past their pairs");
    }
    // One copy of the loop per row count, so the sums stay in registers.
    macro_rules! rows {
        ($($r:literal)*) => {
            match x.rows {
                $($r => unsafe { kernel_rows::<$r>(x, panel, sums) },)*
                _ => unreachable!(),
            }
        };
    }
    rows!(1 2 3 4 5 6 7 8 9 10 11 12)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn kernel_rows<const R: usize>(x: Strided<'_>, panel: &[u32], sums: &mut [[f32; NR]; MR]) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let (xp, w) = (x.pairs.as_ptr(), panel.as_ptr());
    let mut rows = [0usize; R];
    for (r, at) in rows.iter_mut().enumerate() {
        *at = r * x.row_step;
    }
    for p in 0..x.kp {
        let at = p * x.pair_step;
        // SAFETY: `p < kp`; the panel holds `kp * NR` lanes, and the last pair of
        // the last row is within `x.pairs` (checked by `kernel`).
        unsafe {
            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(p * NR).cast()));
            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(p * NR + 16).cast()));
            for (a, &row) in acc.iter_mut().zip(&rows) {
                let xv: __m512bh = std::mem::transmute(_mm512_set1_epi32(*xp.add(row + at) as i32));
                a[0] = _mm512_dpbf16_ps(a[0], xv, w0);
                a[1] = _mm512_dpbf16_ps(a[1], xv, w1);
            }
        }
    }
    for (a, s) in acc.iter().zip(sums.iter_mut()) {
        // SAFETY: each row of sums holds NR = 32 floats.
        unsafe {
            _mm512_storeu_ps(s.as_mut_ptr(), a[0]);
            _mm512_storeu_ps(s.as_mut_ptr().add(16), a[1]);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn to_pairs(_: &[f32], _: &mut [u32]) {
    unreachable!("Bf16 is never detected off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(_: Strided<'_>, _: &[u32], _: &mut [[f32; NR]; MR]) {
    unreachable!("Bf16 is never detected off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| {
                let h = (i.wrapping_mul(2_654_435_761) ^ seed).wrapping_mul(40503);
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even one, 1.
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(f32_of_bf16(bf16_bits(-2.5)), -2.5);
        assert!(f32_of_bf16(bf16_bits(f32::NAN)).is_nan());
    }

    /// Every shape the kernel splits unevenly (rows past a multiple of 12, columns
    /// past a multiple of 32, an odd number of inputs) against the textbook loop on
    /// the same bf16-rounded numbers.
    #[test]
    fn products_match_the_textbook_loop_on_rounded_numbers() {
        let Some(bf) = Bf16::detect() else {
            eprintln!("this CPU has no AVX512-BF16: the f32 products score here");
            return;
        };
        for (rows, n, k) in [(1, 32, 64), (13, 40, 33), (50, 384, 384), (7, 17, 1536)] {
            let (x, w, b) = (values(rows * k, 1), values(n * k, 2), values(n, 3));
            let mut y = vec![f32::NAN; rows * n];
            bf.linear(&x, rows, &Packed::new(&w, n, k), &b, &mut y);
            let r = |v: f32| f32_of_bf16(bf16_bits(v));
            for i in 0..rows {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|t| f64::from(r(x[i * k + t])) * f64::from(r(w[j * k + t])))
                        .sum::<f64>()
                        + f64::from(b[j]);
                    let got = f64::from(y[i * n + j]);
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{rows}×{n}×{k} at ({i}, {j}): {got} vs {want}"
                    );
                }
            }
        }
    }
    /// The backward's products: `dy · w` added into what is there (the weights read
    /// untransposed) and `dyᵀ · x` (the left operand read transposed), on the shapes
    /// of the first test, against the textbook loop on rounded numbers.
    #[test]
    fn products_of_transposed_and_untransposed_operands_match_the_textbook_loop() {
        let Some(bf) = Bf16::detect() else {
            eprintln!("this CPU has no AVX512-BF16: training multiplies in f32 here");
            return;
        };
        let r = |v: f32| f64::from(f32_of_bf16(bf16_bits(v)));
        for (m, n, k) in [
            (1, 32, 64),
            (13, 40, 33),
            (50, 384, 384),
            (7, 17, 1536),
            (61, 5, 3),
        ] {
            let b = values(k * n, 4);
            let packed = Packed::from_rows(&b, k, n);
            for transposed in [false, true] {
                let a = values(m * k, 5);
                // `a` holds the left operand's rows, or its transpose.
                let at = |i: usize, t: usize| {
                    if transposed {
                        a[t * m + i]
                    } else {
                        a[i * k + t]
                    }
                };
                let left = if transposed {
                    Left::Transposed(&a)
                } else {
                    Left::Rows(&a)
                };
                let before = values(m * n, 6);
                let mut y = before.clone();
                bf.product(left, m, &packed, None, &mut y, !transposed);
                for i in 0..m {
                    for j in 0..n {
                        let mut want: f64 = (0..k).map(|t| r(at(i, t)) * r(b[t * n + j])).sum();
                        if !transposed {
                            want += f64::from(before[i * n + j]);
                        }
                        let got = f64::from(y[i * n + j]);
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "{m}×{n}×{k}, transposed {transposed}, at ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
