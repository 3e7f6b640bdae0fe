//! `duel bench learn`: how well the reward model learns a labeled file.
//!
//! Cross-validation with folds by prompt (no prompt is both trained on and tested),
//! every fold trained from the base model for each set of options and each seed.
//! Each pair is predicted once per seed, by the model that did not see its prompt;
//! an option's accuracy is the share of those predictions that agree with the
//! judgement, its spread the standard deviation over seeds, and its interval a
//! bootstrap over prompts (pairs of one prompt are not independent). Options are
//! compared with the first on the same resamples, so the interval of a difference is
//! paired.

use super::BadInput;
use super::model::{check_head_lr, examples_from_file, learning_options, load_model, model_dir};
use crate::cli::{LearnArgs, Schedule};
use crate::train::{Encoded, Example, TrainConfig, epoch_batches, prompt_fold};
use anyhow::Result;
use clap::Parser;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

/// The options of `duel train` that shape learning, as one `--option` gives them.
#[derive(Debug, Parser)]
#[command(name = "--option", no_binary_name = true, disable_help_flag = true)]
struct Variant {
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f64>,
    #[arg(long, allow_negative_numbers = true)]
    head_lr: Option<f64>,
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long, allow_negative_numbers = true)]
    length_aux: Option<f64>,
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    #[arg(long, allow_negative_numbers = true)]
    warmup: Option<f64>,
    #[arg(long, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    dropout: Option<bool>,
    #[arg(long, value_enum)]
    pooling: Option<crate::train::Pooling>,
    #[arg(long, allow_negative_numbers = true)]
    center: Option<f64>,
    #[arg(long)]
    epochs: Option<u64>,
    #[arg(long, value_enum)]
    products: Option<crate::train::Products>,
}

/// One set of options, ready to train with.
struct Candidate {
    name: String,
    options: String,
    config: TrainConfig,
    schedule: Schedule,
    epochs: u64,
}

/// `NAME=VALUE` of a repeated `flag` (`--option`, `--external`) as its trimmed,
/// non-empty name and its value; `form` is shown when the `=` is missing.
fn named<'a>(flag: &str, spec: &'a str, form: &str) -> Result<(&'a str, &'a str), BadInput> {
    let (name, value) = spec
        .split_once('=')
        .ok_or_else(|| BadInput(format!("{flag} {spec:?}: expected {form}")))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(BadInput(format!("{flag} {spec:?}: the name is empty")));
    }
    Ok((name, value))
}

fn candidate(spec: &str, args: &LearnArgs) -> Result<Candidate, BadInput> {
    let (name, options) = named("--option", spec, "NAME=OPTIONS, as in `lr5=--lr 5e-5`")?;
    let bad = |what: String| BadInput(format!("--option {name}: {what}"));
    let v = Variant::try_parse_from(options.split_whitespace()).map_err(|e| {
        let text = e.to_string();
        bad(text
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ")
            .to_owned())
    })?;
    let defaults = TrainConfig::default();
    let lr = v.lr.unwrap_or(defaults.lr);
    if !(lr.is_finite() && lr > 0.0) {
        return Err(bad(format!("--lr {lr}: a rate above 0")));
    }
    check_head_lr(v.head_lr).map_err(|BadInput(e)| bad(e))?;
    let batch_pairs = v.batch.unwrap_or(args.measure.model.batch as usize);
    if batch_pairs == 0 {
        return Err(bad("--batch 0: a batch holds at least one pair".into()));
    }
    let schedule = v.schedule.unwrap_or(Schedule::Linear);
    let (warmup_ratio, length_aux) =
        learning_options(schedule, v.warmup, v.length_aux).map_err(|BadInput(e)| bad(e))?;
    let center_coef = v.center.unwrap_or(defaults.center_coef);
    if !(center_coef.is_finite() && center_coef >= 0.0) {
        return Err(bad(format!("--center {center_coef}: 0 or more")));
    }
    let epochs = v.epochs.unwrap_or(args.epochs);
    if epochs == 0 {
        return Err(bad("--epochs 0: nothing would be trained".into()));
    }
    Ok(Candidate {
        name: name.to_owned(),
        options: options.split_whitespace().collect::<Vec<_>>().join(" "),
        config: TrainConfig {
            lr,
            head_lr: v.head_lr,
            length_aux,
            warmup_ratio,
            center_coef,
            dropout: v.dropout.unwrap_or(defaults.dropout),
            pooling: v.pooling.unwrap_or(defaults.pooling),
            products: v.products.unwrap_or(defaults.products),
            batch_pairs,
            max_length: args.measure.model.max_length,
            ..defaults
        },
        schedule,
        epochs,
    })
}

