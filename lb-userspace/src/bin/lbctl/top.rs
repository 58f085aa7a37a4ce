//! `lbctl top`: a full-screen view of lbd's live numbers (`GET /view`), refreshed every
//! interval: VIPs and backends sorted by traffic, with packets, new flows and requests per
//! second, error rate and p99, health, weight and share; verdicts and drops below. `q`, Esc
//! or Ctrl-C quits.
use std::{collections::HashMap, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use hyper::Method;
use lb_userspace::live_view::{LiveBackend, LiveView};
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Color, Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Row, Table},
};

/// Per second, between two readings.
fn rate(now: u64, before: Option<u64>, seconds: f64) -> f64 {
    match before {
        Some(before) if seconds > 0.0 => now.saturating_sub(before) as f64 / seconds,
        _ => 0.0,
    }
}

fn fmt(x: f64) -> String {
    if x >= 100.0 { format!("{x:.0}") } else { format!("{x:.1}") }
}

/// The 99th percentile upstream latency of the requests between two readings, in ms.
fn p99(now: &LiveBackend, before: Option<&LiveBackend>) -> String {
    let Some(before) = before else { return String::new() };
    let total = now.latency_count.saturating_sub(before.latency_count);
    if total == 0 {
        return String::new();
    }
    let found = now
        .latency
        .iter()
        .zip(&before.latency)
        .find(|((_, n), (_, b))| n.saturating_sub(*b) as f64 >= 0.99 * total as f64);
    match (found, now.latency.last()) {
        (Some(((le, _), _)), _) => fmt(le * 1000.0),
        (None, Some((le, _))) => format!(">{}", fmt(le * 1000.0)),
        (None, None) => String::new(),
    }
}

/// Draws one reading against the one before: a header line, the VIPs and the backends by
/// traffic, and the XDP verdicts.
fn draw(frame: &mut Frame, view: &LiveView, before: Option<&LiveView>) {
    let seconds = before.map_or(0.0, |b| view.at_ms.saturating_sub(b.at_ms) as f64 / 1000.0);
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let areas = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(view.vips.len() as u16 + 3),
        Constraint::Min(4),
        Constraint::Length(3),
    ])
    .split(frame.area());
    frame.render_widget(header(view), areas[0]);
    let vip_table =
        Table::new(vip_rows(view, before, seconds), [12, 26, 5, 12, 12, 14, 12].map(Constraint::Length))
            .header(
                Row::new(["VIP", "address", "mode", "pool", "packets/s", "bytes/s", "new flows/s"])
                    .style(bold),
            )
            .block(Block::bordered().title(" VIPs "));
    frame.render_widget(vip_table, areas[1]);
    let backend_table = Table::new(
        backend_rows(view, before, seconds),
        [12, 26, 8, 7, 6, 8, 11, 12, 11, 9, 8].map(Constraint::Length),
    )
    .header(
        Row::new([
            "pool",
            "backend",
            "health",
            "weight",
            "drain",
            "share %",
            "packets/s",
            "new flows/s",
            "requests/s",
            "errors %",
            "p99 ms",
        ])
        .style(bold),
    )
    .block(Block::bordered().title(" backends (by traffic) "));
    frame.render_widget(backend_table, areas[2]);
    frame.render_widget(
        ratatui::widgets::Paragraph::new(verdicts(view, before, seconds))
            .block(Block::bordered().title(" verdicts ")),
        areas[3],
    );
}

/// Uptime, the connection table's fill and the last reload.
fn header(view: &LiveView) -> Line<'static> {
    let fill = if view.conn_capacity > 0 {
        format!(
            "{:.2}% ({} of {})",
            100.0 * view.conn_used as f64 / view.conn_capacity as f64,
            view.conn_used,
            view.conn_capacity
        )
    } else {
        "no XDP".to_owned()
    };
    let reload = match view.last_reload {
        None => "none",
        Some((_, true)) => "applied",
        Some((_, false)) => "REFUSED",
    };
    Line::from(format!(
        "sluice · up {} s · connection table {fill} · last reload {reload} · q quits",
        view.uptime_seconds
    ))
}

