//! The store: open, check, migrate; pairs, labels, training metrics and their
//! queries, on a SQLite file or a PostgreSQL server.
//!
//! Nothing outside this folder writes SQL. The queries are written once for both
//! engines (`sql.rs`); each engine has its own migrations. Every write is a
//! transaction: on SQLite begun `IMMEDIATE`, so that with several processes on one
//! database a writer waits its turn (the busy timeout) instead of failing when
//! another commits first. Labels are committed with `synchronous = FULL` on SQLite
//! and `synchronous_commit = on` on PostgreSQL, so a judgement the annotator saw
//! accepted survives a crash of the process or the machine.

mod claims;
mod copy;
mod import;
mod labels;
mod lease;
mod metrics;
mod pairs;
mod postgres;
pub(crate) mod sql;
mod summary;
mod tls;

pub use claims::{CLAIM_TTL, QueueOrder, QueueWalk, unix_now};
pub use labels::{LabelFilter, LabelMarks, LabelRow, Progress, ReviewItem};
pub use lease::{LEASE_HEARTBEAT, LEASE_TTL, Lease, TakeLease};
pub use metrics::{
    EvalMetrics, MetricKind, MetricPoint, MetricRow, MetricValue, PairText, RunProgress,
    StepMetrics,
};
pub use pairs::{Generated, InsertOutcome, NewPair, PairDigests, PairExport, PairWriter};
pub use summary::{GeneratedPair, GoldResult, StandingLabel};

use rusqlite::{Connection, OpenFlags};
use rusqlite_migration::{M, Migrations};
use sql::Ex;
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The schema, one SQL file per version, applied in order by `PRAGMA user_version`.
/// Append only: a released migration is never edited.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_init.sql"),
    include_str!("migrations/0002_claims.sql"),
    include_str!("migrations/0003_queue_order.sql"),
    include_str!("migrations/0004_queue_indexes.sql"),
    include_str!("migrations/0005_pair_verdicts.sql"),
    include_str!("migrations/0006_train_lease.sql"),
    include_str!("migrations/0007_gold.sql"),
];

fn migrations() -> Migrations<'static> {
    Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect())
}

/// The schema version this build writes.
pub fn schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "{path}: busy, another process is writing to it (an import, say); try again when it is done"
    )]
    Busy { path: PathBuf },
    #[error("{path}: not a duel database (SQLite says: {source})")]
    NotADatabase {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "{path}: written by a newer duel (schema version {found}, this build knows up to {known}); \
         the file was left untouched"
    )]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("{path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("migrating the schema: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error: {}", postgres::message(.0))]
    Postgres(#[from] ::postgres::Error),
    #[error("{url}: cannot connect: {}", postgres::message(source))]
    Connect {
        url: String,
        source: ::postgres::Error,
    },
    #[error("{0}")]
    Invalid(String),
    /// A gold record that cannot be stored as one.
    #[error("{0}")]
    Gold(String),
    /// A record this engine cannot store (a NUL character in PostgreSQL text).
    #[error("{0}")]
    Unstorable(String),
}

/// A name for one process's claims and lease, unique per labeler: process, start
/// time and a counter (tests run several in one process).
pub fn new_session_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{t:x}-{n}", std::process::id())
}

/// Page size of databases `duel` creates.
pub const PAGE_SIZE: i64 = 16 * 1024;

/// How long a connection waits for another's lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

static APPLICATION_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this process to a PostgreSQL server (`application_name`, which
/// `pg_stat_activity` shows), unless the URL names it; `duel` until set. The first
/// call wins.
pub fn set_application_name(name: &str) {
    let _ = APPLICATION_NAME.set(name.to_owned());
}

fn application_name() -> &'static str {
    APPLICATION_NAME.get().map_or("duel", String::as_str)
}

pub struct Store {
    db: Db,
    /// The SQLite file, or the PostgreSQL URL (without its password).
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

enum Db {
    Lite(Connection),
    Pg {
        client: Box<RefCell<::postgres::Client>>,
        /// Statement texts in PostgreSQL's spelling, by the SQL they were written as.
        texts: RefCell<HashMap<String, String>>,
    },
}

/// A PostgreSQL URL's database name, for the files a process keeps beside it
/// (`duel` when the URL names none).
fn database_name(db: &Path) -> String {
    let s = db.to_string_lossy();
    s.split('?')
        .next()
        .and_then(|s| s.split_once("://"))
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(_, name)| name)
        .filter(|n| !n.is_empty())
        .map_or_else(|| "duel".to_owned(), str::to_owned)
}

