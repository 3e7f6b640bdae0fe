//! Cards in the Hub's layout (YAML front matter, then Markdown): the model card
//! `duel train` writes into the model folder as `README.md`, and the dataset card
//! `duel export --card` writes beside an export.
//!
//! The front matter holds only values this program chose (numbers, fixed words, and
//! strings quoted as JSON, which YAML reads as its double-quoted form); text from the
//! data (annotator names) appears only in the Markdown, escaped.

use crate::stats::{Stats, wilson};
use std::fmt::Write as _;

/// The Hub id of the encoder `scripts/fetch-models.sh` bundles.
pub const BUNDLED_ENCODER: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Text from data made safe in Markdown (and a table cell): control characters
/// dropped, and the characters that would start markup or end a cell escaped.
pub fn md(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#' | '!' | '{' | '}' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => {}
            // Bidirectional overrides and isolates reorder what follows them.
            '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {}
            c => out.push(c),
        }
    }
    out
}

/// A string as a YAML scalar: JSON's quoted form, which YAML reads the same.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

/// What the model card says about the data a model learned from.
pub struct DataSummary {
    pub judgements: u64,
    pub annotators: usize,
    pub pairs: i64,
    pub agreed: u64,
    pub adjudicated: u64,
    pub contested: u64,
}

impl DataSummary {
    pub fn of(stats: &Stats) -> DataSummary {
        DataSummary {
            judgements: stats.labels,
            annotators: stats.annotators.len(),
            pairs: stats.pairs,
            agreed: stats.consensus.agreed,
            adjudicated: stats.consensus.adjudicated,
            contested: stats.consensus.contested,
        }
    }
}

/// Everything a model card reports about one `duel train` run.
pub struct ModelCard<'a> {
    /// The Hub id of the model trained from, when known.
    pub base_model: Option<&'a str>,
    /// The folder trained from, as given.
    pub base_dir: &'a str,
    pub data: DataSummary,
    pub train_pairs: usize,
    pub heldout_pairs: usize,
    pub holdout_share: f64,
    /// `(option, value)` rows of the training options.
    pub options: Vec<(String, String)>,
    pub steps: u64,
    pub seconds: f64,
    /// The held-out accuracy after the last epoch.
    pub heldout_accuracy: Option<f64>,
    /// `(epoch, step, accuracy)` after each epoch, on the held-out pairs.
    pub per_epoch: Vec<(u64, u64, f64)>,
    /// `(first step, last step, mean loss)` over stretches of the run.
    pub loss_curve: Vec<(u64, u64, f64)>,
    /// Accuracy on `--eval`'s file: its name, pairs and accuracy.
    pub eval_file: Option<(String, usize, f64)>,
    pub max_length: usize,
}

/// The mean training loss over at most `rows` equal stretches of `losses` (one per
/// step, from step 1; non-finite ones, from skipped batches, left out).
pub fn loss_curve(losses: &[f64], rows: usize) -> Vec<(u64, u64, f64)> {
    if losses.is_empty() || rows == 0 {
        return Vec::new();
    }
    let per = losses.len().div_ceil(rows);
    losses
        .chunks(per)
        .enumerate()
        .filter_map(|(i, chunk)| {
            let finite: Vec<f64> = chunk.iter().copied().filter(|l| l.is_finite()).collect();
            (!finite.is_empty()).then(|| {
                let first = (i * per + 1) as u64;
                let last = first + chunk.len() as u64 - 1;
                (
                    first,
                    last,
                    finite.iter().sum::<f64>() / finite.len() as f64,
                )
            })
        })
        .collect()
}

