//! `duel import` on good and bad files, through the binary as a user runs it.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write");
    p
}

fn count(db: &Path, table: &str) -> i64 {
    let c = rusqlite::Connection::open(db).expect("open");
    c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .expect("count")
}

const GOOD: &str = r#"{"prompt":"p1","response_a":"a1","response_b":"b1"}"#;

/// Each bad file: the error names file:line and the field, exit status 2, and the
/// database is unchanged (the good first line of the file is not kept either).
#[test]
fn bad_input_names_the_place_exits_2_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    let seed = write(
        dir.path(),
        "seed.jsonl",
        br#"{"prompt":"s","response_a":"x","response_b":"y","id":"dup"}"#,
    );
    assert!(
        duel(&db, &["import", seed.to_str().expect("utf8")])
            .status
            .success()
    );

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "missing.jsonl",
            br#"{"prompt":"p","response_a":"a"}"#.to_vec(),
            "field `response_b`: missing",
        ),
        (
            "empty_prompt.jsonl",
            br#"{"prompt":"   ","response_a":"a","response_b":"b"}"#.to_vec(),
            "field `prompt`: empty",
        ),
        (
            "wrong_type.jsonl",
            br#"{"prompt":"p","response_a":true,"response_b":"b"}"#.to_vec(),
            "field `response_a`: expected a string, found a boolean",
        ),
        (
            "number.jsonl",
            br#"{"prompt":3,"response_a":"a","response_b":"b"}"#.to_vec(),
            "field `prompt`: expected a string or a list of messages, found a number",
        ),
        ("not_json.jsonl", b"{prompt: p}".to_vec(), "invalid JSON"),
        (
            "not_object.jsonl",
            b"\"just a string\"".to_vec(),
            "expected a JSON object",
        ),
        (
            "bad_utf8.jsonl",
            b"{\"prompt\":\"caf\xe9\",\"response_a\":\"a\",\"response_b\":\"b\"}".to_vec(),
            "invalid UTF-8 at byte 15",
        ),
        (
            "dup_id.jsonl",
            br#"{"prompt":"other","response_a":"a","response_b":"b","id":"dup"}"#.to_vec(),
            "field `id`: duplicate id \"dup\"",
        ),
        (
            "bad_message.jsonl",
            br#"{"prompt":[{"role":"user","content":5}],"response_a":"a","response_b":"b"}"#
                .to_vec(),
            "field `prompt[0].content`",
        ),
        (
            "labeled_missing.jsonl",
            br#"{"prompt":"p","chosen":"a"}"#.to_vec(),
            "field `rejected`: missing",
        ),
    ];
    for (name, bad_line, expect) in cases {
        let mut content = format!("{GOOD}\n").into_bytes();
        content.extend_from_slice(&bad_line);
        content.push(b'\n');
        let file = write(dir.path(), name, &content);
        let out = duel(&db, &["import", file.to_str().expect("utf8")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(&format!("{name}:2: ")), "{name}: {err}");
        assert!(err.contains(expect), "{name}: expected {expect:?} in {err}");
        assert_eq!(count(&db, "pairs"), 1, "{name}: database unchanged");
    }
    // Duplicate ids inside one file, with different content.
    let file = write(
        dir.path(),
        "dup_in_file.jsonl",
        b"{\"id\":\"k\",\"prompt\":\"p\",\"response_a\":\"a\",\"response_b\":\"b\"}\n{\"id\":\"k\",\"prompt\":\"q\",\"response_a\":\"a\",\"response_b\":\"b\"}\n",
    );
    let out = duel(&db, &["import", file.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("dup_in_file.jsonl:2: field `id`: duplicate id \"k\""),
        "{err}"
    );
    assert_eq!(count(&db, "pairs"), 1);
    assert_eq!(count(&db, "labels"), 0);
}

#[test]
fn skip_invalid_imports_the_good_lines_and_reports_every_bad_one() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    let content = format!(
        "{GOOD}\n{{\"prompt\":\"p\"}}\n\n{}\nnot json\n{}\n",
        r#"{"prompt":"p2","chosen":"c","rejected":"r"}"#,
        r#"{"prompt":"p3","response_a":"a","response_b":"a"}"#
    );
    let file = write(dir.path(), "mixed.jsonl", content.as_bytes());
    let out = duel(
        &db,
        &["import", "--skip-invalid", file.to_str().expect("utf8")],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("mixed.jsonl:2: missing fields"), "{err}");
    assert!(err.contains("mixed.jsonl:5: invalid JSON"), "{err}");
    assert!(
        err.contains(&format!(
            "warning: {}:6: field `response_b`: identical",
            file.display()
        )),
        "{err}"
    );
    assert!(err.contains("1 not a pair, 2 skipped"), "{err}");
    assert_eq!(count(&db, "pairs"), 2);
    assert_eq!(
        count(&db, "labels"),
        1,
        "the labeled record brings its judgement"
    );
}

