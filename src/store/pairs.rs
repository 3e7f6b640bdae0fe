//! Writing and reading pairs.

use super::copy::{CopyRows, Deferred, Table, Val};
use super::sql::Ex;
use super::{Result, Store, StoreError};
use crate::domain::{Choice, Message, NewLabel, Pair, Prompt};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

/// Metadata of a locally generated response.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub generator: String,
    pub meta: serde_json::Value,
}

/// A pair about to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewPair {
    pub prompt: Prompt,
    pub response_a: String,
    pub response_b: String,
    pub ext_id: Option<String>,
    pub meta: Option<serde_json::Value>,
    pub extra: Option<serde_json::Value>,
    pub source: Option<String>,
    pub generated: Option<(Generated, Generated)>,
    /// A judgement that came with the record (labeled imports: `a` is `chosen`).
    pub label: Option<Choice>,
    /// Store `label` as the pair's known answer (a gold pair), not as a judgement.
    pub gold: bool,
}

impl NewPair {
    pub fn new(prompt: Prompt, response_a: String, response_b: String) -> NewPair {
        NewPair {
            prompt,
            response_a,
            response_b,
            ext_id: None,
            meta: None,
            extra: None,
            source: None,
            generated: None,
            label: None,
            gold: false,
        }
    }
}

/// A stored pair with its metadata, as `export --format pairs` writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct PairExport {
    pub pair: Pair,
    pub meta: Option<serde_json::Value>,
    pub generated_a: Option<Generated>,
    pub generated_b: Option<Generated>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    Inserted(i64),
    /// The same prompt and responses (in either order) are already stored.
    Duplicate(i64),
}

type Digest = [u8; 16];

fn digest(parts: &[&str]) -> Digest {
    let mut h = blake3::Hasher::new();
    for p in parts {
        // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// The identity of a pair: its prompt and its two responses as a set, so that the
/// same two responses stored in the other order are the same pair.
pub fn pair_digest(prompt: &str, a: &str, b: &str) -> Digest {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    digest(&[prompt, x, y])
}

fn duplicate_id(ext: &str) -> StoreError {
    StoreError::Invalid(format!(
        "duplicate id {ext:?}: another pair already has this id with other content"
    ))
}

fn blob_digest(b: &[u8]) -> Digest {
    let mut d = [0u8; 16];
    let n = b.len().min(16);
    d[..n].copy_from_slice(&b[..n]);
    d
}

/// Reads `(digest, id)` rows of `sql` into `into`.
fn load_digests(ex: &Ex<'_, '_>, sql: &str, into: &mut HashMap<Digest, i64>) -> Result<()> {
    ex.query_each::<StoreError>(sql, &[], |r| {
        into.insert(blob_digest(&r.get::<Vec<u8>>(0)?), r.get(1)?);
        Ok(())
    })
}

/// The identities of a pair and of its prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairDigests {
    pub pair: Digest,
    pub prompt: Digest,
}

impl PairDigests {
    pub fn of(pair: &NewPair) -> PairDigests {
        PairDigests {
            pair: pair_digest(&pair.prompt.text, &pair.response_a, &pair.response_b),
            prompt: digest(&[&pair.prompt.text]),
        }
    }
}

/// Inserts pairs inside the caller's transaction (cached statements, no per-row
/// allocations beyond the values).
pub struct PairWriter<'e, 'a, 't> {
    ex: &'e Ex<'a, 't>,
    last_prompt: Option<(Digest, i64)>,
    /// One timestamp for everything one writer stores (an import is one moment).
    now: String,
    /// Bulk mode: every stored pair and prompt digest in memory, so that checking for
    /// a duplicate costs no query.
    known: Option<Known>,
    /// Bulk mode on PostgreSQL: the rows waiting to be sent by `COPY`.
    copy: Option<RefCell<CopyRows>>,
    /// What a large import on PostgreSQL set aside, to put back at the end.
    deferred: Option<Deferred>,
}

