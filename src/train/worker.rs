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
use crate::store::{
    EvalMetrics, LEASE_HEARTBEAT, LabelMarks, PairText, StepMetrics, Store, TakeLease, unix_now,
};
use crossbeam_channel::{Receiver, Sender, TryRecvError, bounded, unbounded};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use super::messages::{TrainerCommand, TrainerEvent, TrainerState};

#[derive(Debug, Clone)]
pub struct TrainerConfig {
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
    /// Who trains, as the lease and `duel stats` say (an annotator, or
    /// `train --follow`).
    pub holder: String,
    /// Whether this process may train (take the lease, write metrics and scores);
    /// when not (an annotator's role on PostgreSQL), it only shows the model another
    /// process trains.
    pub may_train: bool,
}

pub struct TrainerHandle {
    pub commands: Sender<TrainerCommand>,
    pub events: Receiver<TrainerEvent>,
    thread: Option<JoinHandle<()>>,
}

impl TrainerHandle {
    pub fn send(&self, c: TrainerCommand) {
        let _ = self.commands.send(c);
    }

    /// Asks the thread to stop and waits for it (it finishes its current step and
    /// writes a checkpoint if it trained since the last one).
    pub fn stop(mut self) {
        let _ = self.commands.send(TrainerCommand::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn spawn(cfg: TrainerConfig) -> TrainerHandle {
    let (ctx, crx) = unbounded();
    // Bounded: if the UI stops reading, the trainer waits rather than piling up.
    let (etx, erx) = bounded(1024);
    let thread = std::thread::Builder::new()
        .name("trainer".into())
        .spawn(move || {
            crate::priority::background();
            let events = etx.clone();
            let mut w = Worker {
                cfg,
                commands: crx,
                events: etx,
                session: crate::store::new_session_id(),
                heartbeat: None,
                sink: None,
                watch: std::cell::RefCell::new(None),
                reader: std::cell::RefCell::new(None),
            };
            let outcome = crate::contain::run("trainer", || {
                crate::contain::fault_point("trainer");
                w.run()
            });
            w.hand_back();
            let failed = match outcome {
                Ok(Ok(())) | Ok(Err(Stop::Gone)) => None,
                Ok(Err(Stop::Failed(msg))) | Err(msg) => Some(msg),
            };
            if let Some(msg) = failed {
                tracing::error!("trainer failed: {msg}");
                // Never block on a full channel while stopping.
                let _ = events.try_send(TrainerEvent::Failed(msg));
            }
            let _ = events.try_send(TrainerEvent::State(TrainerState::Stopped));
        })
        .ok();
    TrainerHandle {
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
    cfg: TrainerConfig,
    commands: Receiver<TrainerCommand>,
    events: Sender<TrainerEvent>,
    /// This process's name for the lease.
    session: String,
    /// Renews the lease while this worker trains.
    heartbeat: Option<Heartbeat>,
    /// Where the metrics of the run being trained go.
    sink: Option<Sink>,
    /// Notices judgements made by other processes on the database.
    watch: std::cell::RefCell<Option<LabelWatch>>,
    /// The read-only connection the judgements are loaded through, kept across
    /// reloads (on PostgreSQL a connection per judgement would be a server process
    /// started and stopped each time), and opened again after an error.
    reader: std::cell::RefCell<Option<Store>>,
}

/// Notices when the judgements in the database change, whoever made them: the
/// newest label and the latest undo, read at most every `LEASE_HEARTBEAT`.
struct LabelWatch {
    store: Store,
    last: LabelMarks,
    checked: Instant,
}

impl LabelWatch {
    fn open(db: &Path) -> Result<LabelWatch, Stop> {
        let store = Store::open(db)?;
        let last = store.label_marks()?;
        Ok(LabelWatch {
            store,
            last,
            checked: Instant::now(),
        })
    }

    /// Whether the judgements changed since the last look (checked at most every
    /// heartbeat).
    fn changed(&mut self) -> bool {
        if self.checked.elapsed() < LEASE_HEARTBEAT {
            return false;
        }
        self.checked = Instant::now();
        match self.store.label_marks() {
            Ok(now) if now != self.last => {
                self.last = now;
                true
            }
            _ => false,
        }
    }
}

/// A thread that renews the training lease every `LEASE_HEARTBEAT` and says when it
/// was lost (the process stalled past `LEASE_TTL` and another took over).
struct Heartbeat {
    lost: Arc<AtomicBool>,
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    fn start(db: &Path, session: String) -> Result<Heartbeat, Stop> {
        let mut store = Store::open(db)?;
        let lost = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = bounded::<()>(1);
        let flag = lost.clone();
        let thread = std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || {
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(LEASE_HEARTBEAT)
                {
                    match store.renew_lease(&session) {
                        Ok(true) => {}
                        Ok(false) => {
                            flag.store(true, Ordering::SeqCst);
                            return;
                        }
                        // Busy for a moment: the next beat tries again, well inside
                        // the timeout.
                        Err(e) => tracing::warn!("renewing the training lease: {e}"),
                    }
                }
            })?;
        Ok(Heartbeat {
            lost,
            stop,
            thread: Some(thread),
        })
    }

    fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The run's rows in `train_runs`, `train_metrics` and `checkpoints`, so that every
/// labeler on the database, and a restart, sees the same charts.
struct Sink {
    store: Store,
    run: i64,
    last_accuracy: std::cell::Cell<Option<f64>>,
}

impl Sink {
    fn record(&self, e: &TrainerEvent) {
        let r = match *e {
            TrainerEvent::Step {
                step,
                loss,
                accuracy,
                pairs_per_s,
                labels_used,
            } => self.store.record_train_step(
                self.run,
                &StepMetrics {
                    step,
                    loss,
                    accuracy,
                    pairs_per_s,
                    labels_used,
                },
            ),
            TrainerEvent::Eval {
                step,
                accuracy,
                loss,
                pairs,
            } => {
                self.last_accuracy.set(Some(accuracy));
                self.store.record_eval(
                    self.run,
                    &EvalMetrics {
                        step,
                        loss,
                        accuracy,
                        labels_used: pairs,
                    },
                )
            }
            TrainerEvent::Checkpointed { step, ref path } => {
                self.store
                    .record_checkpoint(self.run, step, path, self.last_accuracy.get())
            }
            _ => return,
        };
        if let Err(err) = r {
            tracing::warn!("recording training metrics: {err}");
        }
    }
}

struct Data {
    train: Vec<Encoded>,
    /// `live::key` of each training pair.
    keys: Vec<u64>,
    held: Vec<Encoded>,
    /// `live::key` of each held-out pair.
    held_keys: Vec<u64>,
}

/// What the training loop should do after looking at the commands.
enum Next {
    Continue,
    Reload,
    /// Another process took the lease: stop training, write nothing.
    Lost,
}

impl Worker {
    fn emit(&self, e: TrainerEvent) -> Result<(), Stop> {
        if let Some(sink) = &self.sink {
            sink.record(&e);
        }
        self.events.send(e).map_err(|_| Stop::Gone)
    }

    /// Whether judgements changed in the database (another labeler's, say).
    fn labels_changed(&self) -> bool {
        self.watch
            .borrow_mut()
            .as_mut()
            .is_some_and(LabelWatch::changed)
    }

    /// Whether another process has taken the lease from this one.
    fn lost_lease(&self) -> bool {
        self.heartbeat.as_ref().is_some_and(Heartbeat::lost)
    }

    /// Stops renewing the lease and hands it back, if this worker holds it.
    fn hand_back(&mut self) {
        if let Some(h) = self.heartbeat.take() {
            let lost = h.lost();
            drop(h);
            if !lost && let Ok(mut store) = Store::open(&self.cfg.db) {
                let _ = store.release_lease(&self.session);
            }
        }
        self.sink = None;
    }

    /// Waits for the training lease. Meanwhile the model another process trains is
    /// shown: its metrics, read from the database as they are written.
    fn acquire(&mut self) -> Result<(), Stop> {
        let mut store = Store::open(&self.cfg.db)?;
        let mut seen = store.last_metric_rowid()?;
        let mut following: Option<String> = None;
        loop {
            let lease = if self.cfg.may_train {
                Some(store.take_lease(&self.cfg.holder, &self.session)?)
            } else {
                store
                    .lease()?
                    .filter(|l| l.is_live(unix_now()))
                    .map(TakeLease::HeldBy)
            };
            match lease {
                Some(TakeLease::Taken) => break,
                // This process may not train, and nobody does.
                None => {
                    if following.as_deref() != Some("") {
                        self.emit(TrainerEvent::State(TrainerState::NoTrainer))?;
                        following = Some(String::new());
                    }
                }
                Some(TakeLease::HeldBy(l)) => {
                    if following.as_deref() != Some(l.session.as_str()) {
                        self.emit(TrainerEvent::State(TrainerState::Following {
                            holder: l.holder.clone(),
                            host: l.host.clone(),
                        }))?;
                        following = Some(l.session);
                    }
                    seen = self.follow_metrics(&store, seen)?;
                }
            }
            match self.commands.recv_timeout(LEASE_HEARTBEAT) {
                Ok(TrainerCommand::Stop)
                | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    return Err(Stop::Gone);
                }
                _ => {}
            }
        }
        self.heartbeat = Some(Heartbeat::start(&self.cfg.db, self.session.clone())?);
        let config = serde_json::json!({
            "live": true, "holder": self.cfg.holder, "base": self.cfg.base_dir,
            "out": self.cfg.out_dir, "train": self.cfg.train,
            "min_labels": self.cfg.min_labels, "passes": self.cfg.passes,
        });
        let run = store.start_train_run(&config.to_string())?;
        self.sink = Some(Sink {
            store,
            run,
            last_accuracy: std::cell::Cell::new(None),
        });
        *self.watch.borrow_mut() = Some(LabelWatch::open(&self.cfg.db)?);
        Ok(())
    }

    /// Passes on the metrics written since row `seen`; returns the last row read.
    fn follow_metrics(&self, store: &Store, mut seen: i64) -> Result<i64, Stop> {
        for m in store.metrics_since(seen)? {
            seen = m.rowid;
            let step = m.step.max(0) as u64;
            let e = match (m.kind.as_str(), m.loss, m.accuracy) {
                ("train", Some(loss), Some(accuracy)) => TrainerEvent::Step {
                    step,
                    loss,
                    accuracy,
                    pairs_per_s: m.pairs_per_s.unwrap_or(0.0),
                    labels_used: m.labels_used.unwrap_or(0).max(0) as usize,
                },
                ("eval", Some(loss), Some(accuracy)) => TrainerEvent::Eval {
                    step,
                    accuracy,
                    loss,
                    pairs: m.labels_used.unwrap_or(0).max(0) as usize,
                },
                _ => continue,
            };
            self.events.send(e).map_err(|_| Stop::Gone)?;
        }
        Ok(seen)
    }

    fn load_examples(&self) -> Result<Vec<Example>, Stop> {
        let mut reader = self.reader.borrow_mut();
        let store = match reader.take() {
            Some(store) => store,
            None => Store::open_readonly(&self.cfg.db)?,
        };
        let examples = super::examples_from_store(&store)?;
        *reader = Some(store);
        Ok(examples)
    }

    /// The judgements as the trainer reads them. Labels arrive one at a time while
    /// the annotator works and each makes the trainer load them again: the token ids
    /// of the judgements `previous` held are taken over, and only new ones encoded.
    fn load_data(&self, trainer: &Trainer, previous: Option<Data>) -> Result<Data, Stop> {
        let (held, train): (Vec<Example>, Vec<Example>) = self
            .load_examples()?
            .into_iter()
            .partition(|e| is_heldout(&e.prompt, self.cfg.holdout));
        let mut known: HashMap<u64, Encoded> = match previous {
            Some(d) => d
                .keys
                .into_iter()
                .zip(d.train)
                .chain(d.held_keys.into_iter().zip(d.held))
                .collect(),
            None => HashMap::new(),
        };
        let mut encode = |examples: &[Example]| -> Result<(Vec<u64>, Vec<Encoded>), Stop> {
            let keys: Vec<u64> = examples.iter().map(live::key).collect();
            let mut out = Vec::with_capacity(examples.len());
            for (e, k) in examples.iter().zip(&keys) {
                let enc = match known.remove(k) {
                    // The key is the texts; the margin may have changed with the strength.
                    Some(mut enc) => {
                        enc.margin = trainer.margin_of(e);
                        enc
                    }
                    None => trainer
                        .encode_one(e)
                        .map_err(|err| Stop::Failed(err.to_string()))?,
                };
                out.push(enc);
            }
            Ok((keys, out))
        };
        let (keys, train) = encode(&train)?;
        let (held_keys, held) = encode(&held)?;
        Ok(Data {
            keys,
            train,
            held,
            held_keys,
        })
    }

    /// Handles queued commands; blocks while paused.
    fn poll(&self, t: &Progress, dirty: &mut bool) -> Result<Next, Stop> {
        if self.lost_lease() {
            return Ok(Next::Lost);
        }
        let mut next = Next::Continue;
        if self.labels_changed() {
            next = Next::Reload;
        }
        loop {
            match self.commands.try_recv() {
                Ok(TrainerCommand::LabelsChanged) => next = Next::Reload,
                Ok(TrainerCommand::Checkpoint) => self.checkpoint(t, dirty)?,
                Ok(TrainerCommand::Stop) | Err(TryRecvError::Disconnected) => {
                    self.checkpoint(t, dirty)?;
                    return Err(Stop::Gone);
                }
                Ok(TrainerCommand::Resume) => {}
                Ok(TrainerCommand::Pause) => {
                    self.emit(TrainerEvent::State(TrainerState::Paused))?;
                    loop {
                        match self.commands.recv() {
                            Ok(TrainerCommand::Resume) => break,
                            Ok(TrainerCommand::LabelsChanged) => next = Next::Reload,
                            Ok(TrainerCommand::Checkpoint) => self.checkpoint(t, dirty)?,
                            Ok(TrainerCommand::Pause) => {}
                            Ok(TrainerCommand::Stop) | Err(_) => {
                                self.checkpoint(t, dirty)?;
                                return Err(Stop::Gone);
                            }
                        }
                    }
                    self.emit(TrainerEvent::State(TrainerState::Training))?;
                }
                Err(TryRecvError::Empty) => return Ok(next),
            }
        }
    }

    /// Waits for new labels (or a stop); `Next::Lost` if the lease is lost
    /// meanwhile. With `idle`, it scores the pairs the current model has not scored
    /// yet, a chunk at a time, looking at the commands and the lease between chunks;
    /// with nothing to score it waits without spinning.
    fn wait_for_labels(
        &self,
        t: &Progress,
        dirty: &mut bool,
        mut idle: Option<&mut IdleScoring>,
    ) -> Result<Next, Stop> {
        loop {
            if self.lost_lease() {
                return Ok(Next::Lost);
            }
            if self.labels_changed() {
                return Ok(Next::Reload);
            }
            let more = match idle.as_deref_mut() {
                Some(idle) => self.score_idle(&t.trainer, t.step, idle)?,
                None => false,
            };
            let wait = if more {
                Duration::ZERO
            } else {
                LEASE_HEARTBEAT
            };
            match self.commands.recv_timeout(wait) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Ok(TrainerCommand::LabelsChanged) => return Ok(Next::Reload),
                Ok(TrainerCommand::Stop) | Err(_) => {
                    self.checkpoint(t, dirty)?;
                    return Err(Stop::Gone);
                }
                Ok(TrainerCommand::Checkpoint) => self.checkpoint(t, dirty)?,
                Ok(TrainerCommand::Pause | TrainerCommand::Resume) => {}
            }
        }
    }

    fn checkpoint(&self, t: &Progress, dirty: &mut bool) -> Result<(), Stop> {
        // The folder belongs to whoever holds the lease.
        if !*dirty || self.lost_lease() {
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
            None,
        )?;
        *dirty = false;
        let e = TrainerEvent::Checkpointed {
            step: t.step,
            path: self.cfg.out_dir.clone(),
        };
        if let Some(sink) = &self.sink {
            sink.record(&e);
        }
        // The UI may be gone or not reading by now (stopping): never block on it.
        let _ = self.events.try_send(e);
        Ok(())
    }

    fn evaluate(&self, trainer: &Trainer, data: &Data, step: u64) -> Result<(), Stop> {
        if data.held.is_empty() {
            return Ok(());
        }
        let e = trainer.evaluate(&data.held, trainer.config.batch_pairs)?;
        self.emit(TrainerEvent::Eval {
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
        // Scores are written only while this worker holds the lease, through the
        // connection its metrics go through.
        let Some(sink) = &self.sink else {
            return Ok(());
        };
        let rows = sink.store.pairs_to_score(self.cfg.score_queue, step)?;
        if rows.is_empty() {
            return Ok(());
        }
        self.score_rows(trainer, &sink.store, &rows, step)
    }

    /// Scores `rows` with the model at `step` into `pair_scores` and says so.
    fn score_rows(
        &self,
        trainer: &Trainer,
        store: &Store,
        rows: &[PairText],
        step: u64,
    ) -> Result<(), Stop> {
        crate::train::score_pairs_into(trainer, store, rows, step)
            .map_err(|e| Stop::Failed(e.to_string()))?;
        self.emit(TrainerEvent::Scored {
            step,
            pairs: rows.len(),
        })
    }

    /// Scores the next `IDLE_CHUNK` pairs that the model at `step` has not scored,
    /// walking the pool by id and round it (a new model takes the walk on from
    /// where it was, so every pair's turn comes). Returns whether pairs remain.
    /// Each evaluation scores only `score_queue` pairs; this is what lets the orders
    /// that go by the model cover a large pool while the labeler reads and the
    /// trainer has nothing to train on.
    fn score_idle(
        &self,
        trainer: &Trainer,
        step: u64,
        idle: &mut IdleScoring,
    ) -> Result<bool, Stop> {
        if self.cfg.score_queue == 0 || idle.done_at == Some(step) {
            return Ok(false);
        }
        let Some(sink) = &self.sink else {
            return Ok(false);
        };
        if idle.step != Some(step) {
            // A new model: the walk goes on from where it was, round the pool.
            idle.rows.clear();
            idle.step = Some(step);
            idle.wrapped = false;
        }
        while idle.rows.is_empty() {
            let rows = sink
                .store
                .pairs_to_score_after(idle.after, IDLE_FETCH, step)?;
            match rows.last() {
                Some(last) => idle.after = last.pair_id,
                None if !idle.wrapped => {
                    idle.wrapped = true;
                    idle.after = 0;
                    continue;
                }
                None => {
                    idle.done_at = Some(step);
                    return Ok(false);
                }
            }
            idle.rows = rows.into();
        }
        let n = idle.rows.len().min(IDLE_CHUNK);
        let rows: Vec<PairText> = idle.rows.drain(..n).collect();
        self.score_rows(trainer, &sink.store, &rows, step)?;
        Ok(true)
    }

    /// Follows while another process trains, trains while this one holds the lease,
    /// and follows again if the lease is lost.
    fn run(&mut self) -> Result<(), Stop> {
        loop {
            self.emit(TrainerEvent::State(TrainerState::Loading))?;
            self.acquire()?;
            self.train()?;
            // The lease was lost: write nothing more, and follow the new holder.
            self.heartbeat = None;
            self.sink = None;
        }
    }

    /// Trains while this worker holds the lease; returns when it is lost.
    fn train(&mut self) -> Result<(), Stop> {
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
        self.emit(TrainerEvent::Started {
            step: t.step,
            resumed_from: resume.then(|| self.cfg.out_dir.clone()),
        })?;
        let mut dirty = false;
        let mut last_eval = t.step;
        let mut idle = IdleScoring::default();
        let mut loaded: Option<Data> = None;
        'reload: loop {
            let fresh = self.load_data(&t.trainer, loaded.take())?;
            let data = loaded.insert(fresh);
            if data.train.len() < self.cfg.min_labels.max(1) {
                self.emit(TrainerEvent::State(TrainerState::Waiting {
                    have: data.train.len(),
                    need: self.cfg.min_labels,
                }))?;
                if let Next::Lost = self.wait_for_labels(&t, &mut dirty, None)? {
                    return Ok(());
                }
                continue 'reload;
            }
            self.emit(TrainerEvent::State(TrainerState::Training))?;
            loop {
                match self.poll(&t, &mut dirty)? {
                    Next::Continue => {}
                    Next::Reload => continue 'reload,
                    Next::Lost => return Ok(()),
                }
                let batch_pairs = t.trainer.config.batch_pairs;
                let Some(b) = t.exposure.next_batch(&data.keys, batch_pairs) else {
                    // Caught up: evaluate what was learnt since the last look, make
                    // sure a crash loses none of it, and wait for new labels.
                    if t.step >= last_eval + CAUGHT_UP_EVAL_STEPS {
                        self.evaluate(&t.trainer, data, t.step)?;
                        self.score_queue(&t.trainer, t.step)?;
                        last_eval = t.step;
                    }
                    self.checkpoint(&t, &mut dirty)?;
                    self.emit(TrainerEvent::State(TrainerState::CaughtUp {
                        labels: data.train.len(),
                    }))?;
                    if let Next::Lost = self.wait_for_labels(&t, &mut dirty, Some(&mut idle))? {
                        return Ok(());
                    }
                    continue 'reload;
                };
                let batch: Vec<&Encoded> = b.iter().map(|&i| &data.train[i]).collect();
                let t0 = Instant::now();
                let s = t.trainer.step(&batch)?;
                t.step += 1;
                let step = t.step;
                if s.skipped {
                    self.emit(TrainerEvent::Skipped { step })?;
                    continue;
                }
                dirty = true;
                self.emit(TrainerEvent::Step {
                    step,
                    loss: s.loss,
                    accuracy: s.accuracy,
                    pairs_per_s: batch.len() as f64 / t0.elapsed().as_secs_f64(),
                    labels_used: data.train.len(),
                })?;
                if self.cfg.eval_every > 0 && step.is_multiple_of(self.cfg.eval_every) {
                    self.evaluate(&t.trainer, data, step)?;
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

/// Pairs scored at once while the trainer waits for judgements: 64 texts, about a
/// second of both cores, so a new judgement or a stop waits at most that long.
const IDLE_CHUNK: usize = 32;

/// Pairs read at once for idle scoring.
const IDLE_FETCH: usize = 256;

/// What idle scoring has read and how far it got.
#[derive(Default)]
struct IdleScoring {
    /// Pairs read for the model at `step`, not scored yet.
    rows: VecDeque<PairText>,
    /// The last pair id read.
    after: i64,
    /// Whether the walk for `step` went back to the start of the pool.
    wrapped: bool,
    step: Option<u64>,
    /// The step whose model has scored every pair.
    done_at: Option<u64>,
}

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
