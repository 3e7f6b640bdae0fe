//! The labeler's state and how actions change it. No terminal here: tests drive an
//! `App` with `Action`s and draw it on a `TestBackend`.

use super::sanitize::sanitize;
use super::training::TrainView;
use crate::domain::{Choice, NewLabel, Pair, Side, Strength};
use crate::store::{Progress, Store};
use crate::train::messages::{Command, Event, TrainerState};
use crossbeam_channel::Sender;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ratatui::layout::Rect;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// What the annotator asked for. Screen words: `Left`/`Right` are the panes the
/// annotator sees (titled A and B); which stored response is on which side is hidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    Left,
    Right,
    Tie,
    BothBad,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A judgement; with `ask_strength` the next key says how much better.
    Choose {
        pick: Pick,
        ask_strength: bool,
    },
    Strength(u8),
    /// Commit the pending choice without a strength.
    Confirm,
    Skip,
    Undo,
    StartNote,
    NoteChar(char),
    NoteBackspace,
    Cancel,
    /// Scroll the focused pane by lines (negative is up).
    Scroll(i32),
    /// Scroll the focused pane by pages.
    Page(i32),
    /// Mouse wheel at a screen position.
    ScrollAt {
        column: u16,
        row: u16,
        lines: i32,
    },
    FocusNext,
    FocusPrev,
    ToggleLayout,
    ToggleDiff,
    ToggleHelp,
    Resize {
        width: u16,
        height: u16,
    },
    Tick,
    Quit,
    /// Show or hide the training view.
    ToggleTraining,
    /// Pause or resume the trainer.
    TogglePause,
    /// Something the trainer thread reported.
    Trainer(Event),
    /// News from the thread generating pairs.
    Feed(crate::generator::feed::FeedEvent),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Label,
    /// A choice waiting for its strength (0–3) or Enter.
    Strength(Pick),
    Note(String),
    Help,
    /// `duel review`: the list of judgements to look at again.
    ReviewList,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pane {
    Prompt,
    Left,
    Right,
}

