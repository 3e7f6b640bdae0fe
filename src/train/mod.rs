//! Training the reward model: data, batching, the Bradley-Terry loss, the loop.

pub mod length;
pub mod live;
pub mod messages;
pub mod optim;
pub mod worker;

use crate::model::bert::CLASSIFIER_TENSORS;
use crate::model::engine::Padded;
use crate::model::{DropoutRng, ModelError, RewardModel, TextEncoder};
use candle_core::{Result, Tensor, Var};
use length::LengthProbe;
use optim::{AdamW, AdamWConfig, grad_norm};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Serialize;
use std::path::Path;

/// One preference: `chosen` was judged better than `rejected` for `prompt`.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// From the judgement's strength (0, 1/3, 2/3, 1), when one was given.
    pub margin: Option<f32>,
}

/// Token ids of both sides of an example.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub margin: f32,
}

impl Encoded {
    fn len(&self) -> usize {
        self.chosen.len().max(self.rejected.len())
    }
}

/// The learning rate of `duel train` and of live training, chosen by
/// cross-validation on two development sets (docs/PERFORMANCE.md, "Learning").
pub const DEFAULT_LR: f64 = 5e-5;

/// How a fresh model reads the encoder's tokens (a trained model keeps its own way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The first token's state, as `BertForSequenceClassification` reads it.
    Cls,
    /// The mean of the tokens' states, through one more encoder layer
    /// (`RewardModel::add_mean_layer`): still a `BertForSequenceClassification`.
    Mean,
}

/// How training multiplies its large matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Products {
    /// In f32: the gradients transformers computes.
    F32,
    /// Inputs rounded to bf16, sums in f32, where the CPU multiplies bf16 natively
    /// (AVX512-BF16); in f32 elsewhere. Weights and the optimizer stay f32.
    Bf16,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainConfig {
    pub lr: f64,
    /// The classifier head's learning rate, when it differs from `lr` (the head
    /// starts from random weights, the encoder from trained ones).
    pub head_lr: Option<f64>,
    pub batch_pairs: usize,
    pub max_length: usize,
    /// Share of the steps spent warming the learning rate up from 0.
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Use the strength margins in the loss (`-log σ(r_c − r_r − margin)`).
    pub use_margin: bool,
    /// Reward centering coefficient (`coef · mean((r_c + r_r)²)`), 0 for none.
    pub center_coef: f64,
    /// Train with the encoder's dropout on (the rates in its config.json).
    pub dropout: bool,
    /// Weight of the auxiliary length objective (`length::LengthProbe`), 0 for none.
    pub length_aux: f64,
    /// How a fresh model pools the tokens (ignored when resuming a trained model).
    pub pooling: Pooling,
    /// How the training step multiplies.
    pub products: Products,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: DEFAULT_LR,
            head_lr: None,
            batch_pairs: 8,
            max_length: 256,
            warmup_ratio: 0.1,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed: 0,
            use_margin: false,
            center_coef: 0.0,
            dropout: true,
            length_aux: 0.0,
            pooling: Pooling::Cls,
            products: Products::F32,
        }
    }
}

/// Warm-up of live training (and `duel train --schedule constant`), in steps.
pub const LIVE_WARMUP_STEPS: u64 = 20;

/// The fold of `folds` that a prompt belongs to in cross-validation: by hash, so
/// every pair of one prompt lands in the same fold.
pub fn prompt_fold(prompt: &str, folds: usize) -> usize {
    let h = blake3::hash(prompt.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[8..16]);
    (u64::from_le_bytes(b) % folds.max(1) as u64) as usize
}