#[test]
fn bom_crlf_and_reimport() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    let mut content = b"\xEF\xBB\xBF".to_vec();
    content.extend_from_slice(format!("{GOOD}\r\n").as_bytes());
    content.extend_from_slice(
        b"{\"prompt\":\"line1\\r\\nline2\",\"response_a\":\"x\",\"response_b\":\"y\"}\r\n",
    );
    let file = write(dir.path(), "win.jsonl", &content);
    let out = duel(&db, &["import", file.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&db, "pairs"), 2);
    let c = rusqlite::Connection::open(&db).expect("open");
    let text: String = c
        .query_row(
            "SELECT text FROM prompts WHERE text LIKE 'line1%'",
            [],
            |r| r.get(0),
        )
        .expect("prompt");
    assert_eq!(text, "line1\nline2");
    // The same file again adds nothing.
    let out = duel(&db, &["import", file.to_str().expect("utf8")]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0 new pairs"));
    assert_eq!(count(&db, "pairs"), 2);
    assert_eq!(count(&db, "responses"), 4);
}

#[test]
fn a_ten_megabyte_line_is_refused_clearly_and_skippable() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    let huge = format!(
        "{{\"prompt\":\"p\",\"response_a\":\"{}\",\"response_b\":\"b\"}}",
        "z".repeat(10 << 20)
    );
    let content = format!(
        "{GOOD}\n{huge}\n{}\n",
        r#"{"prompt":"p9","response_a":"a","response_b":"b"}"#
    );
    let file = write(dir.path(), "huge.jsonl", content.as_bytes());
    let out = duel(&db, &["import", file.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let expect = format!(
        "huge.jsonl:2: record is {} bytes, over the limit",
        huge.len()
    );
    assert!(err.contains(&expect), "{err}");
    assert!(err.contains("--max-record-bytes"), "{err}");
    assert_eq!(count(&db, "pairs"), 0);

    let out = duel(
        &db,
        &["import", "--skip-invalid", file.to_str().expect("utf8")],
    );
    assert!(out.status.success());
    assert_eq!(count(&db, "pairs"), 2, "the lines around it are imported");

    // And a larger limit lets it in.
    let db2 = dir.path().join("d2.db");
    let out = duel(
        &db2,
        &[
            "import",
            "--max-record-bytes",
            "20000000",
            file.to_str().expect("utf8"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&db2, "pairs"), 3);
}

#[test]
fn csv_with_the_same_columns() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    let file = write(
        dir.path(),
        "pairs.csv",
        "\u{FEFF}id,prompt,response_a,response_b,meta\r\nc1,\"Say \"\"hi\"\"\",\"Hi!\r\nThere\",Hello,\"{\"\"k\"\":1}\"\r\nc2,Second,x,y,\r\n".as_bytes(),
    );
    let out = duel(&db, &["import", file.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&db, "pairs"), 2);
    let c = rusqlite::Connection::open(&db).expect("open");
    let (ext, meta): (String, String) = c
        .query_row(
            "SELECT ext_id, meta FROM pairs ORDER BY id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("row");
    assert_eq!((ext.as_str(), meta.as_str()), ("c1", r#"{"k":1}"#));

    let bad = write(
        dir.path(),
        "bad.csv",
        b"prompt,chosen,rejected\nq,good,bad\n,good,bad\n",
    );
    let out = duel(&db, &["import", bad.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("bad.csv:3: field `prompt`: empty"), "{err}");
    assert_eq!(count(&db, "pairs"), 2);
    // --format forces the format whatever the extension.
    let txt = write(
        dir.path(),
        "pairs.txt",
        b"prompt,response_a,response_b\nq,a,b\n",
    );
    let out = duel(
        &db,
        &["import", "--format", "csv", txt.to_str().expect("utf8")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(&db, "pairs"), 3);
}

#[test]
fn not_a_database_is_refused_and_untouched() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = write(dir.path(), "notes.txt", &b"my precious notes\n".repeat(100));
    let out = duel(&db, &["import", demo().to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not a duel database"), "{err}");
    assert_eq!(
        std::fs::read(&db).expect("read"),
        b"my precious notes\n".repeat(100)
    );
}

#[test]
fn labels_for_pairs_already_stored_are_added_in_the_stored_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    let unlabeled = write(
        dir.path(),
        "u.jsonl",
        br#"{"prompt":"p","response_a":"x","response_b":"y"}"#,
    );
    assert!(
        duel(&db, &["import", unlabeled.to_str().expect("utf8")])
            .status
            .success()
    );
    // Two raters' judgements of the same pair, one each way, arrive later.
    let labeled = write(
        dir.path(),
        "l.jsonl",
        b"{\"prompt\":\"p\",\"chosen\":\"y\",\"rejected\":\"x\"}\n{\"prompt\":\"p\",\"chosen\":\"x\",\"rejected\":\"y\"}\n",
    );
    assert!(
        duel(&db, &["import", labeled.to_str().expect("utf8")])
            .status
            .success()
    );
    let c = rusqlite::Connection::open(&db).expect("open");
    let mut st = c
        .prepare("SELECT choice FROM labels ORDER BY id")
        .expect("prep");
    let choices: Vec<String> = st
        .query_map([], |r| r.get(0))
        .expect("q")
        .map(|r| r.expect("row"))
        .collect();
    // Stored order is x (a), y (b): "y chosen" is b, "x chosen" is a.
    assert_eq!(choices, ["b", "a"]);
    assert_eq!(count(&db, "pairs"), 1);
    // Importing the same file again adds no second copy of those judgements.
    assert!(
        duel(&db, &["import", labeled.to_str().expect("utf8")])
            .status
            .success()
    );
    assert_eq!(count(&db, "labels"), 2);
}

fn schema(db: &Path) -> Vec<(String, Option<String>)> {
    let c = rusqlite::Connection::open(db).expect("open");
    let mut st = c
        .prepare("SELECT name, sql FROM sqlite_schema ORDER BY name")
        .expect("prepare");
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

fn numbered_pairs(n: usize, tag: &str) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"id\":\"{tag}-{i}\",\"prompt\":\"q{}\",\"response_a\":\"{tag}a{i}\",\"response_b\":\"{tag}b{i}\"}}\n",
                i / 3
            )
        })
        .collect()
}

/// A large import drops the unique indexes on pairs and builds them again: the
/// schema afterwards is the one the migrations made, uniqueness holds, and an
/// import that fails after the indexes were dropped leaves them as they were.
#[test]
fn a_large_import_leaves_the_schema_and_uniqueness_as_they_were() {
    use duel::io::import::{ImportOptions, import_file};
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("big.db");
    let opts = ImportOptions {
        defer_indexes_after: 50,
        ..Default::default()
    };
    let mut store = duel::store::Store::open(&db).expect("open");
    let fresh = schema(&db);
    assert!(fresh.iter().any(|(n, _)| n == "pairs_content_hash"));
    let page_size: i64 = store
        .conn()
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page size");
    assert_eq!(page_size, duel::store::PAGE_SIZE);

    let file = write(dir.path(), "big.jsonl", numbered_pairs(600, "p").as_bytes());
    let r = import_file(&mut store, &file, &opts).expect("import");
    assert_eq!(r.inserted, 600);
    assert!(
        r.rebuilt_indexes,
        "the indexes were not deferred: nothing here is tested"
    );
    assert_eq!(schema(&db), fresh);

    // A large labeled import goes without the trigger that keeps the disagreement
    // order's keys, and rebuilds them: the keys are the ones a count from scratch
    // gives, for new pairs and for a stored pair the file judges, and the trigger is
    // back.
    let db2 = dir.path().join("labeled.db");
    let mut store2 = duel::store::Store::open(&db2).expect("open");
    let small = write(
        dir.path(),
        "small.jsonl",
        numbered_pairs(30, "s").as_bytes(),
    );
    import_file(&mut store2, &small, &opts).expect("small import");
    let mut labeled: String = (0..200)
        .map(|i| format!("{{\"prompt\":\"l{i}\",\"chosen\":\"x{i}\",\"rejected\":\"y{i}\"}}\n"))
        .collect();
    labeled.push_str("{\"prompt\":\"q0\",\"chosen\":\"sb0\",\"rejected\":\"sa0\"}\n");
    let labeled = write(dir.path(), "labeled.jsonl", labeled.as_bytes());
    let r = import_file(&mut store2, &labeled, &opts).expect("labeled import");
    assert_eq!(r.inserted, 200);
    assert!(
        r.rebuilt_indexes,
        "not a bulk import: nothing here is tested"
    );
    let verdicts = |table: &str| -> Vec<(i64, i64, i64, f64)> {
        store2
            .conn()
            .prepare(&format!(
                "SELECT pair_id, choices, lean, against FROM {table} ORDER BY pair_id"
            ))
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let kept = verdicts("pair_verdicts");
    assert_eq!(kept.len(), 201);
    assert_eq!(kept[0], (1, 1, -1, 0.0), "pair s-0 judged B");
    assert_eq!(kept, verdicts("pair_verdicts_fresh"));
    assert_eq!(schema(&db2), fresh);

    // The same file again: every record is found as already stored.
    let r = import_file(&mut store, &file, &opts).expect("reimport");
    assert_eq!((r.inserted, r.duplicates), (0, 600));

    // A duplicate id far past the point where the indexes were dropped: refused,
    // nothing of the file kept, the indexes back.
    let mut clash = numbered_pairs(400, "c");
    clash.push_str(
        "{\"id\":\"p-7\",\"prompt\":\"other\",\"response_a\":\"x\",\"response_b\":\"y\"}\n",
    );
    let clash = write(dir.path(), "clash.jsonl", clash.as_bytes());
    let e = import_file(&mut store, &clash, &opts).expect_err("duplicate id");
    assert!(e.to_string().contains("clash.jsonl:401"), "{e}");
    assert!(e.to_string().contains("duplicate id \"p-7\""), "{e}");
    // A duplicate within the file itself, also past that point.
    let mut twice = numbered_pairs(300, "t");
    twice.push_str("{\"id\":\"t-3\",\"prompt\":\"z\",\"response_a\":\"x\",\"response_b\":\"y\"}\n");
    let twice = write(dir.path(), "twice.jsonl", twice.as_bytes());
    let e = import_file(&mut store, &twice, &opts).expect_err("duplicate id in file");
    assert!(e.to_string().contains("twice.jsonl:301"), "{e}");
    assert_eq!(count(&db, "pairs"), 600);
    assert_eq!(count(&db, "responses"), 1200);
    assert_eq!(schema(&db), fresh);

    // The rebuilt indexes enforce uniqueness and serve lookups.
    let c = rusqlite::Connection::open(&db).expect("open");
    let dup = c.execute(
        "INSERT INTO pairs (prompt_id, response_a, response_b, content_hash, ext_id, created_at)
         SELECT prompt_id, response_a, response_b, content_hash, NULL, created_at FROM pairs LIMIT 1",
        [],
    );
    assert!(
        dup.is_err(),
        "a second pair with the same content was accepted"
    );
    let plan: String = c
        .query_row(
            "EXPLAIN QUERY PLAN SELECT id FROM pairs WHERE ext_id = 'p-9'",
            [],
            |r| r.get(3),
        )
        .expect("plan");
    assert!(plan.contains("pairs_ext_id"), "{plan}");
    drop(c);

    // Foreign keys are checked again after the import.
    let fk: i64 = store
        .conn()
        .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
        .expect("pragma");
    assert_eq!(fk, 1);
    let orphans: i64 = store
        .conn()
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .expect("fk check");
    assert_eq!(orphans, 0);
}

fn texts(db: &Path) -> Vec<(String, String, String)> {
    let c = rusqlite::Connection::open(db).expect("open");
    let mut st = c
        .prepare(
            "SELECT pr.text, ra.text, rb.text FROM pairs p
             JOIN prompts pr ON pr.id = p.prompt_id
             JOIN responses ra ON ra.id = p.response_a
             JOIN responses rb ON rb.id = p.response_b ORDER BY p.id",
        )
        .expect("prepare");
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Files as they are published (`tests/fixtures/published/`: a slice of the PandaLM
/// test set with its records whose response is empty, and Anthropic HH harmless in
/// the layout it is published in, with its empty chosen responses) import whole,
/// with no flag, and the empty responses are kept as the judgements they are.
#[test]
fn published_files_with_empty_responses_import_as_they_are() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    let fixtures = common::repo().join("tests/fixtures/published");
    let panda = fixtures.join("pandalm_slice.jsonl");
    let out = duel(&db, &["import", panda.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("40 records, 40 new pairs (40 with a label)"),
        "{err}"
    );
    let stored = texts(&db);
    let empty = stored
        .iter()
        .filter(|(_, a, b)| a.is_empty() || b.is_empty())
        .count();
    assert_eq!(empty, 22, "every empty response is kept");

    let hh = fixtures.join("hh_harmless_published_layout.jsonl");
    let out = duel(&db, &["import", hh.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("30 records, 30 new pairs (30 with a label)"),
        "{err}"
    );
    let stored = texts(&db);
    assert_eq!(stored.len(), 70);
    let hh_empty: Vec<_> = stored[40..]
        .iter()
        .filter(|(_, a, _)| a.is_empty())
        .collect();
    assert_eq!(hh_empty.len(), 2, "the two empty chosen responses");
    assert!(
        hh_empty
            .iter()
            .all(|(p, _, b)| p.ends_with("\n\nAssistant:") && !b.is_empty())
    );

    // The export carries them as empty strings, which TRL reads as they are.
    let out = duel(&db, &["export"]);
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(rows.len(), 70);
    assert_eq!(
        rows.iter()
            .filter(|r| r["chosen"] == "" || r["rejected"] == "")
            .count(),
        24
    );
}

/// A well-formed record that cannot be a pair is left out with a warning naming its
/// line, counted, and the rest of the file imports, without `--skip-invalid`.
#[test]
fn records_that_cannot_be_pairs_are_skipped_with_a_warning() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    let lines = [
        GOOD.to_owned(),
        r#"{"prompt":"p","response_a":"same","response_b":"same"}"#.to_owned(),
        serde_json::json!({
            "chosen": "\n\nHuman: hi\n\nAssistant: hello",
            "rejected": "\n\nHuman: bye\n\nAssistant: hello"
        })
        .to_string(),
        serde_json::json!({
            "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "x"}],
            "rejected": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "y"}]
        })
        .to_string(),
        r#"{"prompt":"q","chosen":"","rejected":"something"}"#.to_owned(),
        r#"{"prompt":"q","chosen":"","rejected":""}"#.to_owned(),
    ];
    let file = write(dir.path(), "odd.jsonl", lines.join("\n").as_bytes());
    let out = duel(&db, &["import", file.to_str().expect("utf8")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for (line, field, what) in [
        (2, "response_b", "identical to the other response"),
        (
            3,
            "rejected",
            "its conversation before the last assistant turn differs",
        ),
        (4, "rejected", "its messages before the last differ"),
        (6, "rejected", "identical to the other response"),
    ] {
        assert!(
            err.contains(&format!(
                "warning: {}:{line}: field `{field}`: {what}",
                file.display()
            )),
            "line {line}: {err}"
        );
    }
    assert!(
        err.contains(
            "6 records, 2 new pairs (1 with a label), 0 already present, 4 not a pair, 0 skipped"
        ),
        "{err}"
    );
    assert_eq!(count(&db, "pairs"), 2);
}
