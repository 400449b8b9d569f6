//! wssbridge: TLS in front of WebSocket and HTTP servers.
//!
//! One connection's life:
//! ```text
//! accept ──► tls ──► head ──► route ──► connect ──► splice
//! ```
//! `accept` admits it under the connection limit; `tls` completes the handshake under a
//! deadline; `head` reads the first HTTP/1.1 request head (bounded in bytes and time);
//! `route` picks a backend by host and path; `connect` dials it, failing over; `splice`
//! writes every byte read so far and then copies both ways until both sides are done. Any
//! step before the splice can end in an HTTP error response. After the splice starts,
//! wssbridge never looks at the bytes again.
#![forbid(unsafe_code)]

pub mod accept;
pub mod cli;
pub mod coalesce;
pub mod config;
pub mod conn;
pub mod connect;
pub mod exchange;
pub mod framing;
pub mod head;
pub mod readahead;
pub mod respond;
pub mod route;
pub mod shutdown;
pub mod splice;
pub mod tls;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// A configured server; cheap to clone, so a test can keep a handle while `run` goes on.
#[derive(Clone)]
pub struct Server {
    config: Arc<Config>,
    tracker: TaskTracker,
}

impl Server {
    pub fn new(config: Config) -> Self {
        Server {
            config: Arc::new(config),
            tracker: TaskTracker::new(),
        }
    }

    /// Connections being served right now (in any stage).
    pub fn connections(&self) -> usize {
        self.tracker.len()
    }

    /// Serves on `listeners` (made by `accept::bind`, which sets the socket options accepted
    /// sockets inherit) until `shutdown` resolves, then stops accepting (the ports are
    /// closed at once), lets live connections go on for `--shutdown-grace`, and closes
    /// whatever is left.
    pub async fn run(
        self,
        listeners: Vec<std::net::TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let shared = Arc::new(conn::Shared {
            config: self.config.clone(),
            acceptor: TlsAcceptor::from(self.config.tls.clone()),
            stopping: CancellationToken::new(),
            force: CancellationToken::new(),
            handshakes: Arc::new(tokio::sync::Semaphore::new(
                self.config.limits.max_handshakes,
            )),
        });
        let admission = Arc::new(accept::Admission::new(&self.config.limits));
        let mut loops = JoinSet::new();
        for listener in listeners {
            let listener = TcpListener::from_std(listener)?;
            loops.spawn(accept::accept_loop(
                listener,
                shared.clone(),
                admission.clone(),
                self.tracker.clone(),
                shared.stopping.clone(),
            ));
        }

        shutdown.await;
        shared.stopping.cancel();
        while loops.join_next().await.is_some() {}
        let grace = self.config.timeouts.shutdown_grace;
        tracing::info!(
            connections = self.tracker.len(),
            "listeners closed; draining for up to {grace:?}"
        );
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            tracing::info!("drained: all connections finished");
        } else {
            let left = self.tracker.len();
            shared.force.cancel();
            self.tracker.wait().await;
            tracing::info!(
                closed = left,
                "shutdown grace over: closed the connections left"
            );
        }
        Ok(())
    }
}

/// Runs `config` on already-bound `listeners` until `shutdown` resolves.
pub async fn run(
    listeners: Vec<std::net::TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Server::new(config).run(listeners, shutdown).await
}

/// Logs the listeners and routes, one line each, as the server starts.
pub fn log_startup(config: &Config, listeners: &[std::net::TcpListener]) {
    for l in listeners {
        match l.local_addr() {
            Ok(addr) => tracing::info!(%addr, "listening"),
            Err(e) => tracing::warn!("listener without address: {e}"),
        }
    }
    tracing::info!(
        max_connections = config.limits.max_connections,
        max_header_bytes = config.limits.max_header_bytes,
        "limits"
    );
    for route in config.routes.iter() {
        let backends: Vec<String> = route
            .spec
            .backends
            .iter()
            .map(ToString::to_string)
            .collect();
        tracing::info!(route = %route, backends = %backends.join(","), "route");
    }
}
