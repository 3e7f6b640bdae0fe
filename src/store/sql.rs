//! One way to run the store's SQL on either engine.
//!
//! The store's queries are written once, in the SQL both SQLite and PostgreSQL
//! understand, with numbered parameters `?1`, `?2`, … (PostgreSQL's `$1`, `$2`, …
//! are substituted when the statement is first seen). Where the dialects differ
//! (the current time, say) [`Ex`] says how each engine spells it. Values cross as
//! the types both drivers share: `i64`, `f64`, `bool`, text and bytes, and their
//! `Option`s; integer columns are `BIGINT` on PostgreSQL so that `i64` reads them.

use super::{Result, StoreError};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// A parameter value both drivers can bind.
pub trait Param {
    fn lite(&self) -> &dyn rusqlite::ToSql;
    fn pg(&self) -> &(dyn postgres::types::ToSql + Sync);
}

impl<T: rusqlite::ToSql + postgres::types::ToSql + Sync> Param for T {
    fn lite(&self) -> &dyn rusqlite::ToSql {
        self
    }
    fn pg(&self) -> &(dyn postgres::types::ToSql + Sync) {
        self
    }
}

/// A column type both drivers can read.
pub trait Col: rusqlite::types::FromSql + for<'a> postgres::types::FromSql<'a> {}
impl<T: rusqlite::types::FromSql + for<'a> postgres::types::FromSql<'a>> Col for T {}

/// A row of a result, from either engine.
pub enum Row<'a> {
    Lite(&'a rusqlite::Row<'a>),
    Pg(&'a postgres::Row),
}

impl Row<'_> {
    /// Column `i` (from 0) as a `T`.
    pub fn get<T: Col>(&self, i: usize) -> Result<T> {
        match self {
            Row::Lite(r) => Ok(r.get(i)?),
            Row::Pg(r) => Ok(r.try_get(i)?),
        }
    }

    /// Column `i` parsed from its text (a `Choice`, a `Side`); the error names the
    /// column and the value.
    pub fn parse<T: std::str::FromStr<Err = String>>(&self, i: usize) -> Result<T> {
        let s: String = self.get(i)?;
        s.parse()
            .map_err(|e| StoreError::Invalid(format!("column {i}: {e}")))
    }

    /// Like [`Row::parse`], for a column that may be NULL.
    pub fn parse_opt<T: std::str::FromStr<Err = String>>(&self, i: usize) -> Result<Option<T>> {
        let s: Option<String> = self.get(i)?;
        s.map(|s| {
            s.parse()
                .map_err(|e| StoreError::Invalid(format!("column {i}: {e}")))
        })
        .transpose()
    }
}

/// The statement text PostgreSQL is given for `sql`: `?N` becomes `$N` outside
/// quoted strings and identifiers.
pub fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    for c in sql.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '?' => {
                out.push('$');
                continue;
            }
            None => {}
        }
        out.push(c);
    }
    out
}