struct Known {
    /// Stored pairs by content digest.
    pairs: HashMap<Digest, i64>,
    prompts: HashMap<Digest, i64>,
    ext_ids: HashSet<String>,
    /// The unique and shuffle indexes on `pairs` are dropped for the bulk insert and built again
    /// by `finish` (sorting once is much faster than inserting random keys one by
    /// one); uniqueness is checked against the sets above meanwhile.
    indexes_deferred: bool,
    /// The trigger that keeps a judged pair's `pair_verdicts` row as each label is
    /// inserted, as the schema holds it, while a bulk import goes without it (the rows
    /// are rebuilt in one pass by `finish`).
    verdict_trigger: Option<String>,
}

/// The trigger on label inserts that a bulk import suspends (migration 0005).
const VERDICT_TRIGGER: &str = "labels_verdict_insert";

/// The indexes on random keys that a bulk import drops and builds again, as the
/// migrations create them (a test checks that the schema is the same after an import).
const DEFERRABLE_INDEXES: [(&str, &str); 3] = [
    (
        "pairs_content_hash",
        "CREATE UNIQUE INDEX pairs_content_hash ON pairs(content_hash)",
    ),
    (
        "pairs_ext_id",
        "CREATE UNIQUE INDEX pairs_ext_id ON pairs(ext_id)",
    ),
    (
        "pairs_shuffle",
        "CREATE INDEX pairs_shuffle ON pairs(((id * 2654435761) % 4294967311))",
    ),
];

/// Above this many stored pairs, bulk mode falls back to a query per record rather
/// than holding every digest in memory (about 40 bytes each).
const BULK_PRELOAD_MAX: i64 = 5_000_000;

impl<'e, 'a, 't> PairWriter<'e, 'a, 't> {
    pub(crate) fn new(ex: &'e Ex<'a, 't>) -> Result<Self> {
        let now = ex.query_one(&format!("SELECT {}", ex.now()), &[], |r| r.get(0))?;
        Ok(PairWriter {
            ex,
            last_prompt: None,
            now,
            known: None,
            copy: None,
            deferred: None,
        })
    }

    /// A writer for many records (import): loads the stored digests and ids once
    /// when there are not too many, instead of querying for each record. On
    /// PostgreSQL (`background` given) it writes by `COPY`, its rows sent from
    /// `background`'s thread while it builds the next ones.
    pub(super) fn bulk(
        ex: &'e Ex<'a, 't>,
        background: Option<super::copy::Background>,
    ) -> Result<Self> {
        let mut w = Self::new(ex)?;
        let (pairs, prompts): (i64, i64) = ex.query_one(
            "SELECT (SELECT count(*) FROM pairs), (SELECT count(*) FROM prompts)",
            &[],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if pairs.max(prompts) <= BULK_PRELOAD_MAX {
            let mut known = Known {
                pairs: HashMap::with_capacity(pairs as usize),
                prompts: HashMap::with_capacity(prompts as usize),
                ext_ids: HashSet::new(),
                indexes_deferred: false,
                verdict_trigger: None,
            };
            ex.query_each::<StoreError>(
                "SELECT ext_id FROM pairs WHERE ext_id IS NOT NULL",
                &[],
                |r| {
                    known.ext_ids.insert(r.get(0)?);
                    Ok(())
                },
            )?;
            load_digests(ex, "SELECT content_hash, id FROM pairs", &mut known.pairs)?;
            load_digests(ex, "SELECT hash, id FROM prompts", &mut known.prompts)?;
            w.known = Some(known);
            if let Some(background) = background {
                w.copy = Some(RefCell::new(CopyRows::new(background)));
            }
        }
        Ok(w)
    }

    /// How many pairs are stored (those of this writer included), if the writer
    /// keeps their digests in memory (bulk mode).
    pub fn stored_pairs(&self) -> Option<usize> {
        self.known.as_ref().map(|k| k.pairs.len())
    }

    /// In bulk mode, drops the unique indexes on `pairs` (and suspends the trigger
    /// that keeps `pair_verdicts`) until `finish` builds them again: worth it when
    /// many pairs are about to be inserted. Must run inside the
    /// caller's transaction, so that an interrupted import leaves the indexes as
    /// they were. Does nothing outside bulk mode.
    pub fn defer_indexes(&mut self) -> Result<()> {
        let Some(k) = &mut self.known else {
            return Ok(());
        };
        if k.indexes_deferred {
            return Ok(());
        }
        let Ex::Lite(conn) = self.ex else {
            // PostgreSQL: its own way, when this role owns the tables.
            if let Some(c) = &self.copy {
                self.deferred = super::copy::defer(self.ex, &mut c.borrow_mut())?;
                k.indexes_deferred = self.deferred.is_some();
            }
            return Ok(());
        };
        if conn.is_autocommit() {
            return Err(StoreError::Invalid(
                "indexes can only be deferred inside a transaction".into(),
            ));
        }
        for (name, _) in DEFERRABLE_INDEXES {
            conn.execute_batch(&format!("DROP INDEX {name}"))?;
        }
        k.verdict_trigger = Some(conn.query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = ?1",
            [VERDICT_TRIGGER],
            |r| r.get(0),
        )?);
        conn.execute_batch(&format!("DROP TRIGGER {VERDICT_TRIGGER}"))?;
        k.indexes_deferred = true;
        Ok(())
    }

