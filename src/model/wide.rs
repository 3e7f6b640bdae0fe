//! The element-wise loops that take a visible share of a training step (GELU and its
//! backward, softmax), compiled twice: for the x86-64 baseline the release build
//! targets (4 floats a vector) and for AVX-512 (16), picked at run time. Both copies
//! run the same operations in the same order (no fused multiply-adds are formed), so
//! they give the same numbers; only the vector width differs.
#![allow(unsafe_code)]

use super::ops::{FRAC_1_SQRT_2, FRAC_1_SQRT_2PI, erf, exp};

/// Whether this CPU runs the AVX-512 copies.
fn wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *FOUND.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `pub fn $name(args)`, running `$body` in its AVX-512 copy where the CPU
/// has it, and `pub fn $base(args)`, the baseline copy (inlined into `$name`'s
/// fallback and into callers compiled for the baseline).
macro_rules! twice {
    ($(#[$doc:meta])* fn $name:ident / $base:ident($($arg:ident: $ty:ty),*) $body:block) => {
        /// The baseline copy of the function of the same name without `_baseline`.
        #[inline(always)]
        pub fn $base($($arg: $ty),*) $body

        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
                unsafe fn avx512($($arg: $ty),*) {
                    $base($($arg),*)
                }
                if wide() {
                    // SAFETY: `wide` found every feature `avx512` is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
            }
            $base($($arg),*)
        }
    };
}

/// Lanes of the reductions: enough for one AVX-512 vector, so the partial maxima
/// and sums vectorise (a float sum in one running total cannot be reordered, so
/// it would not).
const LANES: usize = 16;

twice! {
    /// `y = gelu(x)` (the erf form BERT uses).
    fn gelu / gelu_baseline(y: &mut [f32], x: &[f32]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + erf(v * FRAC_1_SQRT_2));
        }
    }
}

twice! {
    /// `dy *= gelu'(x)`.
    fn gelu_bwd / gelu_bwd_baseline(dy: &mut [f32], x: &[f32]) {
        for (o, &v) in dy.iter_mut().zip(x) {
            let cdf = 0.5 * (1.0 + erf(v * FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * v * v);
            *o *= cdf + v * pdf;
        }
    }
}

twice! {
    /// `row = softmax(row + bias)`, `bias` as long as `row`: the padding's bias added
    /// to a row of attention scores, made probabilities (the row's maximum taken
    /// out first, so `exp` cannot overflow).
    fn softmax_biased / softmax_biased_baseline(row: &mut [f32], bias: &[f32]) {
        assert_eq!(row.len(), bias.len(), "a bias per score");
        for (x, b) in row.iter_mut().zip(bias) {
            *x += b;
        }
        let mut maxima = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for (m, &x) in maxima.iter_mut().zip(c) {
                *m = m.max(x);
            }
        }
        let max = chunks
            .remainder()
            .iter()
            .chain(&maxima)
            .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        for x in row.iter_mut() {
            *x = exp(*x - max);
        }
        let mut sums = [0f32; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for (s, &x) in sums.iter_mut().zip(c) {
                *s += x;
            }
        }
        let sum = sums.iter().chain(chunks.remainder()).sum::<f32>();
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919) % 2001) as f32 / 150.0 - 6.7)
            .collect()
    }

    /// Both copies give the same numbers, bit for bit, on lengths that leave a
    /// remainder past the vector width; the softmax sums to 1 and gives masked
    /// scores exactly 0.
    #[test]
    fn the_wide_copies_give_the_baseline_numbers() {
        for n in [1, 15, 16, 17, 100, 1537] {
            let x = values(n);
            let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
            gelu(&mut a, &x);
            gelu_baseline(&mut b, &x);
            assert_eq!(a, b, "gelu, {n}");
            let (mut a, mut b) = (x.clone(), x.clone());
            gelu_bwd(&mut a, &x);
            gelu_bwd_baseline(&mut b, &x);
            assert_eq!(a, b, "gelu backward, {n}");
            let bias: Vec<f32> = (0..n)
                .map(|i| if i % 5 == 4 { -1e4 } else { 0.0 })
                .collect();
            let (mut a, mut b) = (x.clone(), x.clone());
            softmax_biased(&mut a, &bias);
            softmax_biased_baseline(&mut b, &bias);
            assert_eq!(a, b, "softmax, {n}");
            let total: f32 = a.iter().sum();
            assert!((total - 1.0).abs() < 1e-5, "softmax sums to {total}");
            assert!(
                a.iter().skip(4).step_by(5).all(|&p| p == 0.0),
                "masked score"
            );
        }
        // The values themselves, against GELU's and its derivative's known ones.
        let x = [-1.0f32, 0.0, 1.0, 3.0];
        let mut y = [0f32; 4];
        gelu(&mut y, &x);
        for (got, want) in y.iter().zip([-0.158_655_3, 0.0, 0.841_344_7, 2.995_95]) {
            assert!((got - want).abs() < 1e-5, "gelu: {got} against {want}");
        }
        let mut d = [1f32; 4];
        gelu_bwd(&mut d, &x);
        for (got, want) in d.iter().zip([-0.083_315_5, 0.5, 1.083_315_5, 1.011_946]) {
            assert!((got - want).abs() < 1e-5, "gelu': {got} against {want}");
        }
        if !wide() {
            eprintln!("no AVX-512 here: both calls ran the baseline copy");
        }
    }
}
