//! The screen: layouts, scrolling, the diff, help, and data drawn inert.

use super::*;

#[test]
fn main_screen_80x24() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut app = App::new(demo_store(&dir.path().join("d.db")), config("alice")).expect("app");
    let (t, _) = render(&mut app, 80, 24);
    insta::assert_snapshot!(t.backend());
}

#[test]
fn main_screen_120x40_with_a_conversation() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut app = App::new(demo_store(&dir.path().join("d.db")), config("alice")).expect("app");
    // Skip to the first multi-turn prompt of the demo set.
    while app.current.as_ref().is_some_and(|c| c.turns.len() < 2) {
        press(&mut app, KeyCode::Char('s'));
    }
    assert!(app.current.is_some(), "the demo set has a conversation");
    app.update(Action::Resize {
        width: 120,
        height: 40,
    });
    let (t, text) = render(&mut app, 120, 40);
    assert!(text.contains("Conversation ("), "{text}");
    insta::assert_snapshot!(t.backend());
}

#[test]
fn scrolling_moves_the_focused_pane_and_stops_at_the_end() {
    let long: String = (1..=200).map(|i| format!("line {i}\n")).collect();
    let mut app = App::new(
        store_with(&[("q", &long, &long.replace("line", "row"))]),
        config("a"),
    )
    .expect("app");
    let (_, text) = render(&mut app, 80, 24);
    let word = app
        .current
        .as_ref()
        .expect("pair")
        .left_text
        .split(' ')
        .next()
        .expect("w")
        .to_owned();
    assert!(
        text.lines().any(|l| l.starts_with(&format!("│{word} 1 "))),
        "{text}"
    );
    assert_eq!(app.focus, Pane::Left);
    for _ in 0..5 {
        press(&mut app, KeyCode::Char('j'));
    }
    press(&mut app, KeyCode::PageDown);
    let (_, text) = render(&mut app, 80, 24);
    assert!(app.scroll_of(Pane::Left) > 5);
    // The focused (left) pane no longer shows its first line.
    let first = format!("│{word} 1 ");
    assert!(!text.lines().any(|l| l.starts_with(&first)), "{text}");
    for _ in 0..100 {
        press(&mut app, KeyCode::PageDown);
    }
    let (_, text) = render(&mut app, 80, 24);
    assert!(text.contains("200"), "the end is reachable");
    assert!(text.contains("/201"), "position shown: {text}");
    // Mouse wheel over the right pane scrolls that pane, not the focused one.
    let before = app.scroll_of(Pane::Right);
    app.update(Action::ScrollAt {
        column: 60,
        row: 10,
        lines: 3,
    });
    render(&mut app, 80, 24);
    assert_eq!(app.scroll_of(Pane::Right), before + 3);
    press(&mut app, KeyCode::Tab);
    assert_eq!(app.focus, Pane::Right);
}

#[test]
fn diff_highlights_only_the_differing_words() {
    let mut app = App::new(
        store_with(&[("q", "the cat sat on the mat", "the dog sat on the mat")]),
        config("a"),
    )
    .expect("app");
    press(&mut app, KeyCode::Char('d'));
    let (t, _) = render(&mut app, 80, 24);
    let buf = t.backend().buffer();
    let mut highlighted = String::new();
    for y in 0..buf.area.height - 2 {
        for x in 0..buf.area.width {
            let c = &buf[(x, y)];
            if c.bg == ratatui::style::Color::Yellow {
                highlighted.push_str(c.symbol());
            } else {
                highlighted.push(' ');
            }
        }
    }
    let mut words: Vec<&str> = vec!["cat", "dog"];
    words.sort_unstable();
    let mut found: Vec<&str> = highlighted
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .collect();
    found.sort_unstable();
    assert_eq!(found, words);
}

#[test]
fn hostile_text_is_drawn_inert() {
    let evil = "ok \x1b[2J\x1b]52;c;ZXZpbA==\x07\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\ \u{202e}drow\u{202c} \u{9b}31m \x00\x08\r end";
    let mut app = App::new(store_with(&[(evil, evil, "fine")]), config("a")).expect("app");
    app.update(Action::Resize {
        width: 80,
        height: 24,
    });
    let (t, text) = render(&mut app, 80, 24);
    let buf = t.backend().buffer();
    for cell in buf.content() {
        assert!(
            duel::tui::sanitize::is_inert(cell.symbol()),
            "cell holds a control: {:?}",
            cell.symbol()
        );
    }
    assert!(text.contains("␛[2J"), "the escape is shown as text: {text}");
}

#[test]
fn wide_characters_and_long_lines_keep_the_layout() {
    let wide = "世界".repeat(300) + &"👍🏽".repeat(50) + "\t\tindented";
    let big = "y".repeat(1 << 20);
    let mut app = App::new(store_with(&[("提示 🎉", &wide, &big)]), config("a")).expect("app");
    for (w, h) in [(80, 24), (120, 40), (40, 12)] {
        app.update(Action::Resize {
            width: w,
            height: h,
        });
        let (t, _) = render(&mut app, w, h);
        let buf = t.backend().buffer();
        // Every row still ends with the right border of the B pane where panes are.
        let mid = h / 2;
        let last = buf[(w - 1, mid)].symbol().to_owned();
        assert_eq!(last, "│", "row {mid} at width {w}");
    }
    press(&mut app, KeyCode::Char('v'));
    let (_, text) = render(&mut app, 80, 24);
    assert!(text.contains(" B [2/→]"), "stacked shows both panes");
}

