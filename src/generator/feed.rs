//! Keeps the labeling queue fed: a thread that generates pairs from a prompts file
//! whenever the annotator has few pairs left, with its own database connection.
//! The labeler talks to it only through channels and never waits for it.

use super::Generator;
use super::pairs::{PairOutcome, PairPlan, PromptLine, generate_pair};
use crate::store::{InsertOutcome, Store};
use crossbeam_channel::{Receiver, Sender, unbounded};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Commands from the labeler.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedCommand {
    /// Pairs the annotator still has to judge.
    Remaining(i64),
    Stop,
}

/// What the feed tells the labeler.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    /// The model is loaded; `total` prompts have no pairs yet.
    Ready {
        total: usize,
    },
    /// A pair was stored.
    PairAdded {
        done: usize,
        total: usize,
        tokens_per_s: f64,
    },
    /// A prompt gave no usable pair.
    Skipped {
        done: usize,
        total: usize,
        line: usize,
    },
    /// Every prompt has its pair.
    Finished {
        made: usize,
    },
    Failed(String),
}

pub struct FeedConfig {
    pub db: PathBuf,
    pub generator: PathBuf,
    pub prompts: Vec<PromptLine>,
    pub plan: PairPlan,
    /// Generation runs while the annotator has fewer pairs left than this.
    pub low_water: i64,
}

pub struct FeedHandle {
    pub commands: Sender<FeedCommand>,
    pub events: Receiver<FeedEvent>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FeedHandle {
    /// Stops after the token being computed (a half-made pair is dropped) and waits.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.commands.send(FeedCommand::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub fn spawn(cfg: FeedConfig) -> FeedHandle {
    let (ctx, crx) = unbounded();
    let (etx, erx) = unbounded();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("generator-feed".into())
        .spawn(move || {
            // Threads it starts (the generator's pool) inherit the priority.
            crate::priority::background();
            let outcome = crate::contain::run("generator feed", || {
                crate::contain::fault_point("feed");
                run(cfg, &crx, &etx, &flag)
            });
            let failed = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(panic) => Some(panic),
            };
            if let Some(msg) = failed {
                tracing::error!("generator feed failed: {msg}");
                let _ = etx.send(FeedEvent::Failed(msg));
            }
        })
        .ok();
    if thread.is_none() {
        let _ = stop.swap(true, Ordering::SeqCst);
    }
    FeedHandle {
        commands: ctx,
        events: erx,
        stop,
        thread,
    }
}

fn run(
    cfg: FeedConfig,
    commands: &Receiver<FeedCommand>,
    events: &Sender<FeedEvent>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut store = Store::open(&cfg.db)?;
    let mut todo = Vec::new();
    for p in cfg.prompts {
        if store.pairs_for_prompt(&p.prompt)? == 0 {
            todo.push(p);
        }
    }
    let total = todo.len();
    if total == 0 {
        let _ = events.send(FeedEvent::Finished { made: 0 });
        return Ok(());
    }
    let mut g = Generator::load(&cfg.generator)?;
    let _ = events.send(FeedEvent::Ready { total });
    let mut remaining = i64::MAX;
    let (mut made, mut tokens, mut ms) = (0usize, 0usize, 0f64);
    for (done, p) in todo.iter().enumerate() {
        // Wait until the queue runs low, going by the latest count.
        loop {
            while let Ok(cmd) = commands.try_recv() {
                match cmd {
                    FeedCommand::Remaining(n) => remaining = n,
                    FeedCommand::Stop => return Ok(()),
                }
            }
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            if remaining < cfg.low_water {
                break;
            }
            match commands.recv() {
                Ok(FeedCommand::Remaining(n)) => remaining = n,
                Ok(FeedCommand::Stop) | Err(_) => return Ok(()),
            }
        }
        match generate_pair(&mut g, p, &cfg.plan, 0, stop)? {
            PairOutcome::Cancelled => return Ok(()),
            PairOutcome::Degenerate => {
                let _ = events.send(FeedEvent::Skipped {
                    done: done + 1,
                    total,
                    line: p.line,
                });
            }
            PairOutcome::Made(pair, t) => {
                if let InsertOutcome::Inserted(_) =
                    store.insert_pairs(std::slice::from_ref(&*pair))?[0]
                {
                    made += 1;
                    remaining = remaining.saturating_add(1);
                }
                tokens += t.gen_tokens;
                ms += t.gen_ms;
                let _ = events.send(FeedEvent::PairAdded {
                    done: done + 1,
                    total,
                    tokens_per_s: tokens as f64 / (ms / 1e3).max(1e-9),
                });
            }
        }
    }
    let _ = events.send(FeedEvent::Finished { made });
    Ok(())
}
