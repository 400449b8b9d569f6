//! The status page (`/`) and its data (`/status.json`), from one snapshot and the board.
//!
//! The page is rendered here, whole, with no JavaScript framework and nothing loaded from
//! elsewhere (it works on an air-gapped VM); a small script fetches `/status.json` every 5 s
//! and renders the same sections again, and `<noscript>` refreshes the page instead. Every
//! name shown (a route's host, a file name, a certificate name, a health check's error) is
//! escaped: each could hold `<`.
//!
//! `/status.json`'s shape is stable (docs/operations.md documents it); fields may be added,
//! none removed or renamed.

use std::fmt::Write;
use std::time::SystemTime;

use serde_json::{Value, json};

use super::board::{Board, SAMPLE_EVERY, Sample};
use super::endings;
use super::snapshot::{BackendView, Snapshot, Standing};
use crate::balance::Health;
use crate::metrics::websockets::Direction;
use crate::tls::certs::rfc3339;

/// Days to expiry under which a certificate shows amber, and red.
const WARN_DAYS: i64 = 14;
const CRITICAL_DAYS: i64 = 3;

/// `/status.json`, written by `serde_json` (the page's script escapes its strings again for
/// HTML).
pub fn json(snap: &Snapshot, board: &Board) -> String {
    let now = SystemTime::now();
    let listeners: Vec<Value> = board
        .listeners
        .iter()
        .map(|(kind, addr)| json!({"kind": kind, "address": addr.to_string()}))
        .collect();
    let certificates: Vec<Value> = snap
        .certs
        .iter()
        .map(|cert| {
            let days = days_left(cert.not_after, now);
            json!({
                "file": cert.file,
                "names": cert.names,
                "expires": rfc3339(cert.not_after),
                "days_left": days,
                "state": expiry_state(days),
            })
        })
        .collect();
    let routes: Vec<Value> = snap
        .routes
        .iter()
        .map(|route| {
            let backends: Vec<Value> = snap
                .backends
                .iter()
                .filter(|b| b.route == route.route)
                .map(|b| {
                    let down = match &b.health {
                        Health::Up => Value::Null,
                        Health::DownPassively { left } => json!({
                            "by": "connect",
                            "seconds_left": left.as_secs_f64().ceil() as u64,
                        }),
                        Health::DownByCheck { why } => json!({"by": "check", "why": why}),
                    };
                    json!({
                        "backend": b.backend,
                        "from": b.from,
                        "state": state_word(b),
                        "down": down,
                        "connections": b.active,
                        "connect_failures": b.connect_failures,
                    })
                })
                .collect();
            let discovery: Vec<Value> = route
                .discovery
                .iter()
                .map(|d| {
                    let (state, error) = standing(&d.standing);
                    json!({
                        "name": d.name,
                        "state": state,
                        "error": error,
                        "backends": d.backends,
                        "resolved_at": d.resolved_at.map(|t| rfc3339(unix(t))),
                    })
                })
                .collect();
            let affinity = route.placements.map(|(cookie, least)| {
                json!({"placed_by_cookie": cookie, "placed_by_least_conn": least})
            });
            let ws = &route.websockets;
            let closes: Vec<Value> = ws
                .closes
                .iter()
                .map(|(side, code, n)| json!({"side": side.label(), "code": code, "count": n}))
                .collect();
            let websockets = json!({
                "messages": {
                    "client_to_backend": ws.messages(Direction::ClientToBackend),
                    "backend_to_client": ws.messages(Direction::BackendToClient),
                },
                "closes": closes,
                "unframed": ws.unframed,
            });
            json!({
                "route": route.route,
                "policy": route.policy,
                "health_check": route.check,
                "backends": backends,
                "discovery": discovery,
                "affinity": affinity,
                "websockets": websockets,
            })
        })
        .collect();
    let responses: serde_json::Map<String, Value> = snap
        .responses
        .iter()
        .map(|(status, count)| (status.to_string(), json!(count)))
        .collect();
    let reloads: Vec<Value> = board
        .reloads()
        .iter()
        .map(|reload| {
            let (result, error) = match &reload.result {
                Ok(()) => ("success", None),
                Err(e) => ("failure", Some(e)),
            };
            json!({
                "at": rfc3339(unix(reload.at)),
                "trigger": reload.trigger,
                "result": result,
                "error": error,
            })
        })
        .collect();
    let (websocket_closes, oldest_websockets) = endings::json(snap, board);
    let samples = board.samples();
    // One decimal, as the page shows them.
    let series = |f: fn(&Sample) -> f64| -> Vec<f64> {
        samples
            .iter()
            .map(|s| (f(s) * 10.0).round() / 10.0)
            .collect()
    };
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "started_at": rfc3339(unix(board.started_at)),
        "uptime_seconds": board.started.elapsed().as_secs(),
        "ready": snap.unready.is_none(),
        "not_ready_because": snap.unready,
        "connections": snap.connections,
        "websockets": snap.websockets,
        "listeners": listeners,
        "config": {
            "generation": snap.config.generation,
            "loaded_at": rfc3339(snap.config.loaded_at),
            "flags_file": snap.config.flags_file,
        },
        "runtime": {
            "mode": snap.runtime.mode,
            "threads": snap.runtime.threads,
            "accepted_by_thread": snap.runtime.accepted_by_thread,
        },
        "certificates": certificates,
        "routes": routes,
        "responses": responses,
        "reloads": reloads,
        "websocket_closes": websocket_closes,
        "oldest_websockets": oldest_websockets,
        "history": {
            "interval_seconds": SAMPLE_EVERY.as_secs(),
            "connections": series(|s| f64::from(s.connections)),
            "websockets": series(|s| f64::from(s.websockets)),
            "handshakes_per_second": series(|s| f64::from(s.handshakes_per_second)),
            "bytes_per_second": series(|s| f64::from(s.bytes_per_second)),
            "messages_per_second": series(|s| f64::from(s.messages_per_second)),
        },
    })
    .to_string()
    // HTML-safe as well, as Go's encoding/json writes it: `<`, `>` and `&` can stand only
    // inside strings, where `\u003c` is the same character, so the text holds no markup even
    // for a client that ignores its Content-Type.
    .replace('<', "\\u003c")
    .replace('>', "\\u003e")
    .replace('&', "\\u0026")
}

