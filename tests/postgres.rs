//! The same duel on PostgreSQL: each test runs against a database of its own on the
//! server `DUEL_TEST_PG` names (`scripts/with-postgres.sh` starts a throwaway one;
//! `make test` does). Without it the tests say so and pass, unless
//! `DUEL_REQUIRE_PG` is set, as `make test` sets it.

mod common;

use common::demo;
use duel::domain::{Choice, NewLabel};
use duel::store::{QueueOrder, QueueWalk, Store, StoreError, TakeLease};
use duel::train::worker::{TrainerConfig, TrainerEvent, TrainerState};
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `duel`, run in a scratch folder: for a PostgreSQL database it keeps its log and
/// model in the current folder, which must not be the source tree.
fn bin_cmd() -> Command {
    let mut c = Command::new(common::bin());
    c.current_dir(env!("CARGO_TARGET_TMPDIR"));
    c
}

/// Runs `duel --db DB ARGS...` to the end.
fn duel(db: &Path, args: &[&str]) -> std::process::Output {
    bin_cmd()
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("run duel")
}

/// A new, empty database on the test server, as a `--db` URL; `None` (after saying
/// why) when there is no server and none is required.
fn pg_db() -> Option<PathBuf> {
    let Some(admin) = std::env::var_os("DUEL_TEST_PG") else {
        assert!(
            std::env::var_os("DUEL_REQUIRE_PG").is_none(),
            "DUEL_REQUIRE_PG is set but DUEL_TEST_PG is not: run under scripts/with-postgres.sh"
        );
        eprintln!("no PostgreSQL test server (DUEL_TEST_PG): skipped");
        return None;
    };
    let admin = admin.into_string().expect("a UTF-8 URL");
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name = format!(
        "duel_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let mut c = postgres::Client::connect(&admin, postgres::NoTls).expect("connect to the server");
    c.batch_execute(&format!("CREATE DATABASE {name}"))
        .expect("create database");
    let base = admin.rsplit_once('/').expect("a URL with a database").0;
    Some(PathBuf::from(format!("{base}/{name}")))
}

/// `db` as the login role `name`, a member of `group` (`duel_annotator` or
/// `duel_lead`), created on the server when missing. The database must have been
/// migrated (the groups exist then).
fn as_role(db: &Path, name: &str, group: &str) -> PathBuf {
    let mut c = postgres::Client::connect(url(db), postgres::NoTls).expect("connect");
    // Roles belong to the server, and tests run side by side: another may have made it.
    let _ = c.batch_execute(&format!("CREATE ROLE {name} LOGIN"));
    c.batch_execute(&format!("GRANT {group} TO {name}"))
        .expect("grant");
    let u = url(db);
    let (scheme, rest) = u.split_once("://").expect("a URL");
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    PathBuf::from(format!("{scheme}://{name}@{host}"))
}

fn url(db: &Path) -> &str {
    db.to_str().expect("utf8")
}

fn sql_i64(db: &Path, sql: &str) -> i64 {
    let mut c = postgres::Client::connect(url(db), postgres::NoTls).expect("connect");
    c.query_one(sql, &[]).expect(sql).get(0)
}

/// Waits up to 2 minutes for `done`, failing with `what` if it does not come or
/// with "the trainer quit" if `child` exits first.
fn wait_while_running(child: &mut std::process::Child, what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the trainer quit"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn sql_run(db: &Path, sql: &str) {
    let mut c = postgres::Client::connect(url(db), postgres::NoTls).expect("connect");
    c.batch_execute(sql).expect(sql);
}

fn lines(out: &std::process::Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// A row of `export --format raw` without what differs between any two runs (the
/// times).
fn timeless(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("created_at");
        o.remove("elapsed_ms");
        if o.get("undone_at").is_some_and(Value::is_string) {
            o.insert("undone_at".into(), "(a time)".into());
        }
    }
    v
}

/// `v` without the keys that hold times (how long judgements took, when, how
/// many an hour).
fn strip_times(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.retain(|k, _| {
                !(k.contains("ms")
                    || k.contains("time")
                    || k.contains("second")
                    || k.contains("per_hour"))
            });
            o.values_mut().for_each(strip_times);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_times),
        _ => {}
    }
}

