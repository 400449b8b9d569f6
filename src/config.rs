//! The validated configuration: certificates loaded, routes built, limits decided.
//!
//! Built once at start-up (by `cli`) and shared read-only by every connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;

use crate::route::RouteTable;

#[derive(Debug)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub tls: Arc<ServerConfig>,
    pub routes: RouteTable,
    pub timeouts: Timeouts,
    pub limits: Limits,
}

/// `None` means off.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub handshake: Option<Duration>,
    pub header: Option<Duration>,
    pub connect: Option<Duration>,
    pub idle: Option<Duration>,
    pub close: Option<Duration>,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_connections: usize,
}

/// Descriptors kept back from the connection limit: listeners, logs, DNS look-ups, and the
/// connections that are over the limit and are being answered 503.
const RESERVED_FDS: u64 = 128;

/// Raises the soft RLIMIT_NOFILE to the hard limit (a tunnel needs two descriptors, and the
/// usual soft limit of 1024 would cap wssbridge at ~500 tunnels). Returns the soft limit in
/// force afterwards.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let Some(hard) = limit.maximum
        && limit.current.is_some_and(|soft| soft < hard)
    {
        limit.current = Some(hard);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!("could not raise the file-descriptor limit to {hard}: {e}");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(1 << 20)
}

/// Two descriptors per tunnel from what the soft RLIMIT_NOFILE allows.
pub fn default_max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    (soft.saturating_sub(RESERVED_FDS) / 2).max(1) as usize
}
