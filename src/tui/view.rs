//! Drawing: reads the `App`, writes the frame, nothing else (the only writes are the
//! wrap cache and the scroll limits, which depend on the frame's size).

use super::app::{App, Arrangement, Drawn, Mode, Pane, Pick};
use super::diff::word_diff;
use super::sanitize::sanitize;
use super::text::{wrap, wrap_segments};
use ratatui::Frame;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, TableState};
use std::collections::HashMap;
use std::rc::Rc;

/// The screen's regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Regions {
    pub header: Rect,
    pub prompt: Rect,
    pub left: Rect,
    pub right: Rect,
    pub status: Rect,
    pub hints: Rect,
}

const HIGHLIGHT: Style = Style::new().fg(Color::Black).bg(Color::Yellow);

fn layout(area: Rect, app: &App, ctx: &mut Ctx<'_>) -> Regions {
    let rows = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .split(area);
    let body = rows[1];
    // The prompt takes what it needs, between 3 rows and 40% of the body.
    let want = (prompt_lines(app, ctx, body.width.saturating_sub(2)).len() + 2)
        .min(usize::from(u16::MAX)) as u16;
    let cap = ((u32::from(body.height) * 2 / 5) as u16).max(3);
    let prompt_h = want.clamp(3, cap).min(body.height);
    let parts = Layout::vertical([Constraint::Length(prompt_h), Constraint::Min(0)]).split(body);
    let dir = match app.arrangement {
        Arrangement::SideBySide => Direction::Horizontal,
        Arrangement::Stacked => Direction::Vertical,
    };
    let halves = Layout::default()
        .direction(dir)
        .constraints([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)])
        .split(parts[1]);
    Regions {
        header: rows[0],
        prompt: parts[0],
        left: halves[0],
        right: halves[1],
        status: rows[2],
        hints: rows[3],
    }
}

/// Wrapped lines of the pair on screen, by pane, width and diff mode: wrapping long
/// responses again for every frame would cost more than drawing them. Kept by the
/// loop between frames; a new pair empties it.
#[derive(Default)]
pub struct Cache {
    pair: Option<i64>,
    lines: HashMap<(Pane, u16, bool), Rc<Vec<Line<'static>>>>,
}

/// What a frame needs besides the app: the cache it reads and fills, and what it
/// learns for the app (`Drawn`).
struct Ctx<'c> {
    cache: &'c mut Cache,
    drawn: Drawn,
}

fn cached(
    app: &App,
    ctx: &mut Ctx<'_>,
    pane: Pane,
    width: u16,
    make: impl FnOnce() -> Vec<Line<'static>>,
) -> Rc<Vec<Line<'static>>> {
    let pair = app.current.as_ref().map(|c| c.pair.id);
    if ctx.cache.pair != pair {
        ctx.cache.pair = pair;
        ctx.cache.lines.clear();
    }
    let key = (pane, width, app.diff && pane != Pane::Prompt);
    ctx.cache
        .lines
        .entry(key)
        .or_insert_with(|| Rc::new(make()))
        .clone()
}

