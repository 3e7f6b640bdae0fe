//! Local generation of candidate responses from a llama-architecture GGUF model.
//!
//! [`Generator::generate`] samples several responses to one conversation as one
//! batch: the prompt is processed once when the responses share it, and every decode
//! step advances all unfinished responses together, so each weight read serves all.

pub mod chat;
pub mod feed;
pub mod gguf;
pub mod llama;
pub mod pairs;
pub mod quant;

use crate::domain::Message;
use anyhow::{Result, bail};
use candle_core::quantized::gguf_file;
use chat::ChatTokenizer;
use llama::{KvCache, Llama, Scratch};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How one response is sampled.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
    pub system: Option<String>,
}

/// One sampled response.
#[derive(Debug, Clone)]
pub struct Sample {
    pub text: String,
    pub ids: Vec<u32>,
    pub prompt_tokens: usize,
    /// `stop` (end of turn) or `length` (hit the token limit).
    pub finish: &'static str,
}

/// Timings of one [`Generator::generate`] call.
#[derive(Debug, Clone, Default)]
pub struct Timing {
    pub prompt_tokens: usize,
    pub prompt_ms: f64,
    pub gen_tokens: usize,
    pub gen_ms: f64,
}

pub struct Generator {
    pub model: Llama,
    pub tokenizer: ChatTokenizer,
    pub name: String,
    pub path: PathBuf,
    /// Generate to the token limit even past end-of-turn (benchmarks only, so every
    /// run has the same length).
    pub ignore_stop: bool,
    scratch: Scratch,
    caches: Vec<KvCache>,
    /// The generator's own workers; the calling thread joins them for each call,
    /// so a matrix product does not wait for a sleeping thread to be woken.
    pool: std::sync::Arc<rayon::ThreadPool>,
}

/// The context each sequence gets: prompt and response together.
const DEFAULT_CONTEXT: usize = 2048;

impl Generator {
    /// Checks a GGUF file as `load` would, without loading its tensors: cheap
    /// enough to run before anything is changed on the file's behalf.
    pub fn check(path: &Path) -> Result<()> {
        let (ct, _, _) = Llama::check(path)?;
        Self::tokenizer(path, &ct).map(drop)
    }

    fn tokenizer(path: &Path, ct: &gguf_file::Content) -> Result<ChatTokenizer> {
        Ok(ChatTokenizer::from_gguf(ct).map_err(|e| llama::BadGguf {
            path: path.to_owned(),
            msg: format!("{e:#}"),
        })?)
    }

