//! `duel`: a terminal workbench for preference data.
//!
//! Pairs go in (`io::import`), annotators judge them in the terminal (`tui`), the
//! judgements live in SQLite (`store`) and come out in the formats the Hugging Face
//! ecosystem reads (`io::export`).

pub mod cards;
pub mod cli;
pub mod commands;
pub mod consensus;
pub mod contain;
pub mod domain;
pub mod fuzzing;
pub mod generator;
pub mod io;
pub mod model;
pub mod priority;
pub mod ratings;
pub mod report;
pub mod stats;
pub mod store;
pub mod train;
pub mod tui;
