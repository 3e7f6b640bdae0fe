//! `duel export`: the judgements in the formats the Hugging Face ecosystem reads.

use crate::consensus::{Rule, Verdict};
use crate::domain::{Choice, Strength};
use crate::store::{LabelFilter, LabelRow, Store, StoreError};
use serde_json::{Value, json};
use std::io::{self, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// `{prompt, chosen, rejected}` (+ `margin`), TRL's explicit-prompt preference format.
    Trl,
    /// The same with `prompt` a message list and `chosen`/`rejected` assistant turns.
    TrlConversational,
    /// The `trl` rows as a Parquet file (`--out` or standard output).
    Parquet,
    /// TRL's unpaired form, `{prompt, completion, label}`: a decisive judgement gives
    /// its chosen response as desirable and the other as undesirable, both-bad gives
    /// both as undesirable; ties carry no preference and are left out.
    Kto,
    /// The `trl` columns plus annotator and time, as CSV.
    Csv,
    /// Every label row as recorded, undone ones included.
    Raw,
    /// Every pair, judged or not, as `duel import` reads it, with how each response
    /// was generated in `meta.generated` (the filters do not apply).
    Pairs,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("writing the export: {0}")]
    Io(#[from] io::Error),
    #[error("writing the export: {0}")]
    Csv(#[from] csv::Error),
    #[error("writing the export: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportReport {
    pub rows: u64,
    /// Under a consensus rule: pairs whose votes agree, pairs settled by an
    /// adjudication, and contested pairs (left out).
    pub agreed: u64,
    pub adjudicated: u64,
    pub contested: u64,
}

impl ExportReport {
    fn count(&mut self, v: &Verdict) {
        match v {
            Verdict::Agreed { .. } => self.agreed += 1,
            Verdict::Adjudicated { .. } => self.adjudicated += 1,
            Verdict::Contested => self.contested += 1,
        }
    }
}

/// Calls `f` with each row to write (a judgement, or a pair's verdict under
/// `rule`), its choice and its margin.
fn for_each_row(
    store: &Store,
    filter: &LabelFilter,
    rule: Rule,
    report: &mut ExportReport,
    mut f: impl FnMut(&LabelRow, Choice, Option<f64>, Votes) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    if rule == Rule::All {
        return store.for_each_label(filter, |row| {
            let margin = row.strength.map(Strength::margin);
            f(&row, row.choice, margin, Votes::One)
        });
    }
    store.for_each_verdict(filter, rule, |rows, verdict| {
        report.count(&verdict);
        let Some(choice) = verdict.choice() else {
            return Ok(());
        };
        // The latest judgement that made the verdict's choice stands for the pair.
        let Some(row) = rows.iter().rev().find(|r| r.choice == choice) else {
            return Ok(());
        };
        let votes = match verdict {
            Verdict::Agreed { votes, of, .. } => Votes::Of(votes, of),
            _ => Votes::Adjudicated,
        };
        f(row, choice, verdict.margin(), votes)
    })
}

/// How many judgements a row stands for.
#[derive(Debug, Clone, Copy)]
enum Votes {
    One,
    Of(usize, usize),
    Adjudicated,
}

impl Votes {
    fn text(self) -> String {
        match self {
            Votes::One => "1/1".into(),
            Votes::Of(n, of) => format!("{n}/{of}"),
            Votes::Adjudicated => "adjudicated".into(),
        }
    }
}

/// Writes the labels matching `filter` to `out`, one row at a time; `trl`,
/// `trl-conversational`, `parquet`, `kto` and `csv` write one pair's verdict under
/// `rule` (every judgement with `Rule::All`).
pub fn export(
    store: &Store,
    format: ExportFormat,
    filter: &LabelFilter,
    rule: Rule,
    out: impl Write + Send,
) -> Result<ExportReport, ExportError> {
    let mut out = io::BufWriter::new(out);
    let mut report = ExportReport::default();
    let mut rows = 0;
    match format {
        ExportFormat::Parquet => {
            // The margin column is there when a row has a margin, as in `trl`'s
            // JSON Lines (where it is a key of those rows): a first pass looks.
            let mut with_margin = false;
            for_each_row(
                store,
                filter,
                rule,
                &mut ExportReport::default(),
                |_, choice, margin, _| {
                    with_margin |= margin.is_some() && choice.winner().is_some();
                    Ok(())
                },
            )?;
            let mut w = super::parquet::TableWriter::new(
                &mut out,
                &["prompt", "chosen", "rejected"],
                with_margin.then_some("margin"),
            )?;
            for_each_row(
                store,
                filter,
                rule,
                &mut report,
                |row, choice, margin, _| {
                    if let Some((chosen, rejected)) = row.chosen_rejected_for(choice) {
                        w.push(&[&row.prompt.text, chosen, rejected], margin)?;
                        rows += 1;
                    }
                    Ok(())
                },
            )?;
            w.finish()?;
        }
        ExportFormat::Kto => {
            for_each_row(store, filter, rule, &mut report, |row, choice, _, _| {
                for v in kto_records(row, choice) {
                    serde_json::to_writer(&mut out, &v).map_err(io::Error::from)?;
                    out.write_all(b"\n")?;
                    rows += 1;
                }
                Ok(())
            })?;
        }
        ExportFormat::Trl | ExportFormat::TrlConversational => {
            let conversational = format == ExportFormat::TrlConversational;
            for_each_row(
                store,
                filter,
                rule,
                &mut report,
                |row, choice, margin, _| {
                    if let Some(v) = trl_record(row, choice, margin, conversational) {
                        serde_json::to_writer(&mut out, &v).map_err(io::Error::from)?;
                        out.write_all(b"\n")?;
                        rows += 1;
                    }
                    Ok(())
                },
            )?;
        }
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(&mut out);
            w.write_record([
                "prompt",
                "chosen",
                "rejected",
                "margin",
                "annotator",
                "pair_id",
                "id",
                "created_at",
                "votes",
            ])?;
            for_each_row(
                store,
                filter,
                rule,
                &mut report,
                |row, choice, margin, votes| {
                    let Some((chosen, rejected)) = row.chosen_rejected_for(choice) else {
                        return Ok(());
                    };
                    let margin = margin.map(|m| m.to_string()).unwrap_or_default();
                    w.write_record([
                        row.prompt.text.as_str(),
                        chosen,
                        rejected,
                        &margin,
                        &row.annotator,
                        &row.pair_id.to_string(),
                        row.ext_id.as_deref().unwrap_or(""),
                        &row.created_at,
                        &votes.text(),
                    ])?;
                    rows += 1;
                    Ok(())
                },
            )?;
            w.flush()?;
        }
        ExportFormat::Pairs => {
            store.for_each_pair(|p| -> Result<(), ExportError> {
                serde_json::to_writer(&mut out, &pair_record(p)).map_err(io::Error::from)?;
                out.write_all(b"\n")?;
                report.rows += 1;
                Ok(())
            })?;
        }
        ExportFormat::Raw => {
            let filter = LabelFilter {
                include_undone: true,
                include_gold: true,
                ..filter.clone()
            };
            store.for_each_label(&filter, |row| -> Result<(), ExportError> {
                serde_json::to_writer(&mut out, &raw_record(&row)).map_err(io::Error::from)?;
                out.write_all(b"\n")?;
                report.rows += 1;
                Ok(())
            })?;
        }
    }
    out.flush()?;
    report.rows += rows;
    Ok(report)
}

