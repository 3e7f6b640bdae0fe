//! PostgreSQL's bulk path for an import: rows are written into `COPY` buffers (binary
//! format), with ids drawn from the tables' sequences ahead of time, and sent a
//! table at a time, in the order the references need, when the buffers fill or the
//! import finishes. One round trip carries thousands of rows instead of one.
//!
//! The binary format, not the text one: a value is its length and its bytes, so the
//! writer copies text as it is instead of escaping it character by character and
//! spelling numbers and digests out (a quarter of its time, importing 1,000,000
//! pairs, against 2% now; the server's time was about the same either way).

use super::sql::Ex;
use super::{Result, StoreError};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// The tables an import writes, in the order their rows must arrive (a row refers
/// only to rows of the tables before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Table {
    Prompts,
    Responses,
    Pairs,
    Labels,
}

impl Table {
    const ALL: [Table; 4] = [
        Table::Prompts,
        Table::Responses,
        Table::Pairs,
        Table::Labels,
    ];

    fn copy_sql(self) -> &'static str {
        match self {
            Table::Prompts => {
                "COPY prompts (id, hash, text, messages, created_at) FROM STDIN (FORMAT binary)"
            }
            Table::Responses => {
                "COPY responses (id, prompt_id, text, generator, gen_meta, created_at) \
                 FROM STDIN (FORMAT binary)"
            }
            Table::Pairs => {
                "COPY pairs (id, prompt_id, response_a, response_b, content_hash, ext_id, meta, \
                 extra, source, created_at, gold) FROM STDIN (FORMAT binary)"
            }
            Table::Labels => {
                "COPY labels (pair_id, annotator, choice, source) FROM STDIN (FORMAT binary)"
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Table::Prompts => "prompts",
            Table::Responses => "responses",
            Table::Pairs => "pairs",
            Table::Labels => "labels",
        }
    }
}

/// Ids drawn from a sequence at once.
const ID_BLOCK: i64 = 8192;

/// Buffered rows past this many bytes are sent.
const FLUSH_BYTES: usize = 16 << 20;

/// The longest value PostgreSQL stores (1 GB less a byte).
const MAX_VALUE: usize = (1 << 30) - 1;

/// The binary `COPY` stream's header: its signature, no flags, no extension.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The binary `COPY` stream's trailer: a row of -1 columns.
const TRAILER: &[u8] = &(-1i16).to_be_bytes();

/// The advisory lock that keeps two imports from using the same ids. One that has
/// set the tables aside numbers its rows itself, from where the sequences stood, and
/// moves the sequences past them once at the end: safe only while nobody else draws
/// from them. Inserts cannot (the tables are locked), and another import's drawing
/// ahead takes this lock shared. (The number is arbitrary: the bytes of "duel ids".)
const ID_LOCK: i64 = 0x6475_656c_2069_6473;

/// One column value of a row.
pub(super) enum Val<'a> {
    Int(i64),
    Text(Option<&'a str>),
    Bytes(&'a [u8]),
}

/// Each table's rows in `COPY`'s binary format, without header and trailer.
type Buffers = [Vec<u8>; 4];

/// The thread that sends full buffers while the writer fills the next ones: sending
/// and storing is the server's work, building rows the writer's, and on one
/// connection the two would otherwise take turns (1,000,000 pairs: the server waited
/// about 2 s of 10.5 for rows being built).
pub(super) struct Background {
    jobs: SyncSender<Buffers>,
    done: Receiver<Result<Buffers>>,
}

impl Background {
    /// Starts the sending thread in `scope`, on the transaction behind `tx`; it ends
    /// when the `Background` is dropped.
    pub(super) fn spawn<'scope, 'env: 'scope>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        tx: &'env Mutex<&mut postgres::Transaction<'_>>,
    ) -> Background {
        let (jobs, job_rx) = sync_channel::<Buffers>(1);
        let (done_tx, done) = sync_channel(1);
        scope.spawn(move || {
            for mut buffers in job_rx {
                let sent = send(tx, &mut buffers).map(|()| buffers);
                if done_tx.send(sent).is_err() {
                    break;
                }
            }
        });
        Background { jobs, done }
    }
}

