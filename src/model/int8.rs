//! Scoring's matrix products in 8-bit integers, for CPUs that have AVX2 but no
//! AVX512-BF16 (`bf16.rs` serves those that have it). `vpmaddubsw` multiplies 32
//! pairs of bytes an instruction, against an f32 FMA's 8 pairs of floats: on the
//! model's shapes this kernel runs 290–320 billion operations a second (a multiply
//! and an add counted as two) on two cores of an AMD EPYC of the Zen 3 generation,
//! where the f32 kernels run 114–128.
//!
//! Only scoring that orders pairs uses them (`RewardModel::rewards_fast`: the
//! background scorer, `duel review` and `duel eval --fast`); `duel score`, `duel
//! eval` and training stay in f32. On models trained one to three epochs the margins move by 5–8% of their
//! root mean square and 95–98% of pairs keep their order (`duel eval --fast`
//! reports both for a model and a file).
//!
//! - Weights (`n × k`, PyTorch's `out × in`) are rounded per output to 8 bits,
//!   `w ≈ sw · q` with `|q| ≤ 127`.
//! - Activations are rounded per row to 7 bits above the row's least value,
//!   `x ≈ lo + s · a` with `0 ≤ a ≤ 127`, so that `vpmaddubsw`'s sums of two
//!   products of an activation and a weight stay within an `i16`
//!   (2 · 127 · 127 = 32,258 < 32,767) and never saturate; then
//!   `Σ x·w ≈ sw · (s · Σ a·q + lo · Σ q)`, the integer sum exact and `Σ q` kept
//!   per output. (Seven bits for the weights and eight for the activations would
//!   also fit; on a trained model (PandaLM) that moved rewards about twice as far.)
//!
//! The weights are packed once per pass into panels of 16 outputs: for each group of
//! four inputs, 16 lanes of four bytes, so that one 256-bit load feeds 8 outputs. The
//! kernel keeps 4 rows × 16 outputs of `i32` sums in 8 registers and broadcasts four
//! bytes of an activation row per row and group.
//!
//! `Int8::detect` is the only way to get the kernels, and it gives them only on a CPU
//! that has the instructions; `engine::fast_products` says whether scoring uses them.
#![allow(unsafe_code)]

use rayon::prelude::*;

/// Rows of sums the kernel keeps in registers.
const MR: usize = 4;
/// Outputs of a panel (two registers of 8 `i32`).
const NR: usize = 16;
/// Rows of activations one task rounds and multiplies.
const MC: usize = 16 * MR;
/// The largest weight after rounding (8 bits, signed): see the module's comment.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const Q_MAX: f32 = 127.0;
/// The largest activation after rounding (7 bits, unsigned).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const A_MAX: f32 = 127.0;

/// Proof that this CPU has AVX2 and FMA.
#[derive(Debug, Clone, Copy)]
pub struct Int8(());

impl Int8 {
    /// The kernels, if this CPU has AVX2 and FMA and `DUEL_F32_SCORING` is not set
    /// (scoring in f32 everywhere). Where the CPU also has AVX512-BF16, scoring uses
    /// `bf16.rs` instead (`engine::fast_products`).
    pub fn detect() -> Option<Int8> {
        static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let found = *FOUND.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                std::env::var_os("DUEL_F32_SCORING").is_none()
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                false
            }
        });
        found.then_some(Int8(()))
    }
}

/// Weights rounded to 8 bits per output and packed in panels for the kernel.
pub struct Packed {
    /// Outputs.
    n: usize,
    /// Inputs.
    k: usize,
    /// Groups of four inputs (the last padded with zeros).
    groups: usize,
    /// Panel after panel of `groups × NR × 4` bytes; the last panel's missing
    /// outputs are zeros.
    data: Vec<i8>,
    /// Each output's scale `sw`, `NR` a panel (zeros past `n`).
    scale: Vec<f32>,
    /// Each output's `Σ q`, `NR` a panel.
    sums: Vec<f32>,
}

