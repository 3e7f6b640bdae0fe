//! Worker threads are contained: a panic in the trainer or the generator feed is
//! caught at the thread's top, logged with its message and location, and reported
//! to the labeler as a failure like any other. It never reaches the terminal.
//!
//! The panic hook decides what a panic does before it unwinds. A hook that
//! restores the terminal on any panic, on any thread (ratatui's `init` installs
//! one), would leave the labeler drawing on a terminal no longer set up for it when
//! a worker panics. So the labeler sets the terminal up itself and registers its
//! restore here: the hook restores the terminal, then reports as before, only for a
//! panic on the thread that draws; a panic in a contained worker, or on any other
//! thread while the labeler runs, is only logged. That covers rayon's pool threads
//! too, whose panics reach the worker that called into the pool and are caught
//! there.

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::sync::{Mutex, PoisonError};
use std::thread::ThreadId;

thread_local! {
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
    static LAST: RefCell<Option<Panic>> = const { RefCell::new(None) };
}

/// The thread that draws the labeler and how to give the terminal back, while the
/// labeler runs.
static UI: Mutex<Option<Ui>> = Mutex::new(None);

/// The drawing thread and its terminal restore.
type Ui = (ThreadId, fn());

fn ui() -> Option<Ui> {
    *UI.lock().unwrap_or_else(PoisonError::into_inner)
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".into())
}

/// A caught panic: its message and, where the hook saw it, the source place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panic {
    pub message: String,
    pub place: Option<String>,
}

impl std::fmt::Display for Panic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.place {
            Some(place) => write!(f, "panicked at {place}: {}", self.message),
            None => write!(f, "panicked: {}", self.message),
        }
    }
}

fn describe(info: &PanicHookInfo<'_>) -> Panic {
    Panic {
        message: payload_text(info.payload()),
        place: info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column())),
    }
}

/// Whether a panic on this thread is kept from the previous hook.
fn contained_here() -> bool {
    if CONTAINED.with(Cell::get) {
        return true;
    }
    matches!(ui(), Some((t, _)) if t != std::thread::current().id())
}

/// Wraps the current panic hook as the module says. Call it once, at start.
pub fn install_hook() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if contained_here() {
            let panic = describe(info);
            let thread = std::thread::current();
            tracing::error!(thread = thread.name().unwrap_or("unnamed"), "{panic}");
            LAST.with(|l| *l.borrow_mut() = Some(panic));
        } else {
            if let Some((_, restore)) = ui() {
                restore();
            }
            prev(info);
        }
    }));
}

/// Marks the calling thread as the one that draws the labeler, with the function
/// that restores the terminal should this thread panic. Until `ui_ended`, panics
/// on other threads never touch the terminal.
pub fn ui_started(restore: fn()) {
    *UI.lock().unwrap_or_else(PoisonError::into_inner) =
        Some((std::thread::current().id(), restore));
}

/// The labeler has given the terminal back.
pub fn ui_ended() {
    *UI.lock().unwrap_or_else(PoisonError::into_inner) = None;
}

/// Runs `f` on this thread, contained: a panic becomes `Err` holding its message
/// and, where the hook saw it, its location.
pub fn run<T>(name: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    catch(f).map_err(|panic| format!("the {name} thread {panic}"))
}

/// Runs `f` contained, as `run` does, for code that may panic on what it reads (a
/// library decoding an untrusted file): `Err` holds the panic's message and place
/// (the place is logged too).
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Panic> {
    let was = CONTAINED.with(|c| c.replace(true));
    LAST.with(|l| l.borrow_mut().take());
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(was));
    result.map_err(|payload| {
        LAST.with(|l| l.borrow_mut().take())
            .unwrap_or_else(|| Panic {
                message: payload_text(payload.as_ref()),
                place: None,
            })
    })
}

/// A place where tests make a thread fail: `DUEL_FAULT=trainer` (or `feed`, `ui`,
/// several comma-separated) makes that worker panic when it starts, or the labeler
/// after its first frame, as a bug would.
/// A dozen lines of our own rather than a fault-injection crate: one variable, read
/// at two places, each once per worker.
#[track_caller]
pub fn fault_point(site: &str) {
    if let Ok(v) = std::env::var("DUEL_FAULT")
        && v.split(',').any(|s| s.trim() == site)
    {
        panic!("fault injected at `{site}` (DUEL_FAULT)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contained_panic_becomes_an_error_with_its_message_and_place() {
        install_hook();
        assert_eq!(run("worker", || 7), Ok(7));
        let line = line!() + 1;
        let err = run("worker", || -> i32 { panic!("bad {}", 42) }).expect_err("panicked");
        assert!(
            err.starts_with("the worker thread panicked at src/contain.rs:"),
            "{err}"
        );
        assert!(err.contains(&format!(":{line}:")), "{err}");
        assert!(err.ends_with("bad 42"), "{err}");
        // Containment ends with the call: a later panic is not caught by it.
        assert!(!CONTAINED.with(Cell::get));
    }
}
