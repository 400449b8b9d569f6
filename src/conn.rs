//! One connection, top to bottom: tls → http (first head, admission) → connect → splice,
//! then one summary log line.
//!
//! Each step either hands an owned value to the next or ends the connection with an
//! [`Outcome`]: an HTTP error status sent before the tunnel starts, a quiet close when no HTTP
//! was spoken, or the way the tunnel ended. The connection keeps the configuration snapshot
//! it was accepted with to its end.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{Config, Timeouts};
use crate::connect::Connected;
use crate::http::{self, Exchange, Head, ReadError, Refusal, Stop};
use crate::respond::{self, Status};
use crate::splice::{self, End, Op, Preread, Side, Transfer};
use crate::state::State;
use crate::tls::{Client, HandshakeError};

/// Serves one accepted connection. `admitted` is false when the connection limit is reached:
/// the client is then answered 503 once its head has arrived.
pub async fn serve(state: &State, stream: TcpStream, peer: SocketAddr, admitted: bool) {
    let started = Instant::now();
    let config = state.config.load_full();
    let mut summary = Summary::default();
    let client = peer.ip();
    let outcome = tokio::select! {
        outcome = pipeline(state, &config, stream, client, started, admitted, &mut summary) => outcome,
        _ = state.force.cancelled() => Outcome::Forced,
    };
    summary.log(peer, &outcome, started);
}

async fn pipeline(
    state: &State,
    config: &Arc<Config>,
    stream: TcpStream,
    client_ip: IpAddr,
    started: Instant,
    admitted: bool,
    summary: &mut Summary,
) -> Outcome {
    let deadlines = Deadlines::new(&config.timeouts, started);
    // Linux hands accepted sockets the listener's TCP_NODELAY and keepalive settings.
    #[cfg(not(target_os = "linux"))]
    crate::connect::tune(socket2::SockRef::from(&stream));

    // tls
    let handshake = state
        .tls
        .handshake(stream, &state.handshakes, deadlines.handshake(), started);
    let mut client = match handshake.await {
        Ok(client) => client,
        Err(e) => return Outcome::TlsFailed(e),
    };
    summary.sni = client.get_ref().1.server_name().map(str::to_string);

    // http: the first head, then its admission.
    let (head, mut buf) = match first_head(&mut client, config, deadlines.header).await {
        Ok(read) => read,
        Err(outcome) => return outcome,
    };
    summary.method = Some(head.method.clone());
    summary.path = Some(head.target.clone());
    if !admitted || state.stopping.is_cancelled() {
        return answer(&mut client, Status::Unavailable).await;
    }
    let admitted = match http::admit(config, &head, summary.sni.as_deref(), None) {
        Ok(admitted) => admitted,
        Err(Refusal::Status(status)) => return answer(&mut client, status).await,
        Err(Refusal::Confined) => return answer(&mut client, Status::NotFound).await,
    };
    summary.route = Some(config.routes.get(admitted.route).to_string());

    // connect: in the route's balancing order, failing over
    let pool = config.pools.get(admitted.route);
    let (timeout, fail_timeout) = (config.timeouts.connect, config.fail_timeout);
    let connected = crate::connect::connect(pool, client_ip, timeout, fail_timeout).await;
    let Some(Connected {
        stream: mut backend,
        backend: to,
        lease: _lease,
    }) = connected
    else {
        return answer(&mut client, Status::BadGateway).await;
    };
    summary.backend = Some(to.name().to_string());
    drop(to);

    // splice: the first head as it came, then the two-way copy, under the HTTP rules of the
    // exchange until an upgrade opens the tunnel.
    let preread = Preread {
        held: buf.split_off(head.len),
        passed: buf,
    };
    let (route, sni) = (admitted.route, summary.sni.clone());
    let gate = Exchange::after_first(config.clone(), route, sni, &head, admitted.upgrade);
    drop(head); // not kept for the tunnel's life
    let timeouts = (config.timeouts.idle, config.timeouts.close);
    let transfer = &mut summary.transfer;
    let gate = Some(Box::new(gate));
    let end = splice::splice(&mut client, &mut backend, preread, gate, timeouts, transfer).await;
    Outcome::Tunnel(end)
}

