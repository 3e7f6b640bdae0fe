//! The labeler driven by key events, drawn on a `TestBackend`.

mod common;

use common::*;
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

#[test]
fn main_screen_80x24() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut app = App::new(demo_store(&dir.path().join("d.db")), config("alice")).expect("app");
    let (t, _) = render(&mut app, 80, 24);
    insta::assert_snapshot!(t.backend());
}

#[test]
fn main_screen_120x40_with_a_conversation() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut app = App::new(demo_store(&dir.path().join("d.db")), config("alice")).expect("app");
    // Skip to the first multi-turn prompt of the demo set.
    while app.current.as_ref().is_some_and(|c| c.turns.len() < 2) {
        press(&mut app, KeyCode::Char('s'));
    }
    assert!(app.current.is_some(), "the demo set has a conversation");
    app.update(Action::Resize {
        width: 120,
        height: 40,
    });
    let (t, text) = render(&mut app, 120, 40);
    assert!(text.contains("Conversation ("), "{text}");
    insta::assert_snapshot!(t.backend());
}

#[test]
fn one_key_commits_the_judgement_of_the_response_on_that_side() {
    let mut app = App::new(
        store_with(&[
            ("q1", "first", "second"),
            ("q2", "x", "y"),
            ("q3", "m", "n"),
        ]),
        config("alice"),
    )
    .expect("app");
    let cur = app.current.clone().expect("a pair");
    let left = cur.left;
    // What the left pane shows is the stored response on the left side.
    let (_, text) = render(&mut app, 80, 24);
    let left_text = cur.pair.response(left);
    let right_text = cur.pair.response(left.other());
    let column = |needle: &str| {
        text.lines()
            .find_map(|l| l.find(needle).map(|i| l[..i].chars().count()))
            .expect("text on screen")
    };
    assert!(column(left_text) < 40 && column(right_text) > 40, "{text}");

    press(&mut app, KeyCode::Char('1'));
    let labels = rows(&app, false);
    assert_eq!(labels.len(), 1, "committed before the next pair shows");
    assert_eq!(labels[0].choice, Choice::from_side(left));
    assert_eq!(labels[0].left, Some(left));
    assert_eq!(labels[0].annotator, "alice");
    assert!(labels[0].elapsed_ms.is_some());
    assert_ne!(app.current.as_ref().map(|c| c.pair.id), Some(cur.pair.id));

    // → picks the right pane's response.
    let left2 = app.current.as_ref().expect("pair 2").left;
    press(&mut app, KeyCode::Right);
    assert_eq!(
        rows(&app, false)[1].choice,
        Choice::from_side(left2.other())
    );

    press(&mut app, KeyCode::Char('0'));
    assert_eq!(rows(&app, false)[2].choice, Choice::Tie);
    assert!(app.current.is_none(), "all three judged");
    let (_, text) = render(&mut app, 80, 24);
    assert!(text.contains("Nothing left to judge"));
}

#[test]
fn left_right_order_is_random_per_pair() {
    let mut app = App::new(numbered_store(40), config("alice")).expect("app");
    let mut lefts = Vec::new();
    while let Some(c) = &app.current {
        lefts.push(c.left);
        press(&mut app, KeyCode::Char('x'));
    }
    let a = lefts.iter().filter(|s| **s == Side::A).count();
    assert_eq!(lefts.len(), 40);
    assert!((8..=32).contains(&a), "A on the left {a} times of 40");
}

#[test]
fn shift_asks_for_strength_and_one_key_still_suffices_without() {
    let mut app = App::new(
        store_with(&[("q1", "a", "b"), ("q2", "c", "d")]),
        config("alice"),
    )
    .expect("app");
    let left = app.current.as_ref().expect("pair").left;
    press_mod(&mut app, KeyCode::Left, KeyModifiers::SHIFT);
    assert_eq!(app.mode, Mode::Strength(Pick::Left));
    assert!(
        rows(&app, false).is_empty(),
        "nothing written before the grade"
    );
    let (_, text) = render(&mut app, 80, 24);
    assert!(text.contains("how much?"));
    press(&mut app, KeyCode::Char('3'));
    let r = &rows(&app, false)[0];
    assert_eq!(r.choice, Choice::from_side(left));
    assert_eq!(r.strength.map(|s| s.value()), Some(3));

    // Esc backs out of the grade prompt without judging.
    press(&mut app, KeyCode::Char('@'));
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.mode, Mode::Label);
    assert_eq!(rows(&app, false).len(), 1);
    press(&mut app, KeyCode::Char('2'));
    assert_eq!(rows(&app, false)[1].strength, None);
}

#[test]
fn always_strength_asks_after_every_choice_and_enter_skips_it() {
    let mut cfg = config("alice");
    cfg.always_strength = true;
    let mut app = App::new(store_with(&[("q1", "a", "b")]), cfg).expect("app");
    press(&mut app, KeyCode::Char('1'));
    assert!(matches!(app.mode, Mode::Strength(_)));
    press(&mut app, KeyCode::Enter);
    let r = rows(&app, false);
    assert_eq!((r.len(), r[0].strength), (1, None));
}

