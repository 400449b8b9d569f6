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
//! Bounded like the main listener (`--header-timeout`, `--max-header-bytes`), in the time an
//! answer's write may take, and by its own small connection limit, outside
//! `--max-connections`: a scrape still works when the proxy is full. Answers are written by
//! `respond::answer`, as every answer wssbridge makes itself. It stays up until the process
//! exits, so `/livez` answers through the drain.

use std::sync::Arc;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub mod board;
mod page;
mod prometheus;
pub mod snapshot;

use board::Board;
use snapshot::Snapshot;

use crate::http::head;
use crate::respond;
use crate::state::State;

const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";

/// Admin connections served at once; more are closed at accept.
const ADMIN_CONNECTIONS: usize = 64;
/// Time to write one answer: a page of metrics to a client on the same network.
const WRITE_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the admin listener until `stop`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    board: Arc<Board>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(ADMIN_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let (state, board) = (state.clone(), board.clone());
        tokio::spawn(async move {
            answer(stream, &state, &board).await;
            drop(slot);
        });
    }
}

/// One request, one answer, then close. The write is bounded like the read: a scraper that
/// stops reading does not hold a slot.
async fn answer(stream: TcpStream, state: &State, board: &Board) {
    let config = state.config.load_full();
    let mut stream = BufReader::with_capacity(1024, stream);
    let mut buf = Vec::new();
    let read = head::read(&mut stream, &mut buf, config.limits.max_header_bytes);
    let deadline = config
        .timeouts
        .header
        .map(|t| tokio::time::Instant::now() + t);
    let read = crate::deadline::within(deadline, read).await;
    let (status, content_type, body) = match read {
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
    if state.life.drain().is_cancelled() && !state.life.handing_over() {
        return Some("shutting down".to_string());
    }
    if !state.running() {
        return Some("starting".to_string());
    }
    let config = state.config.load();
    let down: Vec<String> = config
        .pools
        .iter()
        .filter(|pool| !pool.backends().iter().any(|b| b.is_up()))
        .map(|pool| pool.route())
        .collect();
    (!down.is_empty()).then(|| format!("no backend up for route {}", down.join(", ")))
}
