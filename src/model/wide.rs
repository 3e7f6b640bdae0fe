//! The element-wise loops that take a visible share of a training step (GELU and its
//! backward, softmax, drawing dropout masks), compiled three times: for the x86-64 baseline the release
//! build targets (4 floats a vector), for AVX2 (8) and for AVX-512 (16), the widest
//! the CPU has picked at run time. Every copy runs the same operations in the same
//! order (no fused multiply-adds are formed), so they give the same numbers; only
//! the vector width differs.
#![allow(unsafe_code)]

use super::ops::{FRAC_1_SQRT_2, FRAC_1_SQRT_2PI, erf, exp};

/// The widest copy this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Width {
    Baseline,
    Avx2,
    Avx512,
}

/// The widest copy this CPU runs, found once.
pub fn width() -> Width {
    #[cfg(target_arch = "x86_64")]
    {
        static FOUND: std::sync::OnceLock<Width> = std::sync::OnceLock::new();
        *FOUND.get_or_init(|| {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
            {
                Width::Avx512
            } else if is_x86_feature_detected!("avx2") {
                Width::Avx2
            } else {
                Width::Baseline
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Width::Baseline
    }
}

/// Defines `pub fn $name(args)`, running `$body` in the widest copy the CPU has;
/// `pub fn $base(args)`, the baseline copy (inlined into the others and into callers
/// compiled for the baseline); and `pub fn $avx2(args) -> bool`, the AVX2 copy where
/// the CPU has AVX2 (it returns whether it ran), so tests can hold every copy the
/// CPU runs to the baseline's numbers.
macro_rules! copies {
    ($(#[$doc:meta])* fn $name:ident / $base:ident / $avx2:ident($($arg:ident: $ty:ty),*) $body:block) => {
        /// The baseline copy of the function of the same name without `_baseline`.
        #[inline(always)]
        pub fn $base($($arg: $ty),*) $body

        /// The AVX2 copy of the function of the same name without `_avx2`, run where
        /// the CPU has AVX2; returns whether it ran.
        pub fn $avx2($($arg: $ty),*) -> bool {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) {
                    $base($($arg),*)
                }
                if width() >= Width::Avx2 {
                    // SAFETY: `width` found AVX2 (every CPU with the AVX-512 set
                    // `width` asks for has it too).
                    unsafe { avx2($($arg),*) };
                    return true;
                }
            }
            let _ = ($($arg),*); // unused where the CPU is not x86-64
            false
        }

        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512dq,avx512bw,avx512vl")]
                unsafe fn avx512($($arg: $ty),*) {
                    $base($($arg),*)
                }
                if width() == Width::Avx512 {
                    // SAFETY: `width` found every feature `avx512` is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
            }
            if !$avx2($($arg),*) {
                $base($($arg),*)
            }
        }
    };
}

/// Lanes of the reductions: enough for one AVX-512 vector, so the partial maxima
/// and sums vectorise (a float sum in one running total cannot be reordered, so
/// it would not).
const LANES: usize = 16;

copies! {
    /// `y = gelu(x)` (the erf form BERT uses).
    fn gelu / gelu_baseline / gelu_avx2(y: &mut [f32], x: &[f32]) {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = 0.5 * v * (1.0 + erf(v * FRAC_1_SQRT_2));
        }
    }
}

copies! {
    /// `dy *= gelu'(x)`.
    fn gelu_bwd / gelu_bwd_baseline / gelu_bwd_avx2(dy: &mut [f32], x: &[f32]) {
        for (o, &v) in dy.iter_mut().zip(x) {
            let cdf = 0.5 * (1.0 + erf(v * FRAC_1_SQRT_2));
            let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * v * v);
            *o *= cdf + v * pdf;
        }
    }
}

