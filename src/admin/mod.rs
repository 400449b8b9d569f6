//! `--admin ADDR`: a plain-HTTP listener for whoever runs wssbridge, not for its clients.
//!
//! - `GET /metrics`: Prometheus text format: the counters of `metrics`, and what is read at
//!   scrape time: live WebSockets and bytes, each backend's health and live connections,
//!   certificate expiry, and the process (descriptors, memory, CPU);
//! - `GET /`: the status page, for people (`page`): version, uptime, listeners, certificates,
//!   routes and each backend's state, connections and WebSockets now, answers by status, the
//!   last reloads, and the last hour in small charts (`board`);
//! - `GET /status.json`: the same data for scripts, in a stable shape;
//! - `GET /livez`, `/healthz`: 200 while the process serves;
//! - `GET /readyz`: 200 when the listeners accept and every route has a backend up; 503 from
//!   the moment shutdown starts (so a balancer in front stops sending before the listeners
//!   close), or while a route has none up. The body says why;
//! - anything else: 404 (405 for a method other than GET or HEAD).
//!
//! What is read at request time is gathered once per request into a `Snapshot` (one walk
//! of the state), which each view encodes: Prometheus text, the page, the JSON.
//!
//! Bounded by its own rules, not the main listener's: a short head deadline, a per-address
//! share and, when full, the oldest connection still waiting for its head closed for a
//! newcomer (`slots`), so a probe is answered while slow clients try to hold the port; by
//! `--max-header-bytes`; in the time an answer's write may take; outside `--max-connections`:
//! a scrape still works when the proxy is full. Answers are written by `respond::answer`, as
//! every answer wssbridge makes itself. It stays up until the process exits, so `/livez`
//! answers through the drain.
//!
//! Only requests whose `Host` is an IP literal, `localhost` or a name given with
//! `--admin-host` are answered (others 421): a page on another site that an operator's
//! browser visits cannot rebind its own name to this address and read `/status.json`.

use std::sync::Arc;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub mod board;
mod endings;
mod page;
mod prometheus;
pub mod slots;
pub mod snapshot;

use board::Board;
use slots::{Slot, Slots};
use snapshot::Snapshot;

use crate::http::head;
use crate::lifecycle::{Phase, Spawner};
use crate::respond;
use crate::state::State;

const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";

/// Time to write one answer: a page of metrics to a client on the same network.
const WRITE_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the admin listener until force, the last stage: it answers through the drain. Each
/// connection is a background task started through the supervisor's `spawner`, and ends at
/// force too.
pub async fn serve(listener: TcpListener, state: Arc<State>, board: Arc<Board>, spawner: Spawner) {
    let slots = Slots::new();
    let forced = state.shutdown.forced();
    tokio::pin!(forced);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut forced => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match slots.enter(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::debug!(%peer, ?why, "admin connection closed at accept");
                continue;
            }
        };
        let (state, board) = (state.clone(), board.clone());
        // Tracked like every task, and ended at force like the listener.
        spawner.background(async move {
            tokio::select! {
                _ = answer(stream, &slot, &state, &board) => {}
                _ = slot.taken() => tracing::debug!(%peer, "admin connection closed for a newcomer"),
                _ = state.shutdown.forced() => {}
            }
        });
    }
}

/// One request, one answer, then close. The write is bounded like the read: a scraper that
/// stops reading does not hold a slot.
async fn answer(stream: TcpStream, slot: &Slot, state: &State, board: &Board) {
    let config = state.serving.load_full();
    let mut stream = BufReader::with_capacity(1024, stream);
    let mut buf = Vec::new();
    let read = head::read(&mut stream, &mut buf, config.max_header_bytes());
    let read = tokio::time::timeout(slots::HEAD_TIME, read).await.ok();
    slot.has_head();
    let (status, content_type, body) = match read {
        Some(Ok(Some(request)))
            if !host_allowed(request.host.as_deref(), &state.process.admin_hosts) =>
        {
            (
                421,
                respond::TEXT,
                "misdirected request: unknown Host\n".to_string(),
            )
        }
        Some(Ok(Some(request))) => route(&request, state, board),
        Some(Ok(None)) => return,
        Some(Err(_)) => (400, respond::TEXT, "bad request\n".to_string()),
        None => (408, respond::TEXT, "request timeout\n".to_string()),
    };
    let head_only = matches!(read_method(&buf), Some("HEAD"));
    let extra = [("Cache-Control", "no-store")];
    let response = respond::answer(status, content_type, &extra, body.as_bytes(), head_only);
    let stream = stream.get_mut();
    let write = async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(WRITE_TIME, write).await;
}

