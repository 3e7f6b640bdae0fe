//! Files in and out: import (formats, validation), export (trl, kto, csv, raw) and
//! Parquet both ways.

pub mod export;
pub mod import;
pub mod parquet;