#[test]
fn undo_goes_back_through_the_whole_session_and_keeps_history() {
    let mut app = App::new(
        store_with(&[("q1", "a", "b"), ("q2", "c", "d"), ("q3", "e", "f")]),
        config("alice"),
    )
    .expect("app");
    let first = app.current.as_ref().expect("p").pair.id;
    press(&mut app, KeyCode::Char('1'));
    let second = app.current.as_ref().expect("p").pair.id;
    press(&mut app, KeyCode::Char('s')); // skip
    let third = app.current.as_ref().expect("p").pair.id;
    press(&mut app, KeyCode::Char('x'));
    assert_eq!(app.session_labels, 2);

    press(&mut app, KeyCode::Char('u'));
    assert_eq!(app.current.as_ref().map(|c| c.pair.id), Some(third));
    press(&mut app, KeyCode::Backspace);
    assert_eq!(app.current.as_ref().map(|c| c.pair.id), Some(second));
    press(&mut app, KeyCode::Char('u'));
    assert_eq!(app.current.as_ref().map(|c| c.pair.id), Some(first));
    assert_eq!(app.session_labels, 0);
    assert!(rows(&app, false).is_empty());
    // The undone rows stay for the audit trail.
    let all = rows(&app, true);
    assert_eq!(all.len(), 2);
    assert!(all.iter().all(|r| r.undone_at.is_some()));
    // Re-judging after undo keeps the same side on the left.
    let left = app.current.as_ref().expect("p").left;
    press(&mut app, KeyCode::Char('2'));
    assert_eq!(rows(&app, false)[0].choice, Choice::from_side(left.other()));
}

#[test]
fn a_note_is_saved_with_the_judgement() {
    let mut app = App::new(store_with(&[("q1", "a", "b")]), config("alice")).expect("app");
    press(&mut app, KeyCode::Char('n'));
    for c in "B has a typo; q".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    assert!(app.current.is_some(), "typing q in a note does not quit");
    assert!(!app.should_quit);
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Char('t'));
    assert_eq!(
        rows(&app, false)[0].note.as_deref(),
        Some("B has a typo; q")
    );
}

#[test]
fn quitting_and_starting_again_resumes_at_the_next_unjudged_pair() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("d.db");
    let mut app = App::new(demo_store(&path), config("alice")).expect("app");
    for _ in 0..3 {
        press(&mut app, KeyCode::Char('1'));
    }
    let next = app.current.as_ref().expect("more").pair.id;
    press(&mut app, KeyCode::Char('q'));
    assert!(app.should_quit);
    drop(app);
    let store = duel::store::Store::open(&path).expect("reopen");
    let mut alice = App::new(store, config("alice")).expect("app");
    assert_eq!(alice.current.as_ref().map(|c| c.pair.id), Some(next));
    assert_eq!(alice.progress.mine, 3);
    // Another annotator is served neither pairs already judged (overlap 1) nor the
    // pair alice has on screen...
    let store = duel::store::Store::open(&path).expect("reopen");
    let mut bob = App::new(store, config("bob")).expect("app");
    let bobs = bob.current.as_ref().expect("a pair").pair.id;
    assert!(bobs > next, "bob got {bobs}, alice has {next}");
    // ...which is free again once she quits.
    press(&mut alice, KeyCode::Char('q'));
    press(&mut bob, KeyCode::Char('s'));
    let store = duel::store::Store::open(&path).expect("reopen");
    let carol = App::new(store, config("carol")).expect("app");
    assert_eq!(carol.current.as_ref().map(|c| c.pair.id), Some(next));
    // With two judgements per pair, judged pairs come round again for others.
    let store = duel::store::Store::open(&path).expect("reopen");
    let mut cfg = config("dave");
    cfg.overlap = 2;
    let dave = App::new(store, cfg).expect("app");
    assert_eq!(dave.current.as_ref().map(|c| c.pair.id), Some(1));
}

#[test]
fn scrolling_moves_the_focused_pane_and_stops_at_the_end() {
    let long: String = (1..=200).map(|i| format!("line {i}\n")).collect();
    let mut app = App::new(
        store_with(&[("q", &long, &long.replace("line", "row"))]),
        config("a"),
    )
    .expect("app");
    let (_, text) = render(&mut app, 80, 24);
    let word = app
        .current
        .as_ref()
        .expect("pair")
        .left_text
        .split(' ')
        .next()
        .expect("w")
        .to_owned();
    assert!(
        text.lines().any(|l| l.starts_with(&format!("│{word} 1 "))),
        "{text}"
    );
    assert_eq!(app.focus, Pane::Left);
    for _ in 0..5 {
        press(&mut app, KeyCode::Char('j'));
    }
    press(&mut app, KeyCode::PageDown);
    let (_, text) = render(&mut app, 80, 24);
    assert!(app.scroll_of(Pane::Left) > 5);
    // The focused (left) pane no longer shows its first line.
    let word = app
        .current
        .as_ref()
        .expect("pair")
        .left_text
        .split(' ')
        .next()
        .expect("w")
        .to_owned();
    let first = format!("│{word} 1 ");
    assert!(!text.lines().any(|l| l.starts_with(&first)), "{text}");
    for _ in 0..100 {
        press(&mut app, KeyCode::PageDown);
    }
    let (_, text) = render(&mut app, 80, 24);
    assert!(text.contains("200"), "the end is reachable");
    assert!(text.contains("/201"), "position shown: {text}");
    // Mouse wheel over the right pane scrolls that pane, not the focused one.
    let before = app.scroll_of(Pane::Right);
    app.update(Action::ScrollAt {
        column: 60,
        row: 10,
        lines: 3,
    });
    render(&mut app, 80, 24);
    assert_eq!(app.scroll_of(Pane::Right), before + 3);
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.focus, Pane::Right);
}

