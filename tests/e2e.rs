//! Import → label (by actions) → export and stats, as a user would chain them.

mod common;

use common::*;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use duel::tui::{App, keys};
use serde_json::Value;
use std::process::{Command, Output};

fn press(app: &mut App, code: KeyCode, m: KeyModifiers) {
    let a = keys::key(&KeyEvent::new(code, m), &app.mode).expect("bound");
    app.update(a);
}

fn lines(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .expect("utf8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[test]
fn import_label_export_round_trip() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    let out = duel(&db, &["import", demo().to_str().expect("utf8")]);
    assert!(out.status.success());

    // Alice judges five pairs: A, B with strength 3, tie, both bad, A with a note.
    let store = duel::store::Store::open(&db).expect("open");
    let mut app = App::new(store, config("alice")).expect("app");
    let mut expected = Vec::new(); // (pair id, chosen text, rejected text, margin)
    let c = app.current.clone().expect("pair");
    expected.push((c.left_text.clone(), c.right_text.clone(), None));
    press(&mut app, KeyCode::Char('1'), KeyModifiers::NONE);
    let c = app.current.clone().expect("pair");
    expected.push((c.right_text.clone(), c.left_text.clone(), Some(1.0)));
    press(&mut app, KeyCode::Right, KeyModifiers::SHIFT);
    press(&mut app, KeyCode::Char('3'), KeyModifiers::NONE);
    press(&mut app, KeyCode::Char('t'), KeyModifiers::NONE);
    press(&mut app, KeyCode::Char('x'), KeyModifiers::NONE);
    let c = app.current.clone().expect("pair");
    expected.push((c.left_text.clone(), c.right_text.clone(), None));
    press(&mut app, KeyCode::Char('n'), KeyModifiers::NONE);
    for ch in "check the maths".chars() {
        press(&mut app, KeyCode::Char(ch), KeyModifiers::NONE);
    }
    press(&mut app, KeyCode::Enter, KeyModifiers::NONE);
    press(&mut app, KeyCode::Left, KeyModifiers::NONE);
    // An undone judgement is not exported as a preference, but raw keeps it.
    press(&mut app, KeyCode::Char('2'), KeyModifiers::NONE);
    press(&mut app, KeyCode::Char('u'), KeyModifiers::NONE);
    drop(app);

    let trl = lines(&duel(&db, &["export", "--format", "trl"]));
    assert_eq!(trl.len(), 3, "ties, both-bad and undone are not in trl");
    for (row, (chosen, rejected, margin)) in trl.iter().zip(&expected) {
        let keys: Vec<&str> = row
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = vec!["prompt", "chosen", "rejected"];
        if margin.is_some() {
            want.push("margin");
        }
        assert_eq!(keys, want);
        // The demo texts are plain, so what was on screen is what is exported.
        assert_eq!(row["chosen"].as_str(), Some(chosen.as_str()));
        assert_eq!(row["rejected"].as_str(), Some(rejected.as_str()));
        assert_eq!(row.get("margin").and_then(Value::as_f64), *margin);
    }

    let conv = lines(&duel(&db, &["export", "--format", "trl-conversational"]));
    assert_eq!(conv.len(), 3);
    assert_eq!(conv[0]["prompt"][0]["role"], "user");
    assert_eq!(conv[0]["chosen"][0]["role"], "assistant");
    assert_eq!(conv[0]["chosen"][0]["content"], trl[0]["chosen"]);

    let raw = lines(&duel(&db, &["export", "--format", "raw"]));
    assert_eq!(raw.len(), 6, "every row, the undone one included");
    let choices: Vec<&str> = raw
        .iter()
        .map(|r| r["choice"].as_str().expect("choice"))
        .collect();
    assert_eq!(&choices[2..4], ["tie", "both_bad"]);
    assert_eq!(raw[4]["note"], "check the maths");
    assert!(raw[5]["undone_at"].is_string());
    assert!(raw.iter().all(|r| r["left"] == "a" || r["left"] == "b"));
    assert!(raw.iter().all(|r| r["elapsed_ms"].is_u64()));
    assert_eq!(raw[1]["strength"], 3);

    // CSV to a file, read back with a CSV reader.
    let csv_path = dir.path().join("out.csv");
    let out = duel(
        &db,
        &[
            "export",
            "--format",
            "csv",
            "--out",
            csv_path.to_str().expect("utf8"),
        ],
    );
    assert!(out.status.success());
    let mut rdr = csv::Reader::from_path(&csv_path).expect("csv");
    let recs: Vec<csv::StringRecord> = rdr.records().map(|r| r.expect("record")).collect();
    assert_eq!(recs.len(), 3);
    assert_eq!(&recs[0][1], trl[0]["chosen"].as_str().expect("s"));

    // Filters.
    assert!(lines(&duel(&db, &["export", "--annotator", "bob"])).is_empty());
    assert_eq!(
        lines(&duel(&db, &["export", "--annotator", "alice"])).len(),
        3
    );
    assert!(lines(&duel(&db, &["export", "--since", "2999-01-01"])).is_empty());
    assert_eq!(
        lines(&duel(
            &db,
            &["export", "--since", "2000-01-01T00:00:00+02:00"]
        ))
        .len(),
        3
    );
    let bad = duel(&db, &["export", "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--since \"yesterday\""));

    // The trl file loads with `datasets.load_dataset("json")`.
    let trl_path = dir.path().join("trl.jsonl");
    let out = duel(&db, &["export", "--out", trl_path.to_str().expect("utf8")]);
    assert!(out.status.success());
    let script = r#"
import sys, json
from datasets import load_dataset
ds = load_dataset("json", data_files=sys.argv[1], split="train")
print(json.dumps({"rows": ds.num_rows, "columns": sorted(ds.column_names), "first": ds[0]["chosen"]}))
"#;
    let out = Command::new(python())
        .args(["-c", script, trl_path.to_str().expect("utf8")])
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_HOME", dir.path().join("hf"))
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(
        out.stdout
            .rsplit(|b| *b == b'\n')
            .find(|l| !l.is_empty())
            .expect("output"),
    )
    .expect("json");
    assert_eq!(got["rows"], 3);
    assert_eq!(
        got["columns"],
        serde_json::json!(["chosen", "margin", "prompt", "rejected"])
    );
    assert_eq!(got["first"], trl[0]["chosen"]);
}

#[test]
fn stats_count_choices_bias_and_agreement() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    assert!(
        duel(&db, &["import", demo().to_str().expect("utf8")])
            .status
            .success()
    );
    // Two annotators judge the same four pairs (overlap 2): screen-left every time
    // for alice; bob picks left, left, right, tie.
    for (who, keys) in [("alice", "1111"), ("bob", "1120")] {
        let store = duel::store::Store::open(&db).expect("open");
        let mut cfg = config(who);
        cfg.overlap = 2;
        let mut app = App::new(store, cfg).expect("app");
        for k in keys.chars() {
            press(&mut app, KeyCode::Char(k), KeyModifiers::NONE);
        }
    }
    let out = duel(&db, &["stats", "--json"]);
    assert!(out.status.success());
    let s: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(s["pairs"], 36);
    assert_eq!(s["judged"], 4);
    assert_eq!(s["labels"], 8);
    assert_eq!(s["choices"]["tie"], 1);
    assert_eq!(s["position_bias"]["decisive"], 7);
    assert_eq!(s["position_bias"]["left_won"], 6);
    assert_eq!(s["agreement"]["pairs"], 4);
    assert_eq!(s["annotators"][0]["name"], "alice");
    assert_eq!(s["annotators"][0]["labels"], 4);
    // Percent agreement depends on the hidden sides only through which stored
    // response won, so compute it from the raw export.
    let raw = lines(&duel(&db, &["export", "--format", "raw"]));
    let mut by_pair = std::collections::BTreeMap::<i64, Vec<String>>::new();
    for r in &raw {
        by_pair
            .entry(r["pair_id"].as_i64().expect("id"))
            .or_default()
            .push(r["choice"].as_str().expect("c").to_owned());
    }
    let agree = by_pair.values().filter(|v| v[0] == v[1]).count();
    let pct = s["agreement"]["percent"].as_f64().expect("percent");
    assert!(
        (pct - 100.0 * agree as f64 / 4.0).abs() < 1e-9,
        "{pct} vs {agree}/4"
    );
    let text = duel(&db, &["stats"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("alice / bob: 4 shared"), "{text}");
}

/// Every subcommand's arguments are well formed (clap checks this only when the
/// command is parsed, so a clash would otherwise show up only for a user).
#[test]
fn every_command_line_definition_is_consistent() {
    use clap::CommandFactory;
    duel::cli::Cli::command().debug_assert();
}

/// Team numbers on a small hand-made set: three annotators, pairs generated at two
/// temperatures. Checked by hand: alpha, agreement with the majority, position bias
/// per annotator, and the ratings' order.
#[test]
fn team_statistics_and_generator_ratings() {
    use duel::domain::{Choice, NewLabel, Prompt, Side};
    use duel::store::{Generated, NewPair, Store};
    let mut store = Store::open_in_memory().expect("store");
    let gen_meta = |t: f64| Generated {
        generator: "g".into(),
        meta: serde_json::json!({"temperature": t}),
    };
    let pairs: Vec<NewPair> = (0..4)
        .map(|i| {
            let mut p = NewPair::new(
                Prompt::from_text(format!("p{i}")),
                format!("cool {i}"),
                format!("hot {i}"),
            );
            p.generated = Some((gen_meta(0.7), gen_meta(1.0)));
            p
        })
        .collect();
    store.insert_pairs(&pairs).expect("pairs");
    // Pair 1: x A, y A, z B.  Pair 2: x A, y A, z A.  Pair 3: x B, y B.  Pair 4: x A.
    let votes = [
        (1, "x", Choice::A),
        (1, "y", Choice::A),
        (1, "z", Choice::B),
        (2, "x", Choice::A),
        (2, "y", Choice::A),
        (2, "z", Choice::A),
        (3, "x", Choice::B),
        (3, "y", Choice::B),
        (4, "x", Choice::A),
    ];
    for (pair_id, who, choice) in votes {
        store
            .record_label(&NewLabel {
                // x always saw A on the left; the others B.
                left: Some(if who == "x" { Side::A } else { Side::B }),
                elapsed_ms: Some(1000),
                ..NewLabel::plain(pair_id, who, choice, "test")
            })
            .expect("label");
    }
    // The model's predictions: A on pairs 1 and 3, B on pair 2.
    store
        .conn()
        .execute_batch("INSERT INTO pair_scores (pair_id, p_a, step) VALUES (1, 0.9, 3), (2, 0.2, 3), (3, 0.6, 3)")
        .expect("scores");
    let s = duel::stats::compute(&store).expect("stats");
    // x on scored pairs: 1 A (model A, agree), 2 A (model B), 3 B (model A): 1 of 3.
    let x = s.annotators.iter().find(|a| a.name == "x").expect("x");
    assert_eq!((x.model_pairs, x.with_model), (3, Some(1.0 / 3.0)));
    // Units {A,A,B}, {A,A,A}, {B,B}: o_AA = 1 + 3 = 4, o_AB = o_BA = 1, o_BB = 2;
    // n_A = 5, n_B = 3, n = 8; alpha = 1 - 7·2 / (2·5·3) = 1 - 14/30.
    let alpha = s.agreement.alpha.expect("alpha");
    assert!((alpha - (1.0 - 14.0 / 30.0)).abs() < 1e-9, "{alpha}");
    let by = |n: &str| {
        s.annotators
            .iter()
            .find(|a| a.name == n)
            .expect("annotator")
            .clone()
    };
    // z: pairs 1 and 2 have two other votes each (A,A): majority A; z agrees once.
    assert_eq!(
        (by("z").majority_pairs, by("z").with_majority),
        (2, Some(0.5))
    );
    // x: pair 1 others {A, B} is no majority; pair 2 others {A, A}: agrees.
    assert_eq!(
        (by("x").majority_pairs, by("x").with_majority),
        (1, Some(1.0))
    );
    // x saw A on the left and chose A 3 times of 4 decisive: left won 75%.
    assert_eq!(by("x").left_share, Some(0.75));
    // 0.7 won 6 of 9 decisive battles: rated above 1.0.
    assert_eq!(s.ratings.len(), 2);
    assert_eq!(s.ratings[0].system, "g t=0.7");
    assert!(s.ratings[0].rating > s.ratings[1].rating);
    assert_eq!(s.ratings[0].battles, 9);
    let text = duel::stats::render(&s);
    assert!(
        text.contains("Krippendorff's alpha 0.533") && text.contains("g t=0.7"),
        "{text}"
    );
}

/// `duel report`: a self-contained page (no scripts, no links out) with the charts
/// inline and as SVG files; text from the data is escaped.
#[test]
fn the_report_is_one_self_contained_page_with_svg_charts() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("r.db");
    let file = dir.path().join("p.jsonl");
    std::fs::write(
        &file,
        "{\"prompt\": \"q\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"prompt\": \"q2\", \"chosen\": \"c\", \"rejected\": \"d\"}\n",
    )
    .expect("write");
    assert!(
        duel(&db, &["import", file.to_str().expect("utf8")])
            .status
            .success()
    );
    // A hostile annotator name and some training metrics.
    let c = rusqlite::Connection::open(&db).expect("open");
    c.execute_batch(
        "UPDATE labels SET annotator = '<script>alert(1)</script>';
         INSERT INTO train_runs (id, config) VALUES (1, '{}');
         INSERT INTO train_metrics (run_id, step, kind, loss, accuracy) VALUES
           (1, 1, 'train', 0.69, 0.5), (1, 2, 'train', 0.6, 0.6), (1, 2, 'eval', 0.65, 0.55), (1, 4, 'eval', 0.5, 0.7);",
    )
    .expect("metrics");
    let out = dir.path().join("rep");
    let o = duel(&db, &["report", "--out", out.to_str().expect("utf8")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(out.join("index.html")).expect("page");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!html.contains("<script"), "no scripts");
    // The page loads nothing from outside: the only address in it is the SVG
    // namespace, which names and fetches nothing.
    let own = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(!own.contains("://"), "an outside address in the report");
    assert!(
        !own.contains("=\"//") && !own.contains("url("),
        "an outside reference in the report"
    );
    assert_eq!(html.matches("<svg").count(), 5);
    // The accuracy chart has the held-out points as a line and the 50% guide.
    let acc = std::fs::read_to_string(out.join("accuracy.svg")).expect("svg");
    assert!(acc.contains("<polyline") && acc.contains("stroke-dasharray"));
    let pts = acc
        .split("points=\"")
        .nth(1)
        .expect("points")
        .split('"')
        .next()
        .expect("end");
    assert_eq!(pts.split(' ').count(), 2, "{pts}");
    for name in [
        "loss.svg",
        "judgements_per_day.svg",
        "judgements_so_far.svg",
        "choices.svg",
    ] {
        assert!(
            std::fs::read_to_string(out.join(name))
                .expect(name)
                .starts_with("<svg")
        );
    }
}
