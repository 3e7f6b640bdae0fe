//! What an import sets on its connection while it writes, and the transaction it
//! writes a file in.

use super::{BUSY_TIMEOUT, PairWriter, Result, Store};
use rusqlite::Transaction;
use std::time::Duration;

/// The transaction an import writes one file in: nothing of it is stored unless it
/// commits.
pub struct ImportTx<'s> {
    tx: Transaction<'s>,
}

impl ImportTx<'_> {
    /// A bulk writer (`PairWriter::bulk`) inside this transaction.
    pub fn writer(&self) -> Result<PairWriter<'_>> {
        PairWriter::bulk(&self.tx)
    }

    /// Stores what was written in it.
    pub fn commit(self) -> Result<()> {
        self.tx.commit()?;
        Ok(())
    }
}

impl Store {
    /// Begins the transaction an import writes a file in.
    pub fn begin_import(&mut self) -> Result<ImportTx<'_>> {
        Ok(ImportTx {
            tx: self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?,
        })
    }

    /// Sets this connection's page cache to `kib` KiB.
    pub fn set_cache_kib(&self, kib: i64) -> Result<()> {
        self.conn.pragma_update(None, "cache_size", -kib)?;
        Ok(())
    }

    /// Turns checking foreign keys on this connection on or off.
    pub fn set_foreign_keys(&self, on: bool) -> Result<()> {
        self.conn
            .pragma_update(None, "foreign_keys", if on { "ON" } else { "OFF" })?;
        Ok(())
    }

    /// Puts the database in WAL mode.
    pub fn set_wal(&self) -> Result<()> {
        self.conn.pragma_update(None, "journal_mode", "WAL")?;
        Ok(())
    }

    /// Whether the database holds no pairs yet.
    pub fn holds_no_pairs(&self) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT NOT EXISTS (SELECT 1 FROM pairs)", [], |r| r.get(0))?)
    }

    /// Switches the database to a rollback journal when no other connection has it
    /// open, without waiting for them, and says whether it did.
    pub fn try_rollback_journal(&self) -> bool {
        let conn = &self.conn;
        if conn.busy_timeout(Duration::ZERO).is_err() {
            return false;
        }
        let switched = conn
            .query_row("PRAGMA journal_mode = DELETE", [], |r| {
                r.get::<_, String>(0)
            })
            .is_ok_and(|m| m.eq_ignore_ascii_case("delete"));
        let _ = conn.busy_timeout(BUSY_TIMEOUT);
        switched
    }
}
