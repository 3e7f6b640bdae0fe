//! The trainer thread: trains on the judgements as they arrive, fed and read only
//! through channels.
//!
//! It opens its own read-only connection to the database, reloads the labels when
//! told they changed, evaluates on held-out prompts, and writes checkpoints
//! atomically. It never blocks the UI: commands are read between steps, and it stops
//! when told to or when the UI's end of the channel is gone.

use super::live::{self, Exposure};
use super::{Encoded, Example, TrainConfig, Trainer, is_heldout};
use crate::model::checkpoint;
use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded, unbounded};
use rusqlite::OpenFlags;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use super::messages::{Command, Event, TrainerState};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub db: PathBuf,
    /// The base encoder folder (config, safetensors, tokenizer).
    pub base_dir: PathBuf,
    /// Where checkpoints go; training resumes from it when it holds one.
    pub out_dir: PathBuf,
    pub train: TrainConfig,
    /// Training pairs needed before the first step.
    pub min_labels: usize,
    pub holdout: f64,
    /// Evaluate on the held-out pairs every this many steps (and at each epoch end).
    pub eval_every: u64,
    pub checkpoint_every: u64,
    /// Pairs scored after each evaluation for the queue orders that go by the model
    /// (`uncertain`, `disagreement`); 0 for none.
    pub score_queue: usize,
    /// Passes over each judgement (`live::Exposure`); the trainer waits once every
    /// judgement has had them.
    pub passes: u32,
}

pub struct Handle {
    pub commands: Sender<Command>,
    pub events: Receiver<Event>,
    thread: Option<JoinHandle<()>>,
}

impl Handle {
    pub fn send(&self, c: Command) {
        let _ = self.commands.send(c);
    }

