//! `duel bench live`: simulated labeling of a labeled file, to measure the live
//! trainer and the queue orders on real judgements.
//!
//! Folds by prompt as in `duel bench learn`: for each fold, the other folds are the
//! pool an annotator labels, one pair at a time, in the order the queue would serve
//! them (the file's order, a shuffle, or the live model's least certain first, with
//! the `random_share` of pairs at random, scored as the live trainer scores them);
//! the live trainer's plan runs after each label as it does between an annotator's
//! keys when it keeps up (`live::Exposure`, constant rate, 15% of prompts held out
//! for its own chart); and at each checkpoint count of labels, the live model and a
//! `duel train` run on the same labels (fresh, linear schedule) are scored on the
//! fold. Deterministic in steps, not time: the annotator is taken to be slower than
//! the trainer, which is the case for a person reading two responses.

use super::BadInput;
use super::learn::{Split, Summary, encode_all, split, summarize};
use super::model::{examples_from_file, load_model, model_dir};
use crate::cli::{LiveArgs, SimOrder};
use crate::train::live::{self, Exposure};
use crate::train::{Encoded, TrainConfig, Trainer, epoch_batches, is_heldout};
use anyhow::Result;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;

/// The live trainer's settings that the labeler uses (`commands::label`).
const HOLDOUT: f64 = 0.15;
const EVAL_EVERY: u64 = 25;
const SCORE_QUEUE: usize = 128;
const CAUGHT_UP_EVAL_STEPS: u64 = 5;

/// One simulated labeling: the order, the passes, and what was measured at each
/// checkpoint: `right[checkpoint][pair]` for the live model and, when compared,
/// for `duel train` on the same labels.
struct Run {
    live: Vec<Vec<bool>>,
    batch: Vec<Vec<bool>>,
    steps: Vec<u64>,
}

struct Sim<'a> {
    base: &'a Path,
    args: &'a LiveArgs,
    data: &'a [Encoded],
    keys: &'a [u64],
    heldout: &'a [bool],
}

