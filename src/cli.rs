//! Command-line definitions: one subcommand per verb.

use crate::io::export::ExportFormat;
use crate::io::import::{DEFAULT_MAX_RECORD_BYTES, Format};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "duel",
    version,
    about = "A terminal workbench for preference data"
)]
pub struct Cli {
    /// The database: a SQLite file (created when missing), or a PostgreSQL server
    /// as `postgres://user@host:port/dbname` (libpq's URL form).
    #[arg(long, global = true, env = "DUEL_DB", default_value = "duel.db")]
    pub db: PathBuf,

    /// Threads for model compute (training, scoring); all cores by default.
    #[arg(long, global = true, env = "DUEL_THREADS")]
    pub threads: Option<usize>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or upgrade the database's schema and print its version (every other
    /// command does this too when it opens the database).
    Migrate,
    /// Import pairs from JSON Lines, CSV or Parquet files (JSON Lines and CSV may be gzipped).
    Import(ImportArgs),
    /// Judge pairs in the terminal.
    Label(LabelArgs),
    /// Write the judgements out (TRL JSON Lines, CSV, or every row as recorded).
    Export(ExportArgs),
    /// Counts, rates, position bias and agreement.
    Stats(StatsArgs),
    /// An HTML page (self-contained) with training curves, judgements over time,
    /// agreement and position bias, and each chart as an SVG file.
    Report {
        /// The folder to write `index.html` and the charts to.
        #[arg(long, default_value = "report")]
        out: PathBuf,
    },
    /// Look again at the judgements the reward model most confidently disagrees
    /// with, and relabel them (the earlier judgement stays in the history).
    Review(ReviewArgs),
    /// Generate pairs with the local model: two responses for each prompt of a file.
    Generate(GenerateArgs),
    /// Train the reward model on the judgements in the database.
    Train(TrainArgs),
    /// Held-out accuracy of a reward model on `{prompt, chosen, rejected}` lines.
    Eval(EvalArgs),
    /// A reward for each response of each line, as JSON Lines.
    Score(ScoreArgs),
    /// Measure what users wait on.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Files to import; each is one transaction.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Force the format instead of going by extension (`.parquet`, `.csv`, else JSON Lines;
    /// a trailing `.gz` is looked past, and gzip is known by the file's first bytes).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Import the good records and report the bad ones instead of stopping.
    #[arg(long)]
    pub skip_invalid: bool,
    /// Longest record accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,
    /// The files hold gold pairs: labeled pairs whose answer is known. They are
    /// served among the others (`label --gold-rate`) to check annotators, and never
    /// exported (but in `raw`) or trained on.
    #[arg(long)]
    pub gold: bool,
}

