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
        self.read(|ex| {
            ex.query_each::<StoreError>(
                "SELECT pair_id, annotator, choice, left_side, elapsed_ms FROM labels
                 WHERE undone_at IS NULL ORDER BY id",
                &[],
                |r| {
                    let left: Option<String> = r.get(3)?;
                    f(StandingLabel {
                        pair_id: r.get(0)?,
                        annotator: r.get(1)?,
                        choice: r.parse::<Choice>(2)?,
                        left: left.and_then(|l| l.parse::<Side>().ok()),
                        elapsed_ms: r.get(4)?,
                    });
                    Ok(())
                },
            )
        })
    }

    /// Each standing judgement of a gold pair.
    pub fn gold_results(&self) -> Result<Vec<GoldResult>> {
        self.read(|ex| {
            ex.query_all(
                "SELECT l.annotator, l.choice = p.gold FROM labels l JOIN pairs p ON p.id = l.pair_id
                 WHERE p.gold IS NOT NULL AND l.undone_at IS NULL",
                &[],
                |r| {
                    Ok(GoldResult {
                        annotator: r.get(0)?,
                        matched: r.get(1)?,
                    })
                },
            )
        })
    }

    /// The pairs with a standing judgement whose two responses were both generated.
    pub fn generated_judged_pairs(&self) -> Result<Vec<GeneratedPair>> {
        self.read(|ex| {
            ex.query_all(
                "SELECT p.id, ra.generator, ra.gen_meta, rb.generator, rb.gen_meta
                 FROM pairs p JOIN responses ra ON ra.id = p.response_a JOIN responses rb ON rb.id = p.response_b
                 WHERE ra.generator IS NOT NULL AND rb.generator IS NOT NULL
                   AND p.id IN (SELECT pair_id FROM labels WHERE undone_at IS NULL)",
                &[],
                |r| {
                    Ok(GeneratedPair {
                        pair_id: r.get(0)?,
                        generator_a: r.get(1)?,
                        meta_a: r.get(2)?,
                        generator_b: r.get(3)?,
                        meta_b: r.get(4)?,
                    })
                },
            )
        })
    }

    /// `(day, judgements)`: standing judgements by the UTC day they were made
    /// (`YYYY-MM-DD`), in day order.
    pub fn labels_per_day(&self) -> Result<Vec<(String, i64)>> {
        self.read(|ex| {
            ex.query_all(
                "SELECT substr(created_at, 1, 10), count(*) FROM labels WHERE undone_at IS NULL GROUP BY 1 ORDER BY 1",
                &[],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
    }
}