#[test]
fn diff_highlights_only_the_differing_words() {
    let mut app = App::new(
        store_with(&[("q", "the cat sat on the mat", "the dog sat on the mat")]),
        config("a"),
    )
    .expect("app");
    press(&mut app, KeyCode::Char('d'));
    let (t, _) = render(&mut app, 80, 24);
    let buf = t.backend().buffer();
    let mut highlighted = String::new();
    for y in 0..buf.area.height - 2 {
        for x in 0..buf.area.width {
            let c = &buf[(x, y)];
            if c.bg == ratatui::style::Color::Yellow {
                highlighted.push_str(c.symbol());
            } else {
                highlighted.push(' ');
            }
        }
    }
    let mut words: Vec<&str> = vec!["cat", "dog"];
    words.sort_unstable();
    let mut found: Vec<&str> = highlighted
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    found.sort_unstable();
    assert_eq!(found, words);
}

#[test]
fn hostile_text_is_drawn_inert() {
    let evil = "ok \x1b[2J\x1b]52;c;ZXZpbA==\x07\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\ \u{202e}drow\u{202c} \u{9b}31m \x00\x08\r end";
    let mut app = App::new(store_with(&[(evil, evil, "fine")]), config("a")).expect("app");
    app.update(Action::Resize {
        width: 80,
        height: 24,
    });
    let (t, text) = render(&mut app, 80, 24);
    let buf = t.backend().buffer();
    for cell in buf.content() {
        assert!(
            duel::tui::sanitize::is_inert(cell.symbol()),
            "cell holds a control: {:?}",
            cell.symbol()
        );
    }
    assert!(text.contains("␛[2J"), "the escape is shown as text: {text}");
}

#[test]
fn wide_characters_and_long_lines_keep_the_layout() {
    let wide = "世界".repeat(300) + &"👍🏽".repeat(50) + "\t\tindented";
    let big = "y".repeat(1 << 20);
    let mut app = App::new(store_with(&[("提示 🎉", &wide, &big)]), config("a")).expect("app");
    for (w, h) in [(80, 24), (120, 40), (40, 12)] {
        app.update(Action::Resize {
            width: w,
            height: h,
        });
        let (t, _) = render(&mut app, w, h);
        let buf = t.backend().buffer();
        // Every row still ends with the right border of the B pane where panes are.
        let mid = h / 2;
        let last = buf[(w - 1, mid)].symbol().to_owned();
        assert_eq!(last, "│", "row {mid} at width {w}");
    }
    press(&mut app, KeyCode::Char('v'));
    let (_, text) = render(&mut app, 80, 24);
    assert!(text.contains(" B [2/→]"), "stacked shows both panes");
}

#[test]
fn help_shows_keys_and_guidelines() {
    let mut app = App::new(store_with(&[("q", "a", "b")]), config("a")).expect("app");
    press(&mut app, KeyCode::Char('?'));
    let (_, text) = render(&mut app, 80, 24);
    assert!(text.contains("Help"));
    assert!(text.contains("A is better"));
    // Guidelines are below the keys: scroll to them.
    for _ in 0..30 {
        press(&mut app, KeyCode::Char('j'));
    }
    let (_, text) = render(&mut app, 80, 24);
    assert!(text.contains("Prefer correct answers."), "{text}");
    // Keys do not judge while help is open.
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.mode, Mode::Label);
    assert!(rows(&app, false).is_empty());
}

#[test]
fn a_failed_write_keeps_the_pair_on_screen_and_says_so() {
    let mut app = App::new(store_with(&[("q", "a", "b")]), config("a")).expect("app");
    app.store
        .conn()
        .execute_batch("CREATE TRIGGER no_labels BEFORE INSERT ON labels BEGIN SELECT RAISE(ABORT, 'disk is full'); END;")
        .expect("trigger");
    let id = app.current.as_ref().expect("p").pair.id;
    press(&mut app, KeyCode::Char('1'));
    assert_eq!(app.current.as_ref().map(|c| c.pair.id), Some(id));
    let (_, text) = render(&mut app, 80, 24);
    assert!(text.contains("NOT SAVED"), "{text}");
    assert_eq!(app.session_labels, 0);
}

