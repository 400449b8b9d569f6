//! Balancing: the order in which a connection tries its route's backends, and the state
//! behind that order (live connections, passive and active health), which outlives any one
//! configuration.
//!
//! Policies (`--balance`): `round-robin` (the default), `least-conn` (fewest live connections
//! through this process, ties round-robin), `ip-hash` (rendezvous hashing of the client
//! address, see [`hash`]) and `cookie` (the backend an affinity cookie names, else
//! least-conn; see [`affinity`]). Whatever the policy, backends that are up come first, in the
//! policy's order, then those marked down, in the same order: a connection still tries every
//! backend before it is answered 502, so a route never ejects its only backend into a 502 loop.
//!
//! A backend is down while a failed connect's mark lasts (`--fail-timeout`), or after three
//! failed active checks in a row until two pass (`--health-check`, see [`health`]). Marking
//! never touches live tunnels.
//!
//! A [`Pools`] is built beside each configuration with fresh state; [`Registry::adopt`] then
//! swaps in the state that already exists for the same backend or route, so a reload resets
//! no counter, no health and no round-robin position. The registry holds that state weakly:
//! a backend no configuration names any more is forgotten.

pub mod affinity;
pub mod discovery;
pub mod hash;
pub mod health;

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::metrics::websockets::RouteWebSockets;
use crate::proxy_protocol;
use crate::route::{Backend, Lookup, RouteSpec, RouteTable, Upstream};

use discovery::Discovery;

pub use health::Check;

/// How a route spreads connections over its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    #[default]
    RoundRobin,
    LeastConn,
    IpHash,
    /// The backend the request's affinity cookie names, if it is up; else least-conn, and
    /// the response sets the cookie.
    Cookie,
}

impl FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "round-robin" => Ok(Strategy::RoundRobin),
            "least-conn" => Ok(Strategy::LeastConn),
            "ip-hash" => Ok(Strategy::IpHash),
            "cookie" => Ok(Strategy::Cookie),
            other => Err(format!(
                "unknown policy '{other}' (use round-robin, least-conn, ip-hash or cookie)"
            )),
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::LeastConn => "least-conn",
            Strategy::IpHash => "ip-hash",
            Strategy::Cookie => "cookie",
        })
    }
}

/// A route named as its `--route` names it: `[HOST]PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouteName {
    pub host: Option<String>,
    pub path: String,
}

impl RouteName {
    fn of(spec: &RouteSpec) -> RouteName {
        RouteName {
            host: spec.host.clone(),
            path: spec.path.clone(),
        }
    }
}

impl FromStr for RouteName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        // The same parser as --route, so a name matches its route exactly as written.
        let spec: RouteSpec = format!("{s}=0.0.0.0:1").parse()?;
        Ok(RouteName::of(&spec))
    }
}

impl fmt::Display for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.host.as_deref().unwrap_or(""), self.path)
    }
}

/// `VALUE` for every route, or `[HOST]PATH=VALUE` for one: the shape of `--balance`,
/// `--health-check` and `--send-proxy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerRoute<T> {
    pub route: Option<RouteName>,
    pub value: T,
}

impl<T: FromStr<Err = String>> FromStr for PerRoute<T> {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.rsplit_once('=') {
            Some((route, value)) => Ok(PerRoute {
                route: Some(route.parse()?),
                value: value.parse()?,
            }),
            None => Ok(PerRoute {
                route: None,
                value: s.parse()?,
            }),
        }
    }
}

/// The value `rules` give the route `spec`: its own rule, else the one for every route.
/// Every rule must name a route that exists, and no route (or "every route") may have two.
pub fn per_route<'a, T>(
    rules: &'a [PerRoute<T>],
    routes: &RouteTable,
    flag: &str,
) -> Result<Vec<Option<&'a T>>, String> {
    let mut seen = Vec::new();
    for rule in rules {
        if let Some(name) = &rule.route
            && !routes.iter().any(|r| RouteName::of(&r.spec) == *name)
        {
            return Err(format!(
                "{flag} {name}=…: no --route {name}=… to apply it to"
            ));
        }
        if seen.contains(&&rule.route) {
            let what = rule
                .route
                .as_ref()
                .map_or("every route".into(), |n| n.to_string());
            return Err(format!("{flag} given twice for {what}"));
        }
        seen.push(&rule.route);
    }
    Ok(routes
        .iter()
        .map(|r| {
            let name = RouteName::of(&r.spec);
            let own = rules.iter().find(|rule| rule.route.as_ref() == Some(&name));
            own.or_else(|| rules.iter().find(|rule| rule.route.is_none()))
                .map(|rule| &rule.value)
        })
        .collect())
}

