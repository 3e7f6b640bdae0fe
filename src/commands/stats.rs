//! `duel stats` and `duel report`: counts, agreement and training, as text, JSON or a page.

use super::open_existing;
use crate::cli::StatsArgs;
use crate::stats;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

pub(super) fn stats_cmd(db: &Path, args: StatsArgs) -> Result<ExitCode> {
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

pub(super) fn report_cmd(db: &Path, out: &Path) -> Result<ExitCode> {
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
