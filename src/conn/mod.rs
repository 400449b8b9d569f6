//! One connection, top to bottom: tls → http (first head, admission) → connect → splice,
//! then one summary log line and its counts.
//!
//! Each step either hands an owned value to the next or ends the connection with an
//! [`Outcome`]: an HTTP error status sent before the tunnel starts, a quiet close when no HTTP
//! was spoken, or the way the tunnel ended. The connection keeps the configuration snapshot
//! it was accepted with to its end.

mod summary;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::balance::{BackendState, Lease, Pool};
use crate::cidr::Cidr;
use crate::config::ServingConfig;
use crate::connect::{self, Connected, NotConnected};
use crate::deadline::within;
use crate::http::forwarded::{self, Forwarding};
use crate::http::{self, Exchange, Head, ReadError, Refusal};
use crate::proxy_protocol::{self, Origin};
use crate::respond::{self, Status};
use crate::splice;
use crate::state::State;
use crate::tls::{self, HandshakeError, TlsClient};
use crate::websocket::{self, Farewell};
use summary::{Outcome, Summary};

/// A connection as `accept` hands it on.
pub struct Accepted {
    pub stream: TcpStream,
    /// The socket's peer.
    pub peer: SocketAddr,
    /// The client: the peer, or the address a trusted PROXY header named.
    pub client: SocketAddr,
    /// The address the client connected to, when a PROXY header said (else the socket's).
    pub local: Option<SocketAddr>,
    /// Bytes read after the PROXY header: the start of the TLS handshake.
    pub early: Vec<u8>,
    /// When the connection was accepted: the header deadline counts from here, PROXY
    /// header included.
    pub at: Instant,
}

impl Accepted {
    /// A connection with no PROXY header: its peer is its client.
    pub fn direct(stream: TcpStream, peer: SocketAddr) -> Accepted {
        Accepted {
            stream,
            peer,
            client: peer,
            local: None,
            early: Vec::new(),
            at: Instant::now(),
        }
    }
}

/// Serves one accepted connection with `config`, the snapshot taken when it was accepted
/// (it keeps it to its end, whatever reloads come). `admitted` is false when the connection
/// limit is reached: the client is then answered 503 once its head has arrived.
pub async fn serve(state: &State, accepted: Accepted, config: Arc<ServingConfig>, admitted: bool) {
    let started = accepted.at;
    state.metrics.accepted();
    let mut summary = Summary::default();
    let (peer, client) = (accepted.peer, accepted.client);
    let outcome = tokio::select! {
        outcome = pipeline(state, &config, accepted, started, admitted, &mut summary) => outcome,
        _ = state.shutdown.forced() => Outcome::Forced,
    };
    summary.finish(&outcome, peer, client, started, &state.metrics);
}

