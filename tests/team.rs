//! A team on one database: agreed labels in export and training.

mod common;

use common::*;
use duel::domain::{Choice, NewLabel, Strength};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn rows(db: &Path, args: &[&str]) -> (Vec<Value>, String) {
    let out = duel(db, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let rows = String::from_utf8(out.stdout)
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    (rows, err)
}

/// Pairs 1..=6 (`q{i}`, `a{i}`, `b{i}`), judged by up to three annotators:
///
/// | pair | votes            | majority        | unanimous |
/// | ---- | ---------------- | --------------- | --------- |
/// | 1    | A                | A               | A         |
/// | 2    | A A B            | A               | contested |
/// | 3    | A B              | contested       | contested |
/// | 4    | B B (B undone→A) | B               | B         |
/// | 5    | A tie            | contested       | contested |
/// | 6    | tie tie          | tie (no row)    | tie       |
///
/// Pair 2's A votes give strengths 3 and 1: margin 2/3.
fn team_db(path: &Path) {
    let mut s = duel::store::Store::open(path).expect("store");
    let pairs: Vec<_> = (1..=6)
        .map(|i| {
            duel::store::NewPair::new(
                duel::domain::Prompt::from_text(format!("q{i}")),
                format!("a{i}"),
                format!("b{i}"),
            )
        })
        .collect();
    s.insert_pairs(&pairs).expect("pairs");
    use Choice::*;
    judge(&mut s, 1, "ann", A);
    let strong = |pair, who: &str, st| NewLabel {
        strength: Strength::new(st),
        ..NewLabel::plain(pair, who, A, "test")
    };
    s.record_label(&strong(2, "ann", 3)).expect("label");
    s.record_label(&strong(2, "bob", 1)).expect("label");
    judge(&mut s, 2, "cat", B);
    judge(&mut s, 3, "ann", A);
    judge(&mut s, 3, "bob", B);
    judge(&mut s, 4, "ann", B);
    let undone = judge(&mut s, 4, "bob", B);
    s.relabel(undone, &NewLabel::plain(4, "bob", B, "test"))
        .expect("relabel");
    judge(&mut s, 5, "ann", A);
    judge(&mut s, 5, "bob", Tie);
    judge(&mut s, 6, "ann", Tie);
    judge(&mut s, 6, "bob", Tie);
}

fn by_prompt(rows: &[Value]) -> BTreeMap<String, Vec<String>> {
    let mut m = BTreeMap::<String, Vec<String>>::new();
    for r in rows {
        m.entry(r["prompt"].as_str().expect("prompt").to_owned())
            .or_default()
            .push(r["chosen"].as_str().expect("chosen").to_owned());
    }
    m
}

#[test]
fn export_writes_each_pairs_agreed_verdict_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("team.db");
    team_db(&db);

    let (majority, err) = rows(&db, &["export", "--format", "trl"]);
    let got = by_prompt(&majority);
    let want: BTreeMap<String, Vec<String>> = [("q1", "a1"), ("q2", "a2"), ("q4", "b4")]
        .iter()
        .map(|(p, c)| (p.to_string(), vec![c.to_string()]))
        .collect();
    assert_eq!(got, want, "majority: one row per agreed A/B pair");
    assert!(
        err.contains("4 pairs agreed, 0 adjudicated, 2 contested"),
        "{err}"
    );
    let q2 = majority.iter().find(|r| r["prompt"] == "q2").expect("q2");
    let m = q2["margin"].as_f64().expect("margin from the majority");
    assert!((m - 2.0 / 3.0).abs() < 1e-9, "{m}");
    assert!(
        majority.iter().find(|r| r["prompt"] == "q1").expect("q1")["margin"].is_null(),
        "no strength, no margin"
    );

    let (unanimous, err) = rows(&db, &["export", "--consensus", "unanimous"]);
    assert_eq!(
        by_prompt(&unanimous).keys().collect::<Vec<_>>(),
        ["q1", "q4"],
        "unanimous: pair 2's dissent leaves it out"
    );
    assert!(err.contains("3 contested"), "{err}");

    let (all, _) = rows(&db, &["export", "--consensus", "all"]);
    let all = by_prompt(&all);
    assert_eq!(all["q2"], ["a2", "a2", "b2"], "all: every judgement");
    assert_eq!(all["q3"], ["a3", "b3"]);
    assert_eq!(all["q4"], ["b4", "b4"], "undone judgements never");

    let (conv, _) = rows(&db, &["export", "--format", "trl-conversational"]);
    assert_eq!(conv.len(), 3);

    let out = duel(&db, &["export", "--format", "csv"]);
    assert!(out.status.success());
    let mut csv = csv::Reader::from_reader(out.stdout.as_slice());
    let recs: Vec<csv::StringRecord> = csv.records().map(|r| r.expect("row")).collect();
    assert_eq!(recs.len(), 3);
    let q2 = recs.iter().find(|r| &r[0] == "q2").expect("q2 row");
    assert_eq!(&q2[1], "a2");
    assert_eq!(&q2[8], "2/3", "votes column");

    let (raw, _) = rows(&db, &["export", "--format", "raw"]);
    assert_eq!(raw.len(), 13, "raw keeps every row, the undone one too");
}

#[test]
fn training_reads_the_same_verdicts_as_the_export() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("team.db");
    team_db(&db);
    let store = duel::store::Store::open(&db).expect("store");
    let ex = duel::train::examples_from_store(&store).expect("examples");
    let got: Vec<(&str, &str, &str)> = ex
        .iter()
        .map(|e| (e.prompt.as_str(), e.chosen.as_str(), e.rejected.as_str()))
        .collect();
    assert_eq!(
        got,
        [("q1", "a1", "b1"), ("q2", "a2", "b2"), ("q4", "b4", "a4")],
        "one example per agreed pair, none for contested pairs"
    );
    assert!((ex[1].margin.expect("margin") - 2.0 / 3.0).abs() < 1e-6);
}

#[test]
fn an_adjudication_decides_the_pair_whatever_the_votes() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("team.db");
    team_db(&db);
    {
        let mut s = duel::store::Store::open(&db).expect("store");
        for (pair, choice) in [(3, Choice::B), (2, Choice::B)] {
            s.record_label(&NewLabel::plain(
                pair,
                "lead",
                choice,
                duel::consensus::ADJUDICATION,
            ))
            .expect("adjudication");
        }
    }
    let (trl, err) = rows(&db, &["export", "--consensus", "unanimous"]);
    let got = by_prompt(&trl);
    assert_eq!(got["q2"], ["b2"], "the lead overrules the majority");
    assert_eq!(got["q3"], ["b3"], "and settles the contested pair");
    assert!(
        err.contains("3 pairs agreed, 2 adjudicated, 1 contested"),
        "{err}"
    );
}
