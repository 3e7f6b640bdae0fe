//! A check of a GGUF file's layout, run before candle reads it.
//!
//! candle's reader bounds most lengths by the file's size, but a few numbers a file
//! chooses still reach arithmetic that panics: an alignment of 0 (a division), tensor
//! dimensions whose product overflows. This walks the header without keeping it
//! (nothing is allocated from a count the file gives), and checks that every length
//! fits in the file, the alignment is a power of two, every tensor has a known type,
//! whole blocks and at most four dimensions, and its data lies inside the file.

use std::io::{BufRead, BufReader, Read, Seek};
use std::path::Path;

/// One tensor of the file, as its header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (columns).
    pub dims: Vec<u64>,
    pub dtype: u32,
    pub bytes: u64,
}

/// What the walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub version: u32,
    pub metadata_entries: u64,
    pub tensors: Vec<TensorEntry>,
    pub alignment: u64,
    pub data_offset: u64,
    pub file_len: u64,
}

/// Elements a block and bytes a block of each ggml type candle reads.
pub fn block_layout(dtype: u32) -> Option<(u64, u64)> {
    Some(match dtype {
        0 => (1, 4),      // F32
        1 | 30 => (1, 2), // F16, BF16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        _ => return None,
    })
}

/// Value types: fixed sizes, or `None` for strings and arrays.
fn value_size(t: u32) -> Result<Option<u64>, String> {
    Ok(match t {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        8 | 9 => None,
        other => return Err(format!("unknown metadata value type {other}")),
    })
}

const DEFAULT_ALIGNMENT: u64 = 32;
/// Nested arrays deeper than this are refused (the generator reads none).
const MAX_DEPTH: usize = 4;
/// Longest key or tensor name kept for messages; longer ones are refused.
const MAX_NAME: u64 = 64 << 10;

struct Walker<R> {
    r: R,
    pos: u64,
    len: u64,
    /// 4 for GGUF v1 lengths, 8 after.
    len_size: u64,
}

impl<R: BufRead + Seek> Walker<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn need(&self, n: u64, what: &str) -> Result<(), String> {
        if n > self.remaining() {
            return Err(format!(
                "{what} needs {n} bytes at offset {}, but the file ends {} bytes later",
                self.pos,
                self.remaining()
            ));
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        self.need(N as u64, what)?;
        let mut b = [0u8; N];
        self.r
            .read_exact(&mut b)
            .map_err(|e| format!("{what}: {e}"))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes::<4>(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes::<8>(what)?))
    }

    fn length(&mut self, what: &str) -> Result<u64, String> {
        if self.len_size == 4 {
            Ok(u64::from(self.u32(what)?))
        } else {
            self.u64(what)
        }
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), String> {
        self.need(n, what)?;
        let n_i64 = i64::try_from(n).map_err(|_| format!("{what}: length {n}"))?;
        self.r
            .seek_relative(n_i64)
            .map_err(|e| format!("{what}: {e}"))?;
        self.pos += n;
        Ok(())
    }

    /// A string short enough to name something; longer ones are refused.
    fn name(&mut self, what: &str) -> Result<String, String> {
        let n = self.length(what)?;
        if n > MAX_NAME {
            return Err(format!("{what} is {n} bytes long"));
        }
        self.need(n, what)?;
        let mut v = Vec::with_capacity(n as usize);
        (&mut self.r)
            .take(n)
            .read_to_end(&mut v)
            .map_err(|e| format!("{what}: {e}"))?;
        self.pos += n;
        Ok(String::from_utf8_lossy(&v).into_owned())
    }

    /// Skips a value of type `t`; returns it when it is an integer of up to 32 bits
    /// (as candle reads `general.alignment`), as i64.
    fn value(&mut self, t: u32, depth: usize, key: &str) -> Result<Option<i64>, String> {
        let what = || format!("metadata `{}`", key.escape_debug());
        match (t, value_size(t).map_err(|e| format!("{}: {e}", what()))?) {
            (0, _) => Ok(Some(i64::from(self.bytes::<1>(&what())?[0]))),
            (1, _) => Ok(Some(i64::from(i8::from_le_bytes(
                self.bytes::<1>(&what())?,
            )))),
            (2, _) => Ok(Some(i64::from(u16::from_le_bytes(
                self.bytes::<2>(&what())?,
            )))),
            (3, _) => Ok(Some(i64::from(i16::from_le_bytes(
                self.bytes::<2>(&what())?,
            )))),
            (4, _) => Ok(Some(i64::from(self.u32(&what())?))),
            (5, _) => Ok(Some(i64::from(i32::from_le_bytes(
                self.bytes::<4>(&what())?,
            )))),
            (_, Some(n)) => self.skip(n, &what()).map(|()| None),
            (8, None) => {
                let n = self.length(&what())?;
                self.skip(n, &what()).map(|()| None)
            }
            (_, None) => {
                if depth >= MAX_DEPTH {
                    return Err(format!("{}: arrays nested too deep", what()));
                }
                let elem = self.u32(&what())?;
                let count = self.length(&what())?;
                match value_size(elem).map_err(|e| format!("{}: {e}", what()))? {
                    Some(size) => {
                        let total = count
                            .checked_mul(size)
                            .ok_or_else(|| format!("{}: {count} elements", what()))?;
                        self.skip(total, &what())?;
                    }
                    None => {
                        // Each element takes at least its length prefix: a count the
                        // file cannot hold is refused before the loop.
                        let least = count.saturating_mul(self.len_size);
                        self.need(least, &what())?;
                        for _ in 0..count {
                            self.value(elem, depth + 1, key)?;
                        }
                    }
                }
                Ok(None)
            }
        }
    }
}