fn prompt_lines(app: &App, ctx: &mut Ctx<'_>, width: u16) -> Rc<Vec<Line<'static>>> {
    cached(app, ctx, Pane::Prompt, width, || {
        let Some(cur) = &app.current else {
            return Vec::new();
        };
        let w = usize::from(width);
        if cur.turns.len() == 1 && cur.pair.prompt.messages.is_none() {
            return wrap(&cur.turns[0].1, Style::default(), w);
        }
        let mut out = Vec::new();
        for (role, content) in &cur.turns {
            let style = match role.as_str() {
                "assistant" => Style::new().fg(Color::Cyan).bold(),
                "system" => Style::new().fg(Color::Magenta).bold(),
                _ => Style::new().fg(Color::Green).bold(),
            };
            out.push(Line::from(Span::styled(format!("{role}:"), style)));
            out.extend(wrap(content, Style::default(), w));
        }
        out
    })
}

fn response_lines(app: &App, ctx: &mut Ctx<'_>, pane: Pane, width: u16) -> Rc<Vec<Line<'static>>> {
    cached(app, ctx, pane, width, || {
        let Some(cur) = &app.current else {
            return Vec::new();
        };
        let w = usize::from(width);
        let text = if pane == Pane::Left {
            &cur.left_text
        } else {
            &cur.right_text
        };
        if text.trim().is_empty() {
            // An empty response is a real one (saying nothing can be the better
            // answer); say so rather than show a blank pane that looks unloaded.
            return vec![Line::from(Span::styled(
                "(empty response)",
                Style::new().fg(Color::DarkGray).italic(),
            ))];
        }
        if !app.diff {
            return wrap(text, Style::default(), w);
        }
        let (l, r) = word_diff(&cur.left_text, &cur.right_text);
        let segs = if pane == Pane::Left { l } else { r };
        wrap_segments(
            segs.iter().map(|(t, changed)| {
                (
                    t.as_str(),
                    if *changed {
                        HIGHLIGHT
                    } else {
                        Style::default()
                    },
                )
            }),
            w,
        )
    })
}

fn pane_block(app: &App, pane: Pane, title: Line<'static>) -> Block<'static> {
    let focused = app.focus == pane && app.mode == Mode::Label;
    let border = if focused {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new().fg(Color::DarkGray)
    };
    Block::bordered().border_style(border).title(title)
}

/// Draws `lines` in `area` inside `block`, scrolled, and records the scroll limit.
fn draw_scrolled(
    f: &mut Frame,
    app: &App,
    drawn: &mut Drawn,
    pane: Pane,
    area: Rect,
    block: Block<'static>,
    lines: &[Line<'static>],
) {
    let inner = block.inner(area);
    let height = usize::from(inner.height);
    let max = lines.len().saturating_sub(height);
    drawn.max_scroll[pane.index()] = max;
    let top = app.scroll_of(pane).min(max);
    let visible: Vec<Line<'static>> = lines.iter().skip(top).take(height).cloned().collect();
    let block = if max > 0 {
        let end = (top + height).min(lines.len());
        let more = if end < lines.len() { " ↓" } else { "" };
        block.title_bottom(
            Line::from(format!(" {}-{}/{}{more} ", top + 1, end, lines.len()))
                .right_aligned()
                .dark_gray(),
        )
    } else {
        block
    };
    f.render_widget(Paragraph::new(visible).block(block), area);
}

/// Draws the app and returns what the app needs to know of the frame.
pub fn draw(app: &App, f: &mut Frame, cache: &mut Cache) -> Drawn {
    let area = f.area();
    let mut ctx = Ctx {
        cache,
        drawn: Drawn::default(),
    };
    let r = layout(area, app, &mut ctx);
    ctx.drawn.panes = [r.prompt, r.left, r.right];
    draw_frame(app, f, &mut ctx, area, &r);
    ctx.drawn
}

fn draw_frame(app: &App, f: &mut Frame, ctx: &mut Ctx<'_>, area: Rect, r: &Regions) {
    draw_header(app, f, r.header);

    if app.show_training {
        let body = Rect {
            y: r.prompt.y,
            height: r.status.y.saturating_sub(r.prompt.y),
            ..r.prompt
        };
        super::training::draw(&app.train, f, body);
        draw_status(app, f, r.status);
        draw_hints(app, f, r.hints);
        return;
    }

    if let (Some(review), None) = (&app.review, &app.current) {
        let body = Rect {
            y: r.prompt.y,
            height: r.status.y.saturating_sub(r.prompt.y),
            ..r.prompt
        };
        draw_review_list(review, f, body);
        draw_status(app, f, r.status);
        draw_hints(app, f, r.hints);
        if app.mode == Mode::Help {
            draw_help(app, f, &mut ctx.drawn, area);
        }
        return;
    }

    match &app.current {
        Some(cur) => {
            let turns = cur.turns.len();
            let title = if turns > 1 {
                format!(" Conversation ({turns} turns) ")
            } else {
                " Prompt ".to_owned()
            };
            let lines = prompt_lines(app, ctx, r.prompt.width.saturating_sub(2));
            let block = pane_block(app, Pane::Prompt, Line::from(title).bold());
            draw_scrolled(
                f,
                app,
                &mut ctx.drawn,
                Pane::Prompt,
                r.prompt,
                block,
                &lines,
            );
            for (pane, rect, name, key) in [
                (Pane::Left, r.left, "A", "1/←"),
                (Pane::Right, r.right, "B", "2/→"),
            ] {
                let lines = response_lines(app, ctx, pane, rect.width.saturating_sub(2));
                let title = Line::from(vec![
                    Span::raw(" "),
                    Span::styled(name, Style::new().bold()),
                    Span::styled(format!(" [{key}] "), Style::new().dark_gray()),
                ]);
                let block = pane_block(app, pane, title);
                draw_scrolled(f, app, &mut ctx.drawn, pane, rect, block, &lines);
            }
        }
        None => {
            let body = Rect {
                y: r.prompt.y,
                height: r.prompt.height + r.left.height.max(r.right.height),
                ..r.prompt
            };
            let msg = vec![
                Line::from(""),
                Line::from("Nothing left to judge.").bold(),
                Line::from(""),
                Line::from(format!(
                    "{} of {} pairs are judged; you judged {}.",
                    app.progress.judged, app.progress.pairs, app.progress.mine
                )),
                match &app.feed_status {
                    Some(st) => Line::from(format!(
                        "More are on the way ({}); u to undo, q to quit.",
                        sanitize(st)
                    )),
                    None => {
                        Line::from("Import more with `duel import FILE`, u to undo, q to quit.")
                    }
                },
            ];
            f.render_widget(
                Paragraph::new(msg).centered().block(Block::bordered()),
                body,
            );
        }
    }
    draw_status(app, f, r.status);
    draw_hints(app, f, r.hints);
    if app.mode == Mode::Help {
        draw_help(app, f, &mut ctx.drawn, area);
    }
}

/// `duel review`'s list: the judgements the model most confidently contradicts.
fn draw_review_list(review: &super::app::Review, f: &mut Frame, area: Rect) {
    let rows = review.items.iter().enumerate().map(|(i, item)| {
        let state = review.state(item);
        let style = match state {
            "relabeled" => Style::new().green(),
            "kept" => Style::new().dark_gray(),
            _ => Style::new(),
        };
        Row::new(vec![
            Cell::from(format!("{}", i + 1)),
            Cell::from(format!("{}", item.pair_id)),
            Cell::from(sanitize(&item.annotator)),
            Cell::from(if item.votes.is_empty() {
                format!("{:.0}%", 100.0 * item.against)
            } else {
                item.p_a
                    .map_or("-".into(), |p| format!("A {:.0}%", 100.0 * p))
            }),
            Cell::from(state),
            Cell::from(
                review
                    .previews
                    .get(&item.pair_id)
                    .cloned()
                    .unwrap_or_default(),
            ),
        ])
        .style(style)
    });
    let header = Row::new(vec![
        "#",
        "pair",
        "judged by",
        "model against",
        "review",
        "prompt",
    ])
    .bold();
    let table = Table::new(
        rows,
        [
            Constraint::Length(4),
            Constraint::Length(7),
            Constraint::Length(12),
            Constraint::Length(13),
            Constraint::Length(9),
            Constraint::Min(10),
        ],
    )
    .header(header)
    .row_highlight_style(Style::new().reversed())
    .block(Block::bordered().title(Line::from(format!(
        " Judgements the model disagrees with ({}) ",
        review.items.len()
    ))));
    let mut state = TableState::default().with_selected(Some(review.selected));
    f.render_stateful_widget(table, area, &mut state);
}

fn draw_header(app: &App, f: &mut Frame, area: Rect) {
    let p = &app.progress;
    let rate = app
        .rate_per_hour()
        .map(|r| format!("{r:.0}/h"))
        .unwrap_or_else(|| "–/h".into());
    let pair = match &app.current {
        Some(c) => match &c.pair.ext_id {
            Some(ext) => format!("pair {} ({})", c.pair.id, sanitize(ext)),
            None => format!("pair {}", c.pair.id),
        },
        None if app.review.is_some() => "review".into(),
        None => "done".into(),
    };
    let left = Line::from(vec![
        Span::styled(" duel ", Style::new().bold().reversed()),
        Span::raw(format!(
            " {pair} · judged {}/{} · you {} · session {} · {rate}",
            p.judged, p.pairs, p.mine, app.session_labels
        )),
    ]);
    let mut right = app.train.compact();
    right.spans.push(Span::styled(
        format!("{} ", sanitize(&app.config.annotator)),
        Style::new().dark_gray(),
    ));
    // The right part gets its width (at most half the line); the left is cut short.
    let right_w = (right.width() as u16).min(area.width / 2);
    let cols = Layout::horizontal([Constraint::Min(0), Constraint::Length(right_w)]).split(area);
    f.render_widget(Paragraph::new(left), cols[0]);
    f.render_widget(Paragraph::new(right.right_aligned()), cols[1]);
}

fn draw_status(app: &App, f: &mut Frame, area: Rect) {
    let line = match &app.mode {
        Mode::Strength(pick) => {
            let name = match pick {
                Pick::Left => "A",
                _ => "B",
            };
            Line::from(vec![
                Span::styled(
                    format!(" {name} is better: how much? "),
                    Style::new().bold(),
                ),
                Span::raw("0 negligibly · 1 slightly · 2 better · 3 significantly · "),
                Span::styled("Enter", Style::new().bold()),
                Span::raw(" none · "),
                Span::styled("Esc", Style::new().bold()),
                Span::raw(" back"),
            ])
            .yellow()
        }
        Mode::Note(s) => {
            let room = usize::from(area.width).saturating_sub(34);
            let shown: String = {
                let chars: Vec<char> = s.chars().collect();
                chars[chars.len().saturating_sub(room)..].iter().collect()
            };
            Line::from(vec![
                Span::styled(" note: ", Style::new().bold()),
                Span::raw(sanitize(&shown)),
                Span::raw("▏"),
                Span::styled("  Enter keep · Esc cancel", Style::new().dark_gray()),
            ])
        }
        _ => match (
            &app.flash,
            app.current.as_ref().and_then(|c| c.note.as_ref()),
        ) {
            (Some(flash), _) => {
                let style = if flash.error {
                    Style::new().fg(Color::White).bg(Color::Red).bold()
                } else {
                    Style::new().fg(Color::Green)
                };
                Line::from(Span::styled(format!(" {} ", sanitize(&flash.text)), style))
            }
            (None, Some(note)) => Line::from(vec![
                Span::styled(" note: ", Style::new().bold()),
                Span::raw(sanitize(note)),
            ]),
            (None, None) if app.diff => Line::from(Span::styled(
                " differing words highlighted (d to hide)",
                HIGHLIGHT,
            )),
            (None, None) if app.mode == Mode::ReviewList => {
                let r = app.review.as_ref();
                let (n, done, kept) =
                    r.map_or((0, 0, 0), |r| (r.items.len(), r.done.len(), r.kept.len()));
                Line::from(Span::styled(
                    format!(
                        " {n} judgements: {done} relabeled, {kept} kept. Enter opens one; judging it again replaces the judgement (the old one stays in the history), s keeps it."
                    ),
                    Style::new().dark_gray(),
                ))
            }
            (None, None) => match app
                .review
                .as_ref()
                .zip(app.current.as_ref())
                .and_then(|(r, c)| r.status(c.left))
                .or_else(|| app.feed_status.clone())
            {
                Some(st) => Line::from(Span::styled(
                    format!(" {}", sanitize(&st)),
                    Style::new().dark_gray(),
                )),
                None => Line::from(""),
            },
        },
    };
    f.render_widget(Paragraph::new(line), area);
}

fn draw_hints(app: &App, f: &mut Frame, area: Rect) {
    use super::keys::Screen;
    let screen = match app.mode {
        Mode::Help => Screen::Help,
        Mode::Note(_) => Screen::Note,
        Mode::Strength(_) => Screen::Strength,
        Mode::ReviewList => Screen::ReviewList,
        Mode::Label if app.show_training => Screen::Training,
        Mode::Label if app.review.is_some() => Screen::Review,
        Mode::Label if app.has_trainer() => Screen::LabelTrainer,
        Mode::Label => Screen::Label,
    };
    let items = super::keys::hints(&app.mode, screen);
    let mut spans = vec![Span::raw(" ")];
    let mut used = 1usize;
    for (key, what) in items {
        let w = key.chars().count() + what.chars().count() + 3;
        if used + w > usize::from(area.width) {
            break;
        }
        used += w;
        spans.push(Span::styled(key, Style::new().bold().fg(Color::Cyan)));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_help(app: &App, f: &mut Frame, drawn: &mut Drawn, area: Rect) {
    let w = area.width.saturating_sub(4).min(100);
    let h = area.height.saturating_sub(2);
    let rect = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + 1,
        width: w,
        height: h,
    };
    f.render_widget(Clear, rect);
    let block = Block::bordered()
        .title(Line::from(" Help: keys and guidelines ").bold())
        .title_bottom(Line::from(" ? or Esc closes · j/k scroll ").right_aligned())
        .border_style(Style::new().fg(Color::Cyan));
    let inner = block.inner(rect);
    let width = usize::from(inner.width);
    let mut lines = vec![Line::from("Keys").add_modifier(Modifier::BOLD)];
    lines.extend(wrap(&super::keys::label_help(), Style::default(), width));
    lines.push(Line::from(""));
    lines.push(Line::from("Guidelines").add_modifier(Modifier::BOLD));
    lines.extend(wrap(
        &sanitize(&app.config.guidelines),
        Style::default(),
        width,
    ));
    let height = usize::from(inner.height);
    let max = lines.len().saturating_sub(height);
    drawn.help_max_scroll = max;
    let top = app.help_scroll.min(max);
    let visible: Vec<Line<'static>> = lines.into_iter().skip(top).take(height).collect();
    f.render_widget(Paragraph::new(visible).block(block), rect);
}
