//! `duel bench learn` on real data: the reward model, trained by cross-validation
//! folds on a slice of PandaLM, predicts held-out judgements well above chance. The
//! threshold comes from measured runs (see `LEARNS_AT_LEAST`); a broken gradient,
//! loss, schedule or head falls to chance and fails it.

mod common;

use common::*;

fn slice() -> std::path::PathBuf {
    repo().join("tests/fixtures/learn/pandalm_240.jsonl")
}

/// Out-of-fold accuracy on the slice, 2 folds by prompt, one epoch with the
/// defaults (lr 5e-5, no length objective). Measured with seeds 0–3: 0.579, 0.596,
/// 0.554, 0.550; the test runs seed 1 (0.596). A model that learns nothing scores
/// 0.5 with a standard deviation of about 0.035 over these 121 prompts, so it
/// passes 0.56 about once in twenty; one whose loss, gradient or head is broken
/// usually scores below 0.5 or exactly 0.5. "Longer response wins" scores 0.671 on
/// this slice.
const LEARNS_AT_LEAST: f64 = 0.56;

#[test]
fn the_reward_model_learns_held_out_judgements_on_real_data() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = duel(
        &dir.path().join("unused.db"),
        &[
            "bench",
            "learn",
            slice().to_str().expect("utf-8"),
            "--folds",
            "2",
            "--seeds",
            "1",
            "--epochs",
            "1",
            "--resamples",
            "500",
            "--json",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["pairs"], 240);
    assert_eq!(v["prompts"], 121);
    let o = &v["options"][0];
    eprintln!("{o}");
    let acc = o["accuracy"].as_f64().expect("accuracy");
    let (lo, hi) = (
        o["interval"]["low"].as_f64().expect("low"),
        o["interval"]["high"].as_f64().expect("high"),
    );
    assert!(lo <= acc && acc <= hi && hi - lo < 0.3, "{o}");
    assert!(
        acc >= LEARNS_AT_LEAST,
        "accuracy {acc} below {LEARNS_AT_LEAST}: {o}\n{err}"
    );
    // Each fold was trained and reported.
    assert_eq!(err.matches("seed 1 fold").count(), 2, "{err}");
}