impl Packed {
    /// Rounds and packs `w`, `n` outputs × `k` inputs, row-major.
    pub fn new(_: Int8, w: &[f32], n: usize, k: usize) -> Packed {
        assert_eq!(w.len(), n * k, "weights of {n} × {k}");
        let groups = k.div_ceil(4);
        let panels = n.div_ceil(NR);
        let mut data = vec![0i8; panels * groups * NR * 4];
        let mut scale = vec![0f32; panels * NR];
        let mut sums = vec![0f32; panels * NR];
        // Each panel's rows rounded one at a time, then laid out four inputs of an
        // output after four of the previous one.
        data.par_chunks_mut((groups * NR * 4).max(1))
            .zip(scale.par_chunks_mut(NR).zip(sums.par_chunks_mut(NR)))
            .enumerate()
            .for_each(|(panel, (data, (scale, sums)))| {
                let mut q = vec![0i8; groups * 4];
                let rows = w.chunks(k.max(1)).skip(panel * NR).take(NR);
                for (c, (row, (scale, sum))) in rows.zip(scale.iter_mut().zip(sums)).enumerate() {
                    // SAFETY: `Int8` exists only where AVX2 and FMA do.
                    (*scale, *sum) = unsafe { round_weights(row, &mut q[..k]) };
                    for (g, four) in q.chunks_exact(4).enumerate() {
                        data[g * NR * 4 + c * 4..][..4].copy_from_slice(four);
                    }
                }
            });
        Packed {
            n,
            k,
            groups,
            data,
            scale,
            sums,
        }
    }
}

/// Rounds a row to 7 bits above its least value: returns `(lo, s)` with
/// `x ≈ lo + s · a`, each `a` (0 to 127) the nearest (ties to even); `out` (at least
/// `x.len()` long) gets `a`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn round_row(x: &[f32], out: &mut [u8]) -> (f32, f32) {
    use std::arch::x86_64::*;
    assert!(out.len() >= x.len(), "a byte per input");
    if x.is_empty() {
        return (0.0, 0.0);
    }
    let n = x.len();
    let p = x.as_ptr();
    // SAFETY: every load below reads 8 floats from `i` with `i + 8 <= n`, and every
    // store 32 bytes to `out` from `i` with `i + 32 <= n <= out.len()`.
    unsafe {
        let (mut lo8, mut hi8) = (
            _mm256_set1_ps(f32::INFINITY),
            _mm256_set1_ps(f32::NEG_INFINITY),
        );
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_loadu_ps(p.add(i));
            lo8 = _mm256_min_ps(lo8, v);
            hi8 = _mm256_max_ps(hi8, v);
            i += 8;
        }
        let (mut l, mut h) = ([0f32; 8], [0f32; 8]);
        _mm256_storeu_ps(l.as_mut_ptr(), lo8);
        _mm256_storeu_ps(h.as_mut_ptr(), hi8);
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in l.iter().chain(&x[i..]) {
            lo = lo.min(v);
        }
        for &v in h.iter().chain(&x[i..]) {
            hi = hi.max(v);
        }
        let s = (hi - lo) / A_MAX;
        let inv = if hi > lo { A_MAX / (hi - lo) } else { 0.0 };
        let (lov, invv) = (_mm256_set1_ps(lo), _mm256_set1_ps(inv));
        let q = |at: usize| {
            let v = _mm256_loadu_ps(p.add(at));
            _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(v, lov), invv))
        };
        // `packs` and `packus` work within 128-bit halves: this puts the eight
        // groups of four back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut i = 0;
        while i + 32 <= n {
            let ab = _mm256_packs_epi32(q(i), q(i + 8));
            let cd = _mm256_packs_epi32(q(i + 16), q(i + 24));
            let bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), order);
            _mm256_storeu_si256(out.as_mut_ptr().add(i).cast(), bytes);
            i += 32;
        }
        for (a, &v) in out[i..n].iter_mut().zip(&x[i..]) {
            *a = ((v - lo) * inv).round_ties_even().clamp(0.0, A_MAX) as u8;
        }
        (lo, s)
    }
}