/// The data flow, stage by stage; each stage builds its own inputs.
async fn pipeline(
    state: &State,
    config: &Arc<ServingConfig>,
    accepted: Accepted,
    started: Instant,
    admitted: bool,
    summary: &mut Summary,
) -> Outcome {
    // The end of the first request head: `--header-timeout` after accept. The handshake
    // (`--handshake-timeout`, see `tls`) ends by then too.
    let header_deadline = config.timeouts.header.map(|t| started + t);
    let client_addr = accepted.client;

    // tls. Every stage before the splice runs boxed: its state is freed when it ends, so a
    // tunnel open for a day does not carry the handshake's (several KiB) in its task.
    let secure = secure(state, config, accepted, header_deadline);
    let (mut client, local) = match Box::pin(secure).await {
        Ok(secured) => secured,
        Err(outcome) => return outcome,
    };
    summary.sni = client.get_ref().1.server_name().map(str::to_string);

    // http: the first head, then its admission.
    let (head, buf) = match Box::pin(first_head(&mut client, config, header_deadline)).await {
        Ok(read) => read,
        Err(outcome) => return outcome,
    };
    summary.method = Some(head.method.clone());
    summary.path = Some(head.target.clone());
    let admitted = match admission(state, config, &head, admitted, summary) {
        Ok(admitted) => admitted,
        Err(status) => return answer(&mut client, status).await,
    };

    // connect: in the route's balancing order, failing over.
    let pool = config.pools.get(admitted.route);
    let dialed = dial(
        config,
        (pool, admitted.route),
        (client_addr, &head),
        summary,
    );
    let (mut backend, _lease, affinity) = match Box::pin(dialed).await {
        Ok(connected) => connected,
        Err(status) => return answer(&mut client, status).await,
    };

    // splice: what goes first, then the two-way copy under the exchange's HTTP rules until
    // an upgrade opens the tunnel, watched by shutdown's drain and, after the `101`, by the
    // WebSocket hook.
    let (preread, forwarding) = first_bytes(config, pool, client_addr, local, &client, buf, &head);
    let shutdown = &state.shutdown;
    let (farewell_asked, draining) = (|| shutdown.farewell_asked(), || shutdown.draining());
    let asked = (&farewell_asked as Asked, &draining as Asked);
    // The WebSocket hook is the summary's: what it learnt outlives the splice (and a splice
    // dropped when the shutdown grace runs out), for the log line and the route's counts.
    let protocol = admitted.upgrade.as_ref().map(|u| u.protocol.as_str());
    summary.tunnel = Farewell::for_upgrade(protocol).counted(pool.websockets.clone());
    let watch = watch(
        state,
        config,
        head,
        admitted,
        (summary.sni.clone(), forwarding, affinity),
        asked,
        &mut summary.tunnel,
    );
    let (transfer, traffic) = (&mut summary.transfer, &state.metrics.traffic);
    let timeouts = splice_timers(&config.timeouts);
    let end = splice::splice(
        &mut client,
        &mut backend,
        preread,
        watch,
        timeouts,
        transfer,
        traffic,
    );
    let end = end.await;
    if let splice::End::Stopped(http::Stop::Refused(_)) | splice::End::Farewell = end {
        // The gate answered (or the hook sent a close frame) and the splice shut the client
        // side: read what the client still sends for a moment (its own close frame), so the
        // close does not reset away the answer.
        Box::pin(respond::linger(&mut client)).await;
    }
    Outcome::Tunnel(end)
}

/// What shutdown's drain and farewell are asked through: an atomic load each.
type Asked<'a> = &'a (dyn Fn() -> bool + Send + Sync);

/// What goes to the backend before the copy: a PROXY header if the route asks, the first
/// head as it came (with the client's address, under `--add-forwarded`), what came after it.
fn first_bytes(
    config: &ServingConfig,
    pool: &Pool,
    client_addr: std::net::SocketAddr,
    local: Option<std::net::SocketAddr>,
    client: &TlsClient,
    buf: Vec<u8>,
    head: &Head,
) -> (splice::Preread, Option<Forwarding>) {
    let forwarding = config.add_forwarded.then(|| Forwarding {
        client: client_addr.ip(),
        trusted: Cidr::any(&config.trust_forwarded, client_addr.ip()),
    });
    let proxy_header = match (pool.send_proxy, local) {
        (Some(version), Some(local)) => origin_header(version, client_addr, local, client),
        _ => Vec::new(),
    };
    let preread = forwarded::preread(proxy_header, buf, head.len, forwarding.as_ref());
    (preread, forwarding)
}

/// What watches the copy: the exchange as the gate until a `101`, with shutdown's drain; the
/// WebSocket hook after it, which counts what the tunnel carries and ends it with a close
/// frame at shutdown, each tunnel at its own moment in the spread window (it learns the
/// protocol from the `101`, whichever request on the connection asked for it). The head is
/// not kept for the tunnel's life.
fn watch<'a>(
    state: &'a State,
    config: &ServingConfig,
    head: Head,
    admitted: http::Admitted,
    (sni, forwarding, affinity): (Option<String>, Option<Forwarding>, Option<http::CookieRule>),
    (farewell_asked, draining): (Asked<'a>, Asked<'a>),
    farewell: &'a mut Farewell,
) -> splice::Watch<'a, Exchange, &'a mut Farewell> {
    let shutdown = &state.shutdown;
    let close = splice::Drain::new(farewell_asked, Box::pin(shutdown.farewell()));
    let gate = Exchange::after_first(
        config.http.clone(),
        (admitted.route, affinity),
        sni,
        &head,
        admitted.upgrade,
    );
    splice::Watch {
        gate: Some(Box::new(gate.forwarding(forwarding))),
        drain: Some(splice::Drain::new(draining, Box::pin(shutdown.drained()))),
        tunnel: farewell,
        close: Some(close.after(websocket::jitter())),
    }
}