/// A pair as an import record: `{id?, prompt, response_a, response_b, meta?}`.
fn pair_record(p: crate::store::PairExport) -> Value {
    let mut rec = serde_json::Map::new();
    if let Some(id) = p.pair.ext_id {
        rec.insert("id".into(), Value::String(id));
    }
    let prompt = match p.pair.prompt.messages {
        Some(m) => serde_json::to_value(m).unwrap_or(Value::Null),
        None => Value::String(p.pair.prompt.text),
    };
    rec.insert("prompt".into(), prompt);
    rec.insert("response_a".into(), Value::String(p.pair.response_a));
    rec.insert("response_b".into(), Value::String(p.pair.response_b));
    let mut meta = match p.meta {
        Some(Value::Object(m)) => m,
        Some(other) => serde_json::Map::from_iter([("meta".to_string(), other)]),
        None => serde_json::Map::new(),
    };
    if let (Some(a), Some(b)) = (p.generated_a, p.generated_b) {
        let side = |g: crate::store::Generated| {
            let mut m =
                serde_json::Map::from_iter([("generator".to_string(), Value::String(g.generator))]);
            if let Value::Object(rest) = g.meta {
                m.extend(rest);
            }
            Value::Object(m)
        };
        meta.insert(
            "generated".into(),
            serde_json::json!({"a": side(a), "b": side(b)}),
        );
    }
    if !meta.is_empty() {
        rec.insert("meta".into(), Value::Object(meta));
    }
    Value::Object(rec)
}

/// A `trl` line for `row`'s pair decided as `choice`, or `None` for ties and
/// both-bad (they carry no preference).
pub fn trl_record(
    row: &LabelRow,
    choice: Choice,
    margin: Option<f64>,
    conversational: bool,
) -> Option<Value> {
    let (chosen, rejected) = row.chosen_rejected_for(choice)?;
    let mut v = if conversational {
        let turn = |text: &str| json!([{"role": "assistant", "content": text}]);
        json!({
            "prompt": row.prompt.turns(),
            "chosen": turn(chosen),
            "rejected": turn(rejected),
        })
    } else {
        json!({"prompt": row.prompt.text, "chosen": chosen, "rejected": rejected})
    };
    if let (Some(margin), Value::Object(m)) = (margin, &mut v) {
        m.insert("margin".into(), json!(margin));
    }
    Some(v)
}

/// The `kto` lines for `row`'s pair decided as `choice`: the winner desirable and
/// the loser not; both responses undesirable when both are bad; none for a tie.
pub fn kto_records(row: &LabelRow, choice: Choice) -> Vec<Value> {
    let line = |completion: &str, label: bool| json!({"prompt": row.prompt.text, "completion": completion, "label": label});
    match choice {
        Choice::Tie => Vec::new(),
        Choice::BothBad => vec![line(&row.response_a, false), line(&row.response_b, false)],
        Choice::A | Choice::B => match row.chosen_rejected_for(choice) {
            Some((chosen, rejected)) => vec![line(chosen, true), line(rejected, false)],
            None => Vec::new(),
        },
    }
}

fn raw_record(row: &LabelRow) -> Value {
    json!({
        "label_id": row.label_id,
        "pair_id": row.pair_id,
        "id": row.ext_id,
        "prompt": row.prompt.text,
        "response_a": row.response_a,
        "response_b": row.response_b,
        "annotator": row.annotator,
        "choice": row.choice,
        "strength": row.strength.map(|s| s.value()),
        "left": row.left,
        "note": row.note,
        "elapsed_ms": row.elapsed_ms,
        "source": row.source,
        "created_at": row.created_at,
        "undone_at": row.undone_at,
        "gold": row.gold,
    })
}
