//! The labeler's two workers seen from the app, handled alike: the trainer and the
//! generator feed are attached with their command channels, told what changed, and
//! their events change what the app shows.

use super::*;

impl App {
    /// Connects the trainer thread's command channel and loads the metrics stored
    /// by earlier runs (of any process on the database), so the charts survive a
    /// restart.
    pub fn attach_trainer(&mut self, commands: Sender<TrainerCommand>) {
        self.trainer = Some(commands);
        if let Ok(rows) = self.store.recent_metrics() {
            for m in rows {
                match (m.kind.as_str(), m.loss, m.accuracy) {
                    ("train", Some(l), _) => self.train.losses.push((m.step as f64, l)),
                    ("eval", _, Some(a)) => self.train.accuracy.push((m.step as f64, a)),
                    _ => {}
                }
            }
        }
    }

    /// Connects the generator feed: it hears how many pairs are left after every
    /// change and generates when they run low.
    pub fn attach_feed(&mut self, commands: Sender<crate::generator::feed::FeedCommand>) {
        self.feed = Some(commands);
        self.feed_status = Some("generator: loading".into());
        self.notify_feed();
    }

    /// Tells the feed how many pairs are left to judge (it generates when they run
    /// low), as `notify_trainer` tells the trainer what changed.
    pub(super) fn notify_feed(&mut self) {
        let left = self.progress.pairs - self.progress.mine - self.skipped.len() as i64;
        if let Some(f) = &self.feed
            && f.send(crate::generator::feed::FeedCommand::Remaining(left.max(0)))
                .is_err()
        {
            self.feed = None;
        }
    }

    pub(super) fn on_feed(&mut self, e: crate::generator::feed::FeedEvent) {
        use crate::generator::feed::FeedEvent;
        match e {
            FeedEvent::Ready { total } => {
                self.feed_status = Some(format!("generator: ready, {total} prompts to go"));
            }
            FeedEvent::PairAdded {
                done,
                total,
                tokens_per_s,
            } => {
                self.feed_status = Some(format!(
                    "generating: {done}/{total} prompts · {tokens_per_s:.0} tokens/s"
                ));
                if self.current.is_none() {
                    self.advance();
                } else {
                    self.refresh_progress();
                }
            }
            FeedEvent::Skipped { done, total, line } => {
                self.feed_status = Some(format!(
                    "generating: {done}/{total} prompts (line {line} gave no pair)"
                ));
            }
            FeedEvent::Finished { made } => {
                self.feed_status = Some(format!("generator: done, {made} pairs added"));
                self.feed = None;
            }
            FeedEvent::Failed(msg) => {
                self.say(format!("generator stopped: {msg}"), true);
                self.feed_status = Some("generator: failed (see the log)".into());
                tracing::error!(%msg, "generator feed failed");
                self.feed = None;
            }
        }
    }

    pub fn has_trainer(&self) -> bool {
        self.trainer.is_some()
    }

    pub(super) fn notify_trainer(&mut self, c: TrainerCommand) {
        if let Some(t) = &self.trainer
            && t.send(c).is_err()
        {
            self.trainer = None;
        }
    }

    /// Shows the trainer's news (the trainer records its metrics itself).
    pub(super) fn on_trainer(&mut self, e: TrainerEvent) {
        if let TrainerEvent::Failed(msg) = &e {
            self.say(format!("training stopped: {msg}"), true);
        }
        self.train.apply(&e);
    }
}
