//! `duel bench import`: import speed and the next-pair time at scale.

use crate::cli::BenchFile;
use crate::io::import::{ImportOptions, import_file};
use crate::store::{QueueOrder, QueueWalk, Store};
use anyhow::Result;
use std::io::Write;
use std::process::ExitCode;

pub(super) fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Pair `i` of the synthetic file: realistic shapes, a prompt shared by a few
/// pairs, responses of a few hundred bytes with escapes and non-ASCII text.
pub(super) fn bench_pair(i: u64) -> [String; 4] {
    [
        format!("bench-{i}"),
        format!(
            "Question {}: explain how a heat pump moves heat from a cold place to a warm one, in plain words.",
            i / 4
        ),
        format!(
            "Answer {i}. A heat pump uses a refrigerant that evaporates at low temperature, absorbing heat outside; a compressor raises its pressure and temperature, and it releases that heat indoors as it condenses. \"Efficiency\" is measured as COP — often 3 or more.\n"
        ),
        format!(
            "Reply {i}: it works like a fridge in reverse. It pulls warmth from outdoor air (even at −10 °C) and pumps it inside; the electricity runs the compressor, not a heater.\n"
        ),
    ]
}

const BENCH_COLUMNS: [&str; 4] = ["id", "prompt", "response_a", "response_b"];

/// Writes the synthetic file of `pairs` pairs in `form` to `file`.
pub(super) fn write_bench_file(file: &std::path::Path, pairs: u64, form: BenchFile) -> Result<()> {
    let out = std::io::BufWriter::new(std::fs::File::create(file)?);
    match form {
        BenchFile::Parquet => {
            let mut w = crate::io::parquet::TableWriter::new(out, &BENCH_COLUMNS, None)?;
            for i in 0..pairs {
                let p = bench_pair(i);
                w.push(&[&p[0], &p[1], &p[2], &p[3]], None)?;
            }
            w.finish()?.flush()?;
        }
        BenchFile::Jsonl | BenchFile::JsonlGz => {
            let mut w: Box<dyn Write> = if form == BenchFile::JsonlGz {
                Box::new(flate2::write::GzEncoder::new(
                    out,
                    flate2::Compression::default(),
                ))
            } else {
                Box::new(out)
            };
            for i in 0..pairs {
                let p = bench_pair(i);
                let rec: serde_json::Map<String, serde_json::Value> = BENCH_COLUMNS
                    .iter()
                    .zip(p)
                    .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v)))
                    .collect();
                serde_json::to_writer(&mut w, &rec)?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
        }
    }
    Ok(())
}

