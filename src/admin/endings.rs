//! The status page's WebSocket sections: how WebSockets ended in the last hour, by side and
//! close code (a bar chart), and the longest-lived ones open now. Rendered here for the page
//! and for `/status.json`; the page's script draws the same from the JSON
//! ([`SCRIPT`], called by `page`'s).

use std::fmt::Write;
use std::time::Duration;

use serde_json::{Value, json};

use super::board::Board;
use super::page::escape;
use super::snapshot::{OLDEST, Snapshot};
use crate::metrics::websockets::Ender;

/// What a close code means, for the chart's legend (RFC 6455 §7.4.1, IANA's registry).
fn meaning(code: &str) -> &'static str {
    match code {
        "1000" => "normal",
        "1001" => "going away",
        "1002" => "protocol error",
        "1003" => "unsupported data",
        "1005" => "no code",
        "1006" => "abnormal",
        "1007" => "invalid data",
        "1008" => "policy",
        "1009" => "too big",
        "1010" => "extension",
        "1011" => "server error",
        "1012" => "restart",
        "1013" => "try again later",
        "1014" => "bad gateway",
        "1015" => "TLS",
        "none" => "no close frame",
        _ => "",
    }
}

/// The last hour's closes, up to this moment.
fn closes(snap: &Snapshot, board: &Board) -> Vec<(Ender, &'static str, u64)> {
    let now: Vec<(Ender, &'static str, u64)> = snap
        .routes
        .iter()
        .flat_map(|r| r.websockets.closes.iter().copied())
        .collect();
    board.closes(&now)
}

/// The oldest open WebSockets of every route, oldest first: (route, age).
fn oldest(snap: &Snapshot) -> Vec<(&str, Duration)> {
    let mut all: Vec<(&str, Duration)> = snap
        .routes
        .iter()
        .flat_map(|r| {
            r.websockets
                .oldest
                .iter()
                .map(|age| (r.route.as_str(), *age))
        })
        .collect();
    all.sort_by_key(|o| std::cmp::Reverse(o.1));
    all.truncate(OLDEST);
    all
}

/// `/status.json`'s `websocket_closes` (the last hour's, by side and code, most first) and
/// `oldest_websockets`.
pub fn json(snap: &Snapshot, board: &Board) -> (Value, Value) {
    let closes: Vec<Value> = closes(snap, board)
        .iter()
        .map(|(side, code, count)| {
            json!({"side": side.label(), "code": code, "meaning": meaning(code), "count": count})
        })
        .collect();
    let window = board.samples().len() as u64 * super::board::SAMPLE_EVERY.as_secs();
    let oldest: Vec<Value> = oldest(snap)
        .iter()
        .map(|(route, age)| json!({"route": route, "age_seconds": age.as_secs()}))
        .collect();
    (
        json!({"window_seconds": window, "closes": closes}),
        Value::Array(oldest),
    )
}

/// The two sections, as HTML.
pub fn html(o: &mut String, snap: &Snapshot, board: &Board) {
    let closes = closes(snap, board);
    let most = closes.first().map_or(1, |c| c.2.max(1));
    o.push_str(
        "<section class=\"two\"><div><h2>How WebSockets ended <small>the last hour</small></h2>\
         <table class=\"closes\"><tr><th>side</th><th>code</th><th>count</th><th></th></tr>",
    );
    for (side, code, count) in &closes {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{} <small>{}</small></td><td>{count}</td><td class=\"bar\">\
             <span style=\"width:{:.0}%\"></span></td></tr>",
            side.label(),
            escape(code),
            meaning(code),
            *count as f64 / most as f64 * 100.0
        );
    }
    if closes.is_empty() {
        o.push_str("<tr><td colspan=\"4\">none yet</td></tr>");
    }
    o.push_str("</table></div><div><h2>Longest-lived WebSockets</h2><table>");
    let oldest = oldest(snap);
    for (route, age) in &oldest {
        let _ = write!(
            o,
            "<tr><td><code>{}</code></td><td>{}</td></tr>",
            escape(route),
            super::page::uptime(age.as_secs())
        );
    }
    if oldest.is_empty() {
        o.push_str("<tr><td>none open</td></tr>");
    }
    o.push_str("</table></div></section>");
}

/// The same sections from `/status.json`, for the page's script: `wsSections(d)` returns
/// their HTML.
pub const SCRIPT: &str = r#"<script>
window.wsSections = (d, esc, uptime) => {
  const c = d.websocket_closes.closes, most = c.length ? Math.max(c[0].count, 1) : 1;
  let h = '<section class="two"><div><h2>How WebSockets ended <small>the last hour</small></h2><table class="closes"><tr><th>side</th><th>code</th><th>count</th><th></th></tr>';
  for (const x of c) h += `<tr><td>${esc(x.side)}</td><td>${esc(x.code)} <small>${esc(x.meaning)}</small></td><td>${x.count}</td><td class="bar"><span style="width:${(x.count/most*100).toFixed(0)}%"></span></td></tr>`;
  if (!c.length) h += '<tr><td colspan="4">none yet</td></tr>';
  h += '</table></div><div><h2>Longest-lived WebSockets</h2><table>';
  for (const x of d.oldest_websockets) h += `<tr><td><code>${esc(x.route)}</code></td><td>${uptime(x.age_seconds)}</td></tr>`;
  if (!d.oldest_websockets.length) h += '<tr><td>none open</td></tr>';
  return h + '</table></div></section>';
};
</script>
"#;