/// Whether a prompt belongs to the held-out split: a fixed share of prompts by hash,
/// so every pair of one prompt lands on the same side.
pub fn is_heldout(prompt: &str, fraction: f64) -> bool {
    let h = blake3::hash(prompt.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(b) % 10_000) < (fraction * 10_000.0).round() as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepStats {
    pub loss: f64,
    /// Share of the batch's pairs where the chosen response scored higher.
    pub accuracy: f64,
    pub grad_norm: f64,
    pub lr: f64,
    /// The loss or the gradient was not finite: no update was made.
    pub skipped: bool,
    /// The length objective's mean squared error (in log tokens), when it is on.
    pub length_loss: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalStats {
    pub pairs: usize,
    pub accuracy: f64,
    pub loss: f64,
}

impl EvalStats {
    /// Accuracy and loss of each pair's reward margin (chosen minus rejected).
    pub fn of_margins(margins: &[f32]) -> EvalStats {
        let right = margins.iter().filter(|&&d| d > 0.0).count();
        let loss_sum: f64 = margins
            .iter()
            .map(|&d| {
                let d = f64::from(d);
                -(d.min(0.0) - (-d.abs()).exp().ln_1p())
            })
            .sum();
        let n = margins.len();
        EvalStats {
            pairs: n,
            accuracy: if n > 0 {
                right as f64 / n as f64
            } else {
                f64::NAN
            },
            loss: if n > 0 { loss_sum / n as f64 } else { f64::NAN },
        }
    }
}

pub struct Trainer {
    pub model: RewardModel,
    pub encoder: TextEncoder,
    pub config: TrainConfig,
    opt: AdamW,
    rng: DropoutRng,
    /// Steps in the schedule (for warm-up and decay); 0 for a constant rate.
    pub total_steps: u64,
    /// The auxiliary length objective, when `config.length_aux` is above 0.
    length_probe: Option<LengthProbe>,
}

impl Trainer {
    pub fn new(model: RewardModel, encoder: TextEncoder, config: TrainConfig) -> Result<Trainer> {
        let named = model.named_vars();
        let head_scale = config.head_lr.map_or(1.0, |h| (h / config.lr) as f32);
        let scales = named
            .iter()
            .map(|(n, _)| {
                if CLASSIFIER_TENSORS.contains(&n.as_str()) {
                    head_scale
                } else {
                    1.0
                }
            })
            .collect();
        let vars: Vec<Var> = named.into_iter().map(|(_, v)| v.clone()).collect();
        let mut opt = AdamW::new(
            vars,
            AdamWConfig {
                weight_decay: config.weight_decay as f32,
                ..Default::default()
            },
        )?;
        opt.set_lr_scales(scales)?;
        let length_probe = (config.length_aux > 0.0)
            .then(|| LengthProbe::new(model.config.hidden_size, config.length_aux))
            .transpose()?;
        Ok(Trainer {
            length_probe,
            rng: DropoutRng::new(config.seed),
            model,
            encoder,
            config,
            opt,
            total_steps: 0,
        })
    }

    /// Loads the model and tokenizer from a folder (a base encoder or a checkpoint),
    /// checked against each other: every id the tokenizer gives has an embedding
    /// row, and `max_length` fits the position embeddings.
    pub fn load(dir: &Path, config: TrainConfig) -> std::result::Result<Trainer, ModelError> {
        let mut model = crate::model::checkpoint::load(dir, config.seed)?;
        if config.pooling == Pooling::Mean && !model.head_from_file {
            model.add_mean_layer()?;
        }
        let tok = dir.join("tokenizer.json");
        let encoder = TextEncoder::load(&tok).map_err(|e| ModelError::file(&tok, e))?;
        let cfg = &model.config;
        if encoder.vocab_needed() > cfg.vocab_size {
            return Err(ModelError::file(
                &tok,
                format!(
                    "gives token ids up to {}, but `vocab_size` in config.json is {}",
                    encoder.vocab_needed() - 1,
                    cfg.vocab_size
                ),
            ));
        }
        if config.max_length > cfg.max_position_embeddings {
            return Err(ModelError::file(
                &dir.join("config.json"),
                format!(
                    "`max_position_embeddings` is {}, shorter than the --max-length of {} tokens",
                    cfg.max_position_embeddings, config.max_length
                ),
            ));
        }
        Ok(Trainer::new(model, encoder, config)?)
    }

    pub fn steps_done(&self) -> u64 {
        self.opt.step
    }

    /// The margin an example trains with: its strength's, when margins are on.
    pub fn margin_of(&self, e: &Example) -> f32 {
        if self.config.use_margin {
            e.margin.unwrap_or(0.0)
        } else {
            0.0
        }
    }

    pub fn encode(&self, examples: &[Example]) -> anyhow::Result<Vec<Encoded>> {
        examples.iter().map(|e| self.encode_one(e)).collect()
    }

    /// Token ids of both sides of one example, and its margin.
    pub fn encode_one(&self, e: &Example) -> anyhow::Result<Encoded> {
        Ok(Encoded {
            chosen: self
                .encoder
                .encode(&e.prompt, &e.chosen, self.config.max_length)?,
            rejected: self
                .encoder
                .encode(&e.prompt, &e.rejected, self.config.max_length)?,
            margin: self.margin_of(e),
        })
    }

    /// How many steps the learning rate rises over before it holds or decays.
    pub fn warmup_steps(&self) -> u64 {
        if self.total_steps == 0 {
            LIVE_WARMUP_STEPS
        } else {
            (self.config.warmup_ratio * self.total_steps as f64).round() as u64
        }
    }

    /// Linear warm-up, then linear decay to zero at `total_steps`; with no total
    /// (live training, where labels keep coming) a short warm-up, then constant.
    pub fn lr_at(&self, step: u64) -> f64 {
        let base = self.config.lr;
        let warm = self.warmup_steps() as f64;
        let s = step as f64;
        if self.total_steps == 0 {
            return base * ((s + 1.0) / warm).min(1.0);
        }
        // As transformers' linear schedule, with `step` counted from 0: the last
        // step still learns.
        let total = self.total_steps as f64;
        if s < warm {
            base * (s + 1.0) / (warm + 1.0)
        } else {
            base * ((total - s) / (total - warm).max(1.0)).clamp(0.0, 1.0)
        }
    }

    /// A batch's chosen then rejected texts: the order of its rewards.
    fn sides<'a>(batch: &[&'a Encoded]) -> Vec<&'a [u32]> {
        batch
            .iter()
            .map(|e| e.chosen.as_slice())
            .chain(batch.iter().map(|e| e.rejected.as_slice()))
            .collect()
    }

    /// A batch's chosen then rejected texts, padded.
    fn padded(&self, batch: &[&Encoded]) -> Padded {
        Padded::new(&Self::sides(batch), self.encoder.pad_id())
    }

    /// One optimizer step on `batch`. A non-finite loss or gradient skips the update.
    pub fn step(&mut self, batch: &[&Encoded]) -> Result<StepStats> {
        let lr = self.lr_at(self.opt.step);
        let mut rng = self.rng.clone();
        let (r, tape) = self.model.forward_tape(
            &self.padded(batch).batch(),
            self.config.dropout.then_some(&mut rng),
            self.config.products == Products::Bf16,
        )?;
        self.rng = rng;
        let margins: Vec<f32> = batch.iter().map(|e| e.margin).collect();
        let (loss_v, accuracy, d_rewards) = bt_loss(&r, &margins, self.config.center_coef);
        let skipped = StepStats {
            loss: loss_v,
            accuracy,
            grad_norm: f64::NAN,
            lr,
            skipped: true,
            length_loss: None,
        };
        if !loss_v.is_finite() {
            return Ok(skipped);
        }
        let probe = match &self.length_probe {
            Some(p) => {
                let lens: Vec<usize> = Self::sides(batch).iter().map(|s| s.len()).collect();
                Some(p.loss(tape.pooled(), &lens)?)
            }
            None => None,
        };
        let grads: Vec<Option<Tensor>> = self
            .model
            .backward(
                tape,
                &d_rewards,
                probe.as_ref().map(|p| p.d_pooled.as_slice()),
            )?
            .into_iter()
            .map(Some)
            .collect();
        let norm = grad_norm(&grads)?;
        if !norm.is_finite() {
            return Ok(StepStats {
                grad_norm: norm,
                ..skipped
            });
        }
        let scale = if self.config.max_grad_norm > 0.0 && norm > self.config.max_grad_norm {
            (self.config.max_grad_norm / norm) as f32
        } else {
            1.0
        };
        self.opt.step(&grads, lr, scale)?;
        let length_loss = probe.as_ref().map(|p| p.loss);
        if let (Some(p), Some(step)) = (&mut self.length_probe, probe) {
            p.apply(step, lr)?;
        }
        Ok(StepStats {
            loss: loss_v,
            accuracy,
            grad_norm: norm,
            lr,
            skipped: false,
            length_loss,
        })
    }

    /// Held-out accuracy (strict `r_chosen > r_rejected`) and loss, dropout off.
    pub fn evaluate(&self, data: &[Encoded], batch_pairs: usize) -> Result<EvalStats> {
        Ok(EvalStats::of_margins(&self.margins(data, batch_pairs)?))
    }

    /// Each pair's reward of `chosen` minus that of `rejected`, dropout off: the
    /// model agrees with the judgement where it is above 0.
    pub fn margins(&self, data: &[Encoded], batch_pairs: usize) -> Result<Vec<f32>> {
        self.margins_with(data, batch_pairs, false)
    }

    /// As `margins`, scored as the background scorer does
    /// (`RewardModel::rewards_fast`).
    pub fn margins_fast(&self, data: &[Encoded], batch_pairs: usize) -> Result<Vec<f32>> {
        self.margins_with(data, batch_pairs, true)
    }

    fn margins_with(&self, data: &[Encoded], batch_pairs: usize, fast: bool) -> Result<Vec<f32>> {
        let mut out = vec![0f32; data.len()];
        let order = length_sorted(data);
        for chunk in order.chunks(batch_pairs.max(1) * 2) {
            let batch: Vec<&Encoded> = chunk.iter().map(|&i| &data[i]).collect();
            let padded = self.padded(&batch);
            let rewards = if fast {
                self.model.rewards_fast(&padded.batch())?
            } else {
                self.model.rewards(&padded.batch())?
            };
            let (c, r) = rewards.split_at(batch.len());
            for ((&i, a), b) in chunk.iter().zip(c).zip(r) {
                out[i] = a - b;
            }
        }
        Ok(out)
    }

    /// Rewards of single texts, dropout off, in batches of `batch`, in f32.
    pub fn score(&self, seqs: &[Vec<u32>], batch: usize) -> Result<Vec<f32>> {
        self.score_with(seqs, batch, false)
    }

    /// As `score`, for ordering pairs: `RewardModel::rewards_fast`.
    pub fn score_fast(&self, seqs: &[Vec<u32>], batch: usize) -> Result<Vec<f32>> {
        self.score_with(seqs, batch, true)
    }

    fn score_with(&self, seqs: &[Vec<u32>], batch: usize, fast: bool) -> Result<Vec<f32>> {
        let mut out = vec![0f32; seqs.len()];
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| seqs[i].len());
        for chunk in order.chunks(batch.max(1)) {
            let s: Vec<&[u32]> = chunk.iter().map(|&i| seqs[i].as_slice()).collect();
            let padded = Padded::new(&s, self.encoder.pad_id());
            let r = if fast {
                self.model.rewards_fast(&padded.batch())?
            } else {
                self.model.rewards(&padded.batch())?
            };
            for (&i, v) in chunk.iter().zip(r) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

/// Bradley-Terry loss, strict accuracy and the loss's gradient with respect to
/// each reward (chosen then rejected), for rewards `r` of `n` pairs.
fn bt_loss(r: &[f32], margins: &[f32], center_coef: f64) -> (f64, f64, Vec<f32>) {
    let n = margins.len();
    let (rc, rr) = r.split_at(n);
    let mut loss = 0f64;
    let mut right = 0usize;
    let mut grad = vec![0f32; 2 * n];
    // Centering adds c · mean((r_c + r_r)²): 2c(r_c + r_r)/n to each gradient.
    let c = center_coef;
    for i in 0..n {
        let d = f64::from(rc[i] - rr[i] - margins[i]);
        let sum = f64::from(rc[i] + rr[i]);
        // -log σ(d) = max(-d, 0) + log(1 + e^{-|d|})
        loss += (-d).max(0.0) + (-d.abs()).exp().ln_1p() + c * sum * sum;
        right += usize::from(rc[i] > rr[i]);
        // d/dd of -log σ(d) is -(1 - σ(d)) = -σ(-d).
        let g = -1.0 / (1.0 + d.exp()) / n as f64;
        let center = 2.0 * c * sum / n as f64;
        grad[i] = (g + center) as f32;
        grad[n + i] = (-g + center) as f32;
    }
    loss /= n.max(1) as f64;
    (loss, right as f64 / n.max(1) as f64, grad)
}

fn length_sorted(data: &[Encoded]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..data.len()).collect();
    order.sort_by_key(|&i| data[i].len());
    order
}