/// Imports `pairs` synthetic pairs from a file in `form` into a new SQLite file, or
/// into `db` when it names an empty PostgreSQL database, and times the import and
/// the next-pair claims.
pub(super) fn bench_import(
    pairs: u64,
    form: BenchFile,
    json: bool,
    db: &std::path::Path,
) -> Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let name = match form {
        BenchFile::Jsonl => "pairs.jsonl",
        BenchFile::JsonlGz => "pairs.jsonl.gz",
        BenchFile::Parquet => "pairs.parquet",
    };
    let file = dir.path().join(name);
    write_bench_file(&file, pairs, form)?;
    let bytes = std::fs::metadata(&file)?.len();
    // Parsing alone (one thread), to see how the time splits.
    let parse_start = std::time::Instant::now();
    {
        let mut n = 0u64;
        let r = std::io::BufReader::new(std::fs::File::open(&file)?);
        let mut count = |_: u64, p: Result<crate::store::NewPair, _>| {
            if let Ok(p) = p {
                std::hint::black_box(crate::store::PairDigests::of(&p));
            }
            n += 1;
            Ok(())
        };
        match form {
            BenchFile::Jsonl => crate::io::import::read_records(
                r,
                crate::io::import::Format::Jsonl,
                usize::MAX,
                &mut count,
            ),
            BenchFile::JsonlGz => crate::io::import::read_records(
                std::io::BufReader::new(flate2::bufread::MultiGzDecoder::new(r)),
                crate::io::import::Format::Jsonl,
                usize::MAX,
                &mut count,
            ),
            BenchFile::Parquet => crate::io::parquet::read_rows(
                std::fs::File::open(&file)?,
                usize::MAX,
                &indicatif::ProgressBar::hidden(),
                &mut count,
            ),
        }
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let parse_secs = parse_start.elapsed().as_secs_f64();
    // The reader's memory (and the writer's before it), before the database has any.
    let parse_rss = peak_rss_mb();
    let mut store = if crate::store::is_postgres_url(db) {
        let s = Store::open(db)?;
        if s.pair_count()? > 0 {
            anyhow::bail!(super::BadInput(format!(
                "{}: bench import needs an empty database",
                s.path().display()
            )));
        }
        s
    } else {
        Store::open(&dir.path().join("bench.db"))?
    };
    let start = std::time::Instant::now();
    let report = import_file(&mut store, &file, &ImportOptions::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let secs = start.elapsed().as_secs_f64();
    // What a labeler waits for between two pairs at this size: a claim in each order.
    let mut claim_ms = serde_json::Map::new();
    for order in [
        QueueOrder::Sequential,
        QueueOrder::Random,
        QueueOrder::Uncertain,
        QueueOrder::Disagreement,
    ] {
        let ms = median_claim_ms(&mut store, &format!("bench-{}", order.as_str()), 1, order)?;
        claim_ms.insert(order.as_str().into(), serde_json::json!(ms));
    }
    // The disagreement order goes over judged pairs: judge up to 100,000 (once each,
    // half A and half B), then claim with overlap 2 as a second annotator would.
    let judged = store.judge_for_bench()?;
    let ms = median_claim_ms(&mut store, "bench-second", 2, QueueOrder::Disagreement)?;
    claim_ms.insert(
        format!("disagreement, {judged} judged, overlap 2"),
        serde_json::json!(ms),
    );
    let result = serde_json::json!({
        "engine": if store.is_postgres() { "postgres" } else { "sqlite" },
        "file": name,
        "pairs": report.inserted,
        "claim_ms": claim_ms,
        "file_mb": bytes as f64 / 1e6,
        "seconds": secs,
        "import_pairs_per_s": report.inserted as f64 / secs,
        "peak_rss_mb": peak_rss_mb(),
        "parse_only_pairs_per_s": pairs as f64 / parse_secs,
        "parse_only_peak_rss_mb": parse_rss,
    });
    if json {
        println!("{result}");
    } else {
        println!(
            "imported {} pairs ({:.0} MB) in {:.2} s: {:.0} pairs/s, peak RSS {:.0} MB",
            report.inserted,
            bytes as f64 / 1e6,
            secs,
            report.inserted as f64 / secs,
            peak_rss_mb().unwrap_or(f64::NAN)
        );
        println!("next pair (median ms a claim): {}", result["claim_ms"]);
    }
    Ok(ExitCode::SUCCESS)
}

/// The median of 9 claims by `annotator` in `order`, in milliseconds, each one
/// judging the pair before (as a labeler does) so that the walk goes on.
pub(super) fn median_claim_ms(
    store: &mut Store,
    annotator: &str,
    overlap: u32,
    order: QueueOrder,
) -> Result<f64> {
    let none = std::collections::HashSet::new();
    let mut times = Vec::new();
    let mut walk = QueueWalk::new(7);
    for _ in 0..9 {
        let t = std::time::Instant::now();
        let id =
            store.claim_next_in_order(annotator, annotator, overlap, &none, order, &mut walk)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let Some(id) = id else { break };
        store.record_label(&crate::domain::NewLabel::plain(
            id,
            annotator,
            crate::domain::Choice::A,
            "bench",
        ))?;
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}
