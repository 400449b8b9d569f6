//! wssbridge: TLS in front of WebSocket and HTTP servers.
//!
//! One connection's life:
//! ```text
//! accept ──► tls ──► http ──────────────────────────────► connect ──► splice
//! ```
//! `accept` admits it under the connection limits; `tls` completes the handshake under a
//! deadline; `http` reads the first request head (bounded in bytes and time) and admits it:
//! a route chosen by host and path, or an error status; `connect` dials the route's backends
//! in the balancing order, failing over; `splice` copies both ways. Until a `101` opens a
//! tunnel, HTTP is followed: every later request on the connection is admitted like the
//! first, and every response is framed. After the `101`, the tunnel is blind: bytes in =
//! bytes out. See ARCHITECTURE.md for the code map.
// One exception, measured: `trim::release` calls glibc's malloc_trim, which gives the memory
// of a spike of tunnels back to the system (119 MB -> 12.7 MB; docs/performance.md).
#![deny(unsafe_code)]

pub mod accept;
pub mod acme;
pub mod admin;
pub mod balance;
pub mod check;
pub mod cidr;
pub mod cli;
pub mod config;
pub mod conn;
pub mod connect;
pub mod deadline;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod notify;
pub mod pidfile;
pub mod proxy_protocol;
pub mod redirect;
pub mod reload;
pub mod respond;
pub mod route;
pub mod server;
pub mod signals;
pub mod splice;
pub mod state;
pub mod tls;
pub mod trim;
pub mod upgrade;
pub mod websocket;

use std::future::Future;

pub use accept::Listeners;
pub use config::{Config, Settings};
pub use server::Server;

/// Runs `config` on already-bound `listeners` until `shutdown` resolves.
pub async fn run(
    listeners: impl Into<Listeners>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Server::new(config)?.run(listeners, shutdown).await
}

/// Logs the listeners, routes and certificates, one line each, as the server starts, and
/// warns of certificates near their expiry.
pub fn log_startup(config: &Config, listeners: &Listeners) {
    let tls = listeners.tls.iter().map(|l| (l, "listening"));
    let redirect = listeners
        .redirect
        .iter()
        .map(|l| (l, "redirecting plain HTTP to https"));
    let admin = listeners.admin.iter().map(|l| {
        (
            l,
            "admin: / (status page) /status.json /metrics /livez /healthz /readyz",
        )
    });
    for (l, what) in tls.chain(redirect).chain(admin) {
        match l.local_addr() {
            Ok(addr) => tracing::info!(%addr, "{what}"),
            Err(e) => tracing::warn!("listener without address: {e}"),
        }
    }
    tracing::info!(
        max_connections = config.limits.max_connections,
        max_header_bytes = config.limits.max_header_bytes,
        "limits"
    );
    for pool in config.pools.iter() {
        let backends: Vec<&str> = pool.backends().iter().map(|b| b.name()).collect();
        let check = pool
            .check
            .as_ref()
            .map_or("off".to_string(), ToString::to_string);
        tracing::info!(
            route = %pool.route(),
            backends = %backends.join(","),
            balance = %pool.policy,
            health_check = %check,
            "route"
        );
    }
    tls::ktls::log(&tls::ktls::probe(std::path::Path::new(
        tls::ktls::AVAILABLE_ULP,
    )));
    reload::log_certificates(config);
    reload::check_expiry(config, std::time::SystemTime::now());
    if let Some(sha256) = &config.tls.certs.ephemeral {
        tracing::warn!(
            sha256 = %sha256,
            "no --cert/--key given: serving an ephemeral self-signed certificate for localhost; \
             browsers will warn. Use it for development only"
        );
    }
}
