//! The store on a PostgreSQL server: connecting, and the schema's migrations.
//!
//! The schema's version is the row of `duel_schema`; the migrations of
//! `migrations/postgres/` are applied in order, in one transaction, under an
//! advisory lock so that two processes opening a new database do not both create
//! it. A database from a newer `duel` is refused before anything is written.

use super::{Db, Result, Store, StoreError};
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// PostgreSQL's schema, one SQL file per version. Append only.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/postgres/0001_init.sql"),
    include_str!("migrations/postgres/0002_roles.sql"),
    include_str!("migrations/postgres/0003_verdict_trigger.sql"),
];

/// The schema version this build writes on PostgreSQL.
pub fn schema_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// A key for `pg_advisory_xact_lock`: migrations of duel's schema.
const MIGRATION_LOCK: i64 = 0x6475_656c_0001;

/// What the server said (its message, and where it applies its detail and hint),
/// or what went wrong on the way to it.
pub(super) fn message(e: &::postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut m = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            m.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            m.push_str(&format!("; hint: {h}"));
        }
        return m;
    }
    match std::error::Error::source(e) {
        Some(s) => format!("{e}: {s}"),
        None => e.to_string(),
    }
}

/// The URL as messages show it: without a password.
fn shown(url: &str) -> String {
    match url.parse::<::postgres::Config>() {
        Ok(c) if c.get_password().is_some() => match (url.find("://"), url.rfind('@')) {
            (Some(s), Some(at)) if at > s => {
                let userinfo = &url[s + 3..at];
                let user = userinfo.split(':').next().unwrap_or_default();
                format!("{}{user}:***{}", &url[..s + 3], &url[at..])
            }
            _ => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

/// Connects to the server `url` names; with `migrate`, creates or upgrades the
/// schema (otherwise only checks that it is not from a newer `duel`).
pub(super) fn open(url: &Path, migrate: bool) -> Result<Store> {
    let raw = url.to_string_lossy().into_owned();
    let name = shown(&raw);
    let (client_url, tls) =
        super::tls::split(&raw).map_err(|msg| StoreError::Invalid(format!("{name}: {msg}")))?;
    let connect_error = |source| StoreError::Connect {
        url: name.clone(),
        source,
    };
    let mut config: ::postgres::Config = client_url.parse().map_err(connect_error)?;
    if config.get_application_name().is_none() {
        config.application_name(super::application_name());
    }
    let connected = if tls.mode == super::tls::Mode::Disable {
        config.connect(::postgres::NoTls)
    } else {
        let tls_config = super::tls::client_config(&tls)
            .map_err(|msg| StoreError::Invalid(format!("{name}: {msg}")))?;
        config.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config))
    };
    let mut client = connected.map_err(connect_error)?;
    // A judgement is on the server's disk when its commit returns, whatever the
    // server's default.
    client.batch_execute("SET synchronous_commit = on")?;
    check_and_migrate(&mut client, &name, migrate)?;
    Ok(Store {
        db: Db::Pg {
            client: Box::new(RefCell::new(client)),
            texts: RefCell::new(HashMap::new()),
        },
        path: PathBuf::from(name),
    })
}

/// The version of the schema in the database (0 for none).
fn found_version(tx: &mut ::postgres::Transaction<'_>) -> Result<i64> {
    let exists: bool = tx
        .query_one("SELECT to_regclass('duel_schema') IS NOT NULL", &[])?
        .get(0);
    if !exists {
        return Ok(0);
    }
    Ok(tx
        .query_opt("SELECT version FROM duel_schema", &[])?
        .map_or(0, |r| r.get(0)))
}

/// The version whose migration creates the team's roles and hands the tables to
/// `duel_lead`.
const ROLES_VERSION: i64 = 2;

/// Before the roles' migration: whether the role migrating may do what it does
/// (create `duel_lead` and `duel_annotator` when missing, join `duel_lead`), so that
/// a role without the right gets, instead of the server's "permission denied" part
/// way through, what to ask the server's administrator for. Nothing is written.
fn check_role_rights(tx: &mut ::postgres::Transaction<'_>, name: &str) -> Result<()> {
    // From PostgreSQL 16, CREATEROLE grants only the roles one administers (those
    // one created), and owning needs membership one may SET ROLE to.
    let row = tx.query_one(
        "SELECT CAST(current_user AS TEXT), r.rolsuper, r.rolcreaterole,
                (SELECT array_agg(CAST(want AS TEXT)) FROM unnest(ARRAY['duel_lead', 'duel_annotator']) AS want
                  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = want)),
                coalesce((SELECT pg_has_role(current_user, oid,
                                  CASE WHEN current_setting('server_version_num')::int >= 160000
                                       THEN 'SET' ELSE 'MEMBER' END)
                            FROM pg_roles WHERE rolname = 'duel_lead'), false),
                coalesce((SELECT pg_has_role(current_user, oid, 'MEMBER WITH ADMIN OPTION')
                            FROM pg_roles WHERE rolname = 'duel_lead'), false),
                current_setting('server_version_num')::int >= 160000
           FROM pg_roles r WHERE r.rolname = current_user",
        &[],
    )?;
    let (user, superuser, createrole): (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
    let missing: Vec<String> = row.get::<_, Option<Vec<String>>>(3).unwrap_or_default();
    let (member, admin, v16): (bool, bool, bool) = (row.get(4), row.get(5), row.get(6));
    let lead_missing = missing.iter().any(|r| r == "duel_lead");
    let may_join = createrole && (!v16 || lead_missing || admin);
    if superuser || (missing.is_empty() && member) || may_join {
        return Ok(());
    }
    let mut sql: Vec<String> = missing
        .iter()
        .map(|r| format!("CREATE ROLE {r} NOLOGIN;"))
        .collect();
    sql.push(format!(
        "GRANT duel_lead TO \"{}\";",
        user.replace('"', "\"\"")
    ));
    let why = if createrole {
        "has CREATEROLE but does not administer duel_lead (PostgreSQL 16 and later)"
    } else {
        "may not create roles (CREATEROLE)"
    };
    let needs = if missing.is_empty() {
        "it to be a member of duel_lead".to_owned()
    } else {
        format!(
            "the roles {} and {user} a member of duel_lead",
            missing.join(" and ")
        )
    };
    Err(StoreError::Invalid(format!(
        "{name}: the role {user} {why}, and the schema needs {needs}: ask the server's \
         administrator to run `{}`, then migrate again",
        sql.join(" ")
    )))
}

fn check_and_migrate(client: &mut ::postgres::Client, name: &str, migrate: bool) -> Result<()> {
    let mut tx = client.transaction()?;
    if migrate {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    }
    let found = found_version(&mut tx)?;
    if found > schema_version() {
        return Err(StoreError::TooNew {
            path: PathBuf::from(name),
            found,
            known: schema_version(),
        });
    }
    if !migrate || found == schema_version() {
        tx.commit()?;
        return Ok(());
    }
    if found < ROLES_VERSION {
        check_role_rights(&mut tx, name)?;
    }
    if found == 0 {
        tx.batch_execute("CREATE TABLE duel_schema (version BIGINT NOT NULL)")?;
        tx.execute("INSERT INTO duel_schema (version) VALUES (0)", &[])?;
    }
    for sql in &MIGRATIONS[found as usize..] {
        tx.batch_execute(sql)?;
    }
    tx.execute("UPDATE duel_schema SET version = $1", &[&schema_version()])?;
    tx.commit()?;
    Ok(())
}

impl Store {
    /// On PostgreSQL, the role this connection is: the one name it may judge as.
    /// `None` on SQLite, where the annotator is whoever the command line says.
    pub fn server_role(&self) -> Result<Option<String>> {
        if !self.is_postgres() {
            return Ok(None);
        }
        self.read(|ex| ex.query_one("SELECT CAST(current_user AS TEXT)", &[], |r| r.get(0)))
            .map(Some)
    }

    /// Whether this connection may train the live model (take the lease, write
    /// metrics and scores): always on SQLite; on PostgreSQL, a lead or the owner,
    /// not an annotator.
    pub fn may_train(&self) -> Result<bool> {
        if !self.is_postgres() {
            return Ok(true);
        }
        self.read(|ex| {
            ex.query_one(
                "SELECT has_table_privilege('train_lease', 'INSERT')
                    AND has_table_privilege('train_metrics', 'INSERT')
                    AND has_table_privilege('pair_scores', 'INSERT')",
                &[],
                |r| r.get(0),
            )
        })
    }

    /// Whether the connection to the server is encrypted (TLS); `false` for a
    /// SQLite file, which has no connection.
    pub fn encrypted(&self) -> Result<bool> {
        if !self.is_postgres() {
            return Ok(false);
        }
        self.read(|ex| {
            ex.query_one(
                "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                &[],
                |r| r.get(0),
            )
        })
    }

    /// The schema version of the database and the one this build writes.
    pub fn schema_versions(&self) -> Result<(i64, i64)> {
        match &self.db {
            Db::Lite(c) => Ok((
                c.query_row("PRAGMA user_version", [], |r| r.get(0))?,
                super::schema_version(),
            )),
            Db::Pg { client, .. } => {
                let mut client = client.borrow_mut();
                let mut tx = client.transaction()?;
                let found = found_version(&mut tx)?;
                tx.commit()?;
                Ok((found, schema_version()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_not_shown() {
        assert_eq!(
            shown("postgres://ann:secret@db.example:5432/duel"),
            "postgres://ann:***@db.example:5432/duel"
        );
        assert_eq!(
            shown("postgres://ann@db.example/duel"),
            "postgres://ann@db.example/duel"
        );
    }
}