copies! {
    /// `row = softmax(row + bias)`, `bias` as long as `row`: the padding's bias added
    /// to a row of attention scores, made probabilities (the row's maximum taken
    /// out first, so `exp` cannot overflow).
    fn softmax_biased / softmax_biased_baseline / softmax_biased_avx2(row: &mut [f32], bias: &[f32]) {
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

copies! {
    /// Dropout mask bytes two a hash (`bert::dropout_mask`'s pairs): hash `first + j`
    /// gives `out[2j]` from its high 24 bits and `out[2j + 1]` from the 24 below them,
    /// each 1 (kept) where they reach `threshold`. `out` is of even length. Integer
    /// arithmetic only: 64-bit multiplies vectorise with AVX-512 (DQ) and are pieced
    /// from 32-bit ones with AVX2 (0.82 ns an element in the baseline copy, 0.40 with
    /// AVX2, 0.20 with AVX-512, on an AMD EPYC Zen 4).
    fn dropout_pairs / dropout_pairs_baseline / dropout_pairs_avx2(key: u64, first: u64, threshold: u64, out: &mut [u8]) {
        for (j, pair) in out.chunks_exact_mut(2).enumerate() {
            let h = super::bert::splitmix(key ^ (first + j as u64));
            pair[0] = u8::from(h >> 40 >= threshold);
            pair[1] = u8::from((h >> 16) & 0xFF_FFFF >= threshold);
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

    /// Every copy this CPU runs (the widest through the plain name, AVX2 through
    /// its own) gives the baseline's numbers, bit for bit, on lengths that leave a
    /// remainder past the vector width; the softmax sums to 1 and gives masked
    /// scores exactly 0.
    #[test]
    fn the_wide_copies_give_the_baseline_numbers() {
        let mut avx2_ran = false;
        for n in [1, 7, 8, 9, 15, 16, 17, 100, 1537] {
            let x = values(n);
            let (mut a, mut b, mut c) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
            gelu(&mut a, &x);
            gelu_baseline(&mut b, &x);
            assert_eq!(a, b, "gelu, {n}");
            if gelu_avx2(&mut c, &x) {
                avx2_ran = true;
                assert_eq!(c, b, "gelu, AVX2, {n}");
            }
            let (mut a, mut b, mut c) = (x.clone(), x.clone(), x.clone());
            gelu_bwd(&mut a, &x);
            gelu_bwd_baseline(&mut b, &x);
            assert_eq!(a, b, "gelu backward, {n}");
            if gelu_bwd_avx2(&mut c, &x) {
                assert_eq!(c, b, "gelu backward, AVX2, {n}");
            }
            let bias: Vec<f32> = (0..n)
                .map(|i| if i % 5 == 4 { -1e4 } else { 0.0 })
                .collect();
            let (mut a, mut b, mut c) = (x.clone(), x.clone(), x.clone());
            softmax_biased(&mut a, &bias);
            softmax_biased_baseline(&mut b, &bias);
            assert_eq!(a, b, "softmax, {n}");
            if softmax_biased_avx2(&mut c, &bias) {
                assert_eq!(c, b, "softmax, AVX2, {n}");
            }
            let total: f32 = a.iter().sum();
            assert!((total - 1.0).abs() < 1e-5, "softmax sums to {total}");
            assert!(
                a.iter().skip(4).step_by(5).all(|&p| p == 0.0),
                "masked score"
            );
        }
        // Dropout masks, from odd and even hashes, against the baseline's.
        for (first, n) in [(0u64, 2usize), (1, 6), (7, 32), (12_345, 4098)] {
            let threshold = 1_677_722; // a rate of 0.1 over 24 bits
            let (mut a, mut b, mut c) = (vec![9u8; n], vec![9u8; n], vec![9u8; n]);
            dropout_pairs(0xDEAD_BEEF, first, threshold, &mut a);
            dropout_pairs_baseline(0xDEAD_BEEF, first, threshold, &mut b);
            assert_eq!(a, b, "dropout pairs from {first}, {n}");
            assert!(b.iter().all(|&m| m <= 1), "mask bytes are 0 or 1");
            if dropout_pairs_avx2(0xDEAD_BEEF, first, threshold, &mut c) {
                assert_eq!(c, b, "dropout pairs, AVX2, from {first}, {n}");
            }
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
        // The AVX2 copies ran, and were held to the baseline above, wherever the CPU
        // has AVX2: they cannot have been skipped without notice.
        assert_eq!(avx2_ran, width() >= Width::Avx2, "{:?}", width());
        eprintln!("widest copy here: {:?}", width());
    }
}