#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Who is judging (recorded with each judgement): `$USER` by default. On
    /// PostgreSQL the annotator is the role that connected, the only name allowed.
    #[arg(long)]
    pub annotator: Option<String>,
    /// Labeling guidelines to show in help (markdown).
    #[arg(long)]
    pub guidelines: Option<PathBuf>,
    /// How many different annotators judge each pair.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub overlap: u32,
    /// Ask how much better after every A/B choice (otherwise only with Shift).
    #[arg(long)]
    pub strength: bool,
    /// Do not capture the mouse (keeps the terminal's own text selection).
    #[arg(long)]
    pub no_mouse: bool,
    /// Seed for the left/right order (random by default).
    #[arg(long, hide = true)]
    pub order_seed: Option<u64>,
    /// In which order pairs are served: by id, at random, the pairs the live model
    /// is least sure of first, or the pairs judgements disagree on first.
    #[arg(long, value_enum, default_value = "sequential")]
    pub order: crate::store::QueueOrder,
    /// With --order uncertain, the share of pairs served at random instead.
    #[arg(long, default_value_t = 0.2)]
    pub random_share: f64,
    /// Share of the pairs served that are gold pairs (`import --gold`), while this
    /// annotator has gold pairs left to judge.
    #[arg(long, default_value_t = 0.05)]
    pub gold_rate: f64,
    /// After each judgement, show what the live model predicted and whether it
    /// agreed (off by default, to avoid biasing the annotator).
    #[arg(long)]
    pub show_model: bool,
    /// Label without training a reward model.
    #[arg(long)]
    pub no_train: bool,
    /// Training pairs needed before training starts.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..))]
    pub min_labels: u64,
    /// Times the live trainer trains on each judgement; once every judgement has
    /// had them it waits for new ones (and leaves the cores to the annotators).
    #[arg(long, default_value_t = crate::train::live::DEFAULT_PASSES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub passes: u32,
    /// The encoder to start from (BERT-family folder).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Learning rate of live training.
    #[arg(long, default_value_t = crate::train::DEFAULT_LR)]
    pub lr: f64,
    /// Longest model input in tokens.
    #[arg(long, default_value_t = 256)]
    pub max_length: usize,
    /// Drive the labeler with these keys instead of a terminal (for scripts and
    /// tests): each character is a key, `<left>`, `<right>`, `<S-left>`, `<enter>`,
    /// `<esc>`, `<bs>`… name others; `@FILE` reads them from a file. Each committed
    /// judgement is printed as a JSON line. Implies --no-train.
    #[arg(long)]
    pub script: Option<String>,
    /// Generate pairs from these prompts in the background whenever fewer than
    /// --low-water pairs are left to judge.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    #[arg(long, default_value_t = 8, requires = "prompts")]
    pub low_water: i64,
    #[command(flatten)]
    pub sampling: GenOptions,
}

#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// Who is reviewing (recorded with each new judgement): `$USER` by default; on
    /// PostgreSQL, the role that connected.
    #[arg(long)]
    pub annotator: Option<String>,
    /// Only this annotator's judgements (default: everyone's).
    #[arg(long)]
    pub of: Option<String>,
    /// Go through the pairs whose judgements disagree instead (no majority first),
    /// with who chose what and the model's view; a judgement made there is an
    /// adjudication: it decides the pair in export and training.
    #[arg(long, conflicts_with = "of")]
    pub contested: bool,
    /// At most this many judgements, the most confident disagreements first.
    #[arg(long, default_value_t = 200)]
    pub limit: usize,
    /// Score the judged pairs with this model first (otherwise the predictions the
    /// live trainer stored are used).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Longest model input in tokens (with --model).
    #[arg(long, default_value_t = 256)]
    pub max_length: usize,
    #[arg(long)]
    pub no_mouse: bool,
    /// Drive the reviewer with these keys instead of a terminal (as `label --script`).
    #[arg(long)]
    pub script: Option<String>,
}

#[derive(Debug, Args, Clone)]
pub struct GenerateArgs {
    /// Prompts: text with one prompt a line, or JSON Lines with `prompt` (a string or
    /// a list of `{role, content}`).
    pub prompts: PathBuf,
    #[command(flatten)]
    pub sampling: GenOptions,
    /// Generate new pairs also for prompts that already have some.
    #[arg(long)]
    pub more: bool,
    /// Stop after this many prompts.
    #[arg(long)]
    pub limit: Option<usize>,
}

/// How responses are sampled (shared by `generate` and `label --prompts`).
#[derive(Debug, Args, Clone)]
pub struct GenOptions {
    /// The GGUF model (llama architecture; default: the bundled SmolLM2).
    #[arg(long)]
    pub generator: Option<PathBuf>,
    /// Longest response in tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature of response A and B (one value for all with
    /// `--strategy seeds` or `system-prompts`).
    #[arg(long, value_delimiter = ',', default_value = "0.7,1.0")]
    pub temperature: Vec<f32>,
    /// Nucleus sampling: keep the most likely tokens up to this probability.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A system prompt (give it twice with `--strategy system-prompts`).
    #[arg(long)]
    pub system: Vec<String>,
    /// What differs between the two responses of a pair.
    #[arg(long, value_enum, default_value = "temperatures")]
    pub strategy: crate::generator::pairs::Strategy,
}

