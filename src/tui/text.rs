//! Wrapping sanitized text into lines of a given display width.
//!
//! Our own wrapper rather than ratatui's `Wrap`: the labeler needs the number of
//! wrapped lines to scroll, the lines cached across frames (a 1 MB response is wrapped
//! once, not on every key), and styled segments (diff highlights) kept through the
//! wrap. Widths come from `unicode-width` per grapheme cluster, so wide characters and
//! emoji take two columns and are never split.

use ratatui::style::Style;
use ratatui::text::{Line, Span};
use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

pub const TAB_STOP: usize = 4;

struct Builder {
    width: usize,
    lines: Vec<Line<'static>>,
    spans: Vec<Span<'static>>,
    buf: String,
    style: Style,
    col: usize,
}

impl Builder {
    fn new(width: usize) -> Builder {
        Builder {
            width: width.max(1),
            lines: Vec::new(),
            spans: Vec::new(),
            buf: String::new(),
            style: Style::default(),
            col: 0,
        }
    }

    fn flush_span(&mut self) {
        if !self.buf.is_empty() {
            self.spans
                .push(Span::styled(std::mem::take(&mut self.buf), self.style));
        }
    }

    fn push(&mut self, text: &str, style: Style, width: usize) {
        if style != self.style {
            self.flush_span();
            self.style = style;
        }
        self.buf.push_str(text);
        self.col += width;
    }

    fn newline(&mut self) {
        self.flush_span();
        self.lines.push(Line::from(std::mem::take(&mut self.spans)));
        self.col = 0;
    }

    fn word(&mut self, word: &str, style: Style) {
        let w = word.width();
        if self.col + w <= self.width {
            self.push(word, style, w);
            return;
        }
        if w <= self.width && self.col > 0 {
            self.newline();
            self.push(word, style, w);
            return;
        }
        // Longer than a line: break between grapheme clusters.
        for g in word.graphemes(true) {
            let gw = g.width();
            if self.col + gw > self.width && self.col > 0 {
                self.newline();
            }
            self.push(g, style, gw);
        }
    }

    fn space(&mut self, space: &str, style: Style) {
        for g in space.graphemes(true) {
            let w = if g == "\t" {
                TAB_STOP - self.col % TAB_STOP
            } else {
                g.width()
            };
            if self.col + w > self.width {
                // A wrap point: the space is not carried to the next line.
                self.newline();
                continue;
            }
            if g == "\t" {
                for _ in 0..w {
                    self.push(" ", style, 1);
                }
            } else {
                self.push(g, style, w);
            }
        }
    }

    fn finish(mut self) -> Vec<Line<'static>> {
        self.newline();
        self.lines
    }
}

/// Wraps styled segments of sanitized text to `width` columns. Newlines end lines;
/// leading indentation is kept; tabs expand to the next multiple of `TAB_STOP`.
pub fn wrap_segments<'a>(
    segments: impl IntoIterator<Item = (&'a str, Style)>,
    width: usize,
) -> Vec<Line<'static>> {
    let mut b = Builder::new(width);
    for (text, style) in segments {
        let mut first = true;
        for line in text.split('\n') {
            if !first {
                b.newline();
            }
            first = false;
            let mut rest = line;
            while !rest.is_empty() {
                let is_space = rest.starts_with(char::is_whitespace);
                let end = rest
                    .find(|c: char| c.is_whitespace() != is_space)
                    .unwrap_or(rest.len());
                let (tok, tail) = rest.split_at(end);
                if is_space {
                    b.space(tok, style);
                } else {
                    b.word(tok, style);
                }
                rest = tail;
            }
        }
    }
    b.finish()
}

pub fn wrap(text: &str, style: Style, width: usize) -> Vec<Line<'static>> {
    wrap_segments([(text, style)], width)
}

/// The display width of a line.
pub fn line_width(line: &Line<'_>) -> usize {
    line.spans.iter().map(|s| s.content.width()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(lines: &[Line<'_>]) -> Vec<String> {
        lines
            .iter()
            .map(|l| l.spans.iter().map(|s| s.content.as_ref()).collect())
            .collect()
    }

    #[test]
    fn words_wrap_at_the_width_and_keep_indentation() {
        let l = wrap(
            "the quick brown fox jumps\n    indented line here",
            Style::default(),
            10,
        );
        let trimmed: Vec<String> = plain(&l).iter().map(|s| s.trim_end().to_owned()).collect();
        assert_eq!(
            trimmed,
            [
                "the quick",
                "brown fox",
                "jumps",
                "",
                "indented",
                "line here"
            ]
        );
        assert!(l.iter().all(|x| line_width(x) <= 10));
    }

    #[test]
    fn wide_characters_and_emoji_are_never_split_or_overflow() {
        let l = wrap("世界世界世界 👍👍👍👍", Style::default(), 5);
        for line in &l {
            assert!(line_width(line) <= 5, "{:?}", plain(&l));
        }
        let joined: String = plain(&l).concat();
        assert_eq!(joined.replace(' ', ""), "世界世界世界👍👍👍👍");
    }

    #[test]
    fn tabs_expand_to_tab_stops() {
        let l = wrap("a\tb\n\tc", Style::default(), 40);
        assert_eq!(plain(&l), ["a   b", "    c"]);
    }

    #[test]
    fn a_megabyte_line_wraps_into_bounded_lines() {
        let big = "x".repeat(1 << 20);
        let l = wrap(&big, Style::default(), 80);
        assert_eq!(l.len(), (1 << 20) / 80 + 1);
        assert!(l.iter().all(|x| line_width(x) <= 80));
    }
}
