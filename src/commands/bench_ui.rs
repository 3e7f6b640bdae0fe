//! `duel bench ui`: what the annotator waits for. The real labeler (`App` and its
//! event loop, drawing into an off-screen buffer) on a database of many pairs, with
//! the live trainer training and the generator feed generating beside it; keys are
//! sent as a person would send them and each is timed from the moment it is sent to
//! the end of the frame drawn after it. It also counts the pairs the trainer's
//! background scorer scored meanwhile.

use super::bench::{bench_pair, peak_rss_mb};
use crate::cli::GenOptions;
use crate::io::import::{ImportOptions, import_file};
use crate::store::{QueueOrder, Store};
use crate::tui;
use anyhow::{Context, Result};
use crossterm::event::{Event, KeyCode, KeyEvent, KeyModifiers};
use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one run measures.
pub(super) struct UiBench {
    pub pairs: u64,
    pub keys: usize,
    pub gap: Duration,
    pub train: bool,
    pub feed: bool,
    pub sampling: GenOptions,
    pub json: bool,
}

/// Which figure a key's latency goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    OneMegabytePair,
    OrdinaryPairs,
    Quit,
}

/// Percentiles of a set of latencies, in milliseconds.
fn summary(ms: &mut [f64]) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if ms.is_empty() {
            return f64::NAN;
        }
        ms[((ms.len() as f64 - 1.0) * q).round() as usize]
    };
    serde_json::json!({
        "keys": ms.len(),
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "max_ms": ms.last().copied().unwrap_or(f64::NAN),
    })
}

/// A database in `dir`: one pair with 1 MB responses (served first), 400 judged
/// pairs for the trainer, then `pairs` pairs to judge.
fn build_db(dir: &Path, pairs: u64) -> Result<std::path::PathBuf> {
    let db = dir.join("ui.db");
    let big = dir.join("big.jsonl");
    let line = "A line of a very long response, as a model that never stops writes it. ";
    let text = |tag: &str| {
        format!(
            "{tag}\n{}",
            line.repeat(1 << 20 >> 6).replace(". A", ".\nA")
        )
    };
    let rec = serde_json::json!({
        "id": "one-megabyte",
        "prompt": "Write as much as you can.",
        "response_a": text("A"),
        "response_b": text("B"),
    });
    std::fs::write(&big, format!("{rec}\n"))?;
    let judged = dir.join("judged.jsonl");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&judged)?);
    for i in 0..400u64 {
        let [_, prompt, a, b] = bench_pair(10_000_000 + i);
        let (chosen, rejected) = if i % 3 == 0 { (b, a) } else { (a, b) };
        let rec = serde_json::json!({"prompt": prompt, "chosen": chosen, "rejected": rejected});
        writeln!(w, "{rec}")?;
    }
    w.flush()?;
    drop(w);
    let many = dir.join("pairs.jsonl");
    super::bench::write_bench_file(&many, pairs, crate::cli::BenchFile::Jsonl)?;
    let mut store = Store::open(&db)?;
    for f in [&big, &judged, &many] {
        import_file(&mut store, f, &ImportOptions::default())
            .with_context(|| f.display().to_string())?;
    }
    std::fs::remove_file(many)?;
    Ok(db)
}

