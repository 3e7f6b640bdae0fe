//! What the labeler knows of the trainer, and the training view (`m`).

use super::sanitize::sanitize;
use crate::train::messages::{TrainerEvent, TrainerState};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::symbols;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Chart, Dataset, GraphType, Paragraph};
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct TrainView {
    pub state: Option<TrainerState>,
    /// (step, loss) of training steps.
    pub losses: Vec<(f64, f64)>,
    /// (step, held-out accuracy).
    pub accuracy: Vec<(f64, f64)>,
    pub pairs_per_s: Option<f64>,
    pub labels_used: usize,
    pub heldout_pairs: usize,
    pub last_checkpoint: Option<(u64, PathBuf)>,
    pub skipped: u64,
    pub failed: Option<String>,
    pub step: u64,
    /// The last queue scoring: the model's step and how many pairs.
    pub scored: Option<(u64, usize)>,
}

impl TrainView {
    pub fn apply(&mut self, e: &TrainerEvent) {
        match e {
            TrainerEvent::State(s) => self.state = Some(s.clone()),
            TrainerEvent::Started { step, .. } => self.step = *step,
            TrainerEvent::Step {
                step,
                loss,
                pairs_per_s,
                labels_used,
                ..
            } => {
                self.step = *step;
                self.losses.push((*step as f64, *loss));
                self.pairs_per_s = Some(*pairs_per_s);
                self.labels_used = *labels_used;
            }
            TrainerEvent::Skipped { step } => {
                self.step = *step;
                self.skipped += 1;
            }
            TrainerEvent::Eval {
                step,
                accuracy,
                pairs,
                ..
            } => {
                self.accuracy.push((*step as f64, *accuracy));
                self.heldout_pairs = *pairs;
            }
            TrainerEvent::Checkpointed { step, path } => {
                self.last_checkpoint = Some((*step, path.clone()));
            }
            TrainerEvent::Scored { step, pairs } => self.scored = Some((*step, *pairs)),
            TrainerEvent::Failed(msg) => self.failed = Some(msg.clone()),
        }
    }

    pub fn state_text(&self) -> String {
        if let Some(f) = &self.failed {
            return format!("not training: {}", sanitize(f));
        }
        match &self.state {
            None => "off".into(),
            Some(TrainerState::Loading) => "loading the model".into(),
            Some(TrainerState::Waiting { have, need }) => {
                format!("waiting for labels ({have} of {need})")
            }
            Some(TrainerState::Training) => "training".into(),
            Some(TrainerState::CaughtUp { labels }) => {
                format!("caught up: every one of {labels} labels trained on; waiting for more")
            }
            Some(TrainerState::Paused) => "paused (p resumes)".into(),
            Some(TrainerState::Following { holder, host }) => format!(
                "{} trains the model{}; this labeler shows it",
                sanitize(holder),
                host.as_deref()
                    .map_or(String::new(), |h| format!(" on {}", sanitize(h)))
            ),
            Some(TrainerState::NoTrainer) => {
                "no one trains the model yet (a lead's `duel train --follow` would); it shows here when one does".into()
            }
            Some(TrainerState::Stopped) => "stopped".into(),
        }
    }

    /// The compact line shown while labeling: held-out accuracy as a sparkline.
    pub fn compact(&self) -> Line<'static> {
        const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        if let Some(f) = &self.failed {
            // Why, as much as the header holds; the training view (`m`) has it whole.
            const ROOM: usize = 48;
            let why = sanitize(f);
            let why = match why.char_indices().nth(ROOM) {
                Some((cut, _)) => format!("{}… (m)", &why[..cut]),
                None => why,
            };
            return Line::from(Span::styled(
                format!("training off: {why} "),
                Style::new().red(),
            ));
        }
        if self.state.is_none() {
            return Line::from("");
        }
        let last: Vec<f64> = self
            .accuracy
            .iter()
            .rev()
            .take(12)
            .rev()
            .map(|a| a.1)
            .collect();
        let spark: String = last
            .iter()
            .map(|a| BARS[((a.clamp(0.0, 1.0) * 7.0).round()) as usize])
            .collect();
        match last.last() {
            Some(a) => {
                let who = match &self.state {
                    Some(TrainerState::Following { holder, .. }) => {
                        format!("({} trains) ", sanitize(holder))
                    }
                    _ => String::new(),
                };
                Line::from(vec![
                    Span::raw("acc "),
                    Span::styled(spark, Style::new().fg(Color::Green)),
                    Span::raw(format!(" {:.0}% {who}", a * 100.0)),
                ])
            }
            None => {
                let short = match &self.state {
                    Some(TrainerState::Waiting { have, need }) => format!("waiting {have}/{need}"),
                    Some(TrainerState::Loading) => "loading".into(),
                    Some(TrainerState::Training) => "training".into(),
                    Some(TrainerState::CaughtUp { .. }) => "caught up".into(),
                    Some(TrainerState::Paused) => "paused".into(),
                    Some(TrainerState::Following { holder, .. }) => {
                        format!("{} trains", sanitize(holder))
                    }
                    Some(TrainerState::NoTrainer) => "no trainer".into(),
                    _ => "off".into(),
                };
                Line::from(format!("model: {short} ")).dark_gray()
            }
        }
    }
}

