//! Terminal events to actions, and the one key table they come from: each mode's
//! bindings (keys, action, help line, hints), from which key handling, the hint bar and
//! the help are all derived.

use super::app::{Action, Mode, Pick};
use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers, MouseEventKind};

pub fn action(event: &Event, mode: &Mode) -> Option<Action> {
    match event {
        Event::Key(k) if k.kind != KeyEventKind::Release => key(k, mode),
        Event::Mouse(m) => match m.kind {
            MouseEventKind::ScrollDown => Some(Action::ScrollAt {
                column: m.column,
                row: m.row,
                lines: 3,
            }),
            MouseEventKind::ScrollUp => Some(Action::ScrollAt {
                column: m.column,
                row: m.row,
                lines: -3,
            }),
            _ => None,
        },
        Event::Resize(w, h) => Some(Action::Resize {
            width: *w,
            height: *h,
        }),
        _ => None,
    }
}

pub fn key(k: &KeyEvent, mode: &Mode) -> Option<Action> {
    let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && k.code == KeyCode::Char('c') {
        return Some(Action::Quit);
    }
    if let Some(found) = bindings(mode)
        .iter()
        .find(|b| b.keys.iter().any(|key| key.matches(k)))
    {
        return Some((found.action)());
    }
    // A note takes every other character as text.
    match (mode, k.code) {
        (Mode::Note(_), KeyCode::Char(c)) if !ctrl => Some(Action::NoteChar(c)),
        _ => None,
    }
}

/// A key as the table names it.
#[derive(Debug, Clone, Copy)]
pub enum Key {
    /// A character, whatever the modifiers (`!` comes with Shift on most layouts).
    Char(char),
    /// A key without Shift.
    Plain(KeyCode),
    /// A key with Shift.
    Shift(KeyCode),
    /// A key with or without Shift.
    Any(KeyCode),
}

impl Key {
    fn matches(self, k: &KeyEvent) -> bool {
        let shift = k.modifiers.contains(KeyModifiers::SHIFT);
        match self {
            Key::Char(c) => k.code == KeyCode::Char(c),
            Key::Plain(code) => k.code == code && !shift,
            Key::Shift(code) => k.code == code && shift,
            Key::Any(code) => k.code == code,
        }
    }
}

/// What the screen shows, as far as the hint bar cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// Labeling.
    Label,
    /// Labeling with a trainer attached: its keys are hinted too.
    LabelTrainer,
    /// Judging a pair opened from the review list.
    Review,
    /// The training view over the labeling screen.
    Training,
    Strength,
    Note,
    Help,
    ReviewList,
}

/// A binding's place in one screen's hint bar: hints are shown by rank.
pub struct Hint {
    pub on: &'static [Screen],
    pub rank: u8,
    pub keys: &'static str,
    pub what: &'static str,
}

/// One binding: its keys, what they do, its line in the help (keys as written, what
/// they do) and its hints.
pub struct Binding {
    pub keys: &'static [Key],
    pub action: fn() -> Action,
    pub help: Option<(&'static str, &'static str)>,
    pub hints: &'static [Hint],
}

const fn hint(on: &'static [Screen], rank: u8, keys: &'static str, what: &'static str) -> Hint {
    Hint {
        on,
        rank,
        keys,
        what,
    }
}

/// A binding with no help line and no hint.
const fn plain(keys: &'static [Key], action: fn() -> Action) -> Binding {
    hinted(keys, action, &[])
}

/// A binding with hints but no help line (the help describes the labeling screen).
const fn hinted(keys: &'static [Key], action: fn() -> Action, hints: &'static [Hint]) -> Binding {
    Binding {
        keys,
        action,
        help: None,
        hints,
    }
}

use Screen::{LabelTrainer as LT, Review as RV, Training as TR};
const LABELING: &[Screen] = &[Screen::Label, LT];
const JUDGING: &[Screen] = &[Screen::Label, LT, RV];