#[test]
fn bad_learning_options_are_refused_before_anything_trains() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("unused.db");
    let file = slice();
    let file = file.to_str().expect("utf-8");
    for (args, needle) in [
        (vec!["--option", "fast"], "expected NAME=OPTIONS"),
        (vec!["--option", "a=--lr -1"], "--option a: --lr -1"),
        (vec!["--option", "a=--length-aux -2"], "--length-aux -2"),
        (
            vec!["--option", "a=--schedule constant --warmup 0.1"],
            "--option a: --warmup",
        ),
        (vec!["--option", "a=--bogus 1"], "--option a:"),
        (vec!["--folds", "200"], "--folds"),
        (vec!["--option", "a=--epochs 0"], "--epochs 0"),
    ] {
        let mut all = vec!["bench", "learn", file];
        all.extend(&args);
        let out = duel(&db, &all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("fold 1/"), "{args:?} trained: {err}");
    }
    // More folds than prompts.
    let few = dir.path().join("few.jsonl");
    std::fs::write(
        &few,
        "{\"prompt\":\"p\",\"chosen\":\"a\",\"rejected\":\"b\"}\n{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"d\"}\n",
    )
    .expect("write");
    let out = duel(&db, &["bench", "learn", few.to_str().expect("utf-8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("1 prompt cannot fill 4 folds"), "{err}");
    assert!(!db.exists(), "bench learn made a database");
}

/// Another trainer's predictions (`--external`, as `scripts/baseline-learn.py` writes
/// them) are reported beside the options and compared with the first on the same
/// resamples; a file made for other folds or seeds is refused before anything trains.
#[test]
fn another_trainers_predictions_are_compared_on_the_same_folds() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("unused.db");
    let file = slice();
    let file = file.to_str().expect("utf-8");
    let out = duel(
        &db,
        &[
            "bench",
            "learn",
            file,
            "--folds",
            "2",
            "--pairs",
            "24",
            "--print-folds",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let fold_of: Vec<u64> = plan["fold_of"]
        .as_array()
        .expect("fold_of")
        .iter()
        .map(|f| f.as_u64().expect("fold"))
        .collect();
    assert_eq!(fold_of.len(), 24);
    assert!(fold_of.contains(&0) && fold_of.contains(&1), "{fold_of:?}");
    // Pairs of one prompt share a fold.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(slice())
        .expect("read")
        .lines()
        .take(24)
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect();
    for (i, a) in lines.iter().enumerate() {
        for (j, b) in lines.iter().enumerate() {
            if a["prompt"] == b["prompt"] {
                assert_eq!(fold_of[i], fold_of[j], "pairs {i} and {j}");
            }
        }
    }

    let write = |name: &str, seeds: &[u64], right: bool, fold_of: &[u64]| {
        let path = dir.path().join(name);
        let v = serde_json::json!({
            "options": "a test", "epochs": 1, "pairs": fold_of.len(), "folds": 2,
            "fold_of": fold_of, "seeds": seeds,
            "right": seeds.iter().map(|_| vec![right; fold_of.len()]).collect::<Vec<_>>(),
            "seconds": 1.5,
        });
        std::fs::write(&path, v.to_string()).expect("write");
        format!("{}={}", name.trim_end_matches(".json"), path.display())
    };
    let all = write("all.json", &[0], true, &fold_of);
    let none = write("none.json", &[0], false, &fold_of);
    let base = [
        "bench", "learn", file, "--folds", "2", "--pairs", "24", "--seeds", "0",
    ];

    let mut shifted = fold_of.clone();
    shifted[0] = 1 - shifted[0];
    for (external, needle) in [
        (write("seeds.json", &[0, 1], true, &fold_of), "seeds [0, 1]"),
        (
            write("folds.json", &[0], true, &shifted),
            "are not this run's",
        ),
        (
            write("short.json", &[0], true, &fold_of[..20]),
            "are not this run's",
        ),
        ("x=/nonexistent.json".to_owned(), "/nonexistent.json"),
        ("nothing".to_owned(), "expected NAME=FILE"),
    ] {
        let mut args = base.to_vec();
        args.extend(["--external", &external]);
        let out = duel(&db, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{external}: {err}");
        assert!(err.contains(needle), "{external}: {err}");
        assert!(!err.contains("fold 1/"), "{external} trained: {err}");
    }

    let mut args = base.to_vec();
    args.extend([
        "--resamples",
        "200",
        "--json",
        "--external",
        &all,
        "--external",
        &none,
    ]);
    let out = duel(&db, &args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let rows = v["options"].as_array().expect("options");
    let names: Vec<&str> = rows
        .iter()
        .map(|o| o["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["defaults", "all", "none"]);
    let acc = |k: usize| rows[k]["accuracy"].as_f64().expect("accuracy");
    assert_eq!(acc(1), 1.0);
    assert_eq!(acc(2), 0.0);
    assert_eq!(rows[1]["options"], "a test");
    assert_eq!(rows[1]["seconds"], 1.5);
    let d = rows[1]["vs_first"]["mean"].as_f64().expect("difference");
    assert!((d - (1.0 - acc(0))).abs() < 1e-12, "{d} against {}", acc(0));
    assert!(
        rows[2]["vs_first"]["interval"]["high"]
            .as_f64()
            .expect("high")
            <= 0.0
    );
}

/// `duel bench live` with two queue orders reports each order's live model at each
/// count, the second against the first on the same test pairs, and how many labels
/// the second needed to reach what the first scored at the largest count.
#[test]
fn simulated_labeling_compares_queue_orders_on_the_same_folds() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = duel(
        &dir.path().join("unused.db"),
        &[
            "bench",
            "live",
            slice().to_str().expect("utf-8"),
            "--folds",
            "2",
            "--orders",
            "random,uncertain",
            "--at",
            "48,100",
            "--max-length",
            "96",
            "--resamples",
            "300",
            "--json",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let points = v["points"].as_array().expect("points");
    let live = |order: &str, n: u64| {
        let p = points
            .iter()
            .find(|p| p["order"] == order && p["labels"] == n)
            .unwrap_or_else(|| panic!("no {order} at {n}: {v}"));
        (p["live"].as_f64().expect("live"), p)
    };
    for n in [48, 100] {
        let (random, rp) = live("random", n);
        let (uncertain, up) = live("uncertain", n);
        assert!(rp["minus_first_order"].is_null(), "{rp}");
        let d = up["minus_first_order"].as_array().expect("difference");
        let (mean, lo, hi) = (
            d[0].as_f64().expect("mean"),
            d[1].as_f64().expect("low"),
            d[2].as_f64().expect("high"),
        );
        assert!((mean - (uncertain - random)).abs() < 1e-9, "{up} vs {rp}");
        assert!(lo <= mean && mean <= hi && hi - lo < 0.5, "{up}");
    }
    // By 100 labels the live model has scored the pool and the uncertain order has
    // served other pairs than random order: the comparison is of two runs, not of
    // one with itself.
    let (random, rp) = live("random", 100);
    let (uncertain, up) = live("uncertain", 100);
    assert!(random != uncertain, "{rp} and {up}");
    let reach = v["reach"].as_array().expect("reach");
    assert_eq!(reach.len(), 1, "{v}");
    let r = &reach[0];
    assert_eq!(r["order"], "uncertain");
    assert_eq!(r["target_labels"], 100);
    let target = live("random", 100).0;
    assert_eq!(r["target"].as_f64(), Some(target));
    let expect = [48, 100]
        .into_iter()
        .find(|&n| live("uncertain", n).0 >= target);
    assert_eq!(r["labels"].as_u64(), expect, "{v}");
    // Both orders labeled both folds.
    assert_eq!(
        err.matches("Random passes 1 seed 0 fold").count(),
        2,
        "{err}"
    );
    assert_eq!(
        err.matches("Uncertain passes 1 seed 0 fold").count(),
        2,
        "{err}"
    );
}
