//! Judging: one key, strength, undo, notes, resume.

use super::*;

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