/// The same session on a SQLite file and on PostgreSQL, through the command line:
/// import the demo pairs, two annotators label by script (judgements, an undo, a
/// tie, both bad), then every export format and the statistics read the same.
#[test]
fn import_label_export_read_the_same_on_both_engines() {
    let Some(pg) = pg_db() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let lite = dir.path().join("d.db");
    let mut outputs = Vec::new();
    assert!(duel(&pg, &["migrate"]).status.success());
    let on_pg = [
        pg.clone(),
        as_role(&pg, "alice", "duel_annotator"),
        as_role(&pg, "bob", "duel_annotator"),
    ];
    let on_lite = [lite.clone(), lite.clone(), lite.clone()];
    for [db, alice_db, bob_db] in [&on_lite, &on_pg] {
        let db = db.as_path();
        assert!(
            duel(db, &["import", demo().to_str().expect("utf8")])
                .status
                .success()
        );
        let alice = lines(&duel(
            alice_db,
            &[
                "label",
                "--no-train",
                "--annotator",
                "alice",
                "--order-seed",
                "7",
                "--script",
                "12u2tx1",
            ],
        ));
        let bob = lines(&duel(
            bob_db,
            &[
                "label",
                "--no-train",
                "--annotator",
                "bob",
                "--order-seed",
                "8",
                "--overlap",
                "2",
                "--script",
                "2211",
            ],
        ));
        let mut session: Vec<Value> = alice.into_iter().chain(bob).collect();
        for v in &mut session {
            v.as_object_mut().expect("object").remove("elapsed_ms");
        }
        let exports: Vec<Vec<Value>> = [
            &["export", "--format", "trl"][..],
            &["export", "--format", "trl-conversational"],
            &["export", "--format", "raw"],
            &["export", "--format", "pairs"],
            &["export", "--format", "trl", "--consensus", "all"],
        ]
        .iter()
        .map(|args| lines(&duel(db, args)).into_iter().map(timeless).collect())
        .collect();
        let out = duel(db, &["stats", "--json"]);
        assert!(out.status.success());
        let mut stats: Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
        strip_times(&mut stats);
        outputs.push((session, exports, stats));
    }
    let (lite_out, pg_out) = (&outputs[0], &outputs[1]);
    assert_eq!(lite_out.0.len(), 11, "{:?}", lite_out.0);
    assert_eq!(lite_out.0, pg_out.0, "the labelers' reports");
    assert!(!lite_out.1[0].is_empty());
    for (i, (l, p)) in lite_out.1.iter().zip(&pg_out.1).enumerate() {
        assert_eq!(l.len(), p.len(), "export {i}: rows");
        for (a, b) in l.iter().zip(p) {
            assert!(a == b, "export {i} differs:\nSQLite: {a}\nPostgreSQL: {b}");
        }
    }
    assert_eq!(lite_out.2, pg_out.2, "the statistics");
}

/// The store's queue on PostgreSQL: every order serves each pair once, a claim
/// keeps a pair from a second labeler, and a judgement, an undo and a relabel stand
/// as on SQLite.
#[test]
fn claims_and_judgements_on_postgres() {
    let Some(pg) = pg_db() else { return };
    let mut s = Store::open(&pg).expect("open");
    assert!(s.is_postgres());
    duel::io::import::import_file(&mut s, &demo(), &Default::default()).expect("import");
    let pairs = s.pair_count().expect("count");
    assert!(pairs >= 20, "{pairs}");
    let mut other = Store::open(&pg).expect("second connection");
    // Each walker judges every pair; the overlap lets the next one judge them again,
    // and no more: a pair another session holds is never served.
    let orders = [
        QueueOrder::Sequential,
        QueueOrder::Random,
        QueueOrder::Uncertain,
    ];
    for (overlap, order) in (1..).zip(orders) {
        let annotator = format!("walker-{}", order.as_str());
        let mut walk = QueueWalk::new(11);
        let mut seen = HashSet::new();
        while let Some(id) = s
            .claim_next_in_order(&annotator, "s1", overlap, &HashSet::new(), order, &mut walk)
            .expect("claim")
        {
            let mut w2 = QueueWalk::new(11);
            let theirs = other
                .claim_next_in_order("someone", "s2", overlap, &HashSet::new(), order, &mut w2)
                .expect("claim");
            assert_ne!(theirs, Some(id), "{order:?}: a claimed pair served twice");
            other.release_claims("s2").expect("release");
            s.record_label(&NewLabel::plain(id, &annotator, Choice::A, "test"))
                .expect("label");
            assert!(seen.insert(id), "{order:?}: pair {id} served twice");
        }
        assert_eq!(seen.len() as i64, pairs, "{order:?} served every pair");
    }
    let p = s.progress("walker-random").expect("progress");
    assert_eq!((p.pairs, p.mine), (pairs, pairs));
    // Undo and relabel keep both rows.
    let id = s
        .record_label(&NewLabel::plain(1, "carol", Choice::B, "test"))
        .expect("label");
    assert!(s.undo_label(id).expect("undo"));
    assert!(
        !s.undo_label(id).expect("undo twice"),
        "an undone label stays undone"
    );
    let first = s
        .record_label(&NewLabel::plain(2, "carol", Choice::B, "test"))
        .expect("label");
    let second = s
        .relabel(first, &NewLabel::plain(2, "carol", Choice::A, "review"))
        .expect("relabel");
    assert!(second > first);
    let marks = s.label_marks().expect("marks");
    assert_eq!(marks.newest, Some(second));
    assert!(marks.last_undone.expect("an undo").ends_with('Z'));
    // Scores and the disagreement order: a contested pair comes first.
    s.record_pair_scores([(3, 0.9), (4, 0.2)], 5)
        .expect("scores");
    assert_eq!(s.pair_score(3).expect("score"), Some((0.9, 5)));
    s.record_label(&NewLabel::plain(3, "dave", Choice::B, "test"))
        .expect("label");
    let mut walk = QueueWalk::new(1);
    let first_disagreement = s
        .claim_next_in_order(
            "erin",
            "s3",
            10,
            &HashSet::new(),
            QueueOrder::Disagreement,
            &mut walk,
        )
        .expect("claim");
    assert_eq!(first_disagreement, Some(3), "the contested pair first");
}