/// A row a VIP, busiest first: its packets, bytes and new flows a second.
fn vip_rows(view: &LiveView, before: Option<&LiveView>, seconds: f64) -> Vec<Row<'static>> {
    let old_vips: HashMap<&str, _> =
        before.map(|b| b.vips.iter().map(|v| (v.name.as_str(), v)).collect()).unwrap_or_default();
    let mut vips: Vec<(f64, Row)> = view
        .vips
        .iter()
        .map(|v| {
            let old = old_vips.get(v.name.as_str());
            let pps = rate(v.packets, old.map(|o| o.packets), seconds);
            let row = Row::new(vec![
                v.name.clone(),
                format!("{}:{}/{}", v.address, v.port, v.protocol),
                v.mode.clone(),
                v.pool.clone(),
                fmt(pps),
                fmt(rate(v.bytes, old.map(|o| o.bytes), seconds)),
                fmt(rate(v.new_flows, old.map(|o| o.new_flows), seconds)),
            ]);
            (pps, row)
        })
        .collect();
    vips.sort_by(|a, b| b.0.total_cmp(&a.0));
    vips.into_iter().map(|(_, r)| r).collect()
}

/// A row a backend, busiest (packets and requests) first: health, weight, share, rates, errors
/// and the proxy's p99.
fn backend_rows(view: &LiveView, before: Option<&LiveView>, seconds: f64) -> Vec<Row<'static>> {
    let old_backends: HashMap<(&str, std::net::IpAddr), &LiveBackend> = before
        .map(|b| b.backends.iter().map(|x| ((x.pool.as_str(), x.address), x)).collect())
        .unwrap_or_default();
    let mut backends: Vec<(f64, Row)> = view
        .backends
        .iter()
        .map(|b| {
            let old = old_backends.get(&(b.pool.as_str(), b.address)).copied();
            let pps = rate(b.packets, old.map(|o| o.packets), seconds);
            let rps = rate(b.requests, old.map(|o| o.requests), seconds);
            let eps = rate(b.errors, old.map(|o| o.errors), seconds);
            let (health, color) = match (b.healthy, b.ejected) {
                (_, true) => ("ejected", Color::Yellow),
                (true, false) => ("up", Color::Green),
                (false, false) => ("DOWN", Color::Red),
            };
            let row = Row::new(vec![
                Cell::from(b.pool.clone()),
                Cell::from(b.address.to_string()),
                Cell::from(health).style(Style::default().fg(color)),
                Cell::from(b.weight.to_string()),
                Cell::from(if b.drain { "drain" } else { "" }),
                Cell::from(fmt(b.share)),
                Cell::from(fmt(pps)),
                Cell::from(fmt(rate(b.new_flows, old.map(|o| o.new_flows), seconds))),
                Cell::from(fmt(rps)),
                Cell::from(if rps > 0.0 { fmt(100.0 * eps / rps) } else { String::new() }),
                Cell::from(p99(b, old)),
            ]);
            (pps + rps, row)
        })
        .collect();
    backends.sort_by(|a, b| b.0.total_cmp(&a.0));
    backends.into_iter().map(|(_, r)| r).collect()
}

/// The XDP verdicts lbd has counted any of, each as a rate since the last reading.
fn verdicts(view: &LiveView, before: Option<&LiveView>, seconds: f64) -> String {
    let verdicts: Vec<String> = view
        .verdicts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(name, n)| {
            let old = before.and_then(|b| b.verdicts.get(name).copied());
            format!("{name} {}/s", fmt(rate(*n, old, seconds)))
        })
        .collect();
    verdicts.join(" · ")
}

/// Runs the view until `q`; the terminal is restored whatever happens.
pub async fn top(socket: &PathBuf, interval: Duration) -> Result<()> {
    let mut terminal = ratatui::try_init().context("opening the terminal")?;
    let shown = async {
        let mut before: Option<LiveView> = None;
        loop {
            let value = crate::client::call(socket, Method::GET, "/view", None).await?;
            let view: LiveView = serde_json::from_value(value).context("lbd's /view answer")?;
            terminal.draw(|frame| draw(frame, &view, before.as_ref()))?;
            before = Some(view);
            // Keys within the interval; the next reading after it.
            let until = std::time::Instant::now() + interval;
            while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                if !event::poll(left)? {
                    break;
                }
                if let Event::Key(key) = event::read()? {
                    let ctrl_c =
                        key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok::<_, anyhow::Error>(());
                    }
                }
            }
        }
    }
    .await;
    ratatui::restore();
    shown
}