impl Sim<'_> {
    fn config(&self, seed: u64) -> TrainConfig {
        TrainConfig {
            seed,
            batch_pairs: self.args.measure.model.batch as usize,
            max_length: self.args.measure.model.max_length,
            ..Default::default()
        }
    }

    /// `duel train` (one epoch by default, linear schedule) on `labeled`.
    fn batch_run(&self, seed: u64, labeled: &[usize]) -> Result<Trainer> {
        let config = self.config(seed);
        let train: Vec<Encoded> = labeled
            .iter()
            .filter(|&&i| !self.heldout[i])
            .map(|&i| self.data[i].clone())
            .collect();
        let mut t = load_model(self.base, config.clone())?;
        t.total_steps = train.len().div_ceil(config.batch_pairs) as u64 * self.args.epochs;
        for epoch in 0..self.args.epochs {
            for b in epoch_batches(&train, config.batch_pairs, seed, epoch) {
                let batch: Vec<&Encoded> = b.iter().map(|&i| &train[i]).collect();
                t.step(&batch)?;
            }
        }
        Ok(t)
    }

    fn right(&self, t: &Trainer, test: &[usize]) -> Result<Vec<bool>> {
        let pairs: Vec<Encoded> = test.iter().map(|&i| self.data[i].clone()).collect();
        Ok(t.margins(&pairs, t.config.batch_pairs)?
            .into_iter()
            .map(|m| m > 0.0)
            .collect())
    }

    /// Labels the pool in `order`'s way with `passes`, measuring at each checkpoint.
    fn run(
        &self,
        order: SimOrder,
        passes: u32,
        seed: u64,
        pool: &[usize],
        test: &[usize],
        compare: bool,
    ) -> Result<Run> {
        let mut t = load_model(self.base, self.config(seed))?;
        t.total_steps = 0;
        let mut exposure = Exposure::new(passes, seed);
        let mut rng = StdRng::seed_from_u64(crate::model::bert::splitmix(seed ^ 0x5e1));
        let mut walk: Vec<usize> = pool.to_vec();
        if order != SimOrder::Sequential {
            walk.shuffle(&mut rng);
        }
        // The uncertain order: |margin| and the step it was scored at, per pool pair.
        let mut scored: Vec<Option<(f32, u64)>> = vec![None; self.data.len()];
        let mut taken = vec![false; self.data.len()];
        let mut next_walk = 0usize;
        let mut labeled: Vec<usize> = Vec::new();
        let mut train_keys: Vec<u64> = Vec::new();
        let mut train_idx: Vec<usize> = Vec::new();
        let (mut step, mut last_eval) = (0u64, 0u64);
        let mut out = Run {
            live: Vec::new(),
            batch: Vec::new(),
            steps: Vec::new(),
        };
        let last = *self.args.at.iter().max().unwrap_or(&0);
        for n in 1..=last.min(pool.len()) {
            let pick = match order {
                SimOrder::Uncertain if rng.random::<f64>() >= self.args.random_share => pool
                    .iter()
                    .filter(|&&i| !taken[i])
                    .filter_map(|&i| scored[i].map(|(m, _)| (m, i)))
                    .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
                    .map(|(_, i)| i),
                _ => None,
            };
            let pick = match pick {
                Some(i) => i,
                None => loop {
                    let i = walk[next_walk];
                    next_walk += 1;
                    if !taken[i] {
                        break i;
                    }
                },
            };
            taken[pick] = true;
            labeled.push(pick);
            if !self.heldout[pick] {
                train_idx.push(pick);
                train_keys.push(self.keys[pick]);
            }
            if train_idx.len() >= 16 {
                let bp = t.config.batch_pairs;
                let mut stepped = false;
                while let Some(b) = exposure.next_batch(&train_keys, bp) {
                    let batch: Vec<&Encoded> =
                        b.iter().map(|&k| &self.data[train_idx[k]]).collect();
                    t.step(&batch)?;
                    step += 1;
                    stepped = true;
                    if step.is_multiple_of(EVAL_EVERY) {
                        self.score(&t, order, pool, &taken, &mut scored, step)?;
                        last_eval = step;
                    }
                }
                if stepped && step >= last_eval + CAUGHT_UP_EVAL_STEPS {
                    self.score(&t, order, pool, &taken, &mut scored, step)?;
                    last_eval = step;
                }
            }
            if self.args.at.contains(&n) {
                out.live.push(self.right(&t, test)?);
                out.steps.push(step);
                if compare {
                    let b = self.batch_run(seed, &labeled)?;
                    out.batch.push(self.right(&b, test)?);
                }
            }
        }
        Ok(out)
    }

    /// What the live trainer does for the queue after an evaluation: scores up to
    /// 128 unjudged pairs, never-scored first, then the longest ago.
    fn score(
        &self,
        t: &Trainer,
        order: SimOrder,
        pool: &[usize],
        taken: &[bool],
        scored: &mut [Option<(f32, u64)>],
        step: u64,
    ) -> Result<()> {
        if order != SimOrder::Uncertain {
            return Ok(());
        }
        let mut todo: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&i| !taken[i] && scored[i].is_none_or(|(_, s)| s < step))
            .collect();
        todo.sort_by_key(|&i| (scored[i].map_or(-1, |(_, s)| s as i64), i));
        todo.truncate(SCORE_QUEUE);
        let pairs: Vec<Encoded> = todo.iter().map(|&i| self.data[i].clone()).collect();
        for (&i, m) in todo.iter().zip(t.margins(&pairs, t.config.batch_pairs)?) {
            scored[i] = Some((m.abs(), step));
        }
        Ok(())
    }
}

#[derive(Debug, Serialize)]
struct Point {
    labels: usize,
    order: SimOrder,
    passes: u32,
    /// Mean optimizer steps the live trainer had taken.
    steps: f64,
    live: f64,
    live_spread: f64,
    live_interval: (f64, f64),
    /// `duel train` on the same labels, and live minus it (paired bootstrap).
    batch: Option<f64>,
    live_minus_batch: Option<(f64, f64, f64)>,
    /// Live minus the first order's live model at the same count and passes
    /// (paired bootstrap), for every order after the first.
    minus_first_order: Option<(f64, f64, f64)>,
}

/// How many labels an order needed to reach what the first order's live model
/// scored at the largest count (with the same passes): the smallest checkpoint at
/// which its own live model scored at least that, or none within the counts.
#[derive(Debug, Serialize)]
struct Reach {
    order: SimOrder,
    passes: u32,
    target: f64,
    target_labels: usize,
    labels: Option<usize>,
}

/// The labels an order needed (`Reach`), from the measured points.
fn reaches(points: &[Point], first: SimOrder) -> Vec<Reach> {
    let mut out = Vec::new();
    for p in points.iter().filter(|p| p.order != first) {
        if out
            .iter()
            .any(|r: &Reach| r.order == p.order && r.passes == p.passes)
        {
            continue;
        }
        let Some(top) = points
            .iter()
            .filter(|q| q.order == first && q.passes == p.passes)
            .max_by_key(|q| q.labels)
        else {
            continue;
        };
        let labels = points
            .iter()
            .filter(|q| q.order == p.order && q.passes == p.passes && q.live >= top.live)
            .map(|q| q.labels)
            .min();
        out.push(Reach {
            order: p.order,
            passes: p.passes,
            target: top.live,
            target_labels: top.labels,
            labels,
        });
    }
    out
}

