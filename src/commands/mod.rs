//! What each subcommand does, for the thin binary.

mod generate;
mod learn;
mod live;
mod model;

use crate::cli::{BenchCommand, Cli, Command, ExportArgs, ImportArgs, LabelArgs, StatsArgs};
use crate::io::export::{self, ExportError};
use crate::io::import::{ImportError, ImportOptions, import_file};
use crate::store::{LabelFilter, QueueOrder, QueueWalk, Store};
use crate::{stats, tui};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Exit status for bad input (a file, a record, an argument), as opposed to 1 for
/// the program's own failures.
pub const EXIT_BAD_INPUT: u8 = 2;

/// An error the user caused and can fix; exits with status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

pub const DEFAULT_GUIDELINES: &str = include_str!("../../assets/guidelines.md");

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Import(args) => import(&cli.db, args),
        Command::Label(args) => label(&cli.db, args),
        Command::Export(args) => export_cmd(&cli.db, args),
        Command::Stats(args) => stats_cmd(&cli.db, args),
        Command::Generate(args) => generate::generate(&cli.db, args),
        Command::Review(args) => review(&cli.db, args),
        Command::Report { out } => report_cmd(&cli.db, &out),
        Command::Train(args) => model::train(&cli.db, args),
        Command::Eval(args) => model::eval(args),
        Command::Score(args) => model::score(args),
        Command::Bench { what } => match what {
            BenchCommand::Import { pairs, json } => bench_import(pairs, json),
            BenchCommand::Learn(args) => learn::bench_learn(args),
            BenchCommand::Live(args) => live::bench_live(args),
            BenchCommand::Train {
                model_dir,
                seq,
                json,
            } => model::bench_train(model_dir.as_deref(), &seq, json),
            BenchCommand::Generate {
                generator,
                new_tokens,
                data,
                json,
            } => generate::bench_generate(generator.as_deref(), new_tokens, data.as_deref(), json),
        },
    }
}

pub(crate) fn open(db: &Path) -> Result<Store> {
    Store::open(db).map_err(|e| BadInput(e.to_string()).into())
}

/// Opens a database that must exist already: commands that read labels never
/// create an empty one from a mistyped name.
pub(crate) fn open_existing(db: &Path) -> Result<Store> {
    if !db.exists() {
        bail!(BadInput(format!(
            "{}: no such database (create one with `duel import FILE` or `duel generate PROMPTS`)",
            db.display()
        )));
    }
    open(db)
}

