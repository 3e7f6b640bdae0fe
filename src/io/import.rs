//! `duel import`: JSON Lines, CSV (either gzipped) or Parquet, validated, streamed,
//! one transaction per file.

use crate::domain::{Choice, Message, Prompt, split_at_last_assistant};
use crate::store::{InsertOutcome, NewPair, PairDigests, PairWriter, Store, StoreError};
use serde_json::{Map, Value};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Jsonl,
    Csv,
    Parquet,
}

impl Format {
    /// By extension, a last `.gz` aside: `.csv` is CSV, `.parquet` Parquet, anything
    /// else (`.jsonl`, `.json`, `.ndjson`) JSON Lines. Whether a file is gzipped is
    /// read from its first bytes, not its name.
    pub fn from_path(path: &Path) -> Format {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let lower = name.to_ascii_lowercase();
        let stem = lower.strip_suffix(".gz").unwrap_or(&lower);
        match Path::new(stem).extension().and_then(|e| e.to_str()) {
            Some("csv") => Format::Csv,
            Some("parquet" | "pq") => Format::Parquet,
            _ => Format::Jsonl,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub format: Option<Format>,
    pub skip_invalid: bool,
    /// Longest record accepted, in bytes; longer lines are refused without being
    /// held in memory.
    pub max_record_bytes: usize,
    /// After this many new pairs, a file large next to the database has the unique
    /// indexes on pairs dropped and built again at the end (in the same transaction).
    pub defer_indexes_after: u64,
    /// The records are gold pairs: their labels are known answers, not judgements.
    pub gold: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            format: None,
            skip_invalid: false,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            defer_indexes_after: 10_000,
            gold: false,
        }
    }
}

pub const DEFAULT_MAX_RECORD_BYTES: usize = 4 << 20;

/// What was wrong with one record: the field (when one is to blame) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub field: Option<String>,
    pub message: String,
    /// The record is well formed but cannot be a pair to judge (its two responses
    /// are the same, or its transcripts differ before the last assistant turn).
    /// Published sets hold such records and other tools train on the rest of the
    /// file, so they are skipped with a warning rather than refused.
    pub not_a_pair: bool,
}

