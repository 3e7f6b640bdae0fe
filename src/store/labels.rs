//! Writing judgements, undoing them, and reading them back for export and stats.

use super::pairs::prompt_from_row;
use super::sql::{Ex, Row};
use super::{Result, Store, StoreError};
use crate::consensus::{self, Rule, Verdict, Vote};
use crate::domain::{Choice, NewLabel, Prompt, Side, Strength};

pub(crate) fn insert_label(ex: &Ex<'_, '_>, l: &NewLabel) -> Result<i64> {
    let elapsed = l
        .elapsed_ms
        .map(i64::try_from)
        .transpose()
        .map_err(|_| StoreError::Invalid("elapsed time out of range".into()))?;
    ex.insert_id("INSERT INTO labels (pair_id, annotator, choice, strength, left_side, note, elapsed_ms, source, queue_order)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)", &[
            &l.pair_id,
            &l.annotator,
            &l.choice.as_str(),
            &l.strength.map(|s| i64::from(s.value())),
            &l.left.map(Side::as_str),
            &l.note,
            &elapsed,
            &l.source,
            &l.queue_order,
        ])
}

/// Marks a standing judgement undone (the row stays); whether one was.
fn mark_undone(ex: &Ex<'_, '_>, label_id: i64) -> Result<bool> {
    let n = ex.execute(
        &format!(
            "UPDATE labels SET undone_at = {} WHERE id = ?1 AND undone_at IS NULL",
            ex.now()
        ),
        &[&label_id],
    )?;
    Ok(n == 1)
}

/// A judgement the model disagrees with, for `duel review`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewItem {
    pub label_id: i64,
    pub pair_id: i64,
    pub annotator: String,
    /// The judgement said A was better (otherwise B).
    pub chose_a: bool,
    /// The model's probability that the other response is better (over 0.5).
    pub against: f64,
    /// For a contested pair (`duel review --contested`): each standing vote, in the
    /// order made, and the model's probability that A is better, if scored. A
    /// judgement made on it is an adjudication and replaces no vote.
    pub votes: Vec<(String, Choice)>,
    pub p_a: Option<f64>,
}

/// Progress numbers for the status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub pairs: i64,
    /// Pairs with at least one standing judgement, from anyone.
    pub judged: i64,
    /// Pairs this annotator has judged.
    pub mine: i64,
}

/// Marks that move whenever the judgements change: the newest label and the latest
/// undo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelMarks {
    pub newest: Option<i64>,
    pub last_undone: Option<String>,
}

/// Which labels an export or a report reads.
#[derive(Debug, Clone, Default)]
pub struct LabelFilter {
    pub annotator: Option<String>,
    /// ISO 8601 UTC lower bound on `created_at`, inclusive.
    pub since: Option<String>,
    /// Include undone rows (the audit trail).
    pub include_undone: bool,
    /// Include judgements of gold pairs (the audit trail; never exported or trained
    /// on otherwise).
    pub include_gold: bool,
}

/// A label with its pair, as export writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelRow {
    pub label_id: i64,
    pub pair_id: i64,
    pub ext_id: Option<String>,
    pub prompt: Prompt,
    pub response_a: String,
    pub response_b: String,
    pub annotator: String,
    pub choice: Choice,
    pub strength: Option<Strength>,
    pub left: Option<Side>,
    pub note: Option<String>,
    pub elapsed_ms: Option<i64>,
    pub source: String,
    pub created_at: String,
    pub undone_at: Option<String>,
    /// The known answer, for a gold pair.
    pub gold: Option<Choice>,
}

impl LabelRow {
    /// The preferred and the other response, when the choice names one.
    pub fn chosen_rejected(&self) -> Option<(&str, &str)> {
        self.chosen_rejected_for(self.choice)
    }

    /// The preferred and the other response under `choice` (a verdict's, say).
    pub fn chosen_rejected_for(&self, choice: Choice) -> Option<(&str, &str)> {
        match choice.winner()? {
            Side::A => Some((&self.response_a, &self.response_b)),
            Side::B => Some((&self.response_b, &self.response_a)),
        }
    }
}

impl LabelRow {
    pub fn vote(&self) -> Vote {
        Vote {
            choice: self.choice,
            strength: self.strength,
            adjudication: self.source == consensus::ADJUDICATION,
        }
    }
}

