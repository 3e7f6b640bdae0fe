//! What an import sets on its connection while it writes, and the transaction it
//! writes a file in.

use super::copy::Background;
use super::sql::Ex;
use super::{BUSY_TIMEOUT, PairWriter, Result, Store, StoreError};
use std::time::Duration;

impl Store {
    /// Runs `f` with a bulk writer (`PairWriter::bulk`) in the one transaction an
    /// import writes a file in: nothing of it is stored unless `f` succeeds.
    pub fn import<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&mut PairWriter<'_, '_, '_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.write_as(|ex| {
            std::thread::scope(|scope| {
                let background = match ex {
                    Ex::Pg { tx, .. } => Some(Background::spawn(scope, tx)),
                    Ex::Lite(_) => None,
                };
                let mut w = PairWriter::bulk(ex, background)?;
                let out = f(&mut w)?;
                // Rows still waiting for `COPY` go before the commit.
                w.flush()?;
                Ok(out)
            })
        })
    }

    /// Sets this connection's page cache to `kib` KiB (SQLite; nothing on PostgreSQL).
    pub fn set_cache_kib(&self, kib: i64) -> Result<()> {
        if let Some(conn) = self.lite() {
            conn.pragma_update(None, "cache_size", -kib)?;
        }
        Ok(())
    }

    /// Turns checking foreign keys on this connection on or off (SQLite; nothing on
    /// PostgreSQL).
    pub fn set_foreign_keys(&self, on: bool) -> Result<()> {
        if let Some(conn) = self.lite() {
            conn.pragma_update(None, "foreign_keys", if on { "ON" } else { "OFF" })?;
        }
        Ok(())
    }

    /// Puts the database in WAL mode (SQLite; nothing on PostgreSQL).
    pub fn set_wal(&self) -> Result<()> {
        if let Some(conn) = self.lite() {
            conn.pragma_update(None, "journal_mode", "WAL")?;
        }
        Ok(())
    }

    /// Whether the database holds no pairs yet.
    pub fn holds_no_pairs(&self) -> Result<bool> {
        self.read(|ex| ex.query_one("SELECT NOT EXISTS (SELECT 1 FROM pairs)", &[], |r| r.get(0)))
    }

    /// Switches the database to a rollback journal when no other connection has it
    /// open, without waiting for them, and says whether it did.
    pub fn try_rollback_journal(&self) -> bool {
        let Some(conn) = self.lite() else {
            return false;
        };
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
