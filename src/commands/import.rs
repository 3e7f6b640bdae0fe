//! `duel import`: a file of pairs into the database, one transaction per file.

use super::{EXIT_BAD_INPUT, open};
use crate::cli::ImportArgs;
use crate::io::import::{ImportError, ImportOptions, import_file};
use anyhow::{Context, Result};
use std::path::Path;
use std::process::ExitCode;

pub(super) fn import(db: &Path, args: ImportArgs) -> Result<ExitCode> {
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