/// Milliseconds since the first call, for deadlines kept in atomics.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// What this process knows of one backend, shared by every route that names it.
#[derive(Debug)]
pub struct BackendState {
    pub backend: Backend,
    /// `backend` as written: the `ip-hash` key and the log field.
    name: String,
    /// The DNS name (`dns:NAME:PORT`, `srv:NAME`) it was discovered by, if it was.
    from: Option<Arc<str>>,
    /// Discovered into a checked route: down until its first check passes.
    pending: AtomicBool,
    /// Connections through this process to it right now.
    active: AtomicUsize,
    /// Failed connects, ever.
    connect_failures: AtomicU64,
    /// A failed connect marks it down until then (`now_ms`; 0: not marked).
    down_until: AtomicU64,
    /// The active check says down (three failures in a row, until two passes).
    checked_down: AtomicBool,
    /// Checks failed / passed in a row.
    fails: AtomicU32,
    passes: AtomicU32,
    /// Whether the last line logged of it said down: one line per change.
    logged_down: AtomicBool,
    /// Why the last active check failed, for the status page (a lock taken per check and
    /// per page view, never per connection).
    last_check_error: std::sync::Mutex<Option<String>>,
}

/// A backend's state as an operator reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Up,
    /// A failed connect marked it down for this much longer (passive health).
    DownPassively {
        left: Duration,
    },
    /// Active checks failed in a row; the last said why.
    DownByCheck {
        why: String,
    },
}

/// Failed active checks in a row that mark a backend down, and passes that bring it back
/// (HAProxy's default `fall 3 rise 2`).
const FALL: u32 = 3;
const RISE: u32 = 2;

impl BackendState {
    fn new(backend: Backend) -> BackendState {
        BackendState::discovered(backend, None, false)
    }

    /// A backend a DNS answer named (`from`); `pending`: it waits for its first passing
    /// check before it is up.
    pub fn discovered(
        backend: Backend,
        from: impl Into<Option<Arc<str>>>,
        pending: bool,
    ) -> BackendState {
        BackendState {
            name: backend.to_string(),
            from: from.into(),
            pending: AtomicBool::new(pending),
            backend,
            active: AtomicUsize::new(0),
            connect_failures: AtomicU64::new(0),
            down_until: AtomicU64::new(0),
            checked_down: AtomicBool::new(false),
            fails: AtomicU32::new(0),
            passes: AtomicU32::new(0),
            logged_down: AtomicBool::new(false),
            last_check_error: std::sync::Mutex::new(None),
        }
    }