    pub fn load(path: &Path) -> Result<Generator> {
        let (model, ct) = Llama::load(path)?;
        let tokenizer = Self::tokenizer(path, &ct)?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "generator".into());
        tracing::info!(model = %path.display(), kernel = ?model.kernel(), "generator loaded");
        Ok(Generator {
            model,
            tokenizer,
            name,
            path: path.to_path_buf(),
            ignore_stop: false,
            scratch: Scratch::default(),
            caches: Vec::new(),
            pool: std::sync::Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(rayon::current_num_threads())
                    .thread_name(|i| format!("generator-{i}"))
                    .build()?,
            ),
        })
    }

    fn context(&self) -> usize {
        self.model.cfg.ctx.min(DEFAULT_CONTEXT)
    }

    fn ensure_caches(&mut self, n: usize) {
        let cap = self.context();
        while self.caches.len() < n {
            self.caches.push(KvCache::new(&self.model.cfg, cap));
        }
    }

    /// Samples one response per entry of `settings` to the conversation `messages`.
    /// Stops a response at an end-of-turn token or after `max_new` tokens. Returns
    /// `None` when `cancel` was set before all were done.
    pub fn generate(
        &mut self,
        messages: &[Message],
        settings: &[Sampling],
        max_new: usize,
        cancel: &AtomicBool,
    ) -> Result<Option<(Vec<Sample>, Timing)>> {
        let pool = self.pool.clone();
        pool.install(|| self.generate_in_pool(messages, settings, max_new, cancel))
    }

    fn generate_in_pool(
        &mut self,
        messages: &[Message],
        settings: &[Sampling],
        max_new: usize,
        cancel: &AtomicBool,
    ) -> Result<Option<(Vec<Sample>, Timing)>> {
        let n = settings.len();
        if n == 0 {
            return Ok(Some((Vec::new(), Timing::default())));
        }
        self.ensure_caches(n);
        let mut timing = Timing::default();
        // Prompts: one per distinct system text.
        let mut prompts: Vec<Vec<u32>> = Vec::with_capacity(n);
        for s in settings {
            let mut msgs = Vec::with_capacity(messages.len() + 1);
            if let Some(sys) = &s.system
                && messages.first().is_none_or(|m| m.role != "system")
            {
                msgs.push(Message {
                    role: "system".into(),
                    content: sys.clone(),
                });
            }
            msgs.extend(messages.iter().cloned());
            prompts.push(self.tokenizer.encode_chat(&msgs)?);
        }
        let ctx = self.context();
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if longest + 1 > ctx {
            bail!("the prompt has {longest} tokens; the generator's context is {ctx}");
        }
        let max_new = max_new.min(ctx - longest);
        let t0 = Instant::now();
        let mut last_logits: Vec<Vec<f32>> = vec![Vec::new(); n];
        for i in 0..n {
            if let Some(j) = (0..i).find(|&j| prompts[j] == prompts[i]) {
                let (a, b) = self.caches.split_at_mut(i);
                b[0].copy_from(&a[j]);
                last_logits[i] = last_logits[j].clone();
                continue;
            }
            self.caches[i].len = 0;
            // Long prompts in chunks, to bound the scratch memory.
            for chunk in prompts[i].chunks(256) {
                if cancel.load(Ordering::Relaxed) {
                    return Ok(None);
                }
                self.model
                    .forward(&mut [&mut self.caches[i]], &[chunk], &mut self.scratch)?;
            }
            last_logits[i] = self.scratch.logits.clone();
            timing.prompt_tokens += prompts[i].len();
        }
        timing.prompt_ms = t0.elapsed().as_secs_f64() * 1e3;

        let t1 = Instant::now();
        let vocab = self.model.cfg.vocab;
        let mut rngs: Vec<StdRng> = settings
            .iter()
            .map(|s| StdRng::seed_from_u64(s.seed))
            .collect();
        let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut done: Vec<Option<&'static str>> = vec![None; n];
        let mut next: Vec<u32> = Vec::with_capacity(n);
        let mut sampler = Sampler::default();
        for (i, s) in settings.iter().enumerate() {
            let t = sampler.sample(&last_logits[i], s, &mut rngs[i]);
            next.push(t);
        }
        loop {
            // Record the sampled tokens; finish sequences that stopped.
            let mut active = Vec::new();
            for i in 0..n {
                if done[i].is_some() {
                    continue;
                }
                if !self.ignore_stop && self.tokenizer.stop_ids.contains(&next[i]) {
                    done[i] = Some("stop");
                    continue;
                }
                out[i].push(next[i]);
                if out[i].len() >= max_new {
                    done[i] = Some("length");
                    continue;
                }
                active.push(i);
            }
            if active.is_empty() {
                break;
            }
            if cancel.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let toks: Vec<[u32; 1]> = active.iter().map(|&i| [next[i]]).collect();
            let tok_refs: Vec<&[u32]> = toks.iter().map(|t| &t[..]).collect();
            {
                let mut refs: Vec<&mut KvCache> = Vec::with_capacity(active.len());
                let mut rest: &mut [KvCache] = &mut self.caches[..];
                let mut base = 0;
                for &i in &active {
                    let (_, tail) = rest.split_at_mut(i - base);
                    let (one, tail) = tail.split_at_mut(1);
                    refs.push(&mut one[0]);
                    rest = tail;
                    base = i + 1;
                }
                self.model
                    .forward(&mut refs, &tok_refs, &mut self.scratch)?;
            }
            timing.gen_tokens += active.len();
            for (j, &i) in active.iter().enumerate() {
                let logits = &self.scratch.logits[j * vocab..(j + 1) * vocab];
                next[i] = sampler.sample(logits, &settings[i], &mut rngs[i]);
            }
        }
        timing.gen_ms = t1.elapsed().as_secs_f64() * 1e3;
        let samples = out
            .into_iter()
            .zip(done)
            .zip(&prompts)
            .map(|((mut ids, finish), p)| {
                let text = match finish {
                    Some(_) => self.tokenizer.decode(&ids)?,
                    None => self.tokenizer.decode_cut(&mut ids)?,
                };
                Ok(Sample {
                    text,
                    ids,
                    prompt_tokens: p.len(),
                    finish: finish.unwrap_or("length"),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((samples, timing)))
    }
}

/// Temperature and nucleus (top-p) sampling with reused buffers.
#[derive(Default)]
struct Sampler {
    cand: Vec<(u32, f32)>,
}

/// Tokens this far below the most likely one (in log-probability) are left out of
/// the nucleus: each has less than e^-30 of its probability, all of them together
/// less than 1e-8, so the result is the exact top-p choice for any practical purpose,
/// and only a few hundred exponentials are taken instead of one per vocabulary entry.
const LOGIT_CUT: f32 = 30.0;

impl Sampler {
    fn sample(&mut self, logits: &[f32], s: &Sampling, rng: &mut StdRng) -> u32 {
        let (best, max) =
            logits
                .iter()
                .enumerate()
                .fold((0usize, f32::NEG_INFINITY), |b, (i, &v)| {
                    if v > b.1 { (i, v) } else { b }
                });
        if s.temperature <= 0.0 || !max.is_finite() {
            return best as u32;
        }
        let inv_t = 1.0 / s.temperature;
        let cut = max - LOGIT_CUT * s.temperature;
        self.cand.clear();
        for (i, &v) in logits.iter().enumerate() {
            if v > cut {
                self.cand.push((i as u32, ((v - max) * inv_t).exp()));
            }
        }
        let total: f32 = self.cand.iter().map(|c| c.1).sum();
        let top_p = s.top_p.clamp(0.0, 1.0);
        if top_p >= 1.0 {
            // Everything is kept: drawn in id order, nothing to sort.
            return draw(&self.cand, rng.random::<f32>() * total);
        }
        // Most likely first; ties by id so that the order is the same everywhere.
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        let goal = top_p * total;
        // The nucleus is usually a few dozen tokens among thousands: the most likely
        // `m` are set apart (linear time) and only they are sorted, `m` growing until
        // they reach the goal. They are the full sort's first `m`, in its order.
        let mut m = 64.min(self.cand.len());
        let (keep, acc) = loop {
            if m < self.cand.len() {
                self.cand.select_nth_unstable_by(m - 1, order);
            }
            self.cand[..m].sort_unstable_by(order);
            let mut acc = 0.0;
            let reached = self.cand[..m].iter().position(|c| {
                acc += c.1;
                acc >= goal
            });
            match reached {
                Some(i) => break (i + 1, acc),
                None if m == self.cand.len() => break (m, acc),
                None => m = (m * 4).min(self.cand.len()),
            }
        };
        draw(
            &self.cand[..keep.max(1)],
            rng.random::<f32>() * acc.min(total),
        )
    }
}

/// The candidate where the running sum of weights reaches `u`.
fn draw(cand: &[(u32, f32)], mut u: f32) -> u32 {
    for c in cand {
        u -= c.1;
        if u <= 0.0 {
            return c.0;
        }
    }
    cand[cand.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_p: f32) -> Sampling {
        Sampling {
            temperature,
            top_p,
            seed: 0,
            system: None,
        }
    }

    /// The nucleus by sorting every candidate, as the sampler did before it set the
    /// most likely apart: the sampler must choose exactly what this chooses.
    fn sorted_choice(logits: &[f32], s: &Sampling, rng: &mut StdRng) -> u32 {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let cut = max - LOGIT_CUT * s.temperature;
        let mut cand: Vec<(u32, f32)> = (0..logits.len())
            .filter(|&i| logits[i] > cut)
            .map(|i| (i as u32, ((logits[i] - max) / s.temperature).exp()))
            .collect();
        let total: f32 = cand.iter().map(|c| c.1).sum();
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let (mut keep, mut acc) = (0, 0.0);
        for c in &cand {
            acc += c.1;
            keep += 1;
            if acc >= s.top_p * total {
                break;
            }
        }
        draw(&cand[..keep], rng.random::<f32>() * acc.min(total))
    }

    #[test]
    fn the_nucleus_is_the_one_a_full_sort_gives() {
        let mut gen_rng = StdRng::seed_from_u64(3);
        let mut sampler = Sampler::default();
        for case in 0..200 {
            // Vocabularies of flat and of peaked logits, with ties.
            let spread = [0.5f32, 2.0, 8.0][case % 3];
            let logits: Vec<f32> = (0..5000)
                .map(|_| (gen_rng.random_range(-1.0f32..1.0) * spread * 4.0).round() / 4.0)
                .collect();
            let s = sampling(0.8, [0.1, 0.5, 0.9, 0.95, 0.99][case % 5]);
            let (mut a, mut b) = (
                StdRng::seed_from_u64(case as u64),
                StdRng::seed_from_u64(case as u64),
            );
            for _ in 0..5 {
                let want = sorted_choice(&logits, &s, &mut a);
                assert_eq!(sampler.sample(&logits, &s, &mut b), want, "case {case}");
            }
        }
    }

    /// With `top_p` 1 every candidate is kept and drawn in proportion to its
    /// probability.
    #[test]
    fn without_a_nucleus_tokens_come_as_often_as_their_probability() {
        let logits = [0.0f32, 1.0, 2.0, -40.0, 0.5];
        let s = sampling(1.0, 1.0);
        let z: f32 = logits[..3]
            .iter()
            .chain(&logits[4..])
            .map(|v| v.exp())
            .sum();
        let mut rng = StdRng::seed_from_u64(1);
        let mut sampler = Sampler::default();
        let mut seen = [0usize; 5];
        let n = 40_000;
        for _ in 0..n {
            seen[sampler.sample(&logits, &s, &mut rng) as usize] += 1;
        }
        assert_eq!(seen[3], 0, "a token 40 nats below the best was drawn");
        for i in [0, 1, 2, 4] {
            let p = logits[i].exp() / z;
            let f = seen[i] as f32 / n as f32;
            assert!(
                (f - p).abs() < 0.01,
                "token {i}: drawn {f}, probability {p}"
            );
        }
    }
}
