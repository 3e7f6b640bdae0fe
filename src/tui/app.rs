//! The labeler's state and how actions change it. No terminal here: tests drive an
//! `App` with `Action`s and draw it on a `TestBackend`.

mod judging;
mod review;
mod workers;

pub use review::Review;

use super::sanitize::sanitize;
use super::training::TrainView;
use crate::domain::{Choice, NewLabel, Pair, Side, Strength};
use crate::store::{Progress, Store};
use crate::train::messages::{TrainerCommand, TrainerEvent, TrainerState};
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
    Trainer(TrainerEvent),
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
    trainer: Option<Sender<TrainerCommand>>,
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
        self.notify_feed();
    }

    /// Takes the pair off the screen (its unsaved note kept for later).
    fn show_nothing(&mut self) {
        if let Some(cur) = self.current.take()
            && let Some(note) = cur.note
        {
            self.notes.insert(cur.pair.id, note);
        }
    }

    /// Releases this labeler's claim (on quit); a labeler that dies loses its claim
    /// when it expires.
    pub fn release(&mut self) {
        if let Err(e) = self.store.release_claims(&self.session) {
            tracing::warn!(error = %e, "cannot release the claim");
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
                Some(TrainerState::Paused) => self.notify_trainer(TrainerCommand::Resume),
                _ => self.notify_trainer(TrainerCommand::Pause),
            },
            (Mode::Label, Action::ToggleHelp) => {
                self.help_scroll = 0;
                self.mode = Mode::Help;
            }
            (Mode::Label, _) => {}
        }
    }
}
