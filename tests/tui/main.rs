//! The labeler driven by key events, drawn on a `TestBackend`.

#[path = "../common/mod.rs"]
mod common;
mod failures;
mod judging;
mod queue;
mod review;
mod screen;
mod workers;

pub use common::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use duel::domain::{Choice, Side};
use duel::store::{LabelFilter, LabelRow, StoreError};
use duel::tui::app::{Action, Mode, Pane, Pick};
use duel::tui::{App, keys};

fn press(app: &mut App, code: KeyCode) {
    press_mod(app, code, KeyModifiers::NONE);
}

fn press_mod(app: &mut App, code: KeyCode, m: KeyModifiers) {
    let action = keys::key(&KeyEvent::new(code, m), &app.mode).expect("a bound key");
    app.update(action);
}

fn rows(app: &App, include_undone: bool) -> Vec<LabelRow> {
    let mut v = Vec::new();
    app.store
        .for_each_label::<StoreError>(
            &LabelFilter {
                include_undone,
                ..Default::default()
            },
            |r| {
                v.push(r);
                Ok(())
            },
        )
        .expect("read labels");
    v
}