fn import(db: &Path, args: ImportArgs) -> Result<ExitCode> {
    let mut store = open(db)?;
    let opts = ImportOptions {
        format: args.format,
        skip_invalid: args.skip_invalid,
        max_record_bytes: args.max_record_bytes,
        gold: args.gold,
        ..Default::default()
    };
    let mut failed = false;
    for file in &args.files {
        match import_file(&mut store, file, &opts) {
            Ok(r) => {
                for s in &r.skipped {
                    eprintln!("skipped {s}");
                }
                for s in &r.not_pairs {
                    eprintln!("warning: {s} (not a pair to judge; skipped)");
                }
                eprintln!(
                    "{}: {} records, {} new {}pairs ({} with a label), {} already present, \
                     {} not a pair, {} skipped",
                    file.display(),
                    r.records,
                    r.inserted,
                    if args.gold { "gold " } else { "" },
                    r.labeled,
                    r.duplicates,
                    r.not_pairs.len(),
                    r.skipped.len()
                );
            }
            Err(e) if e.is_bad_input() => {
                eprintln!("error: {e}");
                failed = true;
            }
            Err(ImportError::Store(e)) => {
                return Err(e).with_context(|| format!("importing {}", file.display()));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(if failed {
        ExitCode::from(EXIT_BAD_INPUT)
    } else {
        ExitCode::SUCCESS
    })
}

fn label(db: &Path, args: LabelArgs) -> Result<ExitCode> {
    let guidelines = match &args.guidelines {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| BadInput(format!("{}: {e}", p.display())))?
        }
        None => DEFAULT_GUIDELINES.to_owned(),
    };
    if args.annotator.trim().is_empty() {
        bail!(BadInput("--annotator must not be empty".into()));
    }
    let store = open_existing(db)?;
    let app = tui::App::new(
        store,
        tui::Config {
            annotator: args.annotator.clone(),
            overlap: args.overlap,
            always_strength: args.strength,
            guidelines,
            seed: args.order_seed,
            order: args.order,
            random_share: args.random_share.clamp(0.0, 1.0),
            show_model: args.show_model,
            gold_rate: args.gold_rate.clamp(0.0, 1.0),
        },
    )?;
    tracing::info!(annotator = %app.config.annotator, "labeling started");
    let mut app = app;
    if let Some(script) = &args.script {
        let text = match script.strip_prefix('@') {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|e| BadInput(format!("{path}: {e}")))?
            }
            None => script.clone(),
        };
        let keys =
            tui::keys::parse_script(text.trim_end_matches(['\n', '\r'])).map_err(BadInput)?;
        let result = tui::run_script(&mut app, &keys, std::io::stdout().lock());
        app.release();
        result?;
        eprintln!(
            "{} judgements this session, all saved in {}",
            app.session_labels,
            db.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let trainer = if args.no_train {
        None
    } else {
        let cfg = crate::train::worker::WorkerConfig {
            db: db.to_owned(),
            base_dir: args
                .model_dir
                .clone()
                .unwrap_or_else(|| crate::model::DEFAULT_ENCODER_DIR.into()),
            // The checkpoint folder belongs to the database: whichever process
            // holds the training lease writes it, and the next resumes from it.
            out_dir: db.with_extension("model"),
            train: crate::train::TrainConfig {
                lr: args.lr,
                max_length: args.max_length,
                ..Default::default()
            },
            min_labels: args.min_labels as usize,
            holdout: 0.15,
            eval_every: 25,
            checkpoint_every: 100,
            // One trainer serves every labeler on the database: it scores the queue
            // for the orders and `--show-model` of any of them.
            score_queue: 128,
            passes: args.passes,
            holder: args.annotator.clone(),
        };
        let h = crate::train::worker::spawn(cfg);
        app.attach_trainer(h.commands.clone());
        Some(h)
    };
    let feed = match &args.prompts {
        Some(path) => {
            let plan = args.sampling.plan();
            plan.validate().map_err(BadInput)?;
            let prompts = crate::generator::pairs::read_prompts(path).map_err(BadInput)?;
            let generator = generate::generator_path(args.sampling.generator.as_deref());
            if !generator.exists() {
                bail!(BadInput(format!(
                    "{}: no such generator model",
                    generator.display()
                )));
            }
            let h = crate::generator::feed::spawn(crate::generator::feed::FeedConfig {
                db: db.to_owned(),
                generator,
                prompts,
                plan,
                low_water: args.low_water,
            });
            app.attach_feed(h.commands.clone());
            Some(h)
        }
        None => None,
    };
    let result = tui::run(
        &mut app,
        !args.no_mouse,
        trainer.as_ref().map(|h| h.events.clone()),
        feed.as_ref().map(|h| h.events.clone()),
    );
    if let Some(h) = feed {
        h.stop();
    }
    app.release();
    if let Some(h) = trainer {
        eprintln!("stopping the trainer (it saves the model)...");
        let events = h.events.clone();
        h.stop();
        // Record what it said while stopping (its last checkpoint).
        for e in events.try_iter() {
            app.update(tui::Action::Trainer(e));
        }
    }
    result?;
    let judged = app.session_labels;
    eprintln!(
        "{judged} judgements this session, all saved in {}",
        db.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `2026-11-28` or an RFC 3339 time, as the store's UTC text form.
pub fn parse_since(s: &str) -> Result<String, BadInput> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(format!("{}T00:00:00.000Z", d.format("%Y-%m-%d")));
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%S%.3fZ")
            .to_string());
    }
    Err(BadInput(format!(
        "--since {s:?}: expected a date (2026-11-28) or an RFC 3339 time (2026-11-28T14:00:00Z)"
    )))
}