    /// Builds the indexes `defer_indexes` dropped, and says whether there were any.
    /// Call before committing; the transaction must not commit without it.
    pub fn finish(&mut self) -> Result<bool> {
        self.flush()?;
        if let Some(d) = self.deferred.take() {
            if let Some(c) = &self.copy {
                c.borrow_mut().settle_ids(self.ex)?;
            }
            d.restore(self.ex)?;
            return Ok(true);
        }
        let deferred = self.known.as_ref().is_some_and(|k| k.indexes_deferred);
        if deferred && let Ex::Lite(conn) = self.ex {
            // Sorting for the index build stays in memory (a few tens of bytes a pair).
            conn.pragma_update(None, "temp_store", "MEMORY")?;
            for (_, sql) in DEFERRABLE_INDEXES {
                conn.execute_batch(sql)?;
            }
            conn.execute_batch(
                "DELETE FROM pair_verdicts;
                 INSERT INTO pair_verdicts (pair_id, choices, lean, against)
                 SELECT pair_id, choices, lean, against FROM pair_verdicts_fresh;",
            )?;
            if let Some(sql) = self.known.as_ref().and_then(|k| k.verdict_trigger.as_ref()) {
                conn.execute_batch(sql)?;
            }
            conn.pragma_update(None, "temp_store", "DEFAULT")?;
        }
        Ok(deferred)
    }

    /// Sends the rows waiting for `COPY` (PostgreSQL's bulk mode), so that queries
    /// see them.
    pub(super) fn flush(&self) -> Result<()> {
        match &self.copy {
            Some(c) => c.borrow_mut().flush(self.ex),
            None => Ok(()),
        }
    }

    pub fn insert(&mut self, pair: &NewPair) -> Result<InsertOutcome> {
        self.insert_with(pair, &PairDigests::of(pair))
    }