impl GenOptions {
    pub fn plan(&self) -> crate::generator::pairs::PairPlan {
        let mut temperatures = self.temperature.clone();
        if self.strategy != crate::generator::pairs::Strategy::Temperatures {
            temperatures.truncate(1);
        }
        crate::generator::pairs::PairPlan {
            strategy: self.strategy,
            temperatures,
            top_p: self.top_p,
            seed: self.seed,
            systems: self.system.clone(),
            max_new_tokens: self.max_new_tokens,
        }
    }
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value = "trl")]
    pub format: ExportFormat,
    /// Output file (standard output when absent). Written to a temporary file and
    /// renamed, so a failed export leaves no half file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// How `trl`, `trl-conversational`, `parquet`, `kto` and `csv` write a pair several annotators
    /// judged: its strict majority once (contested pairs left out), its unanimous
    /// choice once, or every judgement. `raw` always has every row.
    #[arg(long, value_enum, default_value = "majority")]
    pub consensus: crate::consensus::Rule,
    /// Only this annotator's judgements.
    #[arg(long)]
    pub annotator: Option<String>,
    /// Only judgements made at or after this time (2026-11-28 or RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Also write a dataset card (the Hub's README.md layout) to FILE: counts,
    /// annotators, agreement, position bias, formats; the licence is left to fill in.
    #[arg(long, value_name = "FILE")]
    pub card: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Flag annotators whose accuracy on gold pairs is below this, once they have
    /// judged at least 10.
    #[arg(long, default_value_t = crate::stats::DEFAULT_GOLD_MIN)]
    pub gold_min: f64,
}