impl Store {
    /// Commits one judgement and returns its id. When this returns, the label is on
    /// disk.
    pub fn record_label(&mut self, label: &NewLabel) -> Result<i64> {
        self.write(|ex| insert_label(ex, label))
    }

    /// Marks a judgement undone. The row stays for the audit trail. Returns whether a
    /// standing label was undone.
    pub fn undo_label(&mut self, label_id: i64) -> Result<bool> {
        self.write(|ex| mark_undone(ex, label_id))
    }

    /// Replaces a judgement after review: `old` is marked undone and `label`
    /// recorded, in one transaction. Both rows stay in the history.
    pub fn relabel(&mut self, old: i64, label: &NewLabel) -> Result<i64> {
        self.write(|ex| {
            if !mark_undone(ex, old)? {
                return Err(StoreError::Invalid(format!(
                    "judgement {old} is not standing (undone already), or not yours to replace"
                )));
            }
            insert_label(ex, label)
        })
    }

    /// Takes a relabel back: the new judgement is undone and the old one stands again.
    pub fn undo_relabel(&mut self, new: i64, old: i64) -> Result<()> {
        self.write(|ex| {
            mark_undone(ex, new)?;
            ex.execute("UPDATE labels SET undone_at = NULL WHERE id = ?1", &[&old])?;
            Ok(())
        })
    }

    /// Standing decisive judgements that the model's latest prediction contradicts,
    /// the most confident contradiction first (`of`: one annotator's only).
    pub fn review_candidates(&self, of: Option<&str>, limit: usize) -> Result<Vec<ReviewItem>> {
        self.read(|ex| {
            ex.query_all(
                "SELECT l.id, l.pair_id, l.annotator, l.choice, s.p_a,
                    CASE l.choice WHEN 'a' THEN 1.0 - s.p_a ELSE s.p_a END AS against
             FROM labels l JOIN pair_scores s ON s.pair_id = l.pair_id
             WHERE l.undone_at IS NULL AND l.choice IN ('a', 'b')
               AND (CAST(?1 AS TEXT) IS NULL OR l.annotator = ?1)
               AND CASE l.choice WHEN 'a' THEN 1.0 - s.p_a ELSE s.p_a END > 0.5
             ORDER BY against DESC, l.id
             LIMIT ?2",
                &[&of, &(limit as i64)],
                |r| {
                    let choice: String = r.get(3)?;
                    Ok(ReviewItem {
                        label_id: r.get(0)?,
                        pair_id: r.get(1)?,
                        annotator: r.get(2)?,
                        chose_a: choice == "a",
                        against: r.get(5)?,
                        votes: Vec::new(),
                        p_a: r.get(4)?,
                    })
                },
            )
        })
    }

    /// Pairs whose standing judgements disagree and that no adjudication settled,
    /// for `duel review --contested`: pairs without a majority first, then those
    /// with a dissenting vote, each in pair order.
    pub fn contested_candidates(&self, limit: usize) -> Result<Vec<ReviewItem>> {
        let mut split = Vec::new();
        let mut dissent = Vec::new();
        self.for_each_verdict::<StoreError>(&LabelFilter::default(), Rule::Majority, |rows, v| {
            let first = rows[0].choice;
            if matches!(v, Verdict::Adjudicated { .. }) || rows.iter().all(|r| r.choice == first) {
                return Ok(());
            }
            let item = ReviewItem {
                label_id: 0,
                pair_id: rows[0].pair_id,
                annotator: rows
                    .iter()
                    .map(|r| format!("{} {}", r.annotator, r.choice))
                    .collect::<Vec<_>>()
                    .join(", "),
                chose_a: false,
                against: 0.0,
                votes: rows
                    .iter()
                    .map(|r| (r.annotator.clone(), r.choice))
                    .collect(),
                p_a: None,
            };
            match v {
                Verdict::Contested => split.push(item),
                _ => dissent.push(item),
            }
            Ok(())
        })?;
        split.extend(dissent);
        split.truncate(limit);
        self.read(|ex| {
            for item in &mut split {
                item.p_a = ex.query_opt(
                    "SELECT p_a FROM pair_scores WHERE pair_id = ?1",
                    &[&item.pair_id],
                    |r| r.get(0),
                )?;
            }
            Ok(())
        })?;
        Ok(split)
    }