/// Whether an admin request's `Host` names this listener in a way no other site can: an IP
/// literal, `localhost`, or a name given with `--admin-host` (each with any port). A request
/// with no `Host` (HTTP/1.0, HAProxy's checks) comes from no browser and is answered.
pub fn host_allowed(host: Option<&str>, names: &[String]) -> bool {
    let Some(host) = host else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`.
        Some(rest) => match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok();
            }
            _ => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

fn read_method(buf: &[u8]) -> Option<&str> {
    let end = buf.iter().position(|&b| b == b' ')?;
    std::str::from_utf8(&buf[..end]).ok()
}

fn route(request: &head::Head, state: &State, board: &Board) -> (u16, &'static str, String) {
    if request.method != "GET" && request.method != "HEAD" {
        return (405, respond::TEXT, "only GET and HEAD\n".to_string());
    }
    let path = request.target.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => (200, prometheus::CONTENT_TYPE, prometheus::text(state)),
        "/" => {
            let snapshot = Snapshot::gather(state, unready(state));
            (200, HTML, page::html(&snapshot, board))
        }
        "/status.json" => {
            let snapshot = Snapshot::gather(state, unready(state));
            (200, JSON, page::json(&snapshot, board))
        }
        "/livez" | "/healthz" => (200, respond::TEXT, "ok\n".to_string()),
        "/readyz" => match unready(state) {
            None => (200, respond::TEXT, "ready\n".to_string()),
            Some(why) => (503, respond::TEXT, format!("not ready: {why}\n")),
        },
        _ => (404, respond::TEXT, "not found\n".to_string()),
    }
}

/// Why the proxy should not be sent new connections now, if it should not.
fn unready(state: &State) -> Option<String> {
    // A process that handed its listeners to a new one answers for the service, which is
    // ready: the admin socket is shared, and a balancer's probe may land on either.
    match state.shutdown.phase() {
        Phase::Starting => return Some("starting".to_string()),
        Phase::Serving => {}
        // A process that handed its listeners to a new one answers for the service.
        _ if state.shutdown.handing_over() => {}
        _ => return Some("shutting down".to_string()),
    }
    let config = state.serving.load();
    let down: Vec<String> = config
        .pools
        .iter()
        .filter(|pool| !pool.backends().iter().any(|b| b.is_up()))
        .map(|pool| pool.route())
        .collect();
    (!down.is_empty()).then(|| format!("no backend up for route {}", down.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn only_names_no_other_site_can_hold_are_answered() {
        let names = vec!["wssbridge-admin.internal".to_string()];
        for good in [
            None,
            Some("127.0.0.1"),
            Some("127.0.0.1:9090"),
            Some("10.1.2.3:9090"),
            Some("[::1]:9090"),
            Some("[::1]"),
            Some("localhost"),
            Some("LOCALHOST:9090"),
            Some("localhost.:9090"),
            Some("wssbridge-admin.internal:9090"),
        ] {
            assert!(host_allowed(good, &names), "{good:?}");
        }
        for bad in [
            Some("evil.example"),
            Some("evil.example:9090"),
            Some("localhost.evil.example"),
            Some("127.0.0.1.evil.example"),
            Some("[::1]x"),
            Some("[evil]:9090"),
            Some(""),
        ] {
            assert!(!host_allowed(bad, &names), "{bad:?}");
        }
    }
}
