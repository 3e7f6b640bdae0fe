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
        let kp = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u32; panels * kp * NR];
        data.par_chunks_mut(kp * NR)
            .enumerate()
            .for_each(|(panel, out)| {
                for c in 0..NR {
                    let col = panel * NR + c;
                    if col >= n {
                        break;
                    }
                    let row = &w[col * k..][..k];
                    for p in 0..kp {
                        let lo = bf16_bits(row[2 * p]);
                        let hi = row.get(2 * p + 1).map_or(0, |&x| bf16_bits(x));
                        out[p * NR + c] = u32::from(lo) | (u32::from(hi) << 16);
                    }
                }
            });
        Packed { n, k, kp, data }
    }
}

impl Bf16 {
    /// `x · wᵀ + b` for `x` of `rows × k`, into `y` of `rows × n`.
    pub fn linear(self, x: &[f32], rows: usize, w: &Packed, b: &[f32], y: &mut [f32]) {
        let (n, k, kp) = (w.n, w.k, w.kp);
        assert_eq!(x.len(), rows * k, "activations of {rows} × {k}");
        assert_eq!(y.len(), rows * n, "outputs of {rows} × {n}");
        assert_eq!(b.len(), n, "a bias per output");
        y.par_chunks_mut(MC * n)
            .zip(x.par_chunks(MC * k))
            .for_each(|(y, x)| {
                let m = x.len() / k;
                let mut xb = vec![0u32; m * kp];
                for (src, dst) in x.chunks_exact(k).zip(xb.chunks_exact_mut(kp)) {
                    // SAFETY: `Bf16` exists only where the instructions do.
                    unsafe { to_pairs(src, dst) };
                }
                for (panel, wp) in w.data.chunks_exact(kp * NR).enumerate() {
                    let c0 = panel * NR;
                    let cols = NR.min(n - c0);
                    let mut r0 = 0;
                    while r0 < m {
                        let rs = MR.min(m - r0);
                        let sums = &mut [[0f32; NR]; MR];
                        // SAFETY: as above; the rows `r0..r0 + rs` of `xb` and the
                        // panel `wp` each hold `kp` pairs, which the kernel reads.
                        unsafe { kernel(&xb[r0 * kp..(r0 + rs) * kp], kp, rs, wp, sums) };
                        for (i, s) in sums.iter().take(rs).enumerate() {
                            let out = &mut y[(r0 + i) * n + c0..][..cols];
                            for ((o, &v), &bias) in out.iter_mut().zip(s).zip(&b[c0..]) {
                                *o = v + bias;
                            }
                        }
                        r0 += rs;
                    }
                }
            });
    }
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

/// `sums[r][c] = Σ_p xb[r][p] · panel[p][c]` (pairs of bf16 multiplied and added in
/// f32) for the `rows` rows of `xb`, each `kp` pairs long.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn kernel(xb: &[u32], kp: usize, rows: usize, panel: &[u32], sums: &mut [[f32; NR]; MR]) {
    assert!(rows <= MR && xb.len() == rows * kp && panel.len() == kp * NR);
    // One copy of the loop per row count, so the sums stay in registers.
    macro_rules! rows {
        ($($r:literal)*) => {
            match rows {
                $($r => unsafe { kernel_rows::<$r>(xb, kp, panel, sums) },)*
                _ => unreachable!(),
            }
        };
    }
    rows!(1 2 3 4 5 6 7 8 9 10 11 12)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn kernel_rows<const R: usize>(
    xb: &[u32],
    kp: usize,
    panel: &[u32],
    sums: &mut [[f32; NR]; MR],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    let (x, w) = (xb.as_ptr(), panel.as_ptr());
    for p in 0..kp {
        // SAFETY: `p < kp`; the panel holds `kp * NR` lanes and each of the `R` rows
        // of `xb` holds `kp` (checked by `kernel`).
        unsafe {
            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(p * NR).cast()));
            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(p * NR + 16).cast()));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*x.add(r * kp + p) as i32));
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
unsafe fn kernel(_: &[u32], _: usize, _: usize, _: &[u32], _: &mut [[f32; NR]; MR]) {
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
}
