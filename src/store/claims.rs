//! Claims: which pair each labeler process has on screen, so that several annotators
//! on one database are not served the same pair at the same time.

use super::sql::Ex;
use super::{Result, Store};
use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// In which order the queue serves pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueOrder {
    /// By id: the order they were imported or generated in.
    Sequential,
    /// A random order: one shuffle of the pairs, each labeler starting at a random
    /// place in it and going round.
    Random,
    /// The pairs the live model is least sure about first (its predicted preference
    /// closest to 50%); pairs it has not scored yet come after, at random.
    Uncertain,
    /// Pairs on which judgements so far disagree first, then those where the model
    /// most confidently disagrees with the judgements so far (with `--overlap` of 2
    /// or more, so that judged pairs come round again).
    Disagreement,
    /// A gold pair (`import --gold`) this annotator has not judged, at random; the
    /// labeler mixes these in at its `--gold-rate`.
    #[value(skip)]
    Gold,
}

impl QueueOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueOrder::Sequential => "sequential",
            QueueOrder::Random => "random",
            QueueOrder::Uncertain => "uncertain",
            QueueOrder::Disagreement => "disagreement",
            QueueOrder::Gold => "gold",
        }
    }
}

/// The modulus of the shuffle: a prime above 2³², so `id ↦ id · K mod P` is one to one
/// for every id SQLite can hand out below 3.4 · 10⁹ (where the product stays in an i64).
const SHUFFLE_P: i64 = 4_294_967_311;

/// Where a pair stands in the shuffled order of the `random` queue: the expression of
/// the `pairs_shuffle` index, so that walking the order is walking the index.
fn shuffle_position(pair_id: i64) -> i64 {
    pair_id.wrapping_mul(2_654_435_761).rem_euclid(SHUFFLE_P)
}

/// The shuffle expression as SQL, exactly as the index declares it.
const SHUFFLE_SQL: &str = "((p.id * 2654435761) % 4294967311)";

/// Whether pair `p` can be served to annotator ?1 of session ?3 with overlap ?2: not
/// a gold pair (those come by `QueueOrder::Gold`), not judged by them, and judged or
/// held by fewer than ?2 others.
fn servable(ex: &Ex<'_, '_>) -> String {
    format!(
        "{} AND NOT EXISTS (SELECT 1 FROM labels l
                    WHERE l.pair_id = p.id AND l.annotator = ?1 AND l.undone_at IS NULL)
     AND (SELECT count(DISTINCT l.annotator) FROM labels l
          WHERE l.pair_id = p.id AND l.undone_at IS NULL)
       + (SELECT count(*) FROM claims c WHERE c.pair_id = p.id AND c.session <> ?3) < ?2",
        ex.gold_is(false)
    )
}

/// A parameter a query does not use, named so that every query takes the same
/// four (PostgreSQL needs each parameter's type, hence the cast).
const UNUSED_2: &str = "CAST(?2 AS BIGINT) IS NOT NULL";
const UNUSED_4: &str = "CAST(?4 AS BIGINT) IS NOT NULL";

/// The servable pairs at or after (`cmp` ">=") or before ("<") id ?4, by id.
fn sequential_sql(ex: &Ex<'_, '_>, cmp: &str) -> String {
    format!(
        "SELECT p.id FROM pairs p WHERE p.id {cmp} ?4 AND {} ORDER BY p.id",
        servable(ex)
    )
}

/// The servable pairs at or after (`cmp` ">=") or before ("<") shuffle position ?4,
/// in the shuffled order.
fn shuffled_sql(ex: &Ex<'_, '_>, cmp: &str) -> String {
    format!(
        "SELECT p.id FROM pairs p WHERE {SHUFFLE_SQL} {cmp} ?4 AND {} ORDER BY {SHUFFLE_SQL}",
        servable(ex)
    )
}

/// The gold pairs annotator ?1 has not judged and no other session of theirs holds,
/// at or after (`cmp` ">=") or before ("<") shuffle position ?4 (?2 unused: every
/// annotator judges every gold pair once).
fn gold_sql(ex: &Ex<'_, '_>, cmp: &str) -> String {
    format!(
        "SELECT p.id FROM pairs p
         WHERE {} AND {SHUFFLE_SQL} {cmp} ?4 AND {UNUSED_2}
           AND NOT EXISTS (SELECT 1 FROM labels l
                           WHERE l.pair_id = p.id AND l.annotator = ?1 AND l.undone_at IS NULL)
           AND NOT EXISTS (SELECT 1 FROM claims c WHERE c.pair_id = p.id AND c.session <> ?3
                           AND c.annotator = ?1)
         ORDER BY {SHUFFLE_SQL}",
        ex.gold_is(true)
    )
}

