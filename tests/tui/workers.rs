//! The trainer and the generator feed seen from the labeler.

use super::*;

#[test]
fn the_training_view_charts_loss_and_accuracy_and_stored_metrics_load() {
    use duel::train::messages::{TrainerCommand, TrainerEvent, TrainerState};
    let mut app = App::new(
        store_with(&[("q1", "a", "b"), ("q2", "c", "d")]),
        config("a"),
    )
    .expect("app");
    let (tx, rx) = crossbeam_channel::unbounded();
    app.attach_trainer(tx);
    for e in [
        TrainerEvent::State(TrainerState::Training),
        TrainerEvent::Step {
            step: 1,
            loss: 0.69,
            accuracy: 0.5,
            pairs_per_s: 6.5,
            labels_used: 40,
        },
        TrainerEvent::Step {
            step: 2,
            loss: 0.6,
            accuracy: 0.75,
            pairs_per_s: 6.0,
            labels_used: 40,
        },
        TrainerEvent::Eval {
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
    assert_eq!(rx.try_recv().ok(), Some(TrainerCommand::LabelsChanged));
    press(&mut app, KeyCode::Char('p'));
    assert_eq!(rx.try_recv().ok(), Some(TrainerCommand::Pause));
    app.update(Action::Trainer(TrainerEvent::State(TrainerState::Paused)));
    press(&mut app, KeyCode::Char('p'));
    assert_eq!(rx.try_recv().ok(), Some(TrainerCommand::Resume));

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

/// A labeler that does not hold the training lease shows the shared model's
/// accuracy and says who trains it.
#[test]
fn a_labeler_that_does_not_train_says_who_does() {
    use duel::train::messages::{TrainerEvent, TrainerState};
    let mut app = App::new(store_with(&[("q1", "a", "b")]), config("bob")).expect("app");
    app.attach_trainer(crossbeam_channel::unbounded().0);
    app.update(Action::Trainer(TrainerEvent::State(
        TrainerState::Following {
            holder: "ann".into(),
            host: Some("box".into()),
        },
    )));
    let (_, text) = render(&mut app, 100, 24);
    assert!(text.contains("ann trains"), "{text}");
    app.update(Action::Trainer(TrainerEvent::Eval {
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