/// Each row of `w` (`k` long) rounded to `|q| ≤ 127` over its largest magnitude, into
/// `q`; returns the row's scale and `Σ q`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn round_weights(w: &[f32], q: &mut [i8]) -> (f32, f32) {
    let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let inv = if max > 0.0 { Q_MAX / max } else { 0.0 };
    let mut total = 0i32;
    for (q, &v) in q.iter_mut().zip(w) {
        let r = (v * inv).round_ties_even().clamp(-Q_MAX, Q_MAX) as i8;
        *q = r;
        total += i32::from(r);
    }
    (max / Q_MAX, total as f32)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn round_row(_: &[f32], _: &mut [u8]) -> (f32, f32) {
    unreachable!("Int8 is never detected off x86-64")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn round_weights(_: &[f32], _: &mut [i8]) -> (f32, f32) {
    unreachable!("Int8 is never detected off x86-64")
}

impl Int8 {
    /// `y = x · wᵀ + b` for `x` of `rows × k`, into `y` of `rows × n`.
    pub fn linear(self, x: &[f32], rows: usize, w: &Packed, b: &[f32], y: &mut [f32]) {
        let (n, k, groups) = (w.n, w.k, w.groups);
        assert_eq!(x.len(), rows * k, "inputs of {rows} × {k}");
        assert_eq!(y.len(), rows * n, "outputs of {rows} × {n}");
        assert_eq!(b.len(), n, "a bias per output");
        if rows == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for row in y.chunks_exact_mut(n) {
                row.copy_from_slice(b);
            }
            return;
        }
        let kq = groups * 4;
        // The bias, `NR` a panel.
        let mut bias = vec![0f32; w.scale.len()];
        bias[..n].copy_from_slice(b);
        y.par_chunks_mut(MC * n)
            .zip(x.par_chunks(MC * k))
            .for_each(|(y, x)| {
                let mb = y.len() / n;
                let mut a = vec![0u8; mb * kq];
                let mut rounding = Vec::with_capacity(mb);
                for r in 0..mb {
                    let dst = &mut a[r * kq..][..kq];
                    // SAFETY: `Int8` exists only where AVX2 and FMA do.
                    rounding.push(unsafe { round_row(&x[r * k..][..k], dst) });
                }
                for (panel, wp) in w.data.chunks_exact(groups * NR * 4).enumerate() {
                    let c0 = panel * NR;
                    let cols = NR.min(n - c0);
                    let out = Outputs {
                        scale: &w.scale[c0..][..NR],
                        sums: &w.sums[c0..][..NR],
                        bias: &bias[c0..][..NR],
                    };
                    let mut i0 = 0;
                    while i0 < mb {
                        let rs = MR.min(mb - i0);
                        let mut rows_out = [[0f32; NR]; MR];
                        // SAFETY: `Int8` exists only where AVX2 and FMA do; `kernel` checks
                        // that the rows and the panel hold `groups` groups each.
                        unsafe {
                            kernel(
                                &a[i0 * kq..],
                                kq,
                                &rounding[i0..][..rs],
                                wp,
                                groups,
                                &out,
                                &mut rows_out,
                            )
                        };
                        for (i, row) in rows_out.iter().take(rs).enumerate() {
                            y[(i0 + i) * n + c0..][..cols].copy_from_slice(&row[..cols]);
                        }
                        i0 += rs;
                    }
                }
            });
    }
}

/// What turns a panel's integer sums into outputs: `y = sw · (s · Σ a·q + lo · Σ q) + b`.
struct Outputs<'a> {
    scale: &'a [f32],
    sums: &'a [f32],
    bias: &'a [f32],
}