fn series<'a>(name: &'a str, color: Color, data: &'a [(f64, f64)]) -> Dataset<'a> {
    Dataset::default()
        .name(name)
        .marker(symbols::Marker::Braille)
        .graph_type(GraphType::Line)
        .style(Style::new().fg(color))
        .data(data)
}

fn step_axis(b: [f64; 2]) -> Axis<'static> {
    Axis::default()
        .bounds(b)
        .labels([format!("{:.0}", b[0]), format!("{:.0}", b[1])])
}

fn bounds(points: &[(f64, f64)]) -> [f64; 2] {
    let lo = points.first().map_or(0.0, |p| p.0);
    let hi = points.last().map_or(1.0, |p| p.0);
    [lo, hi.max(lo + 1.0)]
}

pub fn draw(view: &TrainView, f: &mut Frame, area: Rect) {
    let rows = Layout::vertical([Constraint::Length(4), Constraint::Min(6)]).split(area);
    let ck = match &view.last_checkpoint {
        Some((s, p)) => format!("step {s} in {}", sanitize(&p.display().to_string())),
        None => "none yet".into(),
    };
    let pps = view
        .pairs_per_s
        .map(|p| format!("{p:.1} pairs/s"))
        .unwrap_or_else(|| "–".into());
    let acc = view
        .accuracy
        .last()
        .map(|a| {
            format!(
                "{:.1}% on {} held-out pairs",
                a.1 * 100.0,
                view.heldout_pairs
            )
        })
        .unwrap_or_else(|| "–".into());
    let info = vec![
        Line::from(vec![
            Span::styled(" state ", Style::new().bold()),
            Span::raw(view.state_text()),
            Span::styled("   step ", Style::new().bold()),
            Span::raw(view.step.to_string()),
            Span::styled("   speed ", Style::new().bold()),
            Span::raw(pps),
        ]),
        Line::from(vec![
            Span::styled(" labels used ", Style::new().bold()),
            Span::raw(view.labels_used.to_string()),
            Span::styled("   held-out accuracy ", Style::new().bold()),
            Span::raw(acc),
        ]),
        Line::from(vec![
            Span::styled(" last checkpoint ", Style::new().bold()),
            Span::raw(ck),
            Span::raw(if view.skipped > 0 {
                format!("   {} batches skipped (non-finite loss)", view.skipped)
            } else {
                String::new()
            }),
        ]),
    ];
    f.render_widget(
        Paragraph::new(info).block(Block::bordered().title(Line::from(" Reward model ").bold())),
        rows[0],
    );
    let charts =
        Layout::horizontal([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).split(rows[1]);

    // Loss, smoothed over 10 steps so the trend shows through batch noise.
    let smooth: Vec<(f64, f64)> = view
        .losses
        .iter()
        .enumerate()
        .map(|(i, &(s, _))| {
            let lo = i.saturating_sub(9);
            let w = &view.losses[lo..=i];
            (s, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
        })
        .collect();
    let ymax = smooth.iter().map(|p| p.1).fold(0.8f64, f64::max);
    let xb = bounds(&smooth);
    let loss = Chart::new(vec![series("loss (10-step mean)", Color::Yellow, &smooth)])
        .block(Block::bordered().title(" training loss "))
        .x_axis(step_axis(xb))
        .y_axis(
            Axis::default()
                .bounds([0.0, ymax])
                .labels(["0".to_owned(), format!("{ymax:.2}")]),
        );
    f.render_widget(loss, charts[0]);

    let xb = bounds(&view.accuracy);
    let half = [(xb[0], 0.5), (xb[1], 0.5)];
    let acc = Chart::new(vec![
        series("50% (chance)", Color::DarkGray, &half),
        series("held-out accuracy", Color::Green, &view.accuracy),
    ])
    .block(Block::bordered().title(" held-out accuracy "))
    .x_axis(step_axis(xb))
    .y_axis(Axis::default().bounds([0.0, 1.0]).labels([
        "0".to_owned(),
        "0.5".to_owned(),
        "1".to_owned(),
    ]));
    f.render_widget(acc, charts[1]);
}
