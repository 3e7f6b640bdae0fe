//! Nothing lost under concurrency and crashes: several labelers on one file, and
//! `kill -9` during labeling, import (into a new and a labeled database), export
//! and generation. `DUEL_SOAK=1` runs the kill tests
//! many more times.

mod common;

use common::{bin, duel, pairs_file};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rounds(quick: usize) -> usize {
    if std::env::var_os("DUEL_SOAK").is_some() {
        quick * 20
    } else {
        quick
    }
}

fn query(db: &Path, sql: &str) -> i64 {
    let c = rusqlite::Connection::open(db).expect("open");
    c.query_row(sql, [], |r| r.get(0)).expect(sql)
}

fn integrity(db: &Path) {
    let c = rusqlite::Connection::open(db).expect("open");
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(ok, "ok");
}

fn kill9(child: &mut std::process::Child) {
    let _ = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Four labeler processes, 2,000 judgements each as fast as they go, one file:
/// every judgement each one reported is stored, once, and no pair is judged twice.
#[test]
fn four_labelers_on_one_file_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("shared.db");
    let file = dir.path().join("pairs.jsonl");
    pairs_file(&file, 8_100, "c");
    assert!(
        duel(&db, &["import", file.to_str().expect("utf8")])
            .status
            .success()
    );
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "12".repeat(1_000)).expect("keys");
    let script = format!("@{}", keys.display());
    let children: Vec<_> = (0..4)
        .map(|i| {
            Command::new(bin())
                .arg("--db")
                .arg(&db)
                .args([
                    "label",
                    "--no-train",
                    "--annotator",
                    &format!("a{i}"),
                    "--script",
                    &script,
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut reported = HashSet::new();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "labeler {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(
            lines.len(),
            2_000,
            "labeler {i} made {} judgements",
            lines.len()
        );
        for l in lines {
            assert!(reported.insert(l["label_id"].as_i64().expect("id")));
        }
    }
    assert_eq!(
        query(&db, "SELECT count(*) FROM labels WHERE undone_at IS NULL"),
        8_000
    );
    assert_eq!(
        query(&db, "SELECT count(DISTINCT pair_id) FROM labels"),
        8_000,
        "a pair was judged twice"
    );
    for a in 0..4 {
        assert_eq!(
            query(
                &db,
                &format!("SELECT count(*) FROM labels WHERE annotator = 'a{a}'")
            ),
            2_000
        );
    }
    let c = rusqlite::Connection::open(&db).expect("open");
    let mut stmt = c.prepare("SELECT id FROM labels").expect("prepare");
    let stored: HashSet<i64> = stmt
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("id"))
        .collect();
    assert_eq!(stored, reported);
    assert_eq!(
        query(&db, "SELECT count(*) FROM claims"),
        0,
        "claims are released on quit"
    );
    integrity(&db);
}