/// The labeling screen's keys (also used in review and the training view), in the
/// order the help lists them.
pub const LABEL: &[Binding] = &[
    Binding {
        keys: &[Key::Char('1'), Key::Plain(KeyCode::Left)],
        action: || Action::Choose {
            pick: Pick::Left,
            ask_strength: false,
        },
        help: Some(("1 or ←", "A is better")),
        hints: &[hint(JUDGING, 0, "1/←", "A better")],
    },
    Binding {
        keys: &[Key::Char('2'), Key::Plain(KeyCode::Right)],
        action: || Action::Choose {
            pick: Pick::Right,
            ask_strength: false,
        },
        help: Some(("2 or →", "B is better")),
        hints: &[hint(JUDGING, 1, "2/→", "B better")],
    },
    Binding {
        keys: &[Key::Shift(KeyCode::Left), Key::Char('!')],
        action: || Action::Choose {
            pick: Pick::Left,
            ask_strength: true,
        },
        help: Some(("Shift+← or !", "A is better, then how much (0-3 or Enter)")),
        hints: &[],
    },
    // `"` is Shift+2 on most European layouts.
    Binding {
        keys: &[Key::Shift(KeyCode::Right), Key::Char('@'), Key::Char('"')],
        action: || Action::Choose {
            pick: Pick::Right,
            ask_strength: true,
        },
        help: Some(("Shift+→ or @", "B is better, then how much (0-3 or Enter)")),
        hints: &[],
    },
    Binding {
        keys: &[Key::Char('0'), Key::Char('t')],
        action: || Action::Choose {
            pick: Pick::Tie,
            ask_strength: false,
        },
        help: Some(("0 or t", "tie")),
        hints: &[hint(JUDGING, 2, "0", "tie")],
    },
    Binding {
        keys: &[Key::Char('x')],
        action: || Action::Choose {
            pick: Pick::BothBad,
            ask_strength: false,
        },
        help: Some(("x", "both bad")),
        hints: &[hint(JUDGING, 3, "x", "both bad")],
    },
    Binding {
        keys: &[Key::Char(' '), Key::Char('s')],
        action: || Action::Skip,
        help: Some(("space or s", "skip (for this session)")),
        hints: &[hint(LABELING, 4, "s", "skip"), hint(&[RV], 4, "s", "keep")],
    },
    Binding {
        keys: &[Key::Char('u'), Key::Any(KeyCode::Backspace)],
        action: || Action::Undo,
        help: Some(("u or Backspace", "undo, back through the whole session")),
        hints: &[hint(LABELING, 5, "u", "undo"), hint(&[RV], 6, "u", "undo")],
    },
    Binding {
        keys: &[Key::Char('n')],
        action: || Action::StartNote,
        help: Some(("n", "write a note, saved with the judgement")),
        hints: &[hint(LABELING, 6, "n", "note")],
    },
    Binding {
        keys: &[Key::Char('d')],
        action: || Action::ToggleDiff,
        help: Some(("d", "highlight the words where A and B differ")),
        hints: &[hint(LABELING, 12, "d", "diff")],
    },
    Binding {
        keys: &[Key::Char('j'), Key::Any(KeyCode::Down)],
        action: || Action::Scroll(1),
        help: Some(("j/k ↓/↑", "scroll the focused pane (or the mouse wheel)")),
        hints: &[hint(LABELING, 15, "j/k", "scroll")],
    },
    plain(&[Key::Char('k'), Key::Any(KeyCode::Up)], || {
        Action::Scroll(-1)
    }),
    Binding {
        keys: &[Key::Any(KeyCode::PageDown)],
        action: || Action::Page(1),
        help: Some(("PgUp/PgDn", "scroll a page")),
        hints: &[],
    },
    plain(&[Key::Any(KeyCode::PageUp)], || Action::Page(-1)),
    Binding {
        keys: &[Key::Any(KeyCode::Tab)],
        action: || Action::FocusNext,
        help: Some(("Tab", "focus the next pane")),
        hints: &[hint(LABELING, 14, "Tab", "focus")],
    },
    plain(&[Key::Any(KeyCode::BackTab)], || Action::FocusPrev),
    Binding {
        keys: &[Key::Char('v')],
        action: || Action::ToggleLayout,
        help: Some(("v", "side by side / stacked")),
        hints: &[hint(LABELING, 13, "v", "view")],
    },
    Binding {
        keys: &[Key::Char('m')],
        action: || Action::ToggleTraining,
        help: Some((
            "m",
            "the reward model's training view (loss, held-out accuracy)",
        )),
        hints: &[
            hint(&[LT], 9, "m", "model"),
            hint(&[TR], 0, "m", "back to labeling"),
        ],
    },
    Binding {
        keys: &[Key::Char('p')],
        action: || Action::TogglePause,
        help: Some(("p", "pause / resume training")),
        hints: &[
            hint(&[LT], 10, "p", "pause"),
            hint(&[TR], 1, "p", "pause/resume"),
        ],
    },
    Binding {
        keys: &[Key::Char('?')],
        action: || Action::ToggleHelp,
        help: Some(("?", "this help")),
        hints: &[hint(LABELING, 7, "?", "help")],
    },
    Binding {
        keys: &[Key::Char('q')],
        action: || Action::Quit,
        help: Some(("q", "quit: every judgement is already saved")),
        hints: &[
            hint(LABELING, 8, "q", "quit"),
            hint(&[RV], 7, "q", "quit"),
            hint(&[TR], 2, "q", "quit"),
        ],
    },
    hinted(
        &[Key::Any(KeyCode::Esc)],
        || Action::Cancel,
        &[hint(&[RV], 5, "Esc", "list")],
    ),
];