/// Where the live model of database `db` is checkpointed: beside a SQLite file
/// (`duel.db` → `duel.model/`); for a PostgreSQL database, `<dbname>.model/` in the
/// current folder (the trainer's machine).
pub fn model_dir_for(db: &Path) -> PathBuf {
    if is_postgres_url(db) {
        return PathBuf::from(format!("{}.model", database_name(db)));
    }
    db.with_extension("model")
}

/// Where a process working on database `db` logs: `<db>.log` beside a SQLite file;
/// `<dbname>.log` in the current folder for a PostgreSQL database.
pub fn log_path_for(db: &Path) -> PathBuf {
    if is_postgres_url(db) {
        return PathBuf::from(format!("{}.log", database_name(db)));
    }
    let mut name = db.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

/// Whether `db` (a `--db` value) names a PostgreSQL server rather than a file.
pub fn is_postgres_url(db: &Path) -> bool {
    db.to_str()
        .is_some_and(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"))
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`. A file that is
    /// not a SQLite database, or one from a newer schema, is refused before anything
    /// is written to it.
    pub fn open(path: &Path) -> Result<Store> {
        if is_postgres_url(path) {
            return postgres::open(path, true);
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        Self::setup(conn, path.to_owned())
    }

    /// A private in-memory database, for tests and benchmarks.
    pub fn open_in_memory() -> Result<Store> {
        Self::setup(Connection::open_in_memory()?, PathBuf::from(":memory:"))
    }

    fn setup(mut conn: Connection, path: PathBuf) -> Result<Store> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Reading the header is the first thing done: it fails on a file that is not
        // a database, before the WAL pragma would rewrite anything. A database
        // locked past the timeout (an import holding it) is busy, not garbage.
        let unreadable = |source: rusqlite::Error| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Busy { path: path.clone() }
            }
            _ => StoreError::NotADatabase {
                path: path.clone(),
                source,
            },
        };
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(unreadable)?;
        // `schema_version` needs a real read of the schema to detect garbage.
        let objects = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(unreadable)?;
        if found > schema_version() {
            return Err(StoreError::TooNew {
                path,
                found,
                known: schema_version(),
            });
        }
        if objects == 0 {
            // A new database: 16 KiB pages make a large import about 15% faster
            // (fewer pages to split and log) and cost nothing when reading one pair.
            conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrations().to_latest(&mut conn)?;
        Ok(Store {
            db: Db::Lite(conn),
            path,
        })
    }

    /// Opens the database at `path` read-only (the trainer's reads): no check, no
    /// migration, no pragmas that write; waits up to `BUSY_TIMEOUT` for a lock.
    pub fn open_readonly(path: &Path) -> Result<Store> {
        if is_postgres_url(path) {
            return postgres::open(path, false);
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(Store {
            db: Db::Lite(conn),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this store is on a PostgreSQL server.
    pub fn is_postgres(&self) -> bool {
        matches!(self.db, Db::Pg { .. })
    }

    /// SQLite's connection, for tests and inspection; everything else goes through
    /// the store's methods.
    ///
    /// # Panics
    /// On a PostgreSQL store.
    pub fn conn(&self) -> &Connection {
        match &self.db {
            Db::Lite(c) => c,
            Db::Pg { .. } => panic!("Store::conn is SQLite's connection"),
        }
    }

    /// SQLite's connection (`None` on PostgreSQL), for what only SQLite has: its
    /// pragmas.
    pub(crate) fn lite(&self) -> Option<&Connection> {
        match &self.db {
            Db::Lite(c) => Some(c),
            Db::Pg { .. } => None,
        }
    }

    /// Runs `f` on the database as it stands (on PostgreSQL, in one transaction, so
    /// that its reads agree with each other).
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Ex<'_, '_>) -> Result<T>) -> Result<T> {
        match &self.db {
            Db::Lite(c) => f(&Ex::Lite(c)),
            Db::Pg { .. } => self.write(f),
        }
    }

    /// Runs `f` in one write transaction: all of it is stored, or (on an error)
    /// none. On SQLite it begins `IMMEDIATE`.
    pub(crate) fn write<T>(&self, f: impl FnOnce(&Ex<'_, '_>) -> Result<T>) -> Result<T> {
        self.write_as(f)
    }

    /// [`Store::write`] for a caller with its own error type.
    pub(crate) fn write_as<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Ex<'_, '_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        match &self.db {
            Db::Lite(c) => {
                let tx = rusqlite::Transaction::new_unchecked(
                    c,
                    rusqlite::TransactionBehavior::Immediate,
                )
                .map_err(StoreError::from)?;
                let out = f(&Ex::Lite(&tx))?;
                tx.commit().map_err(StoreError::from)?;
                Ok(out)
            }
            Db::Pg { client, texts } => {
                let mut client = client.borrow_mut();
                let mut tx = client.transaction().map_err(StoreError::from)?;
                let out = f(&Ex::Pg {
                    tx: std::sync::Mutex::new(&mut tx),
                    texts,
                })?;
                tx.commit().map_err(StoreError::from)?;
                Ok(out)
            }
        }
    }

    /// Number of pairs in the store.
    pub fn pair_count(&self) -> Result<i64> {
        self.read(|ex| ex.query_one("SELECT count(*) FROM pairs", &[], |r| r.get(0)))
    }

    /// `PRAGMA integrity_check`, `true` when it answers `ok` (PostgreSQL keeps its
    /// own: always `true` there).
    pub fn integrity_ok(&self) -> Result<bool> {
        let Db::Lite(conn) = &self.db else {
            return Ok(true);
        };
        let s: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        Ok(s == "ok")
    }
}

/// The current time as the store writes it (ISO 8601, UTC, milliseconds).
pub(crate) const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// [`NOW`] as PostgreSQL spells it (the time of the statement, not of the
/// transaction's start, as SQLite's).
pub(crate) const NOW_POSTGRES: &str =
    "to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')";

/// The stores the store's own tests run on: a SQLite database in memory and, when
/// the test server is there (`DUEL_TEST_PG`, which `scripts/with-postgres.sh` sets), a
/// new database on it. With `DUEL_REQUIRE_PG` set the server must be there.
#[cfg(test)]
pub(crate) fn test_stores() -> Vec<Store> {
    let mut stores = vec![Store::open_in_memory().expect("SQLite in memory")];
    match std::env::var("DUEL_TEST_PG") {
        Ok(admin) => {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let name = format!(
                "duel_unit_{}_{}",
                std::process::id(),
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            let mut c = ::postgres::Client::connect(&admin, ::postgres::NoTls)
                .expect("connect to the test server");
            c.batch_execute(&format!("CREATE DATABASE {name}"))
                .expect("create a database");
            let base = admin.rsplit_once('/').expect("a URL with a database").0;
            let url = format!("{base}/{name}");
            stores.push(Store::open(Path::new(&url)).expect("open the PostgreSQL database"));
        }
        Err(_) => assert!(
            std::env::var_os("DUEL_REQUIRE_PG").is_none(),
            "DUEL_REQUIRE_PG is set but DUEL_TEST_PG is not: run under scripts/with-postgres.sh"
        ),
    }
    stores
}

/// The engine's name, for the messages of tests that run on both.
#[cfg(test)]
pub(crate) fn engine(s: &Store) -> &'static str {
    if s.is_postgres() {
        "postgres"
    } else {
        "sqlite"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_beside_a_database_are_named_after_it() {
        let url = Path::new("postgres://ann:pw@db.example:5432/prefs?sslmode=require");
        assert_eq!(model_dir_for(url), PathBuf::from("prefs.model"));
        assert_eq!(log_path_for(url), PathBuf::from("prefs.log"));
        assert_eq!(
            model_dir_for(Path::new("postgres://db.example")),
            PathBuf::from("duel.model")
        );
        assert_eq!(
            model_dir_for(Path::new("/srv/d.db")),
            PathBuf::from("/srv/d.model")
        );
        assert_eq!(
            log_path_for(Path::new("/srv/d.db")),
            PathBuf::from("/srv/d.db.log")
        );
    }

    #[test]
    fn migrations_are_valid() {
        migrations().validate().expect("migrations validate");
    }

    #[test]
    fn a_new_database_is_at_the_latest_version_in_wal_mode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t.db");
        let store = Store::open(&path).expect("open");
        let v: i64 = store
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(v, schema_version());
        let mode: String = store
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("mode");
        assert_eq!(mode, "wal");
        let fk: i64 = store
            .conn()
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .expect("fk");
        assert_eq!(fk, 1);
        drop(store);
        // Reopening an up-to-date database works and changes nothing.
        Store::open(&path).expect("reopen");
    }

    /// A database made before the disagreement keys (version 4) gets them for the
    /// judgements and scores it holds when it is opened: the disagreement order serves
    /// its contested pairs first at once.
    #[test]
    fn an_older_database_gets_the_disagreement_keys_of_what_it_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v4.db");
        {
            let mut c = Connection::open(&path).expect("open");
            migrations().to_version(&mut c, 4).expect("version 4");
            c.execute_batch(
                "INSERT INTO prompts (id, hash, text) VALUES (1, x'01', 'q');
                 INSERT INTO responses (id, prompt_id, text) VALUES (1, 1, 'a'), (2, 1, 'b');
                 INSERT INTO pairs (id, prompt_id, response_a, response_b, content_hash)
                 VALUES (1, 1, 1, 2, x'01'), (2, 1, 2, 1, x'02'), (3, 1, 1, 2, x'03'),
                        (4, 1, 2, 1, x'04');
                 -- 1: contested; 2: judged A, the model says B (p_a 0.1); 3: judged B
                 -- then undone; 4: not judged.
                 INSERT INTO labels (pair_id, annotator, choice, undone_at)
                 VALUES (1, 'x', 'a', NULL), (1, 'y', 'b', NULL), (2, 'x', 'a', NULL),
                        (3, 'x', 'b', '2026-11-29T00:00:00Z');
                 INSERT INTO pair_scores (pair_id, p_a, step) VALUES (2, 0.1, 5), (4, 0.9, 5);",
            )
            .expect("v4 rows");
        }
        let store = Store::open(&path).expect("open");
        let keys: Vec<(i64, i64, i64, f64)> = store
            .conn()
            .prepare("SELECT pair_id, choices, lean, against FROM pair_verdicts ORDER BY pair_id")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert_eq!(keys[0], (1, 2, 0, 0.0));
        let (id, choices, lean, against) = keys[1];
        assert_eq!((id, choices, lean), (2, 1, 1));
        assert!((against - 0.4).abs() < 1e-12, "{against}");
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notes.db");
        let content = b"these are my notes, not a database\n".repeat(200);
        std::fs::write(&path, &content).expect("write");
        let err = Store::open(&path).expect_err("must fail");
        assert!(matches!(err, StoreError::NotADatabase { .. }), "{err}");
        assert!(err.to_string().contains("notes.db"));
        assert_eq!(std::fs::read(&path).expect("read"), content);
    }

    /// A database another process holds locked past the timeout (as a first import
    /// through a rollback journal does) is busy, not "not a database".
    #[test]
    fn a_database_locked_by_a_writer_is_busy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("locked.db");
        drop(Store::open(&path).expect("create"));
        let writer = Connection::open(&path).expect("writer");
        let mode: String = writer
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .expect("journal");
        assert_eq!(mode, "delete");
        writer.execute_batch("BEGIN EXCLUSIVE").expect("lock");
        let err = Store::open(&path).expect_err("must wait, then fail");
        assert!(matches!(err, StoreError::Busy { .. }), "{err}");
        assert!(err.to_string().contains("locked.db: busy"), "{err}");
        writer.execute_batch("COMMIT").expect("unlock");
        assert!(Store::open(&path).is_ok());
    }

    #[test]
    fn a_database_from_a_newer_duel_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("new.db");
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch("CREATE TABLE future(x); PRAGMA user_version = 999;")
                .expect("setup");
        }
        let before = std::fs::read(&path).expect("read");
        let err = Store::open(&path).expect_err("must fail");
        assert!(
            matches!(err, StoreError::TooNew { found: 999, .. }),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).expect("read"), before);
        assert!(!dir.path().join("new.db-wal").exists());
    }
}
