//! The supervisor: the one owner of the process's life.
//!
//! [`Server::run`] starts everything (the admin listener, an accept loop per listener, the
//! background work) as tasks of the state's [`Lifecycle`], reports ready, and when the
//! shutdown future resolves, stops them in the one order written below. [`Server::serve`] is
//! the same with the process's signals. `reload` swaps the configuration under running loops.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::accept::{self, Listeners, Service};
use crate::acme;
use crate::admin;
use crate::config::{Config, ServingConfig};
use crate::lifecycle::Event;
use crate::notify;
use crate::pidfile;
use crate::reload::{self, Trigger};
use crate::signals::Signals;
use crate::state::State;
use crate::tls::ktls;
use crate::trim;
use crate::upgrade;
use crate::websocket::SPREAD;

/// After the grace, how long a WebSocket's close takes beyond its spread: the client's own
/// close frame and FIN are read for up to 2 s (like every answer wssbridge ends a connection
/// with), and a frame under way is finished.
const FAREWELL_READ: std::time::Duration = std::time::Duration::from_millis(2500);

/// A running or ready server; cheap to clone, so a test can keep a handle while `run` goes
/// on, and a signal handler can reload it.
#[derive(Clone)]
pub struct Server {
    state: Arc<State>,
}

impl Server {
    pub fn new(config: Config) -> anyhow::Result<Server> {
        if let Some(acme) = &config.process.acme {
            acme::store::prepare(acme)?;
            for name in &acme.names {
                if acme::store::renew_at(acme, name).is_none() {
                    tracing::warn!(
                        name = %name,
                        "acme: no certificate yet; serving a self-signed one for it until \
                         the CA issues one"
                    );
                }
            }
        }
        Ok(Server {
            state: Arc::new(State::new(config)?),
        })
    }

    /// Connections being served right now (in any stage).
    pub fn connections(&self) -> usize {
        self.state.life.connections()
    }

    /// The serving config new connections get.
    pub fn config(&self) -> Arc<ServingConfig> {
        self.state.serving.load_full()
    }