/// The TLS stage: the ClientHello first, in a small box of its own (a connection that never
/// sends one holds no TLS state at all), a plain HTTP request answered 400, then the
/// handshake. With the client, the address it connected to, for PROXY headers to backends.
async fn secure(
    state: &State,
    config: &ServingConfig,
    accepted: Accepted,
    header_deadline: Option<Instant>,
) -> Result<(TlsClient, Option<SocketAddr>), Outcome> {
    let Accepted {
        stream,
        client: client_addr,
        local,
        early,
        at: started,
        ..
    } = accepted;
    let local = local.or_else(|| proxy_local(config, &stream));
    let deadline = tls::deadline(config.timeouts.handshake, started, header_deadline);
    let early = match Box::pin(tls::hello::read(&stream, early, &state.hellos, deadline)).await {
        Ok(hello) => hello,
        Err(e) => {
            let e = HandshakeError::from_hello(e, started);
            state.metrics.handshake(e.label(), None);
            return Err(Outcome::TlsFailed(e));
        }
    };
    if tls::hello::is_plain_http(&early) {
        // http:// to the TLS port: say so, as nginx does, rather than send TLS alert bytes.
        tracing::info!(client = %client_addr, "plain HTTP on the TLS port: answered 400");
        let mut stream = stream;
        Box::pin(respond::send(&mut stream, Status::PlainHttp)).await;
        return Err(Outcome::Status(Status::PlainHttp));
    }
    let client = handshake(state, config, stream, early, header_deadline, started).await?;
    Ok((client, local))
}

/// The first request's admission: over the connection limit, or after the listeners closed
/// (unless a new process took them over: then this one serves what it accepted), 503 (the
/// client tries again on a process that accepts); then the route and the HTTP rules.
fn admission(
    state: &State,
    config: &ServingConfig,
    head: &Head,
    admitted: bool,
    summary: &mut Summary,
) -> Result<http::Admitted, Status> {
    if !admitted || (state.shutdown.stopping() && !state.shutdown.handing_over()) {
        return Err(Status::Unavailable);
    }
    let admitted = match http::admit(&config.http, head, summary.sni.as_deref(), None) {
        Ok(admitted) => admitted,
        Err(Refusal::Status(status)) => return Err(status),
        Err(Refusal::Confined) => return Err(Status::NotFound),
    };
    summary.route = Some(config.http.routes.get(admitted.route).to_string());
    Ok(admitted)
}

/// A connection to one of `pool`'s backends (named in the summary), or the status that
/// answers the client when none could be had.
async fn dial(
    config: &ServingConfig,
    (pool, route): (&Pool, usize),
    (client, head): (std::net::SocketAddr, &Head),
    summary: &mut Summary,
) -> Result<(TcpStream, Lease, Option<http::CookieRule>), Status> {
    let timeouts = (config.timeouts.connect, config.fail_timeout);
    let cookie = pool.affinity.as_ref().and_then(|affinity| {
        let header = head.cookie.as_deref()?;
        http::head::cookie(header, &affinity.name)
    });
    match connect::connect(pool, (client.ip(), cookie), timeouts.0, timeouts.1).await {
        Ok(Connected {
            stream,
            backend,
            lease,
            ..
        }) => {
            summary.backend = Some(backend.name().to_string());
            let rule = affinity_rule(config, (pool, route), &backend);
            Ok((stream, lease, rule))
        }
        Err(NotConnected::Backends) => Err(Status::BadGateway),
        Err(NotConnected::Undiscovered(_)) => Err(Status::NotDiscovered),
        Err(NotConnected::Local(_)) => Err(Status::Unavailable),
    }
}

/// Under `--balance cookie`: the affinity cookie the connection's `backend` answers to, the
/// values of the route's other backends now, and the line its responses may get.
fn affinity_rule(
    config: &ServingConfig,
    (pool, route): (&Pool, usize),
    backend: &BackendState,
) -> Option<http::CookieRule> {
    let affinity = pool.affinity.as_ref()?;
    let mine = affinity.value(backend.name());
    let others = pool
        .backends()
        .iter()
        .filter(|b| b.name() != backend.name())
        .map(|b| affinity.value(b.name()))
        .collect();
    let path = config.http.routes.get(route).spec.path.as_str();
    Some(http::CookieRule {
        name: affinity.name.clone(),
        line: affinity.set_cookie(&mine, path),
        mine,
        others,
    })
}

