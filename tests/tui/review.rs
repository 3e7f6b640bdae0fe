//! `duel review` in the labeler.

use super::*;

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
