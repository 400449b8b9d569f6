//! The server: its one [`State`], the accept loops, and shutdown.
//!
//! `run` starts an accept loop per listener and waits for the shutdown future; then it stops
//! accepting (the ports close at once), lets live connections go on for `--shutdown-grace`,
//! and closes whatever is left. `reload` swaps the configuration under running loops.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::accept::{self, Service};
use crate::admin;
use crate::config::Config;
use crate::reload::{self, Trigger};
use crate::state::State;

/// The sockets a server serves on, all bound before it starts (so a port in use fails
/// start-up, not a task).
#[derive(Debug, Default)]
pub struct Listeners {
    /// TLS listeners (`--listen`); the first one's port goes into redirects.
    pub tls: Vec<std::net::TcpListener>,
    /// Plain-HTTP redirect listeners (`--redirect-http`).
    pub redirect: Vec<std::net::TcpListener>,
    /// The admin listener (`--admin`): metrics and health, up until the process exits.
    pub admin: Option<std::net::TcpListener>,
}

impl From<Vec<std::net::TcpListener>> for Listeners {
    fn from(tls: Vec<std::net::TcpListener>) -> Self {
        Listeners {
            tls,
            ..Listeners::default()
        }
    }
}

/// A running or ready server; cheap to clone, so a test can keep a handle while `run` goes
/// on, and a signal handler can reload it.
#[derive(Clone)]
pub struct Server {
    state: Arc<State>,
}

impl Server {
    pub fn new(config: Config) -> anyhow::Result<Server> {
        Ok(Server {
            state: Arc::new(State::new(config)?),
        })
    }

    /// Connections being served right now (in any stage).
    pub fn connections(&self) -> usize {
        self.state.tracker.len()
    }

    /// The configuration new connections get.
    pub fn config(&self) -> Arc<Config> {
        self.state.config.load_full()
    }

    /// Serves `config` to every connection accepted from now on. A connection accepted
    /// before keeps the configuration it started with (its routes, its backends) to its end:
    /// nothing live is dropped. Balancing state of routes both share carries over;
    /// listeners and limits stay as they were at start.
    pub fn reload(&self, config: Config) -> anyhow::Result<()> {
        self.state.reload(config)
    }

    /// Reads every certificate, key and client CA file again and, if all load, serves them
    /// to new handshakes (SIGHUP does this). On failure nothing changes; either way the
    /// outcome is logged.
    pub fn reload_files(&self) -> anyhow::Result<()> {
        reload::from_files(&self.state, Trigger::Call)
    }

    /// As [`Server::reload_files`], logged as caused by a signal.
    pub fn reload_on_signal(&self) {
        let _ = reload::from_files(&self.state, Trigger::Signal);
    }

    /// Serves on `listeners` (made by `accept::bind`, which sets the socket options accepted
    /// sockets inherit) until `shutdown` resolves, then drains. Background work (polling
    /// certificate files, the daily expiry check) runs beside the accept loops and stops
    /// with them.
    pub async fn run(
        self,
        listeners: impl Into<Listeners>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let listeners = listeners.into();
        let state = self.state;
        let admin_stop = tokio_util::sync::CancellationToken::new();
        let admin = match listeners.admin {
            Some(listener) => {
                let listener = TcpListener::from_std(listener)?;
                let stop = admin_stop.clone();
                Some(tokio::spawn(admin::serve(listener, state.clone(), stop)))
            }
            None => None,
        };
        let https_port = match listeners.tls.first() {
            Some(l) => l.local_addr()?.port(),
            None => 443,
        };
        let mut loops = JoinSet::new();
        for listener in listeners.tls {
            let listener = TcpListener::from_std(listener)?;
            loops.spawn(accept::accept_loop(listener, state.clone(), Service::Tls));
        }
        for listener in listeners.redirect {
            let listener = TcpListener::from_std(listener)?;
            let service = Service::Redirect { https_port };
            loops.spawn(accept::accept_loop(listener, state.clone(), service));
        }
        state.start_background();
        if let Some(interval) = state.config.load().settings.cert_poll {
            loops.spawn(reload::poll_files(state.clone(), interval));
        }
        loops.spawn(reload::expiry_daily(state.clone()));

        shutdown.await;
        // Not ready from now on; the listeners go on accepting for --shutdown-delay, so a
        // balancer in front sees /readyz fail and stops sending before they close.
        state.draining.cancel();
        let delay = state.config.load().settings.shutdown_delay;
        if !delay.is_zero() {
            tracing::info!("not ready: closing the listeners in {delay:?}");
            tokio::time::sleep(delay).await;
        }
        state.stopping.cancel();
        while loops.join_next().await.is_some() {}
        let grace = state.config.load().timeouts.shutdown_grace;
        let tracker = &state.tracker;
        tracing::info!(
            connections = tracker.len(),
            "listeners closed; draining for up to {grace:?}"
        );
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_ok() {
            tracing::info!("drained: all connections finished");
        } else {
            let left = tracker.len();
            state.force.cancel();
            tracker.wait().await;
            tracing::info!(
                closed = left,
                "shutdown grace over: closed the connections left"
            );
        }
        admin_stop.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        Ok(())
    }
}
