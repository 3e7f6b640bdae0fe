//! `duel train`, `eval`, `score` and `bench train`.

use super::{BadInput, open_existing};
use crate::cli::{EvalArgs, Schedule, ScoreArgs, TrainArgs};
use crate::io::import::parse_json_line;
use crate::model::{DEFAULT_ENCODER_DIR, checkpoint, engine::fast_products};
use crate::train::{
    Encoded, Example, LIVE_WARMUP_STEPS, Products, TrainConfig, Trainer, epoch_batches,
    examples_from_store, is_heldout,
};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

pub(crate) fn model_dir(arg: Option<&Path>) -> Result<PathBuf> {
    let dir = arg
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ENCODER_DIR));
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        if !dir.join(f).exists() {
            return Err(BadInput(format!(
                "{}: no {f} (fetch the models with `scripts/fetch-models.sh`, or pass --model-dir)",
                dir.display()
            ))
            .into());
        }
    }
    Ok(dir)
}

/// Loads a model folder; a folder whose files are wrong (a config that does not fit
/// its tensors, a truncated file, a tokenizer past the vocabulary) is bad input.
pub(crate) fn load_model(dir: &Path, config: TrainConfig) -> Result<Trainer> {
    Trainer::load(dir, config).map_err(|e| {
        if e.is_bad_input() {
            BadInput(format!("cannot use the model: {e}")).into()
        } else {
            anyhow::Error::new(e).context(format!("loading the model from {}", dir.display()))
        }
    })
}

/// `{prompt, chosen, rejected}` lines (any labeled import form) of a file.
pub(crate) fn examples_from_file(path: &Path) -> Result<Vec<Example>> {
    let f = std::fs::File::open(path).map_err(|e| BadInput(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).split(b'\n').enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // Plain string records are taken as they are, empty texts included: an
        // evaluation set is scored whole, as other tools score it.
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(line)
            && let (
                Some(serde_json::Value::String(p)),
                Some(serde_json::Value::String(c)),
                Some(serde_json::Value::String(r)),
            ) = (m.get("prompt"), m.get("chosen"), m.get("rejected"))
        {
            out.push(Example {
                prompt: p.clone(),
                chosen: c.clone(),
                rejected: r.clone(),
                margin: None,
            });
            continue;
        }
        let pair = parse_json_line(line)
            .map_err(|e| BadInput(format!("{}:{}: {e}", path.display(), i + 1)))?;
        if pair.label.is_none() {
            return Err(BadInput(format!(
                "{}:{}: needs `chosen` and `rejected` to evaluate",
                path.display(),
                i + 1
            ))
            .into());
        }
        out.push(Example {
            prompt: pair.prompt.text,
            chosen: pair.response_a,
            rejected: pair.response_b,
            margin: None,
        });
    }
    Ok(out)
}

fn record_eval(
    store: &crate::store::Store,
    run_id: i64,
    step: u64,
    e: &crate::train::EvalStats,
    labels: usize,
) -> Result<()> {
    store.record_eval(
        run_id,
        &crate::store::EvalMetrics {
            step,
            loss: e.loss,
            accuracy: e.accuracy,
            labels_used: labels,
        },
    )?;
    Ok(())
}

/// What `duel train` measures after each epoch, and where `--steps` stops it: the
/// held-out pairs (recorded in the run's metrics) and the `--eval` file.
struct Measures<'a> {
    run_id: i64,
    labels: usize,
    heldout: &'a [Encoded],
    file: Option<(&'a Path, Vec<Encoded>)>,
    on_heldout: Vec<serde_json::Value>,
    on_file: Vec<serde_json::Value>,
    last_step: Option<u64>,
}

