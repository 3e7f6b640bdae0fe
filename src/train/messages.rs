//! What the UI and the trainer thread say to each other. No model types here: the
//! UI depends on these messages only.

use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainerCommand {
    LabelsChanged,
    Pause,
    Resume,
    Checkpoint,
    Stop,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrainerState {
    Loading,
    /// Fewer training pairs than needed to start.
    Waiting {
        have: usize,
        need: usize,
    },
    Training,
    /// Every judgement has had its passes; waiting for new ones.
    CaughtUp {
        labels: usize,
    },
    Paused,
    /// This process may not train (an annotator's role on a PostgreSQL server)
    /// and no other process trains yet.
    NoTrainer,
    /// Another process holds the training lease; its model is shown.
    Following {
        holder: String,
        host: Option<String>,
    },
    Stopped,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrainerEvent {
    State(TrainerState),
    /// The step count the run starts from (a resumed checkpoint's).
    Started {
        step: u64,
        resumed_from: Option<PathBuf>,
    },
    Step {
        step: u64,
        loss: f64,
        accuracy: f64,
        pairs_per_s: f64,
        labels_used: usize,
    },
    /// The batch had a non-finite loss or gradient and was skipped.
    Skipped {
        step: u64,
    },
    Eval {
        step: u64,
        accuracy: f64,
        loss: f64,
        pairs: usize,
    },
    Checkpointed {
        step: u64,
        path: PathBuf,
    },
    /// Pairs scored for the queue orders that go by the model.
    Scored {
        step: u64,
        pairs: usize,
    },
    Failed(String),
}
