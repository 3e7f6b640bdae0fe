//! The training lease: one trainer per database.
//!
//! The process that trains holds the lease and renews its heartbeat every
//! `LEASE_HEARTBEAT`; any other process may take a lease whose heartbeat is older
//! than `LEASE_TTL` (its holder was killed, or lost its SSH session), and takes it
//! at once when the holder hands it back on a clean stop.

use super::claims::unix_now;
use super::sql::Ex;
use super::{Result, Store};
use serde::Serialize;
use std::time::Duration;

/// How often the holder renews the lease.
pub const LEASE_HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a lease outlives its last heartbeat.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// Who trains.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lease {
    pub holder: String,
    pub session: String,
    pub host: Option<String>,
    pub pid: Option<i64>,
    /// Unix time, seconds.
    pub since: f64,
    pub heartbeat: f64,
}

impl Lease {
    /// Whether its heartbeat is recent enough to stand.
    pub fn is_live(&self, now: f64) -> bool {
        self.heartbeat + LEASE_TTL.as_secs_f64() >= now
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TakeLease {
    /// This session holds it now.
    Taken,
    /// Another session holds a live lease.
    HeldBy(Lease),
}

fn read(ex: &Ex<'_, '_>) -> Result<Option<Lease>> {
    ex.query_opt(
        "SELECT holder, session, host, pid, since, heartbeat FROM train_lease WHERE id = 1",
        &[],
        |r| {
            Ok(Lease {
                holder: r.get(0)?,
                session: r.get(1)?,
                host: r.get(2)?,
                pid: r.get(3)?,
                since: r.get(4)?,
                heartbeat: r.get(5)?,
            })
        },
    )
}

impl Store {
    /// The lease as it stands, live or not.
    pub fn lease(&self) -> Result<Option<Lease>> {
        self.read(read)
    }

    /// Takes the lease for `session` unless another session holds a live one.
    pub fn take_lease(&mut self, holder: &str, session: &str) -> Result<TakeLease> {
        self.write(|ex| {
            if ex.is_postgres() {
                // One process at a time reads and takes the lease, as SQLite's write
                // lock makes it.
                ex.execute("LOCK TABLE train_lease IN SHARE ROW EXCLUSIVE MODE", &[])?;
            }
            let now = unix_now();
            if let Some(l) = read(ex)?
                && l.session != session
                && l.is_live(now)
            {
                return Ok(TakeLease::HeldBy(l));
            }
            let host = hostname();
            ex.execute(
                "INSERT INTO train_lease (id, holder, session, host, pid, since, heartbeat)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?5)
             ON CONFLICT (id) DO UPDATE SET
                 holder = excluded.holder, session = excluded.session, host = excluded.host,
                 pid = excluded.pid, heartbeat = excluded.heartbeat,
                 since = CASE WHEN train_lease.session = excluded.session
                              THEN train_lease.since ELSE excluded.since END",
                &[
                    &holder,
                    &session,
                    &host,
                    &i64::from(std::process::id()),
                    &now,
                ],
            )?;
            Ok(TakeLease::Taken)
        })
    }

    /// Renews `session`'s lease; false when it no longer holds it (it expired and
    /// another took it).
    pub fn renew_lease(&mut self, session: &str) -> Result<bool> {
        let n = self.write(|ex| {
            ex.execute(
                "UPDATE train_lease SET heartbeat = ?2 WHERE id = 1 AND session = ?1",
                &[&session, &unix_now()],
            )
        })?;
        Ok(n == 1)
    }

    /// Hands the lease back, if `session` holds it.
    pub fn release_lease(&mut self, session: &str) -> Result<()> {
        self.write(|ex| {
            ex.execute(
                "DELETE FROM train_lease WHERE id = 1 AND session = ?1",
                &[&session],
            )
        })?;
        Ok(())
    }
}

fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_session_holds_the_lease_until_it_hands_it_back_or_goes_quiet() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("d.db");
        let mut a = Store::open(&path).expect("a");
        let mut b = Store::open(&path).expect("b");
        assert_eq!(a.take_lease("ann", "s1").expect("take"), TakeLease::Taken);
        let TakeLease::HeldBy(l) = b.take_lease("bob", "s2").expect("take") else {
            panic!("two holders")
        };
        assert_eq!((l.holder.as_str(), l.session.as_str()), ("ann", "s1"));
        assert!(a.renew_lease("s1").expect("renew"));
        assert!(!b.renew_lease("s2").expect("renew"), "not the holder");
        // The holder hands it back: the next takes it at once.
        a.release_lease("s1").expect("release");
        assert_eq!(b.take_lease("bob", "s2").expect("take"), TakeLease::Taken);
        // A holder gone quiet past the timeout loses it.
        b.conn()
            .execute("UPDATE train_lease SET heartbeat = heartbeat - 60", [])
            .expect("age");
        assert_eq!(a.take_lease("ann", "s1").expect("take"), TakeLease::Taken);
        assert!(!b.renew_lease("s2").expect("renew"), "lost");
        assert_eq!(a.lease().expect("lease").expect("held").holder, "ann");
    }
}