/// A discovered name's state word and error, as the page and `/status.json` show them.
fn standing(standing: &Standing) -> (&'static str, Option<String>) {
    match standing {
        Standing::Resolved => ("resolved", None),
        Standing::Failing { error } => ("failing", Some(error.clone())),
        Standing::Unresolved { error } => ("unresolved", error.clone()),
    }
}

/// `/`: the whole page, rendered here.
pub fn html(snap: &Snapshot, board: &Board) -> String {
    let mut o = String::with_capacity(16 * 1024);
    o.push_str(HEAD);
    o.push_str("<main id=\"main\">");
    main(&mut o, snap, board);
    o.push_str("</main>");
    o.push_str(endings::SCRIPT);
    o.push_str(SCRIPT);
    o.push_str("</body></html>\n");
    o
}

fn main(o: &mut String, snap: &Snapshot, board: &Board) {
    let now = SystemTime::now();
    let ready = match &snap.unready {
        None => "<span class=\"ok\">ready</span>".to_string(),
        Some(why) => format!("<span class=\"bad\">not ready: {}</span>", escape(why)),
    };
    let flags = snap.config.flags_file.as_ref().map_or(String::new(), |f| {
        format!(" from <code>{}</code>", escape(f))
    });
    let _ = write!(
        o,
        "<header><h1>wssbridge <small>{}</small></h1><p>up {} &middot; {ready} &middot; \
         config {} loaded {}{flags}</p></header>",
        escape(env!("CARGO_PKG_VERSION")),
        uptime(board.started.elapsed().as_secs()),
        snap.config.generation,
        escape(&rfc3339(snap.config.loaded_at)),
    );
    let answered: u64 = snap.responses.iter().map(|(_, n)| n).sum();
    let _ = write!(
        o,
        "<section class=\"cards\"><div><b>{}</b>connections</div><div><b>{}</b>WebSockets</div>\
         <div><b>{}</b>answered by wssbridge</div></section>",
        snap.connections, snap.websockets, answered
    );
    let samples = board.samples();
    let _ = write!(
        o,
        "<section class=\"charts\"><h2>{}</h2>",
        span(samples.len())
    );
    type Series = fn(&Sample) -> f64;
    let charts: [(&str, Series); 5] = [
        ("connections", |s| f64::from(s.connections)),
        ("WebSockets", |s| f64::from(s.websockets)),
        ("handshakes/s", |s| f64::from(s.handshakes_per_second)),
        ("bytes/s", |s| f64::from(s.bytes_per_second)),
        ("messages/s", |s| f64::from(s.messages_per_second)),
    ];
    for (name, value) in charts {
        let values: Vec<f64> = samples.iter().map(value).collect();
        chart(o, name, &values);
    }
    o.push_str("</section>");
    endings::html(o, snap, board);

    o.push_str("<section><h2>Routes</h2>");
    for route in &snap.routes {
        let _ = write!(
            o,
            "<h3><code>{}</code> <small>{} &middot; health check {}{}</small></h3>\
             <div class=\"scroll\"><table><tr><th>backend</th><th>state</th>\
             <th>connections</th><th>connect failures</th></tr>",
            escape(&route.route),
            escape(&route.policy),
            escape(&route.check),
            route
                .placements
                .map_or(String::new(), |(cookie, least)| format!(
                    " &middot; placed by cookie {cookie}, by least-conn {least}"
                )),
        );
        for d in &route.discovery {
            let (state, error) = standing(&d.standing);
            let error = error.map_or(String::new(), |e| format!(": {}", escape(&e)));
            let _ = write!(
                o,
                "<tr class=\"discovery {state}\"><td colspan=\"4\"><code>{}</code> {state}{error} \
                 &middot; {} backends</td></tr>",
                escape(&d.name),
                d.backends
            );
        }
        for b in snap.backends.iter().filter(|b| b.route == route.route) {
            let state = match &b.health {
                Health::Up => "<span class=\"ok\">up</span>".to_string(),
                Health::DownPassively { left } => format!(
                    "<span class=\"bad\">down</span> (a connect failed; tried again in {} s)",
                    left.as_secs_f64().ceil() as u64
                ),
                Health::DownByCheck { why } => format!(
                    "<span class=\"bad\">down</span> (health check: {})",
                    escape(why)
                ),
            };
            let _ = write!(
                o,
                "<tr class=\"backend {}\"><td><code>{}</code>{}</td><td>{state}</td><td>{}</td><td>{}</td></tr>",
                state_word(b),
                escape(&b.backend),
                b.from.as_ref().map_or(String::new(), |f| format!(
                    " <small>from {}</small>",
                    escape(f)
                )),
                b.active,
                b.connect_failures
            );
        }
        o.push_str("</table></div>");
    }
    o.push_str("</section>");

    o.push_str("<section><h2>Certificates</h2><div class=\"scroll\"><table><tr><th>names</th><th>expires</th><th>file</th></tr>");
    for cert in &snap.certs {
        let days = days_left(cert.not_after, now);
        let names: Vec<String> = cert.names.iter().map(|n| escape(n)).collect();
        let _ = write!(
            o,
            "<tr class=\"cert expiry-{}\"><td>{}</td><td>{} ({} days)</td><td><code>{}</code></td></tr>",
            expiry_state(days),
            names.join(", "),
            escape(&rfc3339(cert.not_after)),
            days,
            escape(&cert.file)
        );
    }
    o.push_str("</table></div></section>");

    o.push_str("<section class=\"two\"><div><h2>Answered by wssbridge</h2><table>");
    for (status, count) in snap.responses.iter().filter(|(_, n)| *n > 0) {
        let _ = write!(o, "<tr><td>{}</td><td>{count}</td></tr>", escape(status));
    }
    if answered == 0 {
        o.push_str("<tr><td>none yet</td></tr>");
    }
    o.push_str("</table></div><div><h2>Listeners</h2><table>");
    for (kind, addr) in &board.listeners {
        let _ = write!(
            o,
            "<tr><td>{}</td><td><code>{}</code></td></tr>",
            escape(kind),
            escape(&addr.to_string())
        );
    }
    o.push_str("</table></div></section><section><h2>Reloads</h2><ul class=\"reloads\">");
    let reloads = board.reloads();
    for reload in &reloads {
        let what = match &reload.result {
            Ok(()) => "<span class=\"ok\">reloaded</span>".to_string(),
            Err(e) => format!("<span class=\"bad\">failed</span>: {}", escape(e)),
        };
        let _ = write!(
            o,
            "<li>{} ({}) {what}</li>",
            escape(&rfc3339(unix(reload.at))),
            escape(reload.trigger)
        );
    }
    if reloads.is_empty() {
        o.push_str("<li>none since start</li>");
    }
    o.push_str("</ul></section>");
}

