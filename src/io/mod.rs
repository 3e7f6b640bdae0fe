//! Files in and out: import (formats, validation) and export (trl, csv, raw).

pub mod export;
pub mod import;