pub(super) fn bench_ui(b: UiBench) -> Result<ExitCode> {
    // As `duel label` does.
    crate::priority::background_compute_pool();
    let dir = tempfile::tempdir()?;
    eprintln!("building a database of {} pairs...", b.pairs);
    let db = build_db(dir.path(), b.pairs)?;
    let store = Store::open(&db)?;
    let may_train = store.may_train()?;
    let annotator = "bench".to_owned();
    let next_start = Instant::now();
    let mut app = tui::App::new(
        store,
        tui::Config {
            annotator: annotator.clone(),
            overlap: 1,
            always_strength: false,
            guidelines: super::DEFAULT_GUIDELINES.to_owned(),
            seed: Some(0),
            order: QueueOrder::Sequential,
            random_share: 0.2,
            show_model: false,
            gold_rate: 0.0,
        },
    )?;
    let first_pair_ms = next_start.elapsed().as_secs_f64() * 1e3;
    let first = app.current.as_ref().and_then(|c| c.pair.ext_id.as_deref());
    anyhow::ensure!(
        first == Some("one-megabyte"),
        "the labeler served {first:?} first, not the 1 MB pair"
    );
    let trainer = b.train.then(|| {
        let h = crate::train::worker::spawn(super::label::labeler_trainer(
            &db,
            crate::model::DEFAULT_ENCODER_DIR.into(),
            crate::train::TrainConfig::default(),
            16,
            crate::train::live::DEFAULT_PASSES,
            &annotator,
            may_train,
        ));
        app.attach_trainer(h.commands.clone());
        h
    });
    let feed = if b.feed {
        let prompts_file = dir.path().join("prompts.txt");
        let topics = ["the sea", "a city at night", "bread", "winter", "a bicycle"];
        let text: String = (0..50)
            .map(|i| format!("Write two sentences about {}.\n", topics[i % topics.len()]))
            .collect();
        std::fs::write(&prompts_file, text)?;
        let prompts =
            crate::generator::pairs::read_prompts(&prompts_file).map_err(|e| anyhow::anyhow!(e))?;
        let plan = b.sampling.plan();
        plan.validate().map_err(|e| anyhow::anyhow!(e))?;
        let generator = super::generate::existing_generator(b.sampling.generator.as_deref())?;
        let h = crate::generator::feed::spawn(crate::generator::feed::FeedConfig {
            db: db.clone(),
            generator,
            prompts,
            plan,
            // Always below it: the feed generates for the whole run.
            low_water: i64::MAX,
        });
        app.attach_feed(h.commands.clone());
        Some(h)
    } else {
        None
    };

    // The keys and when each was sent; the loop's `drew` takes the oldest sent key
    // off for each frame drawn after input.
    let (tx, rx) = crossbeam_channel::unbounded::<Event>();
    let sent: Arc<Mutex<VecDeque<(Instant, Phase)>>> = Arc::default();
    let mut big = Vec::new();
    let mut ordinary = Vec::new();
    let key = |c: KeyCode| Event::Key(KeyEvent::new(c, KeyModifiers::NONE));
    let scroll = b.keys.min(100);
    let mut script: Vec<(Event, Phase)> = Vec::new();
    // On the 1 MB pair: scroll down and up through it, swap panes, then judge it.
    for i in 0..scroll {
        let c = match i % 4 {
            0 | 1 => KeyCode::PageDown,
            2 => KeyCode::Tab,
            _ => KeyCode::Down,
        };
        script.push((key(c), Phase::OneMegabytePair));
    }
    script.push((key(KeyCode::Char('1')), Phase::OneMegabytePair));
    // Then judge ordinary pairs, one key each, now and then looking further down.
    for i in 0..b.keys {
        let c = match i % 5 {
            4 => KeyCode::Down,
            n if n % 2 == 0 => KeyCode::Char('1'),
            _ => KeyCode::Char('2'),
        };
        script.push((key(c), Phase::OrdinaryPairs));
    }
    script.push((key(KeyCode::Char('q')), Phase::Quit));

    let (trainer_events, feed_events) = (
        trainer.as_ref().map(|h| h.events.clone()),
        feed.as_ref().map(|h| h.events.clone()),
    );
    let (done_tx, done_rx) = crossbeam_channel::unbounded::<()>();
    let sender = {
        let sent = sent.clone();
        let gap = b.gap;
        std::thread::spawn(move || {
            // Give the trainer time to load and start training first.
            std::thread::sleep(Duration::from_secs(3));
            for (ev, phase) in script {
                sent.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push_back((Instant::now(), phase));
                if tx.send(ev).is_err() {
                    break;
                }
                // Wait for its frame (or give up waiting after a second), then the gap.
                let _ = done_rx.recv_timeout(Duration::from_secs(1));
                std::thread::sleep(gap);
            }
        })
    };
    let backend = ratatui::backend::TestBackend::new(160, 48);
    let mut terminal = ratatui::Terminal::new(backend)?;
    let run_start = Instant::now();
    tui::event_loop(
        &mut terminal,
        &mut app,
        rx,
        trainer_events,
        feed_events,
        |after_input| {
            if !after_input {
                return;
            }
            let front = sent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop_front();
            if let Some((at, phase)) = front {
                let ms = at.elapsed().as_secs_f64() * 1e3;
                match phase {
                    Phase::OneMegabytePair => big.push(ms),
                    Phase::OrdinaryPairs => ordinary.push(ms),
                    Phase::Quit => {}
                }
                let _ = done_tx.send(());
            }
        },
    )?;
    let seconds = run_start.elapsed().as_secs_f64();
    let _ = sender.join();
    if let Some(h) = feed {
        h.stop();
    }
    app.release();
    let trained = trainer.map(|h| {
        let events = h.events.clone();
        h.stop();
        for e in events.try_iter() {
            app.update(tui::Action::Trainer(e));
        }
        // The last step the trainer reported a loss at.
        app.train.losses.last().map(|&(step, _)| step)
    });
    // What the trainer's background scorer got through meanwhile (it scores the
    // queue for `--order uncertain` and `--show-model`).
    let scored = Store::open(&db)?.pair_scores()?.len();
    let result = serde_json::json!({
        "pairs": b.pairs,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "trainer": b.train,
        "trainer_steps": trained,
        "feed": b.feed,
        "first_pair_ms": first_pair_ms,
        "one_megabyte_pair": summary(&mut big),
        "ordinary_pairs": summary(&mut ordinary),
        "judgements": app.session_labels,
        "pairs_scored": scored,
        "pairs_scored_per_min": scored as f64 / seconds * 60.0,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
    });
    if b.json {
        println!("{result}");
    } else {
        println!("{}", serde_json::to_string_pretty(&result)?);
    }
    Ok(ExitCode::SUCCESS)
}