/// A small line chart of `values` (oldest first) as inline SVG.
fn chart(o: &mut String, name: &str, values: &[f64]) {
    const W: f64 = 300.0;
    const H: f64 = 60.0;
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let last = values.last().copied().unwrap_or(0.0);
    // The samples there are span the width: a young process's few minutes read as well as
    // a full hour.
    let step = W / (values.len().saturating_sub(1)).max(1) as f64;
    let start = 0.0;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let y = if max > 0.0 {
                H - v / max * (H - 4.0) - 2.0
            } else {
                H - 2.0
            };
            format!("{:.1},{:.1}", start + i as f64 * step, y)
        })
        .collect();
    let _ = write!(
        o,
        "<figure><figcaption>{} <b>{}</b> <small>max {}</small></figcaption>\
         <svg viewBox=\"0 0 300 60\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{}\">\
         <polyline fill=\"none\" stroke=\"currentColor\" stroke-width=\"1.5\" points=\"{}\"/></svg></figure>",
        escape(name),
        human(last),
        human(max),
        escape(name),
        points.join(" ")
    );
}

/// What `n` samples cover, as the charts' heading.
fn span(n: usize) -> String {
    let minutes = (n as u64 * SAMPLE_EVERY.as_secs()).div_ceil(60);
    match minutes {
        0 | 1 => "The last minute".to_string(),
        m if m < 60 => format!("The last {m} minutes"),
        _ => "The last hour".to_string(),
    }
}

