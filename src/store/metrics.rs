//! Training runs, their metrics and checkpoints, and the model's scores of pairs.

use super::sql::Row;
use super::{Result, Store};
use std::collections::HashMap;
use std::path::Path;

/// A training step as `train_metrics` keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepMetrics {
    pub step: u64,
    pub loss: f64,
    /// Share of the batch's pairs where the chosen response scored higher.
    pub accuracy: f64,
    pub pairs_per_s: f64,
    pub labels_used: usize,
}

/// An evaluation on held-out pairs as `train_metrics` keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalMetrics {
    pub step: u64,
    pub loss: f64,
    pub accuracy: f64,
    pub labels_used: usize,
}

/// One row of `train_metrics`, as written.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub rowid: i64,
    pub step: i64,
    /// `train` or `eval`.
    pub kind: String,
    pub loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub pairs_per_s: Option<f64>,
    pub labels_used: Option<i64>,
}

/// A training step's or an evaluation's loss and accuracy, for a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricPoint {
    pub step: i64,
    /// `train` or `eval`.
    pub kind: String,
    pub loss: Option<f64>,
    pub accuracy: Option<f64>,
}

/// Which rows of a run's metrics a series is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Train,
    Eval,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Train => "train",
            MetricKind::Eval => "eval",
        }
    }
}

/// Which value of a run's metrics a series shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricValue {
    Loss,
    Accuracy,
}

impl MetricValue {
    fn column(self) -> &'static str {
        match self {
            MetricValue::Loss => "loss",
            MetricValue::Accuracy => "accuracy",
        }
    }
}

/// How far a run has come.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RunProgress {
    /// Its last step, train or eval.
    pub last_step: Option<i64>,
    /// Its latest held-out accuracy, and the step it was measured at.
    pub accuracy: Option<f64>,
    pub accuracy_step: Option<i64>,
}

/// A pair's texts, for the model to score.
#[derive(Debug, Clone, PartialEq)]
pub struct PairText {
    pub pair_id: i64,
    pub prompt: String,
    pub response_a: String,
    pub response_b: String,
}

fn pair_text(r: &Row<'_>) -> Result<PairText> {
    Ok(PairText {
        pair_id: r.get(0)?,
        prompt: r.get(1)?,
        response_a: r.get(2)?,
        response_b: r.get(3)?,
    })
}

fn metric_row(r: &Row<'_>) -> Result<MetricRow> {
    Ok(MetricRow {
        rowid: r.get(0)?,
        step: r.get(1)?,
        kind: r.get(2)?,
        loss: r.get(3)?,
        accuracy: r.get(4)?,
        pairs_per_s: r.get(5)?,
        labels_used: r.get(6)?,
    })
}

/// Removes the metric of `run` at `step` of `kind`, so that one recorded again
/// replaces it as a new row (which a follower reading by `rowid` sees).
fn drop_metric(ex: &super::sql::Ex<'_, '_>, run: i64, step: u64, kind: &str) -> Result<()> {
    ex.execute(
        "DELETE FROM train_metrics WHERE run_id = ?1 AND step = ?2 AND kind = ?3",
        &[&run, &(step as i64), &kind],
    )?;
    Ok(())
}

impl Store {
    /// Records a new training run with its `config` (JSON) and returns its id.
    pub fn start_train_run(&self, config: &str) -> Result<i64> {
        self.write(|ex| ex.insert_id("INSERT INTO train_runs (config) VALUES (?1)", &[&config]))
    }

    /// Records a training step of `run`, replacing one recorded at the same step.
    pub fn record_train_step(&self, run: i64, m: &StepMetrics) -> Result<()> {
        self.write(|ex| {
            drop_metric(ex, run, m.step, "train")?;
            ex.execute(
                "INSERT INTO train_metrics
                 (run_id, step, kind, loss, accuracy, pairs_per_s, labels_used)
                 VALUES (?1, ?2, 'train', ?3, ?4, ?5, ?6)",
                &[
                    &run,
                    &(m.step as i64),
                    &m.loss,
                    &m.accuracy,
                    &m.pairs_per_s,
                    &(m.labels_used as i64),
                ],
            )
        })?;
        Ok(())
    }

    /// Records an evaluation of `run`, replacing one recorded at the same step.
    pub fn record_eval(&self, run: i64, m: &EvalMetrics) -> Result<()> {
        self.write(|ex| {
            drop_metric(ex, run, m.step, "eval")?;
            ex.execute(
                "INSERT INTO train_metrics
                 (run_id, step, kind, loss, accuracy, labels_used)
                 VALUES (?1, ?2, 'eval', ?3, ?4, ?5)",
                &[
                    &run,
                    &(m.step as i64),
                    &m.loss,
                    &m.accuracy,
                    &(m.labels_used as i64),
                ],
            )
        })?;
        Ok(())
    }

