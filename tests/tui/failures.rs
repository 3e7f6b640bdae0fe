//! Failures the annotator must survive: a failed write, a failed trainer, a full disk, a read-only file.

use super::*;

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
    app.update(Action::Trainer(
        duel::train::messages::TrainerEvent::Failed(
            "cannot load the model from assets/models/x: no such file".into(),
        ),
    ));
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