    /// The note of label `label_id` (none when it has none or does not exist).
    pub fn label_note(&self, label_id: i64) -> Result<Option<String>> {
        Ok(self
            .read(|ex| {
                ex.query_opt("SELECT note FROM labels WHERE id = ?1", &[&label_id], |r| {
                    r.get::<Option<String>>(0)
                })
            })?
            .flatten())
    }

    /// The newest label and the latest undo, from anyone.
    pub fn label_marks(&self) -> Result<LabelMarks> {
        self.read(|ex| {
            ex.query_one("SELECT max(id), max(undone_at) FROM labels", &[], |r| {
                Ok(LabelMarks {
                    newest: r.get(0)?,
                    last_undone: r.get(1)?,
                })
            })
        })
    }

    /// For `duel bench`: judges each pair up to id 100,000 once, as `bench-first`
    /// (A for even ids, B for odd), in one statement; how many it judged.
    pub fn judge_for_bench(&self) -> Result<usize> {
        self.write(|ex| {
            ex.execute(
                "INSERT INTO labels (pair_id, annotator, choice, source)
                 SELECT id, 'bench-first', CASE id % 2 WHEN 0 THEN 'a' ELSE 'b' END, 'bench'
                 FROM pairs WHERE id <= 100000",
                &[],
            )
        })
    }

    pub fn progress(&self, annotator: &str) -> Result<Progress> {
        self.read(|ex| {
            ex.query_one(
                "SELECT (SELECT count(*) FROM pairs),
                    (SELECT count(DISTINCT pair_id) FROM labels WHERE undone_at IS NULL),
                    (SELECT count(DISTINCT pair_id) FROM labels
                      WHERE undone_at IS NULL AND annotator = ?1)",
                &[&annotator],
                |r| {
                    Ok(Progress {
                        pairs: r.get(0)?,
                        judged: r.get(1)?,
                        mine: r.get(2)?,
                    })
                },
            )
        })
    }