    /// Records a checkpoint of `run` written to `path` at `step`.
    pub fn record_checkpoint(
        &self,
        run: i64,
        step: u64,
        path: &Path,
        val_accuracy: Option<f64>,
    ) -> Result<()> {
        self.write(|ex| {
            ex.execute(
                "INSERT INTO checkpoints (run_id, step, path, val_accuracy) VALUES (?1, ?2, ?3, ?4)",
                &[&run, &(step as i64), &path.display().to_string(), &val_accuracy],
            )
        })?;
        Ok(())
    }

    /// The last row of `train_metrics` written so far (0 for none).
    pub fn last_metric_rowid(&self) -> Result<i64> {
        self.read(|ex| {
            ex.query_one(
                "SELECT coalesce(max(rowid), 0) FROM train_metrics",
                &[],
                |r| r.get(0),
            )
        })
    }

    /// The metrics written after row `rowid`, in the order written.
    pub fn metrics_since(&self, rowid: i64) -> Result<Vec<MetricRow>> {
        self.read(|ex| {
            ex.query_all(
                "SELECT rowid, step, kind, loss, accuracy, pairs_per_s, labels_used
                 FROM train_metrics WHERE rowid > ?1 ORDER BY rowid",
                &[&rowid],
                metric_row,
            )
        })
    }

    /// The metrics of the latest 20 runs, run by run, each in step order.
    pub fn recent_metrics(&self) -> Result<Vec<MetricPoint>> {
        self.read(|ex| {
            ex.query_all(
                "SELECT step, kind, loss, accuracy FROM train_metrics
                 WHERE run_id IN (SELECT id FROM train_runs ORDER BY id DESC LIMIT 20)
                 ORDER BY run_id, step",
                &[],
                |r| {
                    Ok(MetricPoint {
                        step: r.get(0)?,
                        kind: r.get(1)?,
                        loss: r.get(2)?,
                        accuracy: r.get(3)?,
                    })
                },
            )
        })
    }

    /// The latest run that recorded a metric.
    pub fn latest_metric_run(&self) -> Result<Option<i64>> {
        self.read(|ex| ex.query_one("SELECT max(run_id) FROM train_metrics", &[], |r| r.get(0)))
    }

    /// How far `run` has come by its metrics.
    pub fn run_progress(&self, run: i64) -> Result<RunProgress> {
        let (last_step, eval) = self.read(|ex| {
            let last_step: Option<i64> = ex.query_one(
                "SELECT max(step) FROM train_metrics WHERE run_id = ?1",
                &[&run],
                |r| r.get(0),
            )?;
            let eval = ex.query_opt(
                "SELECT step, accuracy FROM train_metrics
                 WHERE run_id = ?1 AND kind = 'eval' ORDER BY step DESC LIMIT 1",
                &[&run],
                |r| Ok((r.get::<i64>(0)?, r.get::<Option<f64>>(1)?)),
            )?;
            Ok((last_step, eval))
        })?;
        Ok(RunProgress {
            last_step,
            accuracy: eval.and_then(|(_, acc)| acc),
            accuracy_step: eval.map(|(step, _)| step),
        })
    }

    /// `(step, value)` of `run`'s `kind` rows that have the value, in step order
    /// (none without a run).
    pub fn metric_series(
        &self,
        run: Option<i64>,
        kind: MetricKind,
        value: MetricValue,
    ) -> Result<Vec<(i64, f64)>> {
        let col = value.column();
        self.read(|ex| {
            ex.query_all(
                &format!(
                    "SELECT step, {col} FROM train_metrics WHERE run_id = ?1 AND kind = ?2 AND {col} IS NOT NULL ORDER BY step"
                ),
                &[&run, &kind.as_str()],
                |r| Ok((r.get::<i64>(0)?, r.get::<f64>(1)?)),
            )
        })
    }

    /// Stores the model's probability that A is better, `(pair_id, p_a)`, for each
    /// pair of `scores`, marked with `step`, in one transaction.
    pub fn record_pair_scores(
        &self,
        scores: impl IntoIterator<Item = (i64, f64)>,
        step: u64,
    ) -> Result<()> {
        let step = step as i64;
        self.write(|ex| {
            for (id, p_a) in scores {
                ex.execute(
                    &format!(
                        "INSERT INTO pair_scores (pair_id, p_a, step, scored_at) VALUES (?1, ?2, ?3, {})
                         ON CONFLICT (pair_id) DO UPDATE
                         SET p_a = excluded.p_a, step = excluded.step, scored_at = excluded.scored_at",
                        ex.now()
                    ),
                    &[&id, &p_a, &step],
                )?;
            }
            Ok(())
        })
    }

    /// The model's latest probability that A is better, by pair.
    pub fn pair_scores(&self) -> Result<HashMap<i64, f64>> {
        let mut scores = HashMap::new();
        self.read(|ex| {
            ex.query_each::<super::StoreError>("SELECT pair_id, p_a FROM pair_scores", &[], |r| {
                scores.insert(r.get(0)?, r.get(1)?);
                Ok(())
            })
        })?;
        Ok(scores)
    }

