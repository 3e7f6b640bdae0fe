//! `duel export`: the judgements in the formats the Hugging Face ecosystem reads.

use crate::store::{LabelFilter, LabelRow, Store, StoreError};
use serde_json::{Value, json};
use std::io::{self, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// `{prompt, chosen, rejected}` (+ `margin`), TRL's explicit-prompt preference format.
    Trl,
    /// The same with `prompt` a message list and `chosen`/`rejected` assistant turns.
    TrlConversational,
    /// The `trl` columns plus annotator and time, as CSV.
    Csv,
    /// Every label row as recorded, undone ones included.
    Raw,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("writing the export: {0}")]
    Io(#[from] io::Error),
    #[error("writing the export: {0}")]
    Csv(#[from] csv::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportReport {
    pub rows: u64,
}

/// Writes the labels matching `filter` to `out`, one row at a time.
pub fn export(
    store: &Store,
    format: ExportFormat,
    filter: &LabelFilter,
    out: impl Write,
) -> Result<ExportReport, ExportError> {
    let mut out = io::BufWriter::new(out);
    let mut report = ExportReport::default();
    match format {
        ExportFormat::Trl | ExportFormat::TrlConversational => {
            store.for_each_label(filter, |row| -> Result<(), ExportError> {
                if let Some(v) = trl_record(&row, format == ExportFormat::TrlConversational) {
                    serde_json::to_writer(&mut out, &v).map_err(io::Error::from)?;
                    out.write_all(b"\n")?;
                    report.rows += 1;
                }
                Ok(())
            })?;
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
            ])?;
            store.for_each_label(filter, |row| -> Result<(), ExportError> {
                let Some((chosen, rejected)) = row.chosen_rejected() else {
                    return Ok(());
                };
                let margin = row
                    .strength
                    .map(|s| s.margin().to_string())
                    .unwrap_or_default();
                w.write_record([
                    row.prompt.text.as_str(),
                    chosen,
                    rejected,
                    &margin,
                    &row.annotator,
                    &row.pair_id.to_string(),
                    row.ext_id.as_deref().unwrap_or(""),
                    &row.created_at,
                ])?;
                report.rows += 1;
                Ok(())
            })?;
            w.flush()?;
        }
        ExportFormat::Raw => {
            let filter = LabelFilter {
                include_undone: true,
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
    Ok(report)
}

/// A `trl` line, or `None` for ties and both-bad (they carry no preference).
pub fn trl_record(row: &LabelRow, conversational: bool) -> Option<Value> {
    let (chosen, rejected) = row.chosen_rejected()?;
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
    if let (Some(s), Value::Object(m)) = (row.strength, &mut v) {
        m.insert("margin".into(), json!(s.margin()));
    }
    Some(v)
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
    })
}