pub fn bench_live(args: LiveArgs) -> Result<ExitCode> {
    let base = model_dir(args.measure.model_dir.as_deref())?;
    let mut args = args;
    if args.passes.is_empty() {
        args.passes = vec![live::DEFAULT_PASSES];
    }
    if args.seeds.is_empty() || args.at.is_empty() {
        return Err(BadInput("--seeds and --at need at least one value".into()).into());
    }
    if args.passes.contains(&0) || args.at.contains(&0) {
        return Err(BadInput("--passes and --at: values above 0".into()).into());
    }
    let examples = examples_from_file(&args.file)?;
    let folds = args.folds as usize;
    let Split {
        prompt_of,
        prompts,
        fold_of,
    } = split(&examples, folds, &args.file)?;
    let data = encode_all(&base, args.measure.model.max_length, &examples)?;
    let keys: Vec<u64> = examples.iter().map(live::key).collect();
    let heldout: Vec<bool> = examples
        .iter()
        .map(|e| is_heldout(&e.prompt, HOLDOUT))
        .collect();
    let smallest_pool = (0..folds)
        .map(|f| fold_of.iter().filter(|&&k| k != f).count())
        .min()
        .unwrap_or(0);
    let mut at = args.at.clone();
    at.sort_unstable();
    if let Some(&big) = at.iter().find(|&&n| n > smallest_pool) {
        return Err(BadInput(format!(
            "--at {big}: a fold's pool has only {smallest_pool} pairs; use fewer labels or more --folds"
        ))
        .into());
    }
    let sim = Sim {
        base: &base,
        args: &args,
        data: &data,
        keys: &keys,
        heldout: &heldout,
    };
    eprintln!(
        "{}: {} pairs, {prompts} prompts, {folds} folds by prompt, seeds {:?}",
        args.file.display(),
        data.len(),
        args.seeds
    );
    let mut points = Vec::new();
    // right[checkpoint][seed][pair] of the first order's live model, per passes.
    let mut first_order: HashMap<u32, Vec<Vec<Vec<bool>>>> = HashMap::new();
    for &order in &args.orders {
        // Outside the uncertain order the labels do not depend on the passes, nor
        // `duel train` on them: trained once per seed and fold.
        let mut batch_memo: HashMap<(u64, usize), Vec<Vec<bool>>> = HashMap::new();
        for &passes in &args.passes {
            // right[checkpoint] = [live[seed][pair], batch[seed][pair]]
            let mut live = vec![Vec::new(); at.len()];
            let mut batch = vec![Vec::new(); at.len()];
            let mut steps = vec![0.0; at.len()];
            for &seed in &args.seeds {
                let mut got_live = vec![vec![false; data.len()]; at.len()];
                let mut got_batch = vec![vec![false; data.len()]; at.len()];
                for f in 0..folds {
                    let t0 = std::time::Instant::now();
                    let pool: Vec<usize> = (0..data.len()).filter(|&i| fold_of[i] != f).collect();
                    let test: Vec<usize> = (0..data.len()).filter(|&i| fold_of[i] == f).collect();
                    let memo = order != SimOrder::Uncertain;
                    let need = args.compare && !(memo && batch_memo.contains_key(&(seed, f)));
                    let mut r = sim.run(order, passes, seed, &pool, &test, need)?;
                    if args.compare && memo {
                        r.batch = batch_memo.entry((seed, f)).or_insert(r.batch).clone();
                    }
                    for c in 0..at.len() {
                        for (k, &i) in test.iter().enumerate() {
                            got_live[c][i] = r.live[c][k];
                            if args.compare {
                                got_batch[c][i] = r.batch[c][k];
                            }
                        }
                        steps[c] += r.steps[c] as f64 / (folds * args.seeds.len()) as f64;
                    }
                    let acc = |v: &[bool]| v.iter().filter(|&&b| b).count() as f64 / v.len() as f64;
                    eprintln!(
                        "{order:?} passes {passes} seed {seed} fold {}/{folds}: live {} ({:.0} s)",
                        f + 1,
                        r.live
                            .iter()
                            .zip(&at)
                            .map(|(v, n)| format!("{n}:{:.3}", acc(v)))
                            .collect::<Vec<_>>()
                            .join(" "),
                        t0.elapsed().as_secs_f64()
                    );
                }
                for c in 0..at.len() {
                    live[c].push(std::mem::take(&mut got_live[c]));
                    batch[c].push(std::mem::take(&mut got_batch[c]));
                }
            }
            let first = first_order.entry(passes).or_insert_with(|| live.clone());
            for (c, &n) in at.iter().enumerate() {
                let minus_first_order = (order != args.orders[0]).then(|| {
                    let right = [first[c].clone(), live[c].clone()];
                    let s = summarize(&right, &prompt_of, prompts, args.measure.resamples);
                    let d = s[1].vs_first.as_ref().expect("a second predictor");
                    (d.mean, d.interval.low, d.interval.high)
                });
                let mut right = vec![std::mem::take(&mut live[c])];
                if args.compare {
                    right.push(std::mem::take(&mut batch[c]));
                }
                let s: Vec<Summary> =
                    summarize(&right, &prompt_of, prompts, args.measure.resamples);
                let b = s.get(1);
                points.push(Point {
                    labels: n,
                    order,
                    passes,
                    steps: steps[c],
                    live: s[0].accuracy,
                    live_spread: s[0].spread,
                    live_interval: (s[0].interval.low, s[0].interval.high),
                    batch: b.map(|b| b.accuracy),
                    // vs_first is batch − live: turn it round.
                    live_minus_batch: b
                        .and_then(|b| b.vs_first.as_ref())
                        .map(|d| (-d.mean, -d.interval.high, -d.interval.low)),
                    minus_first_order,
                });
            }
        }
    }
    let reach = reaches(&points, args.orders[0]);
    if args.measure.json {
        println!(
            "{}",
            serde_json::json!({
                "file": args.file, "pairs": data.len(), "prompts": prompts, "folds": folds,
                "seeds": args.seeds, "random_share": args.random_share,
                "epochs": args.epochs, "points": points, "reach": reach,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: {} pairs, {prompts} prompts, {folds} folds by prompt, seeds {:?}",
        args.file.display(),
        data.len(),
        args.seeds
    );
    let first = format!("{:?}", args.orders[0]).to_lowercase();
    println!(
        "{:<11} {:>6} {:>6} {:>6} {:>6} {:>15} {:>8} {:>26} {:>26}",
        "order",
        "passes",
        "labels",
        "steps",
        "live",
        "95% interval",
        "train",
        "live − train (95% interval)",
        format!("− {first} (95% interval)")
    );
    for p in &points {
        let b = p.batch.map_or("-".into(), |b| format!("{b:.3}"));
        let d = p.live_minus_batch.map_or(String::new(), |(m, lo, hi)| {
            format!("{m:+.3} ({lo:+.3} to {hi:+.3})")
        });
        let o = p.minus_first_order.map_or(String::new(), |(m, lo, hi)| {
            format!("{m:+.3} ({lo:+.3} to {hi:+.3})")
        });
        println!(
            "{:<11} {:>6} {:>6} {:>6.0} {:>6.3} {:>6.3} to {:.3} {b:>8} {d:>26} {o:>26}",
            format!("{:?}", p.order).to_lowercase(),
            p.passes,
            p.labels,
            p.steps,
            p.live,
            p.live_interval.0,
            p.live_interval.1
        );
    }
    for r in &reach {
        let order = format!("{:?}", r.order).to_lowercase();
        let got = r.labels.map_or(
            format!("not within {} labels", at.last().copied().unwrap_or(0)),
            |n| format!("{n} labels"),
        );
        println!(
            "{order} (passes {}) reaches what {first} scored at {} labels ({:.3}): {got}",
            r.passes, r.target_labels, r.target
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(order: SimOrder, labels: usize, live: f64) -> Point {
        Point {
            labels,
            order,
            passes: 1,
            steps: 0.0,
            live,
            live_spread: 0.0,
            live_interval: (live, live),
            batch: None,
            live_minus_batch: None,
            minus_first_order: None,
        }
    }

    #[test]
    fn an_order_reaches_the_first_orders_last_accuracy_at_its_first_count_at_or_above_it() {
        use SimOrder::{Random, Sequential, Uncertain};
        let points = [
            point(Random, 200, 0.55),
            point(Random, 400, 0.60),
            point(Random, 800, 0.62),
            point(Uncertain, 200, 0.58),
            point(Uncertain, 400, 0.63),
            point(Uncertain, 800, 0.61),
            point(Sequential, 200, 0.50),
            point(Sequential, 400, 0.55),
            point(Sequential, 800, 0.619),
        ];
        let r = reaches(&points, Random);
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].order, r[0].labels), (Uncertain, Some(400)));
        assert_eq!((r[0].target, r[0].target_labels), (0.62, 800));
        assert_eq!((r[1].order, r[1].labels), (Sequential, None));
    }
}