    /// Up to `limit` non-gold pairs past id `after` not yet scored at `step` or
    /// later, by id: a walk over the pool that reads only the pairs it returns (and
    /// those it skips), where `pairs_to_score` ranks the whole pool each time (half
    /// a second at a million pairs).
    pub fn pairs_to_score_after(
        &self,
        after: i64,
        limit: usize,
        step: u64,
    ) -> Result<Vec<PairText>> {
        self.read(|ex| {
            ex.query_all(
                "WITH pick AS (
                   SELECT p.id, p.prompt_id, p.response_a, p.response_b FROM pairs p
                   LEFT JOIN pair_scores s ON s.pair_id = p.id
                   WHERE p.id > ?1 AND coalesce(s.step, -1) < ?3 AND p.gold IS NULL
                   ORDER BY p.id LIMIT ?2)
                 SELECT pick.id, pr.text, ra.text, rb.text FROM pick
                 JOIN prompts pr ON pr.id = pick.prompt_id
                 JOIN responses ra ON ra.id = pick.response_a
                 JOIN responses rb ON rb.id = pick.response_b
                 ORDER BY pick.id",
                &[&after, &(limit as i64), &(step as i64)],
                pair_text,
            )
        })
    }

    /// Up to `limit` non-gold pairs not yet scored at `step` or later: unjudged
    /// pairs before judged ones, never-scored before long-ago-scored, then by id.
    pub fn pairs_to_score(&self, limit: usize, step: u64) -> Result<Vec<PairText>> {
        self.read(|ex| {
            ex.query_all(
            "SELECT p.id, pr.text, ra.text, rb.text FROM pairs p
             JOIN prompts pr ON pr.id = p.prompt_id
             JOIN responses ra ON ra.id = p.response_a
             JOIN responses rb ON rb.id = p.response_b
             LEFT JOIN pair_scores s ON s.pair_id = p.id
             WHERE coalesce(s.step, -1) < ?2 AND p.gold IS NULL
             ORDER BY EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.id AND l.undone_at IS NULL),
                      coalesce(s.step, -1), p.id
             LIMIT ?1",
                &[&(limit as i64), &(step as i64)],
                pair_text,
            )
        })
    }

    /// The pairs with a standing judgement for A or for B.
    pub fn decisively_judged_pairs(&self) -> Result<Vec<PairText>> {
        self.read(|ex| {
            ex.query_all(
                "SELECT p.id, pr.text, ra.text, rb.text FROM pairs p
             JOIN prompts pr ON pr.id = p.prompt_id
             JOIN responses ra ON ra.id = p.response_a
             JOIN responses rb ON rb.id = p.response_b
             WHERE EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.id AND l.undone_at IS NULL
                           AND l.choice IN ('a', 'b'))",
                &[],
                pair_text,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Choice, NewLabel, Prompt};
    use crate::store::NewPair;

    #[test]
    fn the_scoring_walk_returns_stale_pairs_past_the_cursor_in_id_order() {
        for mut s in crate::store::test_stores() {
            the_scoring_walk_returns_stale_pairs_past_the_cursor_in_id_order_on(&mut s);
        }
    }

    fn the_scoring_walk_returns_stale_pairs_past_the_cursor_in_id_order_on(s: &mut Store) {
        let pairs: Vec<NewPair> = (0..6)
            .map(|i| {
                let mut p = NewPair::new(
                    Prompt::from_text(format!("q{i}")),
                    format!("a{i}"),
                    format!("b{i}"),
                );
                p.gold = i == 4;
                p.label = (i == 4).then_some(Choice::A);
                p
            })
            .collect();
        s.insert_pairs(&pairs).expect("insert");
        let walk = |s: &Store, after: i64, step: u64| -> Vec<i64> {
            s.pairs_to_score_after(after, 100, step)
                .expect("walk")
                .iter()
                .map(|p| p.pair_id)
                .collect()
        };
        // Every pair but the gold one, by id, with its texts.
        let ids = walk(s, 0, 1);
        assert_eq!(ids.len(), 5, "{ids:?}");
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let first = &s.pairs_to_score_after(0, 1, 1).expect("walk")[0];
        assert_eq!(
            (
                first.prompt.as_str(),
                first.response_a.as_str(),
                first.response_b.as_str()
            ),
            ("q0", "a0", "b0")
        );
        // Judged pairs are scored too (the disagreement order reads their scores).
        s.record_label(&NewLabel::plain(ids[1], "ann", Choice::B, "test"))
            .expect("label");
        assert_eq!(walk(s, 0, 1), ids);
        // Past the cursor, and only what the model at `step` has not scored.
        s.record_pair_scores([(ids[2], 0.7), (ids[3], 0.4)], 5)
            .expect("scores");
        assert_eq!(walk(s, ids[0], 5), [ids[1], ids[4]]);
        assert_eq!(walk(s, ids[0], 6), &ids[1..]);
        assert!(walk(s, ids[4], 6).is_empty());
    }
}