#[test]
fn the_training_view_charts_loss_and_accuracy_and_stored_metrics_load() {
    use duel::train::messages::{Command, Event, TrainerState};
    let mut app = App::new(
        store_with(&[("q1", "a", "b"), ("q2", "c", "d")]),
        config("a"),
    )
    .expect("app");
    let (tx, rx) = crossbeam_channel::unbounded();
    app.attach_trainer(tx);
    for e in [
        Event::State(TrainerState::Training),
        Event::Step {
            step: 1,
            loss: 0.69,
            accuracy: 0.5,
            pairs_per_s: 6.5,
            labels_used: 40,
        },
        Event::Step {
            step: 2,
            loss: 0.6,
            accuracy: 0.75,
            pairs_per_s: 6.0,
            labels_used: 40,
        },
        Event::Eval {
            step: 2,
            accuracy: 0.64,
            loss: 0.66,
            pairs: 11,
        },
    ] {
        app.update(Action::Trainer(e));
    }
    // The compact sparkline shows while labeling.
    let (_, text) = render(&mut app, 80, 24);
    assert!(text.contains("acc ") && text.contains("64%"), "{text}");
    // A judgement tells the trainer that the labels changed.
    press(&mut app, KeyCode::Char('1'));
    assert_eq!(rx.try_recv().ok(), Some(Command::LabelsChanged));
    press(&mut app, KeyCode::Char('p'));
    assert_eq!(rx.try_recv().ok(), Some(Command::Pause));
    app.update(Action::Trainer(Event::State(TrainerState::Paused)));
    press(&mut app, KeyCode::Char('p'));
    assert_eq!(rx.try_recv().ok(), Some(Command::Resume));

    press(&mut app, KeyCode::Char('m'));
    let (_, text) = render(&mut app, 80, 24);
    assert!(text.contains("training loss"), "{text}");
    assert!(text.contains("held-out accuracy"), "{text}");
    assert!(text.contains("64.0% on 11 held-out pairs"), "{text}");
    assert!(text.contains("6.0 pairs/s"), "{text}");
    let (t, _) = render(&mut app, 120, 40);
    insta::assert_snapshot!(t.backend());
    // The trainer stores its metrics (tests/worker.rs); a labeler that starts
    // loads them, so the charts survive a restart.
    let stored = store_with(&[("q", "a", "b")]);
    stored
        .conn()
        .execute_batch(
            "INSERT INTO train_runs (id, config) VALUES (1, '{}');
             INSERT INTO train_metrics (run_id, step, kind, loss, accuracy)
             VALUES (1, 1, 'train', 0.7, 0.5), (1, 2, 'train', 0.6, 0.5),
                    (1, 2, 'eval', 0.65, 0.61);",
        )
        .expect("metrics");
    let mut restarted = App::new(stored, config("a")).expect("app");
    restarted.attach_trainer(crossbeam_channel::unbounded().0);
    assert_eq!(restarted.train.losses, [(1.0, 0.7), (2.0, 0.6)]);
    assert_eq!(restarted.train.accuracy, [(2.0, 0.61)]);
    let (tx2, _rx2) = crossbeam_channel::unbounded();
    let mut again = App::new(
        duel::store::Store::open_in_memory().expect("store"),
        config("a"),
    )
    .expect("app");
    // (A fresh database has no history.)
    again.attach_trainer(tx2);
    assert!(again.train.losses.is_empty());
}

#[test]
fn without_a_trainer_p_says_so_and_labeling_works() {
    let mut app = App::new(store_with(&[("q", "a", "b")]), config("a")).expect("app");
    press(&mut app, KeyCode::Char('p'));
    let (_, text) = render(&mut app, 80, 24);
    assert!(text.contains("no trainer"), "{text}");
    press(&mut app, KeyCode::Char('1'));
    assert_eq!(rows(&app, false).len(), 1);
}

#[test]
fn a_note_survives_skip_and_undo() {
    let mut app = App::new(
        store_with(&[("q1", "a", "b"), ("q2", "c", "d")]),
        config("a"),
    )
    .expect("app");
    let first = app.current.as_ref().expect("p").pair.id;
    press(&mut app, KeyCode::Char('n'));
    for c in "typo in B".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Char('s'));
    press(&mut app, KeyCode::Char('u'));
    assert_eq!(app.current.as_ref().map(|c| c.pair.id), Some(first));
    assert_eq!(
        app.current.as_ref().and_then(|c| c.note.as_deref()),
        Some("typo in B")
    );
    press(&mut app, KeyCode::Char('1'));
    press(&mut app, KeyCode::Char('u'));
    assert_eq!(
        app.current.as_ref().and_then(|c| c.note.as_deref()),
        Some("typo in B"),
        "undo brings the note back with the pair"
    );
    press(&mut app, KeyCode::Char('2'));
    let r = rows(&app, false);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].note.as_deref(), Some("typo in B"));
}

#[test]
fn the_top_line_keeps_progress_readable_next_to_the_model_state() {
    use duel::train::messages::{Event, TrainerState};
    let mut app = App::new(store_with(&[("q1", "a", "b")]), config("annotator")).expect("app");
    let (tx, _rx) = crossbeam_channel::unbounded();
    app.attach_trainer(tx);
    app.update(Action::Trainer(Event::State(TrainerState::Waiting {
        have: 0,
        need: 16,
    })));
    for w in [80u16, 100, 120] {
        let (_, text) = render(&mut app, w, 24);
        let top = text.lines().next().expect("line");
        assert!(top.contains("model: waiting 0/16"), "{top}");
        assert!(top.contains("judged 0/1"), "{top}");
    }
}

/// With a generator feeding the queue: the app tells it how many pairs are left, a
/// pair it stores shows at once on the "nothing left" screen, and its progress is in
/// the status line.
#[test]
fn pairs_from_the_generator_feed_show_up_as_they_are_stored() {
    use duel::generator::feed::{FeedCommand, FeedEvent};
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("f.db");
    let store = duel::store::Store::open(&path).expect("store");
    let mut app = App::new(store, config("alice")).expect("app");
    assert!(app.current.is_none());
    let (tx, rx) = crossbeam_channel::unbounded();
    app.attach_feed(tx);
    assert_eq!(rx.try_recv(), Ok(FeedCommand::Remaining(0)));
    let (_, screen) = render(&mut app, 80, 24);
    assert!(screen.contains("More are on the way"), "{screen}");

    // The feed thread stores a pair through its own connection, then says so.
    let mut other = duel::store::Store::open(&path).expect("second connection");
    let pair = duel::store::NewPair::new(
        duel::domain::Prompt::from_text("Name a bird.".into()),
        "A robin.".into(),
        "A heron.".into(),
    );
    other.insert_pairs(&[pair]).expect("insert");
    app.update(Action::Feed(FeedEvent::PairAdded {
        done: 1,
        total: 3,
        tokens_per_s: 42.0,
    }));
    assert!(app.current.is_some(), "the new pair is shown");
    assert_eq!(app.progress.pairs, 1);
    let (_, screen) = render(&mut app, 80, 24);
    assert!(screen.contains("Name a bird."), "{screen}");
    assert!(
        screen.contains("generating: 1/3 prompts · 42 tokens/s"),
        "{screen}"
    );
    // After the judgement, the feed hears that nothing is left.
    while rx.try_recv().is_ok() {}
    press(&mut app, KeyCode::Char('1'));
    assert_eq!(rx.try_iter().last(), Some(FeedCommand::Remaining(0)));
}

