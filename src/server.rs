//! The server: its one [`State`], the accept loops, and shutdown.
//!
//! `run` starts an accept loop per listener and waits for the shutdown future; then it stops
//! accepting (the ports close at once), lets live connections go on for `--shutdown-grace`,
//! and closes whatever is left. `reload` swaps the configuration under running loops.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::accept;
use crate::config::Config;
use crate::state::State;

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
    pub fn reload(&self, config: Config) {
        self.state.reload(config);
    }

    /// Serves on `listeners` (made by `accept::bind`, which sets the socket options accepted
    /// sockets inherit) until `shutdown` resolves, then drains.
    pub async fn run(
        self,
        listeners: Vec<std::net::TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let state = self.state;
        let mut loops = JoinSet::new();
        for listener in listeners {
            let listener = TcpListener::from_std(listener)?;
            loops.spawn(accept::accept_loop(listener, state.clone()));
        }

        shutdown.await;
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
        Ok(())
    }
}
