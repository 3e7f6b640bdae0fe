//! Claims: which pair each labeler process has on screen, so that several annotators
//! on one database are not served the same pair at the same time.

use super::{Result, Store};
use rusqlite::{OptionalExtension, params};
use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// In which order the queue serves pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueOrder {
    /// By id: the order they were imported or generated in.
    Sequential,
    /// A random permutation (a new one per labeler).
    Random,
    /// The pairs the live model is least sure about first (its predicted preference
    /// closest to 50%); pairs it has not scored yet come after, at random.
    Uncertain,
    /// Pairs on which judgements so far disagree first, then those where the model
    /// most confidently disagrees with the judgements so far (with `--overlap` of 2
    /// or more, so that judged pairs come round again).
    Disagreement,
}

impl QueueOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueOrder::Sequential => "sequential",
            QueueOrder::Random => "random",
            QueueOrder::Uncertain => "uncertain",
            QueueOrder::Disagreement => "disagreement",
        }
    }

    fn order_by(self) -> &'static str {
        match self {
            QueueOrder::Sequential => "p.id",
            // A permutation of the ids that depends on the salt (?5).
            QueueOrder::Random => "((p.id * 2654435761 + ?5) % 4294967311), p.id",
            // Unscored pairs come last, in a random permutation (before the model
            // has scored anything, uncertain is random, not sequential).
            QueueOrder::Uncertain => {
                "(SELECT abs(s.p_a - 0.5) FROM pair_scores s WHERE s.pair_id = p.id) IS NULL,
                 (SELECT abs(s.p_a - 0.5) FROM pair_scores s WHERE s.pair_id = p.id),
                 ((p.id * 2654435761 + ?5) % 4294967311), p.id"
            }
            QueueOrder::Disagreement => {
                "(SELECT count(DISTINCT l.choice) FROM labels l WHERE l.pair_id = p.id AND l.undone_at IS NULL) DESC,
                 coalesce((SELECT CASE WHEN sum(l.choice = 'a') > sum(l.choice = 'b') THEN 0.5 - s.p_a
                                       WHEN sum(l.choice = 'b') > sum(l.choice = 'a') THEN s.p_a - 0.5
                                       ELSE 0 END
                           FROM labels l JOIN pair_scores s ON s.pair_id = l.pair_id
                           WHERE l.pair_id = p.id AND l.undone_at IS NULL), 0) DESC,
                 p.id"
            }
        }
    }
}

/// How long a claim lives without renewal: a labeler that dies frees its pair after
/// this long.
pub const CLAIM_TTL: Duration = Duration::from_secs(300);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Claims `pair_id` for `session` until [`CLAIM_TTL`] after `now`.
fn insert_claim(
    conn: &rusqlite::Connection,
    pair_id: i64,
    annotator: &str,
    session: &str,
    now: f64,
) -> Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO claims (pair_id, annotator, session, expires_at) VALUES (?1, ?2, ?3, ?4)",
        params![pair_id, annotator, session, now + CLAIM_TTL.as_secs_f64()],
    )?;
    Ok(())
}

impl Store {
    /// Finds the next pair for `annotator` and claims it for `session`, in one write
    /// transaction, so two labelers cannot take the same pair. The pair is the lowest
    /// id at or above `from` that this annotator has not judged, that is not in
    /// `exclude`, and whose judgements by others plus live claims by other sessions
    /// number fewer than `overlap`. The session's earlier claims are released.
    pub fn claim_next_pair(
        &mut self,
        annotator: &str,
        session: &str,
        overlap: u32,
        exclude: &HashSet<i64>,
        from: i64,
    ) -> Result<Option<i64>> {
        self.claim_next_in_order(
            annotator,
            session,
            overlap,
            exclude,
            from,
            QueueOrder::Sequential,
            0,
        )
    }

    /// [`Store::claim_next_pair`] in a given order; `from` applies to the sequential
    /// order only, `salt` picks the random permutation.
    #[allow(clippy::too_many_arguments)]
    pub fn claim_next_in_order(
        &mut self,
        annotator: &str,
        session: &str,
        overlap: u32,
        exclude: &HashSet<i64>,
        from: i64,
        order: QueueOrder,
        salt: u64,
    ) -> Result<Option<i64>> {
        let from = if order == QueueOrder::Sequential {
            from
        } else {
            0
        };
        // Keep the salt within SQLite's integers and the product from overflowing.
        let salt = (salt % 4_294_967_311) as i64;
        let now = unix_now();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM claims WHERE session = ?1 OR expires_at <= ?2",
            params![session, now],
        )?;
        let found = {
            let sql = format!(
                "SELECT p.id FROM pairs p
                 WHERE p.id >= ?4 AND ?5 = ?5
                   AND NOT EXISTS (SELECT 1 FROM labels l
                                   WHERE l.pair_id = p.id AND l.annotator = ?1 AND l.undone_at IS NULL)
                   AND (SELECT count(DISTINCT l.annotator) FROM labels l
                        WHERE l.pair_id = p.id AND l.undone_at IS NULL)
                     + (SELECT count(*) FROM claims c WHERE c.pair_id = p.id AND c.session <> ?3) < ?2
                 ORDER BY {}",
                order.order_by()
            );
            let mut stmt = tx.prepare_cached(&sql)?;
            let mut rows = stmt.query(params![annotator, overlap, session, from, salt])?;
            let mut found = None;
            while let Some(r) = rows.next()? {
                let id: i64 = r.get(0)?;
                if !exclude.contains(&id) {
                    found = Some(id);
                    break;
                }
            }
            found
        };
        if let Some(id) = found {
            insert_claim(&tx, id, annotator, session, now)?;
        }
        tx.commit()?;
        Ok(found)
    }

    /// Claims a given pair for `session` (the pair an undo goes back to), whoever
    /// else holds it; the session's other claims are released.
    pub fn claim_pair(&mut self, annotator: &str, session: &str, pair_id: i64) -> Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM claims WHERE session = ?1", [session])?;
        insert_claim(&tx, pair_id, annotator, session, unix_now())?;
        tx.commit()?;
        Ok(())
    }

    /// Keeps the session's claims alive for another [`CLAIM_TTL`].
    pub fn renew_claims(&self, session: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE claims SET expires_at = ?2 WHERE session = ?1",
            params![session, unix_now() + CLAIM_TTL.as_secs_f64()],
        )?;
        Ok(())
    }

    /// Frees the session's claims (the labeler quits).
    pub fn release_claims(&self, session: &str) -> Result<()> {
        self.conn
            .execute("DELETE FROM claims WHERE session = ?1", [session])?;
        Ok(())
    }

    /// The live model's latest prediction for a pair: the probability that A is
    /// better, and the training step of the model.
    pub fn pair_score(&self, pair_id: i64) -> Result<Option<(f64, i64)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT p_a, step FROM pair_scores WHERE pair_id = ?1",
                [pair_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// The session holding a live claim on `pair_id`, if any (for tests and tools).
    pub fn claim_holder(&self, pair_id: i64) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT session FROM claims WHERE pair_id = ?1 AND expires_at > ?2 LIMIT 1",
                params![pair_id, unix_now()],
                |r| r.get(0),
            )
            .optional()?)
    }
}
