//! Parquet in and out: a file's rows as import records (any record form `duel import`
//! reads from JSON Lines, columns as strings or lists of messages), and the `trl`
//! rows written as a file that `datasets` and pyarrow read.
//!
//! The record API of the `parquet` crate is used rather than its Arrow one: rows
//! arrive already nested (a list of `{role, content}` structs is a list of groups),
//! which is the shape the import's record parser takes, and the Arrow crates it would
//! pull in would double what Parquet adds to a build.

use super::import::{ImportError, RecordError, parse_map, too_long};
use crate::store::NewPair;
use parquet::basic::{Compression, Repetition, Type as PhysicalType};
use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{ChunkReader, FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::{Field, Row};
use parquet::schema::types::Type;
use serde_json::{Map, Number, Value};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// Whether `head` (a file's first bytes) starts as a Parquet file does.
pub fn is_parquet(head: &[u8]) -> bool {
    head.starts_with(b"PAR1")
}

fn bad_file(message: String) -> ImportError {
    ImportError::Io {
        file: PathBuf::new(),
        source: io::Error::new(io::ErrorKind::InvalidData, message),
    }
}

/// Reads every row of `file` (a `File`, or bytes in memory), one row group at a
/// time (memory holds one row group's pages, not the file), and hands each to
/// `handle` as a record with its row number (from 1). `progress` counts rows.
///
/// The `parquet` crate panics on some malformed files (a page shorter than its
/// header says); such a panic is contained and the file refused like any other
/// that cannot be read.
pub fn read_rows<R: ChunkReader + 'static>(
    file: R,
    limit: usize,
    progress: &indicatif::ProgressBar,
    handle: &mut impl FnMut(u64, Result<NewPair, RecordError>) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    // The panic's place is inside the crate, of no use to the user: it goes to the log.
    crate::contain::catch(|| read_rows_unguarded(file, limit, progress, handle)).unwrap_or_else(
        |panic| {
            Err(bad_file(format!(
                "not a readable Parquet file: the reader failed ({})",
                panic.message
            )))
        },
    )
}

fn read_rows_unguarded<R: ChunkReader + 'static>(
    file: R,
    limit: usize,
    progress: &indicatif::ProgressBar,
    handle: &mut impl FnMut(u64, Result<NewPair, RecordError>) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    let reader = SerializedFileReader::new(file)
        .map_err(|e| bad_file(format!("not a readable Parquet file: {e}")))?;
    let meta = reader.metadata();
    progress.set_length(meta.file_metadata().num_rows().max(0) as u64);
    let mut row_no = 0u64;
    for g in 0..meta.num_row_groups() {
        let group = reader
            .get_row_group(g)
            .map_err(|e| bad_file(format!("row group {}: {e}", g + 1)))?;
        let rows = group
            .get_row_iter(None)
            .map_err(|e| bad_file(format!("row group {}: {e}", g + 1)))?;
        for row in rows {
            row_no += 1;
            let row = row.map_err(|e| bad_file(format!("row {row_no}: {e}")))?;
            handle(row_no, record(row, limit))?;
            progress.inc(1);
        }
    }
    Ok(())
}

/// One row as an import record.
fn record(row: Row, limit: usize) -> Result<NewPair, RecordError> {
    let mut size = 0usize;
    let mut map = Map::new();
    for (name, field) in row.into_columns() {
        let v = value(&name, field, &mut size)?;
        map.insert(name, v);
    }
    if size > limit {
        return Err(too_long(size, limit));
    }
    parse_map(map)
}

/// A Parquet value as JSON; `size` adds up the text it holds.
fn value(column: &str, field: Field, size: &mut usize) -> Result<Value, RecordError> {
    let number = |f: f64| Number::from_f64(f).map_or(Value::Null, Value::Number);
    Ok(match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(b),
        Field::Byte(n) => Value::from(n),
        Field::Short(n) => Value::from(n),
        Field::Int(n) => Value::from(n),
        Field::Long(n) => Value::from(n),
        Field::UByte(n) => Value::from(n),
        Field::UShort(n) => Value::from(n),
        Field::UInt(n) => Value::from(n),
        Field::ULong(n) => Value::from(n),
        Field::Float16(f) => number(f64::from(f32::from(f))),
        Field::Float(f) => number(f64::from(f)),
        Field::Double(f) => number(f),
        Field::Str(s) => {
            *size += s.len();
            Value::String(s)
        }
        Field::Bytes(b) => {
            *size += b.len();
            match String::from_utf8(b.data().to_vec()) {
                Ok(s) => Value::String(s),
                Err(e) => {
                    return Err(RecordError::field(
                        column,
                        format!(
                            "binary data, not UTF-8 text (invalid at byte {})",
                            e.utf8_error().valid_up_to() + 1
                        ),
                    ));
                }
            }
        }
        Field::Group(row) => {
            let mut map = Map::new();
            for (name, f) in row.into_columns() {
                let v = value(&format!("{column}.{name}"), f, size)?;
                map.insert(name, v);
            }
            Value::Object(map)
        }
        Field::ListInternal(list) => Value::Array(
            list.elements()
                .iter()
                .enumerate()
                .map(|(i, f)| value(&format!("{column}[{i}]"), f.clone(), size))
                .collect::<Result<_, _>>()?,
        ),
        Field::MapInternal(m) => {
            let mut map = Map::new();
            for (k, v) in m.entries() {
                let key = match k {
                    Field::Str(s) => s.clone(),
                    other => other.to_string(),
                };
                let v = value(&format!("{column}.{key}"), v.clone(), size)?;
                map.insert(key, v);
            }
            Value::Object(map)
        }
        // Dates, times and decimals: their text, as pyarrow prints them.
        other @ (Field::Decimal(_)
        | Field::Date(_)
        | Field::TimeMillis(_)
        | Field::TimeMicros(_)
        | Field::TimestampMillis(_)
        | Field::TimestampMicros(_)) => Value::String(other.to_string()),
    })
}

