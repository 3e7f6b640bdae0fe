//! Terminal events to actions: a pure function of the event and the mode.

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

fn choose(pick: Pick, ask_strength: bool) -> Option<Action> {
    Some(Action::Choose { pick, ask_strength })
}

pub fn key(k: &KeyEvent, mode: &Mode) -> Option<Action> {
    let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
    let shift = k.modifiers.contains(KeyModifiers::SHIFT);
    if ctrl && matches!(k.code, KeyCode::Char('c')) {
        return Some(Action::Quit);
    }
    match mode {
        Mode::Note(_) => match k.code {
            KeyCode::Enter => Some(Action::Confirm),
            KeyCode::Esc => Some(Action::Cancel),
            KeyCode::Backspace => Some(Action::NoteBackspace),
            KeyCode::Char(c) if !ctrl => Some(Action::NoteChar(c)),
            _ => None,
        },
        Mode::Help => match k.code {
            KeyCode::Char('?') | KeyCode::Esc | KeyCode::Char('q') => Some(Action::Cancel),
            KeyCode::Char('j') | KeyCode::Down => Some(Action::Scroll(1)),
            KeyCode::Char('k') | KeyCode::Up => Some(Action::Scroll(-1)),
            KeyCode::PageDown | KeyCode::Char(' ') => Some(Action::Page(1)),
            KeyCode::PageUp => Some(Action::Page(-1)),
            _ => None,
        },
        Mode::ReviewList => match k.code {
            KeyCode::Char('j') | KeyCode::Down => Some(Action::Scroll(1)),
            KeyCode::Char('k') | KeyCode::Up => Some(Action::Scroll(-1)),
            KeyCode::PageDown => Some(Action::Page(1)),
            KeyCode::PageUp => Some(Action::Page(-1)),
            KeyCode::Enter => Some(Action::Confirm),
            KeyCode::Char('u') | KeyCode::Backspace => Some(Action::Undo),
            KeyCode::Char('?') => Some(Action::ToggleHelp),
            KeyCode::Char('q') | KeyCode::Esc => Some(Action::Quit),
            _ => None,
        },
        Mode::Strength(_) => match k.code {
            KeyCode::Char(c @ '0'..='3') => Some(Action::Strength(c as u8 - b'0')),
            KeyCode::Enter => Some(Action::Confirm),
            KeyCode::Esc | KeyCode::Backspace => Some(Action::Cancel),
            KeyCode::Char('q') => Some(Action::Quit),
            _ => None,
        },
        Mode::Label => match k.code {
            KeyCode::Left => choose(Pick::Left, shift),
            KeyCode::Right => choose(Pick::Right, shift),
            KeyCode::Char('1') => choose(Pick::Left, false),
            KeyCode::Char('2') => choose(Pick::Right, false),
            // Shift+1 / Shift+2 on US and most European layouts.
            KeyCode::Char('!') => choose(Pick::Left, true),
            KeyCode::Char('@' | '"') => choose(Pick::Right, true),
            KeyCode::Char('0' | 't') => choose(Pick::Tie, false),
            KeyCode::Char('x') => choose(Pick::BothBad, false),
            KeyCode::Char(' ' | 's') => Some(Action::Skip),
            KeyCode::Char('u') | KeyCode::Backspace => Some(Action::Undo),
            KeyCode::Char('n') => Some(Action::StartNote),
            KeyCode::Char('j') | KeyCode::Down => Some(Action::Scroll(1)),
            KeyCode::Char('k') | KeyCode::Up => Some(Action::Scroll(-1)),
            KeyCode::PageDown => Some(Action::Page(1)),
            KeyCode::PageUp => Some(Action::Page(-1)),
            KeyCode::Tab => Some(Action::FocusNext),
            KeyCode::BackTab => Some(Action::FocusPrev),
            KeyCode::Char('d') => Some(Action::ToggleDiff),
            KeyCode::Char('v') => Some(Action::ToggleLayout),
            KeyCode::Char('m') => Some(Action::ToggleTraining),
            KeyCode::Char('p') => Some(Action::TogglePause),
            KeyCode::Char('?') => Some(Action::ToggleHelp),
            KeyCode::Char('q') => Some(Action::Quit),
            KeyCode::Esc => Some(Action::Cancel),
            _ => None,
        },
    }
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