impl ModelCard<'_> {
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str("---\nlibrary_name: transformers\npipeline_tag: text-classification\n");
        if let Some(base) = self.base_model {
            let _ = writeln!(s, "base_model: {}", yaml_str(base));
        }
        s.push_str("tags:\n- reward-model\n- preference\n- duel\n---\n\n");
        s.push_str("# Reward model\n\n");
        let base = match self.base_model {
            Some(id) => format!("`{}`", md(id)),
            None => format!("the encoder in `{}`", md(self.base_dir)),
        };
        let _ = writeln!(
            s,
            "A reward model fine-tuned from {base} on human preference judgements made \
             with `duel`. It is a `BertForSequenceClassification` with one output: the \
             reward of `prompt + \" \" + response`, higher for the response the annotators \
             would prefer. Only differences between rewards for the same prompt mean \
             anything.\n"
        );
        s.push_str("```python\nfrom transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n");
        s.push_str("model = AutoModelForSequenceClassification.from_pretrained(\"PATH\")\n");
        s.push_str("tok = AutoTokenizer.from_pretrained(\"PATH\")\n");
        let _ = writeln!(
            s,
            "batch = tok([prompt + \" \" + response], truncation=True, max_length={}, return_tensors=\"pt\")",
            self.max_length
        );
        s.push_str("reward = model(**batch).logits[0, 0].item()\n```\n\n");

        s.push_str("## Data\n\n");
        let d = &self.data;
        let _ = writeln!(
            s,
            "{} judgements by {} annotator{} on {} pairs. Each pair counts once, as its \
             annotators' strict majority (consensus rule `majority`): {} pairs agreed, {} \
             settled by adjudication, {} contested and left out; ties and both-bad verdicts \
             carry no preference and are left out too.\n",
            d.judgements,
            d.annotators,
            if d.annotators == 1 { "" } else { "s" },
            d.pairs,
            d.agreed,
            d.adjudicated,
            d.contested
        );
        let _ = writeln!(
            s,
            "Trained on {} pairs; {} pairs held out for evaluation ({} of the prompts, \
             chosen by a hash of the prompt, so no held-out prompt was trained on).\n",
            self.train_pairs,
            self.heldout_pairs,
            pct(self.holdout_share)
        );

        s.push_str("## Training\n\n| option | value |\n| --- | --- |\n");
        for (k, v) in &self.options {
            let _ = writeln!(s, "| {} | {} |", md(k), md(v));
        }
        let _ = writeln!(
            s,
            "\n{} optimizer steps in {:.0} s.\n",
            self.steps, self.seconds
        );
        if !self.loss_curve.is_empty() {
            s.push_str("Training loss (Bradley-Terry), mean over each stretch of steps:\n\n");
            s.push_str("| steps | loss |\n| --- | --- |\n");
            for (a, b, l) in &self.loss_curve {
                let steps = if a == b {
                    a.to_string()
                } else {
                    format!("{a}–{b}")
                };
                let _ = writeln!(s, "| {steps} | {l:.4} |");
            }
            s.push('\n');
        }

        s.push_str("## Evaluation\n\n");
        match self.heldout_accuracy {
            Some(acc) if self.heldout_pairs > 0 => {
                let n = self.heldout_pairs as u64;
                let k = (acc * n as f64).round() as u64;
                let (lo, hi) = wilson(k, n);
                let _ = writeln!(
                    s,
                    "Held-out accuracy (the chosen response scored above the rejected one): \
                     **{acc:.3}** on {n} pairs, 95% interval {lo:.3}–{hi:.3} (Wilson, over \
                     pairs).\n"
                );
                if self.per_epoch.len() > 1 {
                    s.push_str("| epoch | step | held-out accuracy |\n| --- | --- | --- |\n");
                    for (e, st, a) in &self.per_epoch {
                        let _ = writeln!(s, "| {e} | {st} | {a:.3} |");
                    }
                    s.push('\n');
                }
            }
            _ => s.push_str(
                "No pairs were held out (`--holdout 0`): this run has no held-out accuracy.\n\n",
            ),
        }
        if let Some((file, n, acc)) = &self.eval_file {
            let (lo, hi) = wilson((acc * *n as f64).round() as u64, *n as u64);
            let _ = writeln!(
                s,
                "On `{}`: {acc:.3} on {n} pairs (95% interval {lo:.3}–{hi:.3}).\n",
                md(file)
            );
        }

        s.push_str("## Intended use and limits\n\n");
        let _ = writeln!(
            s,
            "- Meant for ranking responses to prompts like those judged here: choosing \
             among sampled responses, filtering a dataset, or as the reward in RLHF \
             experiments.\n\
             - It learned the preferences of {} annotator{} from {} judgements; it \
             shares their blind spots, and its accuracy was measured on held-out prompts \
             of the same data, not on other domains.\n\
             - Inputs are cut to {} tokens, the prompt's oldest tokens first; the \
             vocabulary is the base model's{}.\n\
             - A small encoder scores surface features (length, tone) as well as content; \
             check its choices before trusting it where the stakes are high.",
            d.annotators,
            if d.annotators == 1 { "" } else { "s" },
            d.judgements,
            self.max_length,
            if self.base_model == Some(BUNDLED_ENCODER) {
                " (English, uncased)"
            } else {
                ""
            }
        );
        s
    }
}

/// What a dataset card reports about one export.
pub struct DatasetCard<'a> {
    pub stats: &'a Stats,
    /// The export's format name, as `--format` spells it.
    pub format: &'a str,
    /// The columns of a row, for the card's description.
    pub columns: &'a str,
    /// The consensus rule, as `--consensus` spells it.
    pub rule: &'a str,
    pub rows: u64,
    /// The exported file's name, when written to one.
    pub data_file: Option<&'a str>,
}

fn size_category(n: u64) -> &'static str {
    match n {
        0..1_000 => "n<1K",
        1_000..10_000 => "1K<n<10K",
        10_000..100_000 => "10K<n<100K",
        100_000..1_000_000 => "100K<n<1M",
        1_000_000..10_000_000 => "1M<n<10M",
        _ => "10M<n<100M",
    }
}