/// Trains a fresh model on `train` and returns, for each pair of `test`, whether
/// it scores the chosen response higher.
fn run(
    base: &Path,
    c: &Candidate,
    seed: u64,
    train: &[Encoded],
    test: &[Encoded],
) -> Result<Vec<bool>> {
    let config = TrainConfig {
        seed,
        ..c.config.clone()
    };
    let mut trainer = load_model(base, config.clone())?;
    let per_epoch = train.len().div_ceil(config.batch_pairs) as u64;
    trainer.total_steps = match c.schedule {
        Schedule::Linear => per_epoch * c.epochs,
        Schedule::Constant => 0,
    };
    for epoch in 0..c.epochs {
        for b in epoch_batches(train, config.batch_pairs, seed, epoch) {
            let batch: Vec<&Encoded> = b.iter().map(|&i| &train[i]).collect();
            let s = trainer.step(&batch)?;
            if s.skipped {
                tracing::warn!("non-finite loss or gradient: batch skipped");
            }
        }
    }
    Ok(trainer
        .margins(test, config.batch_pairs)?
        .into_iter()
        .map(|d| d > 0.0)
        .collect())
}

#[derive(Debug, Serialize)]
pub(super) struct Interval {
    pub low: f64,
    pub high: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct Difference {
    pub mean: f64,
    pub interval: Interval,
}

#[derive(Debug, Serialize)]
struct Outcome {
    name: String,
    options: String,
    epochs: u64,
    accuracy: f64,
    /// Standard deviation of the accuracy over seeds.
    spread: f64,
    per_seed: Vec<f64>,
    interval: Interval,
    /// Accuracy minus the first option's, on the same resamples.
    vs_first: Option<Difference>,
    seconds: f64,
}

/// Another trainer's predictions, as `scripts/baseline-learn.py` writes them: for each
/// seed, whether each pair of the file (in its order) was predicted right by the
/// model that did not see its fold. (The file also says how many pairs and folds;
/// `fold_of` has both.)
#[derive(Debug, Deserialize)]
struct ExternalFile {
    options: String,
    epochs: u64,
    fold_of: Vec<usize>,
    seeds: Vec<u64>,
    right: Vec<Vec<bool>>,
    seconds: f64,
}

struct External {
    name: String,
    file: ExternalFile,
}

/// Reads `--external NAME=FILE` and checks that it predicted these pairs, split into
/// these folds, with these seeds: a paired comparison means nothing otherwise.
fn external(spec: &str, split: &Split, seeds: &[u64]) -> Result<External, BadInput> {
    let (name, path) = named(
        "--external",
        spec,
        "NAME=FILE, as in `trl=learn-results/trl.json`",
    )?;
    let bad = |what: String| BadInput(format!("--external {name}: {path}: {what}"));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let file: ExternalFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let folds = |f: &[usize]| f.iter().max().map_or(0, |m| m + 1);
    if file.fold_of != split.fold_of {
        return Err(bad(format!(
            "its {} pairs in {} folds are not this run's {} pairs in {} folds \
             (another file, --pairs or --folds?)",
            file.fold_of.len(),
            folds(&file.fold_of),
            split.fold_of.len(),
            folds(&split.fold_of)
        )));
    }
    if file.seeds != seeds {
        return Err(bad(format!(
            "seeds {:?}, this run's are {seeds:?}",
            file.seeds
        )));
    }
    let pairs = file.fold_of.len();
    if file.right.len() != seeds.len() || file.right.iter().any(|r| r.len() != pairs) {
        return Err(bad(format!(
            "expected {pairs} predictions for each of {} seeds",
            seeds.len()
        )));
    }
    Ok(External {
        name: name.to_owned(),
        file,
    })
}

/// Pairs grouped by prompt and prompts into folds.
/// Every pair encoded once, for all folds and seeds (the model is loaded for its
/// tokenizer, which also checks the folder before anything long starts).
pub(super) fn encode_all(
    base: &Path,
    max_length: usize,
    examples: &[Example],
) -> anyhow::Result<Vec<Encoded>> {
    let model = load_model(
        base,
        TrainConfig {
            max_length,
            ..Default::default()
        },
    )?;
    model.encode(examples)
}

pub(super) struct Split {
    /// Each pair's prompt, numbered in the file's order.
    pub prompt_of: Vec<usize>,
    pub prompts: usize,
    /// Each pair's fold.
    pub fold_of: Vec<usize>,
}

pub(super) fn split(examples: &[Example], folds: usize, file: &Path) -> Result<Split, BadInput> {
    let mut prompt_of = Vec::with_capacity(examples.len());
    let mut index: HashMap<&str, usize> = HashMap::new();
    for e in examples {
        let n = index.len();
        prompt_of.push(*index.entry(e.prompt.as_str()).or_insert(n));
    }
    let prompts = index.len();
    let fold_of: Vec<usize> = examples
        .iter()
        .map(|e| prompt_fold(&e.prompt, folds))
        .collect();
    for f in 0..folds {
        if !fold_of.contains(&f) {
            let noun = if prompts == 1 { "prompt" } else { "prompts" };
            return Err(BadInput(format!(
                "{}: {prompts} {noun} cannot fill {folds} folds; use fewer --folds",
                file.display()
            )));
        }
    }
    Ok(Split {
        prompt_of,
        prompts,
        fold_of,
    })
}

/// Percentile bounds of the middle 95% of `v`.
fn middle95(mut v: Vec<f64>) -> Interval {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((q * (v.len() - 1) as f64).round() as usize).min(v.len() - 1)];
    Interval {
        low: at(0.025),
        high: at(0.975),
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn spread(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

pub fn bench_learn(args: LearnArgs) -> Result<ExitCode> {
    let base = model_dir(args.measure.model_dir.as_deref())?;
    let specs = if args.options.is_empty() {
        vec!["defaults=".to_owned()]
    } else {
        args.options.clone()
    };
    let candidates = specs
        .iter()
        .map(|s| candidate(s, &args))
        .collect::<Result<Vec<_>, _>>()?;
    if args.seeds.is_empty() {
        return Err(BadInput("--seeds: give at least one".into()).into());
    }
    if args.measure.resamples == 0 {
        return Err(BadInput("--resamples: at least 1".into()).into());
    }
    let mut examples = examples_from_file(&args.file)?;
    if let Some(n) = args.pairs {
        examples.truncate(n);
    }
    let folds = args.folds as usize;
    let parts = split(&examples, folds, &args.file)?;
    if args.print_folds {
        println!(
            "{}",
            serde_json::json!({
                "file": args.file,
                "pairs": examples.len(),
                "folds": folds,
                "fold_of": parts.fold_of,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let externals = args
        .externals
        .iter()
        .map(|s| external(s, &parts, &args.seeds))
        .collect::<Result<Vec<_>, _>>()?;
    let Split {
        prompt_of,
        prompts,
        fold_of,
    } = parts;
    let data = encode_all(&base, args.measure.model.max_length, &examples)?;
    let longer_wins = examples
        .iter()
        .filter(|e| e.chosen.chars().count() > e.rejected.chars().count())
        .count() as f64
        / examples.len() as f64;
    if !args.measure.json {
        eprintln!(
            "{}: {} pairs, {prompts} prompts, {folds} folds by prompt, seeds {:?}",
            args.file.display(),
            data.len(),
            args.seeds
        );
    }

    // right[candidate][seed][pair]
    let mut right: Vec<Vec<Vec<bool>>> = Vec::new();
    let mut seconds = Vec::new();
    for c in &candidates {
        let start = Instant::now();
        let mut per_seed = Vec::new();
        for &seed in &args.seeds {
            let mut got = vec![false; data.len()];
            for f in 0..folds {
                let t0 = Instant::now();
                let train: Vec<Encoded> = data
                    .iter()
                    .zip(&fold_of)
                    .filter(|&(_, &k)| k != f)
                    .map(|(e, _)| e.clone())
                    .collect();
                let (test_idx, test): (Vec<usize>, Vec<Encoded>) = data
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| fold_of[i] == f)
                    .map(|(i, e)| (i, e.clone()))
                    .unzip();
                let r = run(&base, c, seed, &train, &test)?;
                for (&i, ok) in test_idx.iter().zip(&r) {
                    got[i] = *ok;
                }
                eprintln!(
                    "{} seed {seed} fold {}/{folds}: {:.3} on {} pairs ({:.0} s)",
                    c.name,
                    f + 1,
                    r.iter().filter(|&&b| b).count() as f64 / r.len() as f64,
                    r.len(),
                    t0.elapsed().as_secs_f64()
                );
            }
            per_seed.push(got);
        }
        right.push(per_seed);
        seconds.push(start.elapsed().as_secs_f64());
    }

    let mut rows: Vec<(String, String, u64)> = candidates
        .iter()
        .map(|c| (c.name.clone(), c.options.clone(), c.epochs))
        .collect();
    for x in externals {
        rows.push((x.name, x.file.options, x.file.epochs));
        right.push(x.file.right);
        seconds.push(x.file.seconds);
    }
    let summaries = summarize(&right, &prompt_of, prompts, args.measure.resamples);
    let outcomes: Vec<Outcome> = rows
        .into_iter()
        .zip(summaries)
        .zip(seconds)
        .map(|(((name, options, epochs), s), seconds)| Outcome {
            name,
            options,
            epochs,
            accuracy: s.accuracy,
            spread: s.spread,
            interval: s.interval,
            per_seed: s.per_seed,
            vs_first: s.vs_first,
            seconds,
        })
        .collect();

    if args.measure.json {
        println!(
            "{}",
            serde_json::json!({
                "file": args.file,
                "pairs": data.len(),
                "prompts": prompts,
                "folds": folds,
                "seeds": args.seeds,
                "max_length": args.measure.model.max_length,
                "resamples": args.measure.resamples,
                "longer_wins": longer_wins,
                "options": outcomes,
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
    println!(
        "{:<16} {:>6} {:>8} {:>8} {:>15} {:>24}",
        "option", "epochs", "accuracy", "spread", "95% interval", "vs first (95% interval)"
    );
    for o in &outcomes {
        let vs = o.vs_first.as_ref().map_or(String::new(), |d| {
            format!(
                "{:+.3} ({:+.3} to {:+.3})",
                d.mean, d.interval.low, d.interval.high
            )
        });
        println!(
            "{:<16} {:>6} {:>8.3} {:>8.3} {:>7.3} to {:.3} {vs:>24}",
            o.name, o.epochs, o.accuracy, o.spread, o.interval.low, o.interval.high
        );
    }
    println!("\"longer response wins\": {longer_wins:.3}");
    Ok(ExitCode::SUCCESS)
}

/// Accuracy of each of several predictors of the same pairs, with its spread over
/// seeds, a bootstrap interval over prompts, and its difference from the first on
/// the same resamples.
pub(super) struct Summary {
    pub accuracy: f64,
    pub spread: f64,
    pub per_seed: Vec<f64>,
    pub interval: Interval,
    pub vs_first: Option<Difference>,
}

/// `right[predictor][seed][pair]`: whether the predictor got the pair right;
/// `prompt_of[pair]` the pair's prompt, of `prompts`.
pub(super) fn summarize(
    right: &[Vec<Vec<bool>>],
    prompt_of: &[usize],
    prompts: usize,
    resamples: usize,
) -> Vec<Summary> {
    // Per predictor and prompt: pairs predicted right, summed over seeds.
    let mut hits = vec![vec![0u32; prompts]; right.len()];
    let mut sizes = vec![0u32; prompts];
    for (i, &p) in prompt_of.iter().enumerate() {
        sizes[p] += 1;
        for (k, r) in right.iter().enumerate() {
            hits[k][p] += r.iter().filter(|s| s[i]).count() as u32;
        }
    }
    let seeds = right.first().map_or(1, Vec::len) as f64;
    let mut rng = StdRng::seed_from_u64(0);
    let mut boot = vec![Vec::with_capacity(resamples); right.len()];
    for _ in 0..resamples {
        let mut n = 0u64;
        let mut h = vec![0u64; right.len()];
        for _ in 0..prompts {
            let p = rng.random_range(0..prompts);
            n += u64::from(sizes[p]);
            for (k, hk) in h.iter_mut().enumerate() {
                *hk += u64::from(hits[k][p]);
            }
        }
        for (k, b) in boot.iter_mut().enumerate() {
            b.push(h[k] as f64 / (n as f64 * seeds));
        }
    }
    (0..right.len())
        .map(|k| {
            let per_seed = right_rates(&right[k]);
            let vs_first = (k > 0).then(|| {
                let d: Vec<f64> = boot[k].iter().zip(&boot[0]).map(|(a, b)| a - b).collect();
                Difference {
                    mean: mean(&per_seed) - mean(&right_rates(&right[0])),
                    interval: middle95(d),
                }
            });
            Summary {
                accuracy: mean(&per_seed),
                spread: spread(&per_seed),
                interval: middle95(boot[k].clone()),
                per_seed,
                vs_first,
            }
        })
        .collect()
}

fn right_rates(per_seed: &[Vec<bool>]) -> Vec<f64> {
    per_seed
        .iter()
        .map(|s| s.iter().filter(|&&b| b).count() as f64 / s.len() as f64)
        .collect()
}