    /// Up, or down and why.
    pub fn health(&self) -> Health {
        if self.pending.load(Ordering::Relaxed) {
            return Health::DownByCheck {
                why: "new: waiting for its first health check to pass".to_string(),
            };
        }
        if self.checked_down.load(Ordering::Relaxed) {
            let why = self
                .last_check_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_default();
            return Health::DownByCheck { why };
        }
        let until = self.down_until.load(Ordering::Relaxed);
        match until.checked_sub(now_ms()) {
            Some(left) if left > 0 => Health::DownPassively {
                left: Duration::from_millis(left),
            },
            _ => Health::Up,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The DNS name it was discovered by, if it was.
    pub fn from(&self) -> Option<&str> {
        self.from.as_deref()
    }

    /// Its address, when it is one (always, for a discovered backend).
    pub fn address(&self) -> Option<SocketAddr> {
        let ip = self.backend.host().parse::<IpAddr>().ok()?;
        Some(SocketAddr::new(ip, self.backend.port()))
    }

    /// Up: no active check says down and no failed connect's mark is running.
    pub fn is_up(&self) -> bool {
        !self.pending.load(Ordering::Relaxed)
            && !self.checked_down.load(Ordering::Relaxed)
            && self.down_until.load(Ordering::Relaxed) <= now_ms()
    }

    /// Connections through this process to it right now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn connect_failures(&self) -> u64 {
        self.connect_failures.load(Ordering::Relaxed)
    }

    /// A connect failed: marked down for `fail_timeout` (`None`: passive health off), or
    /// until an active check has passed twice since.
    pub fn connect_failed(&self, error: &std::io::Error, fail_timeout: Option<Duration>) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
        let Some(timeout) = fail_timeout else {
            return;
        };
        self.passes.store(0, Ordering::Relaxed);
        self.down_until
            .store(now_ms() + timeout.as_millis() as u64, Ordering::Relaxed);
        if !self.logged_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(backend = %self.name, "backend down: connect failed: {error}; \
                tried again after {timeout:?}, or when every backend of its route is down");
        }
    }

    /// A connect succeeded: a failed connect's mark is over.
    pub fn connected(self: &Arc<Self>) -> Lease {
        self.down_until.store(0, Ordering::Relaxed);
        if !self.checked_down.load(Ordering::Relaxed)
            && self.logged_down.swap(false, Ordering::Relaxed)
        {
            tracing::info!(backend = %self.name, "backend up: connect succeeded");
        }
        self.active.fetch_add(1, Ordering::Relaxed);
        Lease(self.clone())
    }

    /// The outcome of one active check (`Err`: why it failed). Passing twice in a row brings
    /// a backend back, whether checks or a failed connect had marked it down.
    pub fn checked(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                if self.pending.swap(false, Ordering::Relaxed) {
                    tracing::info!(backend = %self.name, from = self.from(),
                        "new backend up: its first health check passed");
                }
                self.fails.store(0, Ordering::Relaxed);
                let passes = self.passes.fetch_add(1, Ordering::Relaxed) + 1;
                if passes >= RISE {
                    self.checked_down.store(false, Ordering::Relaxed);
                    self.down_until.store(0, Ordering::Relaxed);
                    if self.logged_down.swap(false, Ordering::Relaxed) {
                        tracing::info!(backend = %self.name,
                            "backend up: {RISE} health checks passed");
                    }
                }
            }
            Err(why) => {
                *self
                    .last_check_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                self.passes.store(0, Ordering::Relaxed);
                let fails = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
                if fails >= FALL
                    && !self.checked_down.swap(true, Ordering::Relaxed)
                    && !self.logged_down.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(backend = %self.name,
                        "backend down: {FALL} health checks failed in a row, the last: {why}");
                }
            }
        }
    }
}

/// One connection's place in its backend's live count, given back on drop.
#[derive(Debug)]
pub struct Lease(Arc<BackendState>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The backends of one route, in the order of its `--route` rule, with their state.
#[derive(Debug)]
pub struct Pool {
    /// The route as written (`[HOST]PATH`).
    name: RouteName,
    /// The backends given as addresses (or names resolved at connect), in order.
    backends: Vec<Arc<BackendState>>,
    /// The names whose DNS answers are backends too, after those.
    discovered: Vec<Arc<Discovery>>,
    pub policy: Strategy,
    /// The active check of this route's backends, if any.
    pub check: Option<Check>,
    /// The PROXY header written to this route's backends before any byte (`--send-proxy`).
    pub send_proxy: Option<proxy_protocol::Version>,
    /// Where the next round-robin turn starts (also least-conn's tie-break).
    next: Arc<AtomicUsize>,
    /// Under `cookie`, the cookie's name, key and attributes.
    pub affinity: Option<Arc<affinity::Affinity>>,
    /// Under `cookie`, connections placed by a cookie and by least-conn (kept by route
    /// across reloads).
    placed: Arc<Placements>,
    /// How its WebSockets ended and what they carried (kept by route across reloads).
    pub websockets: Arc<RouteWebSockets>,
}

/// Connections a `cookie` route placed by its cookie, and by least-conn.
#[derive(Debug, Default)]
pub struct Placements {
    by_cookie: AtomicU64,
    by_least_conn: AtomicU64,
}

impl Placements {
    /// (by cookie, by least-conn).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.by_cookie.load(Ordering::Relaxed),
            self.by_least_conn.load(Ordering::Relaxed),
        )
    }
}