/// One epoch's batches: shuffled, then bucketed by length within windows of 32
/// batches (so padding is small but the order stays random), then shuffled again.
pub fn epoch_batches(
    data: &[Encoded],
    batch_pairs: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let bp = batch_pairs.max(1);
    let mut rng = StdRng::seed_from_u64(crate::model::bert::splitmix(seed ^ (epoch + 1)));
    let mut idx: Vec<usize> = (0..data.len()).collect();
    idx.shuffle(&mut rng);
    let mut batches = Vec::new();
    for window in idx.chunks_mut(bp * 32) {
        window.sort_by_key(|&i| data[i].len());
        for b in window.chunks(bp) {
            batches.push(b.to_vec());
        }
    }
    batches.shuffle(&mut rng);
    batches
}

/// The store's judgements as examples, one per pair: its verdict under the
/// majority rule, as the default export writes it (`consensus`). Contested pairs,
/// ties and both-bad carry no preference and are left out.
pub fn examples_from_store(
    store: &crate::store::Store,
) -> std::result::Result<Vec<Example>, crate::store::StoreError> {
    let mut out = Vec::new();
    store.for_each_verdict::<crate::store::StoreError>(
        &crate::store::LabelFilter::default(),
        crate::consensus::Rule::Majority,
        |rows, verdict| {
            let pair = &rows[0];
            if let Some((c, r)) = verdict
                .choice()
                .and_then(|choice| pair.chosen_rejected_for(choice))
            {
                out.push(Example {
                    prompt: pair.prompt.text.clone(),
                    chosen: c.to_owned(),
                    rejected: r.to_owned(),
                    margin: verdict.margin().map(|m| m as f32),
                });
            }
            Ok(())
        },
    )?;
    Ok(out)
}