/// `out[r][c] = sw[c] · (s[r] · Σ_i a[r][i] · q[i][c] + lo[r] · Σ q[c]) + b[c]` for
/// the rows of `a` (each `kq` bytes, `groups` groups of four; `rounding` holds each
/// row's `(lo, s)`) and a panel of `groups × NR × 4` weights.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel(
    a: &[u8],
    kq: usize,
    rounding: &[(f32, f32)],
    panel: &[i8],
    groups: usize,
    out: &Outputs<'_>,
    rows_out: &mut [[f32; NR]; MR],
) {
    let rows = rounding.len();
    assert!((1..=MR).contains(&rows) && panel.len() == groups * NR * 4);
    assert!(kq >= groups * 4 && a.len() >= (rows - 1) * kq + groups * 4);
    assert!(out.scale.len() == NR && out.sums.len() == NR && out.bias.len() == NR);
    // One copy of the loop per row count, so the sums stay in registers.
    // SAFETY: the bounds are checked above.
    unsafe {
        match rows {
            1 => kernel_rows::<1>(a, kq, rounding, panel, groups, out, rows_out),
            2 => kernel_rows::<2>(a, kq, rounding, panel, groups, out, rows_out),
            3 => kernel_rows::<3>(a, kq, rounding, panel, groups, out, rows_out),
            4 => kernel_rows::<4>(a, kq, rounding, panel, groups, out, rows_out),
            _ => unreachable!(),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn kernel_rows<const R: usize>(
    a: &[u8],
    kq: usize,
    rounding: &[(f32, f32)],
    panel: &[i8],
    groups: usize,
    out: &Outputs<'_>,
    rows_out: &mut [[f32; NR]; MR],
) {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    let (ap, w) = (a.as_ptr(), panel.as_ptr());
    for g in 0..groups {
        // SAFETY: `g < groups`; the panel holds `groups × 64` bytes and each of the
        // `R` rows `groups × 4` from `r × kq` (checked by `kernel`).
        unsafe {
            let w0 = _mm256_loadu_si256(w.add(g * 64).cast());
            let w1 = _mm256_loadu_si256(w.add(g * 64 + 32).cast());
            for (r, acc) in acc.iter_mut().enumerate() {
                let four = ap.add(r * kq + g * 4).cast::<i32>().read_unaligned();
                let x = _mm256_set1_epi32(four);
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(x, w0), ones);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(x, w1), ones);
                acc[0] = _mm256_add_epi32(acc[0], p0);
                acc[1] = _mm256_add_epi32(acc[1], p1);
            }
        }
    }
    // SAFETY: the panel's scales, sums and biases hold NR = 16 floats each, as does
    // each row of `rows_out` (checked by `kernel`).
    unsafe {
        let half = |v: &[f32], h: usize| _mm256_loadu_ps(v.as_ptr().add(8 * h));
        for ((acc, row), &(lo, s)) in acc.iter().zip(rows_out.iter_mut()).zip(rounding) {
            for (h, &acc) in acc.iter().enumerate() {
                let sums = _mm256_fmadd_ps(
                    _mm256_set1_ps(s),
                    _mm256_cvtepi32_ps(acc),
                    _mm256_mul_ps(_mm256_set1_ps(lo), half(out.sums, h)),
                );
                let y = _mm256_fmadd_ps(half(out.scale, h), sums, half(out.bias, h));
                _mm256_storeu_ps(row.as_mut_ptr().add(8 * h), y);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel(
    _: &[u8],
    _: usize,
    _: &[(f32, f32)],
    _: &[i8],
    _: usize,
    _: &Outputs<'_>,
    _: &mut [[f32; NR]; MR],
) {
    unreachable!("Int8 is never detected off x86-64")
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

    /// The rounded weights of output `c`, input `i`, read back from the panels.
    fn q_at(w: &Packed, c: usize, i: usize) -> i32 {
        let panel = c / NR;
        i32::from(w.data[(panel * w.groups + i / 4) * NR * 4 + (c % NR) * 4 + i % 4])
    }

    #[test]
    fn products_are_exact_on_the_rounded_numbers() {
        let Some(k8) = Int8::detect() else {
            eprintln!("no AVX2 and FMA (or DUEL_F32_SCORING set): nothing to test");
            return;
        };
        // Sizes around the kernel's rows, the panels' outputs and the groups of four.
        for (rows, n, k) in [
            (1, 1, 1),
            (5, 17, 7),
            (67, 33, 384),
            (130, 16, 9),
            (3, 40, 1536),
        ] {
            let x = values(rows * k, 1);
            let mut w = values(n * k, 2);
            // An output of zeros and one of a single large weight.
            w[..k].fill(0.0);
            if n > 1 {
                w[k..2 * k].fill(0.0);
                w[k] = 40.0;
            }
            let b = values(n, 3);
            let packed = Packed::new(k8, &w, n, k);
            let mut y = vec![0f32; rows * n];
            k8.linear(&x, rows, &packed, &b, &mut y);
            let mut a = vec![0u8; k];
            for r in 0..rows {
                // SAFETY: `k8` proves AVX2 and FMA.
                let (lo, s) = unsafe { round_row(&x[r * k..][..k], &mut a) };
                for c in 0..n {
                    // The sum in integers, as the kernel forms it, then the same
                    // scaling: the kernel's integer sums must be exact.
                    let acc: i64 = (0..k)
                        .map(|i| i64::from(a[i]) * i64::from(q_at(&packed, c, i)))
                        .sum();
                    let want = packed.scale[c] * (s * acc as f32 + lo * packed.sums[c]) + b[c];
                    let got = y[r * n + c];
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "{rows}×{n}×{k} [{r}][{c}]: {got} against {want}"
                    );
                    // And within the rounding's bound of the f32 product: each
                    // activation within s/2, each weight within sw/2.
                    let (xs, ws) = (&x[r * k..][..k], &w[c * k..][..k]);
                    let exact: f32 = xs.iter().zip(ws).map(|(a, b)| a * b).sum::<f32>() + b[c];
                    let sw = packed.scale[c];
                    let bound = xs.iter().map(|v| v.abs()).sum::<f32>() * sw / 2.0
                        + s / 2.0 * (ws.iter().map(|v| v.abs()).sum::<f32>() + k as f32 * sw / 2.0)
                        + 1e-4;
                    assert!(
                        (got - exact).abs() <= bound,
                        "{rows}×{n}×{k} [{r}][{c}]: {got} against f32's {exact} (bound {bound})"
                    );
                }
            }
        }
        // No inputs: the bias alone.
        let packed = Packed::new(k8, &[], 3, 0);
        let mut y = vec![9f32; 6];
        k8.linear(&[], 2, &packed, &[1.0, 2.0, 3.0], &mut y);
        assert_eq!(y, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]);
    }

    #[test]
    fn rounding_keeps_within_half_a_step_and_spans_seven_bits() {
        let Some(_) = Int8::detect() else {
            eprintln!("no AVX2 and FMA (or DUEL_F32_SCORING set): nothing to test");
            return;
        };
        // Lengths around the 8 and 32 the loops take at a time.
        for len in [1, 5, 8, 31, 32, 33, 70, 384] {
            let mut x = values(len, 5);
            x[len / 2] = -3.0;
            if len > 1 {
                x[len - 1] = 5.0;
            }
            let mut a = vec![0u8; len];
            // SAFETY: the CPU has AVX2 and FMA.
            let (lo, s) = unsafe { round_row(&x, &mut a) };
            assert_eq!(lo, -3.0);
            if len > 1 {
                assert_eq!((a[len / 2], a[len - 1]), (0, 127), "length {len}");
            }
            for (i, (&v, &q)) in x.iter().zip(&a).enumerate() {
                let back = lo + s * f32::from(q);
                assert!(
                    (back - v).abs() <= s / 2.0 + 1e-6,
                    "length {len} [{i}]: {v} came back {back}"
                );
            }
        }
        // A constant row is exact.
        let mut a = [0u8; 4];
        // SAFETY: as above.
        let (lo, s) = unsafe { round_row(&[2.5; 4], &mut a) };
        assert_eq!((lo, s, a), (2.5, 0.0, [0; 4]));
    }

    #[test]
    fn weights_stay_within_eight_bits() {
        let Some(k8) = Int8::detect() else {
            eprintln!("no AVX2 and FMA (or DUEL_F32_SCORING set): nothing to test");
            return;
        };
        let w = values(40 * 50, 7);
        let packed = Packed::new(k8, &w, 40, 50);
        assert!(packed.data.iter().all(|&q| (-127..=127).contains(&q)));
        for c in 0..40 {
            let row = &w[c * 50..][..50];
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let q: Vec<i32> = (0..50).map(|i| q_at(&packed, c, i)).collect();
            // The largest weight of each output takes the full eight bits.
            assert_eq!(q.iter().map(|v| v.abs()).max(), Some(127), "output {c}");
            assert_eq!(q.iter().sum::<i32>() as f32, packed.sums[c]);
            for (&v, &q) in row.iter().zip(&q) {
                assert!((packed.scale[c] * q as f32 - v).abs() <= max / 254.0 + 1e-6);
            }
        }
    }
}
