//! AdamW that updates parameters and moments in place.
//!
//! candle-nn's `AdamW` builds new tensors for every parameter on every step (about
//! half a second a step for MiniLM on two cores); this writes into the existing
//! storage with candle's in-place ops, one pass per tensor, on the thread pool.

use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var};
use rayon::prelude::*;

/// Elements a task of the pool updates: each pass is element by element, so how the
/// work is split does not change a number; the largest parameter (the word
/// embeddings, 11.7 million) makes 179 tasks.
const CHUNK: usize = 1 << 16;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

pub struct AdamW {
    pub config: AdamWConfig,
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Each parameter's learning rate as a multiple of the step's rate.
    lr_scale: Vec<f32>,
    pub step: u64,
}

fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
    crate::model::ops::slice_mut(s, l, "adamw")
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    crate::model::ops::slice(s, l, "adamw")
}

/// `m = b * m + (1 - b) * g` (or with `g²` when `square`).
struct Moment {
    beta: f32,
    square: bool,
    scale: f32,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "duel-adamw-moment"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let m = slice_mut(s1, l1)?;
        let g = slice(s2, l2)?;
        let (b, c) = (self.beta, 1.0 - self.beta);
        let (square, scale) = (self.square, self.scale);
        m.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(m, g)| {
                if square {
                    for (mi, gi) in m.iter_mut().zip(g) {
                        let gs = gi * scale;
                        *mi = b * *mi + c * gs * gs;
                    }
                } else {
                    for (mi, gi) in m.iter_mut().zip(g) {
                        *mi = b * *mi + c * gi * scale;
                    }
                }
            });
        Ok(())
    }
}

/// `p -= lr * (m̂ / (sqrt(v̂) + eps) + wd * p)`.
struct Update {
    lr: f32,
    bc1: f32,
    bc2: f32,
    eps: f32,
    wd: f32,
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "duel-adamw-update"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let p = slice_mut(s1, l1)?;
        let m = slice(s2, l2)?;
        let v = slice(s3, l3)?;
        let Update {
            lr,
            bc1,
            bc2,
            eps,
            wd,
        } = *self;
        let decay = 1.0 - lr * wd;
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK)))
            .for_each(|(p, (m, v))| {
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    let mh = m / bc1;
                    let vh = v / bc2;
                    *p = *p * decay - lr * mh / (vh.sqrt() + eps);
                }
            });
        Ok(())
    }
}

impl AdamW {
    pub fn new(vars: Vec<Var>, config: AdamWConfig) -> Result<AdamW> {
        let m = vars
            .iter()
            .map(|v| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = vars
            .iter()
            .map(|v| v.zeros_like())
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW {
            config,
            lr_scale: vec![1.0; vars.len()],
            vars,
            m,
            v,
            step: 0,
        })
    }

    /// Sets each parameter's learning rate as a multiple of the step's rate, in the
    /// order the optimizer was given them.
    pub fn set_lr_scales(&mut self, scales: Vec<f32>) -> Result<()> {
        if scales.len() != self.vars.len() {
            candle_core::bail!(
                "{} rate scales for {} parameters",
                scales.len(),
                self.vars.len()
            );
        }
        self.lr_scale = scales;
        Ok(())
    }

    /// One step with learning rate `lr`; `grads` are the parameters' gradients in the
    /// order the optimizer was given them (`None`: left alone); `grad_scale`
    /// multiplies every gradient (gradient clipping).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64, grad_scale: f32) -> Result<()> {
        if grads.len() != self.vars.len() {
            candle_core::bail!(
                "{} gradients for {} parameters",
                grads.len(),
                self.vars.len()
            );
        }
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let upd = Update {
            lr: lr as f32,
            bc1: 1.0 - c.beta1.powi(t),
            bc2: 1.0 - c.beta2.powi(t),
            eps: c.eps,
            wd: c.weight_decay,
        };
        for ((((var, m), v), g), &scale) in self
            .vars
            .iter()
            .zip(&self.m)
            .zip(&self.v)
            .zip(grads)
            .zip(&self.lr_scale)
        {
            let Some(g) = g else {
                continue;
            };
            let upd = Update {
                lr: upd.lr * scale,
                ..upd
            };
            let g = g.contiguous()?;
            m.inplace_op2(
                &g,
                &Moment {
                    beta: c.beta1,
                    square: false,
                    scale: grad_scale,
                },
            )?;
            v.inplace_op2(
                &g,
                &Moment {
                    beta: c.beta2,
                    square: true,
                    scale: grad_scale,
                },
            )?;
            var.as_tensor().inplace_op3(m, v, &upd)?;
        }
        Ok(())
    }
}

/// The sum of squares of a tensor, read in place (no squared copy: the gradients
/// add up to 90 MB a step for MiniLM).
struct SumSquares;

impl candle_core::CustomOp1 for SumSquares {
    fn name(&self) -> &'static str {
        "duel-sum-squares"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, candle_core::Shape)> {
        let v = slice(s, l)?;
        // Each run of 4,096 summed in f32, the runs in f64 in order: the same sum
        // however the pool splits the work.
        let runs: Vec<f64> = v
            .par_chunks(4096)
            .map(|c| f64::from(c.iter().map(|x| x * x).sum::<f32>()))
            .collect();
        let sum: f64 = runs.iter().sum();
        Ok((CpuStorage::F64(vec![sum]), candle_core::Shape::from(())))
    }
}