/// The training lease, runs and metrics on PostgreSQL: one holder at a time; a
/// follower reads the metrics in the order written.
#[test]
fn lease_and_metrics_on_postgres() {
    let Some(pg) = pg_db() else { return };
    let mut a = Store::open(&pg).expect("open");
    let mut b = Store::open(&pg).expect("open");
    assert_eq!(a.take_lease("alice", "sa").expect("take"), TakeLease::Taken);
    assert!(matches!(
        b.take_lease("bob", "sb").expect("take"),
        TakeLease::HeldBy(l) if l.holder == "alice"
    ));
    assert!(a.renew_lease("sa").expect("renew"));
    assert!(!b.renew_lease("sb").expect("renew"));
    a.release_lease("sa").expect("release");
    assert_eq!(b.take_lease("bob", "sb").expect("take"), TakeLease::Taken);

    let run = a.start_train_run("{}").expect("run");
    let seen = b.last_metric_rowid().expect("rowid");
    for step in 1..=3u64 {
        a.record_train_step(
            run,
            &duel::store::StepMetrics {
                step,
                loss: 1.0 / step as f64,
                accuracy: 0.5,
                pairs_per_s: 10.0,
                labels_used: 8,
            },
        )
        .expect("step");
    }
    a.record_eval(
        run,
        &duel::store::EvalMetrics {
            step: 3,
            loss: 0.6,
            accuracy: 0.75,
            labels_used: 8,
        },
    )
    .expect("eval");
    let rows = b.metrics_since(seen).expect("since");
    let kinds: Vec<(i64, &str)> = rows.iter().map(|m| (m.step, m.kind.as_str())).collect();
    assert_eq!(
        kinds,
        [(1, "train"), (2, "train"), (3, "train"), (3, "eval")]
    );
    let p = b.run_progress(run).expect("progress");
    assert_eq!(
        (p.last_step, p.accuracy, p.accuracy_step),
        (Some(3), Some(0.75), Some(3))
    );
    a.record_checkpoint(run, 3, Path::new("/tmp/x"), Some(0.75))
        .expect("checkpoint");
    assert_eq!(
        sql_i64(
            &pg,
            &format!("SELECT count(*) FROM checkpoints WHERE run_id = {run} AND step = 3")
        ),
        1
    );
}