impl Pool {
    /// The route as written (`[HOST]PATH`).
    pub fn route(&self) -> String {
        self.name.to_string()
    }

    /// Every backend now: those given, then each discovered name's current set.
    pub fn backends(&self) -> Vec<Arc<BackendState>> {
        let mut all = self.backends.clone();
        for discovery in &self.discovered {
            all.extend(discovery.backends().iter().cloned());
        }
        all
    }

    /// Its backends as written: addresses, and the names it discovers backends by.
    pub fn written(&self) -> Vec<String> {
        let fixed = self.backends.iter().map(|b| b.name().to_string());
        fixed
            .chain(self.discovered.iter().map(|d| d.lookup.to_string()))
            .collect()
    }

    /// The names this route discovers backends by.
    pub fn discoveries(&self) -> &[Arc<Discovery>] {
        &self.discovered
    }

    /// Why the route has no backend at all, when it has none: its names have not resolved.
    pub fn empty_because(&self) -> Option<String> {
        if !self.backends.is_empty() || self.discovered.iter().any(|d| !d.backends().is_empty()) {
            return None;
        }
        let why: Vec<String> = self
            .discovered
            .iter()
            .filter_map(|d| d.unresolved())
            .collect();
        Some(why.join("; "))
    }

    /// Under `cookie`: connections placed by cookie and by least-conn so far.
    pub fn placements(&self) -> Option<(u64, u64)> {
        self.affinity.as_ref().map(|_| self.placed.counts())
    }

