//! An auxiliary objective that makes the encoder's pooled vector carry each input's
//! length: a linear probe on it learns to predict the log of the text's token count,
//! and the probe's squared error is added to the loss (times `TrainConfig::length_aux`),
//! so its gradient reaches the encoder through the pooler.
//!
//! Why: on PandaLM the longer response wins 66% of the pairs, yet the pooled `[CLS]`
//! vector of a fine-tuned MiniLM holds length only weakly, and 500-odd pairs are too
//! few for the reward head to dig it out: the models agreed with "longer wins" on
//! only 50–64% of test pairs. With the probe the reward head can read length beside
//! what the text says (measured in docs/PERFORMANCE.md). It is off by default: where the
//! shorter answer often wins (HH harmless) it cost accuracy in cross-validation, so
//! it is an option (`--length-aux 1`) for data where length matters.
//!
//! The probe is not part of the model: it is not exported and, like the optimizer's
//! moments, starts afresh when training resumes from a checkpoint.

use super::optim::{AdamW, AdamWConfig};
use candle_core::{Device, Result, Tensor, Var};

/// The probe's target is `ln(tokens) - CENTER`, so that it starts near zero for
/// texts of typical length (e^4 ≈ 55 tokens) and its bias need not travel far.
const CENTER: f32 = 4.0;

/// The probe learns this many times faster than the encoder: it starts from zero
/// and must lead, or its gradient into the encoder says nothing.
const LR_FACTOR: f64 = 10.0;

pub struct LengthProbe {
    coef: f32,
    hidden: usize,
    weight: Var,
    bias: Var,
    opt: AdamW,
}

/// The probe's loss on a batch and the gradients it wants applied.
pub struct ProbeStep {
    /// Mean squared error of the predicted log length (before `coef`).
    pub loss: f64,
    /// Gradient of `coef · loss` with respect to each pooled vector.
    pub d_pooled: Vec<f32>,
    grads: [Tensor; 2],
}

impl LengthProbe {
    pub fn new(hidden: usize, coef: f64) -> Result<LengthProbe> {
        let weight = Var::zeros(hidden, candle_core::DType::F32, &Device::Cpu)?;
        let bias = Var::zeros(1, candle_core::DType::F32, &Device::Cpu)?;
        let opt = AdamW::new(vec![weight.clone(), bias.clone()], AdamWConfig::default())?;
        Ok(LengthProbe {
            coef: coef as f32,
            hidden,
            weight,
            bias,
            opt,
        })
    }

    /// The loss of the predictions for `pooled` (one row of `hidden` per text)
    /// against the texts' token counts `lens`, and its gradients; nothing is updated
    /// until `apply`.
    pub fn loss(&self, pooled: &[f32], lens: &[usize]) -> Result<ProbeStep> {
        let h = self.hidden;
        if pooled.len() != lens.len() * h {
            candle_core::bail!("{} pooled values for {} texts", pooled.len(), lens.len());
        }
        let w = self.weight.as_tensor().to_vec1::<f32>()?;
        let b = self.bias.as_tensor().to_vec1::<f32>()?[0];
        let n = lens.len().max(1) as f32;
        let mut loss = 0f64;
        let mut d_pooled = vec![0f32; pooled.len()];
        let mut gw = vec![0f32; h];
        let mut gb = 0f32;
        for (i, (p, &len)) in pooled.chunks(h).zip(lens).enumerate() {
            let y = p.iter().zip(&w).map(|(x, w)| x * w).sum::<f32>() + b;
            let err = y - ((len.max(1) as f32).ln() - CENTER);
            loss += f64::from(err * err);
            let g = 2.0 * err / n;
            for k in 0..h {
                d_pooled[i * h + k] = self.coef * g * w[k];
                gw[k] += g * p[k];
            }
            gb += g;
        }
        Ok(ProbeStep {
            loss: loss / f64::from(n),
            d_pooled,
            grads: [
                Tensor::from_vec(gw, h, &Device::Cpu)?,
                Tensor::from_vec(vec![gb], 1, &Device::Cpu)?,
            ],
        })
    }

    /// Updates the probe with the gradients of `step`, at `LR_FACTOR` times the
    /// encoder's rate `lr`.
    pub fn apply(&mut self, step: ProbeStep, lr: f64) -> Result<()> {
        let [gw, gb] = step.grads;
        self.opt.step(&[Some(gw), Some(gb)], lr * LR_FACTOR, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe learns to read length from a vector that carries it, and its
    /// gradient with respect to the vector matches finite differences.
    #[test]
    fn the_probe_learns_length_and_its_gradient_is_right() {
        let h = 4;
        let lens: Vec<usize> = vec![8, 20, 55, 150, 300, 12];
        // The first component carries the log length; the others are noise.
        let pooled: Vec<f32> = lens
            .iter()
            .enumerate()
            .flat_map(|(i, &l)| {
                let x = ((l as f32).ln() - CENTER) / 2.0;
                [x, (i as f32 * 0.7).sin(), 0.3, -(i as f32 * 0.3).cos()]
            })
            .collect();
        let mut probe = LengthProbe::new(h, 0.5).expect("probe");
        let first = probe.loss(&pooled, &lens).expect("loss").loss;
        let mut checked = false;
        for n in 0..400 {
            let step = probe.loss(&pooled, &lens).expect("loss");
            if n == 20 {
                // d(coef · loss)/d(pooled), against central differences, while the
                // probe is still far from its optimum (the gradient is not small).
                let eps = 1e-2f32;
                let mut largest = 0f64;
                for i in 0..pooled.len() {
                    let mut up = pooled.clone();
                    up[i] += eps;
                    let mut down = pooled.clone();
                    down[i] -= eps;
                    let lu = probe.loss(&up, &lens).expect("loss").loss;
                    let ld = probe.loss(&down, &lens).expect("loss").loss;
                    let want = 0.5 * (lu - ld) / f64::from(2.0 * eps);
                    let got = f64::from(step.d_pooled[i]);
                    largest = largest.max(want.abs());
                    assert!(
                        (got - want).abs() < 1e-4 + 1e-2 * want.abs(),
                        "d_pooled[{i}]: {got} vs {want}"
                    );
                }
                assert!(largest > 1e-2, "gradient too small to check: {largest}");
                checked = true;
            }
            probe.apply(step, 1e-3).expect("apply");
        }
        assert!(checked);
        let last = probe.loss(&pooled, &lens).expect("loss").loss;
        assert!(
            last < first / 20.0,
            "loss {first} -> {last}: the probe did not learn"
        );
    }

    #[test]
    fn a_mismatched_batch_is_an_error() {
        let probe = LengthProbe::new(4, 1.0).expect("probe");
        assert!(probe.loss(&[0.0; 7], &[3, 4]).is_err());
    }
}