/// The global L2 norm of the gradients.
pub fn grad_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut sum = 0f64;
    for g in grads.iter().flatten() {
        let s: f64 = g.contiguous()?.apply_op1_no_bwd(&SumSquares)?.to_scalar()?;
        sum += s;
    }
    Ok(sum.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The gradients of `vars` from candle's autograd, in order.
    fn grads_of(store: &candle_core::backprop::GradStore, vars: &[Var]) -> Vec<Option<Tensor>> {
        vars.iter()
            .map(|v| store.get(v.as_tensor()).cloned())
            .collect()
    }

    #[test]
    fn grad_norm_is_the_l2_norm_of_all_gradients() {
        let a = Var::from_slice(&[1.0f32, 2.0], 2, &Device::Cpu).expect("var");
        let b = Var::from_slice(&[3.0f32], 1, &Device::Cpu).expect("var");
        // d/dx of sum(x * c) is c: gradients (3, 4) and (4).
        let loss = ((a.as_tensor() * Tensor::new(&[3.0f32, 4.0], &Device::Cpu).expect("t"))
            .expect("m")
            .sum_all()
            .expect("s")
            + (b.as_tensor() * 4.0).expect("m").sum_all().expect("s"))
        .expect("add");
        let grads = loss.backward().expect("bwd");
        let n = grad_norm(&grads_of(&grads, &[a, b])).expect("norm");
        assert!((n - 41f64.sqrt()).abs() < 1e-9, "{n}");
        // A gradient of many runs of 4,096 (the pool sums them apart), against the
        // sum of squares in f64.
        let len = 10 * 4096 + 7;
        let c: Vec<f32> = (0..len)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
            .collect();
        let x = Var::from_slice(&vec![1f32; len], len, &Device::Cpu).expect("var");
        let loss = (x.as_tensor() * Tensor::new(c.as_slice(), &Device::Cpu).expect("t"))
            .expect("m")
            .sum_all()
            .expect("s");
        let grads = loss.backward().expect("bwd");
        let n = grad_norm(&grads_of(&grads, &[x])).expect("norm");
        let want = c
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        assert!((n - want).abs() < 1e-6 * want, "{n} against {want}");
    }

    /// The in-place optimizer against the textbook update, computed by hand.
    #[test]
    fn two_steps_match_the_adamw_formula() {
        // Two elements, and a parameter the pool splits into several tasks (its
        // last one short), each element with its own gradient.
        for n in [2, 3 * CHUNK + 5] {
            let start: Vec<f32> = (0..n)
                .map(|i| if i % 2 == 0 { 1.0 } else { -2.0 })
                .collect();
            let g: Vec<f32> = (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
                .collect();
            let p = Var::from_slice(&start, n, &Device::Cpu).expect("var");
            let cfg = AdamWConfig {
                weight_decay: 0.1,
                ..Default::default()
            };
            let mut opt = AdamW::new(vec![p.clone()], cfg).expect("opt");
            let lr = 0.01f64;
            let mut want = start.clone();
            let (mut m, mut v) = (vec![0f32; n], vec![0f32; n]);
            for t in 1..=2 {
                let loss = (p.as_tensor() * Tensor::new(g.as_slice(), &Device::Cpu).expect("g"))
                    .expect("mul")
                    .sum_all()
                    .expect("sum");
                let grads = loss.backward().expect("bwd");
                opt.step(&grads_of(&grads, std::slice::from_ref(&p)), lr, 1.0)
                    .expect("step");
                for i in 0..n {
                    m[i] = 0.9 * m[i] + 0.1 * g[i];
                    v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                    let mh = m[i] / (1.0 - 0.9f32.powi(t));
                    let vh = v[i] / (1.0 - 0.999f32.powi(t));
                    want[i] = want[i] * (1.0 - 0.01 * 0.1) - 0.01 * mh / (vh.sqrt() + 1e-8);
                }
            }
            let got: Vec<f32> = p.as_tensor().to_vec1().expect("v");
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                assert!((a - b).abs() < 1e-6, "{n} elements, [{i}]: {a} vs {b}");
            }
        }
    }

    /// A parameter with a rate scale moves by that multiple of the step's rate (the
    /// first Adam step moves every element by the rate itself).
    #[test]
    fn a_rate_scale_multiplies_that_parameters_step() {
        let a = Var::from_slice(&[0.0f32, 0.0], 2, &Device::Cpu).expect("var");
        let b = Var::from_slice(&[0.0f32, 0.0], 2, &Device::Cpu).expect("var");
        let mut opt = AdamW::new(vec![a.clone(), b.clone()], AdamWConfig::default()).expect("opt");
        assert!(
            opt.set_lr_scales(vec![1.0]).is_err(),
            "one scale per parameter"
        );
        opt.set_lr_scales(vec![1.0, 20.0]).expect("scales");
        let g = Tensor::new(&[0.5f32, -1.5], &Device::Cpu).expect("g");
        opt.step(&[Some(g.clone()), Some(g)], 1e-3, 1.0)
            .expect("step");
        let moved = |v: &Var| -> Vec<f32> { v.as_tensor().to_vec1().expect("v") };
        for (x, want) in moved(&a).iter().zip([-1e-3f32, 1e-3]) {
            assert!((x - want).abs() < 1e-7, "{x} vs {want}");
        }
        for (x, want) in moved(&b).iter().zip([-2e-2f32, 2e-2]) {
            assert!((x - want).abs() < 1e-6, "{x} vs {want}");
        }
    }
}
