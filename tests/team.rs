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

    let out = duel(&db, &["stats", "--json"]);
    let s: Value = serde_json::from_slice(&out.stdout).expect("stats json");
    assert_eq!(
        s["consensus"],
        serde_json::json!({"agreed": 4, "adjudicated": 0, "contested": 2})
    );
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

/// The lease as `duel stats --json` reports it: (holder's pid, last step).
fn lease_of(db: &Path) -> (Option<i64>, Option<i64>) {
    let out = duel(db, &["stats", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).expect("json");
    (
        s["training"]["lease"]["pid"].as_i64(),
        s["training"]["last_step"].as_i64(),
    )
}

fn wait_until<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Three live trainers on one database: one trains, the others wait; kill -9 of
/// the holder hands training to another within the heartbeat timeout, resuming from
/// the checkpoint; Ctrl-C hands it back at once.
#[test]
fn one_trainer_per_database_and_the_lease_passes_on() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("team.db");
    let base = dir.path().join("base");
    write_tiny_model(&base, 5);
    {
        let mut s = duel::store::Store::open(&db).expect("store");
        let pairs: Vec<_> = (0..60)
            .map(|i| {
                duel::store::NewPair::new(
                    duel::domain::Prompt::from_text(format!("Help me with task {i}.")),
                    format!("Glad to help with task {i}."),
                    format!("No, do task {i} yourself."),
                )
            })
            .collect();
        s.insert_pairs(&pairs).expect("pairs");
        for id in 1..=40 {
            judge(&mut s, id, "ann", Choice::A);
        }
    }
    let mut kids: Vec<(std::process::Child, std::path::PathBuf)> = (0..3)
        .map(|i| {
            let log = dir.path().join(format!("follow{i}.log"));
            let child = Command::new(bin())
                .arg("--db")
                .arg(&db)
                .args(["train", "--follow", "--batch", "4", "--max-length", "48"])
                .arg("--model-dir")
                .arg(&base)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log"))
                .spawn()
                .expect("spawn");
            (child, log)
        })
        .collect();
    let log = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let training = |kids: &[(std::process::Child, std::path::PathBuf)]| {
        kids.iter()
            .filter(|(_, l)| {
                log(l).contains("training from the base model")
                    || log(l).contains("training: resumed")
            })
            .count()
    };

    // One takes the lease and trains to a checkpoint; the others wait.
    let first = wait_until(60, "a lease", || lease_of(&db).0);
    let model = db.with_extension("model");
    wait_until(120, "a checkpoint", || {
        duel::train::worker::has_checkpoint(&model).then_some(())
    });
    assert_eq!(training(&kids), 1, "exactly one trains");
    let waiting = kids
        .iter()
        .filter(|(_, l)| log(l).contains("holds the training lease"))
        .count();
    assert_eq!(waiting, 2, "the others say who trains");

    // kill -9 of the holder: another takes over after the timeout and resumes.
    let k = kids
        .iter()
        .position(|(c, _)| i64::from(c.id()) == first)
        .expect("holder is one of ours");
    let (mut holder, _) = kids.remove(k);
    let killed = std::time::Instant::now();
    holder.kill().expect("kill -9");
    holder.wait().expect("reap");
    let second = wait_until(60, "a new holder", || {
        lease_of(&db).0.filter(|&p| p != first)
    });
    let took = killed.elapsed();
    assert!(
        took < duel::store::LEASE_TTL + std::time::Duration::from_secs(10),
        "took over after {took:?}"
    );
    let k = kids
        .iter()
        .position(|(c, _)| i64::from(c.id()) == second)
        .expect("a follower took over");
    wait_until(60, "the resumed run", || {
        log(&kids[k].1).contains("training: resumed").then_some(())
    });

    // Ctrl-C: the holder writes its checkpoint, hands the lease back, exits 0; the
    // last one takes over well inside the timeout.
    let (mut holder, holder_log) = kids.remove(k);
    let asked = std::time::Instant::now();
    Command::new("kill")
        .args(["-INT", &holder.id().to_string()])
        .status()
        .expect("kill -INT");
    let status = holder.wait().expect("wait");
    assert!(status.success(), "{status:?}: {}", log(&holder_log));
    assert!(log(&holder_log).contains("stopped"), "{}", log(&holder_log));
    let third = wait_until(30, "the last holder", || {
        lease_of(&db).0.filter(|&p| p != second)
    });
    assert!(
        asked.elapsed() < duel::store::LEASE_TTL,
        "handed back, not expired"
    );
    assert_eq!(i64::from(kids[0].0.id()), third);
    Command::new("kill")
        .args(["-INT", &kids[0].0.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(kids[0].0.wait().expect("wait").success());
    assert_eq!(lease_of(&db).0, None, "nobody holds it after a clean stop");
}

/// `duel review --contested` lists the split pairs first; a judgement there is an
/// adjudication that decides the pair in export, and the list says who voted what.
#[test]
fn a_lead_settles_contested_pairs_in_review() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("team.db");
    team_db(&db);
    let store = duel::store::Store::open(&db).expect("store");
    let items = store.contested_candidates(10).expect("contested");
    let listed: Vec<(i64, &str)> = items
        .iter()
        .map(|i| (i.pair_id, i.annotator.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            (3, "ann a, bob b"),
            (5, "ann a, bob tie"),
            (2, "ann a, bob a, cat b")
        ],
        "no majority first, then a dissent"
    );
    drop(store);
    // Open the first (pair 3), judge it with the left key, quit.
    let out = duel(
        &db,
        &[
            "review",
            "--contested",
            "--annotator",
            "lead",
            "--script",
            "<enter>1q",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("1 of 3 contested pairs adjudicated"), "{err}");
    let (raw, _) = rows(&db, &["export", "--format", "raw"]);
    let adj: Vec<&Value> = raw
        .iter()
        .filter(|r| r["source"] == duel::consensus::ADJUDICATION)
        .collect();
    assert_eq!(adj.len(), 1);
    assert_eq!(
        (adj[0]["pair_id"].as_i64(), adj[0]["annotator"].as_str()),
        (Some(3), Some("lead"))
    );
    assert!(adj[0]["undone_at"].is_null(), "no vote replaced");
    let won = match adj[0]["choice"].as_str() {
        Some("a") => "a3",
        Some("b") => "b3",
        other => panic!("{other:?}"),
    };
    let (trl, err) = rows(&db, &["export"]);
    assert_eq!(
        by_prompt(&trl)["q3"],
        [won],
        "the adjudication decides pair 3"
    );
    assert!(err.contains("1 adjudicated, 1 contested"), "{err}");
    let store = duel::store::Store::open(&db).expect("store");
    assert_eq!(
        store.contested_candidates(10).expect("contested").len(),
        2,
        "a settled pair leaves the list"
    );
}

/// A gold file and an ordinary one, imported into a new database at `db`.
fn gold_db(dir: &Path, ordinary: usize, gold: usize) -> std::path::PathBuf {
    let db = dir.join("gold.db");
    let write = |name: &str, lines: Vec<Value>| {
        let p = dir.join(name);
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&p, text).expect("write");
        p
    };
    let pairs = write(
        "pairs.jsonl",
        (0..ordinary)
            .map(|i| serde_json::json!({"prompt": format!("q{i}"), "response_a": format!("a{i}"), "response_b": format!("b{i}")}))
            .collect(),
    );
    let golds = write(
        "gold.jsonl",
        (0..gold)
            .map(|i| serde_json::json!({"prompt": format!("g{i}"), "chosen": format!("right{i}"), "rejected": format!("wrong{i}")}))
            .collect(),
    );
    assert!(
        duel(&db, &["import", pairs.to_str().expect("utf8")])
            .status
            .success()
    );
    let out = duel(&db, &["import", "--gold", golds.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains(&format!("{gold} new gold pairs")), "{err}");
    db
}

#[test]
fn gold_pairs_are_served_at_the_rate_and_never_exported_or_trained_on() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = gold_db(dir.path(), 400, 100);
    let store = duel::store::Store::open(&db).expect("store");
    let mut cfg = config("ann");
    cfg.gold_rate = 0.1;
    let mut app = duel::tui::App::new(store, cfg).expect("app");
    for _ in 0..300 {
        app.update(duel::tui::Action::Choose {
            pick: duel::tui::app::Pick::Left,
            ask_strength: false,
        });
    }
    drop(app);
    let (raw, _) = rows(&db, &["export", "--format", "raw"]);
    assert_eq!(raw.len(), 300);
    let gold: Vec<&Value> = raw.iter().filter(|r| !r["gold"].is_null()).collect();
    // 10% of 300 is 30 (binomial sd 5.2): within three of them.
    assert!(
        (15..=45).contains(&gold.len()),
        "{} gold of 300",
        gold.len()
    );
    assert!(
        gold.iter()
            .all(|r| r["prompt"].as_str().expect("p").starts_with('g'))
    );
    assert!(
        gold.iter().all(|r| r["gold"] == "a"),
        "chosen is stored as A"
    );
    // Judged by hand from the raw rows: the left key picks either side.
    assert!(
        gold.iter()
            .all(|r| r["choice"] == "a" || r["choice"] == "b")
    );

    let (trl, _) = rows(&db, &["export"]);
    assert_eq!(trl.len(), 300 - gold.len(), "no gold pair in the export");
    assert!(
        trl.iter()
            .all(|r| r["prompt"].as_str().expect("p").starts_with('q'))
    );
    let store = duel::store::Store::open(&db).expect("store");
    let ex = duel::train::examples_from_store(&store).expect("examples");
    assert_eq!(ex.len(), trl.len(), "nor in training");
    assert!(ex.iter().all(|e| e.prompt.starts_with('q')));

    // Importing the gold file again adds nothing; an ordinary pair cannot turn gold.
    let again = duel(
        &db,
        &[
            "import",
            "--gold",
            dir.path().join("gold.jsonl").to_str().expect("utf8"),
        ],
    );
    assert!(again.status.success());
    let clash = dir.path().join("clash.jsonl");
    std::fs::write(
        &clash,
        "{\"prompt\": \"q1\", \"chosen\": \"a1\", \"rejected\": \"b1\"}\n",
    )
    .expect("write");
    let out = duel(&db, &["import", "--gold", clash.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("clash.jsonl:1") && err.contains("a pair to label"),
        "{err}"
    );
}

#[test]
fn stats_show_gold_accuracy_with_an_interval_and_flag_the_careless() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = gold_db(dir.path(), 5, 12);
    let mut s = duel::store::Store::open(&db).expect("store");
    // Pairs 6..=17 are gold (answer A). careful: all A; careless: 3 A then B;
    // new: 5 gold pairs, all B (too few to flag).
    for (k, id) in (6..=17).enumerate() {
        judge(&mut s, id, "careful", Choice::A);
        judge(
            &mut s,
            id,
            "careless",
            if k < 3 { Choice::A } else { Choice::B },
        );
        if k < 5 {
            judge(&mut s, id, "new", Choice::B);
        }
    }
    drop(s);
    let out = duel(&db, &["stats", "--json"]);
    assert!(out.status.success());
    let st: Value = serde_json::from_slice(&out.stdout).expect("json");
    let gold = |name: &str| {
        st["annotators"]
            .as_array()
            .expect("annotators")
            .iter()
            .find(|a| a["name"] == name)
            .expect("annotator")["gold"]
            .clone()
    };
    let careful = gold("careful");
    assert_eq!(
        (careful["judged"].as_u64(), careful["matched"].as_u64()),
        (Some(12), Some(12))
    );
    // Wilson 95% for 12 of 12, by hand: 0.7575 to 1.
    assert!(
        (careful["low"].as_f64().expect("low") - 0.7575).abs() < 1e-3,
        "{careful}"
    );
    assert_eq!(careful["flagged"], false);
    let careless = gold("careless");
    assert_eq!(careless["matched"].as_u64(), Some(3));
    assert!((careless["accuracy"].as_f64().expect("acc") - 0.25).abs() < 1e-12);
    assert_eq!(careless["flagged"], true);
    assert_eq!(
        gold("new")["flagged"],
        false,
        "5 gold pairs are too few to judge by"
    );
    let text = duel(&db, &["stats", "--gold-min", "0.2"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(!text.contains("BELOW THE BAR"), "{text}");
    let text = duel(&db, &["stats"]);
    let text = String::from_utf8_lossy(&text.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("careless") && l.contains('%') && l.contains("BELOW"))
        .unwrap_or("");
    assert!(line.contains("25.0%"), "{text}");

    let report = dir.path().join("report");
    let out = duel(&db, &["report", "--out", report.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::fs::read_to_string(report.join("index.html")).expect("report");
    assert!(html.contains("<h2>Gold pairs</h2>") && html.contains("below the bar"));
    assert!(
        html.contains("0 pairs agreed, 0 adjudicated, 0 contested"),
        "gold judgements are no verdicts"
    );
}