/// A terminal that keeps what was written to it.
#[derive(Clone, Default)]
struct Sink(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bytes that reach the terminal: every escape sequence is one the renderer
/// itself wrote (CSI cursor moves, colours, clears), never one from the data: no
/// OSC (clipboard writes, links), DCS, BEL, C1 controls, backspace, carriage return,
/// NUL or bidi overrides, even with a 1 MB line in the mix. (Two layers keep them
/// out: our sanitizer shows them inert, `hostile_text_is_drawn_inert`, and ratatui's
/// buffer drops control and zero-width characters; this checks the end result.)
#[test]
fn bytes_written_to_the_terminal_hold_no_control_from_the_data() {
    use ratatui::backend::CrosstermBackend;
    use ratatui::{Terminal, TerminalOptions, Viewport, layout::Rect};
    let evil = format!(
        "a\x1b]52;c;ZXZpbA==\x07b\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\c\x1bP+q626f6f\x1b\\d\u{9b}31me\u{9d}0;t\u{9c}\
         f\x1b[?1049l\x1b[2Jg\x07\x08\x08h\ri\0j\u{202e}k\u{2066}l\u{200b}m\x1b_apc\x1b\\\x1bXsos\x1b\\ {}",
        "Z".repeat(1 << 20)
    );
    let mut app = App::new(store_with(&[(&evil, &evil, &evil)]), config("a")).expect("app");
    for (w, h) in [(80u16, 24u16), (120, 40)] {
        app.update(Action::Resize {
            width: w,
            height: h,
        });
        for diff in [false, true] {
            if app.diff != diff {
                press(&mut app, KeyCode::Char('d'));
            }
            let sink = Sink::default();
            let backend = CrosstermBackend::new(sink.clone());
            let mut t = Terminal::with_options(
                backend,
                TerminalOptions {
                    viewport: Viewport::Fixed(Rect::new(0, 0, w, h)),
                },
            )
            .expect("terminal");
            t.draw(|f| {
                duel::tui::view::draw(&app, f, &mut duel::tui::view::Cache::default());
            })
            .expect("draw");
            let bytes = sink.0.borrow().clone();
            let text = String::from_utf8(bytes.clone()).expect("UTF-8 out");
            for forbidden in [
                '\x07', '\x08', '\r', '\0', '\u{9b}', '\u{9d}', '\u{9c}', '\u{202e}', '\u{2066}',
                '\u{200b}',
            ] {
                assert!(
                    !text.contains(forbidden),
                    "{forbidden:?} reached the terminal"
                );
            }
            // Every ESC starts a CSI with plain parameters and a final byte from the
            // set the renderer uses.
            let mut i = 0;
            while let Some(at) = bytes[i..].iter().position(|&b| b == 0x1b) {
                let s = i + at;
                assert_eq!(
                    bytes.get(s + 1),
                    Some(&b'['),
                    "ESC {:?}",
                    String::from_utf8_lossy(&bytes[s..(s + 12).min(bytes.len())])
                );
                let mut j = s + 2;
                while j < bytes.len()
                    && (bytes[j].is_ascii_digit() || bytes[j] == b';' || bytes[j] == b'?')
                {
                    j += 1;
                }
                let fin = bytes.get(j).copied().unwrap_or(0) as char;
                assert!("mHJKhlG".contains(fin), "CSI ending in {fin:?}");
                i = j + 1;
            }
            assert!(text.contains("duel"), "the header was drawn");
        }
    }
}

/// A trainer that cannot start (missing or corrupt model files) says why in the
/// header, and labeling goes on.
#[test]
fn a_failed_trainer_leaves_labeling_working() {
    let mut app = App::new(
        store_with(&[("q1", "a", "b"), ("q2", "c", "d")]),
        config("a"),
    )
    .expect("app");
    let (tx, _rx) = crossbeam_channel::unbounded();
    app.attach_trainer(tx);
    app.update(Action::Trainer(duel::train::messages::Event::Failed(
        "cannot load the model from assets/models/x: no such file".into(),
    )));
    let (_, screen) = render(&mut app, 120, 40);
    assert!(screen.contains("cannot load the model"), "{screen}");
    press(&mut app, KeyCode::Char('1'));
    assert_eq!(rows(&app, false).len(), 1);
    assert_eq!(app.current.as_ref().map(|c| c.pair.id), Some(2));
}

/// A full disk (SQLite's page limit reached) and a database that turned read-only:
/// the labeler stays up and says the judgement was not saved, everything committed
/// before is intact, and labeling resumes once writing works again.
#[test]
fn a_full_disk_or_a_read_only_database_loses_nothing_committed() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("full.db");
    let mut store = duel::store::Store::open(&path).expect("store");
    let long = "words ".repeat(200);
    let pairs: Vec<duel::store::NewPair> = (0..400)
        .map(|i| {
            duel::store::NewPair::new(
                duel::domain::Prompt::from_text(format!("q{i}")),
                format!("a{i} {long}"),
                format!("b{i} {long}"),
            )
        })
        .collect();
    store.insert_pairs(&pairs).expect("insert");
    let mut app = App::new(store, config("a")).expect("app");
    let pages: i64 = app
        .store
        .conn()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .expect("pages");
    app.store
        .conn()
        .execute_batch(&format!("PRAGMA max_page_count = {pages}"))
        .expect("limit");
    let mut saved = 0;
    let mut full = false;
    for _ in 0..400 {
        let before = app.current.as_ref().map(|c| c.pair.id);
        press(&mut app, KeyCode::Char('1'));
        if app.current.as_ref().map(|c| c.pair.id) == before {
            full = true;
            break;
        }
        saved += 1;
    }
    assert!(full, "the page limit was never reached");
    let (_, text) = render(&mut app, 120, 40);
    assert!(text.contains("NOT SAVED"), "{text}");
    let count = |p: &std::path::Path| -> i64 {
        let c = rusqlite::Connection::open(p).expect("open");
        c.query_row(
            "SELECT count(*) FROM labels WHERE undone_at IS NULL",
            [],
            |r| r.get(0),
        )
        .expect("count")
    };
    assert_eq!(count(&path), saved);
    // Room again: the same pair is judged and saved.
    app.store
        .conn()
        .execute_batch("PRAGMA max_page_count = 1073741823")
        .expect("unlimit");
    press(&mut app, KeyCode::Char('1'));
    assert_eq!(count(&path), saved + 1);

    // Read-only: the same, and nothing changes on disk.
    app.store
        .conn()
        .execute_batch("PRAGMA query_only = ON")
        .expect("read-only");
    let id = app.current.as_ref().expect("pair").pair.id;
    press(&mut app, KeyCode::Char('2'));
    assert_eq!(app.current.as_ref().map(|c| c.pair.id), Some(id));
    let (_, text) = render(&mut app, 120, 40);
    assert!(text.contains("NOT SAVED"), "{text}");
    assert_eq!(count(&path), saved + 1);
    app.store
        .conn()
        .execute_batch("PRAGMA query_only = OFF")
        .expect("writable");
    press(&mut app, KeyCode::Char('2'));
    assert_eq!(count(&path), saved + 2);
    let c = rusqlite::Connection::open(&path).expect("open");
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(ok, "ok");
}

