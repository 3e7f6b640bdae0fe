//! Text from data is untrusted: nothing of it reaches the terminal as a control.
//!
//! Every C0 and C1 control except newline and tab is replaced by a visible symbol
//! (ESC shows as `␛`, so an escape sequence becomes inert, readable text); bidi
//! overrides and other invisible format characters that could reorder or hide text
//! become `�`; zero-width characters are dropped.

/// Returns text that is safe to draw: only newlines, tabs and printable characters.
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    continue;
                }
                out.push('\u{240D}');
            }
            // C0 controls: the Control Pictures block has one symbol for each.
            '\0'..='\u{1F}' => {
                out.push(char::from_u32(0x2400 + c as u32).unwrap_or('\u{FFFD}'));
            }
            '\u{7F}' => out.push('\u{2421}'),
            // C1 controls (a terminal may read U+009B as CSI).
            '\u{80}'..='\u{9F}' => out.push('\u{FFFD}'),
            '\u{2028}' | '\u{2029}' => out.push('\n'),
            // Bidi embeddings, overrides, isolates and marks: they can make text
            // read differently from how it is stored.
            '\u{061C}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}' => out.push('\u{FFFD}'),
            // Zero-width characters and invisible tags: dropped, they only hide things
            // (U+2065 is unassigned but default-ignorable: a terminal may draw it as
            // nothing).
            '\u{200B}'..='\u{200D}'
            | '\u{2060}'..='\u{2065}'
            | '\u{FEFF}'
            | '\u{E0000}'..='\u{E007F}' => {}
            // Other invisible format characters (interlinear annotation, etc.).
            '\u{FFF9}'..='\u{FFFB}' | '\u{206A}'..='\u{206F}' => out.push('\u{FFFD}'),
            _ => out.push(c),
        }
    }
    out
}

/// Whether `s` is safe to draw (what `sanitize` guarantees).
pub fn is_inert(s: &str) -> bool {
    s.chars().all(|c| {
        c == '\n'
            || c == '\t'
            || !(c.is_control()
                || matches!(c, '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}' | '\u{E0000}'..='\u{E007F}'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_become_visible_text() {
        let s = sanitize(
            "red \x1b[31mX\x1b[0m clip \x1b]52;c;aGVsbG8=\x07 link \x1b]8;;http://x\x1b\\y\x1b]8;;\x1b\\",
        );
        assert!(!s.contains('\x1b') && !s.contains('\x07'));
        assert!(s.contains("␛[31mX"));
        assert!(s.contains("␛]52;c;aGVsbG8=␇"));
        assert!(is_inert(&s));
    }

    #[test]
    fn every_control_and_format_trick_is_neutralised() {
        let nasty = "a\u{0}b\u{8}c\rd\r\ne\u{9b}31m\u{90}dcs\u{9c}\u{202e}evil\u{202c}\u{2066}x\u{2069}\u{200b}z\u{feff}\u{e0041}\u{7f}\u{85}";
        let s = sanitize(nasty);
        assert!(is_inert(&s), "{s:?}");
        assert!(s.contains("a␀b␈c␍d\ne"));
        assert!(!s.contains('\u{202e}'));
        assert!(s.contains("xz") || s.contains("x\u{fffd}z"), "{s:?}");
    }

    #[test]
    fn ordinary_text_is_unchanged() {
        let s = "Grüße, 世界! 👍 tabs\tand\nnewlines — «quotes»";
        assert_eq!(sanitize(s), s);
    }
}
