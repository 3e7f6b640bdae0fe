//! Judging: the next pair from the queue, a choice committed, the session's undo.

use super::*;

impl App {
    /// Claims the next pair: first from where the last one was found (judged pairs
    /// form a prefix), then from the start (an expired claim, an undo elsewhere).
    pub(super) fn claim_next(&mut self) -> crate::store::Result<Option<i64>> {
        if let Some(r) = &mut self.review {
            let skipped = &self.skipped;
            r.on_screen = r
                .items
                .iter()
                .find(|i| !skipped.contains(&i.pair_id) && !r.done.contains(&i.pair_id))
                .cloned();
            return Ok(r.on_screen.as_ref().map(|i| i.pair_id));
        }
        use crate::store::QueueOrder;
        let (a, s, o) = (&self.config.annotator, &self.session, self.config.overlap);
        if self.config.gold_rate > 0.0 && self.rng.random::<f64>() < self.config.gold_rate {
            // A gold pair, looking like any other; none left, the queue as usual.
            let gold = self.store.claim_next_in_order(
                a,
                s,
                o,
                &self.skipped,
                QueueOrder::Gold,
                &mut self.walk,
            );
            if let Ok(Some(id)) = gold {
                self.served.insert(id, QueueOrder::Gold);
                return Ok(Some(id));
            }
        }
        let order = match self.config.order {
            QueueOrder::Uncertain if self.rng.random::<f64>() < self.config.random_share => {
                QueueOrder::Random
            }
            o => o,
        };
        let (a, s, o) = (&self.config.annotator, &self.session, self.config.overlap);
        let claimed = self
            .store
            .claim_next_in_order(a, s, o, &self.skipped, order, &mut self.walk);
        let id = match claimed {
            Ok(id) => id,
            // A claim is a write: on a full disk or a read-only file, show the next
            // pair unclaimed rather than nothing (a judgement that cannot be saved
            // says so).
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim a pair; showing one unclaimed");
                self.store.next_pair_id(a, o, &self.skipped)?
            }
        };
        if let Some(id) = id {
            self.served.insert(id, order);
        }
        Ok(id)
    }

    /// Shows `pair_id`, or the next pair in the queue when `None`.
    pub(super) fn show(&mut self, pair_id: Option<i64>) {
        // The pair on screen goes first: if reading the next one fails, nothing
        // already judged stays up to be judged twice.
        self.show_nothing();
        let id = match pair_id {
            Some(id) => Some(id),
            None => match self.claim_next() {
                Ok(id) => id,
                Err(e) => {
                    self.say(format!("cannot read the next pair: {e}"), true);
                    return;
                }
            },
        };
        if let (Some(id), Some(r)) = (pair_id, &mut self.review) {
            // Back to a pair under review (undo): it is under review again, and the
            // list's selection follows it.
            if let Some(at) = r.items.iter().position(|i| i.pair_id == id) {
                r.selected = at;
                r.on_screen = Some(r.items[at].clone());
            } else {
                r.on_screen = None;
            }
        }
        if let Some(id) = pair_id
            && let Err(e) = self
                .store
                .claim_pair(&self.config.annotator, &self.session, id)
        {
            tracing::warn!(error = %e, pair = id, "cannot claim the pair");
        }
        self.claim_renewed = Instant::now();
        self.scroll = [0; 3];
        self.drawn.max_scroll = [usize::MAX; 3];
        let Some(id) = id else { return };
        let pair = match self.store.pair(id) {
            Ok(Some(p)) => p,
            Ok(None) => {
                self.say(format!("pair {id} is gone"), true);
                return;
            }
            Err(e) => {
                self.say(format!("cannot read pair {id}: {e}"), true);
                return;
            }
        };
        let rng = &mut self.rng;
        let left = *self.left_of.entry(id).or_insert_with(|| {
            if rng.random_bool(0.5) {
                Side::A
            } else {
                Side::B
            }
        });
        let turns = pair
            .prompt
            .turns()
            .into_iter()
            .map(|m| (sanitize(&m.role), sanitize(&m.content)))
            .collect();
        self.current = Some(Current {
            left_text: sanitize(pair.response(left)),
            right_text: sanitize(pair.response(left.other())),
            turns,
            left,
            note: self.notes.get(&pair.id).cloned(),
            queue_order: self
                .served
                .get(&pair.id)
                .copied()
                .unwrap_or(self.config.order),
            pair,
            shown_at: Instant::now(),
        });
    }

    pub(super) fn advance(&mut self) {
        self.show(None);
        self.refresh_progress();
    }

    pub(super) fn choice_of(&self, pick: Pick) -> Option<Choice> {
        let cur = self.current.as_ref()?;
        Some(match pick {
            Pick::Left => Choice::from_side(cur.left),
            Pick::Right => Choice::from_side(cur.left.other()),
            Pick::Tie => Choice::Tie,
            Pick::BothBad => Choice::BothBad,
        })
    }

    /// Writes the judgement; only once it is committed does the next pair show.
    pub(super) fn commit(&mut self, pick: Pick, strength: Option<Strength>) {
        let (Some(choice), Some(cur)) = (self.choice_of(pick), self.current.as_ref()) else {
            return;
        };
        let label = NewLabel {
            pair_id: cur.pair.id,
            annotator: self.config.annotator.clone(),
            choice,
            strength,
            left: Some(cur.left),
            note: cur.note.clone(),
            elapsed_ms: Some(cur.shown_at.elapsed().as_millis().min(u128::from(u64::MAX)) as u64),
            source: "tui".into(),
            queue_order: Some(cur.queue_order.as_str().into()),
        };
        // In review, the judgement replaces the one under review; on a contested
        // pair it is an adjudication, and replaces no vote.
        let under_review = self
            .review
            .as_ref()
            .and_then(|r| r.on_screen.as_ref())
            .filter(|item| item.pair_id == label.pair_id);
        let adjudication = under_review.is_some_and(|item| !item.votes.is_empty());
        let replaced = under_review
            .filter(|_| !adjudication)
            .map(|item| item.label_id);
        let mut label = label;
        if adjudication {
            label.source = crate::consensus::ADJUDICATION.into();
        }
        let saved = match replaced {
            Some(old) => self.store.relabel(old, &label),
            None => self.store.record_label(&label),
        };
        match saved {
            Ok(label_id) => {
                self.notes.remove(&label.pair_id);
                if let Some(c) = &mut self.current {
                    c.note = None;
                }
                self.history.push(Done::Label {
                    label_id,
                    pair_id: label.pair_id,
                    replaced,
                });
                self.outcome = Outcome::Saved {
                    label_id,
                    pair_id: label.pair_id,
                };
                if let Some(r) = &mut self.review {
                    r.done.insert(label.pair_id);
                }
                self.session_labels += 1;
                self.mode = Mode::Label;
                self.notify_trainer(TrainerCommand::LabelsChanged);
                let verdict = self
                    .config
                    .show_model
                    .then(|| self.model_verdict(label.pair_id, choice, label.left));
                if self.review.is_some() {
                    self.back_to_list();
                    self.refresh_progress();
                } else {
                    self.advance();
                }
                if let Some(v) = verdict {
                    self.say(v, false);
                }
            }
            Err(e) => {
                self.mode = Mode::Label;
                self.say(
                    format!("NOT SAVED: {e}. The pair stays on screen; try again."),
                    true,
                );
            }
        }
    }

    /// One line on what the live model predicted for a pair just judged, in terms
    /// of the sides the annotator saw.
    pub(super) fn model_verdict(&self, pair_id: i64, choice: Choice, left: Option<Side>) -> String {
        let p_a = match self.store.pair_score(pair_id) {
            Ok(Some((p, _))) => p,
            Ok(None) => return "model: no prediction for that pair yet".into(),
            Err(e) => return format!("model: cannot read its prediction: {e}"),
        };
        let model_side = if p_a >= 0.5 { Side::A } else { Side::B };
        let confidence = 100.0 * p_a.max(1.0 - p_a);
        let screen = |side: Side| if Some(side) == left { "left" } else { "right" };
        let agreement = match choice.winner() {
            Some(w) if w == model_side => "agreed",
            Some(_) => "disagreed",
            None => "no preference given",
        };
        format!(
            "model: {} was better ({confidence:.0}%) — {agreement}",
            screen(model_side)
        )
    }

    pub(super) fn undo(&mut self) {
        let Some(last) = self.history.pop() else {
            self.say("nothing to undo this session", false);
            return;
        };
        match last {
            Done::Label {
                label_id,
                pair_id,
                replaced,
            } => match match replaced {
                Some(old) => self.store.undo_relabel(label_id, old),
                None => self.store.undo_label(label_id).map(|_| ()),
            } {
                Ok(()) => {
                    self.outcome = Outcome::Undone { label_id };
                    if let Some(r) = &mut self.review {
                        r.done.remove(&pair_id);
                    }
                    self.notify_trainer(TrainerCommand::LabelsChanged);
                    self.session_labels = self.session_labels.saturating_sub(1);
                    // The undone judgement's note comes back with its pair.
                    if let Ok(Some(note)) = self.store.label_note(label_id) {
                        self.notes.insert(pair_id, note);
                    }
                    self.show(Some(pair_id));
                    self.mode = Mode::Label;
                    self.refresh_progress();
                    self.say("undone: judge this pair again", false);
                }
                Err(e) => {
                    self.history.push(last);
                    self.say(format!("cannot undo: {e}"), true);
                }
            },
            Done::Skip { pair_id } => {
                self.skipped.remove(&pair_id);
                if let Some(r) = &mut self.review {
                    r.kept.remove(&pair_id);
                }
                self.show(Some(pair_id));
                self.mode = Mode::Label;
                self.say("back to the skipped pair", false);
            }
        }
    }
}