/// A database that cannot be written to still shows pairs (unclaimed), and says
/// that a judgement was not saved.
#[test]
fn a_read_only_database_still_shows_pairs() {
    let store = store_with(&[("q1", "a", "b")]);
    store
        .conn()
        .execute_batch("PRAGMA query_only = ON")
        .expect("read-only");
    let mut app = App::new(store, config("a")).expect("app");
    assert_eq!(app.current.as_ref().map(|c| c.pair.id), Some(1));
    press(&mut app, KeyCode::Char('1'));
    let (_, text) = render(&mut app, 80, 24);
    assert!(text.contains("NOT SAVED"), "{text}");
}

fn queue_orders(app: &App) -> Vec<(i64, String)> {
    let mut stmt = app
        .store
        .conn()
        .prepare("SELECT pair_id, queue_order FROM labels ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

/// `--order uncertain` serves the pairs whose predicted preference is closest to
/// 50% first, then the unscored ones by id; each judgement records its order.
#[test]
fn the_uncertain_order_serves_the_least_sure_pairs_first() {
    let store = numbered_store(6);
    let mut cfg = config("u");
    cfg.order = duel::store::QueueOrder::Uncertain;
    cfg.random_share = 0.0;
    // Scores must exist before the first pair is chosen: set them on the store.
    store
        .conn()
        .execute_batch(
            "INSERT INTO pair_scores (pair_id, p_a, step) VALUES (1, 0.9, 1), (2, 0.55, 1), (3, 0.1, 1), (4, 0.48, 1), (5, 0.7, 1)",
        )
        .expect("scores");
    let mut app = App::new(store, cfg).expect("app");
    let mut served = Vec::new();
    for _ in 0..6 {
        served.push(app.current.as_ref().expect("pair").pair.id);
        press(&mut app, KeyCode::Char('1'));
    }
    assert_eq!(served, [4, 2, 5, 1, 3, 6]);
    assert!(queue_orders(&app).iter().all(|(_, o)| o == "uncertain"));
}

/// A random share of the uncertain order is served at random, and recorded so.
#[test]
fn the_random_share_is_served_and_recorded_as_random() {
    let numbered = numbered_store(40);
    let mut cfg = config("r");
    cfg.order = duel::store::QueueOrder::Uncertain;
    cfg.random_share = 0.5;
    let mut app = App::new(numbered, cfg).expect("app");
    for _ in 0..40 {
        press(&mut app, KeyCode::Char('2'));
    }
    let orders = queue_orders(&app);
    let random = orders.iter().filter(|(_, o)| o == "random").count();
    assert_eq!(orders.len(), 40);
    assert!(
        (8..=32).contains(&random),
        "{random} of 40 served at random"
    );
    assert!(
        orders
            .iter()
            .all(|(_, o)| o == "random" || o == "uncertain")
    );
}

/// `--order random` serves every pair once, in an order that is not by id.
#[test]
fn the_random_order_is_a_permutation() {
    let numbered = numbered_store(30);
    let mut cfg = config("p");
    cfg.order = duel::store::QueueOrder::Random;
    let mut app = App::new(numbered, cfg).expect("app");
    let mut served = Vec::new();
    while let Some(c) = app.current.as_ref() {
        served.push(c.pair.id);
        press(&mut app, KeyCode::Char('1'));
    }
    let mut sorted = served.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=30).collect::<Vec<i64>>());
    assert_ne!(served, sorted);
}