const STRENGTH: &[Binding] = &[
    hinted(
        &[Key::Char('0')],
        || Action::Strength(0),
        &[hint(&[Screen::Strength], 0, "0-3", "strength")],
    ),
    plain(&[Key::Char('1')], || Action::Strength(1)),
    plain(&[Key::Char('2')], || Action::Strength(2)),
    plain(&[Key::Char('3')], || Action::Strength(3)),
    hinted(
        &[Key::Any(KeyCode::Enter)],
        || Action::Confirm,
        &[hint(&[Screen::Strength], 1, "Enter", "no strength")],
    ),
    hinted(
        &[Key::Any(KeyCode::Esc), Key::Any(KeyCode::Backspace)],
        || Action::Cancel,
        &[hint(&[Screen::Strength], 2, "Esc", "back")],
    ),
    plain(&[Key::Char('q')], || Action::Quit),
];

/// Characters typed into a note are text, whatever the table says (see [`key`]).
const NOTE: &[Binding] = &[
    hinted(
        &[Key::Any(KeyCode::Enter)],
        || Action::Confirm,
        &[hint(&[Screen::Note], 0, "Enter", "keep note")],
    ),
    hinted(
        &[Key::Any(KeyCode::Esc)],
        || Action::Cancel,
        &[hint(&[Screen::Note], 1, "Esc", "cancel")],
    ),
    plain(&[Key::Any(KeyCode::Backspace)], || Action::NoteBackspace),
];

const HELP: &[Binding] = &[
    hinted(
        &[Key::Char('?'), Key::Any(KeyCode::Esc), Key::Char('q')],
        || Action::Cancel,
        &[hint(&[Screen::Help], 1, "?/Esc", "close")],
    ),
    hinted(
        &[Key::Char('j'), Key::Any(KeyCode::Down)],
        || Action::Scroll(1),
        &[hint(&[Screen::Help], 0, "j/k", "scroll")],
    ),
    plain(&[Key::Char('k'), Key::Any(KeyCode::Up)], || {
        Action::Scroll(-1)
    }),
    plain(&[Key::Any(KeyCode::PageDown), Key::Char(' ')], || {
        Action::Page(1)
    }),
    plain(&[Key::Any(KeyCode::PageUp)], || Action::Page(-1)),
];