/// A join that walks the first table's index first: SQLite's `CROSS JOIN` keeps
/// the tables in the order written; PostgreSQL's planner picks the order itself.
fn first_table_first(ex: &Ex<'_, '_>) -> &'static str {
    if ex.is_postgres() {
        "JOIN"
    } else {
        "CROSS JOIN"
    }
}

/// The servable scored pairs, the model's least certain first (?4 unused).
fn uncertain_sql(ex: &Ex<'_, '_>) -> String {
    format!(
        "SELECT p.id FROM pair_scores s {} pairs p ON p.id = s.pair_id
         WHERE {UNUSED_4} AND {} ORDER BY abs(s.p_a - 0.5), s.pair_id",
        first_table_first(ex),
        servable(ex)
    )
}

/// The servable judged pairs in the `disagreement` order (?4 unused): contested pairs
/// first, then those whose judgements the model most confidently contradicts, walking
/// the `pair_verdicts_order` index (see migration 0005).
fn disagreement_sql(ex: &Ex<'_, '_>) -> String {
    format!(
        "SELECT p.id FROM pair_verdicts v {} pairs p ON p.id = v.pair_id
         WHERE {UNUSED_4} AND {} ORDER BY v.choices DESC, v.against DESC, v.pair_id",
        first_table_first(ex),
        servable(ex)
    )
}

/// A labeler's place in the queue, so that each claim goes on from the last one
/// instead of passing again over the pairs it has judged: the id it goes on from in
/// the sequential order, and the place in the shuffled order (the random order, and
/// the unscored pairs of the uncertain order), which starts where the salt says.
/// Either walk comes round to its start, so a pair passed over while another labeler
/// held it is served later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueWalk {
    next_id: i64,
    next_shuffle: i64,
}

impl QueueWalk {
    pub fn new(salt: u64) -> QueueWalk {
        QueueWalk {
            next_id: 0,
            next_shuffle: (salt % SHUFFLE_P as u64) as i64,
        }
    }
}

/// How long a claim lives without renewal: a labeler that dies frees its pair after
/// this long.
pub const CLAIM_TTL: Duration = Duration::from_secs(300);

/// Now, in Unix seconds (claims and the lease count time so).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Claims `pair_id` for `session` until [`CLAIM_TTL`] after `now`.
fn insert_claim(
    ex: &Ex<'_, '_>,
    pair_id: i64,
    annotator: &str,
    session: &str,
    now: f64,
) -> Result<()> {
    ex.execute(
        "INSERT INTO claims (pair_id, annotator, session, expires_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (pair_id, session) DO UPDATE
         SET annotator = excluded.annotator, expires_at = excluded.expires_at",
        &[
            &pair_id,
            &annotator,
            &session,
            &(now + CLAIM_TTL.as_secs_f64()),
        ],
    )?;
    Ok(())
}

