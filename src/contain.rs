//! Worker threads are contained: a panic in the trainer or the generator feed is
//! caught at the thread's top, logged with its message and location, and reported
//! to the labeler as a failure like any other. It never reaches the terminal.
//!
//! The panic hook decides what a panic does before it unwinds. While the labeler
//! owns the terminal, ratatui's hook restores it on any panic, on any thread: a
//! worker's panic would leave the labeler drawing on a terminal that is no longer
//! set up for it. So the hook installed here hands a panic to the previous hook
//! (restore, then report) only on the thread that draws, or when no labeler runs
//! and the thread is not a contained worker; every other panic is only logged.
//! That covers rayon's pool threads too, whose panics reach the worker that called
//! into the pool and are caught there.

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::sync::OnceLock;
use std::thread::ThreadId;

thread_local! {
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
    static LAST: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The thread that draws the labeler, once it has started.
static UI_THREAD: OnceLock<ThreadId> = OnceLock::new();

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".into())
}

fn describe(info: &PanicHookInfo<'_>) -> String {
    let msg = payload_text(info.payload());
    match info.location() {
        Some(l) => format!(
            "panicked at {}:{}:{}: {msg}",
            l.file(),
            l.line(),
            l.column()
        ),
        None => format!("panicked: {msg}"),
    }
}

/// Whether a panic on this thread is kept from the previous hook.
fn contained_here() -> bool {
    if CONTAINED.with(Cell::get) {
        return true;
    }
    matches!(UI_THREAD.get(), Some(ui) if *ui != std::thread::current().id())
}

/// Wraps the current panic hook as the module says. Call it once at start, and
/// again after anything that installs a hook of its own (ratatui's `init`).
pub fn install_hook() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if contained_here() {
            let msg = describe(info);
            let thread = std::thread::current();
            tracing::error!(thread = thread.name().unwrap_or("unnamed"), "{msg}");
            LAST.with(|l| *l.borrow_mut() = Some(msg));
        } else {
            prev(info);
        }
    }));
}

/// Marks the calling thread as the one that draws the labeler: from now on, panics
/// elsewhere never touch the terminal.
pub fn mark_ui_thread() {
    let _ = UI_THREAD.set(std::thread::current().id());
}

/// Runs `f` on this thread, contained: a panic becomes `Err` holding its message
/// and, where the hook saw it, its location.
pub fn run<T>(name: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    let was = CONTAINED.with(|c| c.replace(true));
    LAST.with(|l| l.borrow_mut().take());
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(was));
    result.map_err(|payload| {
        let msg = LAST
            .with(|l| l.borrow_mut().take())
            .unwrap_or_else(|| format!("panicked: {}", payload_text(payload.as_ref())));
        format!("the {name} thread {msg}")
    })
}

/// A place where tests make a worker fail: `DUEL_FAULT=trainer` (or `feed`, or
/// both, comma-separated) makes that worker panic when it starts, as a bug would.
/// A dozen lines of our own rather than a fault-injection crate: one variable, read
/// at two places, each once per worker.
pub fn fault_point(site: &str) {
    if let Ok(v) = std::env::var("DUEL_FAULT")
        && v.split(',').any(|s| s.trim() == site)
    {
        panic!("fault injected at `{site}` (DUEL_FAULT)");
    }
}