impl Pane {
    pub const ALL: [Pane; 3] = [Pane::Prompt, Pane::Left, Pane::Right];
    pub fn index(self) -> usize {
        match self {
            Pane::Prompt => 0,
            Pane::Left => 1,
            Pane::Right => 2,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrangement {
    SideBySide,
    Stacked,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub annotator: String,
    /// How many annotators judge each pair.
    pub overlap: u32,
    /// Ask for a strength after every A/B choice, not only with Shift.
    pub always_strength: bool,
    /// Labeling guidelines shown in help (markdown, untrusted).
    pub guidelines: String,
    /// Seed for the left/right order; random when `None`.
    pub seed: Option<u64>,
    /// In which order pairs are served.
    pub order: crate::store::QueueOrder,
    /// With the `uncertain` order, the share of pairs served at random instead (keeps
    /// the held-out estimate honest).
    pub random_share: f64,
    /// After each judgement, say what the live model predicted (off by default: it
    /// can bias the annotator).
    pub show_model: bool,
    /// Share of the pairs served that are gold pairs, while any is left to judge.
    pub gold_rate: f64,
}

/// The pair on screen, with its texts made safe to draw.
#[derive(Debug, Clone)]
pub struct Current {
    pub pair: Pair,
    /// The stored response shown on the left.
    pub left: Side,
    pub turns: Vec<(String, String)>,
    pub left_text: String,
    pub right_text: String,
    pub shown_at: Instant,
    pub note: Option<String>,
    /// The queue order that served this pair (recorded with the judgement).
    pub queue_order: crate::store::QueueOrder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Done {
    /// `replaced`: the judgement this one replaced in review.
    Label {
        label_id: i64,
        pair_id: i64,
        replaced: Option<i64>,
    },
    Skip {
        pair_id: i64,
    },
}

/// A message in the status line, with when it goes away.
#[derive(Debug, Clone)]
pub struct Flash {
    pub text: String,
    pub error: bool,
    pub until: Instant,
}

/// What the last frame drew that the app needs between frames: where the panes are
/// (for the mouse and page sizes) and how far each can scroll. `view::draw` returns
/// it and the loop hands it to `App::drawn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drawn {
    /// The prompt, left and right panes, in `Pane::index` order.
    pub panes: [Rect; 3],
    /// Largest useful scroll of each pane (`usize::MAX` until a frame says).
    pub max_scroll: [usize; 3],
    pub help_max_scroll: usize,
}

impl Default for Drawn {
    fn default() -> Drawn {
        Drawn {
            panes: [Rect::default(); 3],
            max_scroll: [usize::MAX; 3],
            help_max_scroll: usize::MAX,
        }
    }
}

/// What an update did that a caller may act on (the script driver writes it out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    #[default]
    Nothing,
    /// A judgement was committed.
    Saved { label_id: i64, pair_id: i64 },
    /// A judgement was taken back.
    Undone { label_id: i64 },
}

pub struct App {
    pub store: Store,
    pub config: Config,
    pub current: Option<Current>,
    pub mode: Mode,
    pub focus: Pane,
    pub arrangement: Arrangement,
    pub diff: bool,
    pub size: Rect,
    pub progress: Progress,
    pub session_labels: u64,
    pub session_started: Instant,
    pub flash: Option<Flash>,
    pub should_quit: bool,
    pub help_scroll: usize,
    pub train: TrainView,
    pub show_training: bool,
    trainer: Option<Sender<Command>>,
    feed: Option<Sender<crate::generator::feed::FeedCommand>>,
    /// What the generator is doing, for the status line.
    pub feed_status: Option<String>,
    history: Vec<Done>,
    skipped: HashSet<i64>,
    left_of: HashMap<i64, Side>,
    /// Notes written this session, by pair, kept across skip and undo.
    notes: HashMap<i64, String>,
    scroll: [usize; 3],
    /// What the last frame drew (see `Drawn`).
    drawn: Drawn,
    /// What the update being run did.
    outcome: Outcome,
    rng: StdRng,
    /// This labeler's name in the claims table.
    pub session: String,
    /// Where this labeler's walk through the queue stands (its start in the shuffled
    /// order picked at random).
    walk: crate::store::QueueWalk,
    /// The order each pair shown this session was served by.
    served: HashMap<i64, crate::store::QueueOrder>,
    /// `duel review`: the judgements to look at again instead of the queue.
    pub review: Option<Review>,
    claim_renewed: Instant,
}

/// The judgements `duel review` goes through, and the one on screen.
#[derive(Debug, Clone, Default)]
pub struct Review {
    pub items: Vec<crate::store::ReviewItem>,
    /// Pairs judged again in this review.
    pub done: HashSet<i64>,
    /// Pairs whose judgement the reviewer kept (`s`).
    pub kept: HashSet<i64>,
    pub on_screen: Option<crate::store::ReviewItem>,
    /// The row selected in the list.
    pub selected: usize,
    /// The start of each pair's prompt, made safe to draw, for the list.
    pub previews: HashMap<i64, String>,
}

impl Review {
    /// What became of an item in this review.
    pub fn state(&self, item: &crate::store::ReviewItem) -> &'static str {
        if self.done.contains(&item.pair_id) {
            "relabeled"
        } else if self.kept.contains(&item.pair_id) {
            "kept"
        } else {
            ""
        }
    }

    /// The first item from `from` on (then from the top) not yet relabeled or kept;
    /// `from` itself when all are.
    fn next_open(&self, from: usize) -> usize {
        let n = self.items.len();
        (0..n)
            .map(|i| (from + i) % n.max(1))
            .find(|&i| self.state(&self.items[i]).is_empty())
            .unwrap_or(from.min(n.saturating_sub(1)))
    }

    /// The status line: what the model thinks of the judgement on screen, or, for a
    /// contested pair, who chose what.
    pub fn status(&self, left: Side) -> Option<String> {
        let item = self.on_screen.as_ref()?;
        if !item.votes.is_empty() {
            let screen = |c: crate::domain::Choice| match c.winner() {
                Some(s) if s == left => "left".to_owned(),
                Some(_) => "right".to_owned(),
                None => c.to_string(),
            };
            let votes: Vec<String> = item
                .votes
                .iter()
                .map(|(who, c)| format!("{who} chose {}", screen(*c)))
                .collect();
            let model = item.p_a.map_or(String::new(), |p| {
                let (side, p) = if (p >= 0.5) == (left == Side::A) {
                    ("left", p.max(1.0 - p))
                } else {
                    ("right", p.max(1.0 - p))
                };
                format!(" The model is {:.0}% for {side}.", 100.0 * p)
            });
            return Some(format!(
                "contested: {}.{model} Your judgement settles the pair; s leaves it.",
                votes.join(", ")
            ));
        }
        let chosen = if item.chose_a { Side::A } else { Side::B };
        let side = if chosen == left { "left" } else { "right" };
        let at = self
            .items
            .iter()
            .position(|i| i.label_id == item.label_id)
            .map_or(0, |p| p + 1);
        Some(format!(
            "review {at}/{}: {} chose {side}; the model is {:.0}% sure the other is better. Judge again, or s to keep it.",
            self.items.len(),
            item.annotator,
            100.0 * item.against
        ))
    }
}

impl App {
    pub fn new(store: Store, config: Config) -> crate::store::Result<App> {
        let rng = match config.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => rand::make_rng(),
        };
        let progress = store.progress(&config.annotator)?;
        let mut app = App {
            store,
            config,
            current: None,
            mode: Mode::Label,
            focus: Pane::Left,
            arrangement: Arrangement::SideBySide,
            diff: false,
            size: Rect::new(0, 0, 80, 24),
            progress,
            session_labels: 0,
            session_started: Instant::now(),
            flash: None,
            should_quit: false,
            help_scroll: 0,
            train: TrainView::default(),
            show_training: false,
            trainer: None,
            feed: None,
            feed_status: None,
            history: Vec::new(),
            skipped: HashSet::new(),
            left_of: HashMap::new(),
            notes: HashMap::new(),
            scroll: [0; 3],
            drawn: Drawn::default(),
            outcome: Outcome::Nothing,
            session: String::new(),
            walk: crate::store::QueueWalk::new(0),
            served: HashMap::new(),
            review: None,
            claim_renewed: Instant::now(),
            rng,
        };
        app.session = crate::store::new_session_id();
        app.walk = crate::store::QueueWalk::new(app.rng.random());
        app.advance();
        Ok(app)
    }