/// Sends each table's rows, in `Table::ALL`'s order, and empties the buffers.
fn send(tx: &Mutex<&mut postgres::Transaction<'_>>, buffers: &mut Buffers) -> Result<()> {
    for t in Table::ALL {
        let b = &mut buffers[t as usize];
        if !b.is_empty() {
            super::sql::copy_in(tx, t.copy_sql(), &[HEADER, b, TRAILER])?;
            b.clear();
        }
    }
    Ok(())
}

/// Appends a row of `values` to `b` in `COPY`'s binary format; refuses a value longer
/// than PostgreSQL stores.
fn encode_row(b: &mut Vec<u8>, values: &[Val<'_>]) -> Result<()> {
    for v in values {
        if let Val::Text(Some(s)) = v
            && s.len() > MAX_VALUE
        {
            return Err(StoreError::Unstorable(format!(
                "a text of {} bytes, more than the 1 GB PostgreSQL stores in one value",
                s.len()
            )));
        }
    }
    b.extend_from_slice(&(values.len() as i16).to_be_bytes());
    for v in values {
        let bytes = match v {
            Val::Int(n) => {
                b.extend_from_slice(&8i32.to_be_bytes());
                b.extend_from_slice(&n.to_be_bytes());
                continue;
            }
            Val::Text(None) => {
                b.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            }
            Val::Text(Some(s)) => s.as_bytes(),
            Val::Bytes(bytes) => bytes,
        };
        // At most MAX_VALUE (checked above; the digests are 32 bytes).
        b.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        b.extend_from_slice(bytes);
    }
    Ok(())
}

/// Ids a writer that set the tables aside gives out itself, for one table.
struct OwnIds {
    /// The first it gave out (drawn from the sequence).
    first: i64,
    next: i64,
}

pub(super) struct CopyRows {
    buffers: Buffers,
    /// Empty buffers to fill while `buffers` are sent (kept, so that their memory is
    /// not given back and faulted in again each time).
    spare: Option<Buffers>,
    /// Sends full buffers while the next are built.
    background: Background,
    /// Buffers are being sent in the background.
    in_flight: bool,
    /// Ids drawn ahead for prompts, responses and pairs.
    ids: [VecDeque<i64>; 3],
    /// The id sequences of prompts, responses and pairs, looked up once: looked up
    /// for every id (`pg_get_serial_sequence` per row), they took 4.6 µs an id of
    /// the server's time against 0.5 µs, about half of an import's.
    sequences: [Option<u32>; 3],
    /// Whether this transaction holds `ID_LOCK` shared.
    id_lock: bool,
    /// Once the tables are set aside (`defer`), ids are this writer's to give out.
    own_ids: Option<[OwnIds; 3]>,
}

impl CopyRows {
    pub(super) fn new(background: Background) -> CopyRows {
        CopyRows {
            buffers: Buffers::default(),
            spare: None,
            background,
            in_flight: false,
            ids: Default::default(),
            sequences: [None; 3],
            id_lock: false,
            own_ids: None,
        }
    }

    /// A new id for a row of `table` (not `Labels`, whose ids the server assigns).
    pub(super) fn next_id(&mut self, ex: &Ex<'_, '_>, table: Table) -> Result<i64> {
        if let Some(id) = self.ids[table as usize].pop_front() {
            return Ok(id);
        }
        if let Some(own) = &mut self.own_ids {
            let own = &mut own[table as usize];
            own.next += 1;
            return Ok(own.next - 1);
        }
        self.draw(ex, table)?;
        self.ids[table as usize]
            .pop_front()
            .ok_or_else(|| StoreError::Invalid(format!("{}: no id drawn", table.name())))
    }

    /// `table`'s id sequence.
    fn sequence(&mut self, ex: &Ex<'_, '_>, table: Table) -> Result<u32> {
        if let Some(seq) = self.sequences[table as usize] {
            return Ok(seq);
        }
        let seq = ex.query_one(
            &format!(
                "SELECT CAST(CAST(pg_get_serial_sequence('{}', 'id') AS regclass) AS oid)",
                table.name()
            ),
            &[],
            |r| r.get::<u32>(0),
        )?;
        Ok(*self.sequences[table as usize].insert(seq))
    }

    /// Draws `ID_BLOCK` ids for `table` from its sequence.
    fn draw(&mut self, ex: &Ex<'_, '_>, table: Table) -> Result<()> {
        self.settle()?;
        let seq = self.sequence(ex, table)?;
        if !self.id_lock {
            ex.execute("SELECT pg_advisory_xact_lock_shared(?1)", &[&ID_LOCK])?;
            self.id_lock = true;
        }
        // One row of text rather than a row an id: the client's decoding of 8,192
        // rows cost more than the server's drawing.
        let ids: String = ex.query_one(
            "SELECT string_agg(CAST(nextval(CAST(CAST(?1 AS oid) AS regclass)) AS TEXT), ',') \
             FROM generate_series(1, CAST(?2 AS BIGINT))",
            &[&seq, &ID_BLOCK],
            |r| r.get(0),
        )?;
        for id in ids.split(',') {
            self.ids[table as usize].push_back(
                id.parse()
                    .map_err(|_| StoreError::Invalid(format!("{}: id {id:?}", table.name())))?,
            );
        }
        Ok(())
    }

    /// With the tables set aside and `ID_LOCK` held, gives ids out itself from
    /// here on (drawing 3,250,000 ids, one `nextval` each, took the server 1.8 s of
    /// the 6.7 s it spent on an import's rows).
    fn own_ids(&mut self, ex: &Ex<'_, '_>) -> Result<()> {
        let mut own = Vec::new();
        for t in [Table::Prompts, Table::Responses, Table::Pairs] {
            let seq = self.sequence(ex, t)?;
            let first: i64 = ex.query_one(
                "SELECT nextval(CAST(CAST(?1 AS oid) AS regclass))",
                &[&seq],
                |r| r.get(0),
            )?;
            own.push(OwnIds { first, next: first });
        }
        self.own_ids = own.try_into().ok();
        Ok(())
    }

    /// Moves the sequences past the ids given out by `own_ids`, before the
    /// transaction commits.
    pub(super) fn settle_ids(&mut self, ex: &Ex<'_, '_>) -> Result<()> {
        let Some(own) = self.own_ids.take() else {
            return Ok(());
        };
        for (t, own) in [Table::Prompts, Table::Responses, Table::Pairs]
            .into_iter()
            .zip(own)
        {
            if own.next > own.first {
                let seq = self.sequence(ex, t)?;
                ex.execute(
                    "SELECT setval(CAST(CAST(?1 AS oid) AS regclass), ?2)",
                    &[&seq, &(own.next - 1)],
                )?;
            }
        }
        Ok(())
    }

    /// Appends a row to `table`'s buffer; refuses a value longer than PostgreSQL
    /// stores.
    pub(super) fn row(&mut self, table: Table, values: &[Val<'_>]) -> Result<()> {
        encode_row(&mut self.buffers[table as usize], values)
    }

    /// Whether the buffers are large enough to send.
    pub(super) fn full(&self) -> bool {
        self.buffers.iter().map(Vec::len).sum::<usize>() >= FLUSH_BYTES
    }

    /// Starts sending the buffered rows in the background; the writer fills other
    /// buffers meanwhile.
    pub(super) fn send(&mut self) -> Result<()> {
        self.settle()?;
        let fresh = self.spare.take().unwrap_or_default();
        let full = std::mem::replace(&mut self.buffers, fresh);
        self.background
            .jobs
            .send(full)
            .map_err(|_| StoreError::Invalid("the thread sending rows stopped".into()))?;
        self.in_flight = true;
        Ok(())
    }

    /// Waits for the rows being sent in the background, if any: a query after a
    /// failed `COPY` would meet an aborted transaction, and report that instead of
    /// the `COPY`'s error.
    pub(super) fn settle(&mut self) -> Result<()> {
        if !self.in_flight {
            return Ok(());
        }
        self.in_flight = false;
        let emptied = self
            .background
            .done
            .recv()
            .map_err(|_| StoreError::Invalid("the thread sending rows stopped".into()))??;
        self.spare = Some(emptied);
        Ok(())
    }

    /// Sends every buffered row, table by table, and waits until they are stored:
    /// queries see them afterwards.
    pub(super) fn flush(&mut self, ex: &Ex<'_, '_>) -> Result<()> {
        self.settle()?;
        match ex {
            Ex::Pg { tx, .. } => send(tx, &mut self.buffers),
            Ex::Lite(_) => Err(StoreError::Invalid("COPY is PostgreSQL's".into())),
        }
    }
}

/// The indexes on random keys a large import drops and builds again (building an
/// index once, by sorting, costs less than inserting every key into it).
const DEFERRABLE_INDEXES: &str =
    "'pairs_content_hash', 'pairs_ext_id', 'pairs_shuffle', 'pairs_prompt', 'prompts_hash'";

/// The statements that put back what a large import set aside: the indexes and
/// foreign keys of the tables it writes, and the trigger that keeps the verdicts.
pub(super) struct Deferred {
    restore: Vec<String>,
}

/// How long setting aside waits for another session's lock on the tables before
/// it gives up and the import goes the ordinary way.
const LOCK_WAIT: &str = "2s";

/// Sets aside the tables' random-key indexes, their foreign keys (checked row by
/// row by triggers, a third of an import's time) and the verdict trigger, inside the
/// import's transaction, so that an interrupted import leaves them as they were.
/// Uniqueness is meanwhile checked by the writer's digests in memory; `restore`
/// checks everything again.
///
/// From then on `rows` gives ids out itself (see `ID_LOCK`).
///
/// Setting aside locks the tables (ACCESS EXCLUSIVE) until the import commits: a
/// labeler would wait on its next pair for the whole import. So it is done only
/// when no other session is connected to the database, and only by the tables'
/// owner (`duel_lead`); otherwise `None`, and the import goes the ordinary way,
/// beside the labelers. (Another role's sessions show no `backend_type` to a role
/// that may not read all statistics: they count too.) A session that connects
/// meanwhile, or holds a lock already, waits at most `LOCK_WAIT` before the import
/// gives up setting aside.
pub(super) fn defer(ex: &Ex<'_, '_>, rows: &mut CopyRows) -> Result<Option<Deferred>> {
    rows.settle()?;
    let (owner, others): (bool, i64) = ex.query_one(
        "SELECT pg_has_role(current_user, relowner, 'USAGE'),
                (SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()
                    AND coalesce(backend_type, 'client backend') = 'client backend')
           FROM pg_class WHERE oid = 'pairs'::regclass",
        &[],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if !owner {
        return Ok(None);
    }
    if others > 0 {
        tracing::info!(
            "import: {others} other session(s) on the database; the indexes stay, so labelers are not locked out"
        );
        return Ok(None);
    }
    ex.execute("SAVEPOINT duel_defer", &[])?;
    ex.execute(&format!("SET LOCAL lock_timeout = '{LOCK_WAIT}'"), &[])?;
    let locked = ex
        .execute(
            "LOCK TABLE prompts, responses, pairs, labels, pair_verdicts IN ACCESS EXCLUSIVE MODE",
            &[],
        )
        .and_then(|_| ex.execute("SELECT pg_advisory_xact_lock(?1)", &[&ID_LOCK]));
    match locked {
        Ok(_) => {}
        // Waiting, it may also deadlock with a labeler that holds one table and wants
        // another (the server's deadlock check runs after 1 s, before the timeout).
        Err(StoreError::Postgres(e))
            if e.code() == Some(&::postgres::error::SqlState::LOCK_NOT_AVAILABLE)
                || e.code() == Some(&::postgres::error::SqlState::T_R_DEADLOCK_DETECTED) =>
        {
            ex.execute("ROLLBACK TO SAVEPOINT duel_defer", &[])?;
            tracing::info!("import: the tables are in use; the indexes stay");
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    ex.execute("RELEASE SAVEPOINT duel_defer", &[])?;
    rows.own_ids(ex)?;
    ex.execute("SET LOCAL lock_timeout TO DEFAULT", &[])?;
    let mut restore = Vec::new();
    let mut drop = Vec::new();
    let indexes = ex.query_all(
        &format!(
            "SELECT indexname, indexdef FROM pg_indexes
             WHERE schemaname = current_schema() AND indexname IN ({DEFERRABLE_INDEXES})"
        ),
        &[],
        |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?)),
    )?;
    for (name, def) in indexes {
        drop.push(format!("DROP INDEX {name}"));
        restore.push(def);
    }
    let keys = ex.query_all(
        "SELECT CAST(conrelid::regclass AS TEXT), conname, pg_get_constraintdef(oid),
                confrelid = 'responses'::regclass
         FROM pg_constraint
         WHERE contype = 'f' AND conrelid IN ('responses'::regclass, 'pairs'::regclass, 'labels'::regclass)",
        &[],
        |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?, r.get::<String>(2)?, r.get::<bool>(3)?)),
    )?;
    for (table, name, def, to_responses) in keys {
        drop.push(format!("ALTER TABLE {table} DROP CONSTRAINT {name}"));
        let add = format!("ALTER TABLE {table} ADD CONSTRAINT {name} {def}");
        // The check is an anti join of the referencing rows with the referenced
        // ones, and a hash anti join hashes the referenced side: for pairs' two
        // references to responses, twice as many as pairs, that hash is the larger
        // one. Merged instead (both sides come in id order, nearly), each check took
        // 0.38–0.50 s against 0.75–1.01 s, 1,000,000 pairs.
        restore.push(if to_responses {
            format!("SET LOCAL enable_hashjoin = off; {add}; SET LOCAL enable_hashjoin TO DEFAULT")
        } else {
            add
        });
    }
    drop.push("ALTER TABLE labels DISABLE TRIGGER labels_verdict".into());
    restore.push("ALTER TABLE labels ENABLE TRIGGER labels_verdict".into());
    restore.push(
        "DELETE FROM pair_verdicts;
         INSERT INTO pair_verdicts (pair_id, choices, lean, against)
         SELECT pair_id, choices, lean, against FROM pair_verdicts_fresh"
            .into(),
    );
    for sql in &drop {
        ex.execute(sql, &[])?;
    }
    Ok(Some(Deferred { restore }))
}

impl Deferred {
    /// Builds again what `defer` set aside (after the last rows are sent).
    pub(super) fn restore(&self, ex: &Ex<'_, '_>) -> Result<()> {
        // Index builds sort in memory rather than in temporary files (this
        // transaction only).
        ex.execute("SET LOCAL maintenance_work_mem = '256MB'", &[])?;
        for sql in &self.restore {
            for one in sql.split(';') {
                if !one.trim().is_empty() {
                    ex.execute(one, &[])?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_written_in_copys_binary_format() {
        let mut got = Vec::new();
        encode_row(
            &mut got,
            &[
                Val::Int(7),
                Val::Text(Some("a\tb\\c\n")),
                Val::Text(None),
                Val::Bytes(&[0, 255]),
            ],
        )
        .expect("a short row");
        let mut want = vec![0, 4];
        want.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7]);
        want.extend([0, 0, 0, 6]);
        want.extend(b"a\tb\\c\n");
        want.extend([0xff, 0xff, 0xff, 0xff]);
        want.extend([0, 0, 0, 2, 0, 255]);
        assert_eq!(got, want);
        assert_eq!(HEADER.len(), 19);
    }
}