/// Reads the first request head under the header deadline, which counts from accept so
/// trickled bytes do not extend it; returns it with every byte read, or how the connection
/// ended (an answered error, a client that left).
async fn first_head(
    client: &mut Client,
    config: &Config,
    deadline: Option<Instant>,
) -> Result<(Head, Vec<u8>), Outcome> {
    let mut buf = Vec::new();
    let read = http::head::read(client, &mut buf, config.limits.max_header_bytes);
    let Some(read) = within(deadline, read).await else {
        return Err(answer(client, Status::RequestTimeout).await);
    };
    match read {
        Ok(Some(head)) => Ok((head, buf)),
        Ok(None) => Err(Outcome::NoRequest),
        Err(ReadError::Io(e)) => Err(Outcome::ReadFailed(e)),
        Err(ReadError::Head(e)) => {
            tracing::debug!("refusing request: {e}");
            Err(answer(client, e.status()).await)
        }
    }
}

/// The deadlines of the stages before the splice, from when the connection was accepted.
struct Deadlines {
    handshake: Option<Duration>,
    /// The end of the first request head: `--header-timeout` after accept.
    header: Option<Instant>,
}

impl Deadlines {
    fn new(timeouts: &Timeouts, started: Instant) -> Deadlines {
        Deadlines {
            handshake: timeouts.handshake,
            header: timeouts.header.map(|t| started + t),
        }
    }

    /// `--handshake-timeout` from now, and never past the header deadline.
    fn handshake(&self) -> Option<Instant> {
        let handshake = self.handshake.map(|t| Instant::now() + t);
        match (handshake, self.header) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// `future`'s output, or `None` if `deadline` came first.
async fn within<F: std::future::Future>(deadline: Option<Instant>, future: F) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, future).await.ok(),
        None => Some(future.await),
    }
}

async fn answer(client: &mut Client, status: Status) -> Outcome {
    respond::send(client, status).await;
    Outcome::Status(status)
}

/// How a connection ended, for its log line.
enum Outcome {
    TlsFailed(HandshakeError),
    /// TLS was set up but the client closed before sending a request.
    NoRequest,
    Status(Status),
    Tunnel(End<Stop>),
    /// Reading the request head failed at the socket or TLS level.
    ReadFailed(std::io::Error),
    /// Closed when the shutdown grace ran out.
    Forced,
}

/// The fields of the one log line a connection writes when it ends.
#[derive(Default)]
struct Summary {
    sni: Option<String>,
    method: Option<String>,
    path: Option<String>,
    route: Option<String>,
    backend: Option<String>,
    transfer: Transfer,
}

/// Request targets are peer-controlled: log at most this much of one. Method and path are
/// logged quoted (Debug), which escapes control characters a peer might send.
const MAX_LOGGED_PATH: usize = 256;

impl Summary {
    fn log(&self, peer: SocketAddr, outcome: &Outcome, started: Instant) {
        let outcome_text = match outcome {
            Outcome::TlsFailed(why) => format!("tls: {why}"),
            Outcome::NoRequest => "no request".to_string(),
            Outcome::Status(s) => format!("status {}", s.code()),
            Outcome::Tunnel(End::Closed) => "tunnel closed".to_string(),
            Outcome::Tunnel(End::CloseTimeout) => "tunnel close-timeout".to_string(),
            Outcome::Tunnel(End::IdleTimeout) => "tunnel idle-timeout".to_string(),
            Outcome::Tunnel(End::Stopped(Stop::Confined)) => {
                "closed before a request for another route".to_string()
            }
            Outcome::Tunnel(End::Stopped(Stop::Refused(s))) => {
                format!("closed after answering a later request {}", s.code())
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
                    true => format!("tunnel aborted by {side} ({op}: {})", f.error),
                    false => format!("tunnel failed: {side} {op}: {}", f.error),
                }
            }
            Outcome::ReadFailed(e) => format!("client read error: {e}"),
            Outcome::Forced => "closed at shutdown".to_string(),
        };
        let path = self
            .path
            .as_deref()
            .map(|p| match p.char_indices().nth(MAX_LOGGED_PATH) {
                Some((i, _)) => &p[..i],
                None => p,
            });
        let quiet = matches!(outcome, Outcome::TlsFailed(_) | Outcome::NoRequest);
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    $level,
                    peer = %peer,
                    sni = %self.sni.as_deref().unwrap_or("-"),
                    method = self.method.as_deref().unwrap_or("-"),
                    path = path.unwrap_or("-"),
                    route = %self.route.as_deref().unwrap_or("-"),
                    backend = %self.backend.as_deref().unwrap_or("-"),
                    outcome = %outcome_text,
                    bytes_up = self.transfer.up,
                    bytes_down = self.transfer.down,
                    ms = started.elapsed().as_millis() as u64,
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
