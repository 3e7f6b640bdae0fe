//! Data the way the Hugging Face tools hold it: Parquet and gzipped files written by
//! Python import as their JSON Lines do; Parquet and KTO exports and the cards load
//! in `datasets`, `trl` and `huggingface_hub`.

mod common;

use common::*;
use duel::domain::{Choice, NewLabel, Strength};
use duel::store::Store;
use serde_json::{Value, json};
use std::path::Path;

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// `duel export --format pairs` and `--format trl` of `db`, the two views a user
/// reads back.
fn exports(db: &Path) -> (String, String) {
    let pairs = duel(db, &["export", "--format", "pairs"]);
    ok(&pairs);
    let trl = duel(db, &["export", "--format", "trl"]);
    ok(&trl);
    (
        String::from_utf8(pairs.stdout).expect("utf8"),
        String::from_utf8(trl.stdout).expect("utf8"),
    )
}

fn pair_count(db: &Path) -> i64 {
    Store::open(db).expect("open").pair_count().expect("count")
}

/// Four record forms, each as JSON Lines and as Parquet written by pyarrow or by
/// `datasets` (several row groups, a null id, nested message lists, a struct of
/// metadata).
const WRITE_FORMS: &str = r#"
import json, sys, os
import pyarrow as pa, pyarrow.parquet as pq
from datasets import Dataset
out = sys.argv[1]
demo = [json.loads(l) for l in open(sys.argv[2])]
forms = {
  "explicit": [{"id": (None if i % 5 == 0 else f"x{i}"), "prompt": f"Question {i}: why?",
                "chosen": f"Because {i}.", "rejected": f"No idea {i}."} for i in range(23)],
  "conversational": [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Hi {i}"}],
                      "chosen": [{"role": "assistant", "content": f"Hello {i}!"}],
                      "rejected": [{"role": "assistant", "content": "Go away."}]} for i in range(9)],
  "implicit": [{"chosen": f"\n\nHuman: Tell me {i}.\n\nAssistant: Sure, {i}.",
                "rejected": f"\n\nHuman: Tell me {i}.\n\nAssistant: No."} for i in range(7)],
  "unlabeled": [dict(r, meta={"generator": r["meta"]["generator"], "strategy": r["meta"]["strategy"]})
                for r in demo if isinstance(r["prompt"], str)],
}
for name, rows in forms.items():
    path = os.path.join(out, name + ".parquet")
    if name == "conversational":
        Dataset.from_list(rows).to_parquet(path)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)
    # The same rows as JSON Lines, as pyarrow reads them back (a struct column gives
    # every row all of its fields).
    with open(os.path.join(out, name + ".jsonl"), "w") as f:
        for r in pq.read_table(path).to_pylist():
            f.write(json.dumps(r) + "\n")
print(json.dumps({k: len(v) for k, v in forms.items()}))
"#;