/// Where a statement runs: a SQLite connection (or a transaction on it), or a
/// PostgreSQL transaction.
pub enum Ex<'a, 't> {
    Lite(&'a rusqlite::Connection),
    Pg {
        /// Behind a lock rather than a `RefCell` so that an import's `COPY` can be
        /// sent from a thread of its own (see `copy::Background`).
        tx: Mutex<&'a mut postgres::Transaction<'t>>,
        /// Statement texts translated so far, by the SQL they were written as.
        texts: &'a RefCell<HashMap<String, String>>,
    },
}

impl Ex<'_, '_> {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Ex::Pg { .. })
    }

    /// The current time as the store writes it (ISO 8601, UTC, milliseconds).
    pub fn now(&self) -> &'static str {
        match self {
            Ex::Lite(_) => super::NOW,
            Ex::Pg { .. } => super::NOW_POSTGRES,
        }
    }

    /// Whether pair `p` is a gold pair (`true`) or not, asked as an annotator may:
    /// on PostgreSQL annotators may not read the known answer, `p.gold`, only
    /// `p.is_gold`.
    pub fn gold_is(&self, gold: bool) -> &'static str {
        match (self.is_postgres(), gold) {
            (false, false) => "p.gold IS NULL",
            (false, true) => "p.gold IS NOT NULL",
            (true, false) => "NOT p.is_gold",
            (true, true) => "p.is_gold",
        }
    }

    fn pg_text(texts: &RefCell<HashMap<String, String>>, sql: &str) -> String {
        let mut t = texts.borrow_mut();
        if let Some(s) = t.get(sql) {
            return s.clone();
        }
        let s = to_postgres(sql);
        t.insert(sql.to_owned(), s.clone());
        s
    }

    /// Runs a statement; the rows it changed.
    pub fn execute(&self, sql: &str, params: &[&dyn Param]) -> Result<usize> {
        match self {
            Ex::Lite(c) => {
                let p: Vec<&dyn rusqlite::ToSql> = params.iter().map(|p| p.lite()).collect();
                Ok(c.prepare_cached(sql)?.execute(p.as_slice())?)
            }
            Ex::Pg { tx, texts } => {
                let p: Vec<_> = params.iter().map(|p| p.pg()).collect();
                let text = Self::pg_text(texts, sql);
                Ok(lock(tx)?.execute(text.as_str(), &p)? as usize)
            }
        }
    }

    /// Runs the `INSERT` statement `sql` and returns the new row's `id`: SQLite's
    /// last row id (with a `RETURNING` clause instead, an import into SQLite took
    /// twice as long: 60,000 against 125,000 pairs/s),
    /// PostgreSQL's `RETURNING id`.
    pub fn insert_id(&self, sql: &str, params: &[&dyn Param]) -> Result<i64> {
        match self {
            Ex::Lite(c) => {
                let p: Vec<&dyn rusqlite::ToSql> = params.iter().map(|p| p.lite()).collect();
                c.prepare_cached(sql)?.execute(p.as_slice())?;
                Ok(c.last_insert_rowid())
            }
            Ex::Pg { .. } => self.query_one(&format!("{sql} RETURNING id"), params, |r| r.get(0)),
        }
    }

    /// The first row's `f`, if there is a row.
    pub fn query_opt<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<Option<T>> {
        let mut f = Some(f);
        let mut out = None;
        self.query_each::<StoreError>(sql, params, |r| {
            if let Some(f) = f.take() {
                out = Some(f(r)?);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The first row's `f`; an error when there is none.
    pub fn query_one<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        f: impl FnOnce(&Row<'_>) -> Result<T>,
    ) -> Result<T> {
        self.query_opt(sql, params, f)?
            .ok_or_else(|| StoreError::Invalid("a query that returns a row returned none".into()))
    }

    /// `f` of every row, collected.
    pub fn query_all<T>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row<'_>) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        self.query_each::<StoreError>(sql, params, |r| {
            out.push(f(r)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` on each row as it is read (streaming on both engines); an error
    /// from `f` stops the walk and is returned.
    pub fn query_each<E: From<StoreError>>(
        &self,
        sql: &str,
        params: &[&dyn Param],
        mut f: impl FnMut(&Row<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        match self {
            Ex::Lite(c) => {
                let p: Vec<&dyn rusqlite::ToSql> = params.iter().map(|p| p.lite()).collect();
                let mut stmt = c.prepare_cached(sql).map_err(StoreError::from)?;
                let mut rows = stmt.query(p.as_slice()).map_err(StoreError::from)?;
                while let Some(r) = rows.next().map_err(StoreError::from)? {
                    f(&Row::Lite(r))?;
                }
                Ok(())
            }
            Ex::Pg { tx, texts } => {
                use postgres::fallible_iterator::FallibleIterator;
                let p: Vec<_> = params.iter().map(|p| p.pg()).collect();
                let text = Self::pg_text(texts, sql);
                let mut tx = lock(tx)?;
                let mut rows = tx
                    .query_raw(text.as_str(), p.iter().copied())
                    .map_err(StoreError::from)?;
                while let Some(r) = rows.next().map_err(StoreError::from)? {
                    f(&Row::Pg(&r))?;
                }
                Ok(())
            }
        }
    }
}

/// The transaction behind `tx`'s lock.
pub(super) fn lock<'m, 'a, 't>(
    tx: &'m Mutex<&'a mut postgres::Transaction<'t>>,
) -> Result<MutexGuard<'m, &'a mut postgres::Transaction<'t>>> {
    tx.lock()
        .map_err(|_| StoreError::Invalid("a thread using the connection panicked".into()))
}

/// Sends `data` (its parts one after the other) with the `COPY … FROM STDIN`
/// statement `sql`, in transaction `tx`.
pub(super) fn copy_in(
    tx: &Mutex<&mut postgres::Transaction<'_>>,
    sql: &str,
    data: &[&[u8]],
) -> Result<()> {
    use std::io::Write;
    let mut tx = lock(tx)?;
    let mut w = tx.copy_in(sql)?;
    for part in data {
        w.write_all(part)
            .map_err(|e| StoreError::Invalid(format!("sending rows: {e}")))?;
    }
    w.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_become_dollars_outside_quotes() {
        assert_eq!(
            to_postgres("SELECT ?1, '?2', \"a?\" FROM t WHERE x = ?12"),
            "SELECT $1, '?2', \"a?\" FROM t WHERE x = $12"
        );
    }
}