const REVIEW_LIST: &[Binding] = &[
    hinted(
        &[Key::Char('j'), Key::Any(KeyCode::Down)],
        || Action::Scroll(1),
        &[hint(&[Screen::ReviewList], 0, "j/k", "move")],
    ),
    plain(&[Key::Char('k'), Key::Any(KeyCode::Up)], || {
        Action::Scroll(-1)
    }),
    plain(&[Key::Any(KeyCode::PageDown)], || Action::Page(1)),
    plain(&[Key::Any(KeyCode::PageUp)], || Action::Page(-1)),
    hinted(
        &[Key::Any(KeyCode::Enter)],
        || Action::Confirm,
        &[hint(&[Screen::ReviewList], 1, "Enter", "open")],
    ),
    hinted(
        &[Key::Char('u'), Key::Any(KeyCode::Backspace)],
        || Action::Undo,
        &[hint(&[Screen::ReviewList], 2, "u", "undo")],
    ),
    hinted(
        &[Key::Char('?')],
        || Action::ToggleHelp,
        &[hint(&[Screen::ReviewList], 3, "?", "help")],
    ),
    hinted(
        &[Key::Char('q'), Key::Any(KeyCode::Esc)],
        || Action::Quit,
        &[hint(&[Screen::ReviewList], 4, "q", "quit")],
    ),
];

/// The bindings of a mode.
pub fn bindings(mode: &Mode) -> &'static [Binding] {
    match mode {
        Mode::Label => LABEL,
        Mode::Strength(_) => STRENGTH,
        Mode::Note(_) => NOTE,
        Mode::Help => HELP,
        Mode::ReviewList => REVIEW_LIST,
    }
}

/// The hint bar of a screen, in its order.
pub fn hints(mode: &Mode, screen: Screen) -> Vec<(&'static str, &'static str)> {
    let mut hints: Vec<&Hint> = bindings(mode)
        .iter()
        .flat_map(|b| b.hints)
        .filter(|h| h.on.contains(&screen))
        .collect();
    hints.sort_by_key(|h| h.rank);
    hints.into_iter().map(|h| (h.keys, h.what)).collect()
}

/// The keys part of the help: one line a binding of the labeling screen, keys then what
/// they do.
pub fn label_help() -> String {
    let mut out = String::new();
    for (keys, what) in LABEL.iter().filter_map(|b| b.help) {
        let pad = 16usize.saturating_sub(keys.chars().count());
        out.push_str(keys);
        out.push_str(&" ".repeat(pad.max(1)));
        out.push_str(what);
        out.push('\n');
    }
    out.push_str(
        "\nStrength: 0 negligibly, 1 slightly, 2 better, 3 significantly better.\n\
         The left/right order is random for each pair.",
    );
    out
}