impl Store {
    /// Finds the next pair for `annotator` in `order` and claims it for `session`, in
    /// one write transaction, so two labelers cannot take the same pair. The pair is
    /// the first in the order, going on from where `walk` stands, that this annotator
    /// has not judged, that is not in `exclude`, and whose judgements by others plus
    /// live claims by other sessions number fewer than `overlap`. The session's
    /// earlier claims are released, and `walk` moves on to the pair.
    pub fn claim_next_in_order(
        &mut self,
        annotator: &str,
        session: &str,
        overlap: u32,
        exclude: &HashSet<i64>,
        order: QueueOrder,
        walk: &mut QueueWalk,
    ) -> Result<Option<i64>> {
        let now = unix_now();
        let overlap = i64::from(overlap);
        let committed = self.write(|ex| {
            if ex.is_postgres() {
                // Claims are taken one labeler at a time, as SQLite's write lock does:
                // the check of who holds what and the claim are one step.
                ex.execute("LOCK TABLE claims IN SHARE ROW EXCLUSIVE MODE", &[])?;
            }
            ex.execute(
                "DELETE FROM claims WHERE session = ?1 OR expires_at <= ?2",
                &[&session, &now],
            )?;
            // No more rows than could be excluded, and one more, need reading.
            let limit = exclude.len() as i64 + 1;
            let first = |sql: &str, from: i64| -> Result<Option<i64>> {
                let ids = ex.query_all(
                    &format!("{sql} LIMIT ?5"),
                    &[&annotator, &overlap, &session, &from, &limit],
                    |r| r.get::<i64>(0),
                )?;
                Ok(ids.into_iter().find(|id| !exclude.contains(id)))
            };
            // The walk moves on only if the claim is committed.
            let mut next = *walk;
            // An order from `from` round to where it started: the index from `from` on,
            // then from its start.
            let round = |sql: fn(&Ex<'_, '_>, &str) -> String, from: i64| -> Result<Option<i64>> {
                match first(&sql(ex, ">="), from)? {
                    Some(id) => Ok(Some(id)),
                    None => first(&sql(ex, "<"), from),
                }
            };
            let shuffled = |w: &mut QueueWalk| -> Result<Option<i64>> {
                Ok(round(shuffled_sql, w.next_shuffle)?
                    .inspect(|&id| w.next_shuffle = shuffle_position(id) + 1))
            };
            let found = match order {
                QueueOrder::Sequential => {
                    round(sequential_sql, next.next_id)?.inspect(|&id| next.next_id = id)
                }
                QueueOrder::Random => shuffled(&mut next)?,
                // Scored pairs by how close the model's prediction is to 50%, walking the
                // `pair_scores_uncertainty` index; when none is left to serve, every pair
                // still to serve is unscored, and they come in the shuffled order.
                QueueOrder::Uncertain => match first(&uncertain_sql(ex), 0)? {
                    Some(id) => Some(id),
                    None => shuffled(&mut next)?,
                },
                // Only judged pairs can come before the rest, which follow by id: sort
                // the judged ones, then walk the ids.
                QueueOrder::Disagreement => match first(&disagreement_sql(ex), 0)? {
                    Some(id) => Some(id),
                    None => first(&sequential_sql(ex, ">="), 0)?,
                },
                // From where the shuffled walk stands, so each labeler meets the gold
                // pairs in its own order; the walk itself does not move.
                QueueOrder::Gold => round(gold_sql, next.next_shuffle)?,
            };
            if let Some(id) = found {
                insert_claim(ex, id, annotator, session, now)?;
            }
            Ok((found, next))
        })?;
        let (found, next) = committed;
        *walk = next;
        Ok(found)
    }

    /// Claims a given pair for `session` (the pair an undo goes back to), whoever
    /// else holds it; the session's other claims are released.
    pub fn claim_pair(&mut self, annotator: &str, session: &str, pair_id: i64) -> Result<()> {
        self.write(|ex| {
            ex.execute("DELETE FROM claims WHERE session = ?1", &[&session])?;
            insert_claim(ex, pair_id, annotator, session, unix_now())
        })
    }

    /// Keeps the session's claims alive for another [`CLAIM_TTL`].
    pub fn renew_claims(&self, session: &str) -> Result<()> {
        self.write(|ex| {
            ex.execute(
                "UPDATE claims SET expires_at = ?2 WHERE session = ?1",
                &[&session, &(unix_now() + CLAIM_TTL.as_secs_f64())],
            )
        })?;
        Ok(())
    }

    /// Frees the session's claims (the labeler quits).
    pub fn release_claims(&self, session: &str) -> Result<()> {
        self.write(|ex| ex.execute("DELETE FROM claims WHERE session = ?1", &[&session]))?;
        Ok(())
    }