#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// Longest input in tokens (prompt cut from the left first).
    #[arg(long, default_value_t = 256)]
    pub max_length: usize,
    /// Pairs per batch.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Linear,
    Constant,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Train live, headless, for a team: hold the database's training lease (wait
    /// for it if a labeler holds it), train as judgements arrive, checkpoint to
    /// `<db>.model/`, evaluate and score the queue like the labeler's trainer, and
    /// stop on Ctrl-C, handing the lease back. Labelers then do no training.
    #[arg(long, conflicts_with_all = ["steps", "epochs", "out", "eval"])]
    pub follow: bool,
    /// With --follow: passes over each judgement, as `duel label --passes`.
    #[arg(long, default_value_t = crate::train::live::DEFAULT_PASSES,
          value_parser = clap::value_parser!(u32).range(1..), requires = "follow")]
    pub passes: u32,
    /// Passes over the training pairs (ignored with --steps).
    #[arg(long, default_value_t = 1, conflicts_with = "steps")]
    pub epochs: u64,
    /// Optimizer steps to run instead of whole epochs.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Where to write the trained model (Hugging Face layout).
    #[arg(long, default_value = "reward-model")]
    pub out: PathBuf,
    /// The model to start from: a BERT-family folder (config.json,
    /// model.safetensors, tokenizer.json) or a checkpoint of ours.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    #[arg(long, default_value_t = crate::train::DEFAULT_LR)]
    pub lr: f64,
    /// The classifier head's learning rate [default: --lr]. The head starts from
    /// random weights and the encoder from trained ones.
    #[arg(long, value_name = "LR")]
    pub head_lr: Option<f64>,
    /// Share of prompts held out for evaluation.
    #[arg(long, default_value_t = 0.15)]
    pub holdout: f64,
    /// Share of the steps spent warming the learning rate up, with the linear
    /// schedule [default: 0.1]. The constant schedule has its own 20 steps.
    #[arg(long)]
    pub warmup: Option<f64>,
    /// Learning-rate schedule: linear (warm-up, then decay to zero at the last
    /// step) or constant (the live trainer's: 20 warm-up steps, then --lr).
    #[arg(long, value_enum, default_value = "linear")]
    pub schedule: Schedule,
    /// Use the strength of judgements as margins in the loss.
    #[arg(long)]
    pub margin: bool,
    /// Reward centering coefficient (0.01 is usual), 0 for none.
    #[arg(long, default_value_t = 0.0)]
    pub center: f64,
    /// Weight of the auxiliary length objective [default: 0, off]: a probe on the
    /// pooled vector learns the log token count of each model input and its error
    /// trains the encoder too, so the reward can weigh length beside content (1 is
    /// the weight measured; it helps where longer answers win, and costs accuracy
    /// where they do not).
    #[arg(long, value_name = "W", allow_negative_numbers = true)]
    pub length_aux: Option<f64>,
    /// Dropout while training: on (the encoder's own rates) or off.
    #[arg(long, value_name = "on|off", default_value = "on", action = clap::ArgAction::Set,
          hide_possible_values = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub dropout: bool,
    /// How a model trained from the base encoder reads its tokens: `cls` (the first
    /// token, as BERT classifiers do) or `mean` (their mean, through one added
    /// encoder layer; the model stays a BertForSequenceClassification). A trained
    /// model, resumed, keeps its own.
    #[arg(long, value_enum, default_value = "cls")]
    pub pooling: crate::train::Pooling,
    /// How the training step multiplies its large matrix products: `f32`, or `bf16`
    /// (inputs rounded to bf16, sums in f32; on CPUs with AVX512-BF16, f32 elsewhere).
    #[arg(long, value_enum, default_value = "f32")]
    pub products: crate::train::Products,
    /// Also measure accuracy on this labeled file after each epoch
    /// (JSON Lines with `prompt`, `chosen`, `rejected`, as `duel eval` reads).
    #[arg(long, value_name = "FILE")]
    pub eval: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LearnArgs {
    /// JSON Lines with `prompt`, `chosen`, `rejected` (any labeled import form).
    pub file: PathBuf,
    /// A set of training options to measure, as `NAME=OPTIONS` with the options of
    /// `duel train` that shape learning (`--lr`, `--head-lr`, `--batch`, `--length-aux`,
    /// `--schedule`, `--warmup`, `--dropout`, `--pooling`, `--center`, `--products`,
    /// `--epochs`); what it
    /// leaves out is the
    /// default. Repeat to compare: each is compared with the first.
    /// [default: `defaults=`]
    #[arg(long = "option", value_name = "NAME=OPTIONS")]
    pub options: Vec<String>,
    /// Folds, split by prompt: each is held out once and the model trained on the rest.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(2..=100))]
    pub folds: u64,
    /// Seeds (head initialisation, batch order, dropout), comma-separated.
    #[arg(long, default_value = "0,1,2", value_delimiter = ',', num_args = 1..)]
    pub seeds: Vec<u64>,
    /// Passes over the training folds, unless an option sets its own.
    #[arg(long, default_value_t = 1)]
    pub epochs: u64,
    /// Use only the first N pairs of the file.
    #[arg(long, value_name = "N")]
    pub pairs: Option<usize>,
    /// Another trainer's predictions of the same folds and seeds, as `NAME=FILE`
    /// (written by `scripts/baseline-learn.py`): reported and compared like an option.
    #[arg(long = "external", value_name = "NAME=FILE")]
    pub externals: Vec<String>,
    /// Print each pair's fold as JSON and train nothing (for another trainer to use
    /// the same folds).
    #[arg(long, conflicts_with_all = ["options", "externals"])]
    pub print_folds: bool,
    #[command(flatten)]
    pub measure: MeasureArgs,
}

/// What `duel bench learn` and `duel bench live` share: the model, the intervals
/// and the output.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// Bootstrap resamples (of prompts) for the 95% intervals.
    #[arg(long, default_value_t = 2000)]
    pub resamples: usize,
    /// The model to start from (default: the bundled encoder).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print a JSON summary instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The file `duel bench import` writes and imports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchFile {
    Jsonl,
    JsonlGz,
    Parquet,
}

/// A queue order that `duel bench live` can simulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SimOrder {
    Sequential,
    Random,
    Uncertain,
}