/// Parses a key script for `duel label --script`: each character is a key, and
/// `<name>` is a named key: `left`, `right`, `up`, `down`, `S-left`, `S-right`,
/// `enter`, `esc`, `bs`, `tab`, `pgup`, `pgdn`, `space`, `lt` (a literal `<`).
pub fn parse_script(s: &str) -> Result<Vec<KeyEvent>, String> {
    let mut out = Vec::new();
    let mut chars = s.char_indices();
    while let Some((at, c)) = chars.next() {
        if c != '<' {
            out.push(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE));
            continue;
        }
        let rest = &s[at + 1..];
        let Some(end) = rest.find('>') else {
            return Err(format!(
                "key script, at character {}: `<` without `>`",
                at + 1
            ));
        };
        let name = &rest[..end];
        let (code, m) = match name {
            "left" => (KeyCode::Left, KeyModifiers::NONE),
            "right" => (KeyCode::Right, KeyModifiers::NONE),
            "up" => (KeyCode::Up, KeyModifiers::NONE),
            "down" => (KeyCode::Down, KeyModifiers::NONE),
            "S-left" => (KeyCode::Left, KeyModifiers::SHIFT),
            "S-right" => (KeyCode::Right, KeyModifiers::SHIFT),
            "enter" => (KeyCode::Enter, KeyModifiers::NONE),
            "esc" => (KeyCode::Esc, KeyModifiers::NONE),
            "bs" => (KeyCode::Backspace, KeyModifiers::NONE),
            "tab" => (KeyCode::Tab, KeyModifiers::NONE),
            "pgup" => (KeyCode::PageUp, KeyModifiers::NONE),
            "pgdn" => (KeyCode::PageDown, KeyModifiers::NONE),
            "space" => (KeyCode::Char(' '), KeyModifiers::NONE),
            "lt" => (KeyCode::Char('<'), KeyModifiers::NONE),
            other => {
                return Err(format!(
                    "key script, at character {}: unknown key <{other}>",
                    at + 1
                ));
            }
        };
        out.push(KeyEvent::new(code, m));
        for _ in 0..=name.chars().count() {
            chars.next();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn choose(pick: Pick, ask_strength: bool) -> Option<Action> {
        Some(Action::Choose { pick, ask_strength })
    }

    #[test]
    fn one_key_judges_and_shift_asks_for_strength() {
        let m = Mode::Label;
        assert_eq!(key(&k(KeyCode::Char('1')), &m), choose(Pick::Left, false));
        assert_eq!(key(&k(KeyCode::Right), &m), choose(Pick::Right, false));
        let shifted = KeyEvent::new(KeyCode::Left, KeyModifiers::SHIFT);
        assert_eq!(key(&shifted, &m), choose(Pick::Left, true));
        assert_eq!(key(&k(KeyCode::Char('!')), &m), choose(Pick::Left, true));
        assert_eq!(key(&k(KeyCode::Char('0')), &m), choose(Pick::Tie, false));
        // In the strength prompt the digits are grades.
        let s = Mode::Strength(Pick::Left);
        assert_eq!(key(&k(KeyCode::Char('0')), &s), Some(Action::Strength(0)));
        assert_eq!(key(&k(KeyCode::Char('3')), &s), Some(Action::Strength(3)));
        assert_eq!(key(&k(KeyCode::Char('4')), &s), None);
    }

    #[test]
    fn no_key_is_bound_twice_in_a_mode() {
        let modes = [
            Mode::Label,
            Mode::Strength(Pick::Left),
            Mode::Note(String::new()),
            Mode::Help,
            Mode::ReviewList,
        ];
        for mode in &modes {
            let keys: Vec<String> = bindings(mode)
                .iter()
                .flat_map(|b| b.keys)
                .map(|k| format!("{k:?}"))
                .collect();
            for (i, k) in keys.iter().enumerate() {
                assert!(!keys[i + 1..].contains(k), "{k} twice in {mode:?}");
            }
        }
    }

    #[test]
    fn the_trainer_keys_are_hinted_only_with_a_trainer() {
        let plain = hints(&Mode::Label, Screen::Label);
        let trained = hints(&Mode::Label, Screen::LabelTrainer);
        assert!(!plain.iter().any(|h| h.0 == "m"));
        assert_eq!(trained.len(), plain.len() + 2);
        // The essentials come first either way.
        assert_eq!(plain[..4], trained[..4]);
        assert!(label_help().contains("undo, back through the whole session"));
    }

    #[test]
    fn typing_a_note_does_not_trigger_commands() {
        let m = Mode::Note(String::new());
        assert_eq!(key(&k(KeyCode::Char('q')), &m), Some(Action::NoteChar('q')));
        assert_eq!(key(&k(KeyCode::Char('1')), &m), Some(Action::NoteChar('1')));
        assert_eq!(key(&k(KeyCode::Enter), &m), Some(Action::Confirm));
    }

    #[test]
    fn key_scripts_name_special_keys_and_refuse_unknown_ones() {
        let keys = parse_script("1<S-left>2<lt><bs>").expect("valid");
        let codes: Vec<(KeyCode, KeyModifiers)> =
            keys.iter().map(|k| (k.code, k.modifiers)).collect();
        assert_eq!(
            codes,
            [
                (KeyCode::Char('1'), KeyModifiers::NONE),
                (KeyCode::Left, KeyModifiers::SHIFT),
                (KeyCode::Char('2'), KeyModifiers::NONE),
                (KeyCode::Char('<'), KeyModifiers::NONE),
                (KeyCode::Backspace, KeyModifiers::NONE),
            ]
        );
        assert!(
            parse_script("1<nope>")
                .expect_err("unknown")
                .contains("at character 2")
        );
        assert!(parse_script("1<left").is_err());
    }
}