impl DatasetCard<'_> {
    pub fn render(&self) -> String {
        let st = self.stats;
        let mut s = String::new();
        s.push_str("---\n# Fill in the licence of the prompts and responses (an SPDX id or `other`).\nlicense: unknown\n");
        s.push_str("task_categories:\n- text-classification\n");
        s.push_str("tags:\n- preference\n- rlhf\n- duel\n");
        let _ = writeln!(s, "size_categories:\n- {}", size_category(self.rows));
        if let Some(file) = self.data_file {
            let _ = writeln!(
                s,
                "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: {}",
                yaml_str(file)
            );
        }
        s.push_str("---\n\n# Preference data\n\n");
        let _ = writeln!(
            s,
            "Human judgements of which of two responses to a prompt is better, made \
             with `duel` and exported as `{}`: {}.\n",
            md(self.format),
            self.columns
        );
        s.push_str("## Counts\n\n| what | count |\n| --- | --- |\n");
        let _ = writeln!(s, "| rows in this export | {} |", self.rows);
        let _ = writeln!(s, "| pairs | {} |", st.pairs);
        let _ = writeln!(s, "| pairs judged | {} |", st.judged);
        let _ = writeln!(s, "| judgements standing | {} |", st.labels);
        for (c, n) in &st.choices {
            let _ = writeln!(s, "| judged {} | {n} |", c.as_str());
        }
        let _ = writeln!(s, "| annotators | {} |", st.annotators.len());
        let c = &st.consensus;
        let _ = writeln!(
            s,
            "\nConsensus rule `{}`: {} pairs agreed, {} adjudicated, {} contested (left out \
             unless the rule is `all`).\n",
            md(self.rule),
            c.agreed,
            c.adjudicated,
            c.contested
        );
        s.push_str("## Annotators\n\n| annotator | judgements | chose the left response | agreed with the majority |\n| --- | --- | --- | --- |\n");
        for a in &st.annotators {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                md(&a.name),
                a.labels,
                a.left_share.map(pct).unwrap_or_else(|| "–".into()),
                a.with_majority.map(pct).unwrap_or_else(|| "–".into()),
            );
        }
        s.push_str("\n## Agreement and position bias\n\n");
        let ag = &st.agreement;
        match ag.percent {
            Some(p) => {
                let _ = writeln!(
                    s,
                    "On {} pairs judged by more than one annotator ({} comparisons): {} \
                     agreement{}{}.\n",
                    ag.pairs,
                    ag.comparisons,
                    pct(p),
                    ag.kappa
                        .map(|k| format!(", Cohen's kappa {k:.2}"))
                        .unwrap_or_default(),
                    ag.alpha
                        .map(|a| format!(", Krippendorff's alpha {a:.2}"))
                        .unwrap_or_default()
                );
            }
            None => s.push_str("No pair was judged by more than one annotator.\n\n"),
        }
        let b = &st.position_bias;
        match b.left_share {
            Some(l) => {
                let _ = writeln!(
                    s,
                    "Of {} decisive judgements, the response shown on the left won {} \
                     (50% means no position bias).\n",
                    b.decisive,
                    pct(l)
                );
            }
            None => s.push_str("No decisive judgements yet: no position bias to report.\n\n"),
        }
        s.push_str("## Formats\n\n");
        s.push_str(
            "- `trl`: `{prompt, chosen, rejected}` JSON Lines (`margin` where judgements had a strength), TRL's preference form.\n\
             - `parquet`: the same rows as Parquet.\n\
             - `kto`: `{prompt, completion, label}` JSON Lines, TRL's unpaired form: a decisive judgement gives a desirable and an undesirable completion, both-bad two undesirable ones; ties are left out.\n\
             - `trl-conversational`, `csv`, `raw` (every judgement as recorded) and `pairs` (as `duel import` reads).\n\n",
        );
        s.push_str("## Licence\n\nNot set: fill in `license` above with the terms of the prompts and responses (their sources' and the annotators').\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_escape_keeps_data_inert() {
        assert_eq!(md("a|b"), "a\\|b");
        assert_eq!(md("<script>"), "\\<script\\>");
        assert_eq!(md("x\u{1b}[31my\n---"), "x\\[31my ---");
        assert_eq!(md("\u{202e}evil"), "evil");
    }

    #[test]
    fn loss_curve_averages_stretches() {
        let losses: Vec<f64> = (1..=10).map(f64::from).collect();
        let c = loss_curve(&losses, 5);
        assert_eq!(c.len(), 5);
        assert_eq!(c[0], (1, 2, 1.5));
        assert_eq!(c[4], (9, 10, 9.5));
        let c = loss_curve(&[1.0, f64::NAN, 3.0], 10);
        assert_eq!(c, vec![(1, 1, 1.0), (3, 3, 3.0)]);
    }
}