    /// Inserts with digests computed beforehand (on another thread, by import).
    pub fn insert_with(&mut self, pair: &NewPair, digests: &PairDigests) -> Result<InsertOutcome> {
        if self.ex.is_postgres() {
            let texts = [
                Some(pair.prompt.text.as_str()),
                Some(pair.response_a.as_str()),
                Some(pair.response_b.as_str()),
                pair.ext_id.as_deref(),
                pair.source.as_deref(),
            ];
            if texts.into_iter().flatten().any(|t| t.contains('\0')) {
                return Err(StoreError::Unstorable(
                    "a NUL character (\\u0000) in the text, which PostgreSQL cannot store".into(),
                ));
            }
        }
        let hash = digests.pair;
        let existing: Option<i64> = match &self.known {
            Some(k) => k.pairs.get(&hash).copied(),
            None => self.ex.query_opt(
                "SELECT id FROM pairs WHERE content_hash = ?1",
                &[&&hash[..]],
                |r| r.get(0),
            )?,
        };
        if let Some(id) = existing {
            if pair.gold || pair.label.is_some() {
                // What follows reads the stored pair.
                self.flush()?;
            }
            if pair.gold {
                self.gold_existing(id)?;
            } else if let Some(choice) = pair.label {
                self.label_existing(id, pair, choice)?;
            }
            return Ok(InsertOutcome::Duplicate(id));
        }
        if pair.gold && pair.label.is_none() {
            return Err(StoreError::Gold(
                "a gold pair needs its known answer (`chosen`/`rejected`, or a `label`)".into(),
            ));
        }
        if let (Some(k), Some(ext)) = (&self.known, &pair.ext_id)
            && k.ext_ids.contains(ext)
        {
            return Err(duplicate_id(ext));
        }
        let prompt_id = self.prompt_id(&pair.prompt, digests.prompt)?;
        let (gen_a, gen_b) = match &pair.generated {
            Some((a, b)) => (Some(a), Some(b)),
            None => (None, None),
        };
        let (ra, rb) = self.responses(prompt_id, pair, gen_a, gen_b)?;
        let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
        if let Some(c) = &self.copy {
            let id = c.borrow_mut().next_id(self.ex, Table::Pairs)?;
            let (meta, extra) = (json(&pair.meta), json(&pair.extra));
            let gold = pair.gold.then(|| pair.label.map(Choice::as_str)).flatten();
            let mut c = c.borrow_mut();
            c.row(
                Table::Pairs,
                &[
                    Val::Int(id),
                    Val::Int(prompt_id),
                    Val::Int(ra),
                    Val::Int(rb),
                    Val::Bytes(&hash),
                    Val::Text(pair.ext_id.as_deref()),
                    Val::Text(meta.as_deref()),
                    Val::Text(extra.as_deref()),
                    Val::Text(pair.source.as_deref()),
                    Val::Text(Some(&self.now)),
                    Val::Text(gold),
                ],
            )?;
            let full = c.full();
            drop(c);
            return self.inserted(id, hash, pair, full);
        }
        if self.known.is_none()
            && self.ex.is_postgres()
            && let Some(ext) = &pair.ext_id
            && self
                .ex
                .query_opt("SELECT 1 FROM pairs WHERE ext_id = ?1", &[ext], |r| {
                    r.get::<i32>(0)
                })?
                .is_some()
        {
            // A failed statement ends a PostgreSQL transaction: look first.
            return Err(duplicate_id(ext));
        }
        let inserted = self.ex.insert_id("INSERT INTO pairs (prompt_id, response_a, response_b, content_hash, ext_id, meta, extra, source, created_at, gold)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)", &[
                &prompt_id,
                &ra,
                &rb,
                &&hash[..],
                &pair.ext_id,
                &json(&pair.meta),
                &json(&pair.extra),
                &pair.source,
                &self.now,
                &pair.gold.then(|| pair.label.map(Choice::as_str)).flatten(),
            ]);
        // On SQLite the id check rides on the unique index rather than a lookup per
        // record: the clash is rare, and then the two responses just written are
        // removed.
        let id = match inserted {
            Ok(id) => id,
            Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(_, Some(m))))
                if m.contains("pairs.ext_id") =>
            {
                self.ex
                    .execute("DELETE FROM responses WHERE id IN (?1, ?2)", &[&ra, &rb])?;
                return Err(duplicate_id(pair.ext_id.as_deref().unwrap_or_default()));
            }
            Err(e) => return Err(e),
        };
        self.inserted(id, hash, pair, false)
    }

    /// Notes pair `id` as stored, with the judgement its record brings; sends the
    /// `COPY` buffers when `full`.
    fn inserted(
        &mut self,
        id: i64,
        hash: Digest,
        pair: &NewPair,
        full: bool,
    ) -> Result<InsertOutcome> {
        if let Some(k) = &mut self.known {
            k.pairs.insert(hash, id);
            if let Some(ext) = &pair.ext_id {
                k.ext_ids.insert(ext.clone());
            }
        }
        if let Some(choice) = pair.label
            && !pair.gold
        {
            self.import_label(id, choice)?;
        }
        if full && let Some(c) = &self.copy {
            c.borrow_mut().send()?;
        }
        Ok(InsertOutcome::Inserted(id))
    }

    /// The judgement a labeled record brings, by annotator `import`.
    fn import_label(&self, pair_id: i64, choice: Choice) -> Result<()> {
        if let Some(c) = &self.copy {
            c.borrow_mut().row(
                Table::Labels,
                &[
                    Val::Int(pair_id),
                    Val::Text(Some("import")),
                    Val::Text(Some(choice.as_str())),
                    Val::Text(Some("import")),
                ],
            )?;
            return Ok(());
        }
        super::labels::insert_label(
            self.ex,
            &NewLabel::plain(pair_id, "import", choice, "import"),
        )?;
        Ok(())
    }

    /// A gold record whose pair is already stored: fine if it is gold already; a pair
    /// stored to be labeled cannot become gold (its judgements would vanish from
    /// export).
    fn gold_existing(&self, pair_id: i64) -> Result<()> {
        let gold: Option<String> =
            self.ex
                .query_one("SELECT gold FROM pairs WHERE id = ?1", &[&pair_id], |r| {
                    r.get(0)
                })?;
        match gold {
            Some(_) => Ok(()),
            None => Err(StoreError::Gold(format!(
                "this pair is already stored (pair {pair_id}) as a pair to label; a gold pair must be new"
            ))),
        }
    }

    /// A labeled record whose pair is already stored: its judgement is added to that
    /// pair (mapped to the stored order), unless the same import judgement stands.
    fn label_existing(&self, pair_id: i64, pair: &NewPair, choice: Choice) -> Result<()> {
        let stored_a: String = self.ex.query_one(
            "SELECT r.text FROM pairs p JOIN responses r ON r.id = p.response_a WHERE p.id = ?1",
            &[&pair_id],
            |r| r.get(0),
        )?;
        let choice = match choice {
            Choice::A if stored_a != pair.response_a => Choice::B,
            Choice::B if stored_a != pair.response_b => Choice::A,
            c => c,
        };
        let already: bool = self.ex.query_one(
            "SELECT EXISTS (SELECT 1 FROM labels WHERE pair_id = ?1 AND annotator = 'import'
                            AND choice = ?2 AND undone_at IS NULL)",
            &[&pair_id, &choice.as_str()],
            |r| r.get(0),
        )?;
        if !already {
            self.import_label(pair_id, choice)?;
        }
        Ok(())
    }

    fn prompt_id(&mut self, prompt: &Prompt, hash: Digest) -> Result<i64> {
        if let Some((h, id)) = self.last_prompt
            && h == hash
        {
            return Ok(id);
        }
        let found: Option<i64> = match &self.known {
            Some(k) => k.prompts.get(&hash).copied(),
            None => self.ex.query_opt(
                "SELECT id FROM prompts WHERE hash = ?1",
                &[&&hash[..]],
                |r| r.get(0),
            )?,
        };
        let id = match found {
            Some(id) => id,
            None => {
                let messages = match &prompt.messages {
                    Some(m) => Some(serde_json::to_string(m).map_err(|e| {
                        StoreError::Invalid(format!("cannot encode messages: {e}"))
                    })?),
                    None => None,
                };
                let id: i64 = match &self.copy {
                    Some(c) => {
                        let mut c = c.borrow_mut();
                        let id = c.next_id(self.ex, Table::Prompts)?;
                        c.row(
                            Table::Prompts,
                            &[
                                Val::Int(id),
                                Val::Bytes(&hash),
                                Val::Text(Some(&prompt.text)),
                                Val::Text(messages.as_deref()),
                                Val::Text(Some(&self.now)),
                            ],
                        )?;
                        id
                    }
                    None => self.ex.insert_id(
                        "INSERT INTO prompts (hash, text, messages) VALUES (?1, ?2, ?3)",
                        &[&&hash[..], &prompt.text, &messages],
                    )?,
                };
                if let Some(k) = &mut self.known {
                    k.prompts.insert(hash, id);
                }
                id
            }
        };
        self.last_prompt = Some((hash, id));
        Ok(id)
    }

    /// Stores both responses; returns their ids in order. One row a statement: a
    /// statement of two rows needs a statement journal (to undo half of it), which
    /// costs more than the second statement.
    fn responses(
        &self,
        prompt_id: i64,
        pair: &NewPair,
        gen_a: Option<&Generated>,
        gen_b: Option<&Generated>,
    ) -> Result<(i64, i64)> {
        let one = |text: &str, g: Option<&Generated>| -> Result<i64> {
            if let Some(c) = &self.copy {
                let mut c = c.borrow_mut();
                let id = c.next_id(self.ex, Table::Responses)?;
                let meta = g.map(|g| g.meta.to_string());
                c.row(
                    Table::Responses,
                    &[
                        Val::Int(id),
                        Val::Int(prompt_id),
                        Val::Text(Some(text)),
                        Val::Text(g.map(|g| g.generator.as_str())),
                        Val::Text(meta.as_deref()),
                        Val::Text(Some(&self.now)),
                    ],
                )?;
                return Ok(id);
            }
            self.ex.insert_id(
                "INSERT INTO responses (prompt_id, text, generator, gen_meta, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                &[
                    &prompt_id,
                    &text,
                    &g.map(|g| g.generator.as_str()),
                    &g.map(|g| g.meta.to_string()),
                    &self.now,
                ],
            )
        };
        Ok((one(&pair.response_a, gen_a)?, one(&pair.response_b, gen_b)?))
    }
}