fn export_cmd(db: &Path, args: ExportArgs) -> Result<ExitCode> {
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let store = open_existing(db)?;
    let filter = LabelFilter {
        annotator: args.annotator,
        since,
        include_undone: false,
        include_gold: false,
    };
    let report = match &args.out {
        None => export::export(
            &store,
            args.format,
            &filter,
            args.consensus,
            std::io::stdout().lock(),
        )?,
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut tmp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("creating a file in {}", dir.display()))?;
            let report = export::export(&store, args.format, &filter, args.consensus, &mut tmp)?;
            tmp.as_file().sync_all().map_err(ExportError::from)?;
            tmp.persist(path)
                .with_context(|| format!("writing {}", path.display()))?;
            report
        }
    };
    eprintln!("{} rows exported", report.rows);
    let consensus = matches!(
        args.format,
        export::ExportFormat::Trl
            | export::ExportFormat::TrlConversational
            | export::ExportFormat::Csv
    ) && args.consensus != crate::consensus::Rule::All;
    if consensus {
        eprintln!(
            "{} pairs agreed, {} adjudicated, {} contested and left out ({} rule)",
            report.agreed,
            report.adjudicated,
            report.contested,
            format!("{:?}", args.consensus).to_lowercase()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn stats_cmd(db: &Path, args: StatsArgs) -> Result<ExitCode> {
    let store = open_existing(db)?;
    let mut s = stats::compute(&store)?;
    stats::flag_gold(&mut s, args.gold_min);
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &s)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", stats::render(&s))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn review(db: &Path, args: crate::cli::ReviewArgs) -> Result<ExitCode> {
    let store = open_existing(db)?;
    if let Some(dir) = &args.model {
        let dir = &model::model_dir(Some(dir))?;
        let trainer = model::load_model(
            dir,
            crate::train::TrainConfig {
                max_length: args.max_length,
                ..Default::default()
            },
        )?;
        let step = crate::model::checkpoint::meta(dir)
            .and_then(|m| m["step"].as_u64())
            .unwrap_or(0);
        let rows = store.decisively_judged_pairs()?;
        eprintln!(
            "scoring {} judged pairs with {}...",
            rows.len(),
            dir.display()
        );
        crate::train::score_pairs_into(&trainer, &store, &rows, step)?;
    }
    let items = if args.contested {
        store.contested_candidates(args.limit)?
    } else {
        store.review_candidates(args.of.as_deref(), args.limit)?
    };
    if items.is_empty() && args.contested {
        eprintln!("nothing to review: no pair has judgements that disagree and no adjudication");
        return Ok(ExitCode::SUCCESS);
    }
    if items.is_empty() {
        eprintln!(
            "nothing to review: the model disagrees with no judgement it has a prediction for \
             (predictions come from --model DIR, or from the live trainer with label --order uncertain or --show-model)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let n = items.len();
    let mut app = tui::App::new(
        store,
        tui::Config {
            annotator: args.annotator,
            overlap: u32::MAX,
            always_strength: false,
            guidelines: DEFAULT_GUIDELINES.to_owned(),
            seed: None,
            order: crate::store::QueueOrder::Sequential,
            random_share: 0.0,
            show_model: false,
            gold_rate: 0.0,
        },
    )?;
    app.start_review(items);
    let result = match &args.script {
        Some(script) => {
            let keys = tui::keys::parse_script(script).map_err(BadInput)?;
            tui::run_script(&mut app, &keys, std::io::stdout().lock())
        }
        None => tui::run(&mut app, !args.no_mouse, None, None),
    };
    app.release();
    result?;
    if args.contested {
        eprintln!("{} of {n} contested pairs adjudicated", app.session_labels);
    } else {
        eprintln!("{} of {n} judgements relabeled", app.session_labels);
    }
    Ok(ExitCode::SUCCESS)
}

fn report_cmd(db: &Path, out: &Path) -> Result<ExitCode> {
    let store = open_existing(db)?;
    let mut s = stats::compute(&store)?;
    stats::flag_gold(&mut s, stats::DEFAULT_GOLD_MIN);
    let files = crate::report::build(&store, &s)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, text) in files {
        let path = out.join(name);
        // Each file whole or not at all.
        let mut tmp = tempfile::NamedTempFile::new_in(out)?;
        tmp.write_all(text.as_bytes())?;
        tmp.persist(&path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("report written to {}", out.join("index.html").display());
    Ok(ExitCode::SUCCESS)
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn bench_import(pairs: u64, json: bool) -> Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("pairs.jsonl");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file)?);
        for i in 0..pairs {
            // Realistic shapes: a prompt shared by a few pairs, responses of a few
            // hundred bytes with escapes and non-ASCII text.
            let rec = serde_json::json!({
                "id": format!("bench-{i}"),
                "prompt": format!("Question {}: explain how a heat pump moves heat from a cold place to a warm one, in plain words.", i / 4),
                "response_a": format!("Answer {i}. A heat pump uses a refrigerant that evaporates at low temperature, absorbing heat outside; a compressor raises its pressure and temperature, and it releases that heat indoors as it condenses. \"Efficiency\" is measured as COP — often 3 or more.\n"),
                "response_b": format!("Reply {i}: it works like a fridge in reverse. It pulls warmth from outdoor air (even at −10 °C) and pumps it inside; the electricity runs the compressor, not a heater.\n"),
            });
            serde_json::to_writer(&mut w, &rec)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    let bytes = std::fs::metadata(&file)?.len();
    // Parsing alone (one thread), to see how the time splits.
    let parse_start = std::time::Instant::now();
    {
        use std::io::BufRead;
        let r = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&file)?);
        for line in r.split(b'\n') {
            let p =
                crate::io::import::parse_json_line(&line?).map_err(|e| anyhow::anyhow!("{e}"))?;
            std::hint::black_box(crate::store::PairDigests::of(&p));
        }
    }
    let parse_secs = parse_start.elapsed().as_secs_f64();
    let mut store = Store::open(&dir.path().join("bench.db"))?;
    let start = std::time::Instant::now();
    let report = import_file(&mut store, &file, &ImportOptions::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secs = start.elapsed().as_secs_f64();
    // What a labeler waits for between two pairs at this size: a claim in each order.
    let mut claim_ms = serde_json::Map::new();
    for order in [
        QueueOrder::Sequential,
        QueueOrder::Random,
        QueueOrder::Uncertain,
        QueueOrder::Disagreement,
    ] {
        let ms = median_claim_ms(&mut store, &format!("bench-{}", order.as_str()), 1, order)?;
        claim_ms.insert(order.as_str().into(), serde_json::json!(ms));
    }
    // The disagreement order goes over judged pairs: judge up to 100,000 (once each,
    // half A and half B), then claim with overlap 2 as a second annotator would.
    let judged = store.judge_for_bench()?;
    let ms = median_claim_ms(&mut store, "bench-second", 2, QueueOrder::Disagreement)?;
    claim_ms.insert(
        format!("disagreement, {judged} judged, overlap 2"),
        serde_json::json!(ms),
    );
    let result = serde_json::json!({
        "pairs": report.inserted,
        "claim_ms": claim_ms,
        "file_mb": bytes as f64 / 1e6,
        "seconds": secs,
        "import_pairs_per_s": report.inserted as f64 / secs,
        "peak_rss_mb": peak_rss_mb(),
        "parse_only_pairs_per_s": pairs as f64 / parse_secs,
    });
    if json {
        println!("{result}");
    } else {
        println!(
            "imported {} pairs ({:.0} MB) in {:.2} s: {:.0} pairs/s, peak RSS {:.0} MB",
            report.inserted,
            bytes as f64 / 1e6,
            secs,
            report.inserted as f64 / secs,
            peak_rss_mb().unwrap_or(f64::NAN)
        );
        println!("next pair (median ms a claim): {}", result["claim_ms"]);
    }
    Ok(ExitCode::SUCCESS)
}

/// The median of 9 claims by `annotator` in `order`, in milliseconds, each one
/// judging the pair before (as a labeler does) so that the walk goes on.
fn median_claim_ms(
    store: &mut Store,
    annotator: &str,
    overlap: u32,
    order: QueueOrder,
) -> Result<f64> {
    let none = std::collections::HashSet::new();
    let mut times = Vec::new();
    let mut walk = QueueWalk::new(7);
    for _ in 0..9 {
        let t = std::time::Instant::now();
        let id =
            store.claim_next_in_order(annotator, annotator, overlap, &none, order, &mut walk)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let Some(id) = id else { break };
        store.record_label(&crate::domain::NewLabel::plain(
            id,
            annotator,
            crate::domain::Choice::A,
            "bench",
        ))?;
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The bundled demo pairs as examples (response A as the chosen one), for benches.
pub(crate) fn demo_examples() -> Result<Vec<crate::train::Example>> {
    include_str!("../../data/demo_pairs.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let p = crate::io::import::parse_json_line(l.as_bytes())
                .map_err(|e| anyhow::anyhow!("demo pairs: {e}"))?;
            Ok(crate::train::Example {
                prompt: p.prompt.text,
                chosen: p.response_a,
                rejected: p.response_b,
                margin: None,
            })
        })
        .collect()
}
