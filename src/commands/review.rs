//! `duel review`: judgements to look at again, the model's disagreements or contested pairs.

use super::{BadInput, DEFAULT_GUIDELINES, model, open_existing};
use crate::tui;
use anyhow::Result;
use std::path::Path;
use std::process::ExitCode;

pub(super) fn review(db: &Path, args: crate::cli::ReviewArgs) -> Result<ExitCode> {
    let store = open_existing(db)?;
    let annotator = super::annotator(&store, args.annotator.as_deref())?;
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
            annotator,
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
