//! The labeler in a real pseudo-terminal, read back through a terminal emulator:
//! what an annotator sees when a worker thread fails. A panic in the trainer or the
//! generator feed (injected with `DUEL_FAULT`, as a bug would panic) and a model
//! folder that cannot be used each leave the screen as it was, say why in the
//! header, and the next judgement is saved.

mod common;

use common::*;
use portable_pty::{Child, CommandBuilder, MasterPty, PtySize, native_pty_system};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROWS: u16 = 40;
const COLS: u16 = 140;

/// `duel` running in a pseudo-terminal; its output feeds a VT100 emulator.
struct Term {
    screen: Arc<Mutex<vt100::Parser>>,
    keys: Box<dyn Write + Send>,
    child: Box<dyn Child + Send + Sync>,
    _master: Box<dyn MasterPty + Send>,
}

impl Term {
    fn spawn(db: &Path, args: &[&str], env: &[(&str, &str)]) -> Term {
        let pty = native_pty_system()
            .openpty(PtySize {
                rows: ROWS,
                cols: COLS,
                pixel_width: 0,
                pixel_height: 0,
            })
            .expect("openpty");
        let mut cmd = CommandBuilder::new(bin());
        cmd.arg("--db");
        cmd.arg(db);
        cmd.args(args);
        cmd.cwd(repo());
        cmd.env("TERM", "xterm-256color");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = pty.slave.spawn_command(cmd).expect("spawn duel");
        drop(pty.slave);
        let mut out = pty.master.try_clone_reader().expect("reader");
        let screen = Arc::new(Mutex::new(vt100::Parser::new(ROWS, COLS, 0)));
        let feed = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                feed.lock().expect("screen").process(&buf[..n]);
            }
        });
        let keys = pty.master.take_writer().expect("writer");
        Term {
            screen,
            keys,
            child,
            _master: pty.master,
        }
    }

    fn text(&self) -> String {
        self.screen.lock().expect("screen").screen().contents()
    }

    /// Waits until the screen shows `what`; returns the screen.
    fn wait_for(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = self.text();
            if text.contains(what) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "the screen never showed {what:?}:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn press(&mut self, keys: &str) {
        self.keys.write_all(keys.as_bytes()).expect("send keys");
        self.keys.flush().expect("flush");
    }

    /// Quits with `q` and returns the exit status.
    fn quit(mut self) -> portable_pty::ExitStatus {
        self.press("q");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "duel did not quit:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn labels(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .expect("open")
        .query_row("SELECT count(*) FROM labels", [], |r| r.get(0))
        .expect("count")
}

fn demo_db(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("d.db");
    let out = duel(&db, &["import", demo().to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    db
}

/// After a worker has failed: the labeler still shows a pair and its keys, one
/// key saves a judgement and the next pair comes up.
fn labeling_goes_on(term: &mut Term, db: &Path) {
    let before = term.wait_for("judged 0/");
    assert!(before.contains(" A [1/←] "), "{before}");
    term.press("1");
    term.wait_for("judged 1/");
    assert_eq!(labels(db), 1, "the judgement was saved");
}

#[test]
fn a_panic_in_the_trainer_is_reported_and_labeling_goes_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = demo_db(dir.path());
    let mut term = Term::spawn(&db, &["label"], &[("DUEL_FAULT", "trainer")]);
    let screen = term.wait_for("training off: the trainer thread panicked");
    assert!(screen.contains(" A [1/←] "), "still the labeler:\n{screen}");
    labeling_goes_on(&mut term, &db);
    // The training view has the whole message, with the place it panicked.
    term.press("m");
    let view = term.wait_for("not training: the trainer thread panicked at src/");
    assert!(view.contains("fault injected at `trainer`"), "{view}");
    term.press("m");
    assert!(term.quit().success());
    let log = std::fs::read_to_string(dir.path().join("d.db.log")).expect("log");
    assert!(
        log.contains("the trainer thread panicked at src/train/worker.rs"),
        "{log}"
    );
}

#[test]
fn a_panic_in_the_generator_feed_is_reported_and_labeling_goes_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = demo_db(dir.path());
    let gguf = dir.path().join("tiny.gguf");
    write_tiny_gguf(&gguf, |_, _| {});
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "Say hello.\n").expect("write");
    let mut term = Term::spawn(
        &db,
        &[
            "label",
            "--no-train",
            "--prompts",
            prompts.to_str().expect("utf8"),
            "--generator",
            gguf.to_str().expect("utf8"),
        ],
        &[("DUEL_FAULT", "feed")],
    );
    let screen = term.wait_for("generator stopped: the generator feed thread panicked");
    assert!(screen.contains(" A [1/←] "), "still the labeler:\n{screen}");
    labeling_goes_on(&mut term, &db);
    assert!(term.quit().success());
}

