//! What each subcommand does, for the thin binary.

mod bench;
mod bench_ui;
mod export;
mod generate;
mod import;
mod label;
mod learn;
mod live;
mod model;
mod review;
mod stats;

use crate::cli::{BenchCommand, Cli, Command};
use crate::store::Store;
use anyhow::{Result, bail};
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
        Command::Import(args) => import::import(&cli.db, args),
        Command::Label(args) => label::label(&cli.db, args),
        Command::Export(args) => export::export_cmd(&cli.db, args),
        Command::Stats(args) => stats::stats_cmd(&cli.db, args),
        Command::Generate(args) => generate::generate(&cli.db, args),
        Command::Review(args) => review::review(&cli.db, args),
        Command::Report { out } => stats::report_cmd(&cli.db, &out),
        Command::Migrate => migrate(&cli.db),
        Command::Train(args) => model::train(&cli.db, args),
        Command::Eval(args) => model::eval(args),
        Command::Score(args) => model::score(args),
        Command::Bench { what } => match what {
            BenchCommand::Import {
                pairs,
                format,
                json,
            } => bench::bench_import(pairs, format, json, &cli.db),
            BenchCommand::Ui {
                pairs,
                keys,
                gap_ms,
                no_train,
                no_feed,
                sampling,
                json,
            } => bench_ui::bench_ui(bench_ui::UiBench {
                pairs,
                keys,
                gap: std::time::Duration::from_millis(gap_ms),
                train: !no_train,
                feed: !no_feed,
                sampling,
                json,
            }),
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
    if !crate::store::is_postgres_url(db) && !db.exists() {
        bail!(BadInput(format!(
            "{}: no such database (create one with `duel import FILE` or `duel generate PROMPTS`)",
            db.display()
        )));
    }
    open(db)
}

/// Who judges: on PostgreSQL the role that connected (`--annotator` may only name
/// it); on SQLite `--annotator`, else `$USER`.
pub(crate) fn annotator(store: &Store, given: Option<&str>) -> Result<String> {
    let given = given.map(str::trim);
    if given == Some("") {
        bail!(BadInput("--annotator must not be empty".into()));
    }
    if let Some(role) = store.server_role()? {
        if let Some(g) = given
            && g != role
        {
            bail!(BadInput(format!(
                "{}: you are connected as {role:?}, and on PostgreSQL the annotator is the role \
                 that connected: --annotator can only be {role:?}",
                store.path().display()
            )));
        }
        return Ok(role);
    }
    Ok(given
        .map(str::to_owned)
        .or_else(|| std::env::var("USER").ok().filter(|u| !u.trim().is_empty()))
        .unwrap_or_else(|| "annotator".into()))
}

/// `duel migrate`: creates or upgrades the schema, and says which version it is.
fn migrate(db: &Path) -> Result<ExitCode> {
    let store = open(db)?;
    let (found, known) = store.schema_versions()?;
    let link = match (store.is_postgres(), store.encrypted()?) {
        (false, _) => "",
        (true, true) => ", connected over TLS",
        (true, false) => ", connected without encryption",
    };
    println!(
        "{}: schema version {found} (this duel writes version {known}){link}",
        store.path().display()
    );
    Ok(ExitCode::SUCCESS)
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
