//! The `connect` stage: dial the route's backends in turn until one answers.
//!
//! Names are resolved at connect time (every address a name has is tried). Each backend gets
//! `--connect-timeout`; the client sees 502 only when all have failed. Socket options are
//! best-effort: a failure to set one is logged, never fatal.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use crate::route::{Backend, Route};

/// Keepalive finds peers that vanished without a FIN (a laptop closed, a NAT entry dropped)
/// on tunnels that may be silent for hours: first probe after 60s, then every 10s, 6 tries.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 6;

/// Connects to the first backend of `route` that accepts, round-robin first.
pub async fn connect(route: &Route, timeout: Option<Duration>) -> Option<(TcpStream, &Backend)> {
    for backend in route.backends() {
        match dial(backend, timeout).await {
            Ok(stream) => {
                tune(&stream);
                return Some((stream, backend));
            }
            Err(e) => tracing::warn!(%backend, route = %route, "backend connect failed: {e}"),
        }
    }
    None
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
pub fn tune(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("TCP_NODELAY: {e}");
    }
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::debug!("TCP keepalive: {e}");
    }
}