/// `duel migrate` creates the schema and says its version; a database from a newer
/// duel is refused, and left as it was.
#[test]
fn migrate_and_a_newer_schema_is_refused() {
    let Some(pg) = pg_db() else { return };
    let out = duel(&pg, &["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let numbers: Vec<&str> = said
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .collect();
    assert!(said.contains("schema version"), "{said}");
    assert_eq!(
        numbers[numbers.len() - 2],
        numbers[numbers.len() - 1],
        "{said}"
    );
    assert!(duel(&pg, &["migrate"]).status.success(), "migrating twice");
    let mut c = postgres::Client::connect(url(&pg), postgres::NoTls).expect("connect");
    c.batch_execute("UPDATE duel_schema SET version = 999")
        .expect("bump");
    let err = Store::open(&pg).expect_err("must refuse");
    assert!(
        matches!(err, StoreError::TooNew { found: 999, .. }),
        "{err}"
    );
    let out = duel(&pg, &["import", demo().to_str().expect("utf8")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("newer duel"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sql_i64(&pg, "SELECT count(*) FROM pairs"), 0);
    assert_eq!(sql_i64(&pg, "SELECT version FROM duel_schema"), 999);
}

/// A database owner who is not the server's superuser migrates: with CREATEROLE it
/// makes the roles and joins duel_lead itself; without, it is told what to ask the
/// administrator for, nothing is written, and once that is done it migrates.
#[test]
fn a_database_owner_migrates_without_being_superuser() {
    let Some(pg) = pg_db() else { return };
    // Another test's migration, or this one, makes the groups; roles are the server's.
    assert!(duel(&pg, &["migrate"]).status.success());
    let admin = std::env::var("DUEL_TEST_PG").expect("server");
    let base = admin.rsplit_once('/').expect("a URL").0.to_owned();
    let host = base.split_once('@').expect("a user").1;
    let tag = std::process::id();
    let mut c = postgres::Client::connect(&admin, postgres::NoTls).expect("connect");
    let owned_by = |c: &mut postgres::Client, role: &str, rights: &str| -> PathBuf {
        let role = format!("{role}_{tag}");
        c.batch_execute(&format!("CREATE ROLE {role} LOGIN {rights}"))
            .expect("role");
        c.batch_execute(&format!("CREATE DATABASE {role} OWNER {role}"))
            .expect("database");
        PathBuf::from(format!("postgres://{role}@{host}/{role}"))
    };
    let demo = demo();
    let demo = demo.to_str().expect("utf8");

    let lead = owned_by(&mut c, "owner_createrole", "CREATEROLE");
    let out = duel(&lead, &["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(duel(&lead, &["import", demo]).status.success());
    assert_eq!(sql_i64(&lead, "SELECT count(*) FROM pairs"), 36);

    let plain = owned_by(&mut c, "owner_plain", "");
    let out = duel(&plain, &["migrate"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    let role = format!("owner_plain_{tag}");
    assert!(
        said.contains(&format!("GRANT duel_lead TO \"{role}\";")),
        "{said}"
    );
    assert!(said.contains("administrator"), "{said}");
    assert_eq!(
        sql_i64(
            &plain,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        0,
        "nothing written"
    );
    c.batch_execute(&format!("GRANT duel_lead TO {role}"))
        .expect("grant");
    let out = duel(&plain, &["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(duel(&plain, &["import", demo]).status.success());
    assert_eq!(sql_i64(&plain, "SELECT count(*) FROM pairs"), 36);
}

/// A large import sets the tables' indexes aside only into a database nobody else
/// is connected to: it locks the tables until it commits, and a labeler reading its
/// next pair would wait for the whole import. Beside another session holding a
/// read lock, the import goes the ordinary way and does not wait for it.
#[test]
fn a_large_import_locks_the_tables_only_when_nobody_else_is_connected() {
    use duel::io::import::{ImportOptions, import_file};
    let Some(pg) = pg_db() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    // Set aside once 500 pairs are in, when the whole file (read at once, it is
    // small) promises at least a quarter as many new pairs as are stored.
    let opts = ImportOptions {
        defer_indexes_after: 500,
        ..Default::default()
    };
    let file = |tag: &str| {
        let path = dir.path().join(format!("{tag}.jsonl"));
        let rows: String = (0..600)
            .map(|i| {
                format!(
                    "{{\"prompt\":\"q{}\",\"response_a\":\"{tag}a{i}\",\"response_b\":\"{tag}b{i}\"}}\n",
                    i / 3
                )
            })
            .collect();
        std::fs::write(&path, rows).expect("write");
        path
    };
    let mut store = Store::open(&pg).expect("open");
    let quiet = import_file(&mut store, &file("a"), &opts).expect("import");
    assert!(
        quiet.rebuilt_indexes,
        "a quiet database: set aside and built again"
    );

    // A labeler connected, between two pairs: it holds no lock yet, but would wait
    // on its next read for the whole import if the tables were locked.
    let mut labeler = postgres::Client::connect(url(&pg), postgres::NoTls).expect("connect");
    let idle = import_file(&mut store, &file("c"), &opts).expect("import");
    assert_eq!(idle.inserted, 600);
    assert!(
        !idle.rebuilt_indexes,
        "the tables were locked beside a labeler"
    );

    // A labeler in a transaction that has read the pairs: its lock lasts until it
    // ends, which it does only after the import.
    let mut reading = labeler.transaction().expect("begin");
    let seen: i64 = reading
        .query_one("SELECT count(*) FROM pairs", &[])
        .expect("read")
        .get(0);
    assert_eq!(seen, 1200);
    let (done, finished) = std::sync::mpsc::channel();
    let (path, url_b) = (file("b"), pg.clone());
    std::thread::spawn(move || {
        let mut store = Store::open(&url_b).expect("open");
        let _ = done.send(import_file(&mut store, &path, &opts).map_err(|e| e.to_string()));
    });
    let busy = finished
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the import waited for the labeler's lock")
        .expect("import");
    assert_eq!(busy.inserted, 600);
    assert!(
        !busy.rebuilt_indexes,
        "the tables were locked beside a labeler"
    );
    reading.commit().expect("end");
    assert_eq!(sql_i64(&pg, "SELECT count(*) FROM pairs"), 1800);
}

/// A file large enough that PostgreSQL's bulk path sends its rows in several `COPY`s
/// (each sent while the next are built) reads back as from a SQLite file, every
/// text as it was: tabs, backslashes, line ends, quotes and non-ASCII, conversations,
/// metadata, labeled records. A first import into an empty database numbers its rows
/// itself; the sequences are moved past them, so a second import, beside a labeler
/// (it then draws its ids from the sequences), collides with nothing.
#[test]
fn a_large_import_stores_every_text_as_sqlite_does() {
    let Some(pg) = pg_db() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let lite = dir.path().join("d.db");
    let file = |tag: &str, n: usize| {
        let path = dir.path().join(format!("{tag}.jsonl"));
        let mut out = String::new();
        for i in 0..n {
            let odd = format!(
                "{tag} {i}\tcolumns\\N \\\\ \"quoted\"\r\nnext line — café ✓ 🦀 {}",
                "words ".repeat(60)
            );
            let prompt = if i % 7 == 0 {
                serde_json::json!([
                    {"role": "system", "content": "Be\tbrief."},
                    {"role": "user", "content": format!("q{}\n{odd}", i / 3)},
                ])
            } else {
                Value::String(format!("q{}", i / 3))
            };
            let mut rec = serde_json::json!({"id": format!("{tag}-{i}"), "prompt": prompt});
            let (a, b) = (format!("A {odd}"), format!("B {odd}"));
            if i % 5 == 0 {
                rec["chosen"] = a.into();
                rec["rejected"] = b.into();
            } else {
                rec["response_a"] = a.into();
                rec["response_b"] = b.into();
            }
            if i % 3 == 0 {
                rec["meta"] = serde_json::json!({"note": "tab\there", "n": i});
                rec["origin"] = "x\\y".into();
            }
            out.push_str(&rec.to_string());
            out.push('\n');
        }
        std::fs::write(&path, out).expect("write");
        path
    };
    // About 20 MB of rows each, more than one `COPY`'s worth (16 MB).
    let (first, second) = (file("a", 24_000), file("b", 24_000));
    let import = |db: &Path, path: &Path| {
        let out = duel(db, &["import", path.to_str().expect("utf8")]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    import(&lite, &first);
    import(&pg, &first);
    for table in ["prompts", "responses", "pairs"] {
        let seq = sql_i64(&pg, &format!("SELECT last_value FROM {table}_id_seq"));
        let max = sql_i64(&pg, &format!("SELECT max(id) FROM {table}"));
        assert!(seq >= max, "{table}: the sequence at {seq}, an id {max}");
    }
    import(&lite, &second);
    {
        // Connected: the import goes the ordinary way, drawing ids from the sequences.
        let _labeler = postgres::Client::connect(url(&pg), postgres::NoTls).expect("connect");
        import(&pg, &second);
    }
    assert_eq!(sql_i64(&pg, "SELECT count(*) FROM pairs"), 48_000);
    assert_eq!(sql_i64(&pg, "SELECT count(*) FROM labels"), 9_600);
    for format in ["raw", "pairs", "trl-conversational"] {
        let rows = |db: &Path| -> Vec<Value> {
            lines(&duel(db, &["export", "--format", format]))
                .into_iter()
                .map(timeless)
                .collect()
        };
        let (l, p) = (rows(&lite), rows(&pg));
        assert!(l.len() >= 9_600, "{format}: {} rows", l.len());
        assert_eq!(l.len(), p.len(), "{format}: rows");
        for (a, b) in l.iter().zip(&p) {
            assert!(a == b, "{format} differs:\nSQLite: {a}\nPostgreSQL: {b}");
        }
    }
}

/// A server that does not answer is a clear error naming it, without the password.
#[test]
fn an_unreachable_server_is_named_without_its_password() {
    let out = duel(
        Path::new("postgres://ann:secret@127.0.0.1:1/nothing"),
        &["stats"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("postgres://ann:***@127.0.0.1:1/nothing"),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
}

/// Four labeler processes, 2,000 judgements each as fast as they go, on one
/// PostgreSQL database: every judgement each reported is stored, once, and no pair
/// is judged twice.
#[test]
fn four_labelers_on_postgres_lose_and_duplicate_nothing() {
    let Some(pg) = pg_db() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("pairs.jsonl");
    common::pairs_file(&file, 8_100, "c");
    assert!(
        duel(&pg, &["import", file.to_str().expect("utf8")])
            .status
            .success()
    );
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "12".repeat(1_000)).expect("keys");
    let script = format!("@{}", keys.display());
    // Each labeler as its own role: on PostgreSQL the annotator is who connected.
    let children: Vec<_> = (0..4)
        .map(|i| {
            bin_cmd()
                .arg("--db")
                .arg(as_role(&pg, &format!("a{i}"), "duel_annotator"))
                .args(["label", "--no-train", "--script", &script])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut reported = HashSet::new();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().expect("wait");
        let made = lines(&out);
        assert_eq!(made.len(), 2_000, "labeler {i}");
        for l in made {
            assert!(reported.insert(l["label_id"].as_i64().expect("id")));
        }
    }
    assert_eq!(
        sql_i64(&pg, "SELECT count(*) FROM labels WHERE undone_at IS NULL"),
        8_000
    );
    assert_eq!(
        sql_i64(&pg, "SELECT count(DISTINCT pair_id) FROM labels"),
        8_000,
        "a pair was judged twice"
    );
    let mut c = postgres::Client::connect(url(&pg), postgres::NoTls).expect("connect");
    let stored: HashSet<i64> = c
        .query("SELECT id FROM labels", &[])
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, reported);
    assert_eq!(
        sql_i64(&pg, "SELECT count(*) FROM claims"),
        0,
        "claims released on quit"
    );
}

/// What an annotator's role may do on PostgreSQL: judge as itself, undo its own
/// judgements, claim pairs, read the pairs, never a gold pair's answer; not judge as
/// another, undo another's, delete, import or train. A lead's role may.
#[test]
fn an_annotator_role_judges_only_as_itself() {
    let Some(pg) = pg_db() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    assert!(duel(&pg, &["migrate"]).status.success());
    let lead = as_role(&pg, "lena", "duel_lead");
    let alice = as_role(&pg, "alice", "duel_annotator");
    let bob = as_role(&pg, "bob", "duel_annotator");
    let gold = dir.path().join("gold.jsonl");
    std::fs::write(
        &gold,
        "{\"prompt\": \"2 + 2?\", \"chosen\": \"4\", \"rejected\": \"5\"}\n",
    )
    .expect("gold");
    assert!(
        duel(&lead, &["import", demo().to_str().expect("utf8")])
            .status
            .success()
    );
    assert!(
        duel(&lead, &["import", "--gold", gold.to_str().expect("utf8")])
            .status
            .success()
    );

    let mut a = Store::open(&alice).expect("alice connects");
    assert_eq!(a.server_role().expect("role").as_deref(), Some("alice"));
    assert!(!a.may_train().expect("may train"));
    let mut b = Store::open(&bob).expect("bob connects");
    let own = a
        .record_label(&NewLabel::plain(1, "alice", Choice::A, "tui"))
        .expect("alice judges as alice");
    let err = a
        .record_label(&NewLabel::plain(1, "bob", Choice::B, "tui"))
        .expect_err("alice may not judge as bob");
    assert!(err.to_string().contains("row-level security"), "{err}");
    let adjudication = a.record_label(&NewLabel::plain(3, "alice", Choice::B, "adjudication"));
    assert!(adjudication.is_err(), "an annotator does not adjudicate");
    let bobs = b
        .record_label(&NewLabel::plain(2, "bob", Choice::B, "tui"))
        .expect("bob judges as bob");
    assert!(
        !a.undo_label(bobs).expect("undo"),
        "alice cannot undo bob's judgement"
    );
    assert!(
        a.relabel(bobs, &NewLabel::plain(2, "alice", Choice::A, "review"))
            .is_err(),
        "nor replace it"
    );
    assert!(a.undo_label(own).expect("undo"), "alice undoes her own");
    assert_eq!(
        sql_i64(
            &pg,
            &format!("SELECT count(*) FROM labels WHERE id = {bobs} AND undone_at IS NULL")
        ),
        1
    );
    // The queue works as alice, the gold pair included, without reading its answer.
    let mut walk = QueueWalk::new(3);
    let gold_pair = a
        .claim_next_in_order(
            "alice",
            "sa",
            1,
            &HashSet::new(),
            QueueOrder::Gold,
            &mut walk,
        )
        .expect("claim a gold pair");
    assert_eq!(
        gold_pair,
        Some(sql_i64(&pg, "SELECT id FROM pairs WHERE gold IS NOT NULL"))
    );
    a.release_claims("sa").expect("release");
    // Straight SQL as alice: what the grants refuse.
    let mut c = postgres::Client::connect(url(&alice), postgres::NoTls).expect("connect");
    for sql in [
        "SELECT gold FROM pairs",
        "DELETE FROM labels",
        "UPDATE labels SET annotator = 'alice'",
        "UPDATE labels SET choice = 'a'",
        "INSERT INTO pairs (prompt_id, response_a, response_b, content_hash) VALUES (1, 1, 2, '\\x00')",
        "DELETE FROM pairs",
        "INSERT INTO train_lease (id, holder, session, since, heartbeat) VALUES (1, 'x', 'y', 0, 0)",
        "UPDATE pair_scores SET p_a = 0.5",
        "DROP TABLE labels",
    ] {
        let err = c.batch_execute(sql).expect_err(sql);
        let code = err.code().map(|c| c.code().to_owned());
        assert!(matches!(code.as_deref(), Some("42501")), "{sql}: {err:?}");
    }
    // The command line: alice is alice, whatever she says.
    let out = duel(&alice, &["label", "--annotator", "bob", "--script", "1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--annotator can only be \"alice\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made = lines(&duel(&alice, &["label", "--script", "1"]));
    let id = made[0]["label_id"].as_i64().expect("id");
    let mut su = postgres::Client::connect(url(&pg), postgres::NoTls).expect("connect");
    let who: String = su
        .query_one("SELECT annotator FROM labels WHERE id = $1", &[&id])
        .expect("row")
        .get(0);
    assert_eq!(who, "alice");
    let fresh = dir.path().join("fresh.jsonl");
    std::fs::write(
        &fresh,
        "{\"prompt\": \"new\", \"response_a\": \"x\", \"response_b\": \"y\"}\n",
    )
    .expect("write");
    let out = duel(&alice, &["import", fresh.to_str().expect("utf8")]);
    assert!(!out.status.success(), "an annotator does not import");
    let encoder = common::repo().join("assets/models/all-MiniLM-L6-v2");
    let encoder = encoder.to_str().expect("utf8");
    let out = duel(&alice, &["train", "--follow", "--model-dir", encoder]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may not train"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The lead reads everything.
    assert!(!lines(&duel(&lead, &["export", "--format", "raw"])).is_empty());
    assert!(duel(&lead, &["stats"]).status.success());

    // An annotator's labeler trains nothing: with no trainer about, it says so.
    let h = duel::train::worker::spawn(TrainerConfig {
        db: alice.clone(),
        base_dir: dir.path().join("no-model"),
        out_dir: dir.path().join("out"),
        train: Default::default(),
        min_labels: 1,
        holdout: 0.0,
        eval_every: 25,
        checkpoint_every: 100,
        score_queue: 0,
        passes: 1,
        holder: "alice".into(),
        may_train: false,
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match h.events.recv_timeout(left).expect("an event") {
            TrainerEvent::State(TrainerState::NoTrainer) => break,
            TrainerEvent::Failed(msg) => panic!("{msg}"),
            _ => {}
        }
    }
    h.stop();
    assert_eq!(sql_i64(&pg, "SELECT count(*) FROM train_lease"), 0);
}

/// `kill -9` of a labeler on PostgreSQL: every judgement it reported is on the
/// server, and the next labeler goes on once the dead one's claim expires.
#[test]
fn kill_9_while_labeling_on_postgres_loses_no_saved_judgement() {
    use std::io::BufRead;
    let Some(pg) = pg_db() else { return };
    assert!(
        duel(&pg, &["import", demo().to_str().expect("utf8")])
            .status
            .success()
    );
    let mut seen = HashSet::new();
    for (round, stop_after) in [3usize, 7, 12].into_iter().enumerate() {
        let mut child = bin_cmd()
            .arg("--db")
            .arg(&pg)
            .args(["label", "--script", &"12".repeat(40)])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut record = |line: &str| {
            let v: Value = serde_json::from_str(line).expect("a JSON line");
            if let Some(id) = v["label_id"].as_i64() {
                seen.insert(id);
            }
        };
        for _ in 0..stop_after {
            let Some(Ok(line)) = lines.next() else { break };
            record(&line);
        }
        let _ = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        let _ = child.wait();
        for line in lines.map_while(Result::ok) {
            record(&line);
        }
        for id in &seen {
            assert_eq!(
                sql_i64(&pg, &format!("SELECT count(*) FROM labels WHERE id = {id}")),
                1,
                "round {round}: label {id} was reported saved and is gone"
            );
        }
        // The dead labeler's claim, expired by hand so that the next round goes on.
        let mut c = postgres::Client::connect(url(&pg), postgres::NoTls).expect("connect");
        c.batch_execute("UPDATE claims SET expires_at = 0")
            .expect("expire");
    }
    assert!(seen.len() >= 10, "{}", seen.len());
}

/// `kill -9` during an import into PostgreSQL: the file is one transaction, so the
/// database holds all of it or none of it.
#[test]
fn kill_9_during_an_import_into_postgres_leaves_all_or_nothing() {
    let Some(pg) = pg_db() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("big.jsonl");
    let n = 200_000;
    common::pairs_file(&file, n as usize, "k");
    assert!(duel(&pg, &["migrate"]).status.success());
    let mut inside = 0;
    for delay_ms in [0u64, 200, 600] {
        let mut child = bin_cmd()
            .arg("--db")
            .arg(&pg)
            .args(["import", file.to_str().expect("utf8")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        // Once the import's transaction is open on the server, and then a while.
        let open = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                    AND pid <> pg_backend_pid() AND xact_start IS NOT NULL";
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while sql_i64(&pg, open) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let running = child.try_wait().expect("wait").is_none();
        let _ = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        let _ = child.wait();
        // The server ends the dead client's transaction when it notices the socket
        // closed; wait for that before counting.
        while sql_i64(&pg, open) > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let stored = sql_i64(&pg, "SELECT count(*) FROM pairs");
        assert!(
            stored == 0 || stored == n,
            "after a kill {delay_ms} ms into the transaction: {stored} of {n} pairs"
        );
        if running && stored == 0 {
            inside += 1;
        }
        if stored == n {
            break;
        }
    }
    assert!(inside >= 1, "no kill landed inside the import");
    // Whatever the kills left, a whole import goes through.
    let out = duel(&pg, &["import", file.to_str().expect("utf8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sql_i64(&pg, "SELECT count(*) FROM pairs"), n);
}

/// `duel` in folder `cwd` (where it keeps `<dbname>.model/` and `<dbname>.log` for a
/// PostgreSQL database).
fn duel_in(cwd: &Path, db: &Path, args: &[&str]) -> std::process::Output {
    let out = bin_cmd()
        .current_dir(cwd)
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("run duel");
    assert!(
        out.status.success(),
        "duel {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The rest of the commands on PostgreSQL: generate, report, train and review from
/// the database, and the live trainer of a team server (`train --follow`), which
/// holds the lease, records its metrics and checkpoints to `<dbname>.model/`.
#[test]
fn generate_report_train_review_and_follow_on_postgres() {
    let Some(pg) = pg_db() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let cwd = dir.path();
    let model = cwd.join("tiny-model");
    common::write_tiny_model(&model, 5);
    let gguf = cwd.join("tiny.gguf");
    common::write_tiny_gguf(&gguf, |_, _| {});
    let prompts = cwd.join("prompts.txt");
    std::fs::write(&prompts, "Say hello.\nName a colour.\n").expect("write");
    let s = |p: &Path| p.to_str().expect("utf8").to_owned();

    duel_in(cwd, &pg, &["import", &s(&demo())]);
    duel_in(
        cwd,
        &pg,
        &[
            "generate",
            &s(&prompts),
            "--generator",
            &s(&gguf),
            "--max-new-tokens",
            "8",
        ],
    );
    assert_eq!(
        sql_i64(
            &pg,
            "SELECT count(*) FROM responses WHERE generator IS NOT NULL"
        ),
        4
    );
    duel_in(cwd, &pg, &["label", "--script", &"12".repeat(12)]);
    let report = cwd.join("report");
    duel_in(cwd, &pg, &["report", "--out", &s(&report)]);
    assert!(
        std::fs::read_to_string(report.join("index.html"))
            .expect("report")
            .contains("<svg")
    );
    let rm = cwd.join("rm");
    duel_in(
        cwd,
        &pg,
        &[
            "train",
            "--model-dir",
            &s(&model),
            "--epochs",
            "1",
            "--holdout",
            "0",
            "--max-length",
            "32",
            "--out",
            &s(&rm),
        ],
    );
    assert!(rm.join("model.safetensors").exists());
    duel_in(cwd, &pg, &["review", "--model", &s(&rm), "--script", "q"]);
    assert!(
        sql_i64(&pg, "SELECT count(*) FROM pair_scores") > 0,
        "review scored the pairs"
    );

    // The team server's trainer, run by a lead's login role (a superuser would pass
    // the connection limit below).
    let before = sql_i64(
        &pg,
        "SELECT count(*) FROM train_metrics WHERE kind = 'train'",
    );
    let follower = format!("follower_{}", std::process::id());
    let lead = as_role(&pg, &follower, "duel_lead");
    let mut follow = bin_cmd()
        .current_dir(cwd)
        .arg("--db")
        .arg(&lead)
        .args([
            "train",
            "--follow",
            "--model-dir",
            &s(&model),
            "--max-length",
            "32",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_while_running(&mut follow, "no training step recorded", || {
        sql_i64(
            &pg,
            "SELECT count(*) FROM train_metrics WHERE kind = 'train'",
        ) > before
    });
    assert_eq!(sql_i64(&pg, "SELECT count(*) FROM train_lease"), 1);

    // Judgements arriving make the trainer load them again, through the connection
    // it has: no new server process per judgement. The role is held to the
    // connections it has now, so a connection opened to reload is refused and
    // training stops. Its connections carry the command's name.
    let followers = format!("FROM pg_stat_activity WHERE usename = '{follower}'");
    assert_eq!(
        sql_i64(
            &pg,
            &format!("SELECT count(*) {followers} AND application_name <> 'duel train'")
        ),
        0
    );
    let held = sql_i64(&pg, &format!("SELECT count(*) {followers}"));
    assert!(held > 0);
    sql_run(
        &pg,
        &format!("ALTER ROLE {follower} CONNECTION LIMIT {held}"),
    );
    let used = "SELECT coalesce(max(labels_used), 0) FROM train_metrics WHERE kind = 'train'";
    let used_before = sql_i64(&pg, used);
    for _ in 0..3 {
        duel_in(cwd, &pg, &["label", "--script", "1212"]);
        std::thread::sleep(std::time::Duration::from_millis(2500));
    }
    wait_while_running(
        &mut follow,
        "the trainer did not train on the new judgements",
        || sql_i64(&pg, used) > used_before,
    );
    // Handing the lease back on Ctrl-C takes a connection of its own.
    sql_run(&pg, &format!("ALTER ROLE {follower} CONNECTION LIMIT -1"));
    let _ = Command::new("kill")
        .args(["-INT", &follow.id().to_string()])
        .status();
    assert!(follow.wait().expect("wait").success());
    assert_eq!(
        sql_i64(&pg, "SELECT count(*) FROM train_lease"),
        0,
        "the lease is handed back"
    );
    let name = url(&pg).rsplit('/').next().expect("a name");
    assert!(
        cwd.join(format!("{name}.model"))
            .join("model.safetensors")
            .exists(),
        "the checkpoint is in <dbname>.model/"
    );
    assert!(cwd.join(format!("{name}.log")).exists());
}

/// TLS as libpq spells it: `sslmode=require` encrypts, `verify-full` with
/// `sslrootcert` checks the server's certificate and its name, a certificate from
/// another authority is refused, `disable` is plain. The test server's certificate
/// is made by `scripts/with-postgres.sh`.
#[test]
fn tls_with_libpqs_options() {
    let Some(pg) = pg_db() else { return };
    let (Some(ca), Some(other)) = (
        std::env::var_os("DUEL_TEST_PG_CA"),
        std::env::var_os("DUEL_TEST_PG_OTHER_CA"),
    ) else {
        panic!("DUEL_TEST_PG_CA and DUEL_TEST_PG_OTHER_CA come with DUEL_TEST_PG");
    };
    let (ca, other) = (
        ca.into_string().expect("utf8"),
        other.into_string().expect("utf8"),
    );
    let with = |base: &str, q: &str| PathBuf::from(format!("{base}?{q}"));
    let base = url(&pg).to_owned();
    let encrypted = |db: &Path| {
        Store::open(db)
            .unwrap_or_else(|e| panic!("{}: {e}", db.display()))
            .encrypted()
            .expect("encrypted")
    };
    assert!(encrypted(&with(&base, "sslmode=require")));
    assert!(encrypted(&with(
        &base,
        &format!("sslmode=verify-full&sslrootcert={ca}")
    )));
    let by_name = base.replace("127.0.0.1", "localhost");
    assert!(encrypted(&with(
        &by_name,
        &format!("sslmode=verify-full&sslrootcert={ca}")
    )));
    assert!(encrypted(&with(
        &base,
        &format!("sslmode=verify-ca&sslrootcert={ca}")
    )));
    assert!(!encrypted(&with(&base, "sslmode=disable")));
    for mode in ["verify-ca", "verify-full", "require"] {
        let err = Store::open(&with(&base, &format!("sslmode={mode}&sslrootcert={other}")))
            .expect_err("a certificate another authority issued");
        assert!(err.to_string().contains("certificate"), "{mode}: {err}");
    }
    let out = duel(&with(&base, "sslmode=require"), &["migrate"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("connected over TLS"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = duel(&with(&base, "sslmode=sometimes"), &["stats"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sslmode=sometimes"));
}

/// A NUL character, which SQLite stores and PostgreSQL text cannot hold, is the
/// record's fault on PostgreSQL: the error names the line, the import changes
/// nothing, and `--skip-invalid` skips just that record.
#[test]
fn a_nul_in_the_text_is_a_record_error_on_postgres() {
    let Some(pg) = pg_db() else { return };
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("nul.jsonl");
    std::fs::write(
        &file,
        "{\"prompt\": \"p1\", \"response_a\": \"a\", \"response_b\": \"b\"}\n\
         {\"prompt\": \"p2\", \"response_a\": \"a\\u0000b\", \"response_b\": \"c\"}\n",
    )
    .expect("write");
    let f = file.to_str().expect("utf8");
    let out = duel(&pg, &["import", f]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nul.jsonl:2") && err.contains("NUL"), "{err}");
    assert_eq!(sql_i64(&pg, "SELECT count(*) FROM pairs"), 0);
    assert!(duel(&pg, &["import", "--skip-invalid", f]).status.success());
    assert_eq!(sql_i64(&pg, "SELECT count(*) FROM pairs"), 1);
}
