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
