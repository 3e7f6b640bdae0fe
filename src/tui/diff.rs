//! Where two responses differ, by words (`d` in the labeler).

use similar::{ChangeTag, TextDiffConfig};
use std::time::Duration;

/// A run of text and whether it differs from the other side.
pub type Segments = Vec<(String, bool)>;

/// Splits both texts into runs marked as changed or common. Long inputs are cut
/// short by a deadline: the diff is then approximate, never slow.
pub fn word_diff(left: &str, right: &str) -> (Segments, Segments) {
    let diff = TextDiffConfig::default()
        .timeout(Duration::from_millis(150))
        .diff_words(left, right);
    let mut l: Segments = Vec::new();
    let mut r: Segments = Vec::new();
    for change in diff.iter_all_changes() {
        let s: &str = change.value();
        // Whitespace alone is not worth highlighting.
        let changed = !s.trim().is_empty();
        match change.tag() {
            // An equal run has the same text on both sides.
            ChangeTag::Equal => {
                l.push((s.to_owned(), false));
                r.push((s.to_owned(), false));
            }
            ChangeTag::Delete => l.push((s.to_owned(), changed)),
            ChangeTag::Insert => r.push((s.to_owned(), changed)),
        }
    }
    (l, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(s: &Segments) -> Vec<&str> {
        s.iter()
            .filter(|(_, c)| *c)
            .map(|(t, _)| t.as_str())
            .collect()
    }

    #[test]
    fn only_the_differing_words_are_marked() {
        let (l, r) = word_diff("the cat sat on the mat", "the dog sat on the mat");
        assert_eq!(changed(&l), ["cat"]);
        assert_eq!(changed(&r), ["dog"]);
        let all_l: String = l.iter().map(|(t, _)| t.as_str()).collect();
        let all_r: String = r.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(all_l, "the cat sat on the mat");
        assert_eq!(all_r, "the dog sat on the mat");
    }
}