/// `--order disagreement` with two judgements per pair: pairs whose judgements so
/// far disagree come first, then those where the model contradicts the judgement.
#[test]
fn the_disagreement_order_serves_contested_pairs_first() {
    use duel::domain::Choice;
    let store = store_with(&[
        ("q1", "a", "b"),
        ("q2", "c", "d"),
        ("q3", "e", "f"),
        ("q4", "g", "h"),
    ]);
    let mut store = store;
    let label = |s: &mut duel::store::Store, pair_id, who: &str, choice| {
        judge(s, pair_id, who, choice);
    };
    // Pair 3: two annotators disagree. Pair 2: judged A, model says B (p_a 0.1).
    // Pair 1: judged A, model agrees. Pair 4: unjudged.
    label(&mut store, 3, "x", Choice::A);
    label(&mut store, 3, "y", Choice::B);
    label(&mut store, 2, "x", Choice::A);
    label(&mut store, 1, "x", Choice::A);
    store
        .conn()
        .execute_batch("INSERT INTO pair_scores (pair_id, p_a, step) VALUES (1, 0.9, 1), (2, 0.1, 1), (3, 0.5, 1)")
        .expect("scores");
    let mut cfg = config("z");
    cfg.order = duel::store::QueueOrder::Disagreement;
    cfg.overlap = 3;
    let mut app = App::new(store, cfg).expect("app");
    let mut served = Vec::new();
    while let Some(c) = app.current.as_ref() {
        served.push(c.pair.id);
        press(&mut app, KeyCode::Char('s'));
    }
    assert_eq!(served, [3, 2, 1, 4]);
}

/// `--show-model`: after a judgement, one line says what the model predicted, in
/// screen sides, and whether it agreed; without the option nothing is said.
#[test]
fn show_model_says_what_the_model_predicted() {
    let store = store_with(&[("q1", "a", "b"), ("q2", "c", "d"), ("q3", "e", "f")]);
    store
        .conn()
        .execute_batch(
            "INSERT INTO pair_scores (pair_id, p_a, step) VALUES (1, 0.8, 5), (2, 0.3, 5)",
        )
        .expect("scores");
    let mut cfg = config("m");
    cfg.show_model = true;
    let mut app = App::new(store, cfg).expect("app");
    // Pair 1: the model prefers A (80%); choose the side A is shown on.
    let left = app.current.as_ref().expect("pair").left;
    let key = if left == Side::A { '1' } else { '2' };
    let a_side = if left == Side::A { "left" } else { "right" };
    press(&mut app, KeyCode::Char(key));
    let flash = app.flash.as_ref().expect("a note").text.clone();
    assert_eq!(flash, format!("model: {a_side} was better (80%) — agreed"));
    // Pair 2: the model prefers B (70%); choose A.
    let left = app.current.as_ref().expect("pair").left;
    let key = if left == Side::A { '1' } else { '2' };
    let b_side = if left == Side::B { "left" } else { "right" };
    press(&mut app, KeyCode::Char(key));
    let flash = app.flash.as_ref().expect("a note").text.clone();
    assert_eq!(
        flash,
        format!("model: {b_side} was better (70%) — disagreed")
    );
    // Pair 3: not scored.
    press(&mut app, KeyCode::Char('0'));
    assert_eq!(
        app.flash.as_ref().expect("a note").text,
        "model: no prediction for that pair yet"
    );
    // Off by default.
    let mut quiet = App::new(store_with(&[("q", "a", "b")]), config("n")).expect("app");
    press(&mut quiet, KeyCode::Char('1'));
    assert!(quiet.flash.is_none());
}