impl RecordError {
    pub(crate) fn new(field: Option<&str>, message: impl Into<String>) -> RecordError {
        RecordError {
            field: field.map(str::to_owned),
            message: message.into(),
            not_a_pair: false,
        }
    }
    pub(crate) fn field(field: &str, message: impl Into<String>) -> RecordError {
        Self::new(Some(field), message)
    }
    fn not_a_pair(field: &str, message: impl Into<String>) -> RecordError {
        RecordError {
            not_a_pair: true,
            ..Self::field(field, message)
        }
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Field names can come from a CSV header (data): controls are escaped.
        match &self.field {
            Some(field) => write!(f, "field `{}`: {}", field.escape_debug(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// A bad record, located: by its line in a text file, by its row in a Parquet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub file: PathBuf,
    pub line: u64,
    pub error: RecordError,
    /// `line` counts Parquet rows (from 1), not lines.
    pub row: bool,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.row {
            write!(
                f,
                "{}: row {}: {}",
                self.file.display(),
                self.line,
                self.error
            )
        } else {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.error)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{0} (nothing from this file was imported)")]
    Record(LineError),
    #[error("{file}: {source}")]
    Io { file: PathBuf, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ImportError {
    /// Whether the input, not the program or the disk, is at fault.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ImportError::Record(_) | ImportError::Io { .. })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub file: PathBuf,
    pub records: u64,
    pub inserted: u64,
    pub duplicates: u64,
    pub labeled: u64,
    /// Malformed records left out under `--skip-invalid`.
    pub skipped: Vec<LineError>,
    /// Well-formed records that cannot be a pair, always left out with a warning.
    pub not_pairs: Vec<LineError>,
    /// The unique indexes on pairs were dropped for the import and built again.
    pub rebuilt_indexes: bool,
    /// The import wrote through a rollback journal (see `rollback_journal`).
    pub rollback_journal: bool,
}

/// Imports one file in one transaction: on error, nothing of it is stored.
pub fn import_file(
    store: &mut Store,
    path: &Path,
    opts: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let io_err = |source| ImportError::Io {
        file: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = indicatif::ProgressBar::new(len);
    bar.set_message(path.display().to_string());
    let mut reader = BufReader::with_capacity(1 << 20, bar.wrap_read(file));
    let head = reader.fill_buf().map_err(io_err)?;
    let gzipped = head.starts_with(&GZIP_MAGIC);
    let format = opts
        .format
        .unwrap_or_else(|| match Format::from_path(path) {
            // A Parquet file under another name is still one.
            Format::Jsonl if super::parquet::is_parquet(head) => Format::Parquet,
            f => f,
        });
    let input = match format {
        Format::Parquet if gzipped => {
            return Err(io_err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a gzipped Parquet file: decompress it first (Parquet compresses inside)",
            )));
        }
        Format::Parquet => {
            // The bar counts rows from here (the reader sets the length), not the
            // bytes read to look at the file's start.
            drop(reader);
            bar.set_position(0);
            Input::Parquet(File::open(path).map_err(io_err)?)
        }
        text if gzipped => Input::Text(
            Box::new(BufReader::with_capacity(
                1 << 20,
                flate2::bufread::MultiGzDecoder::new(reader),
            )),
            text,
        ),
        text => Input::Text(Box::new(reader), text),
    };
    let template = match input {
        // Rows, counted by the reader: the file is read by seeking, not in order.
        Input::Parquet(_) => "{msg} [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}",
        Input::Text(..) => "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let source = path.display().to_string();

    // A larger page cache keeps the random-keyed hash indexes in memory while a file
    // streams into a database too large for them to be dropped and built again.
    store.set_cache_kib(IMPORT_CACHE_KIB)?;
    // The writer makes every reference itself (ids from the rows it just inserted),
    // so foreign keys are not checked row by row; they are back on afterwards.
    store.set_foreign_keys(false)?;
    let rollback = rollback_journal(store)?;
    let result = import_in_tx(store, path, opts, input, &source, &bar);
    if rollback {
        // Back to WAL, which the labeler relies on; should this fail, the next
        // `Store::open` sets it again.
        let _ = store.set_wal();
    }
    let _ = store.set_foreign_keys(true);
    let _ = store.set_cache_kib(2000);
    result.map(|report| ImportReport {
        rollback_journal: rollback,
        ..report
    })
}

/// Switches the database to a rollback journal for a first import (one into a
/// database that holds no pairs yet) when no other connection has it open, and says
/// whether it did.
///
/// With a rollback journal, pages past the database's old end (all of a first
/// import) are written once and need no journal. In WAL mode each page is written
/// twice and read once: into the WAL, then back out and into the database by the
/// checkpoint at commit. Measured at 1,000,000 pairs: 1.29–1.51× faster.
/// `synchronous = FULL` holds in both modes, and a crash mid-import leaves a hot
/// journal that SQLite rolls back on the next open, so nothing committed is lost
/// either way.
///
/// The cost: once the import holds its write lock, a rollback journal keeps readers
/// out until it commits, where WAL lets them read. That is why only a first import
/// switches (there is nothing to label or read yet), and only when the database
/// is its own: with a labeler or another reader connected it stays in WAL mode,
/// without waiting for them. A command started meanwhile waits for the import (up
/// to `BUSY_TIMEOUT`) and then says the database is busy.
fn rollback_journal(store: &Store) -> Result<bool, ImportError> {
    Ok(store.holds_no_pairs()? && store.try_rollback_journal())
}

/// The first two bytes of a gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// What an import reads: text (perhaps decompressed on the way) or a Parquet file.
enum Input {
    Text(Box<dyn BufRead + Send>, Format),
    Parquet(File),
}

/// Page cache used while importing, in KiB.
const IMPORT_CACHE_KIB: i64 = 64 * 1024;

/// One parsed record and its line.
type Parsed = (u64, Result<(NewPair, PairDigests), RecordError>);

/// Records travel from the parser thread in batches, so the channel costs little.
const BATCH: usize = 512;

fn import_in_tx(
    store: &mut Store,
    path: &Path,
    opts: &ImportOptions,
    input: Input,
    source: &str,
    bar: &indicatif::ProgressBar,
) -> Result<ImportReport, ImportError> {
    let io_err = |source| ImportError::Io {
        file: path.to_owned(),
        source,
    };
    let mut report = ImportReport {
        file: path.to_owned(),
        ..Default::default()
    };
    let rows = matches!(input, Input::Parquet(_));
    // Parsing and hashing run on a second thread while this one writes.
    store.import(|writer| {
        std::thread::scope(|scope| -> Result<(), ImportError> {
            let (send, recv) = crossbeam_channel::bounded::<Vec<Parsed>>(16);
            let limit = opts.max_record_bytes;
            let parser = scope.spawn(move || -> Result<(), ImportError> {
                let mut batch = Vec::with_capacity(BATCH);
                let mut sink = |line: u64, parsed: Result<NewPair, RecordError>| {
                    batch.push((
                        line,
                        parsed.map(|p| {
                            let d = PairDigests::of(&p);
                            (p, d)
                        }),
                    ));
                    if batch.len() == BATCH
                        && send
                            .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                            .is_err()
                    {
                        // The writer stopped (an error): stop reading.
                        return Err(ImportError::Io {
                            file: PathBuf::new(),
                            source: io::Error::other("import stopped"),
                        });
                    }
                    Ok(())
                };
                match input {
                    Input::Text(reader, format) => read_records(reader, format, limit, &mut sink)?,
                    Input::Parquet(file) => super::parquet::read_rows(file, limit, bar, &mut sink)?,
                }
                if !batch.is_empty() {
                    let _ = send.send(batch);
                }
                Ok(())
            });
            let mut written = Ok(());
            let mut decided = false;
            'outer: for batch in recv.iter() {
                for (line, parsed) in batch {
                    let at = (path, line, rows);
                    if let Err(e) = write_one(writer, &mut report, opts, at, source, parsed) {
                        written = Err(e);
                        break 'outer;
                    }
                    if !decided && report.inserted >= opts.defer_indexes_after {
                        decided = true;
                        if let Err(e) = defer_if_large(writer, &report, bar) {
                            written = Err(e);
                            break 'outer;
                        }
                    }
                }
            }
            drop(recv);
            if written.is_ok() {
                written = writer
                    .finish()
                    .map(|rebuilt| report.rebuilt_indexes = rebuilt)
                    .map_err(ImportError::Store);
            }
            let parsed = parser.join().unwrap_or_else(|_| {
                Err(ImportError::Io {
                    file: PathBuf::new(),
                    source: io::Error::other("the parser thread panicked"),
                })
            });
            written?;
            parsed.map_err(|e| match e {
                ImportError::Io { source, .. } => io_err(source),
                ImportError::Record(located) => ImportError::Record(LineError {
                    file: path.to_owned(),
                    row: rows,
                    ..located
                }),
                other => other,
            })
        })
    })?;
    bar.finish_and_clear();
    Ok(report)
}

/// Drops the unique indexes for the rest of the import when the file promises at
/// least a quarter as many new pairs as are stored: building an index once, by
/// sorting, then costs less than inserting each random key into it.
fn defer_if_large(
    writer: &mut PairWriter<'_, '_, '_>,
    report: &ImportReport,
    // Counts the bytes read from the file, and knows its length.
    bar: &indicatif::ProgressBar,
) -> Result<(), ImportError> {
    let Some(stored) = writer.stored_pairs() else {
        return Ok(());
    };
    let file_len = bar.length().unwrap_or(0);
    let expected = report.inserted as f64 * file_len as f64 / bar.position().max(1) as f64;
    if 4.0 * expected >= stored as f64 {
        writer.defer_indexes()?;
    }
    Ok(())
}

fn write_one(
    writer: &mut PairWriter<'_, '_, '_>,
    report: &mut ImportReport,
    opts: &ImportOptions,
    (path, line, row): (&Path, u64, bool),
    source: &str,
    parsed: Result<(NewPair, PairDigests), RecordError>,
) -> Result<(), ImportError> {
    report.records += 1;
    let outcome = match parsed {
        Err(e) => Err(e),
        Ok((mut pair, digests)) => {
            pair.source = Some(source.to_owned());
            pair.gold = opts.gold;
            match writer.insert_with(&pair, &digests) {
                Ok(o) => Ok((o, pair.label.is_some())),
                // A gold record without an answer, or for a pair stored to label.
                Err(StoreError::Gold(msg) | StoreError::Unstorable(msg)) => {
                    Err(RecordError::new(None, msg))
                }
                // A clash of ids is the record's fault; anything else (disk full, a
                // read-only file) stops the import whatever --skip-invalid says.
                Err(StoreError::Invalid(msg)) => Err(RecordError::field("id", msg)),
                Err(e) => return Err(ImportError::Store(e)),
            }
        }
    };
    match outcome {
        Ok((InsertOutcome::Inserted(_), labeled)) => {
            report.inserted += 1;
            report.labeled += u64::from(labeled);
        }
        Ok((InsertOutcome::Duplicate(_), _)) => report.duplicates += 1,
        Err(error) => {
            let located = LineError {
                file: path.to_owned(),
                line,
                error,
                row,
            };
            if located.error.not_a_pair {
                report.not_pairs.push(located);
                return Ok(());
            }
            if !opts.skip_invalid {
                return Err(ImportError::Record(located));
            }
            report.skipped.push(located);
        }
    }
    Ok(())
}

enum Line {
    Eof,
    Ok,
    TooLong(usize),
}

/// Reads one line into `buf` (without the `\n`), refusing to hold more than `limit`
/// bytes: a longer line is consumed and reported with its length.
fn read_line_limited(r: &mut impl BufRead, buf: &mut Vec<u8>, limit: usize) -> io::Result<Line> {
    buf.clear();
    let mut total = 0usize;
    let mut any = false;
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            break;
        }
        any = true;
        let (chunk, done) = match memchr(b'\n', available) {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        total += chunk.len();
        if total <= limit {
            buf.extend_from_slice(chunk);
        }
        let used = done.unwrap_or(available.len());
        r.consume(used);
        if done.is_some() {
            break;
        }
    }
    if !any {
        return Ok(Line::Eof);
    }
    if total > limit {
        buf.clear();
        return Ok(Line::TooLong(total));
    }
    Ok(Line::Ok)
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

pub(crate) fn too_long(len: usize, limit: usize) -> RecordError {
    RecordError::new(
        None,
        format!(
            "record is {len} bytes, over the limit of {limit} (raise it with --max-record-bytes)"
        ),
    )
}

fn read_jsonl(
    mut r: impl BufRead,
    limit: usize,
    handle: &mut impl FnMut(u64, Result<NewPair, RecordError>) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    let mut buf = Vec::with_capacity(4096);
    let mut line_no = 0u64;
    loop {
        let got = read_line_limited(&mut r, &mut buf, limit).map_err(|source| ImportError::Io {
            file: PathBuf::new(),
            source,
        })?;
        line_no += 1;
        let mut bytes: &[u8] = match got {
            Line::Eof => return Ok(()),
            Line::TooLong(len) => {
                handle(line_no, Err(too_long(len, limit)))?;
                continue;
            }
            Line::Ok => &buf,
        };
        if line_no == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        handle(line_no, parse_json_line(bytes))?;
    }
}

/// Reads every record of `r` as `format`, handing each to `handle` with its line
/// (a record over `limit` bytes is an error, not read into memory). The importer's
/// reader, without a store: what the fuzz tests drive.
pub fn read_records(
    r: impl BufRead,
    format: Format,
    limit: usize,
    handle: &mut impl FnMut(u64, Result<NewPair, RecordError>) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    match format {
        Format::Jsonl => read_jsonl(r, limit, handle),
        Format::Csv => read_csv(r, limit, handle),
        Format::Parquet => Err(ImportError::Io {
            file: PathBuf::new(),
            source: io::Error::other("Parquet is read from a file, not a stream"),
        }),
    }
}

/// Parses one JSON Lines record.
pub fn parse_json_line(bytes: &[u8]) -> Result<NewPair, RecordError> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(RecordError::new(
            None,
            format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1),
        ));
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| RecordError::new(None, format!("invalid JSON: {e}")))?;
    match value {
        Value::Object(map) => parse_map(map),
        other => Err(RecordError::new(
            None,
            format!("expected a JSON object, found {}", type_name(&other)),
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

const KNOWN: [&str; 7] = [
    "prompt",
    "response_a",
    "response_b",
    "chosen",
    "rejected",
    "id",
    "meta",
];

/// Turns one record (from JSON, CSV or a Parquet row) into a pair.
pub(crate) fn parse_map(mut map: Map<String, Value>) -> Result<NewPair, RecordError> {
    let has = |m: &Map<String, Value>, k: &str| m.contains_key(k);
    let unlabeled = has(&map, "response_a") || has(&map, "response_b");
    let labeled = has(&map, "chosen") || has(&map, "rejected");
    let mut pair = match (unlabeled, labeled) {
        (true, true) => {
            return Err(RecordError::new(
                None,
                "has both response_a/response_b and chosen/rejected; use one form",
            ));
        }
        (false, false) => {
            return Err(RecordError::new(
                None,
                "missing fields: expected `prompt`, `response_a`, `response_b` \
                 or `chosen`, `rejected` (and optionally `prompt`)",
            ));
        }
        (true, false) => {
            let prompt = prompt_field(map.remove("prompt"))?;
            let a = text_field(&mut map, "response_a")?;
            let b = text_field(&mut map, "response_b")?;
            NewPair::new(prompt, a, b)
        }
        (false, true) => labeled_record(&mut map)?,
    };
    if pair.response_a == pair.response_b {
        let field = if pair.label.is_some() {
            "rejected"
        } else {
            "response_b"
        };
        return Err(RecordError::not_a_pair(
            field,
            "identical to the other response",
        ));
    }
    pair.ext_id = match map.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(RecordError::field("id", "empty"));
        }
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(RecordError::field(
                "id",
                format!("expected a string or a number, found {}", type_name(&other)),
            ));
        }
    };
    pair.meta = map.remove("meta").filter(|v| !v.is_null());
    map.retain(|k, _| !KNOWN.contains(&k.as_str()));
    if !map.is_empty() {
        pair.extra = Some(Value::Object(map));
    }
    Ok(pair)
}

fn labeled_record(map: &mut Map<String, Value>) -> Result<NewPair, RecordError> {
    let chosen = map
        .remove("chosen")
        .ok_or_else(|| RecordError::field("chosen", "missing"))?;
    let rejected = map
        .remove("rejected")
        .ok_or_else(|| RecordError::field("rejected", "missing"))?;
    let (prompt, c, r) = match map.remove("prompt") {
        Some(p) if !p.is_null() => {
            let prompt = prompt_field(Some(p))?;
            (
                prompt,
                response_value(chosen, "chosen")?,
                response_value(rejected, "rejected")?,
            )
        }
        _ => implicit(chosen, rejected)?,
    };
    let mut pair = NewPair::new(prompt, c, r);
    pair.label = Some(Choice::A);
    Ok(pair)
}

/// `{chosen, rejected}` holding whole transcripts: the prompt is what they share.
fn implicit(chosen: Value, rejected: Value) -> Result<(Prompt, String, String), RecordError> {
    match (chosen, rejected) {
        (Value::String(c), Value::String(r)) => {
            let c = normalize(c);
            let r = normalize(r);
            let (pc, rc) = split_at_last_assistant(&c).ok_or_else(|| {
                RecordError::field(
                    "chosen",
                    "no `prompt` field and no \"\\n\\nAssistant:\" turn to split the prompt from",
                )
            })?;
            let (pr, rr) = split_at_last_assistant(&r).ok_or_else(|| {
                RecordError::field("rejected", "no \"\\n\\nAssistant:\" turn to split at")
            })?;
            if pc != pr {
                return Err(RecordError::not_a_pair(
                    "rejected",
                    "its conversation before the last assistant turn differs from `chosen`'s",
                ));
            }
            let prompt = Prompt::from_text(pc.to_owned());
            check_nonempty("prompt", &prompt.text)?;
            Ok((prompt, rc.to_owned(), rr.to_owned()))
        }
        (Value::Array(c), Value::Array(r)) => {
            let mut c = messages("chosen", c)?;
            let mut r = messages("rejected", r)?;
            let last_c = c.pop().filter(|m| m.role == "assistant").ok_or_else(|| {
                RecordError::field("chosen", "the last message must be the assistant's")
            })?;
            let last_r = r.pop().filter(|m| m.role == "assistant").ok_or_else(|| {
                RecordError::field("rejected", "the last message must be the assistant's")
            })?;
            if c != r {
                return Err(RecordError::not_a_pair(
                    "rejected",
                    "its messages before the last differ from `chosen`'s",
                ));
            }
            if c.iter().all(|m| m.content.trim().is_empty()) {
                return Err(RecordError::field(
                    "chosen",
                    "no messages before the response",
                ));
            }
            Ok((Prompt::from_messages(c), last_c.content, last_r.content))
        }
        (c, r) => Err(RecordError::field(
            if matches!(c, Value::String(_) | Value::Array(_)) {
                "rejected"
            } else {
                "chosen"
            },
            format!(
                "expected two strings or two message lists, found {} and {}",
                type_name(&c),
                type_name(&r)
            ),
        )),
    }
}

fn normalize(s: String) -> String {
    if s.contains('\r') {
        s.replace("\r\n", "\n")
    } else {
        s
    }
}

fn check_nonempty(field: &str, s: &str) -> Result<(), RecordError> {
    if s.trim().is_empty() {
        Err(RecordError::field(field, "empty"))
    } else {
        Ok(())
    }
}

fn text_field(map: &mut Map<String, Value>, field: &str) -> Result<String, RecordError> {
    match map.remove(field) {
        None | Some(Value::Null) => Err(RecordError::field(field, "missing")),
        Some(v) => response_value(v, field),
    }
}

/// A response: a string, or a list holding one assistant message (TRL's
/// conversational form). An empty response is a real one (staying silent can be the
/// better answer), so it is kept.
fn response_value(v: Value, field: &str) -> Result<String, RecordError> {
    let s = match v {
        Value::String(s) => normalize(s),
        Value::Array(items) => {
            let mut msgs = messages(field, items)?;
            if msgs.len() != 1 || msgs[0].role != "assistant" {
                return Err(RecordError::field(
                    field,
                    "a message list here must hold exactly one assistant message",
                ));
            }
            msgs.remove(0).content
        }
        other => {
            return Err(RecordError::field(
                field,
                format!("expected a string, found {}", type_name(&other)),
            ));
        }
    };
    Ok(s)
}

fn prompt_field(v: Option<Value>) -> Result<Prompt, RecordError> {
    match v {
        None | Some(Value::Null) => Err(RecordError::field("prompt", "missing")),
        Some(Value::String(s)) => {
            check_nonempty("prompt", &s)?;
            Ok(Prompt::from_text(normalize(s)))
        }
        Some(Value::Array(items)) => {
            let msgs = messages("prompt", items)?;
            if msgs.iter().all(|m| m.content.trim().is_empty()) {
                return Err(RecordError::field("prompt", "empty conversation"));
            }
            Ok(Prompt::from_messages(msgs))
        }
        Some(other) => Err(RecordError::field(
            "prompt",
            format!(
                "expected a string or a list of messages, found {}",
                type_name(&other)
            ),
        )),
    }
}

fn messages(field: &str, items: Vec<Value>) -> Result<Vec<Message>, RecordError> {
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{field}[{i}]");
            let Value::Object(mut m) = item else {
                return Err(RecordError::field(&at, "expected {\"role\", \"content\"}"));
            };
            let role = match m.remove("role") {
                Some(Value::String(r)) if !r.trim().is_empty() => r,
                _ => {
                    return Err(RecordError::field(
                        &format!("{at}.role"),
                        "missing or not a string",
                    ));
                }
            };
            let content = match m.remove("content") {
                Some(Value::String(c)) => normalize(c),
                Some(other) => {
                    return Err(RecordError::field(
                        &format!("{at}.content"),
                        format!("expected a string, found {}", type_name(&other)),
                    ));
                }
                None => return Err(RecordError::field(&format!("{at}.content"), "missing")),
            };
            Ok(Message { role, content })
        })
        .collect()
}

fn read_csv(
    r: impl Read,
    limit: usize,
    handle: &mut impl FnMut(u64, Result<NewPair, RecordError>) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(r);
    let csv_err = |e: csv::Error| -> ImportError {
        let line = e.position().map(|p| p.line()).unwrap_or(0);
        match e.into_kind() {
            csv::ErrorKind::Io(source) => ImportError::Io {
                file: PathBuf::new(),
                source,
            },
            other => ImportError::Record(LineError {
                file: PathBuf::new(),
                line,
                error: RecordError::new(None, format!("CSV: {other:?}")),
                row: false,
            }),
        }
    };
    let headers: Vec<String> = match rdr.byte_headers() {
        Ok(h) => h
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let f = if i == 0 {
                    f.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(f)
                } else {
                    f
                };
                String::from_utf8_lossy(f).trim().to_owned()
            })
            .collect(),
        Err(e) => return Err(csv_err(e)),
    };
    let mut rec = csv::ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) => {
                // A malformed row: report it at its line; the reader resynchronises.
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                if let csv::ErrorKind::Io(_) = e.kind() {
                    return Err(csv_err(e));
                }
                handle(line, Err(RecordError::new(None, format!("CSV: {e}"))))?;
                continue;
            }
        }
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let size = rec.as_slice().len();
        let parsed = if size > limit {
            Err(too_long(size, limit))
        } else {
            csv_record(&headers, &rec)
        };
        handle(line, parsed)?;
    }
}