#[test]
fn a_model_folder_that_does_not_fit_says_why_training_is_off() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = demo_db(dir.path());
    let model = dir.path().join("model");
    write_tiny_model(&model, 3);
    let config = model.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).expect("read")).expect("json");
    cfg["intermediate_size"] = 48.into();
    std::fs::write(&config, cfg.to_string()).expect("write");
    let mut term = Term::spawn(
        &db,
        &["label", "--model-dir", model.to_str().expect("utf8")],
        &[],
    );
    let screen = term.wait_for("training off: cannot use the model");
    assert!(screen.contains(" A [1/←] "), "still the labeler:\n{screen}");
    labeling_goes_on(&mut term, &db);
    term.press("m");
    term.wait_for("intermediate.dense.weight");
    term.press("m");
    assert!(term.quit().success());
}

/// The labeler's own thread panicking is a bug that ends the program; the
/// terminal is given back first (main screen, cooked mode), and the message shows.
#[test]
fn a_panic_in_the_labeler_gives_the_terminal_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = demo_db(dir.path());
    let mut term = Term::spawn(&db, &["label", "--no-train"], &[("DUEL_FAULT", "ui")]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = term.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "duel did not end:\n{}",
            term.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.exit_code(), 101);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !term.text().contains("fault injected at `ui`") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let parser = term.screen.lock().expect("screen");
    assert!(
        !parser.screen().alternate_screen(),
        "back on the main screen"
    );
    assert!(
        parser
            .screen()
            .contents()
            .contains("fault injected at `ui`"),
        "{}",
        parser.screen().contents()
    );
}

/// Three annotators label one database with training on: the first trains, the
/// others say who does; when it quits, another labeler takes training over.
#[test]
fn three_labelers_with_training_on_train_one_model() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = demo_db(dir.path());
    let model = dir.path().join("model");
    write_tiny_model(&model, 3);
    let holder = || {
        let out = duel(&db, &["stats", "--json"]);
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        s["training"]["lease"]["holder"].as_str().map(str::to_owned)
    };
    let label = |who: &str| {
        Term::spawn(
            &db,
            &[
                "label",
                "--annotator",
                who,
                "--overlap",
                "3",
                "--model-dir",
                model.to_str().expect("utf8"),
            ],
            &[],
        )
    };
    let ann = label("ann");
    ann.wait_for("model: waiting");
    let bob = label("bob");
    let cat = label("cat");
    bob.wait_for("ann trains");
    cat.wait_for("ann trains");
    assert_eq!(holder().as_deref(), Some("ann"));
    // The holder quits: it hands the lease back, and one of the others takes it.
    assert!(ann.quit().success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let next = loop {
        match holder() {
            Some(h) if h != "ann" => break h,
            _ => assert!(Instant::now() < deadline, "nobody took training over"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (trains, follows) = if next == "bob" {
        (&bob, &cat)
    } else {
        (&cat, &bob)
    };
    follows.wait_for(&format!("{next} trains"));
    trains.wait_for("model: waiting");
    assert!(bob.quit().success());
    assert!(cat.quit().success());
    assert_eq!(holder(), None, "handed back on quit");
}

/// `duel bench ui` drives the real labeler: every key it times reached the app (the
/// judgements it counts are the ones the keys made, the 1 MB pair's among them).
#[test]
fn bench_ui_times_every_key_it_sends_to_the_real_labeler() {
    let out = std::process::Command::new(bin())
        .args([
            "bench",
            "ui",
            "--pairs",
            "2000",
            "--keys",
            "20",
            "--gap-ms",
            "0",
            "--no-feed",
            "--json",
        ])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    // 20 scrolling keys and the judgement on the 1 MB pair; 20 keys on ordinary pairs,
    // of which every fifth scrolls.
    assert_eq!(r["one_megabyte_pair"]["keys"], 21, "{r}");
    assert_eq!(r["ordinary_pairs"]["keys"], 20, "{r}");
    assert_eq!(r["judgements"], 1 + 16, "{r}");
    for phase in ["one_megabyte_pair", "ordinary_pairs"] {
        let p = &r[phase];
        let (p50, p99, max) = (
            p["p50_ms"].as_f64().expect("p50"),
            p["p99_ms"].as_f64().expect("p99"),
            p["max_ms"].as_f64().expect("max"),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{r}");
    }
    assert!(r["pairs_scored"].as_u64().is_some(), "{r}");
}
