//! PostgreSQL's bulk path for an import: rows are written into `COPY` buffers (text
//! format), with ids drawn from the tables' sequences ahead of time, and sent a
//! table at a time, in the order the references need, when the buffers fill or the
//! import finishes. One round trip carries thousands of rows instead of one.

use super::sql::Ex;
use super::{Result, StoreError};
use std::collections::VecDeque;
use std::fmt::Write as _;

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
            Table::Prompts => "COPY prompts (id, hash, text, messages) FROM STDIN",
            Table::Responses => {
                "COPY responses (id, prompt_id, text, generator, gen_meta, created_at) FROM STDIN"
            }
            Table::Pairs => {
                "COPY pairs (id, prompt_id, response_a, response_b, content_hash, ext_id, meta, \
                 extra, source, created_at, gold) FROM STDIN"
            }
            Table::Labels => "COPY labels (pair_id, annotator, choice, source) FROM STDIN",
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

/// One column value of a row.
pub(super) enum Val<'a> {
    Int(i64),
    Text(Option<&'a str>),
    Bytes(&'a [u8]),
}

#[derive(Default)]
pub(super) struct CopyRows {
    buffers: [String; 4],
    /// Ids drawn ahead for prompts, responses and pairs.
    ids: [VecDeque<i64>; 3],
    /// The id sequences of prompts, responses and pairs, looked up once: looked up
    /// for every id (`pg_get_serial_sequence` per row), they took 4.6 µs an id of
    /// the server's time against 0.5 µs, about half of an import's.
    sequences: [Option<String>; 3],
}

impl CopyRows {
    /// A new id for a row of `table` (not `Labels`, whose ids the server assigns).
    pub(super) fn next_id(&mut self, ex: &Ex<'_, '_>, table: Table) -> Result<i64> {
        let q = &mut self.ids[table as usize];
        if q.is_empty() {
            let seq = match &mut self.sequences[table as usize] {
                Some(seq) => seq,
                slot => slot.insert(ex.query_one(
                    &format!("SELECT pg_get_serial_sequence('{}', 'id')", table.name()),
                    &[],
                    |r| r.get::<String>(0),
                )?),
            };
            let ids = ex.query_all(
                "SELECT nextval(CAST(CAST(?1 AS TEXT) AS regclass)) FROM generate_series(1, CAST(?2 AS BIGINT))",
                &[&seq.as_str(), &ID_BLOCK],
                |r| r.get::<i64>(0),
            )?;
            q.extend(ids);
        }
        q.pop_front()
            .ok_or_else(|| StoreError::Invalid(format!("{}: no id drawn", table.name())))
    }

    /// Appends a row to `table`'s buffer.
    pub(super) fn row(&mut self, table: Table, values: &[Val<'_>]) {
        let b = &mut self.buffers[table as usize];
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                b.push('\t');
            }
            match v {
                Val::Int(n) => {
                    let _ = write!(b, "{n}");
                }
                Val::Text(None) => b.push_str("\\N"),
                Val::Text(Some(s)) => escape(b, s),
                Val::Bytes(bytes) => {
                    // bytea's hex form, its backslash escaped for COPY.
                    b.push_str("\\\\x");
                    for byte in *bytes {
                        let _ = write!(b, "{byte:02x}");
                    }
                }
            }
        }
        b.push('\n');
    }

    /// Whether the buffers are large enough to send.
    pub(super) fn full(&self) -> bool {
        self.buffers.iter().map(String::len).sum::<usize>() >= FLUSH_BYTES
    }

    /// Sends every buffered row, table by table.
    pub(super) fn flush(&mut self, ex: &Ex<'_, '_>) -> Result<()> {
        for t in Table::ALL {
            let b = &mut self.buffers[t as usize];
            if !b.is_empty() {
                ex.copy_in(t.copy_sql(), b.as_bytes())?;
                b.clear();
            }
        }
        Ok(())
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
/// Setting aside locks the tables (ACCESS EXCLUSIVE) until the import commits: a
/// labeler would wait on its next pair for the whole import. So it is done only
/// when no other session is connected to the database, and only by the tables'
/// owner (`duel_lead`); otherwise `None`, and the import goes the ordinary way,
/// beside the labelers. (Another role's sessions show no `backend_type` to a role
/// that may not read all statistics: they count too.) A session that connects
/// meanwhile, or holds a lock already, waits at most `LOCK_WAIT` before the import
/// gives up setting aside.
pub(super) fn defer(ex: &Ex<'_, '_>) -> Result<Option<Deferred>> {
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
    match ex.execute(
        "LOCK TABLE prompts, responses, pairs, labels, pair_verdicts IN ACCESS EXCLUSIVE MODE",
        &[],
    ) {
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
        "SELECT CAST(conrelid::regclass AS TEXT), conname, pg_get_constraintdef(oid)
         FROM pg_constraint
         WHERE contype = 'f' AND conrelid IN ('responses'::regclass, 'pairs'::regclass, 'labels'::regclass)",
        &[],
        |r| Ok((r.get::<String>(0)?, r.get::<String>(1)?, r.get::<String>(2)?)),
    )?;
    for (table, name, def) in keys {
        drop.push(format!("ALTER TABLE {table} DROP CONSTRAINT {name}"));
        restore.push(format!("ALTER TABLE {table} ADD CONSTRAINT {name} {def}"));
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

/// `s` as a COPY text-format value: backslash, tab, newline and carriage return
/// escaped. A NUL cannot be stored in PostgreSQL text; it is refused earlier.
fn escape(b: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => b.push_str("\\\\"),
            '\t' => b.push_str("\\t"),
            '\n' => b.push_str("\\n"),
            '\r' => b.push_str("\\r"),
            c => b.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_for_copy() {
        let mut rows = CopyRows::default();
        rows.row(
            Table::Labels,
            &[
                Val::Int(7),
                Val::Text(Some("a\tb\\c\nd\re")),
                Val::Text(None),
                Val::Bytes(&[0, 255]),
            ],
        );
        assert_eq!(
            rows.buffers[Table::Labels as usize],
            "7\ta\\tb\\\\c\\nd\\re\t\\N\t\\\\x00ff\n"
        );
    }
}