/// `duel review`: a list of the judgements the model most confidently contradicts,
/// most confident first; Enter opens one; judging again replaces the judgement (the
/// old row stays, undone), `s` keeps it, Esc goes back; each time the list comes
/// back with the next open one selected; undo puts the old judgement back.
#[test]
fn review_lists_contradicted_judgements_and_relabels_from_the_list() {
    use duel::domain::Choice;
    let mut store = numbered_store(4);
    for (pair_id, choice) in [
        (1, Choice::A),
        (2, Choice::B),
        (3, Choice::A),
        (4, Choice::A),
    ] {
        judge(&mut store, pair_id, "x", choice);
    }
    // Against the judgement: pair 1 by 90%, pair 3 by 60%; pairs 2 and 4 agree.
    store
        .conn()
        .execute_batch("INSERT INTO pair_scores (pair_id, p_a, step) VALUES (1, 0.1, 9), (2, 0.3, 9), (3, 0.4, 9), (4, 0.9, 9)")
        .expect("scores");
    let items = store.review_candidates(None, 10).expect("candidates");
    assert_eq!(items.iter().map(|i| i.pair_id).collect::<Vec<_>>(), [1, 3]);
    assert!((items[0].against - 0.9).abs() < 1e-9);
    let mut app = App::new(store, config("reviewer")).expect("app");
    app.start_review(items);

    // The list: both judgements, the most confident first, with their prompts.
    assert!(app.current.is_none());
    let (_, screen) = render(&mut app, 120, 30);
    assert!(
        screen.contains("Judgements the model disagrees with (2)"),
        "{screen}"
    );
    let row = |screen: &str, pair: &str| -> String {
        screen
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(pair))
            .unwrap_or_else(|| panic!("no row for pair {pair} in\n{screen}"))
            .to_owned()
    };
    assert!(row(&screen, "1").contains("90%"), "{screen}");
    assert!(row(&screen, "3").contains("60%"), "{screen}");
    assert!(row(&screen, "1").contains("q1"), "{screen}");
    let at = |screen: &str, pair: &str| screen.find(&row(screen, pair)).expect("row");
    assert!(at(&screen, "1") < at(&screen, "3"));

    // Enter opens the selected one (the first).
    press(&mut app, KeyCode::Enter);
    let cur = app.current.as_ref().expect("pair 1");
    assert_eq!(cur.pair.id, 1);
    let left = cur.left;
    let a_side = if left == Side::A { "left" } else { "right" };
    let (_, screen) = render(&mut app, 120, 40);
    assert!(
        screen.contains(&format!(
            "review 1/2: x chose {a_side}; the model is 90% sure"
        )),
        "{screen}"
    );
    // Judge B better: the judgement is replaced, and the list is back with pair 3
    // selected and pair 1 marked.
    let b_key = if left == Side::B { '1' } else { '2' };
    press(&mut app, KeyCode::Char(b_key));
    let standing = |app: &App, pair: i64| -> Vec<(String, String)> {
        let mut stmt = app
            .store
            .conn()
            .prepare(
                "SELECT annotator, choice FROM labels WHERE pair_id = ?1 AND undone_at IS NULL",
            )
            .expect("prepare");
        stmt.query_map([pair], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .map(|r| r.expect("row"))
            .collect()
    };
    assert_eq!(
        standing(&app, 1),
        [("reviewer".to_string(), "b".to_string())]
    );
    let all: i64 = app
        .store
        .conn()
        .query_row("SELECT count(*) FROM labels WHERE pair_id = 1", [], |r| {
            r.get(0)
        })
        .expect("count");
    assert_eq!(all, 2, "the earlier judgement stays in the history");
    assert!(app.current.is_none());
    assert_eq!(app.review.as_ref().map(|r| r.selected), Some(1));
    let (_, screen) = render(&mut app, 120, 30);
    assert!(row(&screen, "1").contains("relabeled"), "{screen}");

    // Undo from the list: pair 1 is back on screen with x's judgement restored.
    press(&mut app, KeyCode::Char('u'));
    assert_eq!(standing(&app, 1), [("x".to_string(), "a".to_string())]);
    assert_eq!(app.current.as_ref().map(|c| c.pair.id), Some(1));
    // Esc goes back to the list without judging; the list has it open again.
    press(&mut app, KeyCode::Esc);
    assert!(app.current.is_none());
    assert_eq!(app.review.as_ref().map(|r| r.selected), Some(0));
    // Open it again and judge: replaced again, once.
    press(&mut app, KeyCode::Enter);
    let left = app.current.as_ref().expect("pair 1").left;
    press(
        &mut app,
        KeyCode::Char(if left == Side::B { '1' } else { '2' }),
    );
    assert_eq!(
        standing(&app, 1),
        [("reviewer".to_string(), "b".to_string())]
    );
    // Pair 3 is selected; keep it.
    press(&mut app, KeyCode::Enter);
    assert_eq!(app.current.as_ref().map(|c| c.pair.id), Some(3));
    press(&mut app, KeyCode::Char('s'));
    assert!(app.current.is_none());
    assert_eq!(standing(&app, 3), [("x".to_string(), "a".to_string())]);
    let (_, screen) = render(&mut app, 120, 30);
    assert!(row(&screen, "3").contains("kept"), "{screen}");
    assert!(
        screen.contains("2 judgements: 1 relabeled, 1 kept"),
        "{screen}"
    );
    // j/k move the selection within the list.
    press(&mut app, KeyCode::Char('k'));
    press(&mut app, KeyCode::Char('k'));
    assert_eq!(app.review.as_ref().map(|r| r.selected), Some(0));
    press(&mut app, KeyCode::Char('j'));
    assert_eq!(app.review.as_ref().map(|r| r.selected), Some(1));
    press(&mut app, KeyCode::Char('q'));
    assert!(app.should_quit);
}

/// A labeler that does not hold the training lease shows the shared model's
/// accuracy and says who trains it.
#[test]
fn a_labeler_that_does_not_train_says_who_does() {
    use duel::train::messages::{Event, TrainerState};
    let mut app = App::new(store_with(&[("q1", "a", "b")]), config("bob")).expect("app");
    app.attach_trainer(crossbeam_channel::unbounded().0);
    app.update(Action::Trainer(Event::State(TrainerState::Following {
        holder: "ann".into(),
        host: Some("box".into()),
    })));
    let (_, text) = render(&mut app, 100, 24);
    assert!(text.contains("ann trains"), "{text}");
    app.update(Action::Trainer(Event::Eval {
        step: 25,
        accuracy: 0.61,
        loss: 0.66,
        pairs: 30,
    }));
    let (_, text) = render(&mut app, 100, 24);
    assert!(text.contains("61% (ann trains)"), "{text}");
    press(&mut app, KeyCode::Char('m'));
    let (_, text) = render(&mut app, 120, 40);
    assert!(text.contains("ann trains the model on box"), "{text}");
}
