//! How a connection ended, in words for its one log line and as a label for the metrics.
//!
//! The log's `outcome` says what happened: `http closed`, `websocket closed`, `status 404`,
//! `websocket aborted by client (read: …)`, … (the README's log section lists them all).
//! `websocket` stands for any upgraded tunnel (WebSocket, or a protocol `--allow-upgrade`
//! allows). A per-connection failure is never logged as an error.
//!
//! A WebSocket's line says more: who began its end (`ended_by`), frames, messages and control
//! frames each way, the close code and reason length each side sent, and at a drain whether
//! our 1001 went out (docs/operations.md lists the fields).

use std::net::SocketAddr;

use tokio::time::Instant;

use crate::http::Stop;
use crate::metrics::{self, Metrics};
use crate::respond::Status;
use crate::splice::{End, Op, Side, Transfer};
use crate::tls::HandshakeError;
use crate::websocket::Farewell;
use crate::websocket::ending::{Ending, Report};

/// How a connection ended.
pub enum Outcome {
    TlsFailed(HandshakeError),
    /// TLS was set up but the client closed before sending a request.
    NoRequest,
    /// Answered with an error status before any backend was involved.
    Status(Status),
    /// The splice ended, after plain HTTP or an upgrade.
    Tunnel(End<Stop>),
    /// Reading the request head failed at the socket or TLS level.
    ReadFailed(std::io::Error),
    /// Closed when the shutdown grace ran out.
    Forced,
}

/// The fields of the one log line a connection writes when it ends.
#[derive(Default)]
pub struct Summary {
    pub sni: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub route: Option<String>,
    pub backend: Option<String>,
    pub transfer: Transfer,
    /// The WebSocket hook: what the tunnel carried and how it ended.
    pub tunnel: Farewell,
}

/// Request targets are peer-controlled: log at most this much of one. Method and path are
/// logged quoted (Debug), which escapes control characters a peer might send.
const MAX_LOGGED_PATH: usize = 256;

impl Summary {
    /// Counts the connection's end and writes its log line. `client` is logged beside
    /// `peer` when a PROXY header named another address.
    pub fn finish(
        &self,
        outcome: &Outcome,
        peer: SocketAddr,
        client: SocketAddr,
        started: Instant,
        metrics: &Metrics,
    ) {
        metrics.ended(self.label(outcome));
        if let Outcome::Status(s) | Outcome::Tunnel(End::Stopped(Stop::Refused(s))) = outcome {
            metrics.responded(s.code());
        }
        if self.transfer.opened {
            metrics.traffic.closed();
        }
        let report = match outcome {
            Outcome::Tunnel(end) => self.tunnel.report(Some(end)),
            Outcome::Forced => self.tunnel.report::<Stop>(None),
            _ => None,
        };
        self.log(outcome, (peer, client), started, report.as_ref());
    }

    fn label(&self, outcome: &Outcome) -> metrics::OutcomeLabel {
        use metrics::OutcomeLabel as M;
        let exchanged = match self.transfer.opened {
            true => M::Tunnel,
            false => M::Http,
        };
        match outcome {
            Outcome::TlsFailed(_) => M::TlsError,
            Outcome::NoRequest => M::NoRequest,
            Outcome::Status(_) | Outcome::Tunnel(End::Stopped(Stop::Refused(_))) => M::HttpError,
            Outcome::Tunnel(End::Failed(f)) if !f.peer_went_away() => M::Aborted,
            Outcome::Tunnel(End::SendTimeout(_)) => M::Aborted,
            Outcome::Tunnel(_) => exchanged,
            Outcome::ReadFailed(_) => M::Aborted,
            Outcome::Forced => M::Forced,
        }
    }

