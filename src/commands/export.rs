//! `duel export`: the labeled data in the formats the Hugging Face tools read.

use super::{BadInput, open_existing};
use crate::cli::ExportArgs;
use crate::io::export::{self, ExportError};
use crate::store::LabelFilter;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::ExitCode;

/// `2026-11-28` or an RFC 3339 time, as the store's UTC text form.
fn parse_since(s: &str) -> Result<String, BadInput> {
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

/// A temporary file in `path`'s folder, to be renamed to `path` once written whole.
fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))
}

/// Writes `text` to `path` through a temporary file renamed into place.
fn write_atomic(path: &Path, text: &[u8]) -> Result<()> {
    let mut tmp = temp_beside(path)?;
    std::io::Write::write_all(&mut tmp, text)
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// What a row of `format` holds, for the dataset card.
fn columns(format: export::ExportFormat) -> &'static str {
    use export::ExportFormat as F;
    match format {
        F::Trl | F::Parquet => {
            "`prompt`, `chosen`, `rejected` (and `margin` where a judgement had a strength)"
        }
        F::TrlConversational => {
            "`prompt` as a list of messages, `chosen` and `rejected` as assistant turns"
        }
        F::Kto => "`prompt`, `completion` and `label` (true: desirable)",
        F::Csv => {
            "`prompt`, `chosen`, `rejected`, `margin`, `annotator`, `pair_id`, `id`, `created_at`, `votes`"
        }
        F::Raw => "every judgement as recorded, undone ones included",
        F::Pairs => "every pair as `duel import` reads it, judged or not",
    }
}

pub(super) fn export_cmd(db: &Path, args: ExportArgs) -> Result<ExitCode> {
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
            std::io::stdout(),
        )?,
        Some(path) => {
            let mut tmp = temp_beside(path)?;
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
            | export::ExportFormat::Parquet
            | export::ExportFormat::Kto
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
    if let Some(card_path) = &args.card {
        let stats = crate::stats::compute(&store)?;
        let format = format!("{:?}", args.format);
        let format = clap::ValueEnum::to_possible_value(&args.format)
            .map(|v| v.get_name().to_owned())
            .unwrap_or(format);
        let rule = clap::ValueEnum::to_possible_value(&args.consensus)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default();
        // The data file as the card's folder sees it: its name, when beside it.
        let data_file = args
            .out
            .as_deref()
            .filter(|out| folder_of(out) == folder_of(card_path))
            .and_then(|out| out.file_name()?.to_str());
        let card = crate::cards::DatasetCard {
            stats: &stats,
            format: &format,
            columns: columns(args.format),
            rule: &rule,
            rows: report.rows,
            data_file,
        }
        .render();
        write_atomic(card_path, card.as_bytes())?;
        eprintln!("dataset card written to {}", card_path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The folder a file is (or will be) in, resolved.
fn folder_of(file: &Path) -> Option<std::path::PathBuf> {
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty());
    std::fs::canonicalize(dir.unwrap_or(Path::new("."))).ok()
}