/// The TLS handshake, counted in the metrics; a failure is the connection's outcome.
async fn handshake(
    state: &State,
    config: &ServingConfig,
    stream: TcpStream,
    early: Vec<u8>,
    header_deadline: Option<Instant>,
    started: Instant,
) -> Result<TlsClient, Outcome> {
    let timeout = config.timeouts.handshake;
    let handshake = state.tls.handshake(
        stream,
        early,
        &state.handshakes,
        timeout,
        header_deadline,
        started,
    );
    match handshake.await {
        Ok(client) => {
            let took = started.elapsed().as_secs_f64();
            state.metrics.handshake("ok", Some(took));
            Ok(client)
        }
        Err(e) => {
            state.metrics.handshake(e.label(), None);
            Err(Outcome::TlsFailed(e))
        }
    }
}

/// The address the client connected to, for PROXY headers to backends: asked of the socket
/// only when some route sends them.
fn proxy_local(config: &ServingConfig, stream: &TcpStream) -> Option<std::net::SocketAddr> {
    // Linux hands accepted sockets the listener's TCP_NODELAY and keepalive settings.
    #[cfg(not(target_os = "linux"))]
    crate::connect::tune(socket2::SockRef::from(stream));
    config
        .pools
        .any_send_proxy()
        .then(|| stream.local_addr().ok())
        .flatten()
}

/// The PROXY header naming the client, with what the TLS handshake established.
fn origin_header(
    version: proxy_protocol::Version,
    client: std::net::SocketAddr,
    local: std::net::SocketAddr,
    tls: &TlsClient,
) -> Vec<u8> {
    let tls = tls.get_ref().1;
    let origin = Origin {
        client,
        local,
        sni: tls.server_name(),
        tls_version: tls.protocol_version().map(proxy_protocol::tls_version),
        client_cert: tls.peer_certificates().is_some(),
    };
    proxy_protocol::encode(version, &origin)
}

/// The splice's timers from the configuration's.
fn splice_timers(t: &crate::config::Timeouts) -> splice::Timers {
    splice::Timers {
        idle: t.idle,
        close: t.close,
        send: t.send,
        keepalive: t.keepalive,
        head: t.header,
        body: t.body,
    }
}

/// Reads the first request head under the header deadline, which counts from accept so
/// trickled bytes do not extend it; returns it with every byte read, or how the connection
/// ended (an answered error, a client that left).
async fn first_head(
    client: &mut TlsClient,
    config: &ServingConfig,
    deadline: Option<Instant>,
) -> Result<(Head, Vec<u8>), Outcome> {
    let mut buf = Vec::new();
    let read = http::head::read(client, &mut buf, config.max_header_bytes());
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

async fn answer(client: &mut TlsClient, status: Status) -> Outcome {
    Box::pin(respond::send(client, status)).await;
    Outcome::Status(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tunnel's task carries the connection's future for its whole life: the stages
    /// before the splice run boxed, so the handshake's state (about 4.5 KiB) is not part of
    /// it. This fails if one of them is awaited inline again.
    #[tokio::test]
    async fn an_idle_tunnel_s_task_holds_no_handshake_state() {
        let mut settings = crate::config::Settings::default();
        settings.serving.routes = vec!["/=127.0.0.1:9".parse().unwrap()];
        let config = crate::config::Config::build(&settings).unwrap();
        let state = State::standalone(config).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        socket.set_nonblocking(true).unwrap();
        let stream = TcpStream::from_std(socket).unwrap();
        let peer = stream.peer_addr().unwrap();
        let accepted = listener.accept().unwrap().0;
        accepted.set_nonblocking(true).unwrap();
        let handshake = state.tls.handshake(
            TcpStream::from_std(accepted).unwrap(),
            Vec::new(),
            &state.handshakes,
            None,
            None,
            Instant::now(),
        );
        let handshake = std::mem::size_of_val(&handshake);
        let config = state.serving.load_full();
        let serve =
            std::mem::size_of_val(&serve(&state, Accepted::direct(stream, peer), config, true));
        assert!(handshake > 3000, "the handshake's state: {handshake} bytes");
        assert!(serve < 3600, "a connection's future is {serve} bytes");
    }
}
