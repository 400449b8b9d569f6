//! The `connect` stage: dial the route's backends in the pool's order until one answers.
//!
//! Names are resolved at connect time (every address a name has is tried). Each backend gets
//! `--connect-timeout`; the client sees 502 only when all have failed. Socket options are
//! best-effort: a failure to set one is logged, never fatal.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use std::sync::Arc;

use crate::balance::{BackendState, Lease, Pool};
use crate::route::Backend;

/// Keepalive finds peers that vanished without a FIN (a laptop closed, a NAT entry dropped)
/// on tunnels that may be silent for hours: first probe after 60s, then every 10s, 6 tries.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 6;

/// A connection to a backend, and its place in the backend's live count.
pub struct Connected {
    pub stream: TcpStream,
    pub backend: Arc<BackendState>,
    pub lease: Lease,
}

/// Why no backend connection was made.
#[derive(Debug)]
pub enum NotConnected {
    /// Every backend failed (502).
    Backends,
    /// The route has no backend: its DNS names have not resolved (502); why.
    Undiscovered(String),
    /// This process ran out of something (descriptors, memory, local ports): no backend's
    /// fault, and none is marked down for it (503, try again).
    Local(io::Error),
}

/// Connects to the first backend of `pool` that accepts, in the order the pool gives for a
/// client at `client` whose affinity cookie (under `--balance cookie`) holds `cookie`. A
/// failed connect marks its backend down for `fail_timeout` and moves on at once (nothing
/// was sent yet).
pub async fn connect(
    pool: &Pool,
    (client, cookie): (IpAddr, Option<&str>),
    timeout: Option<Duration>,
    fail_timeout: Option<Duration>,
) -> Result<Connected, NotConnected> {
    let (order, by_cookie) = pool.order_for(client, cookie);
    if order.is_empty() {
        let why = pool.empty_because().unwrap_or_default();
        tracing::debug!(route = %pool.route(), "no backend: {why}");
        return Err(NotConnected::Undiscovered(why));
    }
    for (i, state) in order.into_iter().enumerate() {
        match dial(&state.backend, timeout).await {
            Ok(stream) => {
                tune(SockRef::from(&stream));
                let lease = state.connected();
                pool.placed(by_cookie && i == 0);
                return Ok(Connected {
                    stream,
                    backend: state,
                    lease,
                });
            }
            Err(e) if is_local(&e) => {
                tracing::debug!(backend = %state.backend, "no backend connection: {e}");
                return Err(NotConnected::Local(e));
            }
            Err(e) => {
                let (backend, route) = (&state.backend, pool.route());
                match fail_timeout {
                    // Marking down logs the change, once.
                    Some(_) => tracing::debug!(%backend, %route, "backend connect failed: {e}"),
                    None => tracing::warn!(%backend, %route, "backend connect failed: {e}"),
                }
                state.connect_failed(&e, fail_timeout);
            }
        }
    }
    Err(NotConnected::Backends)
}

/// Errors that say this process or host ran short, not that the backend failed.
fn is_local(e: &io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM | Errno::ADDRNOTAVAIL)
    )
}

async fn dial(backend: &Backend, timeout: Option<Duration>) -> io::Result<TcpStream> {
    let attempt = async {
        let addrs: Vec<SocketAddr> = match backend.host().parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, backend.port())],
            Err(_) => tokio::net::lookup_host((backend.host(), backend.port()))
                .await?
                .collect(),
        };
        let mut last = io::Error::new(io::ErrorKind::NotFound, "name resolved to no address");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, attempt).await.unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {t:?}"),
            ))
        }),
        None => attempt.await,
    }
}

/// TCP_NODELAY (WebSocket frames are small and latency-bound) and keepalive, best-effort.
/// Five system calls: on Linux, sockets accepted from a listener tuned this way inherit all
/// of it, so only backend sockets pay them per connection (see `accept::bind`).
pub fn tune(socket: SockRef<'_>) {
    if let Err(e) = socket.set_tcp_nodelay(true) {
        tracing::debug!("TCP_NODELAY: {e}");
    }
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        tracing::debug!("TCP keepalive: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_is_no_backend_s_fault() {
        assert!(is_local(&io::Error::from_raw_os_error(24))); // EMFILE
        assert!(is_local(&io::Error::from_raw_os_error(23))); // ENFILE
        assert!(!is_local(&io::Error::from(
            io::ErrorKind::ConnectionRefused
        )));
        assert!(!is_local(&io::Error::from(io::ErrorKind::TimedOut)));
    }

    /// `Server::run` tunes only its listeners and relies on Linux copying the settings to
    /// each accepted socket; this fails on a system where that stops being true.
    #[cfg(target_os = "linux")]
    #[test]
    fn accepted_sockets_inherit_the_listeners_tuning() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        tune(SockRef::from(&listener));
        let addr = listener.local_addr().expect("addr");
        let _client = std::net::TcpStream::connect(addr).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        let socket = SockRef::from(&accepted);
        assert!(socket.tcp_nodelay().expect("nodelay"));
        assert!(socket.keepalive().expect("keepalive"));
        assert_eq!(socket.tcp_keepalive_time().expect("idle"), KEEPALIVE_IDLE);
        assert_eq!(
            socket.tcp_keepalive_interval().expect("interval"),
            KEEPALIVE_INTERVAL
        );
        assert_eq!(
            socket.tcp_keepalive_retries().expect("retries"),
            KEEPALIVE_RETRIES
        );

        // And without the tuning, an accepted socket has neither (so the check above can fail).
        let plain = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let _client =
            std::net::TcpStream::connect(plain.local_addr().expect("addr")).expect("connect");
        let (accepted, _) = plain.accept().expect("accept");
        assert!(!SockRef::from(&accepted).tcp_nodelay().expect("nodelay"));
        assert!(!SockRef::from(&accepted).keepalive().expect("keepalive"));
    }
}