    /// The lifecycle events from now on (ready, reloads, draining, stopped).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.state.life.events()
    }

    /// Serves `config`'s serving part to every connection accepted from now on. A
    /// connection accepted before keeps the configuration it started with (its routes, its
    /// backends) to its end: nothing live is dropped. Balancing state of routes both share
    /// carries over; the process part (listeners, limits, timings) stays as it was at start.
    pub fn reload(&self, config: Config) -> anyhow::Result<()> {
        self.state.reload(config.serving, config.source)
    }

    /// Reads every certificate, key and client CA file again and, if all load, serves them
    /// to new handshakes (SIGHUP does this). On failure nothing changes; either way the
    /// outcome is logged.
    pub fn reload_files(&self) -> anyhow::Result<()> {
        reload::from_files(&self.state, Trigger::Call)
    }

    /// [`Server::run`] with the process's signals: SIGHUP reloads until the listeners
    /// close, and the first SIGTERM or SIGINT shuts down. Under systemd (`NOTIFY_SOCKET`),
    /// the lifecycle's events are told to it (`notify`).
    pub async fn serve(self, listeners: Listeners, signals: Signals) -> anyhow::Result<()> {
        let Signals {
            shutdown,
            hangups,
            mut upgrades,
        } = signals;
        let life = &self.state.life;
        let mut listeners = listeners;
        // systemd's readiness. Subscribed before `run` reports ready, so READY=1 is not missed.
        if let Some(notifier) = notify::Notifier::from_env() {
            let events = life.events();
            let state = self.state.clone();
            let counts = move || (state.life.connections(), state.metrics.traffic.websockets());
            let until = life.force().clone().cancelled_owned();
            life.spawn_background(notifier.follow(events, counts, until));
        }
        // `--pid-file`: written when ready (after an upgrade, by the new process).
        let pid_file = self.state.process.pid_file.clone();
        if let Some(path) = pid_file.clone() {
            let mut events = life.events();
            life.spawn_background(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match events.recv().await {
                        Ok(Event::Ready) => {
                            if let Err(e) = pidfile::write(&path) {
                                tracing::warn!("--pid-file: {e:#}");
                            }
                            return;
                        }
                        Ok(Event::Stopped) | Err(RecvError::Closed) => return,
                        _ => {}
                    }
                }
            });
        }
        // In a process a binary upgrade started: one READY=1 to the old one, then its socket
        // is closed (nothing more is said to it).
        if let Some(parent) = listeners.parent.take() {
            let mut events = life.events();
            life.spawn_background(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match events.recv().await {
                        Ok(Event::Ready) => return parent.ready(),
                        Ok(Event::Stopped) | Err(RecvError::Closed) => return,
                        _ => {}
                    }
                }
            });
        }
        let state = self.state.clone();
        let stop = life.stop().clone();
        life.spawn_background(async move {
            let reload = || {
                let _ = reload::from_files(&state, Trigger::Signal);
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = hangups.for_each(reload) => {}
            }
        });
        // SIGUSR2: start the binary again with the listeners; once it is ready, this process
        // drains as at SIGTERM.
        let listeners = Arc::new(listeners);
        let upgraded = Arc::new(tokio::sync::Notify::new());
        let (state, held, done) = (self.state.clone(), listeners.clone(), upgraded.clone());
        let drain = life.drain().clone();
        life.spawn_background(async move {
            loop {
                // Once shutdown began (or an upgrade handed over), no new upgrade.
                tokio::select! {
                    _ = drain.cancelled() => return,
                    _ = upgrades.recv() => {}
                }
                tracing::info!("SIGUSR2 received: upgrading");
                let (held, done, state_u) = (held.clone(), done.clone(), state.clone());
                state.life.spawn_background(async move {
                    let abandon = state_u.life.drain().clone().cancelled_owned();
                    match upgrade::upgrade(&held, abandon).await {
                        upgrade::Upgraded::Ready(pid) => {
                            tracing::info!(
                                pid,
                                "upgrade: the new process is ready; this one drains"
                            );
                            state_u.life.hand_over();
                            done.notify_one();
                        }
                        upgrade::Upgraded::Failed(why) => {
                            tracing::warn!("upgrade failed, still serving: {why}");
                        }
                        upgrade::Upgraded::Busy => {
                            tracing::info!("SIGUSR2 during an upgrade: ignored");
                        }
                    }
                });
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = shutdown => {}
                _ = upgraded.notified() => {}
            }
        };
        let state = self.state.clone();
        let served = self.run_shared(listeners, shutdown).await;
        if let Some(path) = &pid_file
            && !state.life.handing_over()
        {
            pidfile::remove(path);
        }
        served
    }

    /// Serves on `listeners` until `shutdown` resolves, then shuts down in this order, the
    /// only place it is written:
    ///
    /// 1. **drain**: `/readyz` answers 503 and every connection ends at its next safe point
    ///    (a keep-alive connection at its next request boundary); the listeners still accept
    ///    for `--shutdown-delay`, so a balancer in front stops sending first;
    /// 2. **stop**: the listeners close; background work (polls, checks, SIGHUP) ends;
    /// 3. connections finish within `--shutdown-grace`;
    /// 4. **farewell**: each WebSocket left ends with a close frame (1001 Going Away) between
    ///    two frames, spread over 1.5 s (already at step 1 with `--websocket-close-on-drain`);
    /// 5. **force**: whatever is left closes now, then the admin listener.
    ///
    /// The listening descriptors are held here until step 2: they are the process's, not the
    /// accept loops'.
    pub async fn run(
        self,
        listeners: impl Into<Listeners>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        self.run_shared(Arc::new(listeners.into()), shutdown).await
    }

    /// [`Server::run`] on listeners shared with an upgrade in progress, which hands them on.
    async fn run_shared(
        self,
        listeners: Arc<Listeners>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let state = self.state;
        let life = &state.life;
        log_startup(&state, &listeners);

        if let Some(listener) = &listeners.admin {
            // The status page's board, filled while the process runs (a sample every 10 s,
            // each reload), only when there is an admin port to show it.
            let board = Arc::new(admin::board::Board::new(listeners.described()));
            let events = life.events();
            let (recorder, state_r) = (board.clone(), state.clone());
            let until = life.stop().clone().cancelled_owned();
            life.spawn_background(async move { recorder.record(&state_r, events, until).await });
            let serve = admin::serve(
                accepting(listener)?,
                state.clone(),
                board,
                life.force().clone(),
            );
            life.spawn_background(serve);
        }
        let https_port = match listeners.tls.first() {
            Some(l) => l.local_addr()?.port(),
            None => 443,
        };
        let services = listeners.tls.iter().map(|l| (l, Service::Tls)).chain(
            listeners
                .redirect
                .iter()
                .map(|l| (l, Service::Redirect { https_port })),
        );
        let mut loops = JoinSet::new();
        for (listener, service) in services {
            let listener = accepting(listener)?;
            loops.spawn(accept::accept_loop(listener, state.clone(), service));
        }
        state.start_background();
        if let Some(interval) = state.process.cert_poll {
            life.spawn_background(reload::poll_files(state.clone(), interval));
        }
        life.spawn_background(reload::expiry_daily(state.clone()));
        if state.process.acme.is_some() {
            life.spawn_background(acme::keep(state.clone()));
        }
        let state_t = state.clone();
        let connections = move || state_t.life.connections();
        life.spawn_background(trim::after_drops(connections, life.stop().clone()));
        life.emit(Event::Ready);

        shutdown.await;
        life.begin_drain();
        life.emit(Event::Draining);
        let timings = state.process.shutdown;
        if timings.websocket_close_on_drain {
            life.say_farewell();
        }
        let delay = timings.delay;
        if !delay.is_zero() {
            tracing::info!("not ready: closing the listeners in {delay:?}");
            tokio::time::sleep(delay).await;
        }

        life.stop().cancel();
        while loops.join_next().await.is_some() {}
        drop(listeners);
        let grace = timings.grace;
        tracing::info!(
            connections = life.connections(),
            "listeners closed; draining for up to {grace:?}"
        );

        if tokio::time::timeout(grace, life.connections_done())
            .await
            .is_ok()
        {
            tracing::info!("drained: all connections finished");
            life.force().cancel();
        } else {
            // WebSockets end with a close frame, spread over a moment; then what is left
            // closes.
            life.say_farewell();
            let farewells = SPREAD + FAREWELL_READ;
            let closed = tokio::time::timeout(farewells, life.connections_done()).await;
            let left = life.connections();
            life.force().cancel();
            life.connections_done().await;
            match closed {
                Ok(()) => {
                    tracing::info!("shutdown grace over: the websockets left closed with 1001")
                }
                Err(_) => tracing::info!(
                    closed = left,
                    "shutdown grace over: closed the connections left"
                ),
            }
        }
        life.background_done().await;
        life.emit(Event::Stopped);
        Ok(())
    }
}

/// Logs the listeners, routes and certificates, one line each, as the server starts, and
/// warns of certificates near their expiry.
fn log_startup(state: &State, listeners: &Listeners) {
    let config = state.serving.load();
    let config = &**config;
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
        max_connections = state.process.limits.max_connections,
        max_header_bytes = config.max_header_bytes(),
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
    ktls::log(&ktls::probe(std::path::Path::new(ktls::AVAILABLE_ULP)));
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

/// An accept loop's handle on a listener the server keeps: a second descriptor for the same
/// socket, so the loop can end without closing the port.
fn accepting(listener: &std::net::TcpListener) -> anyhow::Result<TcpListener> {
    Ok(TcpListener::from_std(listener.try_clone()?)?)
}
