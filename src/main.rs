use clap::{CommandFactory, FromArgMatches};
use duel::cli::Cli;
use duel::commands::{BadInput, EXIT_BAD_INPUT};
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: import frees on one thread what its parser
/// thread allocated, which glibc serialises on an arena lock (1.45x faster import,
/// measured), and training and scoring are as fast or faster.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    keep_freed_memory();
    duel::contain::install_hook();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // A team server's `pg_stat_activity` then says which command each connection is.
    if let Some(name) = matches.subcommand_name() {
        duel::store::set_application_name(&format!("duel {name}"));
    }
    set_compute_threads(cli.threads);
    init_logging(&cli.db);
    match duel::commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            if e.downcast_ref::<BadInput>().is_some() {
                ExitCode::from(EXIT_BAD_INPUT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Logs go to `<db>.log` (`<dbname>.log` for PostgreSQL), never to the terminal
/// (the TUI owns it); `RUST_LOG` sets the level.
fn init_logging(db: &std::path::Path) {
    let name = duel::store::log_path_for(db);
    let Ok(file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&name)
    else {
        return;
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
}

/// Tells rayon and candle how many threads to use, once, before any other thread
/// exists. Left unset, candle reads the CPU count from the OS on every matmul.
#[allow(unsafe_code)]
fn set_compute_threads(threads: Option<usize>) {
    let n = threads
        .or_else(|| {
            std::env::var("RAYON_NUM_THREADS")
                .ok()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    // SAFETY: called first thing in `main`, before any thread is spawned, so no other
    // thread can be reading the environment.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
}

/// Freed memory stays with the process: a training step frees and allocates the
/// same activations again, and returning them to the system made each step
/// page-fault and zero them afresh (a third of a step with glibc's malloc, measured;
/// about 10% with mimalloc's default purge delay).
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // `mi_option_purge_delay` in mimalloc v3's mimalloc.h (the crate has no constant
    // for it). Its default there is 1000 ms: an option that reads otherwise is not
    // that one, and is left alone.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: reads and sets an allocator option; called first thing in `main`,
    // before any thread exists.
    unsafe {
        if libmimalloc_sys::mi_option_get(PURGE_DELAY) == 1000 {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        }
    }
}