    /// Calls `f` for each label matching `filter`, in the order they were made,
    /// streaming from the database.
    pub fn for_each_label<E>(
        &self,
        filter: &LabelFilter,
        mut f: impl FnMut(LabelRow) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E>
    where
        E: From<StoreError>,
    {
        let mut out = Ok(());
        self.read(|ex| {
            out = ex.query_each::<E>(
                &label_sql("l.id"),
                &[
                    &filter.annotator,
                    &filter.since,
                    &filter.include_undone,
                    &filter.include_gold,
                ],
                |r| f(read_row(r)?),
            );
            Ok(())
        })?;
        out
    }

    /// Calls `f` for each pair with standing judgements matching `filter`, in the
    /// order of the pairs, with its judgements (in the order they were made) and
    /// their verdict under `rule` (which must not be `All`).
    pub fn for_each_verdict<E>(
        &self,
        filter: &LabelFilter,
        rule: Rule,
        mut f: impl FnMut(&[LabelRow], Verdict) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E>
    where
        E: From<StoreError>,
    {
        let mut group: Vec<LabelRow> = Vec::new();
        let mut flush = |group: &mut Vec<LabelRow>| -> std::result::Result<(), E> {
            if group.is_empty() {
                return Ok(());
            }
            let votes: Vec<Vote> = group.iter().map(LabelRow::vote).collect();
            let r = f(group, consensus::decide(&votes, rule));
            group.clear();
            r
        };
        let mut out = Ok(());
        self.read(|ex| {
            out = ex.query_each::<E>(
                &label_sql("l.pair_id, l.id"),
                &[&filter.annotator, &filter.since, &false, &false],
                |r| {
                    let row = read_row(r)?;
                    if group.first().is_some_and(|g| g.pair_id != row.pair_id) {
                        flush(&mut group)?;
                    }
                    group.push(row);
                    Ok(())
                },
            );
            Ok(())
        })?;
        out?;
        flush(&mut group)
    }
}

/// The labels with their pairs, filtered by `?1` annotator, `?2` since, `?3` undone
/// ones too and `?4` gold pairs' too, in `order`.
fn label_sql(order: &str) -> String {
    format!(
        "SELECT l.id, l.pair_id, p.ext_id, pr.text, pr.messages, ra.text, rb.text,
                l.annotator, l.choice, l.strength, l.left_side, l.note, l.elapsed_ms,
                l.source, l.created_at, l.undone_at, p.gold
         FROM labels l
         JOIN pairs p ON p.id = l.pair_id
         JOIN prompts pr ON pr.id = p.prompt_id
         JOIN responses ra ON ra.id = p.response_a
         JOIN responses rb ON rb.id = p.response_b
         WHERE (CAST(?1 AS TEXT) IS NULL OR l.annotator = ?1)
           AND (CAST(?2 AS TEXT) IS NULL OR l.created_at >= ?2)
           AND (?3 OR l.undone_at IS NULL)
           AND (?4 OR p.gold IS NULL)
         ORDER BY {order}"
    )
}

fn read_row(r: &Row<'_>) -> Result<LabelRow> {
    let strength: Option<i64> = r.get(9)?;
    Ok(LabelRow {
        label_id: r.get(0)?,
        pair_id: r.get(1)?,
        ext_id: r.get(2)?,
        prompt: prompt_from_row(r.get(3)?, r.get(4)?),
        response_a: r.get(5)?,
        response_b: r.get(6)?,
        annotator: r.get(7)?,
        choice: r.parse(8)?,
        strength: strength
            .map(|s| {
                u8::try_from(s)
                    .ok()
                    .and_then(Strength::new)
                    .ok_or_else(|| StoreError::Invalid(format!("column 9: strength {s}")))
            })
            .transpose()?,
        left: r.parse_opt(10)?,
        note: r.get(11)?,
        elapsed_ms: r.get(12)?,
        source: r.get(13)?,
        created_at: r.get(14)?,
        undone_at: r.get(15)?,
        gold: r.parse_opt(16)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewPair;

    fn label(pair_id: i64, who: &str, choice: Choice) -> NewLabel {
        NewLabel {
            pair_id,
            annotator: who.into(),
            choice,
            strength: Strength::new(2),
            left: Some(Side::B),
            note: Some("a note".into()),
            elapsed_ms: Some(1234),
            source: "tui".into(),
            queue_order: None,
        }
    }

    #[test]
    fn labels_round_trip_and_undo_keeps_the_row() {
        for mut s in crate::store::test_stores() {
            labels_round_trip_and_undo_keeps_the_row_on(&mut s);
        }
    }

    fn labels_round_trip_and_undo_keeps_the_row_on(s: &mut Store) {
        s.insert_pairs(&[NewPair::new(
            Prompt::from_text("q".into()),
            "x".into(),
            "y".into(),
        )])
        .expect("pair");
        let id = s.record_label(&label(1, "ann", Choice::B)).expect("label");
        assert_eq!(
            s.progress("ann").expect("progress"),
            Progress {
                pairs: 1,
                judged: 1,
                mine: 1
            }
        );
        assert!(s.undo_label(id).expect("undo"));
        assert!(!s.undo_label(id).expect("undo twice is a no-op"));
        assert_eq!(s.progress("ann").expect("progress").judged, 0);

        let mut standing = Vec::new();
        s.for_each_label::<StoreError>(&LabelFilter::default(), |r| {
            standing.push(r);
            Ok(())
        })
        .expect("read");
        assert!(standing.is_empty());
        let mut all = Vec::new();
        let audit = LabelFilter {
            include_undone: true,
            ..Default::default()
        };
        s.for_each_label::<StoreError>(&audit, |r| {
            all.push(r);
            Ok(())
        })
        .expect("read");
        assert_eq!(all.len(), 1);
        let r = &all[0];
        assert_eq!(r.choice, Choice::B);
        assert_eq!(r.strength, Strength::new(2));
        assert_eq!(r.left, Some(Side::B));
        assert_eq!(r.note.as_deref(), Some("a note"));
        assert_eq!(r.elapsed_ms, Some(1234));
        assert!(r.undone_at.is_some());
    }

    #[test]
    fn a_label_for_a_missing_pair_is_refused() {
        for mut s in crate::store::test_stores() {
            let engine = crate::store::engine(&s);
            assert!(
                s.record_label(&label(42, "ann", Choice::A)).is_err(),
                "{engine}"
            );
            assert_eq!(s.progress("ann").expect("progress").judged, 0, "{engine}");
        }
    }
}