/// `kill -9` while judging: every judgement the labeler reported as saved is in the
/// file, and a new labeler takes the pair the dead one had on screen once its claim
/// expires (here: at once, as the claim is made stale by hand).
#[test]
fn kill_9_while_labeling_loses_no_saved_judgement() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("k.db");
    let file = dir.path().join("pairs.jsonl");
    pairs_file(&file, 3_000, "k");
    assert!(
        duel(&db, &["import", file.to_str().expect("utf8")])
            .status
            .success()
    );
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "1u12<S-left>2t x1".repeat(200)).expect("keys");
    let script = format!("@{}", keys.display());
    let mut rng = StdRng::seed_from_u64(11);
    let mut seen: HashSet<i64> = HashSet::new();
    let mut undone: HashSet<i64> = HashSet::new();
    for round in 0..rounds(4) {
        let mut child = Command::new(bin())
            .arg("--db")
            .arg(&db)
            .args([
                "label",
                "--no-train",
                "--annotator",
                "kim",
                "--script",
                &script,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let stop_after = rng.random_range(5..300usize);
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut last_label = None;
        let mut record = |line: &str| {
            let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            if let Some(id) = v["label_id"].as_i64() {
                last_label = Some(id);
                seen.insert(id);
                undone.remove(&id);
            } else if let Some(id) = v["undone"].as_i64() {
                undone.insert(id);
            }
        };
        for _ in 0..stop_after {
            let Some(Ok(line)) = lines.next() else { break };
            record(&line);
        }
        kill9(&mut child);
        // What it reported before dying, still in the pipe.
        for line in lines.map_while(Result::ok) {
            record(&line);
        }
        integrity(&db);
        let c = rusqlite::Connection::open(&db).expect("open");
        // An undo committed just before the kill, whose line was never printed.
        let mut unreported_undo = Vec::new();
        for id in &seen {
            let (found, was_undone): (i64, bool) = c
                .query_row(
                    "SELECT count(*), max(undone_at IS NOT NULL) FROM labels WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get::<_, Option<bool>>(1)?.unwrap_or(false))),
                )
                .expect("query");
            assert_eq!(
                found, 1,
                "round {round}: label {id} was reported saved and is gone"
            );
            if was_undone && !undone.contains(id) {
                unreported_undo.push(*id);
            }
        }
        assert!(
            unreported_undo.len() <= 1 && unreported_undo.iter().all(|id| Some(*id) == last_label),
            "round {round}: labels {unreported_undo:?} were undone without an undo (last reported {last_label:?})"
        );
        undone.extend(unreported_undo);
        // The dead labeler's claim: expired by hand, so the next round can go on.
        c.execute("UPDATE claims SET expires_at = 0", [])
            .expect("expire");
    }
    assert!(seen.len() >= 10);
}

/// `kill -9` during an import: the file is one transaction, so either all of it is
/// in or none of it, and the database stays sound.
#[test]
fn kill_9_during_import_leaves_all_or_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("i.db");
    let file = dir.path().join("big.jsonl");
    let n = 60_000;
    pairs_file(&file, n, "i");
    // How long a whole import takes here, to aim the kills inside it.
    let probe = dir.path().join("probe.db");
    let t = Instant::now();
    assert!(
        duel(&probe, &["import", file.to_str().expect("utf8")])
            .status
            .success()
    );
    let full = t.elapsed();
    let mut rng = StdRng::seed_from_u64(5);
    let mut partial_seen = 0;
    let mut hot_journals = 0;
    let journal = dir.path().join("i.db-journal");
    for _ in 0..rounds(4) {
        let _ = std::fs::remove_file(&db);
        let mut child = Command::new(bin())
            .arg("--db")
            .arg(&db)
            .arg("import")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(full.mul_f64(rng.random_range(0.05..0.9)));
        kill9(&mut child);
        if !db.exists() {
            continue;
        }
        // A first import writes through a rollback journal: a kill inside it leaves
        // the journal, which the next open rolls back.
        let had_journal = journal.exists();
        integrity(&db);
        if query(
            &db,
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'pairs'",
        ) == 0
        {
            // Killed while the new file was given its schema (a busy machine can start
            // the process that late): that is nothing, and all of the schema is.
            assert_eq!(
                query(&db, "SELECT count(*) FROM sqlite_schema"),
                0,
                "a half-made schema"
            );
            continue;
        }
        let pairs = query(&db, "SELECT count(*) FROM pairs");
        assert!(
            pairs == 0 || pairs == n as i64,
            "an interrupted import left {pairs} pairs"
        );
        if pairs == 0 {
            partial_seen += 1;
            hot_journals += usize::from(had_journal);
        }
        assert_eq!(query(&db, "SELECT count(*) FROM responses"), 2 * pairs);
        // The import drops the unique indexes while it runs: they are back.
        assert_eq!(
            query(
                &db,
                "SELECT count(*) FROM sqlite_schema WHERE type = 'index'
                 AND name IN ('pairs_content_hash', 'pairs_ext_id')"
            ),
            2
        );
        // So is the trigger it suspends.
        assert_eq!(
            query(
                &db,
                "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'
                 AND name = 'labels_verdict_insert'"
            ),
            1
        );
        // The file says rollback journal until duel opens it again: then it is back
        // in WAL mode, which the labeler relies on, with the same pairs.
        assert!(duel(&db, &["stats"]).status.success());
        let mode: String = rusqlite::Connection::open(&db)
            .expect("open")
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
        assert_eq!(query(&db, "SELECT count(*) FROM pairs"), pairs);
    }
    // At least one kill landed inside the import, in its rollback journal (the test
    // would prove nothing otherwise).
    assert!(partial_seen >= 1);
    assert!(hot_journals >= 1, "no kill left a rollback journal");
}

/// `kill -9` during an export to a file: the file is written aside and renamed, so
/// it is either absent or whole.
#[test]
fn kill_9_during_export_leaves_no_half_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("e.db");
    let file = dir.path().join("pairs.jsonl");
    let n = 60_000;
    pairs_file(&file, n, "e");
    assert!(
        duel(&db, &["import", file.to_str().expect("utf8")])
            .status
            .success()
    );
    let out = dir.path().join("out.jsonl");
    let t = Instant::now();
    assert!(
        duel(
            &db,
            &[
                "export",
                "--format",
                "pairs",
                "--out",
                out.to_str().expect("utf8")
            ]
        )
        .status
        .success()
    );
    let full = t.elapsed();
    let mut rng = StdRng::seed_from_u64(6);
    let mut absent = 0;
    for _ in 0..rounds(4) {
        let _ = std::fs::remove_file(&out);
        let mut child = Command::new(bin())
            .arg("--db")
            .arg(&db)
            .args(["export", "--format", "pairs", "--out"])
            .arg(&out)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(
            full.mul_f64(rng.random_range(0.05..0.9))
                .max(Duration::from_millis(20)),
        );
        kill9(&mut child);
        match std::fs::read_to_string(&out) {
            Err(_) => absent += 1,
            Ok(text) => {
                assert_eq!(text.lines().count(), n, "a half export");
                assert!(
                    text.lines()
                        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
                );
            }
        }
    }
    assert!(absent >= 1, "no kill landed inside the export");
    // The temporary files of killed exports are all that is left behind, next to it.
    integrity(&db);
}