fn csv_record(headers: &[String], rec: &csv::ByteRecord) -> Result<NewPair, RecordError> {
    if rec.len() != headers.len() {
        return Err(RecordError::new(
            None,
            format!(
                "{} fields where the header has {}",
                rec.len(),
                headers.len()
            ),
        ));
    }
    let mut map = Map::new();
    for (name, raw) in headers.iter().zip(rec.iter()) {
        let text = std::str::from_utf8(raw).map_err(|e| {
            RecordError::field(
                name,
                format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1),
            )
        })?;
        let value = match name.as_str() {
            "meta" if text.is_empty() => Value::Null,
            "meta" => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())),
            "id" if text.is_empty() => Value::Null,
            _ => Value::String(text.into()),
        };
        map.insert(name.clone(), value);
    }
    parse_map(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal_mode(conn: &rusqlite::Connection) -> String {
        conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .expect("journal_mode")
    }

    /// A first import that has the database to itself goes through a rollback
    /// journal; beside another connection (a labeler, a reader) it stays in WAL mode
    /// without waiting, and so does a later import. Either way the database is in
    /// WAL mode afterwards, and every import is whole.
    #[test]
    fn only_a_first_import_alone_leaves_wal_and_it_always_returns_to_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let records = |tag: &str| -> PathBuf {
            let path = dir.path().join(format!("{tag}.jsonl"));
            let lines: String = (0..50)
                .map(|i| {
                    format!(
                        "{{\"prompt\":\"{tag}{i}\",\"response_a\":\"a\",\"response_b\":\"b\"}}\n"
                    )
                })
                .collect();
            std::fs::write(&path, lines).expect("write");
            path
        };
        let pairs = |conn: &rusqlite::Connection| -> i64 {
            conn.query_row("SELECT count(*) FROM pairs", [], |r| r.get(0))
                .expect("count")
        };

        // Beside a reader.
        let db = dir.path().join("beside.db");
        let mut store = Store::open(&db).expect("open");
        let other = rusqlite::Connection::open(&db).expect("second connection");
        assert_eq!(pairs(&other), 0);
        let t = std::time::Instant::now();
        let r = import_file(&mut store, &records("b"), &ImportOptions::default()).expect("import");
        assert!(t.elapsed() < crate::store::BUSY_TIMEOUT, "it waited");
        assert_eq!((r.inserted, r.rollback_journal), (50, false));
        assert_eq!(journal_mode(store.conn()), "wal");
        assert_eq!(pairs(&other), 50);

        // Alone: a first import switches, a later one does not.
        let db = dir.path().join("alone.db");
        let mut store = Store::open(&db).expect("open");
        let r = import_file(&mut store, &records("a"), &ImportOptions::default()).expect("import");
        assert_eq!((r.inserted, r.rollback_journal), (50, true));
        assert_eq!(journal_mode(store.conn()), "wal");
        let r = import_file(&mut store, &records("c"), &ImportOptions::default()).expect("import");
        assert_eq!((r.inserted, r.rollback_journal), (50, false));
        let reopened = rusqlite::Connection::open(&db).expect("reopen");
        assert_eq!(journal_mode(&reopened), "wal", "persisted in the file");
        assert_eq!(pairs(&reopened), 100);
    }

    fn err(line: &str) -> RecordError {
        parse_json_line(line.as_bytes()).expect_err("should be refused")
    }

    #[test]
    fn the_four_record_forms_parse() {
        let p = parse_json_line(
            br#"{"prompt":"q","response_a":"x","response_b":"y","id":7,"meta":{"k":1},"src":"z"}"#,
        )
        .expect("unlabeled");
        assert_eq!((p.prompt.text.as_str(), p.response_a.as_str()), ("q", "x"));
        assert_eq!(p.ext_id.as_deref(), Some("7"));
        assert_eq!(p.meta, Some(serde_json::json!({"k": 1})));
        assert_eq!(p.extra, Some(serde_json::json!({"src": "z"})));
        assert_eq!(p.label, None);

        let p = parse_json_line(br#"{"prompt":"q","chosen":"good","rejected":"bad"}"#)
            .expect("labeled");
        assert_eq!(
            (p.response_a.as_str(), p.response_b.as_str(), p.label),
            ("good", "bad", Some(Choice::A))
        );

        let p = parse_json_line(
            br#"{"chosen":"\n\nHuman: hi\n\nAssistant: hello!","rejected":"\n\nHuman: hi\n\nAssistant: go away"}"#,
        )
        .expect("implicit");
        assert_eq!(p.prompt.text, "\n\nHuman: hi\n\nAssistant:");
        assert_eq!(p.response_a, " hello!");

        let p = parse_json_line(
            br#"{"prompt":[{"role":"user","content":"hi"}],"chosen":[{"role":"assistant","content":"hello"}],"rejected":[{"role":"assistant","content":"bye"}]}"#,
        )
        .expect("conversational");
        assert_eq!(p.prompt.messages.as_ref().map(Vec::len), Some(1));
        assert_eq!(p.response_b, "bye");

        let p = parse_json_line(
            br#"{"chosen":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}],"rejected":[{"role":"user","content":"hi"},{"role":"assistant","content":"bye"}]}"#,
        )
        .expect("implicit conversational");
        assert_eq!(p.prompt.messages.as_ref().map(Vec::len), Some(1));
        assert_eq!(
            (p.response_a.as_str(), p.response_b.as_str()),
            ("hello", "bye")
        );
    }

    #[test]
    fn bad_records_name_the_field() {
        assert_eq!(
            err(r#"{"prompt":"q","response_a":"x"}"#).field.as_deref(),
            Some("response_b")
        );
        assert_eq!(
            err(r#"{"prompt":"  ","response_a":"x","response_b":"y"}"#)
                .field
                .as_deref(),
            Some("prompt")
        );
        // An empty response is a response (published sets hold them).
        let p = parse_json_line(br#"{"prompt":"q","response_a":"","response_b":"y"}"#)
            .expect("an empty response is kept");
        assert_eq!(p.response_a, "");
        let e = err(r#"{"prompt":"q","response_a":5,"response_b":"y"}"#);
        assert_eq!(e.field.as_deref(), Some("response_a"));
        assert!(e.message.contains("found a number"), "{e}");
        assert_eq!(
            err(r#"{"prompt":{},"response_a":"x","response_b":"y"}"#)
                .field
                .as_deref(),
            Some("prompt")
        );
        assert_eq!(
            err(r#"{"prompt":"q","response_a":"x","response_b":"y","id":[1]}"#)
                .field
                .as_deref(),
            Some("id")
        );
        assert_eq!(
            err(r#"{"prompt":[{"role":"user"}],"response_a":"x","response_b":"y"}"#)
                .field
                .as_deref(),
            Some("prompt[0].content")
        );
        let e = err(r#"{"prompt":"q","response_a":"x","response_b":"x"}"#);
        assert_eq!(e.field.as_deref(), Some("response_b"));
        assert!(e.not_a_pair, "identical responses are not a pair to judge");
        assert!(!err(r#"{"prompt":"q","response_a":5,"response_b":"y"}"#).not_a_pair);
        assert!(err(r#"{"prompt":"q"}"#).message.contains("missing fields"));
        assert!(err(r#"[1,2]"#).message.contains("expected a JSON object"));
        assert!(err(r#"{"prompt":"q","#).message.contains("invalid JSON"));
        assert_eq!(
            err(r#"{"chosen":"no turns","rejected":"here"}"#)
                .field
                .as_deref(),
            Some("chosen")
        );
        assert!(
            parse_json_line(b"{\"prompt\":\"q\xff\"}")
                .expect_err("bad utf8")
                .message
                .contains("invalid UTF-8")
        );
    }

    #[test]
    fn crlf_inside_text_becomes_lf() {
        let p = parse_json_line(br#"{"prompt":"a\r\nb","response_a":"x\r\ny","response_b":"z"}"#)
            .expect("ok");
        assert_eq!(
            (p.prompt.text.as_str(), p.response_a.as_str()),
            ("a\nb", "x\ny")
        );
    }

    #[test]
    fn long_lines_are_refused_without_being_held() {
        let data = format!("{}\nshort\n", "x".repeat(100));
        let mut r = io::Cursor::new(data.into_bytes());
        let mut buf = Vec::new();
        assert!(matches!(
            read_line_limited(&mut r, &mut buf, 10).expect("read"),
            Line::TooLong(100)
        ));
        assert!(buf.capacity() < 100);
        assert!(matches!(
            read_line_limited(&mut r, &mut buf, 10).expect("read"),
            Line::Ok
        ));
        assert_eq!(buf, b"short");
        assert!(matches!(
            read_line_limited(&mut r, &mut buf, 10).expect("read"),
            Line::Eof
        ));
    }
}