#[derive(Debug, Args)]
pub struct LiveArgs {
    /// JSON Lines with `prompt`, `chosen`, `rejected` (any labeled import form).
    pub file: PathBuf,
    /// Queue orders to simulate, comma-separated.
    #[arg(long, value_enum, default_value = "sequential", value_delimiter = ',', num_args = 1..)]
    pub orders: Vec<SimOrder>,
    /// Label counts at which the models are measured, comma-separated.
    #[arg(long, default_value = "200,400,800", value_delimiter = ',', num_args = 1..)]
    pub at: Vec<usize>,
    /// Passes of the live trainer over each judgement, comma-separated to compare
    /// [default: the labeler's].
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub passes: Vec<u32>,
    /// Also train `duel train` on the same labels at each count, to compare.
    #[arg(long)]
    pub compare: bool,
    /// Epochs of the compared `duel train` run.
    #[arg(long, default_value_t = 1)]
    pub epochs: u64,
    /// With the uncertain order, the share of pairs served at random instead.
    #[arg(long, default_value_t = 0.2)]
    pub random_share: f64,
    /// Folds, split by prompt: each is the test set once, the rest the pool labeled.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(2..=100))]
    pub folds: u64,
    /// Seeds, comma-separated.
    #[arg(long, default_value = "0", value_delimiter = ',', num_args = 1..)]
    pub seeds: Vec<u64>,
    #[command(flatten)]
    pub measure: MeasureArgs,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// JSON Lines with `prompt`, `chosen`, `rejected` (any import form with a label).
    pub file: PathBuf,
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub args: ModelArgs,
    #[arg(long)]
    pub json: bool,
    /// Also score as the background scorer and `duel review` do (bf16 or 8-bit
    /// products where the CPU has them) and report how far that moves the result.
    #[arg(long)]
    pub fast: bool,
}

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// JSON Lines: `{prompt, response}`, or any pair form of `duel import`.
    pub file: PathBuf,
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub args: ModelArgs,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Reward-model training and scoring speed on the real model.
    Train {
        #[arg(long)]
        model_dir: Option<PathBuf>,
        /// Sequence lengths to time, comma-separated.
        #[arg(long, default_value = "64,128,256", value_delimiter = ',')]
        seq: Vec<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Generation speed: prompt and generated tokens per second on the GGUF model.
    Generate {
        /// The GGUF model (default: the bundled SmolLM2).
        #[arg(long)]
        generator: Option<PathBuf>,
        /// Tokens to generate per run.
        #[arg(long, default_value_t = 128)]
        new_tokens: usize,
        /// JSON Lines whose longest prompt is timed as the long prompt (default: the
        /// demo pairs).
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// How well the reward model learns a labeled file: cross-validation with folds
    /// by prompt, for each set of training options, over several seeds, with
    /// bootstrap intervals.
    Learn(LearnArgs),
    /// The live trainer and the queue orders on a labeled file: simulated labeling
    /// (folds by prompt), the live model measured as labels arrive, against
    /// `duel train` on the same labels.
    Live(LiveArgs),
    /// What the annotator waits for: the real labeler, drawing off screen, on a
    /// database of many pairs with the live trainer and the generator feed running;
    /// keys are timed from sending to the end of the next frame (p50, p99, max) on a
    /// pair with 1 MB responses and on ordinary pairs.
    Ui {
        #[arg(long, default_value_t = 1_000_000)]
        pairs: u64,
        /// Judgement keys sent on ordinary pairs (and up to 100 scrolling keys on the
        /// 1 MB pair before them).
        #[arg(long, default_value_t = 300)]
        keys: usize,
        /// Pause after each key's frame, in milliseconds (a quick annotator's pace).
        #[arg(long, default_value_t = 150)]
        gap_ms: u64,
        /// Without the live trainer.
        #[arg(long)]
        no_train: bool,
        /// Without the generator feed.
        #[arg(long)]
        no_feed: bool,
        #[command(flatten)]
        sampling: GenOptions,
        #[arg(long)]
        json: bool,
    },
    /// Import speed: writes a synthetic file of pairs and imports it into a new
    /// SQLite file, or into the empty PostgreSQL database `--db` names.
    Import {
        #[arg(long, default_value_t = 1_000_000)]
        pairs: u64,
        /// The file's form: JSON Lines, gzipped JSON Lines or Parquet.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: BenchFile,
        #[arg(long)]
        json: bool,
    },
}