    /// Connects the trainer thread's command channel and loads the metrics stored
    /// by earlier runs (of any process on the database), so the charts survive a
    /// restart.
    pub fn attach_trainer(&mut self, commands: Sender<Command>) {
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
        self.tell_feed();
    }

    fn tell_feed(&mut self) {
        let left = self.progress.pairs - self.progress.mine - self.skipped.len() as i64;
        if let Some(f) = &self.feed
            && f.send(crate::generator::feed::FeedCommand::Remaining(left.max(0)))
                .is_err()
        {
            self.feed = None;
        }
    }

    fn on_feed(&mut self, e: crate::generator::feed::FeedEvent) {
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

    fn notify_trainer(&mut self, c: Command) {
        if let Some(t) = &self.trainer
            && t.send(c).is_err()
        {
            self.trainer = None;
        }
    }

    /// Shows the trainer's news (the trainer records its metrics itself).
    fn on_trainer(&mut self, e: Event) {
        if let Event::Failed(msg) = &e {
            self.say(format!("training stopped: {msg}"), true);
        }
        self.train.apply(&e);
    }

    pub fn scroll_of(&self, pane: Pane) -> usize {
        self.scroll[pane.index()].min(self.drawn.max_scroll[pane.index()])
    }

    /// Judgements per hour this session, after its first minute (a rate over a few
    /// seconds is noise).
    pub fn rate_per_hour(&self) -> Option<f64> {
        let secs = self.session_started.elapsed().as_secs_f64();
        (self.session_labels > 0 && secs >= 60.0)
            .then(|| self.session_labels as f64 * 3600.0 / secs)
    }

    fn say(&mut self, text: impl Into<String>, error: bool) {
        let secs = if error { 8 } else { 3 };
        self.flash = Some(Flash {
            text: text.into(),
            error,
            until: Instant::now() + Duration::from_secs(secs),
        });
    }

    fn refresh_progress(&mut self) {
        match self.store.progress(&self.config.annotator) {
            Ok(p) => self.progress = p,
            Err(e) => self.say(format!("cannot read progress: {e}"), true),
        }
        self.tell_feed();
    }

    /// Claims the next pair: first from where the last one was found (judged pairs
    /// form a prefix), then from the start (an expired claim, an undo elsewhere).
    fn claim_next(&mut self) -> crate::store::Result<Option<i64>> {
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

    /// Shows `items` as a list instead of the queue; Enter opens one, and a
    /// judgement made then replaces the one under review (which stays in the
    /// history), `s` keeps it; either way the list comes back.
    pub fn start_review(&mut self, items: Vec<crate::store::ReviewItem>) {
        self.release();
        let mut previews = HashMap::new();
        for item in &items {
            let text = match self.store.pair(item.pair_id) {
                Ok(Some(p)) => {
                    let t: String = p.prompt.text.chars().take(300).collect();
                    sanitize(&t.split_whitespace().collect::<Vec<_>>().join(" "))
                }
                Ok(None) => "(gone)".into(),
                Err(e) => format!("(cannot read: {e})"),
            };
            previews.insert(item.pair_id, text);
        }
        self.review = Some(Review {
            items,
            previews,
            ..Default::default()
        });
        self.show_nothing();
        self.mode = Mode::ReviewList;
        self.refresh_progress();
    }

    /// Back from a pair under review to the list, the next open item selected.
    fn back_to_list(&mut self) {
        self.show_nothing();
        self.release();
        if let Some(r) = &mut self.review {
            r.on_screen = None;
            r.selected = r.next_open(r.selected);
        }
        self.mode = Mode::ReviewList;
        // A message about the pair that was on screen is stale now; an error stays.
        if self.flash.as_ref().is_some_and(|f| !f.error) {
            self.flash = None;
        }
    }

    /// Takes the pair off the screen (its unsaved note kept for later).
    fn show_nothing(&mut self) {
        if let Some(cur) = self.current.take()
            && let Some(note) = cur.note
        {
            self.notes.insert(cur.pair.id, note);
        }
    }

    /// Opens the item selected in the review list.
    fn open_selected(&mut self) {
        let Some(item) = self
            .review
            .as_ref()
            .and_then(|r| r.items.get(r.selected))
            .cloned()
        else {
            return;
        };
        let id = item.pair_id;
        if let Some(r) = &mut self.review {
            r.on_screen = Some(item);
        }
        self.show(Some(id));
        if self.current.is_some() {
            self.mode = Mode::Label;
        }
    }

    /// Releases this labeler's claim (on quit); a labeler that dies loses its claim
    /// when it expires.
    pub fn release(&mut self) {
        if let Err(e) = self.store.release_claims(&self.session) {
            tracing::warn!(error = %e, "cannot release the claim");
        }
    }

    /// Shows `pair_id`, or the next pair in the queue when `None`.
    fn show(&mut self, pair_id: Option<i64>) {
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

    fn advance(&mut self) {
        self.show(None);
        self.refresh_progress();
    }

    fn choice_of(&self, pick: Pick) -> Option<Choice> {
        let cur = self.current.as_ref()?;
        Some(match pick {
            Pick::Left => Choice::from_side(cur.left),
            Pick::Right => Choice::from_side(cur.left.other()),
            Pick::Tie => Choice::Tie,
            Pick::BothBad => Choice::BothBad,
        })
    }

    /// Writes the judgement; only once it is committed does the next pair show.
    fn commit(&mut self, pick: Pick, strength: Option<Strength>) {
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
                self.notify_trainer(Command::LabelsChanged);
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
    fn model_verdict(&self, pair_id: i64, choice: Choice, left: Option<Side>) -> String {
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

    fn undo(&mut self) {
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
                    self.notify_trainer(Command::LabelsChanged);
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

    fn move_selection(&mut self, by: i64) {
        if let Some(r) = &mut self.review {
            let last = r.items.len().saturating_sub(1) as i64;
            r.selected = (r.selected as i64 + by).clamp(0, last) as usize;
        }
    }

    fn scroll_by(&mut self, pane: Pane, lines: i64) {
        let i = pane.index();
        let max = self.drawn.max_scroll[i];
        let now = self.scroll[i].min(max) as i64;
        self.scroll[i] = (now + lines).clamp(0, max.min(i64::MAX as usize) as i64) as usize;
    }

    fn page_height(&self, pane: Pane) -> i64 {
        let r = self.drawn.panes[pane.index()];
        i64::from(r.height.saturating_sub(3)).max(1)
    }

    /// Takes in what the last frame drew (`view::draw` returns it).
    pub fn drawn(&mut self, drawn: Drawn) {
        self.drawn = drawn;
    }

    /// Runs an action and says what it did.
    pub fn update(&mut self, action: Action) -> Outcome {
        self.outcome = Outcome::Nothing;
        self.apply(action);
        std::mem::take(&mut self.outcome)
    }

    fn apply(&mut self, action: Action) {
        if let Some(f) = &self.flash
            && Instant::now() >= f.until
        {
            self.flash = None;
        }
        match (&self.mode, action) {
            (_, Action::Quit) => {
                self.should_quit = true;
                self.release();
            }
            (_, Action::Resize { width, height }) => self.size = Rect::new(0, 0, width, height),
            (_, Action::Tick) => {
                if self.claim_renewed.elapsed() > crate::store::CLAIM_TTL / 5 {
                    self.claim_renewed = Instant::now();
                    if let Err(e) = self.store.renew_claims(&self.session) {
                        tracing::warn!(error = %e, "cannot renew the claim");
                    }
                }
            }
            (_, Action::Trainer(e)) => self.on_trainer(e),
            (_, Action::Feed(e)) => self.on_feed(e),

            (Mode::Help, Action::ToggleHelp | Action::Cancel) => {
                self.mode = if self.review.is_some() && self.current.is_none() {
                    Mode::ReviewList
                } else {
                    Mode::Label
                }
            }
            (Mode::Help, Action::Scroll(n)) => {
                let max = self.drawn.help_max_scroll as i64;
                self.help_scroll = (self.help_scroll as i64 + i64::from(n)).clamp(0, max) as usize;
            }
            (Mode::Help, Action::Page(n)) => {
                let max = self.drawn.help_max_scroll as i64;
                let h = i64::from(self.size.height.saturating_sub(6)).max(1);
                self.help_scroll =
                    (self.help_scroll as i64 + i64::from(n) * h).clamp(0, max) as usize;
            }
            (Mode::Help, _) => {}

            (Mode::Note(_), Action::NoteChar(c)) => {
                if let Mode::Note(s) = &mut self.mode
                    && !c.is_control()
                    && s.chars().count() < 2000
                {
                    s.push(c);
                }
            }
            (Mode::Note(_), Action::NoteBackspace) => {
                if let Mode::Note(s) = &mut self.mode {
                    s.pop();
                }
            }
            (Mode::Note(s), Action::Confirm) => {
                let note = s.trim().to_owned();
                if let Some(cur) = &mut self.current {
                    cur.note = (!note.is_empty()).then_some(note);
                }
                self.mode = Mode::Label;
                self.say(
                    "note kept: it is saved with your judgement of this pair",
                    false,
                );
            }
            (Mode::Note(_), Action::Cancel) => self.mode = Mode::Label,
            (Mode::Note(_), _) => {}

            (Mode::Strength(pick), Action::Strength(v)) => {
                let pick = *pick;
                self.commit(pick, Strength::new(v));
            }
            (Mode::Strength(pick), Action::Confirm) => {
                let pick = *pick;
                self.commit(pick, None);
            }
            (Mode::Strength(_), Action::Cancel) => self.mode = Mode::Label,
            (Mode::Strength(_), _) => {}

            (Mode::Label, Action::Choose { pick, ask_strength }) => {
                if self.current.is_none() {
                    return;
                }
                let decisive = matches!(pick, Pick::Left | Pick::Right);
                if decisive && (ask_strength || self.config.always_strength) {
                    self.mode = Mode::Strength(pick);
                } else {
                    self.commit(pick, None);
                }
            }
            (Mode::Label, Action::Skip) => {
                if let Some(cur) = &self.current {
                    let pair_id = cur.pair.id;
                    self.skipped.insert(pair_id);
                    self.history.push(Done::Skip { pair_id });
                    match &mut self.review {
                        // In review, skipping keeps the judgement as it is.
                        Some(r) => {
                            r.kept.insert(pair_id);
                            self.back_to_list();
                        }
                        None => self.advance(),
                    }
                }
            }
            (Mode::Label, Action::Cancel) if self.review.is_some() => self.back_to_list(),

            (Mode::ReviewList, Action::Scroll(n)) => self.move_selection(i64::from(n)),
            (Mode::ReviewList, Action::Page(n)) => {
                let page = i64::from(self.size.height.saturating_sub(8)).max(1);
                self.move_selection(i64::from(n) * page);
            }
            (Mode::ReviewList, Action::Confirm) => self.open_selected(),
            (Mode::ReviewList, Action::Undo) => self.undo(),
            (Mode::ReviewList, Action::ToggleHelp) => {
                self.help_scroll = 0;
                self.mode = Mode::Help;
            }
            (Mode::ReviewList, _) => {}
            (Mode::Label, Action::Undo) => self.undo(),
            (Mode::Label, Action::StartNote) => {
                if let Some(cur) = &self.current {
                    self.mode = Mode::Note(cur.note.clone().unwrap_or_default());
                }
            }
            (Mode::Label, Action::Scroll(n)) => self.scroll_by(self.focus, i64::from(n)),
            (Mode::Label, Action::Page(n)) => {
                let h = self.page_height(self.focus);
                self.scroll_by(self.focus, i64::from(n) * h);
            }
            (Mode::Label, Action::ScrollAt { column, row, lines }) => {
                let hit = [Pane::Prompt, Pane::Left, Pane::Right]
                    .into_iter()
                    .map(|p| (p, self.drawn.panes[p.index()]))
                    .find(|(_, r)| r.contains(ratatui::layout::Position::new(column, row)));
                if let Some((pane, _)) = hit {
                    self.scroll_by(pane, i64::from(lines));
                }
            }
            (Mode::Label, Action::FocusNext) => {
                self.focus = match self.focus {
                    Pane::Prompt => Pane::Left,
                    Pane::Left => Pane::Right,
                    Pane::Right => Pane::Prompt,
                }
            }
            (Mode::Label, Action::FocusPrev) => {
                self.focus = match self.focus {
                    Pane::Prompt => Pane::Right,
                    Pane::Left => Pane::Prompt,
                    Pane::Right => Pane::Left,
                }
            }
            (Mode::Label, Action::ToggleLayout) => {
                self.arrangement = match self.arrangement {
                    Arrangement::SideBySide => Arrangement::Stacked,
                    Arrangement::Stacked => Arrangement::SideBySide,
                };
            }
            (Mode::Label, Action::ToggleDiff) => self.diff = !self.diff,
            (Mode::Label, Action::ToggleTraining) => self.show_training = !self.show_training,
            (Mode::Label, Action::TogglePause) => match self.train.state {
                _ if self.trainer.is_none() => self.say(
                    "no trainer: started with --no-train, or the model is missing",
                    false,
                ),
                Some(TrainerState::Paused) => self.notify_trainer(Command::Resume),
                _ => self.notify_trainer(Command::Pause),
            },
            (Mode::Label, Action::ToggleHelp) => {
                self.help_scroll = 0;
                self.mode = Mode::Help;
            }
            (Mode::Label, _) => {}
        }
    }
}