/// Scores `rows` with `trainer`'s model and stores the probability that A is better
/// in `pair_scores`, marked with `step`. These order the queue and the review, so
/// they are scored fast (`Trainer::score_fast`).
pub fn score_pairs_into(
    trainer: &Trainer,
    store: &crate::store::Store,
    rows: &[crate::store::PairText],
    step: u64,
) -> anyhow::Result<()> {
    let max = trainer.config.max_length;
    let mut seqs = Vec::with_capacity(2 * rows.len());
    for p in rows {
        seqs.push(trainer.encoder.encode(&p.prompt, &p.response_a, max)?);
        seqs.push(trainer.encoder.encode(&p.prompt, &p.response_b, max)?);
    }
    let r = trainer.score_fast(&seqs, 2 * trainer.config.batch_pairs)?;
    store.record_pair_scores(
        rows.iter().enumerate().map(|(i, p)| {
            let d = f64::from(r[2 * i] - r[2 * i + 1]);
            (p.pair_id, 1.0 / (1.0 + (-d).exp()))
        }),
        step,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays_and_the_last_step_still_learns() {
        let cfg = crate::model::bert::tiny_config();
        let w = crate::model::bert::random_weights(&cfg, 1).expect("w");
        let model = RewardModel::from_weights(cfg, &w, 1).expect("m");
        let tok = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("assets/models/all-MiniLM-L6-v2/tokenizer.json");
        let Ok(encoder) = TextEncoder::load(&tok) else {
            panic!("{} missing: run `make test`", tok.display())
        };
        let mut t = Trainer::new(
            model,
            encoder,
            TrainConfig {
                lr: 1.0,
                warmup_ratio: 0.2,
                ..Default::default()
            },
        )
        .expect("trainer");
        t.total_steps = 10;
        let lrs: Vec<f64> = (0..10).map(|s| t.lr_at(s)).collect();
        assert!(lrs[0] > 0.0 && lrs[0] < lrs[1] && lrs[1] <= 1.0, "{lrs:?}");
        assert!((lrs[2] - 1.0).abs() < 1e-12, "{lrs:?}");
        assert!(lrs.windows(2).skip(2).all(|w| w[1] < w[0]), "{lrs:?}");
        assert!(lrs[9] > 0.0, "{lrs:?}");
        t.total_steps = 0;
        assert!(t.lr_at(0) < t.lr_at(19) && (t.lr_at(100) - 1.0).abs() < 1e-12);
    }

    /// The loss and its gradient with respect to each reward (what the hand-written
    /// backward starts from), with margins and centering, against the formula and
    /// central differences.
    #[test]
    fn the_loss_gradient_matches_finite_differences() {
        let r = [0.3f32, -1.2, 2.0, 0.1, 0.4, 1.5];
        let margins = [0.0f32, 0.5, 1.0 / 3.0];
        let c = 0.01;
        let loss_of = |r: &[f32]| -> f64 {
            (0..3)
                .map(|i| {
                    let d = f64::from(r[i] - r[3 + i] - margins[i]);
                    let s = f64::from(r[i] + r[3 + i]);
                    -(1.0 / (1.0 + (-d).exp())).ln() + c * s * s
                })
                .sum::<f64>()
                / 3.0
        };
        let (loss, accuracy, grad) = bt_loss(&r, &margins, c);
        assert!(
            (loss - loss_of(&r)).abs() < 1e-9,
            "{loss} vs {}",
            loss_of(&r)
        );
        assert!((accuracy - 2.0 / 3.0).abs() < 1e-12);
        for i in 0..6 {
            let h = 1e-3f32;
            let (mut up, mut down) = (r, r);
            up[i] += h;
            down[i] -= h;
            let numeric = (loss_of(&up) - loss_of(&down)) / (2.0 * f64::from(h));
            assert!(
                (f64::from(grad[i]) - numeric).abs() < 1e-4,
                "reward {i}: {} vs {numeric}",
                grad[i]
            );
        }
    }

    #[test]
    fn heldout_split_is_by_prompt_and_near_its_share() {
        let n = (0..2000)
            .filter(|i| is_heldout(&format!("prompt {i}"), 0.15))
            .count();
        assert!((240..=360).contains(&n), "{n}");
        assert_eq!(is_heldout("same", 0.15), is_heldout("same", 0.15));
        assert!(!is_heldout("anything", 0.0));
    }
}
