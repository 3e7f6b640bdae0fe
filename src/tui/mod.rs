//! The labeling TUI: app state and update, input and event loop, views.

pub mod app;
pub mod diff;
pub mod keys;
pub mod sanitize;
pub mod text;
pub mod training;
pub mod view;

pub use app::{Action, App, Config};

use crossbeam_channel::{Receiver, select, tick, unbounded};
use crossterm::event::{self, DisableMouseCapture, EnableMouseCapture, Event};
use crossterm::execute;
use std::time::Duration;

/// Everything the main loop reacts to.
#[derive(Debug)]
pub enum AppEvent {
    Input(Event),
    Trainer(crate::train::messages::TrainerEvent),
    Feed(crate::generator::feed::FeedEvent),
    Tick,
}

/// Reads terminal input on its own thread; stops when the receiver is gone.
fn spawn_input() -> Receiver<Event> {
    let (tx, rx) = unbounded();
    std::thread::Builder::new()
        .name("input".into())
        .spawn(move || {
            while let Ok(ev) = event::read() {
                if tx.send(ev).is_err() {
                    break;
                }
            }
        })
        .ok();
    rx
}

/// Gives the terminal back as it was: mouse reports off, the main screen, cooked
/// mode. Safe to run twice.
fn restore_terminal() {
    let _ = execute!(std::io::stdout(), DisableMouseCapture);
    ratatui::restore();
}

/// Restores the terminal however `run` ends.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        restore_terminal();
        crate::contain::ui_ended();
    }
}

/// Drives the labeler with `keys` and no terminal (`duel label --script`). Each
/// judgement is written to `out` as a JSON line once it is committed:
/// `{"label_id", "pair_id"}`; an undo as `{"undone": label_id}`. Stops at
/// the end of the keys or at `q`.
pub fn run_script(
    app: &mut App,
    keys: &[crossterm::event::KeyEvent],
    mut out: impl std::io::Write,
) -> anyhow::Result<()> {
    for k in keys {
        let Some(action) = keys::key(k, &app.mode) else {
            continue;
        };
        match app.update(action) {
            app::Outcome::Saved { label_id, pair_id } => {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"label_id": label_id, "pair_id": pair_id})
                )?;
                out.flush()?;
            }
            app::Outcome::Undone { label_id } => {
                writeln!(out, "{}", serde_json::json!({"undone": label_id}))?;
                out.flush()?;
            }
            app::Outcome::Nothing => {}
        }
        if app.should_quit {
            break;
        }
    }
    Ok(())
}

/// Runs the labeler in the terminal until the annotator quits. Trainer events, when
/// a trainer runs, arrive on `trainer`.
pub fn run(
    app: &mut App,
    mouse: bool,
    trainer: Option<Receiver<crate::train::messages::TrainerEvent>>,
    feed: Option<Receiver<crate::generator::feed::FeedEvent>>,
) -> anyhow::Result<()> {
    // Set up by hand rather than with `ratatui::init`, whose panic hook would
    // restore the terminal on a worker's panic too: only a panic on this thread
    // gives the terminal back (see `contain`).
    crate::contain::ui_started(restore_terminal);
    let _restore = Restore;
    crossterm::terminal::enable_raw_mode()?;
    execute!(std::io::stdout(), crossterm::terminal::EnterAlternateScreen)?;
    let mut terminal =
        ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;
    if mouse {
        execute!(std::io::stdout(), EnableMouseCapture)?;
    }
    let input = spawn_input();
    event_loop(&mut terminal, app, input, trainer, feed, |_| {})
}

/// The labeler's loop on any drawing backend: draw, wait for the next event (a key,
/// the trainer, the generator feed, a tick), update, until the annotator quits.
/// `drew` is called after each frame with whether the event before it was input
/// (`duel bench ui` times key-to-frame with it).
pub fn event_loop<B: ratatui::backend::Backend>(
    terminal: &mut ratatui::Terminal<B>,
    app: &mut App,
    input: Receiver<Event>,
    trainer: Option<Receiver<crate::train::messages::TrainerEvent>>,
    feed: Option<Receiver<crate::generator::feed::FeedEvent>>,
    mut drew: impl FnMut(bool),
) -> anyhow::Result<()>
where
    B::Error: Send + Sync + 'static,
{
    let size = terminal.size()?;
    app.update(Action::Resize {
        width: size.width,
        height: size.height,
    });
    let ticker = tick(Duration::from_millis(500));
    let mut trainer = trainer.unwrap_or_else(crossbeam_channel::never);
    let mut feed = feed.unwrap_or_else(crossbeam_channel::never);
    let mut cache = view::Cache::default();
    let mut after_input = false;
    loop {
        let mut drawn = app::Drawn::default();
        terminal.draw(|f| drawn = view::draw(app, f, &mut cache))?;
        app.drawn(drawn);
        drew(after_input);
        crate::contain::fault_point("ui");
        let ev = select! {
            recv(input) -> ev => match ev {
                Ok(ev) => AppEvent::Input(ev),
                Err(_) => break,
            },
            recv(trainer) -> ev => match ev {
                Ok(ev) => AppEvent::Trainer(ev),
                // The trainer is gone: keep labeling, and stop listening to it.
                Err(_) => {
                    trainer = crossbeam_channel::never();
                    AppEvent::Tick
                }
            },
            recv(feed) -> ev => match ev {
                Ok(ev) => AppEvent::Feed(ev),
                Err(_) => {
                    feed = crossbeam_channel::never();
                    AppEvent::Tick
                }
            },
            recv(ticker) -> _ => AppEvent::Tick,
        };
        after_input = matches!(ev, AppEvent::Input(_));
        match ev {
            AppEvent::Input(ev) => {
                if let Some(action) = keys::action(&ev, &app.mode) {
                    app.update(action);
                }
            }
            AppEvent::Trainer(ev) => {
                app.update(Action::Trainer(ev));
            }
            AppEvent::Feed(ev) => {
                app.update(Action::Feed(ev));
            }
            AppEvent::Tick => {
                app.update(Action::Tick);
            }
        }
        if app.should_quit {
            break;
        }
    }
    Ok(())
}
