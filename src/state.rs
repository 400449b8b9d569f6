//! The one value that lives as long as the process: the process config, built once; the
//! serving config, the one value that may change (behind an `ArcSwap`); and everything that
//! must not be reset when it does — the semaphores the limits size, shutdown's read-only side
//! and the lifecycle events (the supervisor holds the rest of the lifecycle), the TLS server,
//! balancing state.
//!
//! Each connection loads one configuration snapshot when it is accepted and keeps it to its
//! end, so a reload changes what new connections get and nothing that is live. Per-connection
//! work touches no lock here: the snapshot is one atomic load, the limits are semaphores, and
//! only `--max-connections-per-ip` takes a short lock at accept (and the ClientHello budget,
//! `hellos`, one while a hello is read).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, Semaphore};

use crate::balance::Registry;
use crate::config::{Config, ProcessConfig, Reread, ServingConfig, ServingSettings, Settings};
use crate::lifecycle::{Census, Events, Shutdown};
use crate::metrics::Metrics;
use crate::tls::Tls;

/// Connections over `--max-connections` that may be answered 503 at the same time.
const OVERFLOW_ANSWERS: usize = 64;

pub struct State {
    /// What only a restart can change: listeners, limits (the semaphores below are sized by
    /// them), the shutdown's timings, admin, ACME, the file poll.
    pub process: ProcessConfig,
    /// The serving config new connections get.
    pub serving: ArcSwap<ServingConfig>,
    /// The settings `serving` (and `process`) were built from: what the reload path builds
    /// the next serving config from, and compares a re-read flags file with.
    source: Mutex<Settings>,
    /// Where a reload reads the settings again (the flags file), if anywhere.
    pub reread: Option<Arc<dyn Reread>>,
    pub tls: Tls,
    pub balance: Registry,
    pub metrics: Metrics,
    /// Shutdown's stages, read-only: the supervisor alone moves them.
    pub shutdown: Shutdown,
    /// Connections being served.
    pub census: Census,
    /// The lifecycle events (ready, reloads, draining, stopped).
    pub events: Events,
    /// Told after each reload, so the supervisor starts and stops what the new serving config
    /// asks for (health checks); the reload itself spawns nothing.
    pub reconfigured: Arc<Notify>,
    /// Handshakes in progress (`--max-handshakes`).
    pub handshakes: Semaphore,
    /// What connections still reading their ClientHello hold (`--max-handshake-memory`).
    pub hellos: crate::tls::hello::Budget,
    /// Connections being served (`--max-connections`).
    pub permits: Arc<Semaphore>,
    /// Connections over the limit being answered 503.
    pub overflow: Arc<Semaphore>,
    /// Connections per client address (`--max-connections-per-ip`).
    pub per_ip: Option<PerIp>,
}

impl State {
    pub fn new(
        config: Config,
        shutdown: Shutdown,
        census: Census,
        events: Events,
    ) -> anyhow::Result<State> {
        let Config {
            process,
            mut serving,
            source,
            reread,
        } = config;
        let limits = process.limits;
        let tls = Tls::new(&serving.tls)?;
        let balance = Registry::default();
        balance.adopt(&mut serving.pools);
        Ok(State {
            process,
            serving: ArcSwap::from_pointee(serving),
            source: Mutex::new(source),
            reread,
            tls,
            balance,
            metrics: Metrics::default(),
            shutdown,
            census,
            events,
            reconfigured: Arc::new(Notify::new()),
            handshakes: Semaphore::new(limits.max_handshakes),
            hellos: crate::tls::hello::Budget::new(limits.max_handshake_memory),
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            overflow: Arc::new(Semaphore::new(OVERFLOW_ANSWERS)),
            per_ip: limits.max_connections_per_ip.map(PerIp::new),
        })
    }

    /// A state with a lifecycle of its own that nobody moves: for a test of one stage.
    #[cfg(test)]
    pub fn standalone(config: Config) -> anyhow::Result<State> {
        let life = crate::lifecycle::Lifecycle::default();
        let events = Events::default();
        State::new(config, life.shutdown(), life.census(), events)
    }

    /// The settings the current serving config was built from, for the reload path.
    pub fn source(&self) -> Settings {
        self.source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes `serving` the config new connections get, the next generation, keeping the
    /// balancing state of the routes it shares with the old one; `source` is what it was
    /// built from.
    pub fn reload(
        &self,
        mut serving: ServingConfig,
        source: ServingSettings,
    ) -> anyhow::Result<()> {
        self.tls.set(&serving.tls)?;
        self.balance.adopt(&mut serving.pools);
        serving.generation = self.serving.load().generation + 1;
        self.source
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .serving = source;
        self.serving.store(Arc::new(serving));
        self.reconfigured.notify_one();
        Ok(())
    }
}

/// Connections held per client address, under a limit.
pub struct PerIp {
    limit: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    fn new(limit: usize) -> PerIp {
        PerIp {
            limit,
            counts: Arc::default(),
        }
    }

    /// Counts a connection from `ip`; `None` when that address is at its limit.
    pub fn enter(&self, ip: IpAddr) -> Option<IpSlot> {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            ip,
            counts: self.counts.clone(),
        })
    }
}

/// One connection's place in the per-address count, given back on drop.
pub struct IpSlot {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}
