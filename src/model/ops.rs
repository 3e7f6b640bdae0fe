//! Fused CPU ops with their own backward: layer norm, softmax over the last
//! dimension, and the erf GELU.
//!
//! candle 0.11's `ops::layer_norm` and `ops::softmax_last_dim` have no backward, and
//! the composed alternatives build a dozen small tensors per call. Each op here is one
//! pass forward and one pass backward, parallel over rows.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, bail,
};
use rayon::prelude::*;

/// Rows smaller than this are not worth a task of their own.
const MIN_ROWS_PER_TASK: usize = 16;

pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout, name: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{name}: f32 only")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{name}: input must be contiguous"),
    }
}

/// The f32 elements of a contiguous storage, for writing in place.
pub(crate) fn slice_mut<'a>(
    s: &'a mut CpuStorage,
    l: &Layout,
    name: &str,
) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{name}: f32 only")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&mut v[a..b]),
        None => bail!("{name}: input must be contiguous"),
    }
}

fn last_dim(l: &Layout) -> Result<usize> {
    match l.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => bail!("empty last dimension"),
    }
}

// ---------------------------------------------------------------- layer norm

/// `y = (x - mean) / sqrt(var + eps) * gamma + beta` over the last dimension.
pub struct LayerNorm {
    pub eps: f32,
}

pub(crate) fn row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let d = x.len() as f32;
    let mean = x.iter().sum::<f32>() / d;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "duel-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "layer_norm x")?;
        let g = slice(s2, l2, "layer_norm gamma")?;
        let b = slice(s3, l3, "layer_norm beta")?;
        let d = last_dim(l1)?;
        if g.len() != d || b.len() != d {
            bail!(
                "layer_norm: gamma/beta size {} / {} for width {d}",
                g.len(),
                b.len()
            );
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d)
            .with_min_len(MIN_ROWS_PER_TASK)
            .zip(x.par_chunks(d))
            .for_each(|(o, xr)| {
                let (mean, rstd) = row_stats(xr, self.eps);
                for i in 0..d {
                    o[i] = (xr[i] - mean) * rstd * g[i] + b[i];
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = x.dim(candle_core::D::Minus1)?;
        let rows = x.elem_count() / d;
        let all = x.contiguous()?.apply_op3_no_bwd(
            &gamma.contiguous()?,
            &grad.contiguous()?,
            &LayerNormBwd { eps: self.eps },
        )?;
        let dx = all.narrow(0, 0, rows)?.reshape(x.shape())?;
        let dg = all.narrow(0, rows, 1)?.reshape(d)?;
        let db = all.narrow(0, rows + 1, 1)?.reshape(d)?;
        Ok((Some(dx), Some(dg), Some(db)))
    }
}

/// Gradients of layer norm in one pass: a `(rows + 2, d)` tensor holding dx, then
/// dgamma, then dbeta.
struct LayerNormBwd {
    eps: f32,
}

impl CustomOp3 for LayerNormBwd {
    fn name(&self) -> &'static str {
        "duel-layer-norm-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "layer_norm_bwd x")?;
        let g = slice(s2, l2, "layer_norm_bwd gamma")?;
        let dy = slice(s3, l3, "layer_norm_bwd grad")?;
        let d = last_dim(l1)?;
        let rows = x.len() / d;
        let mut out = vec![0f32; (rows + 2) * d];
        let (dx, params) = out.split_at_mut(rows * d);
        // dx per row, and per-row contributions to dgamma / dbeta summed per task.
        let partial = dx
            .par_chunks_mut(d)
            .with_min_len(MIN_ROWS_PER_TASK)
            .zip(x.par_chunks(d).zip(dy.par_chunks(d)))
            .fold(
                || vec![0f32; 2 * d],
                |mut acc, (dxr, (xr, dyr))| {
                    let (mean, rstd) = row_stats(xr, self.eps);
                    let (mut sum_gdy, mut sum_gdy_xhat) = (0f32, 0f32);
                    for i in 0..d {
                        let xhat = (xr[i] - mean) * rstd;
                        let gdy = g[i] * dyr[i];
                        sum_gdy += gdy;
                        sum_gdy_xhat += gdy * xhat;
                        acc[i] += dyr[i] * xhat;
                        acc[d + i] += dyr[i];
                    }
                    let inv_d = 1.0 / d as f32;
                    for i in 0..d {
                        let xhat = (xr[i] - mean) * rstd;
                        dxr[i] =
                            rstd * (g[i] * dyr[i] - inv_d * sum_gdy - xhat * inv_d * sum_gdy_xhat);
                    }
                    acc
                },
            )
            .reduce(
                || vec![0f32; 2 * d],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x += y;
                    }
                    a
                },
            );
        params.copy_from_slice(&partial);
        Ok((CpuStorage::F32(out), Shape::from((rows + 2, d))))
    }
}

pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?.apply_op3(gamma, beta, LayerNorm { eps })
}

// ---------------------------------------------------------------- softmax

/// Softmax over the last dimension.
pub struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "duel-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "softmax")?;
        let d = last_dim(l)?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d)
            .with_min_len(MIN_ROWS_PER_TASK)
            .zip(x.par_chunks(d))
            .for_each(|(o, xr)| {
                let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (oi, &xi) in o.iter_mut().zip(xr) {
                    *oi = exp(xi - max);
                    sum += *oi;
                }
                let inv = 1.0 / sum;
                o.iter_mut().for_each(|v| *v *= inv);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            res.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxBwd)?,
        ))
    }
}

/// `dx = y * (dy - sum(dy * y))` per row.
struct SoftmaxBwd;

impl CustomOp2 for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "duel-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = slice(s1, l1, "softmax_bwd y")?;
        let dy = slice(s2, l2, "softmax_bwd grad")?;
        let d = last_dim(l1)?;
        let mut out = vec![0f32; y.len()];
        out.par_chunks_mut(d)
            .with_min_len(MIN_ROWS_PER_TASK)
            .zip(y.par_chunks(d).zip(dy.par_chunks(d)))
            .for_each(|(o, (yr, dyr))| {
                let dot: f32 = yr.iter().zip(dyr).map(|(a, b)| a * b).sum();
                for i in 0..d {
                    o[i] = yr[i] * (dyr[i] - dot);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxLastDim)
}

// ---------------------------------------------------------------- gelu

/// The exact GELU of BERT: `x * Φ(x) = 0.5 x (1 + erf(x / √2))`.
pub struct Gelu;

pub(crate) const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / sqrt(2π)
pub(crate) const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `e^x` without a call into libm, so that loops over it vectorise: `2^n · e^r`
/// with `r = x − n·ln 2` in [−ln2/2, ln2/2] and a degree-6 Taylor polynomial
/// (relative error about 2e-7). Inputs below −80 give 0: the numbers under e^-80
/// (1.8e-35) become subnormal once a softmax divides them by a few hundred, and
/// products over subnormals (the attention on padding) run many times slower.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and taking away 1.5·2^23 rounds to the nearest integer (no libm call).
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let y = f32::from_bits(((n as i32 + 127) << 23) as u32) * p;
    if x >= -80.0 { y } else { 0.0 }
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error under 1e-6 in f32, far inside
/// the 1e-4 agreement with PyTorch we need): branch-free, so the loops vectorise,
/// unlike libm's `erff`, which was a tenth of a training step.
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    let a = x.abs();
    let t = 1.0 / (1.0 + P * a);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "duel-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "gelu")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .for_each(|(o, xs)| {
                for (oi, &v) in o.iter_mut().zip(xs) {
                    *oi = 0.5 * v * (1.0 + erf(v * FRAC_1_SQRT_2));
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            arg.contiguous()?
                .apply_op2_no_bwd(&grad.contiguous()?, &GeluBwd)?,
        ))
    }
}

struct GeluBwd;

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "duel-gelu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "gelu_bwd x")?;
        let dy = slice(s2, l2, "gelu_bwd grad")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(4096)
            .zip(x.par_chunks(4096).zip(dy.par_chunks(4096)))
            .for_each(|(o, (xs, ds))| {
                for i in 0..o.len() {
                    let v = xs[i];
                    let cdf = 0.5 * (1.0 + erf(v * FRAC_1_SQRT_2));
                    let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * v * v);
                    o[i] = ds[i] * (cdf + v * pdf);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Gelu)
}

/// `log(sigmoid(x))`, stable for large |x|: `min(x, 0) - log(1 + exp(-|x|))`.
pub fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    let neg_abs = x.abs()?.neg()?;
    let log1p = (neg_abs.exp()? + 1.0)?.log()?;
    x.minimum(0f32)?.sub(&log1p)
}

