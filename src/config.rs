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
    pub security: Security,
}

/// The rules that keep a client from reaching what its request does not route to.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// Upgrade protocols allowed besides `websocket` (lower-case names, e.g. `h2c`).
    pub allowed_upgrades: Vec<String>,
    /// Check a `101`'s `Sec-WebSocket-Accept` against the client's key.
    pub check_websocket_accept: bool,
    /// Answer 421 when the Host names another host-routed name than the TLS SNI.
    pub sni_host_check: bool,
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
    /// TLS handshakes in progress at once; more wait, under their handshake deadline.
    pub max_handshakes: usize,
    /// Connections one client address may hold at once (`None`: no limit).
    pub max_connections_per_ip: Option<usize>,
}

/// Descriptors kept back from the connection limit: listeners, logs, DNS look-ups, and the
/// connections that are over the limit and are being answered 503.
const RESERVED_FDS: u64 = 128;

/// Raises the soft RLIMIT_NOFILE to the hard limit (a tunnel needs two descriptors, and the
/// usual soft limit of 1024 would cap wssbridge at ~500 tunnels).
pub fn raise_fd_limit() {
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
}

/// Four handshakes per core keep every core busy with crypto while leaving room for the
/// established tunnels, so a handshake flood cannot starve them.
pub fn default_max_handshakes() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Two descriptors per tunnel from what the soft RLIMIT_NOFILE allows.
pub fn default_max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1 << 20);
    (soft.saturating_sub(RESERVED_FDS) / 2).max(1) as usize
}