/// Walks the header of the GGUF file at `path`. The error says what is wrong and
/// where (a metadata key, a tensor, a byte offset).
pub fn check(path: &Path) -> Result<Layout, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    check_reader(BufReader::new(file), len)
}

/// `check` over any reader of `len` bytes.
pub fn check_reader(r: impl BufRead + Seek, len: u64) -> Result<Layout, String> {
    let mut w = Walker {
        r,
        pos: 0,
        len,
        len_size: 8,
    };
    let magic = w.bytes::<4>("the magic number")?;
    if &magic != b"GGUF" {
        return Err("not a GGUF file (no `GGUF` magic number)".into());
    }
    let version = w.u32("the version")?;
    match version {
        1 => w.len_size = 4,
        2 | 3 => {}
        v => return Err(format!("GGUF version {v} is not supported (1 to 3)")),
    }
    let tensor_count = w.length("the tensor count")?;
    let metadata_entries = w.length("the metadata count")?;
    // A key/value takes at least a length, a type and a byte; a tensor a name
    // length, a dimension count, a type and an offset.
    let least = metadata_entries
        .saturating_mul(w.len_size + 5)
        .saturating_add(tensor_count.saturating_mul(w.len_size + 16));
    w.need(least, "the header's counts")?;
    let mut alignment = DEFAULT_ALIGNMENT;
    for _ in 0..metadata_entries {
        let key = w.name("a metadata key")?;
        let t = w.u32(&format!("metadata `{}`", key.escape_debug()))?;
        let v = w.value(t, 0, &key)?;
        // candle takes an integer of up to 32 bits that is not negative, and the
        // default otherwise; the same rule here, so both place the data alike.
        if key == "general.alignment"
            && let Some(a) = v.filter(|&a| a >= 0)
        {
            if a == 0 || !(a as u64).is_power_of_two() {
                return Err(format!(
                    "metadata `general.alignment`: {a} is not a power of two"
                ));
            }
            alignment = a as u64;
        }
    }
    let mut tensors = Vec::new();
    let mut places = Vec::new();
    for _ in 0..tensor_count {
        let name = w.name("a tensor name")?;
        let at = |msg: String| format!("tensor `{}`: {msg}", name.escape_debug());
        let n_dims = w.u32(&at("its dimension count".into()))?;
        if n_dims == 0 || n_dims > 4 {
            return Err(at(format!("{n_dims} dimensions (1 to 4)")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(w.length(&at("its dimensions".into()))?);
        }
        let dtype = w.u32(&at("its type".into()))?;
        let offset = w.u64(&at("its offset".into()))?;
        let (block, size) =
            block_layout(dtype).ok_or_else(|| at(format!("unknown tensor type {dtype}")))?;
        let elems = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .filter(|&e| e <= i64::MAX as u64)
            .ok_or_else(|| at(format!("dimensions {dims:?} overflow")))?;
        if dims[0] % block != 0 {
            return Err(at(format!(
                "rows of {} elements are not whole blocks of {block}",
                dims[0]
            )));
        }
        let bytes = (elems / block)
            .checked_mul(size)
            .ok_or_else(|| at(format!("dimensions {dims:?} overflow")))?;
        places.push((offset, bytes));
        tensors.push(TensorEntry {
            name,
            dims,
            dtype,
            bytes,
        });
    }
    let data_offset = w.pos.div_ceil(alignment) * alignment;
    for (t, (offset, bytes)) in tensors.iter().zip(places) {
        let end = data_offset
            .checked_add(offset)
            .and_then(|s| s.checked_add(bytes));
        match end {
            Some(end) if end <= len => {}
            _ => {
                return Err(format!(
                    "tensor `{}`: its {bytes} bytes at offset {offset} of the data reach past \
                     the end of the file ({len} bytes); is the file truncated?",
                    t.name.escape_debug()
                ));
            }
        }
    }
    Ok(Layout {
        version,
        metadata_entries,
        tensors,
        alignment,
        data_offset,
        file_len: len,
    })
}