    /// Asks the thread to stop and waits for it (it finishes its current step and
    /// writes a checkpoint if it trained since the last one).
    pub fn stop(mut self) {
        let _ = self.commands.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn spawn(cfg: WorkerConfig) -> Handle {
    let (ctx, crx) = unbounded();
    // Bounded: if the UI stops reading, the trainer waits rather than piling up.
    let (etx, erx) = bounded(1024);
    let thread = std::thread::Builder::new()
        .name("trainer".into())
        .spawn(move || {
            let events = etx.clone();
            let mut w = Worker {
                cfg,
                commands: crx,
                events: etx,
            };
            let failed = match crate::contain::run("trainer", || {
                crate::contain::fault_point("trainer");
                w.run()
            }) {
                Ok(Ok(())) | Ok(Err(Stop::Gone)) => None,
                Ok(Err(Stop::Failed(msg))) | Err(msg) => Some(msg),
            };
            if let Some(msg) = failed {
                tracing::error!("trainer failed: {msg}");
                // Never block on a full channel while stopping.
                let _ = events.try_send(Event::Failed(msg));
            }
            let _ = events.try_send(Event::State(TrainerState::Stopped));
        })
        .ok();
    Handle {
        commands: ctx,
        events: erx,
        thread,
    }
}

enum Stop {
    /// The UI is gone or asked to stop: not an error.
    Gone,
    Failed(String),
}

impl<E: std::fmt::Display> From<E> for Stop {
    fn from(e: E) -> Stop {
        Stop::Failed(e.to_string())
    }
}

struct Worker {
    cfg: WorkerConfig,
    commands: Receiver<Command>,
    events: Sender<Event>,
}

struct Data {
    train: Vec<Encoded>,
    /// `live::key` of each training pair.
    keys: Vec<u64>,
    held: Vec<Encoded>,
}

/// What the training loop should do after looking at the commands.
enum Next {
    Continue,
    Reload,
}

impl Worker {
    fn emit(&self, e: Event) -> Result<(), Stop> {
        self.events.send(e).map_err(|_| Stop::Gone)
    }

    fn load_examples(&self) -> Result<Vec<Example>, Stop> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.cfg.db,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let store = crate::store::Store::from_readonly(conn, self.cfg.db.clone());
        Ok(super::examples_from_store(&store)?)
    }

    fn load_data(&self, trainer: &Trainer) -> Result<Data, Stop> {
        let (held, train): (Vec<Example>, Vec<Example>) = self
            .load_examples()?
            .into_iter()
            .partition(|e| is_heldout(&e.prompt, self.cfg.holdout));
        Ok(Data {
            keys: train.iter().map(live::key).collect(),
            train: trainer
                .encode(&train)
                .map_err(|e| Stop::Failed(e.to_string()))?,
            held: trainer
                .encode(&held)
                .map_err(|e| Stop::Failed(e.to_string()))?,
        })
    }

    /// Handles queued commands; blocks while paused.
    fn poll(&self, t: &Progress, dirty: &mut bool) -> Result<Next, Stop> {
        let mut next = Next::Continue;
        loop {
            match self.commands.try_recv() {
                Ok(Command::LabelsChanged) => next = Next::Reload,
                Ok(Command::Checkpoint) => self.checkpoint(t, dirty)?,
                Ok(Command::Stop) | Err(TryRecvError::Disconnected) => {
                    self.checkpoint(t, dirty)?;
                    return Err(Stop::Gone);
                }
                Ok(Command::Resume) => {}
                Ok(Command::Pause) => {
                    self.emit(Event::State(TrainerState::Paused))?;
                    loop {
                        match self.commands.recv() {
                            Ok(Command::Resume) => break,
                            Ok(Command::LabelsChanged) => next = Next::Reload,
                            Ok(Command::Checkpoint) => self.checkpoint(t, dirty)?,
                            Ok(Command::Pause) => {}
                            Ok(Command::Stop) | Err(_) => {
                                self.checkpoint(t, dirty)?;
                                return Err(Stop::Gone);
                            }
                        }
                    }
                    self.emit(Event::State(TrainerState::Training))?;
                }
                Err(TryRecvError::Empty) => return Ok(next),
            }
        }
    }

    /// Waits, without spinning, for new labels (or a stop).
    fn wait_for_labels(&self, t: &Progress, dirty: &mut bool) -> Result<(), Stop> {
        loop {
            match self.commands.recv() {
                Ok(Command::LabelsChanged) => return Ok(()),
                Ok(Command::Stop) | Err(_) => {
                    self.checkpoint(t, dirty)?;
                    return Err(Stop::Gone);
                }
                Ok(Command::Checkpoint) => self.checkpoint(t, dirty)?,
                Ok(Command::Pause | Command::Resume) => {}
            }
        }
    }

    fn checkpoint(&self, t: &Progress, dirty: &mut bool) -> Result<(), Stop> {
        if !*dirty {
            return Ok(());
        }
        let meta = serde_json::json!({
            "step": t.step,
            "config": t.trainer.config,
            "base": self.cfg.base_dir,
            "exposure": t.exposure,
        });
        checkpoint::save(
            &t.trainer.model,
            &self.cfg.base_dir,
            &self.cfg.out_dir,
            &meta,
        )?;
        *dirty = false;
        // The UI may be gone or not reading by now (stopping): never block on it.
        let _ = self.events.try_send(Event::Checkpointed {
            step: t.step,
            path: self.cfg.out_dir.clone(),
        });
        Ok(())
    }

    fn evaluate(&self, trainer: &Trainer, data: &Data, step: u64) -> Result<(), Stop> {
        if data.held.is_empty() {
            return Ok(());
        }
        let e = trainer.evaluate(&data.held, trainer.config.batch_pairs)?;
        self.emit(Event::Eval {
            step,
            accuracy: e.accuracy,
            loss: e.loss,
            pairs: e.pairs,
        })
    }

    /// Scores pairs with the current model into `pair_scores`: unjudged pairs
    /// before judged ones, never-scored before long-ago-scored.
    fn score_queue(&self, trainer: &Trainer, step: u64) -> Result<(), Stop> {
        if self.cfg.score_queue == 0 {
            return Ok(());
        }
        let conn = rusqlite::Connection::open(&self.cfg.db)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let rows: Vec<(i64, String, String, String)> = {
            let mut stmt = conn.prepare(
                "SELECT p.id, pr.text, ra.text, rb.text FROM pairs p
                 JOIN prompts pr ON pr.id = p.prompt_id
                 JOIN responses ra ON ra.id = p.response_a
                 JOIN responses rb ON rb.id = p.response_b
                 LEFT JOIN pair_scores s ON s.pair_id = p.id
                 WHERE coalesce(s.step, -1) < ?2
                 ORDER BY EXISTS (SELECT 1 FROM labels l WHERE l.pair_id = p.id AND l.undone_at IS NULL),
                          coalesce(s.step, -1), p.id
                 LIMIT ?1",
            )?;
            stmt.query_map(
                rusqlite::params![self.cfg.score_queue as i64, step as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?
            .collect::<Result<_, _>>()?
        };
        if rows.is_empty() {
            return Ok(());
        }
        crate::train::score_pairs_into(trainer, &conn, &rows, step)
            .map_err(|e| Stop::Failed(e.to_string()))?;
        self.emit(Event::Scored {
            step,
            pairs: rows.len(),
        })
    }

    fn run(&mut self) -> Result<(), Stop> {
        self.emit(Event::State(TrainerState::Loading))?;
        checkpoint::recover(&self.cfg.out_dir);
        let resume = has_checkpoint(&self.cfg.out_dir);
        let from = if resume {
            &self.cfg.out_dir
        } else {
            &self.cfg.base_dir
        };
        let trainer = Trainer::load(from, self.cfg.train.clone()).map_err(|e| {
            Stop::Failed(if e.is_bad_input() {
                // The error names the file already.
                format!("cannot use the model: {e}")
            } else {
                format!("cannot load the model from {}: {e}", from.display())
            })
        })?;
        let mut t = Progress {
            trainer,
            step: 0,
            exposure: Exposure::new(self.cfg.passes, self.cfg.train.seed),
        };
        if resume && let Some(meta) = checkpoint::meta(&self.cfg.out_dir) {
            t.step = meta["step"].as_u64().unwrap_or(0);
            if let Ok(saved) = serde_json::from_value::<Exposure>(meta["exposure"].clone()) {
                t.exposure.restore(saved);
            }
        }
        self.emit(Event::Started {
            step: t.step,
            resumed_from: resume.then(|| self.cfg.out_dir.clone()),
        })?;
        let mut dirty = false;
        let mut last_eval = t.step;
        'reload: loop {
            let data = self.load_data(&t.trainer)?;
            if data.train.len() < self.cfg.min_labels.max(1) {
                self.emit(Event::State(TrainerState::Waiting {
                    have: data.train.len(),
                    need: self.cfg.min_labels,
                }))?;
                self.wait_for_labels(&t, &mut dirty)?;
                continue 'reload;
            }
            self.emit(Event::State(TrainerState::Training))?;
            loop {
                if let Next::Reload = self.poll(&t, &mut dirty)? {
                    continue 'reload;
                }
                let batch_pairs = t.trainer.config.batch_pairs;
                let Some(b) = t.exposure.next_batch(&data.keys, batch_pairs) else {
                    // Caught up: evaluate what was learnt since the last look, make
                    // sure a crash loses none of it, and wait for new labels.
                    if t.step >= last_eval + CAUGHT_UP_EVAL_STEPS {
                        self.evaluate(&t.trainer, &data, t.step)?;
                        self.score_queue(&t.trainer, t.step)?;
                        last_eval = t.step;
                    }
                    self.checkpoint(&t, &mut dirty)?;
                    self.emit(Event::State(TrainerState::CaughtUp {
                        labels: data.train.len(),
                    }))?;
                    self.wait_for_labels(&t, &mut dirty)?;
                    continue 'reload;
                };
                let batch: Vec<&Encoded> = b.iter().map(|&i| &data.train[i]).collect();
                let t0 = Instant::now();
                let s = t.trainer.step(&batch)?;
                t.step += 1;
                let step = t.step;
                if s.skipped {
                    self.emit(Event::Skipped { step })?;
                    continue;
                }
                dirty = true;
                self.emit(Event::Step {
                    step,
                    loss: s.loss,
                    accuracy: s.accuracy,
                    pairs_per_s: batch.len() as f64 / t0.elapsed().as_secs_f64(),
                    labels_used: data.train.len(),
                })?;
                if self.cfg.eval_every > 0 && step.is_multiple_of(self.cfg.eval_every) {
                    self.evaluate(&t.trainer, &data, step)?;
                    self.score_queue(&t.trainer, step)?;
                    last_eval = step;
                }
                if self.cfg.checkpoint_every > 0 && step.is_multiple_of(self.cfg.checkpoint_every) {
                    self.checkpoint(&t, &mut dirty)?;
                }
            }
        }
    }
}

/// Steps since the last evaluation that make the trainer evaluate (and score the
/// queue) when it catches up, so a few steps do not each cost a pass over the
/// held-out pairs.
const CAUGHT_UP_EVAL_STEPS: u64 = 5;

/// The model being trained and how far it has come.
struct Progress {
    trainer: Trainer,
    step: u64,
    exposure: Exposure,
}

/// Whether `dir` holds a complete checkpoint to resume from.
pub fn has_checkpoint(dir: &Path) -> bool {
    ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .all(|f| dir.join(f).exists())
}