/// Checks a dtype early with a clear message.
pub fn expect_f32(t: &Tensor, what: &str) -> Result<()> {
    if t.dtype() != DType::F32 {
        bail!("{what}: expected f32, got {:?}", t.dtype());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        // A small deterministic generator, so the test needs no RNG state.
        let n: usize = shape.iter().product();
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).expect("tensor")
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let a: Vec<f32> = a.flatten_all().expect("f").to_vec1().expect("v");
        let b: Vec<f32> = b.flatten_all().expect("f").to_vec1().expect("v");
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "at {i}: {x} vs {y}");
        }
    }

    /// Each fused op and its backward against candle's composed reference ops.
    #[test]
    fn fused_ops_match_the_composed_reference_forward_and_backward() {
        let x = Var::from_tensor(&rand(&[3, 5, 7], 1)).expect("var");
        let g = Var::from_tensor(&(rand(&[7], 2) + 1.0).expect("g")).expect("var");
        let b = Var::from_tensor(&rand(&[7], 3)).expect("var");
        let w = rand(&[3, 5, 7], 4); // weights for a scalar loss

        let ours = layer_norm(&x, &g, &b, 1e-5).expect("ln");
        let reference = candle_nn::ops::layer_norm_slow(&x, &g, &b, 1e-5).expect("ref");
        close(&ours, &reference, 1e-5);
        let ga = (ours * &w)
            .expect("m")
            .sum_all()
            .expect("s")
            .backward()
            .expect("bwd");
        let gb = (reference * &w)
            .expect("m")
            .sum_all()
            .expect("s")
            .backward()
            .expect("bwd");
        for v in [&x, &g, &b] {
            close(
                ga.get(v.as_tensor()).expect("grad"),
                gb.get(v.as_tensor()).expect("grad"),
                1e-4,
            );
        }

        let ours = softmax_last_dim(&x).expect("softmax");
        let reference = candle_nn::ops::softmax(&x, candle_core::D::Minus1).expect("ref");
        close(&ours, &reference, 1e-6);
        let ga = (ours * &w)
            .expect("m")
            .sum_all()
            .expect("s")
            .backward()
            .expect("bwd");
        let gb = (reference * &w)
            .expect("m")
            .sum_all()
            .expect("s")
            .backward()
            .expect("bwd");
        close(
            ga.get(x.as_tensor()).expect("grad"),
            gb.get(x.as_tensor()).expect("grad"),
            1e-5,
        );

        let x3 = Var::from_tensor(&(rand(&[3, 5, 7], 5) * 3.0).expect("x")).expect("var");
        let ours = gelu(&x3).expect("gelu");
        let reference = x3.gelu_erf().expect("ref");
        close(&ours, &reference, 1e-5);
        let ga = (ours * &w)
            .expect("m")
            .sum_all()
            .expect("s")
            .backward()
            .expect("bwd");
        let gb = (reference * &w)
            .expect("m")
            .sum_all()
            .expect("s")
            .backward()
            .expect("bwd");
        close(
            ga.get(x3.as_tensor()).expect("grad"),
            gb.get(x3.as_tensor()).expect("grad"),
            1e-4,
        );
    }

    #[test]
    fn fast_exp_is_within_3e_7_of_libm_and_zero_far_below() {
        let mut x = -90.0f32;
        while x < 88.0 {
            let (got, want) = (exp(x), x.exp());
            if x >= -80.0 {
                assert!(
                    (got - want).abs() <= 3e-7 * want,
                    "exp({x}): {got} vs {want}"
                );
            } else {
                assert_eq!(got, 0.0, "exp({x})");
            }
            x += 0.013;
        }
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn erf_approximation_is_within_1e_6_of_libm() {
        let mut worst = 0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 / 10_000.0;
            worst = worst.max((erf(x) - candle_core::cpu::erf::erf_f32(x)).abs());
        }
        assert!(worst < 1e-6, "{worst}");
    }

    #[test]
    fn log_sigmoid_is_stable_at_the_extremes() {
        let x = Tensor::new(&[-200f32, -1.0, 0.0, 1.0, 200.0], &Device::Cpu).expect("t");
        let y: Vec<f32> = log_sigmoid(&x).expect("ls").to_vec1().expect("v");
        let want = [
            -200.0,
            -1.313_261_7,
            -std::f32::consts::LN_2,
            -0.313_261_7,
            0.0,
        ];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
