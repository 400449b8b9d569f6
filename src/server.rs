//! The supervisor: the one owner of the process's life.
//!
//! [`Server::run`] starts everything (the admin listener, an accept loop per listener, the
//! background work) as tasks of its [`Lifecycle`], which it alone holds: the cancel side and
//! the trackers. Tasks get the read-only [`Shutdown`](crate::lifecycle::Shutdown) (through
//! the state) and, where they start tasks of their own (an accept loop its connections, the
//! admin listener its answers), a [`Spawner`]. It reports ready, and when the shutdown future
//! resolves, stops them in the one order written below. [`Server::serve`] is the same with
//! the process's signals. `reload` swaps the serving config under running loops; the health
//! checks it asks for are started here, not by the reload.

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::accept::{self, Listeners, Service};
use crate::acme;
use crate::admin;
use crate::config::{Config, ServingConfig};
use crate::lifecycle::{Event, Events, Lifecycle, Spawner};
use crate::notify;
use crate::pidfile;
use crate::reload::{self, Trigger};
use crate::runtime::{Runtime, Workers};
use crate::signals::{self, Signals};
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
    life: Arc<Lifecycle>,
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
        let life = Lifecycle::default();
        let state = State::new(config, life.shutdown(), life.census(), Events::default())?;
        Ok(Server {
            state: Arc::new(state),
            life: Arc::new(life),
        })
    }

    /// Connections being served right now (in any stage).
    pub fn connections(&self) -> usize {
        self.life.connections()
    }

    /// The serving config new connections get.
    pub fn config(&self) -> Arc<ServingConfig> {
        self.state.serving.load_full()
    }

    /// The lifecycle events from now on (ready, reloads, draining, stopped).
    pub fn events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.state.events.subscribe()
    }

    /// Serves `config`'s serving part to every connection accepted from now on. A
    /// connection accepted before keeps the configuration it started with (its routes, its
    /// backends) to its end: nothing live is dropped. Balancing state of routes both share
    /// carries over; the process part (listeners, limits, timings) stays as it was at start.
    pub fn reload(&self, config: Config) -> anyhow::Result<()> {
        self.state.reload(config.serving, config.source.serving)
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
        let spawner = self.life.spawner();
        let shutdown_ = &self.state.shutdown;
        let mut listeners = listeners;
        // systemd's readiness. Subscribed before `run` reports ready, so READY=1 is not missed.
        if let Some(notifier) = notify::Notifier::from_env() {
            let events = self.state.events.subscribe();
            let state = self.state.clone();
            let counts = move || {
                (
                    state.census.connections(),
                    state.metrics.traffic.websockets(),
                )
            };
            spawner.background(notifier.follow(events, counts, shutdown_.forced()));
        }
        // `--pid-file`: written when ready (after an upgrade, by the new process).
        let pid_file = self.state.process.pid_file.clone();
        if let Some(path) = pid_file.clone() {
            let mut events = self.state.events.subscribe();
            spawner.background(async move {
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
        if let Some(keys) = listeners.ticket_keys.take() {
            self.state.tls.inherit_ticket_keys(&keys);
        }
        if let Some(parent) = listeners.parent.take() {
            let mut events = self.state.events.subscribe();
            spawner.background(async move {
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
        let stopped = shutdown_.stopped();
        spawner.background(async move {
            let reload = || {
                let _ = reload::from_files(&state, Trigger::Signal);
            };
            tokio::select! {
                _ = stopped => {}
                _ = hangups.for_each(reload) => {}
            }
        });
        // SIGUSR2: start the binary again with the listeners; once it is ready, this process
        // drains as at SIGTERM.
        let listeners = Arc::new(listeners);
        let upgraded = Arc::new(tokio::sync::Notify::new());
        let (held, done) = (listeners.clone(), upgraded.clone());
        let (life, spawner_u) = (self.life.clone(), spawner.clone());
        let state_u = self.state.clone();
        let shutdown_u = shutdown_.clone();
        spawner.background(async move {
            let drained = shutdown_u.drained();
            tokio::pin!(drained);
            loop {
                // Once shutdown began (or an upgrade handed over), no new upgrade.
                tokio::select! {
                    _ = &mut drained => return,
                    _ = upgrades.recv() => {}
                }
                tracing::info!("SIGUSR2 received: upgrading");
                let (held, done, life) = (held.clone(), done.clone(), life.clone());
                let abandon = shutdown_u.drained();
                let ticket_keys = state_u.tls.ticket_keys();
                spawner_u.background(async move {
                    match upgrade::upgrade(&held, ticket_keys, abandon).await {
                        upgrade::Upgraded::Ready(pid) => {
                            tracing::info!(
                                pid,
                                "upgrade: the new process is ready; this one drains"
                            );
                            life.hand_over();
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
        // An impatient Ctrl-C: after the first SIGINT, a second exits at once, whatever
        // shutdown is still waiting for (so it is not a task shutdown waits for).
        let interrupts = self.life.clone();
        let shutdown = async move {
            tokio::select! {
                signal = shutdown => {
                    if let Some(int) = signal {
                        interrupts.spawn_detached(signals::second_interrupt(int));
                    }
                }
                _ = upgraded.notified() => {}
            }
        };
        let state = self.state.clone();
        let served = self.run_shared(listeners, shutdown).await;
        if let Some(path) = &pid_file
            && !state.shutdown.handing_over()
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
        let (state, life) = (self.state, self.life);
        // Whatever way this ends (an error once some tasks started, or the future dropped),
        // force ends everything it started; after a clean shutdown it is a no-op.
        let _force_at_the_end = ForceOnDrop(life.clone());
        let spawner = life.spawner();
        let shutdown_ = &state.shutdown;
        log_startup(&state, &listeners);

        if let Some(listener) = &listeners.admin {
            // The status page's board, filled while the process runs (a sample every 10 s,
            // each reload), only when there is an admin port to show it.
            let board = Arc::new(admin::board::Board::new(listeners.described()));
            let events = state.events.subscribe();
            let (recorder, state_r) = (board.clone(), state.clone());
            let until = shutdown_.stopped();
            spawner.background(async move { recorder.record(&state_r, events, until).await });
            let listener = TcpListener::from_std(accepting(listener)?)?;
            let serve = admin::serve(listener, state.clone(), board, spawner.clone());
            spawner.background(serve);
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
        // Every listener's handle first: an error spawns no loop.
        let services: Vec<_> = services
            .map(|(listener, service)| Ok((accepting(listener)?, service)))
            .collect::<anyhow::Result<_>>()?;
        // Per core, each thread accepts from every listener and serves what it accepted.
        let workers = match state.process.runtime {
            Runtime::PerCore => Some(Workers::start(state.process.threads).await?),
            Runtime::WorkStealing => None,
        };
        for (listener, service) in services {
            let Some(workers) = &workers else {
                let listener = TcpListener::from_std(listener)?;
                let service =
                    accept::accept_loop(listener, state.clone(), service, spawner.clone());
                life.spawn_accepting(service);
                continue;
            };
            for handle in workers.handles() {
                // Registered with that thread's poller, so its readiness wakes that thread.
                let listener = {
                    let _on = handle.enter();
                    TcpListener::from_std(listener.try_clone()?)?
                };
                let service =
                    accept::accept_loop(listener, state.clone(), service, spawner.clone());
                life.spawn_accepting_on(service, handle);
            }
        }
        // The names discovery asks (their first answers, within a bound) and the health
        // checks the serving config asks for run before ready is said, and follow every
        // reload and every changed answer from then on.
        reconcile(&state, &spawner);
        first_answers(&state).await;
        reconcile(&state, &spawner);
        spawner.background(follow_config(state.clone(), spawner.clone()));
        if let Some(interval) = state.process.cert_poll {
            spawner.background(reload::poll_files(state.clone(), interval));
        }
        spawner.background(reload::expiry_daily(state.clone()));
        if state.process.acme.is_some() {
            spawner.background(acme::keep(state.clone()));
        }
        let census = state.census.clone();
        let connections = move || census.connections();
        spawner.background(trim::after_drops(connections, shutdown_.stopped()));
        life.serving();
        state.events.emit(Event::Ready);

        shutdown.await;
        life.begin_drain();
        state.events.emit(Event::Draining);
        let timings = state.process.shutdown;
        if timings.websocket_close_on_drain {
            life.say_farewell();
        }
        let delay = timings.delay;
        if !delay.is_zero() {
            tracing::info!("not ready: closing the listeners in {delay:?}");
            tokio::time::sleep(delay).await;
        }

        life.stop();
        life.accepting_done().await;
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
            life.force();
        } else {
            // WebSockets end with a close frame, spread over a moment; then what is left
            // closes.
            life.say_farewell();
            let farewells = SPREAD + FAREWELL_READ;
            let closed = tokio::time::timeout(farewells, life.connections_done()).await;
            let left = life.connections();
            life.force();
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
        if let Some(workers) = workers {
            workers.stop().await;
        }
        state.events.emit(Event::Stopped);
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
    tracing::info!(
        runtime = %state.process.runtime,
        threads = state.process.threads,
        "threads serving connections"
    );
    for pool in config.pools.iter() {
        let backends = pool.written();
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

/// The DNS lookups and health checks the serving config asks for, after each reload and
/// each changed DNS answer (both tell `state.reconfigured`; the loops are started here,
/// through the supervisor's spawner), until stop.
async fn follow_config(state: Arc<State>, spawner: Spawner) {
    let stopped = state.shutdown.stopped();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = state.reconfigured.notified() => reconcile(&state, &spawner),
        }
    }
}

/// Starts and stops DNS lookups and health checks to match the serving config now in
/// force (and the backends its names have now).
fn reconcile(state: &State, spawner: &Spawner) {
    let config = state.serving.load();
    let balance = &state.balance;
    let resolver = config.resolver.as_ref();
    balance.discovery.reconcile(
        &config.pools,
        resolver,
        &state.reconfigured,
        spawner,
        &state.shutdown,
    );
    balance
        .health
        .reconcile(&config.pools, config.health, spawner, &state.shutdown);
}

/// Waits for each discovered name's first lookup, up to a bound: a route whose name
/// answers quickly has its backends (and their first checks) before ready is said; one
/// that does not answers 502 until it does.
async fn first_answers(state: &State) {
    const BOUND: std::time::Duration = std::time::Duration::from_secs(5);
    let config = state.serving.load_full();
    // The lookups run in their own loops: waiting for each in turn waits for the slowest.
    let all = async {
        for discovery in config.pools.iter().flat_map(|p| p.discoveries().iter()) {
            discovery.first_lookup().await;
        }
    };
    let _ = tokio::time::timeout(BOUND, all).await;
}

/// Fires force when dropped: see `run_shared`.
struct ForceOnDrop(Arc<Lifecycle>);

impl Drop for ForceOnDrop {
    fn drop(&mut self) {
        self.0.force();
    }
}

/// An accept loop's handle on a listener the server keeps: a second descriptor for the same
/// socket, so the loop can end without closing the port.
fn accepting(listener: &std::net::TcpListener) -> anyhow::Result<std::net::TcpListener> {
    Ok(listener.try_clone()?)
}
