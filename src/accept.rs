//! The `accept` stage: listening sockets, the accept loop and the connection limit.
//!
//! A connection over `--max-connections` is still accepted and answered 503 (a client that
//! gets an answer retries sensibly; one that hangs in the backlog does not), but only a few
//! such answers run at once so an overload cannot turn into unbounded work. Accept errors,
//! above all running out of file descriptors, back off with a capped delay and are logged at
//! most once a second, so the loop never spins while live tunnels keep being served.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::state::State;
use crate::{conn, redirect};

/// Pending connections the kernel queues per listener (nginx's default is 511).
const BACKLOG: i32 = 1024;
/// Accept error back-off: from 10 ms doubling to 1 s.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Binds a listening socket. IPv6 sockets are v6-only, so `[::]:443` and `0.0.0.0:443` can
/// both be given, as with nginx. TCP_NODELAY and keepalive are set here, once: Linux copies
/// them to every accepted socket (five system calls fewer per connection), and setting them
/// before `listen` covers connections queued before the accept loop starts.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let attempt = || -> io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        crate::connect::tune(socket2::SockRef::from(&socket));
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    };
    attempt().with_context(|| format!("--listen {addr}: cannot listen"))
}

/// What a listener serves.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    /// TLS, then HTTP and tunnels.
    Tls,
    /// Plain HTTP answered with a redirect to https on this port.
    Redirect { https_port: u16 },
}

/// Accepts until shutdown starts; every connection runs as a task on the state's tracker,
/// under the same limits whatever the listener serves.
pub async fn accept_loop(listener: TcpListener, state: Arc<State>, service: Service) {
    let stop = state.stopping.clone();
    let mut backoff = BACKOFF_MIN;
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = BACKOFF_MIN;
                a
            }
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!("accept failed, backing off {backoff:?}: {e}");
                    last_warning = Some(Instant::now());
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let ip_slot = match &state.per_ip {
            None => None,
            Some(per_ip) => match per_ip.enter(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(%peer, "at --max-connections-per-ip: closing");
                    continue;
                }
            },
        };
        let (permit, admitted) = match state.permits.clone().try_acquire_owned() {
            Ok(p) => (p, true),
            Err(_) => match state.overflow.clone().try_acquire_owned() {
                Ok(p) => (p, false),
                Err(_) => {
                    tracing::debug!(%peer, "over capacity and over the 503 budget: closing");
                    continue;
                }
            },
        };
        let conn_state = state.clone();
        state.tracker.spawn(async move {
            match service {
                Service::Tls => conn::serve(&conn_state, stream, peer, admitted).await,
                Service::Redirect { https_port } => {
                    let config = conn_state.config.load_full();
                    let status = redirect::serve(stream, &config, https_port).await;
                    tracing::debug!(%peer, ?status, "plain HTTP redirected");
                }
            }
            drop((permit, ip_slot));
        });
    }
}

/// Errors that concern one connection only (it was reset before we took it).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
