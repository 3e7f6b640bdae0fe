#![allow(dead_code)]

use duel::domain::Prompt;
use duel::store::{NewPair, Store};
use duel::tui::{App, Config};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn demo() -> PathBuf {
    repo().join("data/demo_pairs.jsonl")
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_duel"))
}

/// Runs `duel --db DB ARGS...` to the end.
pub fn duel(db: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin())
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("run duel")
}

pub fn config(annotator: &str) -> Config {
    Config {
        annotator: annotator.into(),
        overlap: 1,
        always_strength: false,
        guidelines: "Be kind.\nPrefer correct answers.".into(),
        seed: Some(7),
        order: duel::store::QueueOrder::Sequential,
        random_share: 0.2,
        show_model: false,
    }
}

pub fn store_with(pairs: &[(&str, &str, &str)]) -> Store {
    let mut s = Store::open_in_memory().expect("store");
    let v: Vec<NewPair> = pairs
        .iter()
        .map(|(p, a, b)| NewPair::new(Prompt::from_text((*p).into()), (*a).into(), (*b).into()))
        .collect();
    s.insert_pairs(&v).expect("insert");
    s
}

pub fn demo_store(path: &Path) -> Store {
    let mut s = Store::open(path).expect("store");
    duel::io::import::import_file(&mut s, &demo(), &Default::default()).expect("import demo");
    s
}

/// Draws the app on a test terminal and returns the screen as text lines.
pub fn render(app: &App, w: u16, h: u16) -> (Terminal<TestBackend>, String) {
    let mut t = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    t.draw(|f| duel::tui::view::draw(app, f)).expect("draw");
    let text = screen_text(&t);
    (t, text)
}

pub fn screen_text(t: &Terminal<TestBackend>) -> String {
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

/// A store with `n` pairs `(q{i}, a{i}, b{i})`, ids 1..=n.
pub fn numbered_store(n: usize) -> Store {
    let pairs: Vec<(String, String, String)> = (1..=n)
        .map(|i| (format!("q{i}"), format!("a{i}"), format!("b{i}")))
        .collect();
    let refs: Vec<(&str, &str, &str)> = pairs
        .iter()
        .map(|(p, a, b)| (p.as_str(), a.as_str(), b.as_str()))
        .collect();
    store_with(&refs)
}

/// Records a plain judgement (no side, strength, note or time) by `who`.
pub fn judge(store: &mut Store, pair_id: i64, who: &str, choice: duel::domain::Choice) -> i64 {
    store
        .record_label(&duel::domain::NewLabel::plain(pair_id, who, choice, "test"))
        .expect("label")
}