/// `kill -9` during an import into a database that already holds pairs and
/// judgements (the WAL path, as when annotators are labeling): the file's pairs
/// are all there or none, and nothing that was there before is lost.
#[test]
fn kill_9_during_import_into_a_labeled_database_loses_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let base = dir.path().join("base.db");
    let labeled = dir.path().join("labeled.jsonl");
    let mut f = std::fs::File::create(&labeled).expect("create");
    for i in 0..300 {
        writeln!(
            f,
            "{}",
            serde_json::json!({
                "prompt": format!("kept question {i}"),
                "chosen": format!("good {i}"),
                "rejected": format!("bad {i}"),
            })
        )
        .expect("write");
    }
    drop(f);
    assert!(
        duel(&base, &["import", labeled.to_str().expect("utf8")])
            .status
            .success()
    );
    let file = dir.path().join("big.jsonl");
    let n = 60_000;
    pairs_file(&file, n, "w");
    let db = dir.path().join("w.db");
    let probe = dir.path().join("probe.db");
    std::fs::copy(&base, &probe).expect("copy");
    let t = Instant::now();
    assert!(
        duel(&probe, &["import", file.to_str().expect("utf8")])
            .status
            .success()
    );
    let full = t.elapsed();
    let mut rng = StdRng::seed_from_u64(7);
    let mut partial_seen = 0;
    for _ in 0..rounds(4) {
        for ext in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
        }
        std::fs::copy(&base, &db).expect("copy");
        let mut child = Command::new(bin())
            .arg("--db")
            .arg(&db)
            .arg("import")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(full.mul_f64(rng.random_range(0.05..0.9)));
        kill9(&mut child);
        integrity(&db);
        let pairs = query(&db, "SELECT count(*) FROM pairs");
        assert!(
            pairs == 300 || pairs == 300 + n as i64,
            "an interrupted import left {pairs} pairs"
        );
        partial_seen += usize::from(pairs == 300);
        assert_eq!(query(&db, "SELECT count(*) FROM labels"), 300);
        assert_eq!(
            query(
                &db,
                "SELECT count(*) FROM pairs JOIN prompts ON prompts.id = pairs.prompt_id
                 WHERE prompts.text LIKE 'kept question %'"
            ),
            300
        );
        assert_eq!(query(&db, "SELECT count(*) FROM responses"), 2 * pairs);
    }
    assert!(partial_seen >= 1, "no kill landed inside the import");
}

/// `kill -9` during `duel generate`: every stored pair is whole (both responses and
/// their generation record), the database passes its integrity check, and the next
/// run goes on from there.
#[test]
fn kill_9_during_generation_leaves_whole_pairs() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("g.db");
    let prompts = dir.path().join("prompts.txt");
    let lines: Vec<String> = (0..30)
        .map(|i| format!("Name {i} things that are red."))
        .collect();
    std::fs::write(&prompts, lines.join("\n")).expect("write");
    let count = || {
        rusqlite::Connection::open(&db)
            .and_then(|c| c.query_row("SELECT count(*) FROM pairs", [], |r| r.get::<_, i64>(0)))
            .unwrap_or(0)
    };
    let mut rng = StdRng::seed_from_u64(9);
    let mut last = 0;
    for round in 0..rounds(2) {
        let mut child = Command::new(bin())
            .arg("--db")
            .arg(&db)
            .args(["generate", "--max-new-tokens", "16"])
            .arg(&prompts)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        // Wait for a pair past the last round's, then a little more.
        let deadline = Instant::now() + Duration::from_secs(300);
        while count() <= last && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..800)));
        kill9(&mut child);
        integrity(&db);
        let pairs = count();
        assert!(pairs > last, "round {round}: no pair stored");
        assert_eq!(query(&db, "SELECT count(*) FROM responses"), 2 * pairs);
        assert_eq!(
            query(&db, "SELECT count(*) FROM pairs WHERE source = 'generate'"),
            pairs
        );
        last = pairs;
    }
}
