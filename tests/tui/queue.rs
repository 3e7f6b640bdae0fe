//! The queue's orders and what the model says of a pair.

use super::*;

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