    /// The live model's latest prediction for a pair: the probability that A is
    /// better, and the training step of the model.
    pub fn pair_score(&self, pair_id: i64) -> Result<Option<(f64, i64)>> {
        self.read(|ex| {
            ex.query_opt(
                "SELECT p_a, step FROM pair_scores WHERE pair_id = ?1",
                &[&pair_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::params;

    /// `annotator` judges `pair_id` (A is better) at once, as a labeler would.
    fn judge(store: &mut Store, annotator: &str, pair_id: i64) {
        judge_as(store, annotator, pair_id, crate::domain::Choice::A);
    }

    /// `annotator` makes `choice` on `pair_id`; the label's id.
    fn judge_as(
        store: &mut Store,
        annotator: &str,
        pair_id: i64,
        choice: crate::domain::Choice,
    ) -> i64 {
        store
            .record_label(&crate::domain::NewLabel::plain(
                pair_id, annotator, choice, "tui",
            ))
            .expect("label")
    }

    /// A store holding `n` pairs with ids 1 to `n`, each with its own prompt.
    fn store_with_pairs(n: usize) -> Store {
        with_pairs(Store::open_in_memory().expect("store"), n)
    }

    /// `store`, empty, given `n` pairs with ids 1 to `n`, each with its own prompt.
    fn with_pairs(mut store: Store, n: usize) -> Store {
        use crate::domain::Prompt;
        use crate::store::NewPair;
        let pairs: Vec<NewPair> = (0..n)
            .map(|i| {
                NewPair::new(
                    Prompt::from_text(format!("q{i}")),
                    format!("a{i}"),
                    "b".into(),
                )
            })
            .collect();
        store.insert_pairs(&pairs).expect("insert");
        store
    }

    /// Every order walks an index and stops at the first pair it can serve: no query
    /// sorts the pairs (which took a second a claim at a million pairs, and the
    /// disagreement order a third of a second at 100,000 judged pairs). An edit
    /// that makes the shuffle expression differ from the index's would bring the
    /// sort back, and fail here.
    #[test]
    fn the_queue_walks_indexes_instead_of_sorting() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("q.db")).expect("open");
        let lite = Ex::Lite(store.conn());
        for (what, sql) in [
            ("sequential, after", sequential_sql(&lite, ">=")),
            ("sequential, before", sequential_sql(&lite, "<")),
            ("random, after", shuffled_sql(&lite, ">=")),
            ("random, before", shuffled_sql(&lite, "<")),
            ("uncertain", uncertain_sql(&lite)),
            ("disagreement", disagreement_sql(&lite)),
        ] {
            let plan: Vec<String> = store
                .conn()
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .expect("plan")
                .query_map(params!["a", 1, "s", 0], |r| r.get::<_, String>(3))
                .expect("rows")
                .collect::<rusqlite::Result<_>>()
                .expect("plan rows");
            let plan = plan.join("\n");
            assert!(
                !plan.contains("TEMP B-TREE FOR ORDER BY"),
                "{what} sorts:\n{plan}"
            );
            assert!(
                !plan.contains("SCAN p\n") && !plan.ends_with("SCAN p"),
                "{what} scans:\n{plan}"
            );
        }
    }

    /// A table's disagreement keys by pair: `pair_verdicts` (what the triggers keep)
    /// or `pair_verdicts_fresh` (the migration's view, from scratch).
    fn verdicts(store: &Store, table: &str) -> Vec<(i64, i64, i64, f64)> {
        store
            .conn()
            .prepare(&format!(
                "SELECT pair_id, choices, lean, against FROM {table} ORDER BY pair_id"
            ))
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    }

    /// The keys the triggers keep are the ones a from-scratch count gives, through
    /// judgements, undos, redos and the model's scores coming, changing and going, in
    /// a random order of 600 such events on 12 pairs.
    #[test]
    fn the_disagreement_keys_follow_every_judgement_and_score() {
        use crate::domain::Choice;
        let mut store = store_with_pairs(12);
        // splitmix64: a fixed, repeatable stream of events.
        let mut state = 7u64;
        let mut next = || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        let mut live: Vec<i64> = Vec::new();
        let mut undone: Vec<i64> = Vec::new();
        for event in 0..600 {
            let r = next();
            let pair = (r % 12) as i64 + 1;
            match (r >> 8) % 6 {
                0 | 1 => {
                    let choice = [Choice::A, Choice::B, Choice::Tie, Choice::BothBad]
                        [((r >> 16) % 4) as usize];
                    let id = judge_as(&mut store, &format!("ann{}", (r >> 20) % 3), pair, choice);
                    live.push(id);
                }
                2 if !live.is_empty() => {
                    let id = live.swap_remove(((r >> 16) as usize) % live.len());
                    store.undo_label(id).expect("undo");
                    undone.push(id);
                }
                3 if !undone.is_empty() => {
                    let id = undone.swap_remove(((r >> 16) as usize) % undone.len());
                    store
                        .conn()
                        .execute("UPDATE labels SET undone_at = NULL WHERE id = ?1", [id])
                        .expect("redo");
                    live.push(id);
                }
                4 => {
                    let p_a = ((r >> 16) % 1000) as f64 / 1000.0;
                    store
                        .conn()
                        .execute(
                            "INSERT OR REPLACE INTO pair_scores (pair_id, p_a, step) VALUES (?1, ?2, ?3)",
                            params![pair, p_a, event],
                        )
                        .expect("score");
                }
                _ => {
                    store
                        .conn()
                        .execute("DELETE FROM pair_scores WHERE pair_id = ?1", [pair])
                        .expect("unscore");
                }
            }
            assert_eq!(
                verdicts(&store, "pair_verdicts"),
                verdicts(&store, "pair_verdicts_fresh"),
                "after event {event}"
            );
        }
        assert!(!verdicts(&store, "pair_verdicts").is_empty());
        // The triggers read one pair's judgements through the index, not all of them
        // (which would make every judgement cost as much as the whole table).
        let plan: Vec<String> = store
            .conn()
            .prepare("EXPLAIN QUERY PLAN SELECT * FROM pair_verdicts_fresh WHERE pair_id = ?1")
            .expect("plan")
            .query_map([1], |r| r.get::<_, String>(3))
            .expect("rows")
            .collect::<rusqlite::Result<_>>()
            .expect("plan rows");
        assert!(
            plan.iter()
                .any(|l| l.starts_with("SEARCH labels USING INDEX labels_pair")),
            "{plan:?}"
        );
    }

    #[test]
    fn shuffle_positions_are_one_to_one_and_match_sql() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("q.db")).expect("open");
        let mut seen = HashSet::new();
        for id in (1..2000).chain([1 << 20, 1 << 31, 3_000_000_000]) {
            let p = shuffle_position(id);
            assert!((0..SHUFFLE_P).contains(&p));
            assert!(seen.insert(p), "two ids at {p}");
            let sql: i64 = store
                .conn()
                .query_row(
                    &format!("SELECT {} FROM (SELECT ?1 AS id) p", SHUFFLE_SQL),
                    [id],
                    |r| r.get(0),
                )
                .expect("sql");
            assert_eq!(p, sql, "id {id}");
        }
    }

    /// The random order walks one shuffle from a place picked by the salt, goes on
    /// from the last pair served (the walk remembers it), and comes round to a pair it
    /// passed over while another labeler held it.
    #[test]
    fn the_shuffled_walk_starts_by_salt_and_comes_round_to_passed_pairs() {
        for store in crate::store::test_stores() {
            the_shuffled_walk_starts_by_salt_and_comes_round_to_passed_pairs_on(store);
        }
    }

    fn the_shuffled_walk_starts_by_salt_and_comes_round_to_passed_pairs_on(store: Store) {
        let mut store = with_pairs(store, 20);
        let none = HashSet::new();
        let mut by_position: Vec<i64> = (1..=20).collect();
        by_position.sort_by_key(|&id| shuffle_position(id));

        // Two salts start at different places; each starts at the first pair at or
        // after its salt's position.
        let first = |store: &mut Store, session: &str, salt: u64| {
            store
                .claim_next_in_order(
                    "x",
                    session,
                    2,
                    &none,
                    QueueOrder::Random,
                    &mut QueueWalk::new(salt),
                )
                .expect("claim")
                .expect("a pair")
        };
        let a = first(&mut store, "s1", shuffle_position(by_position[3]) as u64);
        let b = first(&mut store, "s2", shuffle_position(by_position[11]) as u64);
        assert_eq!((a, b), (by_position[3], by_position[11]));
        store.release_claims("s1").expect("release");

        // Another labeler holds the pair after the start while "y" walks past it.
        let held = by_position[4];
        store.claim_pair("z", "zz", held).expect("hold");
        let mut served = Vec::new();
        let mut walk = QueueWalk::new(shuffle_position(a) as u64);
        loop {
            let next = store
                .claim_next_in_order("y", "sy", 1, &none, QueueOrder::Random, &mut walk)
                .expect("claim");
            let Some(id) = next else { break };
            served.push(id);
            if served.len() == 10 {
                store.release_claims("zz").expect("release");
            }
            judge(&mut store, "y", id);
        }
        // Every pair but the other labeler's once held one ("s2" still holds b with
        // overlap 2, which "y" at overlap 1 cannot share) in the shuffled order from
        // the start, then the passed-over pair.
        let expected: Vec<i64> = by_position[3..]
            .iter()
            .chain(&by_position[..3])
            .copied()
            .filter(|&id| id != held && id != b)
            .chain([held])
            .collect();
        assert_eq!(served, expected);
    }

    /// The sequential order goes on from the last pair served and, at the end, comes
    /// round to a pair it passed over while another labeler held it.
    #[test]
    fn the_sequential_walk_comes_round_to_passed_pairs() {
        for store in crate::store::test_stores() {
            let engine = crate::store::engine(&store);
            assert_eq!(
                sequential_walk_on(with_pairs(store, 6)),
                [1, 3, 4, 5, 6, 2],
                "{engine}"
            );
        }
    }

    fn sequential_walk_on(mut store: Store) -> Vec<i64> {
        store.claim_pair("z", "zz", 2).expect("hold");
        let none = HashSet::new();
        let mut walk = QueueWalk::new(99);
        let mut served = Vec::new();
        while let Some(id) = store
            .claim_next_in_order("y", "sy", 1, &none, QueueOrder::Sequential, &mut walk)
            .expect("claim")
        {
            served.push(id);
            if id == 4 {
                store.release_claims("zz").expect("release");
            }
            judge(&mut store, "y", id);
        }
        served
    }
}