impl Measures<'_> {
    /// Measures the model after `step`; with `bar`, says so above it.
    fn at(
        &mut self,
        trainer: &Trainer,
        store: &crate::store::Store,
        epoch: u64,
        step: u64,
        bar: Option<&indicatif::ProgressBar>,
    ) -> Result<()> {
        let point = |e: &crate::train::EvalStats| serde_json::json!({"epoch": epoch, "step": step, "pairs": e.pairs, "accuracy": e.accuracy, "loss": e.loss});
        let batch = trainer.config.batch_pairs;
        if !self.heldout.is_empty() {
            let e = trainer.evaluate(self.heldout, batch)?;
            record_eval(store, self.run_id, step, &e, self.labels)?;
            if let Some(bar) = bar {
                bar.println(format!(
                    "epoch {epoch}: held-out accuracy {:.3} on {} pairs, loss {:.4}",
                    e.accuracy, e.pairs, e.loss
                ));
            }
            self.on_heldout.push(point(&e));
        }
        if let Some((path, data)) = &self.file {
            let e = trainer.evaluate(data, batch)?;
            if let Some(bar) = bar {
                bar.println(format!(
                    "epoch {epoch}: accuracy {:.3} on {} pairs of {}, loss {:.4}",
                    e.accuracy,
                    e.pairs,
                    path.display(),
                    e.loss
                ));
            }
            self.on_file.push(point(&e));
        }
        self.last_step = Some(step);
        Ok(())
    }
}

/// The warm-up share and length-objective weight that `--schedule`, `--warmup` and
/// `--length-aux` give (`duel train` and `duel bench learn`), or what is wrong.
/// `--head-lr`, when given, is a rate above 0.
pub(crate) fn check_head_lr(head_lr: Option<f64>) -> Result<(), BadInput> {
    match head_lr {
        Some(h) if !(h.is_finite() && h > 0.0) => {
            Err(BadInput(format!("--head-lr {h}: a rate above 0")))
        }
        _ => Ok(()),
    }
}

pub(crate) fn learning_options(
    schedule: Schedule,
    warmup: Option<f64>,
    length_aux: Option<f64>,
) -> Result<(f64, f64), BadInput> {
    let warmup_ratio = match (schedule, warmup) {
        (Schedule::Constant, Some(_)) => {
            return Err(BadInput(format!(
                "--warmup sets the linear schedule's warm-up; --schedule constant warms up \
                 over its first {LIVE_WARMUP_STEPS} steps, as live training does"
            )));
        }
        (_, Some(w)) if !(0.0..1.0).contains(&w) => {
            return Err(BadInput(format!(
                "--warmup {w}: a share of the steps, from 0 to below 1"
            )));
        }
        (Schedule::Linear, w) => w.unwrap_or(TrainConfig::default().warmup_ratio),
        (Schedule::Constant, None) => 0.0,
    };
    let length_aux = length_aux.unwrap_or(TrainConfig::default().length_aux);
    if !(length_aux.is_finite() && length_aux >= 0.0) {
        return Err(BadInput(format!(
            "--length-aux {length_aux}: a weight of 0 (off) or more"
        )));
    }
    Ok((warmup_ratio, length_aux))
}

