//! Reading the judgements back for `duel stats` and `duel report`.

use super::{Result, Store, StoreError};
use crate::domain::{Choice, Side};

/// A standing judgement, as the statistics count it.
#[derive(Debug, Clone, PartialEq)]
pub struct StandingLabel {
    pub pair_id: i64,
    pub annotator: String,
    pub choice: Choice,
    /// The response shown on the left (none when not recorded or unreadable).
    pub left: Option<Side>,
    pub elapsed_ms: Option<i64>,
}

/// A standing judgement of a gold pair: who made it and whether it matched the
/// known answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldResult {
    pub annotator: String,
    pub matched: bool,
}

/// A judged pair generated on both sides: each response's generator and settings
/// (`gen_meta`, JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedPair {
    pub pair_id: i64,
    pub generator_a: String,
    pub meta_a: Option<String>,
    pub generator_b: String,
    pub meta_b: Option<String>,
}

impl Store {
    /// Calls `f` for each standing judgement, in the order they were made, streaming.
    pub fn for_each_standing_label(&self, mut f: impl FnMut(StandingLabel)) -> Result<()> {
        let mut stmt = self.conn.prepare(
            "SELECT pair_id, annotator, choice, left_side, elapsed_ms FROM labels
             WHERE undone_at IS NULL ORDER BY id",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let pair_id: i64 = r.get(0)?;
            let annotator: String = r.get(1)?;
            let choice: Choice = r
                .get::<_, String>(2)?
                .parse()
                .map_err(StoreError::Invalid)?;
            let left: Option<String> = r.get(3)?;
            let elapsed_ms: Option<i64> = r.get(4)?;
            f(StandingLabel {
                pair_id,
                annotator,
                choice,
                left: left.and_then(|l| l.parse::<Side>().ok()),
                elapsed_ms,
            });
        }
        Ok(())
    }

    /// Each standing judgement of a gold pair.
    pub fn gold_results(&self) -> Result<Vec<GoldResult>> {
        let mut stmt = self.conn.prepare(
            "SELECT l.annotator, l.choice = p.gold FROM labels l JOIN pairs p ON p.id = l.pair_id
             WHERE p.gold IS NOT NULL AND l.undone_at IS NULL",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(GoldResult {
                annotator: r.get(0)?,
                matched: r.get(1)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The pairs with a standing judgement whose two responses were both generated.
    pub fn generated_judged_pairs(&self) -> Result<Vec<GeneratedPair>> {
        let mut stmt = self.conn.prepare(
            "SELECT p.id, ra.generator, ra.gen_meta, rb.generator, rb.gen_meta
             FROM pairs p JOIN responses ra ON ra.id = p.response_a JOIN responses rb ON rb.id = p.response_b
             WHERE ra.generator IS NOT NULL AND rb.generator IS NOT NULL
               AND p.id IN (SELECT pair_id FROM labels WHERE undone_at IS NULL)",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(GeneratedPair {
                pair_id: r.get(0)?,
                generator_a: r.get(1)?,
                meta_a: r.get(2)?,
                generator_b: r.get(3)?,
                meta_b: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// `(day, judgements)`: standing judgements by the UTC day they were made
    /// (`YYYY-MM-DD`), in day order.
    pub fn labels_per_day(&self) -> Result<Vec<(String, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT substr(created_at, 1, 10), count(*) FROM labels WHERE undone_at IS NULL GROUP BY 1 ORDER BY 1",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