#[test]
fn parquet_written_by_python_imports_as_its_json_lines_do() {
    let dir = tempfile::tempdir().expect("tmp");
    let counts = py_json(WRITE_FORMS, &[dir.path(), &demo()]);
    let (from_json, from_parquet) = (dir.path().join("j.db"), dir.path().join("p.db"));
    for form in ["explicit", "conversational", "implicit", "unlabeled"] {
        let j = dir.path().join(format!("{form}.jsonl"));
        let p = dir.path().join(format!("{form}.parquet"));
        ok(&duel(&from_json, &["import", s(&j)]));
        let said = ok(&duel(&from_parquet, &["import", s(&p)]));
        let n = counts[form].as_u64().expect("count");
        assert!(
            said.contains(&format!("{n} records, {n} new")),
            "{form}: {said}"
        );
    }
    assert_eq!(exports(&from_json), exports(&from_parquet));
    // The forms really went through: message lists kept, transcripts split.
    let (pairs, trl) = exports(&from_parquet);
    assert!(pairs.contains(r#""prompt":[{"role":"system","content":"Be brief."}"#));
    assert!(trl.contains(r#""prompt":"\n\nHuman: Tell me 3.\n\nAssistant:","chosen":" Sure, 3.""#));
    assert!(pairs.contains(
        r#""meta":{"generator":"SmolLM2-135M-Instruct.Q4_1","strategy":"temperatures"}"#
    ));
    // A Parquet file named otherwise is still read as one; a second import adds nothing.
    let renamed = dir.path().join("explicit.data");
    std::fs::copy(dir.path().join("explicit.parquet"), &renamed).expect("copy");
    let said = ok(&duel(&from_parquet, &["import", s(&renamed)]));
    assert!(said.contains("0 new"), "{said}");
}

/// The HH-RLHF files as published: gzipped JSON Lines of `{chosen, rejected}`
/// transcripts. Here 200 records of the development set put back in that layout.
const WRITE_HH: &str = r#"
import json, sys, gzip, csv
src, out = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(src)][:200]
pub = [{"chosen": r["prompt"] + " " + r["chosen"], "rejected": r["prompt"] + " " + r["rejected"]} for r in rows]
with gzip.open(out + "/train.jsonl.gz", "wt") as f:
    for r in pub:
        f.write(json.dumps(r) + "\n")
with open(out + "/train.jsonl", "w") as f:
    for r in pub:
        f.write(json.dumps(r) + "\n")
with gzip.open(out + "/pairs.csv.gz", "wt", newline="") as f:
    w = csv.writer(f)
    w.writerow(["prompt", "chosen", "rejected"])
    for r in rows:
        w.writerow([r["prompt"], r["chosen"], r["rejected"]])
print(json.dumps([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]))
"#;

#[test]
fn gzipped_files_import_as_published() {
    let dir = tempfile::tempdir().expect("tmp");
    let hh = repo().join("../shared/data/hh_harmless_dev.jsonl");
    if !hh.exists() {
        eprintln!("skipped: {} is not here", hh.display());
        return;
    }
    let rows = py_json(WRITE_HH, &[&hh, dir.path()]);
    let (gz, plain, csv) = (
        dir.path().join("gz.db"),
        dir.path().join("plain.db"),
        dir.path().join("csv.db"),
    );
    ok(&duel(
        &gz,
        &["import", s(&dir.path().join("train.jsonl.gz"))],
    ));
    ok(&duel(
        &plain,
        &["import", s(&dir.path().join("train.jsonl"))],
    ));
    ok(&duel(
        &csv,
        &["import", s(&dir.path().join("pairs.csv.gz"))],
    ));
    assert_eq!(exports(&gz), exports(&plain));
    // Split at the last assistant turn, the prompt and responses are the data set's.
    let trl: Vec<Value> = exports(&gz)
        .1
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let strip = |v: &Value| json!({"prompt": v["prompt"], "chosen": v["chosen"].as_str().map(str::trim), "rejected": v["rejected"].as_str().map(str::trim)});
    let got: Vec<Value> = trl.iter().map(strip).collect();
    let want: Vec<Value> = rows.as_array().expect("rows").iter().map(strip).collect();
    assert_eq!(got.len(), 200);
    for w in &want {
        assert!(got.contains(w), "missing {w}");
    }
    // The CSV holds the data set's own columns: its export is them, exactly.
    let from_csv: Vec<Value> = exports(&csv)
        .1
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    for w in rows.as_array().expect("rows") {
        assert!(from_csv.contains(w), "missing {w}");
    }
    // By content, not by name: a gzipped file called .jsonl is decompressed.
    let odd = dir.path().join("odd.jsonl");
    std::fs::copy(dir.path().join("train.jsonl.gz"), &odd).expect("copy");
    let again = dir.path().join("odd.db");
    ok(&duel(&again, &["import", "--format", "jsonl", s(&odd)]));
    assert_eq!(exports(&again), exports(&plain));
}

#[test]
fn bad_parquet_and_gzip_files_change_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = dir.path().join("d.db");
    ok(&duel(&db, &["import", s(&demo())]));
    let before = exports(&db);
    let script = r#"
import sys, gzip, pyarrow as pa, pyarrow.parquet as pq
out = sys.argv[1]
rows = [{"prompt": f"p{i}", "chosen": b"good", "rejected": b"bad"} for i in range(5)]
rows[2]["chosen"] = b"\xff\xfe not text"
pq.write_table(pa.Table.from_pylist(rows), out + "/binary.parquet")
pq.write_table(pa.Table.from_pylist([{"prompt": "p", "chosen": "a", "rejected": "b"}] * 3), out + "/whole.parquet")
data = open(out + "/whole.parquet", "rb").read()
open(out + "/cut.parquet", "wb").write(data[: len(data) // 2])
z = gzip.compress(b''.join(b'{"prompt": "q%d", "chosen": "a", "rejected": "b"}\n' % i for i in range(2000)))
open(out + "/cut.jsonl.gz", "wb").write(z[: len(z) // 2])
open(out + "/gzipped.parquet.gz", "wb").write(gzip.compress(data))
pq.write_table(pa.Table.from_pylist([{"prompt": "p", "chosen": "a", "rejected": "b"}] * 3),
               out + "/brotli.parquet", compression="brotli")
print("{}")
"#;
    py_json(script, &[dir.path()]);
    let pairs = pair_count(&db);
    // A row that is not text: named by file, row and column.
    let bad = dir.path().join("binary.parquet");
    let out = duel(&db, &["import", s(&bad)]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: row 3: field `chosen`: binary data",
            bad.display()
        )),
        "{err}"
    );
    // A file the Parquet library panics on (kept from fuzzing) is refused the same way.
    std::fs::copy(
        repo().join("tests/fixtures/fuzz-regressions/parquet_file/page-shorter-than-header"),
        dir.path().join("crash.parquet"),
    )
    .expect("copy");
    for cut in [
        "cut.parquet",
        "cut.jsonl.gz",
        "crash.parquet",
        "gzipped.parquet.gz",
    ] {
        let path = dir.path().join(cut);
        // --skip-invalid skips records, never a file that cannot be read whole.
        for args in [vec!["import"], vec!["import", "--skip-invalid"]] {
            let out = duel(&db, &[&args[..], &[s(&path)]].concat());
            assert_eq!(out.status.code(), Some(2), "{cut} {args:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(!err.contains("RUST_BACKTRACE"), "{err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    assert_eq!(pair_count(&db), pairs);
    assert_eq!(exports(&db), before);
    // --skip-invalid imports the rest and lists the bad row.
    let out = duel(&db, &["import", "--skip-invalid", s(&bad)]);
    let said = ok(&out);
    assert!(said.contains("row 3: field `chosen`"), "{said}");
    assert_eq!(pair_count(&db), pairs + 4);
    // Every compression pyarrow writes is read (its three rows are one pair).
    ok(&duel(
        &db,
        &["import", s(&dir.path().join("brotli.parquet"))],
    ));
    assert_eq!(pair_count(&db), pairs + 5);
}

/// Judgements of every kind on the demo pairs: decisive ones (one with a strength),
/// a tie and both-bad.
fn judged_db(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("d.db");
    ok(&duel(&db, &["import", s(&demo())]));
    let mut store = Store::open(&db).expect("open");
    judge(&mut store, 1, "alice", Choice::A);
    let mut strong = NewLabel::plain(2, "alice", Choice::B, "test");
    strong.strength = Strength::new(3);
    store.record_label(&strong).expect("label");
    judge(&mut store, 3, "alice", Choice::Tie);
    judge(&mut store, 4, "alice", Choice::BothBad);
    judge(&mut store, 5, "alice", Choice::A);
    judge(&mut store, 5, "bob", Choice::A);
    db
}

#[test]
fn parquet_and_kto_exports_load_as_trl_reads_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = judged_db(dir.path());
    let (jsonl, parquet, kto) = (
        dir.path().join("trl.jsonl"),
        dir.path().join("trl.parquet"),
        dir.path().join("kto.jsonl"),
    );
    ok(&duel(&db, &["export", "--out", s(&jsonl)]));
    ok(&duel(
        &db,
        &["export", "--format", "parquet", "--out", s(&parquet)],
    ));
    ok(&duel(&db, &["export", "--format", "kto", "--out", s(&kto)]));
    let script = r#"
import sys, json
from datasets import load_dataset
from trl.data_utils import unpair_preference_dataset
j = load_dataset("json", data_files=sys.argv[1], split="train")
p = load_dataset("parquet", data_files=sys.argv[2], split="train")
k = load_dataset("json", data_files=sys.argv[3], split="train")
unpaired = unpair_preference_dataset(j.remove_columns(["margin"]))
print(json.dumps({
  "json": j.to_list(), "parquet": p.to_list(),
  "kto": k.to_list(), "kto_features": {n: str(f) for n, f in k.features.items()},
  "unpaired": unpaired.to_list(),
}))
"#;
    let got = py_json(script, &[&jsonl, &parquet, &kto]);
    // The Parquet file holds the trl rows, margins where they were.
    assert_eq!(got["parquet"], got["json"]);
    let rows = got["json"].as_array().expect("rows");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows.iter().filter(|r| !r["margin"].is_null()).count(), 1);
    // KTO: the columns KTOTrainer reads, with a boolean label.
    assert_eq!(
        got["kto_features"],
        json!({"prompt": "Value('string')", "completion": "Value('string')", "label": "Value('bool')"})
    );
    // Each decisive pair as TRL's own unpairing gives it, and both-bad as two
    // undesirable completions; the tie is left out.
    let kto = got["kto"].as_array().expect("kto");
    let unpaired = got["unpaired"].as_array().expect("unpaired");
    assert_eq!(kto.len(), unpaired.len() + 2);
    for u in unpaired {
        assert!(kto.contains(u), "missing {u}");
    }
    let store = Store::open(&db).expect("open");
    let pair = |id| store.pair(id).expect("pair").expect("some");
    let both_bad = pair(4);
    for text in [&both_bad.response_a, &both_bad.response_b] {
        assert!(kto.contains(
            &json!({"prompt": both_bad.prompt.text, "completion": text, "label": false})
        ));
    }
    let tie = pair(3);
    assert!(kto.iter().all(|r| r["prompt"] != json!(tie.prompt.text)));
}

#[test]
fn cards_load_with_huggingface_hub() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = judged_db(dir.path());
    // A hostile annotator name stays in the Markdown, escaped, and the YAML loads.
    let mut store = Store::open(&db).expect("open");
    judge(
        &mut store,
        6,
        "eve|\u{1b}[31m\n---\nlicense: mit",
        Choice::B,
    );
    drop(store);
    // And enough labeled pairs that a held-out share has some of each.
    let labeled = dir.path().join("labeled.jsonl");
    let lines: Vec<String> = (0..40)
        .map(|i| {
            json!({"prompt": format!("Q{i}?"), "chosen": format!("Yes {i}."), "rejected": "No."})
                .to_string()
        })
        .collect();
    std::fs::write(&labeled, lines.join("\n")).expect("write");
    ok(&duel(&db, &["import", s(&labeled)]));
    let data = dir.path().join("trl.parquet");
    let card = dir.path().join("README.md");
    ok(&duel(
        &db,
        &[
            "export",
            "--format",
            "parquet",
            "--out",
            s(&data),
            "--card",
            s(&card),
        ],
    ));
    // The model card, from a run on the real encoder.
    let model = dir.path().join("rm");
    let out = duel(
        &db,
        &[
            "train",
            "--steps",
            "2",
            "--holdout",
            "0.5",
            "--max-length",
            "64",
            "--out",
            s(&model),
            "--json",
        ],
    );
    ok(&out);
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary");
    let script = r#"
import sys, json
from huggingface_hub import DatasetCard, ModelCard
d = DatasetCard.load(sys.argv[1])
m = ModelCard.load(sys.argv[2])
print(json.dumps({"dataset": d.data.to_dict(), "dataset_text": d.text,
                  "model": m.data.to_dict(), "model_text": m.text}))
"#;
    let got = py_json(script, &[&card, &model.join("README.md")]);
    let d = &got["dataset"];
    assert_eq!(d["license"], "unknown", "{d}");
    assert_eq!(
        d["configs"][0]["data_files"][0]["path"], "trl.parquet",
        "{d}"
    );
    let text = got["dataset_text"].as_str().expect("text");
    assert!(text.contains("| annotators | 4 |"), "{text}");
    assert!(text.contains("eve\\|\\[31m --- license: mit"), "{text}");
    assert!(!text.contains('\u{1b}'));
    assert!(text.contains("| rows in this export | 44 |"), "{text}");
    let m = &got["model"];
    assert_eq!(m["base_model"], "sentence-transformers/all-MiniLM-L6-v2");
    assert_eq!(m["library_name"], "transformers");
    let text = got["model_text"].as_str().expect("text");
    let acc = summary["heldout_accuracy"].as_f64().expect("accuracy");
    let held = summary["heldout_pairs"].as_u64().expect("held");
    assert!(
        text.contains(&format!("**{acc:.3}** on {held} pairs, 95% interval")),
        "{text}"
    );
    assert!(text.contains("| learning rate | 5e-5 |"), "{text}");
    assert!(text.contains("| 1 | 0."), "{text}");
    assert!(text.contains("47 judgements by 4 annotators"), "{text}");
}

/// A large Parquet import sets the indexes aside as a JSON Lines one does (the bar
/// that decides it counts rows, not the bytes read to recognise the file).
#[test]
fn a_large_parquet_import_defers_its_indexes() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("many.parquet");
    let mut w = duel::io::parquet::TableWriter::new(
        std::fs::File::create(&file).expect("create"),
        &["prompt", "response_a", "response_b"],
        None,
    )
    .expect("writer");
    for i in 0..12_000 {
        w.push(&[&format!("q{i}"), "yes", "no"], None).expect("row");
    }
    w.finish().expect("finish");
    let mut store = Store::open(&dir.path().join("d.db")).expect("open");
    let report = duel::io::import::import_file(
        &mut store,
        &file,
        &duel::io::import::ImportOptions::default(),
    )
    .expect("import");
    assert_eq!(report.inserted, 12_000);
    assert!(report.rebuilt_indexes);
}