    /// A connection to the first backend of an order was made: counted by how it was placed
    /// (`by_cookie`), under `cookie`.
    pub fn placed(&self, by_cookie: bool) {
        if self.affinity.is_some() {
            let count = match by_cookie {
                true => &self.placed.by_cookie,
                false => &self.placed.by_least_conn,
            };
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The backends in the order a connection from `client` should try them: those up in the
    /// policy's order, then those down in the same order. Empty while the route's only
    /// backends are names that have not resolved.
    pub fn order(&self, client: IpAddr) -> Vec<Arc<BackendState>> {
        self.order_for(client, None).0
    }

    /// Like [`Pool::order`], for a request whose affinity cookie holds `cookie`; true when
    /// the cookie chose the first backend (under `cookie`, a value naming one that is up).
    pub fn order_for(
        &self,
        client: IpAddr,
        cookie: Option<&str>,
    ) -> (Vec<Arc<BackendState>>, bool) {
        let mut order = self.ranked(client);
        let named = match (&self.affinity, cookie) {
            (Some(affinity), Some(value)) => order
                .iter()
                .position(|b| b.is_up() && affinity.value(b.name()) == value),
            _ => None,
        };
        if let Some(i) = named {
            let chosen = order.remove(i);
            order.insert(0, chosen);
        }
        (order, named.is_some())
    }

    fn ranked(&self, client: IpAddr) -> Vec<Arc<BackendState>> {
        let backends = match self.discovered.is_empty() {
            true => std::borrow::Cow::Borrowed(&self.backends),
            false => std::borrow::Cow::Owned(self.backends()),
        };
        let n = backends.len();
        if n == 0 {
            return Vec::new();
        }
        let turn = || self.next.fetch_add(1, Ordering::Relaxed) % n;
        let ranked: Vec<usize> = match self.policy {
            Strategy::RoundRobin => {
                let start = turn();
                (0..n).map(|i| (start + i) % n).collect()
            }
            Strategy::LeastConn | Strategy::Cookie => {
                let start = turn();
                let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
                // Stable: equal counts keep the round-robin order.
                order.sort_by_key(|&i| backends[i].active());
                order
            }
            Strategy::IpHash => {
                let names: Vec<&str> = backends.iter().map(|b| b.name()).collect();
                hash::rank(&names, client)
            }
        };
        let (up, down): (Vec<usize>, Vec<usize>) =
            ranked.into_iter().partition(|&i| backends[i].is_up());
        up.into_iter()
            .chain(down)
            .map(|i| backends[i].clone())
            .collect()
    }
}

/// How each route balances, checks and greets its backends, as the settings ask.
#[derive(Debug, Clone, Default)]
pub struct Balancing {
    pub policies: Vec<PerRoute<Strategy>>,
    pub checks: Vec<PerRoute<Check>>,
    pub send_proxy: Vec<PerRoute<proxy_protocol::Version>>,
    /// The cookie of the routes balanced by `cookie`.
    pub affinity: affinity::Affinity,
}

/// One pool per route, indexed like the route table.
#[derive(Debug, Default)]
pub struct Pools {
    pools: Vec<Pool>,
}

impl Pools {
    /// Pools for `routes`, with fresh state, balanced and checked as `balancing` says.
    pub fn new(routes: &RouteTable, balancing: &Balancing) -> Result<Pools, String> {
        let policies = per_route(&balancing.policies, routes, "--balance")?;
        let checks = per_route(&balancing.checks, routes, "--health-check")?;
        let send_proxy = per_route(&balancing.send_proxy, routes, "--send-proxy")?;
        let mut states: HashMap<Backend, Arc<BackendState>> = HashMap::new();
        let mut lookups: HashMap<Lookup, Arc<Discovery>> = HashMap::new();
        let pools = routes
            .iter()
            .zip(policies.into_iter().zip(checks).zip(send_proxy))
            .map(|(route, ((policy, check), send_proxy))| Pool {
                name: RouteName::of(&route.spec),
                backends: route
                    .spec
                    .backends
                    .iter()
                    .filter_map(|b| match b {
                        Upstream::Fixed(b) => Some(b),
                        Upstream::Discovered(_) => None,
                    })
                    .map(|b| {
                        states
                            .entry(b.clone())
                            .or_insert_with(|| Arc::new(BackendState::new(b.clone())))
                            .clone()
                    })
                    .collect(),
                discovered: route
                    .spec
                    .backends
                    .iter()
                    .filter_map(|b| match b {
                        Upstream::Discovered(lookup) => Some(
                            lookups
                                .entry(lookup.clone())
                                .or_insert_with(|| Arc::new(Discovery::new(lookup.clone())))
                                .clone(),
                        ),
                        Upstream::Fixed(_) => None,
                    })
                    .collect(),
                policy: policy.copied().unwrap_or_default(),
                check: check.cloned(),
                send_proxy: send_proxy.copied(),
                next: Arc::default(),
                affinity: (policy == Some(&Strategy::Cookie))
                    .then(|| Arc::new(balancing.affinity.clone())),
                placed: Arc::default(),
                websockets: Arc::default(),
            })
            .collect();
        Ok(Pools { pools })
    }

    /// The pool of the route at `index` in the route table.
    pub fn get(&self, index: usize) -> &Pool {
        &self.pools[index]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pool> {
        self.pools.iter()
    }

    /// Whether some route sends PROXY headers to its backends.
    pub fn any_send_proxy(&self) -> bool {
        self.pools.iter().any(|p| p.send_proxy.is_some())
    }

    /// Whether some route discovers backends by DNS.
    pub fn any_discovery(&self) -> bool {
        self.pools.iter().any(|p| !p.discovered.is_empty())
    }
}

/// The balancing state that lives as long as the process, keyed by backend (and, for
/// round-robin positions, by route), and the health checks that run on it.
#[derive(Debug, Default)]
pub struct Registry {
    backends: Mutex<WeakMap<Backend, BackendState>>,
    turns: Mutex<WeakMap<RouteName, AtomicUsize>>,
    placed: Mutex<WeakMap<RouteName, Placements>>,
    websockets: Mutex<WeakMap<RouteName, RouteWebSockets>>,
    discoveries: Mutex<WeakMap<Lookup, Discovery>>,
    pub health: health::Checks,
    pub discovery: discovery::Loops,
}

impl Registry {
    /// Gives `pools` the state already kept for their backends and routes, and keeps theirs
    /// for the rest.
    pub fn adopt(&self, pools: &mut Pools) {
        let mut backends = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        let mut turns = self.turns.lock().unwrap_or_else(|e| e.into_inner());
        let mut discoveries = self.discoveries.lock().unwrap_or_else(|e| e.into_inner());
        let mut placed = self.placed.lock().unwrap_or_else(|e| e.into_inner());
        let mut websockets = self.websockets.lock().unwrap_or_else(|e| e.into_inner());
        let mut checked: HashMap<Lookup, bool> = HashMap::new();
        for pool in &mut pools.pools {
            pool.next = turns.share(&pool.name, &pool.next);
            pool.placed = placed.share(&pool.name, &pool.placed);
            pool.websockets = websockets.share(&pool.name, &pool.websockets);
            for state in &mut pool.backends {
                *state = backends.share(&state.backend, state);
            }
            for discovery in &mut pool.discovered {
                *discovery = discoveries.share(&discovery.lookup, discovery);
                *checked.entry(discovery.lookup.clone()).or_default() |= pool.check.is_some();
            }
        }
        for pool in &pools.pools {
            for discovery in &pool.discovered {
                let is_checked = checked.get(&discovery.lookup).copied().unwrap_or(false);
                discovery.checked.store(is_checked, Ordering::Relaxed);
                if !is_checked {
                    // No check will ever pass for them now: waiting would be forever.
                    for state in discovery.backends().iter() {
                        state.pending.store(false, Ordering::Relaxed);
                    }
                }
            }
        }
        backends.forget_dead();
        turns.forget_dead();
        placed.forget_dead();
        websockets.forget_dead();
        discoveries.forget_dead();
    }
}

/// Shared values by key, held weakly.
#[derive(Debug)]
struct WeakMap<K, V> {
    map: HashMap<K, Weak<V>>,
}

impl<K, V> Default for WeakMap<K, V> {
    fn default() -> Self {
        WeakMap {
            map: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V> WeakMap<K, V> {
    /// The value kept under `key` if it is still alive, else `fresh`, now kept.
    fn share(&mut self, key: &K, fresh: &Arc<V>) -> Arc<V> {
        if let Some(alive) = self.map.get(key).and_then(Weak::upgrade) {
            return alive;
        }
        self.map.insert(key.clone(), Arc::downgrade(fresh));
        fresh.clone()
    }

    fn forget_dead(&mut self) {
        self.map.retain(|_, v| v.strong_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools_with(rules: &[&str], balancing: &Balancing) -> Pools {
        let specs = rules.iter().map(|r| r.parse().expect("rule")).collect();
        Pools::new(&RouteTable::new(specs).expect("table"), balancing).expect("pools")
    }

    fn pools(rules: &[&str]) -> Pools {
        pools_with(rules, &Balancing::default())
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn order(pool: &Pool) -> String {
        pool.order(CLIENT)
            .iter()
            .map(|b| b.backend.host().to_string())
            .collect()
    }

    #[test]
    fn round_robin_then_failover_order() {
        let p = pools(&["/=a:1,b:1,c:1"]);
        let r = p.get(0);
        assert_eq!(order(r), "abc");
        assert_eq!(order(r), "bca");
        assert_eq!(order(r), "cab");
    }

    #[test]
    fn adopted_pools_keep_their_turn_and_backend_state_across_a_reload() {
        let registry = Registry::default();
        let mut old = pools(&["/=a:1,b:1,c:1", "/x=d:1,e:1"]);
        registry.adopt(&mut old);
        assert_eq!(order(old.get(0)), "abc");
        let lease = old.get(0).backends()[1].connected();
        let mut new = pools(&["/y=f:1", "/=a:1,b:1,c:1"]);
        registry.adopt(&mut new);
        assert_eq!(
            order(new.get(1)),
            "bca",
            "the same route goes on where it was"
        );
        assert_eq!(order(old.get(0)), "cab", "old and new share one counter");
        assert_eq!(
            new.get(1).backends()[1].active(),
            1,
            "and one count per backend"
        );
        drop(lease);
        drop(old);
        let mut newer = pools(&["/x=d:1,e:1"]);
        registry.adopt(&mut newer);
        assert_eq!(
            order(newer.get(0)),
            "de",
            "a route no config held starts afresh"
        );
    }

    #[test]
    fn down_backends_go_last_and_are_still_tried() {
        let p = pools(&["/=a:1,b:1,c:1"]);
        let r = p.get(0);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        r.backends()[0].connect_failed(&refused, Some(Duration::from_secs(10)));
        assert_eq!(order(r), "bca");
        assert_eq!(order(r), "bca");
        assert_eq!(order(r), "cba");
        for b in r.backends() {
            b.connect_failed(&refused, Some(Duration::from_secs(10)));
        }
        // All down: every one is tried, in the policy's order.
        assert_eq!(order(r).len(), 3);
        drop(r.backends()[1].connected());
        assert_eq!(&order(r)[..1], "b", "the one that answered comes first");
    }

    #[test]
    fn least_conn_takes_the_fewest_and_breaks_ties_in_turn() {
        let balancing = Balancing {
            policies: vec!["least-conn".parse().unwrap()],
            ..Balancing::default()
        };
        let p = pools_with(&["/=a:1,b:1,c:1"], &balancing);
        let r = p.get(0);
        let mut leases = Vec::new();
        let mut counts = HashMap::new();
        for _ in 0..30 {
            let first = r.order(CLIENT)[0].clone();
            *counts.entry(first.backend.host().to_string()).or_insert(0) += 1;
            leases.push(first.connected());
        }
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            vec![10, 10, 10]
        );
        leases.retain(|l| l.0.backend.host() != "b");
        assert_eq!(&order(r)[..1], "b", "the emptied backend is next");
    }

    #[test]
    fn two_passing_checks_end_a_failed_connects_mark() {
        let p = pools(&["/=a:1"]);
        let a = &p.get(0).backends()[0];
        a.checked(Ok(()));
        a.checked(Ok(()));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        a.connect_failed(&refused, Some(Duration::from_secs(3600)));
        assert!(!a.is_up());
        a.checked(Ok(()));
        assert!(!a.is_up(), "passes from before the failure do not count");
        a.checked(Ok(()));
        assert!(a.is_up());
    }

    #[test]
    fn active_checks_fall_after_three_and_rise_after_two() {
        let p = pools(&["/=a:1,b:1"]);
        let a = &p.get(0).backends()[0];
        a.checked(Err("503".into()));
        a.checked(Err("503".into()));
        assert!(a.is_up());
        a.checked(Err("503".into()));
        assert!(!a.is_up());
        a.checked(Ok(()));
        assert!(!a.is_up());
        a.checked(Ok(()));
        assert!(a.is_up());
    }

    #[test]
    fn rules_name_routes_as_written() {
        let table = RouteTable::new(vec![
            "/socket.io/=a:1".parse().unwrap(),
            "Chat.Example/=b:1".parse().unwrap(),
        ])
        .unwrap();
        let rules: Vec<PerRoute<Strategy>> = vec![
            "round-robin".parse().unwrap(),
            "/socket.io/=ip-hash".parse().unwrap(),
        ];
        let got = per_route(&rules, &table, "--balance").unwrap();
        assert_eq!(
            got,
            vec![Some(&Strategy::IpHash), Some(&Strategy::RoundRobin)]
        );
        let chat: Vec<PerRoute<Strategy>> = vec!["chat.example/=least-conn".parse().unwrap()];
        assert_eq!(
            per_route(&chat, &table, "--balance").unwrap(),
            vec![None, Some(&Strategy::LeastConn)]
        );
        let unknown: Vec<PerRoute<Strategy>> = vec!["/nope/=ip-hash".parse().unwrap()];
        let e = per_route(&unknown, &table, "--balance").unwrap_err();
        assert!(e.contains("no --route /nope/"), "{e}");
        assert!(
            "/x=sticky"
                .parse::<PerRoute<Strategy>>()
                .unwrap_err()
                .contains("unknown policy")
        );
    }
}