/// Rows buffered before a row group is written: at most this many, or this much text.
const GROUP_ROWS: usize = 50_000;
const GROUP_BYTES: usize = 64 << 20;

/// Writes rows of text columns (and one optional number column) as a Parquet file
/// in row groups, Snappy-compressed as pyarrow writes: the `trl` export's
/// `{prompt, chosen, rejected[, margin]}`, or the pairs `duel bench import` reads.
pub struct TableWriter<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    texts: Vec<Vec<ByteArray>>,
    /// The optional number column's values (where present) and definition levels.
    number: Option<(Vec<f64>, Vec<i16>)>,
    rows: usize,
    bytes: usize,
}

fn string_column(name: &str) -> parquet::errors::Result<Arc<Type>> {
    Ok(Arc::new(
        Type::primitive_type_builder(name, PhysicalType::BYTE_ARRAY)
            .with_repetition(Repetition::REQUIRED)
            .with_logical_type(Some(parquet::basic::LogicalType::String))
            .build()?,
    ))
}

impl<W: Write + Send> TableWriter<W> {
    /// Text columns named `texts`, then a nullable double column named `number`.
    pub fn new(out: W, texts: &[&str], number: Option<&str>) -> parquet::errors::Result<Self> {
        let mut fields = texts
            .iter()
            .map(|n| string_column(n))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(name) = number {
            fields.push(Arc::new(
                Type::primitive_type_builder(name, PhysicalType::DOUBLE)
                    .with_repetition(Repetition::OPTIONAL)
                    .build()?,
            ));
        }
        let schema = Type::group_type_builder("schema")
            .with_fields(fields)
            .build()?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("duel {}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(TableWriter {
            writer: SerializedFileWriter::new(out, Arc::new(schema), Arc::new(props))?,
            texts: vec![Vec::new(); texts.len()],
            number: number.map(|_| (Vec::new(), Vec::new())),
            rows: 0,
            bytes: 0,
        })
    }

    /// One row: a text for each text column, in order, and the number (ignored
    /// without a number column).
    pub fn push(&mut self, texts: &[&str], number: Option<f64>) -> parquet::errors::Result<()> {
        if texts.len() != self.texts.len() {
            return Err(parquet::errors::ParquetError::General(format!(
                "{} texts for {} columns",
                texts.len(),
                self.texts.len()
            )));
        }
        for (column, text) in self.texts.iter_mut().zip(texts) {
            self.bytes += text.len();
            column.push(ByteArray::from(*text));
        }
        if let Some((values, levels)) = &mut self.number {
            levels.push(i16::from(number.is_some()));
            values.extend(number);
        }
        self.rows += 1;
        if self.rows >= GROUP_ROWS || self.bytes >= GROUP_BYTES {
            self.flush_group()?;
        }
        Ok(())
    }

    fn flush_group(&mut self) -> parquet::errors::Result<()> {
        if self.rows == 0 {
            return Ok(());
        }
        let mut group = self.writer.next_row_group()?;
        let mut i = 0;
        while let Some(mut col) = group.next_column()? {
            match (self.texts.get(i), &self.number) {
                (Some(texts), _) => {
                    col.typed::<ByteArrayType>()
                        .write_batch(texts, None, None)?;
                }
                (None, Some((values, levels))) => {
                    col.typed::<DoubleType>()
                        .write_batch(values, Some(levels), None)?;
                }
                (None, None) => {}
            }
            col.close()?;
            i += 1;
        }
        group.close()?;
        self.texts.iter_mut().for_each(Vec::clear);
        if let Some((values, levels)) = &mut self.number {
            values.clear();
            levels.clear();
        }
        self.rows = 0;
        self.bytes = 0;
        Ok(())
    }

    /// Writes the last row group and the footer.
    pub fn finish(mut self) -> parquet::errors::Result<W> {
        self.flush_group()?;
        self.writer.into_inner()
    }
}