pub(crate) fn prompt_from_row(text: String, messages: Option<String>) -> Prompt {
    let messages = messages.and_then(|m| serde_json::from_str::<Vec<Message>>(&m).ok());
    Prompt { text, messages }
}

impl Store {
    /// Stores pairs in one transaction: all of them or, on error, none.
    pub fn insert_pairs(&mut self, pairs: &[NewPair]) -> Result<Vec<InsertOutcome>> {
        self.write(|ex| {
            let mut w = PairWriter::new(ex)?;
            pairs.iter().map(|p| w.insert(p)).collect()
        })
    }

    pub fn pair(&self, id: i64) -> Result<Option<Pair>> {
        self.read(|ex| {
            ex.query_opt(
                "SELECT p.id, p.ext_id, pr.text, pr.messages, ra.text, rb.text
                 FROM pairs p
                 JOIN prompts pr ON pr.id = p.prompt_id
                 JOIN responses ra ON ra.id = p.response_a
                 JOIN responses rb ON rb.id = p.response_b
                 WHERE p.id = ?1",
                &[&id],
                |r| {
                    Ok(Pair {
                        id: r.get(0)?,
                        ext_id: r.get(1)?,
                        prompt: prompt_from_row(r.get(2)?, r.get(3)?),
                        response_a: r.get(4)?,
                        response_b: r.get(5)?,
                    })
                },
            )
        })
    }

