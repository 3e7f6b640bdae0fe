//! `duel review` in the app: the list of judgements to look at again and the one open.

use super::*;

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
    pub(super) fn back_to_list(&mut self) {
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

    /// Opens the item selected in the review list.
    pub(super) fn open_selected(&mut self) {
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

    pub(super) fn move_selection(&mut self, by: i64) {
        if let Some(r) = &mut self.review {
            let last = r.items.len().saturating_sub(1) as i64;
            r.selected = (r.selected as i64 + by).clamp(0, last) as usize;
        }
    }
}