#[test]
fn help_shows_keys_and_guidelines() {
    let mut app = App::new(store_with(&[("q", "a", "b")]), config("a")).expect("app");
    press(&mut app, KeyCode::Char('?'));
    let (_, text) = render(&mut app, 80, 24);
    assert!(text.contains("Help"));
    assert!(text.contains("A is better"));
    // Guidelines are below the keys: scroll to them.
    for _ in 0..30 {
        press(&mut app, KeyCode::Char('j'));
    }
    let (_, text) = render(&mut app, 80, 24);
    assert!(text.contains("Prefer correct answers."), "{text}");
    // Keys do not judge while help is open.
    press(&mut app, KeyCode::Esc);
    assert_eq!(app.mode, Mode::Label);
    assert!(rows(&app, false).is_empty());
}

#[test]
fn the_top_line_keeps_progress_readable_next_to_the_model_state() {
    use duel::train::messages::{TrainerEvent, TrainerState};
    let mut app = App::new(store_with(&[("q1", "a", "b")]), config("annotator")).expect("app");
    let (tx, _rx) = crossbeam_channel::unbounded();
    app.attach_trainer(tx);
    app.update(Action::Trainer(TrainerEvent::State(
        TrainerState::Waiting { have: 0, need: 16 },
    )));
    for w in [80u16, 100, 120] {
        let (_, text) = render(&mut app, w, 24);
        let top = text.lines().next().expect("line");
        assert!(top.contains("model: waiting 0/16"), "{top}");
        assert!(top.contains("judged 0/1"), "{top}");
    }
}

/// A terminal that keeps what was written to it.
#[derive(Clone, Default)]
struct Sink(std::rc::Rc<std::cell::RefCell<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bytes that reach the terminal: every escape sequence is one the renderer
/// itself wrote (CSI cursor moves, colours, clears), never one from the data: no
/// OSC (clipboard writes, links), DCS, BEL, C1 controls, backspace, carriage return,
/// NUL or bidi overrides, even with a 1 MB line in the mix. (Two layers keep them
/// out: our sanitizer shows them inert, `hostile_text_is_drawn_inert`, and ratatui's
/// buffer drops control and zero-width characters; this checks the end result.)
#[test]
fn bytes_written_to_the_terminal_hold_no_control_from_the_data() {
    use ratatui::backend::CrosstermBackend;
    use ratatui::{Terminal, TerminalOptions, Viewport, layout::Rect};
    let evil = format!(
        "a\x1b]52;c;ZXZpbA==\x07b\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\c\x1bP+q626f6f\x1b\\d\u{9b}31me\u{9d}0;t\u{9c}\
         f\x1b[?1049l\x1b[2Jg\x07\x08\x08h\ri\0j\u{202e}k\u{2066}l\u{200b}m\x1b_apc\x1b\\\x1bXsos\x1b\\ {}",
        "Z".repeat(1 << 20)
    );
    let mut app = App::new(store_with(&[(&evil, &evil, &evil)]), config("a")).expect("app");
    for (w, h) in [(80u16, 24u16), (120, 40)] {
        app.update(Action::Resize {
            width: w,
            height: h,
        });
        for diff in [false, true] {
            if app.diff != diff {
                press(&mut app, KeyCode::Char('d'));
            }
            let sink = Sink::default();
            let backend = CrosstermBackend::new(sink.clone());
            let mut t = Terminal::with_options(
                backend,
                TerminalOptions {
                    viewport: Viewport::Fixed(Rect::new(0, 0, w, h)),
                },
            )
            .expect("terminal");
            t.draw(|f| {
                duel::tui::view::draw(&app, f, &mut duel::tui::view::Cache::default());
            })
            .expect("draw");
            let bytes = sink.0.borrow().clone();
            let text = String::from_utf8(bytes.clone()).expect("UTF-8 out");
            for forbidden in [
                '\x07', '\x08', '\r', '\0', '\u{9b}', '\u{9d}', '\u{9c}', '\u{202e}', '\u{2066}',
                '\u{200b}',
            ] {
                assert!(
                    !text.contains(forbidden),
                    "{forbidden:?} reached the terminal"
                );
            }
            // Every ESC starts a CSI with plain parameters and a final byte from the
            // set the renderer uses.
            let mut i = 0;
            while let Some(at) = bytes[i..].iter().position(|&b| b == 0x1b) {
                let s = i + at;
                assert_eq!(
                    bytes.get(s + 1),
                    Some(&b'['),
                    "ESC {:?}",
                    String::from_utf8_lossy(&bytes[s..(s + 12).min(bytes.len())])
                );
                let mut j = s + 2;
                while j < bytes.len()
                    && (bytes[j].is_ascii_digit() || bytes[j] == b';' || bytes[j] == b'?')
                {
                    j += 1;
                }
                let fin = bytes.get(j).copied().unwrap_or(0) as char;
                assert!("mHJKhlG".contains(fin), "CSI ending in {fin:?}");
                i = j + 1;
            }
            assert!(text.contains("duel"), "the header was drawn");
        }
    }
}
