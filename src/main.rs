use clap::Parser;
use duel::cli::Cli;
use duel::commands::{BadInput, EXIT_BAD_INPUT};
use std::process::ExitCode;

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
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

/// Logs go to `<db>.log`, never to the terminal (the TUI owns it); `RUST_LOG` sets
/// the level.
fn init_logging(db: &std::path::Path) {
    let mut name = db.as_os_str().to_owned();
    name.push(".log");
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

/// glibc's malloc maps every tensor over 128 KiB fresh and unmaps it when freed, so
/// each training step page-faults and zeroes its activations again (a third of a
/// step, measured). Tensors up to 32 MiB come from the heap instead, and freed memory
/// stays with the process.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator thresholds; called before any thread
    // exists and before large allocations.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}