    fn words(&self, outcome: &Outcome) -> String {
        let what = match self.transfer.opened {
            true => "websocket",
            false => "http",
        };
        match outcome {
            Outcome::TlsFailed(why) => format!("tls: {why}"),
            Outcome::NoRequest => "no request".to_string(),
            Outcome::Status(s) => format!("status {}", s.code()),
            Outcome::Tunnel(End::Closed) => format!("{what} closed"),
            Outcome::Tunnel(End::Farewell) => {
                format!("{what} closed with 1001 going away: shutting down")
            }
            Outcome::Tunnel(End::CloseTimeout) => format!("{what} close-timeout"),
            Outcome::Tunnel(End::IdleTimeout) => format!("{what} idle-timeout"),
            Outcome::Tunnel(End::SendTimeout(Side::Client)) => {
                format!("{what} send-timeout (the client stopped reading)")
            }
            Outcome::Tunnel(End::SendTimeout(Side::Backend)) => {
                format!("{what} send-timeout (the backend stopped reading)")
            }
            Outcome::Tunnel(End::Stopped(Stop::Confined)) => {
                "http closed before a request for another route".to_string()
            }
            Outcome::Tunnel(End::Stopped(Stop::Elsewhere)) => {
                "http closed before a request whose affinity cookie names another backend"
                    .to_string()
            }
            Outcome::Tunnel(End::Stopped(Stop::Refused(s))) => {
                format!("http closed after answering {}", s.code())
            }
            Outcome::Tunnel(End::Stopped(Stop::BadBody)) => {
                "http closed: bad request body framing after the response began".to_string()
            }
            Outcome::Tunnel(End::Stopped(Stop::KeepaliveTimeout)) => {
                "http keepalive-timeout".to_string()
            }
            Outcome::Tunnel(End::Stopped(Stop::BodyTimeout)) => {
                "http body-timeout after the response began".to_string()
            }
            Outcome::Tunnel(End::Stopped(Stop::Drained)) => {
                "http closed at a request boundary: shutting down".to_string()
            }
            Outcome::Tunnel(End::Failed(f)) => {
                let side = match f.side {
                    Side::Client => "client",
                    Side::Backend => "backend",
                };
                let op = match f.op {
                    Op::Read => "read",
                    Op::Write => "write",
                };
                match f.peer_went_away() {
                    true => format!("{what} aborted by {side} ({op}: {})", f.error),
                    false => format!("{what} failed: {side} {op}: {}", f.error),
                }
            }
            Outcome::ReadFailed(e) => format!("client read error: {e}"),
            Outcome::Forced => "closed at shutdown".to_string(),
        }
    }

    fn log(
        &self,
        outcome: &Outcome,
        (peer, client): (SocketAddr, SocketAddr),
        started: Instant,
        ws: Option<&Report>,
    ) {
        let outcome_text = self.words(outcome);
        // Frame counts only while the bytes were framing; close codes as sent.
        let framed = ws.filter(|r| r.framed);
        let tally = |f: fn(&Report) -> u64| framed.map(f);
        let close = |c: Option<crate::websocket::frames::Close>| c.map(|c| (c.code, c.reason));
        let client_close = ws.and_then(|r| close(r.client_close));
        let backend_close = ws.and_then(|r| close(r.backend_close));
        let drained = ws.filter(|r| matches!(r.ending, Ending::Drain | Ending::Shutdown));
        let path = self
            .path
            .as_deref()
            .map(|p| match p.char_indices().nth(MAX_LOGGED_PATH) {
                Some((i, _)) => &p[..i],
                None => p,
            });
        let client = (client != peer).then_some(client);
        let quiet = matches!(outcome, Outcome::TlsFailed(_) | Outcome::NoRequest);
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    peer = %peer,
                    client = client.map(tracing::field::display),
                    sni = %self.sni.as_deref().unwrap_or("-"),
                    method = self.method.as_deref().unwrap_or("-"),
                    path = path.unwrap_or("-"),
                    route = %self.route.as_deref().unwrap_or("-"),
                    backend = %self.backend.as_deref().unwrap_or("-"),
                    outcome = %outcome_text,
                    bytes_up = self.transfer.up,
                    bytes_down = self.transfer.down,
                    duration_ms = started.elapsed().as_millis() as u64,
                    ended_by = ws.map(|r| r.ending.word()),
                    framing = ws.filter(|r| !r.framed).map(|_| "not websocket"),
                    frames_up = tally(|r| r.up.frames),
                    frames_down = tally(|r| r.down.frames),
                    messages_up = tally(|r| r.up.messages),
                    messages_down = tally(|r| r.down.messages),
                    controls_up = tally(|r| r.up.controls),
                    controls_down = tally(|r| r.down.controls),
                    close_client = client_close.map(|c| c.0),
                    close_client_reason = client_close.map(|c| c.1),
                    close_backend = backend_close.map(|c| c.0),
                    close_backend_reason = backend_close.map(|c| c.1),
                    going_away = drained.map(|r| match r.going_away_sent {
                        true => "sent",
                        false => "not sent",
                    }),
                    "connection"
                )
            };
        }
        if quiet {
            line!(tracing::Level::DEBUG);
        } else {
            line!(tracing::Level::INFO);
        }
    }
}