pub fn train(db: &Path, args: TrainArgs) -> Result<ExitCode> {
    if args.follow {
        return follow(db, &args);
    }
    let base = model_dir(args.model_dir.as_deref())?;
    // Before the options are checked: a mistyped database is the first thing to say.
    drop(open_existing(db)?);
    let (warmup_ratio, length_aux) = learning_options(args.schedule, args.warmup, args.length_aux)?;
    let store = open_existing(db)?;
    let all = examples_from_store(&store)?;
    let (held, train): (Vec<Example>, Vec<Example>) = all
        .into_iter()
        .partition(|e| is_heldout(&e.prompt, args.holdout));
    if train.is_empty() {
        return Err(BadInput(format!(
            "{}: no A/B judgements to train on ({} held out)",
            db.display(),
            held.len()
        ))
        .into());
    }
    check_head_lr(args.head_lr)?;
    let config = TrainConfig {
        lr: args.lr,
        head_lr: args.head_lr,
        batch_pairs: args.model.batch as usize,
        max_length: args.model.max_length,
        seed: args.seed,
        use_margin: args.margin,
        center_coef: args.center,
        warmup_ratio,
        dropout: args.dropout,
        pooling: args.pooling,
        products: args.products,
        length_aux,
        ..Default::default()
    };
    // A bad evaluation file stops the run before anything is trained or recorded.
    let eval_examples = args.eval.as_deref().map(examples_from_file).transpose()?;
    let mut trainer = load_model(&base, config.clone())?;
    let data = trainer.encode(&train)?;
    let held_data = trainer.encode(&held)?;
    let eval_data = eval_examples.map(|e| trainer.encode(&e)).transpose()?;
    let per_epoch = data.len().div_ceil(config.batch_pairs) as u64;
    let total = args.steps.unwrap_or(per_epoch * args.epochs);
    // 0 steps in the schedule: the live trainer's warm-up, then a constant rate.
    trainer.total_steps = match args.schedule {
        Schedule::Linear => total,
        Schedule::Constant => 0,
    };

    let run_id = store.start_train_run(&serde_json::to_string(&serde_json::json!({
        "train": config, "base": base, "pairs": data.len(), "heldout": held_data.len(),
        "steps": total, "schedule": args.schedule,
        "warmup_steps": trainer.warmup_steps(),
    }))?)?;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if args.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let start = Instant::now();
    let mut step = 0u64;
    let mut epoch = 0u64;
    let mut last_loss = f64::NAN;
    let mut last_lr = f64::NAN;
    let mut skipped = 0u64;
    let mut losses = Vec::with_capacity(total as usize);
    let mut measures = Measures {
        run_id,
        labels: data.len(),
        heldout: &held_data,
        file: args.eval.as_deref().zip(eval_data),
        on_heldout: Vec::new(),
        on_file: Vec::new(),
        last_step: None,
    };
    'outer: loop {
        for b in epoch_batches(&data, config.batch_pairs, config.seed, epoch) {
            if step >= total {
                break 'outer;
            }
            let batch: Vec<&Encoded> = b.iter().map(|&i| &data[i]).collect();
            let t0 = Instant::now();
            let s = trainer.step(&batch)?;
            let pps = batch.len() as f64 / t0.elapsed().as_secs_f64();
            step += 1;
            last_lr = s.lr;
            if s.skipped {
                skipped += 1;
                tracing::warn!(step, "non-finite loss or gradient: batch skipped");
                losses.push(f64::NAN);
            } else {
                last_loss = s.loss;
                losses.push(s.loss);
            }
            store.record_train_step(
                run_id,
                &crate::store::StepMetrics {
                    step,
                    loss: s.loss,
                    accuracy: s.accuracy,
                    pairs_per_s: pps,
                    labels_used: data.len(),
                },
            )?;
            bar.set_message(format!("loss {:.4}  {pps:.1} pairs/s", s.loss));
            bar.inc(1);
        }
        epoch += 1;
        measures.at(&trainer, &store, epoch, step, Some(&bar))?;
        if step >= total {
            break;
        }
    }
    // Stopped by --steps in the middle of an epoch: evaluate what was trained.
    if measures.last_step != Some(step) {
        measures.at(&trainer, &store, epoch, step, None)?;
    }
    let (evals, file_evals) = (measures.on_heldout, measures.on_file);
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let meta = serde_json::json!({
        "step": step, "config": config, "schedule": args.schedule,
        "warmup_steps": trainer.warmup_steps(), "base": base,
        "trained_pairs": data.len(),
        "evals": evals, "eval_per_epoch": file_evals,
    });
    let card = crate::cards::ModelCard {
        base_model: bundled(&base).then_some(crate::cards::BUNDLED_ENCODER),
        base_dir: &base.display().to_string(),
        data: crate::cards::DataSummary::of(&crate::stats::compute(&store)?),
        train_pairs: data.len(),
        heldout_pairs: held_data.len(),
        holdout_share: args.holdout,
        options: card_options(&args, &config, trainer.warmup_steps()),
        steps: step,
        seconds: start.elapsed().as_secs_f64(),
        heldout_accuracy: evals.last().and_then(|e| e["accuracy"].as_f64()),
        per_epoch: evals
            .iter()
            .filter_map(|e| {
                Some((
                    e["epoch"].as_u64()?,
                    e["step"].as_u64()?,
                    e["accuracy"].as_f64()?,
                ))
            })
            .collect(),
        loss_curve: crate::cards::loss_curve(&losses, 10),
        eval_file: args
            .eval
            .as_deref()
            .zip(file_evals.last())
            .and_then(|(p, e)| {
                Some((
                    p.display().to_string(),
                    e["pairs"].as_u64()? as usize,
                    e["accuracy"].as_f64()?,
                ))
            }),
        max_length: config.max_length,
    }
    .render();
    checkpoint::save(&trainer.model, &base, &args.out, &meta, Some(&card))?;
    store.record_checkpoint(
        run_id,
        step,
        &args.out,
        evals.last().and_then(|e| e["accuracy"].as_f64()),
    )?;
    let summary = serde_json::json!({
        "steps": step,
        "train_pairs": data.len(),
        "heldout_pairs": held_data.len(),
        "last_loss": last_loss,
        "last_lr": last_lr,
        "heldout_accuracy": evals.last().and_then(|e| e["accuracy"].as_f64()),
        "skipped_batches": skipped,
        "eval_file": args.eval,
        "eval_accuracy": file_evals.last().and_then(|e| e["accuracy"].as_f64()),
        "eval_per_epoch": file_evals,
        "seconds": secs,
        "out": args.out,
    });
    if args.json {
        println!("{summary}");
    } else {
        eprintln!(
            "trained {step} steps on {} pairs in {secs:.0} s; model written to {}",
            data.len(),
            args.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether `dir` is the encoder `scripts/fetch-models.sh` fetched.
fn bundled(dir: &Path) -> bool {
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    canonical(dir).is_some() && canonical(dir) == canonical(Path::new(DEFAULT_ENCODER_DIR))
}

/// The training options as the model card lists them.
fn card_options(args: &TrainArgs, c: &TrainConfig, warmup_steps: u64) -> Vec<(String, String)> {
    let mut rows = vec![
        ("learning rate".to_string(), format!("{:e}", c.lr)),
        (
            "classifier head's learning rate".into(),
            format!("{:e}", c.head_lr.unwrap_or(c.lr)),
        ),
        (
            "schedule".into(),
            match args.schedule {
                Schedule::Linear => {
                    format!("linear: {warmup_steps} warm-up step(s), then decay to 0")
                }
                Schedule::Constant => format!("constant after {warmup_steps} warm-up step(s)"),
            },
        ),
        (
            "length of training".into(),
            match args.steps {
                Some(s) => format!("{s} steps"),
                None => format!("{} epochs", args.epochs),
            },
        ),
        ("pairs per batch".into(), c.batch_pairs.to_string()),
        ("longest input (tokens)".into(), c.max_length.to_string()),
        (
            "optimizer".into(),
            format!(
                "AdamW, weight decay {}, gradient norm clipped at {}",
                c.weight_decay, c.max_grad_norm
            ),
        ),
        (
            "dropout".into(),
            if c.dropout { "on" } else { "off" }.into(),
        ),
        (
            "pooling".into(),
            match c.pooling {
                crate::train::Pooling::Cls => "the first token ([CLS])",
                crate::train::Pooling::Mean => "the mean of the tokens (an added encoder layer)",
            }
            .into(),
        ),
        (
            "loss".into(),
            if c.use_margin {
                "Bradley-Terry with margins"
            } else {
                "Bradley-Terry"
            }
            .into(),
        ),
    ];
    if c.center_coef > 0.0 {
        rows.push(("reward centering".into(), c.center_coef.to_string()));
    }
    if c.length_aux > 0.0 {
        rows.push(("length objective weight".into(), c.length_aux.to_string()));
    }
    if c.products == Products::Bf16 {
        rows.push(("matrix products".into(), "bf16 inputs, f32 sums".into()));
    }
    rows.push(("seed".into(), c.seed.to_string()));
    rows
}

fn load_trained(dir: &Path, args: &crate::cli::ModelArgs) -> Result<Trainer> {
    let dir = model_dir(Some(dir))?;
    load_model(
        &dir,
        TrainConfig {
            max_length: args.max_length,
            batch_pairs: args.batch as usize,
            ..Default::default()
        },
    )
}

pub fn eval(args: EvalArgs) -> Result<ExitCode> {
    let trainer = load_trained(&args.model, &args.args)?;
    let examples = examples_from_file(&args.file)?;
    let data = trainer.encode(&examples)?;
    let batch = args.args.batch as usize;
    let exact = trainer.margins(&data, batch)?;
    let e = crate::train::EvalStats::of_margins(&exact);
    let fast = if args.fast {
        let fast = trainer.margins_fast(&data, batch)?;
        Some(fast_agreement(&exact, &fast))
    } else {
        None
    };
    if args.json {
        let mut v = serde_json::json!({"pairs": e.pairs, "accuracy": e.accuracy, "loss": e.loss});
        if let Some(f) = &fast {
            v["fast"] = serde_json::json!({
                "products": fast_products(),
                "accuracy": f.accuracy,
                "same_order": f.same_order,
                "margin_rms_difference": f.rms_difference,
                "margin_rms": f.rms_margin,
            });
        }
        println!("{v}");
    } else {
        println!(
            "{} pairs: accuracy {:.4} (chosen scored higher), loss {:.4}",
            e.pairs, e.accuracy, e.loss
        );
        if let Some(f) = &fast {
            println!(
                "scored fast ({} products): accuracy {:.4}; {:.1}% of pairs in the same order; \
                 margins moved {:.4} (root mean square) against their own {:.4}",
                fast_products(),
                f.accuracy,
                100.0 * f.same_order,
                f.rms_difference,
                f.rms_margin
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How fast scoring's margins compare with exact scoring's, pair by pair.
struct FastAgreement {
    /// Share of pairs where the fast margin is above 0.
    accuracy: f64,
    /// Share of pairs the two order the same way.
    same_order: f64,
    /// Root mean square of the margins' differences.
    rms_difference: f64,
    /// Root mean square of the exact margins.
    rms_margin: f64,
}

fn fast_agreement(exact: &[f32], fast: &[f32]) -> FastAgreement {
    let n = exact.len().max(1) as f64;
    let rms = |it: &mut dyn Iterator<Item = f32>| {
        (it.map(|d| f64::from(d) * f64::from(d)).sum::<f64>() / n).sqrt()
    };
    FastAgreement {
        accuracy: fast.iter().filter(|&&d| d > 0.0).count() as f64 / n,
        same_order: exact
            .iter()
            .zip(fast)
            .filter(|(a, b)| (**a > 0.0) == (**b > 0.0))
            .count() as f64
            / n,
        rms_difference: rms(&mut exact.iter().zip(fast).map(|(a, b)| a - b)),
        rms_margin: rms(&mut exact.iter().copied()),
    }
}

/// A line of a score file: its number, its `id`, and the texts to score by key.
type ScoreLine = (usize, serde_json::Value, Vec<(&'static str, Vec<u32>)>);

pub fn score(args: ScoreArgs) -> Result<ExitCode> {
    let trainer = load_trained(&args.model, &args.args)?;
    let f = std::fs::File::open(&args.file)
        .map_err(|e| BadInput(format!("{}: {e}", args.file.display())))?;
    // Each line: the texts to score and the keys to report them under.
    let mut lines: Vec<ScoreLine> = Vec::new();
    let max = args.args.max_length;
    for (i, line) in std::io::BufReader::new(f).split(b'\n').enumerate() {
        let line = line?;
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let at = |e: String| BadInput(format!("{}:{}: {e}", args.file.display(), i + 1));
        let v: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| at(format!("invalid JSON: {e}")))?;
        let id = v.get("id").cloned().unwrap_or(serde_json::Value::Null);
        let texts = match (v.get("prompt"), v.get("response")) {
            (Some(serde_json::Value::String(p)), Some(serde_json::Value::String(r))) => {
                vec![("reward", trainer.encoder.encode(p, r, max)?)]
            }
            _ => {
                let pair = parse_json_line(line).map_err(|e| at(e.to_string()))?;
                let (ka, kb) = if pair.label.is_some() {
                    ("chosen", "rejected")
                } else {
                    ("response_a", "response_b")
                };
                vec![
                    (
                        ka,
                        trainer
                            .encoder
                            .encode(&pair.prompt.text, &pair.response_a, max)?,
                    ),
                    (
                        kb,
                        trainer
                            .encoder
                            .encode(&pair.prompt.text, &pair.response_b, max)?,
                    ),
                ]
            }
        };
        lines.push((i + 1, id, texts));
    }
    let seqs: Vec<Vec<u32>> = lines
        .iter()
        .flat_map(|(_, _, t)| t.iter().map(|(_, ids)| ids.clone()))
        .collect();
    let rewards = trainer.score(&seqs, args.args.batch as usize * 2)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut k = 0;
    for (line, id, texts) in &lines {
        let mut obj = serde_json::Map::new();
        obj.insert("line".into(), serde_json::json!(line));
        if !id.is_null() {
            obj.insert("id".into(), id.clone());
        }
        for (key, _) in texts {
            obj.insert((*key).into(), serde_json::json!(rewards[k]));
            k += 1;
        }
        serde_json::to_writer(&mut out, &obj)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Milliseconds `f` takes, the median of 5 runs after 2 warm-ups.
fn median_ms(mut f: impl FnMut() -> candle_core::Result<()>) -> Result<f64> {
    let mut times = Vec::new();
    for i in 0..7 {
        let t = Instant::now();
        f()?;
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(1000.0 * median(times))
}

/// Training step and scoring speed at fixed lengths, like the PyTorch baseline:
/// 8 pairs (16 texts) padded to each length, median of 5 steps after 2 warm-ups;
/// scoring 64 texts at 128 tokens.
pub fn bench_train(dir: Option<&Path>, seqs: &[usize], json: bool) -> Result<ExitCode> {
    let dir = model_dir(dir)?;
    let demo = crate::commands::demo_examples()?;
    let mut out = serde_json::Map::new();
    let mut steps = serde_json::Map::new();
    for &seq in seqs {
        let mut trainer = load_model(
            &dir,
            TrainConfig {
                max_length: seq,
                lr: 2e-5,
                warmup_ratio: 0.0,
                ..Default::default()
            },
        )?;
        let mut data = trainer.encode(&demo[..8.min(demo.len())])?;
        for e in &mut data {
            e.chosen.resize(seq, trainer.encoder.pad_id());
            e.rejected.resize(seq, trainer.encoder.pad_id());
        }
        let batch: Vec<&Encoded> = data.iter().collect();
        let ms = median_ms(|| trainer.step(&batch).map(drop))?;
        // The same step with the products in bf16 (`--products bf16`), where the CPU
        // has them.
        trainer.config.products = Products::Bf16;
        let bf16_ms = median_ms(|| trainer.step(&batch).map(drop))?;
        trainer.config.products = Products::F32;
        steps.insert(
            seq.to_string(),
            serde_json::json!({"ms_per_step": ms, "pairs_per_s": 8.0 / (ms / 1000.0),
                "bf16_ms_per_step": bf16_ms, "bf16_pairs_per_s": 8.0 / (bf16_ms / 1000.0)}),
        );
        if seq == 128 {
            out.insert(
                "train_pairs_per_s".into(),
                serde_json::json!(8.0 / (ms / 1000.0)),
            );
            // The same pairs at different lengths, padded to the batch's longest with
            // the padding masked, as real training runs them (the masked attention is
            // where subnormal numbers once made steps many times slower).
            let mut natural = trainer.encode(&demo[..8.min(demo.len())])?;
            // Texts of 72 to 128 tokens, so that most of the batch is padded.
            for (i, e) in natural.iter_mut().enumerate() {
                e.chosen.truncate(seq - seq * i / 16);
                e.rejected.truncate(seq - seq * i / 32);
            }
            let batch: Vec<&Encoded> = natural.iter().collect();
            let longest = natural
                .iter()
                .map(|e| e.chosen.len().max(e.rejected.len()))
                .max()
                .unwrap_or(0);
            let ms = median_ms(|| trainer.step(&batch).map(drop))?;
            out.insert(
                "train_step_masked_padding".into(),
                serde_json::json!({"max_length": seq, "longest": longest, "ms_per_step": ms, "pairs_per_s": 8.0 / (ms / 1000.0)}),
            );
        }
    }
    // Scoring: 64 texts of 128 tokens.
    let trainer = load_model(
        &dir,
        TrainConfig {
            max_length: 128,
            ..Default::default()
        },
    )?;
    let data = trainer.encode(&demo)?;
    let mut texts: Vec<Vec<u32>> = data
        .iter()
        .flat_map(|e| [e.chosen.clone(), e.rejected.clone()])
        .cycle()
        .take(64)
        .collect();
    for t in &mut texts {
        t.resize(128, trainer.encoder.pad_id());
    }
    let refs: Vec<&[u32]> = texts.iter().map(Vec::as_slice).collect();
    let padded = crate::model::engine::Padded::new(&refs, trainer.encoder.pad_id());
    let ms = median_ms(|| trainer.model.rewards(&padded.batch()).map(drop))?;
    out.insert(
        "score_texts_per_s".into(),
        serde_json::json!(64.0 / (ms / 1000.0)),
    );
    out.insert("score_ms_per_64".into(), serde_json::json!(ms));
    // The background scorer's and review's scoring: bf16 products where the CPU
    // has them, else 8-bit integers where it has AVX2.
    let fast_ms = median_ms(|| trainer.model.rewards_fast(&padded.batch()).map(drop))?;
    out.insert(
        "score_fast_texts_per_s".into(),
        serde_json::json!(64.0 / (fast_ms / 1000.0)),
    );
    let products = fast_products();
    out.insert(
        "score_fast_bf16".into(),
        serde_json::json!(products == "bf16"),
    );
    out.insert("score_fast_products".into(), serde_json::json!(products));
    out.insert("train_step".into(), serde_json::Value::Object(steps));
    out.insert(
        "threads".into(),
        serde_json::json!(candle_core::utils::get_num_threads()),
    );
    let v = serde_json::Value::Object(out);
    if json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// `duel train --follow`: the live trainer without a terminal, for a team server.
fn follow(db: &Path, args: &TrainArgs) -> Result<ExitCode> {
    use crate::train::worker::{TrainerCommand, TrainerConfig, TrainerEvent, TrainerState, spawn};
    let base = model_dir(args.model_dir.as_deref())?;
    let store = open_existing(db)?;
    if !store.may_train()? {
        bail!(BadInput(format!(
            "{}: this role may not train (on PostgreSQL a member of duel_lead trains)",
            store.path().display()
        )));
    }
    let user = store
        .server_role()?
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "duel".into());
    drop(store);
    let out_dir = crate::store::model_dir_for(db);
    let h = spawn(TrainerConfig {
        db: db.to_owned(),
        base_dir: base,
        out_dir: out_dir.clone(),
        train: TrainConfig {
            lr: args.lr,
            batch_pairs: args.model.batch as usize,
            max_length: args.model.max_length,
            seed: args.seed,
            ..Default::default()
        },
        min_labels: 16,
        holdout: args.holdout,
        eval_every: 25,
        checkpoint_every: 100,
        score_queue: 128,
        passes: args.passes,
        holder: format!("{user} (train --follow)"),
        may_train: true,
    });
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = stop_tx.try_send(());
    })
    .context("installing the Ctrl-C handler")?;
    let say = |line: String| {
        tracing::info!("{line}");
        eprintln!("{line}");
    };
    say(format!(
        "following {}: checkpoints in {}; Ctrl-C stops",
        db.display(),
        out_dir.display()
    ));
    let mut failed = None;
    loop {
        crossbeam_channel::select! {
            recv(stop_rx) -> _ => {
                say("stopping: writing the checkpoint and handing the lease back".into());
                h.send(TrainerCommand::Stop);
                break;
            }
            recv(h.events) -> e => match e {
                Ok(TrainerEvent::State(TrainerState::Stopped)) | Err(_) => break,
                Ok(TrainerEvent::State(s)) => say(match s {
                    TrainerState::Following { holder, host } => format!(
                        "waiting: {holder}{} holds the training lease",
                        host.map_or(String::new(), |h| format!(" on {h}"))
                    ),
                    TrainerState::Waiting { have, need } => {
                        format!("waiting for labels ({have} of {need})")
                    }
                    TrainerState::CaughtUp { labels } => {
                        format!("caught up: {labels} labels trained on; waiting for more")
                    }
                    other => format!("{other:?}").to_lowercase(),
                }),
                Ok(TrainerEvent::Started { step, resumed_from }) => say(match resumed_from {
                    Some(p) => format!("training: resumed at step {step} from {}", p.display()),
                    None => "training from the base model".into(),
                }),
                Ok(TrainerEvent::Step { step, loss, labels_used, .. }) if step % 25 == 0 => say(
                    format!("step {step}: loss {loss:.4}, {labels_used} labels")
                ),
                Ok(TrainerEvent::Eval { step, accuracy, pairs, .. }) => say(format!(
                    "step {step}: held-out accuracy {:.1}% on {pairs} pairs",
                    100.0 * accuracy
                )),
                Ok(TrainerEvent::Checkpointed { step, .. }) => say(format!("checkpoint at step {step}")),
                Ok(TrainerEvent::Failed(msg)) => failed = Some(msg),
                Ok(_) => {}
            },
        }
    }
    // Waits for the last checkpoint and the lease to be handed back.
    let events = h.events.clone();
    h.stop();
    for e in events.try_iter() {
        if let TrainerEvent::Checkpointed { step, .. } = e {
            say(format!("checkpoint at step {step}"));
        }
    }
    say("stopped".into());
    match failed {
        Some(msg) => Err(anyhow::anyhow!("training stopped: {msg}")),
        None => Ok(ExitCode::SUCCESS),
    }
}