    /// The next pair for `annotator`: the lowest id that this annotator has not
    /// judged, that fewer than `overlap` annotators have judged, and that is not in
    /// `exclude` (pairs skipped or already shown this session).
    pub fn next_pair_id(
        &self,
        annotator: &str,
        overlap: u32,
        exclude: &std::collections::HashSet<i64>,
    ) -> Result<Option<i64>> {
        let ids: Vec<i64> = self.read(|ex| {
            ex.query_all(
                &format!("SELECT p.id FROM pairs p
                 WHERE {} AND NOT EXISTS (SELECT 1 FROM labels l
                                   WHERE l.pair_id = p.id AND l.annotator = ?1 AND l.undone_at IS NULL)
                   AND (SELECT count(DISTINCT l.annotator) FROM labels l
                        WHERE l.pair_id = p.id AND l.undone_at IS NULL) < ?2
                 ORDER BY p.id LIMIT ?3", ex.gold_is(false)),
                &[&annotator, &i64::from(overlap), &(exclude.len() as i64 + 1)],
                |r| r.get(0),
            )
        })?;
        Ok(ids.into_iter().find(|id| !exclude.contains(id)))
    }

    /// Calls `f` for every pair in id order, streaming.
    pub fn for_each_pair<E>(
        &self,
        mut f: impl FnMut(PairExport) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E>
    where
        E: From<StoreError>,
    {
        let json =
            |s: Option<String>| s.and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
        let mut out = Ok(());
        self.read(|ex| {
            out = ex.query_each::<E>(
                "SELECT p.id, p.ext_id, pr.text, pr.messages, ra.text, rb.text, p.meta,
                        ra.generator, ra.gen_meta, rb.generator, rb.gen_meta
                 FROM pairs p
                 JOIN prompts pr ON pr.id = p.prompt_id
                 JOIN responses ra ON ra.id = p.response_a
                 JOIN responses rb ON rb.id = p.response_b
                 ORDER BY p.id",
                &[],
                |r| {
                    let get = |i| -> std::result::Result<Option<String>, StoreError> { r.get(i) };
                    let generated = |g: Option<String>, m: Option<String>| {
                        g.map(|generator| Generated {
                            generator,
                            meta: json(m).unwrap_or(serde_json::Value::Null),
                        })
                    };
                    let pair = Pair {
                        id: r.get(0)?,
                        ext_id: get(1)?,
                        prompt: prompt_from_row(r.get(2)?, get(3)?),
                        response_a: r.get(4)?,
                        response_b: r.get(5)?,
                    };
                    f(PairExport {
                        pair,
                        meta: json(get(6)?),
                        generated_a: generated(get(7)?, get(8)?),
                        generated_b: generated(get(9)?, get(10)?),
                    })
                },
            );
            Ok(())
        })?;
        out
    }

    /// How many pairs hold this prompt (generation skips prompts that have some).
    pub fn pairs_for_prompt(&self, prompt: &Prompt) -> Result<i64> {
        let hash = digest(&[&prompt.text]);
        self.read(|ex| {
            ex.query_one(
                "SELECT count(*) FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id WHERE pr.hash = ?1",
                &[&&hash[..]],
                |r| r.get(0),
            )
        })
    }

    /// When the pair was last touched, for messages.
    pub fn now(&self) -> Result<String> {
        self.read(|ex| ex.query_one(&format!("SELECT {}", ex.now()), &[], |r| r.get(0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn p(prompt: &str, a: &str, b: &str) -> NewPair {
        NewPair::new(Prompt::from_text(prompt.into()), a.into(), b.into())
    }

    #[test]
    fn a_pair_is_the_same_pair_in_either_order() {
        for mut s in crate::store::test_stores() {
            a_pair_is_the_same_pair_in_either_order_on(&mut s);
        }
    }

    fn a_pair_is_the_same_pair_in_either_order_on(s: &mut Store) {
        let out = s
            .insert_pairs(&[p("q", "x", "y"), p("q", "y", "x"), p("q2", "x", "y")])
            .expect("insert");
        assert!(matches!(out[0], InsertOutcome::Inserted(_)));
        assert_eq!(
            out[1],
            InsertOutcome::Duplicate(match out[0] {
                InsertOutcome::Inserted(id) => id,
                InsertOutcome::Duplicate(id) => id,
            })
        );
        assert!(matches!(out[2], InsertOutcome::Inserted(_)));
        assert_eq!(s.pair_count().expect("count"), 2);
        if let Some(c) = s.lite() {
            let prompts: i64 = c
                .query_row("SELECT count(*) FROM prompts", [], |r| r.get(0))
                .expect("prompts");
            assert_eq!(prompts, 2);
        }
    }

    #[test]
    fn a_failed_batch_stores_nothing() {
        for mut s in crate::store::test_stores() {
            a_failed_batch_stores_nothing_on(&mut s);
        }
    }

    fn a_failed_batch_stores_nothing_on(s: &mut Store) {
        let mut first = p("q", "x", "y");
        first.ext_id = Some("id1".into());
        let mut clash = p("q", "other", "content");
        clash.ext_id = Some("id1".into());
        let err = s.insert_pairs(&[first, clash]).expect_err("clash");
        assert!(err.to_string().contains("duplicate id \"id1\""), "{err}");
        assert_eq!(s.pair_count().expect("count"), 0);
    }

    #[test]
    fn next_pair_skips_judged_and_excluded_and_respects_overlap() {
        for mut s in crate::store::test_stores() {
            next_pair_skips_judged_and_excluded_and_respects_overlap_on(&mut s);
        }
    }

    fn next_pair_skips_judged_and_excluded_and_respects_overlap_on(s: &mut Store) {
        s.insert_pairs(&[p("q1", "a", "b"), p("q2", "a", "b"), p("q3", "a", "b")])
            .expect("insert");
        let none = HashSet::new();
        assert_eq!(s.next_pair_id("ann", 1, &none).expect("next"), Some(1));
        let id = s
            .record_label(&NewLabel::plain(1, "other", Choice::A, "tui"))
            .expect("label");
        // Judged by someone else: with overlap 1 it is done, with overlap 2 it is not.
        assert_eq!(s.next_pair_id("ann", 1, &none).expect("next"), Some(2));
        assert_eq!(s.next_pair_id("ann", 2, &none).expect("next"), Some(1));
        assert_eq!(s.next_pair_id("other", 2, &none).expect("next"), Some(2));
        let ex: HashSet<i64> = [2].into();
        assert_eq!(s.next_pair_id("ann", 1, &ex).expect("next"), Some(3));
        // Undone judgements do not count.
        s.undo_label(id).expect("undo");
        assert_eq!(s.next_pair_id("ann", 1, &none).expect("next"), Some(1));
    }

    #[test]
    fn a_stored_pair_reads_back_with_its_conversation() {
        for mut s in crate::store::test_stores() {
            a_stored_pair_reads_back_with_its_conversation_on(&mut s);
        }
    }

    fn a_stored_pair_reads_back_with_its_conversation_on(s: &mut Store) {
        let msgs = vec![
            Message {
                role: "user".into(),
                content: "hi".into(),
            },
            Message {
                role: "assistant".into(),
                content: "hello".into(),
            },
            Message {
                role: "user".into(),
                content: "more".into(),
            },
        ];
        let mut np = NewPair::new(
            Prompt::from_messages(msgs.clone()),
            "r1".into(),
            "r2".into(),
        );
        np.ext_id = Some("x".into());
        s.insert_pairs(&[np]).expect("insert");
        let pair = s.pair(1).expect("read").expect("exists");
        assert_eq!(pair.prompt.messages.as_ref(), Some(&msgs));
        assert_eq!(pair.ext_id.as_deref(), Some("x"));
        assert_eq!(
            (pair.response_a.as_str(), pair.response_b.as_str()),
            ("r1", "r2")
        );
    }
}
