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
pub mod readahead;
pub mod redirect;
pub mod reload;
pub mod respond;
pub mod route;
pub mod runtime;
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
