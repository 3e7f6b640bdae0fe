//! `duel label`: the labeler, in a terminal or driven by a key script, with its trainer and generator feed.

use super::{BadInput, DEFAULT_GUIDELINES, generate, open_existing};
use crate::cli::LabelArgs;
use crate::tui;
use anyhow::{Result, bail};
use std::path::Path;
use std::process::ExitCode;

/// The live trainer a labeler starts (`duel bench ui` starts the same one).
pub(super) fn labeler_trainer(
    db: &Path,
    base_dir: std::path::PathBuf,
    train: crate::train::TrainConfig,
    min_labels: usize,
    passes: u32,
    annotator: &str,
    may_train: bool,
) -> crate::train::worker::TrainerConfig {
    crate::train::worker::TrainerConfig {
        db: db.to_owned(),
        base_dir,
        // The checkpoint folder belongs to the database: whichever process holds the
        // training lease writes it, and the next resumes from it.
        out_dir: crate::store::model_dir_for(db),
        train,
        min_labels,
        holdout: 0.15,
        eval_every: 25,
        checkpoint_every: 100,
        // One trainer serves every labeler on the database: it scores the queue for
        // the orders and `--show-model` of any of them.
        score_queue: 128,
        passes,
        holder: annotator.to_owned(),
        may_train,
    }
}

pub(super) fn label(db: &Path, args: LabelArgs) -> Result<ExitCode> {
    let guidelines = match &args.guidelines {
        Some(p) => {
            std::fs::read_to_string(p).map_err(|e| BadInput(format!("{}: {e}", p.display())))?
        }
        None => DEFAULT_GUIDELINES.to_owned(),
    };
    let store = open_existing(db)?;
    let annotator = super::annotator(&store, args.annotator.as_deref())?;
    let may_train = store.may_train()?;
    let app = tui::App::new(
        store,
        tui::Config {
            annotator: annotator.clone(),
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
    // The trainer's and scorer's products give way to the labeler's thread.
    crate::priority::background_compute_pool();
    let trainer = if args.no_train {
        None
    } else {
        let cfg = labeler_trainer(
            db,
            args.model_dir
                .clone()
                .unwrap_or_else(|| crate::model::DEFAULT_ENCODER_DIR.into()),
            crate::train::TrainConfig {
                lr: args.lr,
                max_length: args.max_length,
                ..Default::default()
            },
            args.min_labels as usize,
            args.passes,
            &annotator,
            may_train,
        );
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