fn state_word(b: &BackendView) -> &'static str {
    match b.health {
        Health::Up => "up",
        _ => "down",
    }
}

fn days_left(not_after: i64, now: SystemTime) -> i64 {
    (not_after - unix(now)).div_euclid(86_400)
}

fn expiry_state(days: i64) -> &'static str {
    match days {
        d if d < CRITICAL_DAYS => "critical",
        d if d < WARN_DAYS => "warning",
        _ => "ok",
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub(super) fn uptime(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// 1234567 → 1.2M.
fn human(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e4 => format!("{:.1}k", v / 1e3),
        v if v.fract() == 0.0 => format!("{v:.0}"),
        v => format!("{v:.1}"),
    }
}

/// Text for HTML, in an element or an attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const HEAD: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wssbridge status</title>
<link rel="icon" href="data:,">
<noscript><meta http-equiv="refresh" content="5"></noscript>
<style>
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --warn: #b35900; }
body { font: 15px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 1em; max-width: 72em; }
h1 { margin: 0; font-size: 1.4em; } h2 { font-size: 1.1em; margin: 1.2em 0 .4em; }
h3 { font-size: 1em; margin: .8em 0 .3em; } small { color: GrayText; font-weight: normal; }
header p { margin: .2em 0 0; }
.cards { display: flex; flex-wrap: wrap; gap: .6em; margin-top: 1em; }
.cards div { border: 1px solid #8884; border-radius: 6px; padding: .5em .9em; min-width: 8em; }
.cards b { display: block; font-size: 1.6em; }
.charts { display: flex; flex-wrap: wrap; gap: .6em 1.2em; }
.charts h2 { width: 100%; margin-bottom: 0; }
figure { margin: 0; flex: 1 1 16em; max-width: 24em; }
svg { width: 100%; height: 60px; border-bottom: 1px solid #8886; color: #0969da; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; } td, th { text-align: left; padding: .2em .8em .2em 0; }
th { font-weight: 600; border-bottom: 1px solid #8886; }
.ok { color: var(--ok); font-weight: 600; } .bad { color: var(--bad); font-weight: 600; }
tr.expiry-warning td { color: var(--warn); } tr.expiry-critical td { color: var(--bad); font-weight: 600; }
.two { display: flex; flex-wrap: wrap; gap: 0 3em; }
.reloads { padding-left: 1.2em; margin: 0; } code { font-size: .95em; }
td.bar { width: 10em; } td.bar span { display: block; height: .8em; background: #0969da; min-width: 1px; }
@media (max-width: 40em) { figure { flex-basis: 9em; } svg { height: 36px; } }
</style></head><body>
"#;

/// Fetches `/status.json` every 5 s and renders the same sections again; on a failed fetch
/// it leaves the page as it is and says so.
const SCRIPT: &str = r#"<script>
(() => {
  const esc = (t) => String(t).replace(/[&<>"']/g, (c) => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'})[c]);
  const human = (v) => v >= 1e9 ? (v/1e9).toFixed(1)+'G' : v >= 1e6 ? (v/1e6).toFixed(1)+'M' : v >= 1e4 ? (v/1e3).toFixed(1)+'k' : (Number.isInteger(v) ? String(v) : v.toFixed(1));
  const uptime = (s) => s >= 86400 ? `${Math.floor(s/86400)}d ${Math.floor(s%86400/3600)}h` : s >= 3600 ? `${Math.floor(s/3600)}h ${Math.floor(s%3600/60)}m` : s >= 60 ? `${Math.floor(s/60)}m ${s%60}s` : `${s}s`;
  const chart = (name, values) => {
    const max = values.reduce((a, b) => Math.max(a, b), 0), last = values.length ? values[values.length-1] : 0;
    const step = 300/Math.max(values.length-1, 1), start = 0;
    const pts = values.map((v, i) => `${(start+i*step).toFixed(1)},${(max > 0 ? 60 - v/max*56 - 2 : 58).toFixed(1)}`).join(' ');
    return `<figure><figcaption>${esc(name)} <b>${human(last)}</b> <small>max ${human(max)}</small></figcaption><svg viewBox="0 0 300 60" preserveAspectRatio="none" role="img" aria-label="${esc(name)}"><polyline fill="none" stroke="currentColor" stroke-width="1.5" points="${pts}"/></svg></figure>`;
  };
  const render = (d) => {
    const answered = Object.values(d.responses).reduce((a, b) => a + b, 0);
    let h = `<header><h1>wssbridge <small>${esc(d.version)}</small></h1><p>up ${uptime(d.uptime_seconds)} &middot; ${d.ready ? '<span class="ok">ready</span>' : `<span class="bad">not ready: ${esc(d.not_ready_because)}</span>`} &middot; config ${d.config.generation} loaded ${esc(d.config.loaded_at)}${d.config.flags_file ? ` from <code>${esc(d.config.flags_file)}</code>` : ''}</p></header>`;
    h += `<section class="cards"><div><b>${d.connections}</b>connections</div><div><b>${d.websockets}</b>WebSockets</div><div><b>${answered}</b>answered by wssbridge</div></section>`;
    const hi = d.history;
    const minutes = Math.ceil(hi.connections.length*hi.interval_seconds/60);
    const span = minutes <= 1 ? 'The last minute' : minutes < 60 ? `The last ${minutes} minutes` : 'The last hour';
    h += `<section class="charts"><h2>${span}</h2>${chart('connections', hi.connections)}${chart('WebSockets', hi.websockets)}${chart('handshakes/s', hi.handshakes_per_second)}${chart('bytes/s', hi.bytes_per_second)}${chart('messages/s', hi.messages_per_second)}</section>${window.wsSections(d, esc, uptime)}<section><h2>Routes</h2>`;
    for (const r of d.routes) {
      h += `<h3><code>${esc(r.route)}</code> <small>${esc(r.policy)} &middot; health check ${esc(r.health_check)}${r.affinity ? ` &middot; placed by cookie ${r.affinity.placed_by_cookie}, by least-conn ${r.affinity.placed_by_least_conn}` : ''}</small></h3><div class="scroll"><table><tr><th>backend</th><th>state</th><th>connections</th><th>connect failures</th></tr>`;
      for (const x of r.discovery) h += `<tr class="discovery ${esc(x.state)}"><td colspan="4"><code>${esc(x.name)}</code> ${esc(x.state)}${x.error ? ': ' + esc(x.error) : ''} &middot; ${x.backends} backends</td></tr>`;
      for (const b of r.backends) {
        const state = !b.down ? '<span class="ok">up</span>' : b.down.by === 'connect' ? `<span class="bad">down</span> (a connect failed; tried again in ${b.down.seconds_left} s)` : `<span class="bad">down</span> (health check: ${esc(b.down.why)})`;
        h += `<tr class="backend ${esc(b.state)}"><td><code>${esc(b.backend)}</code>${b.from ? ` <small>from ${esc(b.from)}</small>` : ''}</td><td>${state}</td><td>${b.connections}</td><td>${b.connect_failures}</td></tr>`;
      }
      h += '</table></div>';
    }
    h += '</section><section><h2>Certificates</h2><div class="scroll"><table><tr><th>names</th><th>expires</th><th>file</th></tr>';
    for (const c of d.certificates) h += `<tr class="cert expiry-${esc(c.state)}"><td>${c.names.map(esc).join(', ')}</td><td>${esc(c.expires)} (${c.days_left} days)</td><td><code>${esc(c.file)}</code></td></tr>`;
    h += '</table></div></section><section class="two"><div><h2>Answered by wssbridge</h2><table>';
    for (const [s, n] of Object.entries(d.responses)) if (n > 0) h += `<tr><td>${esc(s)}</td><td>${n}</td></tr>`;
    if (!answered) h += '<tr><td>none yet</td></tr>';
    h += '</table></div><div><h2>Listeners</h2><table>';
    for (const l of d.listeners) h += `<tr><td>${esc(l.kind)}</td><td><code>${esc(l.address)}</code></td></tr>`;
    h += '</table></div></section><section><h2>Reloads</h2><ul class="reloads">';
    for (const r of d.reloads) h += `<li>${esc(r.at)} (${esc(r.trigger)}) ${r.result === 'success' ? '<span class="ok">reloaded</span>' : `<span class="bad">failed</span>: ${esc(r.error)}`}</li>`;
    if (!d.reloads.length) h += '<li>none since start</li>';
    document.getElementById('main').innerHTML = h + '</ul></section>';
  };
  const refresh = () => fetch('/status.json', { cache: 'no-store' })
    .then((r) => r.json()).then(render)
    .catch(() => { document.title = 'wssbridge status (not answering)'; });
  setInterval(refresh, 5000);
})();
</script>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_a_name_is_escaped_in_the_page_and_the_json() {
        assert_eq!(
            escape("<b>x</b> & 'y'"),
            "&lt;b&gt;x&lt;/b&gt; &amp; &#39;y&#39;"
        );
    }

    /// `/status.json` is JSON whatever a name holds: quotes, backslashes, control
    /// characters and markup in a certificate's file name come back as they were.
    #[test]
    fn status_json_parses_and_keeps_names_as_they_are() {
        use super::super::snapshot::CertView;
        let odd = "<b>\"quoted\"</b>\\path\n\u{1}.pem";
        let snap = Snapshot {
            certs: vec![CertView {
                file: odd.to_string(),
                names: vec!["a.example".into()],
                not_after: 4_102_444_800,
            }],
            unready: Some("starting".into()),
            ..Snapshot::default()
        };
        let board = Board::new(vec![("tls", "127.0.0.1:8443".parse().unwrap())]);
        let text = json(&snap, &board);
        let parsed: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(parsed["certificates"][0]["file"], odd);
        assert_eq!(parsed["certificates"][0]["expires"], "2100-01-01T00:00:00Z");
        assert_eq!(parsed["not_ready_because"], "starting");
        assert_eq!(parsed["ready"], false);
        assert_eq!(parsed["listeners"][0]["address"], "127.0.0.1:8443");
        assert!(!text.contains('<') && !text.contains('&'), "{text}");
    }

    #[test]
    fn expiry_turns_amber_then_red() {
        assert_eq!(expiry_state(30), "ok");
        assert_eq!(expiry_state(13), "warning");
        assert_eq!(expiry_state(2), "critical");
        assert_eq!(expiry_state(-1), "critical");
    }
}
