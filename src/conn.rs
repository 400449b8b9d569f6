//! One connection, top to bottom: tls → head → route → connect → splice, then one summary
//! log line.
//!
//! Each step either hands an owned value to the next or ends the connection with an
//! [`Outcome`]: an HTTP error status sent before the tunnel starts, a quiet close when no HTTP
//! was spoken, or the way the tunnel ended.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::coalesce::Coalesce;
use crate::config::Config;
use crate::exchange::{Exchange, Stop, check_upgrade};
use crate::head::{self, Head, HeadError, ReadError};
use crate::readahead::ReadAhead;
use crate::respond::{self, Status};
use crate::route::normalize_host;
use crate::splice::{self, End, Op, Side, Transfer};

/// The client's side once TLS is up: rustls over a socket read in bulk-sized pieces, whose
/// handshake's last writes wait for the first answer.
type Client = TlsStream<Coalesce<ReadAhead<TcpStream>>>;

/// What every connection shares: the configuration and the shutdown signals.
pub struct Shared {
    pub config: Arc<Config>,
    pub acceptor: TlsAcceptor,
    /// Set when shutdown starts: heads still arriving are answered 503.
    pub stopping: CancellationToken,
    /// Set when the shutdown grace is over: every connection is closed.
    pub force: CancellationToken,
    /// Handshakes in progress (`--max-handshakes`).
    pub handshakes: Arc<Semaphore>,
}

/// Serves one accepted connection. `admitted` is false when the connection limit is reached:
/// the client is then answered 503 once its head has arrived.
pub async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, admitted: bool) {
    let started = Instant::now();
    let mut summary = Summary::default();
    let outcome = tokio::select! {
        outcome = pipeline(&shared, stream, started, admitted, &mut summary) => outcome,
        _ = shared.force.cancelled() => Outcome::Forced,
    };
    summary.log(peer, &outcome, started);
}

async fn pipeline(
    shared: &Shared,
    stream: TcpStream,
    started: Instant,
    admitted: bool,
    summary: &mut Summary,
) -> Outcome {
    let timeouts = &shared.config.timeouts;
    // Linux hands accepted sockets the listener's TCP_NODELAY and keepalive settings.
    #[cfg(not(target_os = "linux"))]
    crate::connect::tune(socket2::SockRef::from(&stream));

    // tls: under --handshake-timeout, and never past the header deadline, which counts
    // from accept.
    let header_deadline = timeouts.header.map(|t| started + t);
    let handshake_deadline = timeouts.handshake.map(|t| Instant::now() + t);
    let deadline = match (handshake_deadline, header_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // A slot among the handshakes in progress, waited for under the same deadline.
    let handshake = async {
        let _slot = shared.handshakes.acquire().await;
        let io = Coalesce::new(ReadAhead::new(stream));
        match shared.acceptor.accept(io).into_fallible().await {
            Ok(client) => Ok(client),
            Err((e, io)) => {
                // The alert that says why.
                io.release().await;
                Err(e)
            }
        }
    };
    let handshake = match deadline {
        Some(d) => match tokio::time::timeout_at(d.into(), handshake).await {
            Ok(r) => r,
            Err(_) => {
                let after = d.saturating_duration_since(started);
                return Outcome::TlsFailed(format!("handshake timed out after {after:?}"));
            }
        },
        None => handshake.await,
    };
    let mut client = match handshake {
        Ok(s) => s,
        Err(e) => return Outcome::TlsFailed(format!("handshake failed: {e}")),
    };
    // TLS 1.3 tickets wait for the answer when the request came with the client's Finished
    // (see `coalesce`).
    let (io, tls) = client.get_mut();
    let request_in_hand = tls.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
        && tls
            .process_new_packets()
            .is_ok_and(|state| state.plaintext_bytes_to_read() > 0);
    io.handshake_done(request_in_hand);
    summary.sni = client.get_ref().1.server_name().map(str::to_string);

    // head: the deadline counts from accept, so trickled bytes do not extend it.
    let mut buf = Vec::new();
    let max = shared.config.limits.max_header_bytes;
    let read = head::read(&mut client, &mut buf, max);
    let read = match header_deadline {
        Some(d) => match tokio::time::timeout_at(d.into(), read).await {
            Ok(r) => r,
            Err(_) => return answer(&mut client, Status::RequestTimeout).await,
        },
        None => read.await,
    };
    let head = match read {
        Ok(Some(head)) => head,
        Ok(None) => return Outcome::NoRequest,
        Err(ReadError::Io(e)) => return Outcome::ReadFailed(e),
        Err(ReadError::Head(e)) => {
            tracing::debug!("refusing request: {e}");
            return answer(&mut client, status_for(e)).await;
        }
    };
    summary.method = Some(head.method.clone());
    summary.path = Some(head.target.clone());
    if !admitted || shared.stopping.is_cancelled() {
        return answer(&mut client, Status::Unavailable).await;
    }

    // route: the Host header, or the SNI name for a request without one.
    let config = &shared.config;
    if let Some(status) = misdirected(config, &head, summary.sni.as_deref()) {
        return answer(&mut client, status).await;
    }
    if let Err(e) = check_upgrade(&head, &config.security.allowed_upgrades) {
        tracing::debug!("refusing request: {e}");
        return answer(&mut client, Status::BadRequest).await;
    }
    let host = head.host.as_deref().or(summary.sni.as_deref());
    let Some(index) = config.routes.find_index(host, &head.target) else {
        return answer(&mut client, Status::NotFound).await;
    };
    let route = config.routes.get(index);
    summary.route = Some(route.to_string());

    // connect
    let Some((mut backend, addr)) = crate::connect::connect(route, timeouts.connect).await else {
        return answer(&mut client, Status::BadGateway).await;
    };
    summary.backend = Some(addr.to_string());

    // splice: every byte read so far, then the two-way copy; under the HTTP rules of the
    // exchange until a WebSocket upgrade opens the tunnel.
    let exchange = Exchange::new(config.clone(), index, summary.sni.clone());
    let end = splice::splice(
        &mut client,
        &mut backend,
        buf,
        Some(Box::new(exchange)),
        (timeouts.idle, timeouts.close),
        &mut summary.transfer,
    )
    .await;
    Outcome::Tunnel(end)
}

/// 421 when the TLS SNI names one host and the request's Host names another that a host
/// route serves: domain fronting, a request sent on a connection set up for someone else.
fn misdirected(config: &Config, head: &Head, sni: Option<&str>) -> Option<Status> {
    let (Some(sni), Some(host)) = (sni, head.host.as_deref()) else {
        return None;
    };
    let differs = normalize_host(sni) != normalize_host(host);
    (config.security.sni_host_check && differs && config.routes.has_host(host))
        .then_some(Status::Misdirected)
}

async fn answer(client: &mut Client, status: Status) -> Outcome {
    respond::send(client, status).await;
    Outcome::Status(status)
}

/// The status that answers a refused head.
pub fn status_for(e: HeadError) -> Status {
    match e {
        HeadError::Malformed(_) => Status::BadRequest,
        HeadError::Method => Status::MethodNotAllowed,
        HeadError::TooLarge => Status::HeadersTooLarge,
        HeadError::Version => Status::VersionNotSupported,
    }
}

/// How a connection ended, for its log line.
enum Outcome {
    TlsFailed(String),
    /// TLS was set up but the client closed before sending a request.
    NoRequest,
    Status(Status),
    Tunnel(End),
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
