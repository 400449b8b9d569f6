//! Backends found by DNS (`dns:NAME:PORT`, `srv:NAME`): every address a name answers with
//! is a backend of its own, under its route's policy, and the name is asked again when its
//! answer's TTL runs out (between [`MIN_WAIT`] and [`MAX_WAIT`]) — nginx's `resolve`,
//! HAProxy's `server-template`, Envoy's STRICT_DNS.
//!
//! One [`Discovery`] per name, shared by every route and every configuration that names it
//! (the registry keeps it across reloads, so a reload never forgets an answer). Its set of
//! backends is swapped whole when an answer differs; a backend that keeps its address keeps
//! its state (live count, health), and one that goes keeps its live tunnels, which hold its
//! state and never look at the set again. A failed lookup or an empty answer keeps the last
//! good set: DNS trouble never empties a route. A name that has never answered leaves its
//! route with nothing to try (502, said why), and is asked again.
//!
//! The loops that ask are background work the supervisor starts and stops through
//! [`Loops::reconcile`], as it does health checks; a changed set tells it (through
//! `changed`) so new backends get their checks. In a route with an active check a new
//! address waits for its first pass before it gets connections.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver as Hickory, TokioResolver};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{BackendState, Pools};
use crate::lifecycle::{Shutdown, Spawner};
use crate::route::{Backend, Lookup};

/// Bounds on the wait between two lookups of a name, whatever its TTL says.
pub const MIN_WAIT: Duration = Duration::from_secs(1);
pub const MAX_WAIT: Duration = Duration::from_secs(300);
/// After a failed lookup, the wait doubles from `MIN_WAIT` up to this.
const MAX_RETRY: Duration = Duration::from_secs(5);
/// One lookup's bound, SRV targets' lookups included (each server is given half of it).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(4);

/// The DNS servers discovery asks: `--resolver`, or those of `/etc/resolv.conf`.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<TokioResolver>,
    /// `--resolver` as given (empty: the system's), to tell whether a reload changed it.
    pub servers: Vec<SocketAddr>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("servers", &self.servers)
            .finish()
    }
}

impl Resolver {
    /// A resolver asking `servers` (UDP, then TCP for a truncated answer), or the system's
    /// (`/etc/resolv.conf`, with its search domains) when there are none. No cache: each
    /// lookup is asked when the last answer's TTL has run out, and goes to a server.
    pub fn new(servers: &[SocketAddr]) -> anyhow::Result<Resolver> {
        let tune = |o: &mut ResolverOpts| {
            o.cache_size = 0;
            o.timeout = LOOKUP_TIMEOUT / 2;
            o.attempts = 1;
            o.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        };
        let resolver = if servers.is_empty() {
            let mut builder = TokioResolver::builder_tokio().map_err(|e| {
                anyhow::anyhow!(
                    "reading /etc/resolv.conf for dns: and srv: backends: {e} (or give \
                     --resolver IP)"
                )
            })?;
            tune(builder.options_mut());
            builder.build()
        } else {
            let names = servers
                .iter()
                .map(|server| {
                    let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
                    udp.port = server.port();
                    tcp.port = server.port();
                    NameServerConfig::new(server.ip(), true, vec![udp, tcp])
                })
                .collect();
            let mut builder = Hickory::builder_with_config(
                ResolverConfig::from_name_servers(names),
                TokioRuntimeProvider::default(),
            );
            let options = builder.options_mut();
            tune(options);
            // The servers named are the whole truth: not /etc/hosts.
            options.use_hosts_file = ResolveHosts::Never;
            builder.build()
        }
        .map_err(|e| anyhow::anyhow!("starting the DNS resolver: {e}"))?;
        Ok(Resolver {
            inner: Arc::new(resolver),
            servers: servers.to_vec(),
        })
    }

    /// The addresses `lookup` names now, and how long the answer holds; `Err` for a failed
    /// lookup and for an empty answer alike (both keep the last set).
    pub async fn resolve(&self, lookup: &Lookup) -> Result<Answer, String> {
        let asked = Instant::now();
        let answer = tokio::time::timeout(LOOKUP_TIMEOUT, async {
            match lookup {
                Lookup::Dns { name, port } => self.addresses(name, *port).await,
                Lookup::Srv { name } => self.services(name).await,
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {LOOKUP_TIMEOUT:?}")))?;
        if answer.addrs.is_empty() {
            return Err("the answer holds no address".to_string());
        }
        let Found {
            mut addrs,
            until,
            kept,
        } = answer;
        addrs.sort();
        addrs.dedup();
        let ttl = until.saturating_duration_since(asked);
        Ok(Answer {
            addrs,
            ttl,
            keep_v4: kept[0],
            keep_v6: kept[1],
        })
    }

    /// A and AAAA of `name`, asked together: either may have no record, not both. One
    /// family failing (no answer, SERVFAIL) beside the other's records is a half answer: its
    /// family is marked kept, so the last set's addresses of it stay (a server that fails
    /// AAAA alone neither empties nor shrinks the set).
    async fn addresses(&self, name: &str, port: u16) -> Result<Found, String> {
        let fqdn = absolute(name);
        let (v4, v6) = tokio::join!(
            self.inner.ipv4_lookup(fqdn.as_str()),
            self.inner.ipv6_lookup(fqdn.as_str())
        );
        let mut addrs = Vec::new();
        let mut until: Option<Instant> = None;
        let mut errors = Vec::new();
        let mut kept = [false; 2];
        for (i, (family, result)) in [("A", v4), ("AAAA", v6)].into_iter().enumerate() {
            match result {
                Ok(lookup) => {
                    for record in lookup.answers() {
                        if let Some(ip) = record.data.ip_addr() {
                            addrs.push(SocketAddr::new(ip, port));
                        }
                    }
                    until =
                        Some(until.map_or(lookup.valid_until(), |u| u.min(lookup.valid_until())));
                }
                Err(e) if e.is_no_records_found() => {}
                Err(e) => {
                    kept[i] = true;
                    errors.push(format!("{family}: {}", describe(&e)));
                }
            }
        }
        match (addrs.is_empty(), errors.is_empty()) {
            (true, false) => Err(errors.join("; ")),
            (true, true) => Err(format!("{name} has no A or AAAA record")),
            (false, _) => Ok(Found {
                addrs,
                until: until.unwrap_or_else(Instant::now),
                kept,
            }),
        }
    }

    /// The SRV records of `name` with the lowest priority, each target's addresses (from
    /// the answer's additional section, else asked) at the record's port. A target whose
    /// lookup fails fails the whole (the last set is kept); one with no address is left out.
    async fn services(&self, name: &str) -> Result<Found, String> {
        let lookup = self
            .inner
            .srv_lookup(absolute(name).as_str())
            .await
            .map_err(|e| match e.is_no_records_found() {
                true => format!("{name} has no SRV record"),
                false => describe(&e),
            })?;
        let mut until = lookup.valid_until();
        let records: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv.clone()),
                _ => None,
            })
            .collect();
        let best = records.iter().map(|srv| srv.priority).min();
        let mut addrs = Vec::new();
        for srv in records.iter().filter(|srv| Some(srv.priority) == best) {
            let glue: Vec<IpAddr> = lookup
                .additionals()
                .iter()
                .filter(|r| r.name == srv.target)
                .filter_map(|r| r.data.ip_addr())
                .collect();
            if !glue.is_empty() {
                addrs.extend(glue.into_iter().map(|ip| SocketAddr::new(ip, srv.port)));
                continue;
            }
            let target = srv.target.to_ascii();
            match self.addresses(&target, srv.port).await {
                Ok(found) if found.kept.contains(&true) => {
                    return Err(format!("SRV target {target}: a half answer"));
                }
                Ok(found) => {
                    addrs.extend(found.addrs);
                    until = until.min(found.until);
                }
                Err(e) if e.ends_with("has no A or AAAA record") => {
                    tracing::debug!(%name, %target, "SRV target: {e}");
                }
                Err(e) => return Err(format!("SRV target {target}: {e}")),
            }
        }
        match addrs.is_empty() {
            true => Err(format!("no target of {name}'s SRV records has an address")),
            false => Ok(Found {
                addrs,
                until,
                kept: [false; 2],
            }),
        }
    }
}

/// `name` with its final dot, so a search list never changes what it means... unless it
/// has no dot at all (`chat`, a compose service), which is the search list's to complete.
fn absolute(name: &str) -> String {
    match name.contains('.') && !name.ends_with('.') {
        true => format!("{name}."),
        false => name.to_string(),
    }
}

/// A lookup error as an operator reads it.
fn describe(e: &NetError) -> String {
    match e {
        NetError::Timeout => "the DNS server did not answer".to_string(),
        NetError::NoConnections => "no DNS server to ask".to_string(),
        other => other.to_string(),
    }
}

/// What one lookup found: addresses, until when, and which family (A, AAAA) failed beside
/// the other's records.
struct Found {
    addrs: Vec<SocketAddr>,
    until: Instant,
    kept: [bool; 2],
}

/// One good answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Sorted, without duplicates.
    pub addrs: Vec<SocketAddr>,
    pub ttl: Duration,
    /// The IPv4 (IPv6) lookup failed beside the other's records: the IPv4 (IPv6) addresses
    /// the set has stay.
    pub keep_v4: bool,
    pub keep_v6: bool,
}

/// Where a name stands, for the log (one line per change), the status page and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Not asked yet, or never answered: the route has nothing from it.
    Unresolved {
        error: Option<String>,
    },
    Resolved,
    /// The last lookups failed; the last good set is kept.
    Failing {
        error: String,
    },
}

/// One discovered name: its backends now and its standing.
#[derive(Debug)]
pub struct Discovery {
    pub lookup: Lookup,
    /// What the log and the status page call its backends' origin.
    label: Arc<str>,
    backends: ArcSwap<Vec<Arc<BackendState>>>,
    standing: Mutex<(Standing, Option<SystemTime>)>,
    /// Some route naming it has an active check: new addresses wait for their first pass.
    pub checked: AtomicBool,
    lookups: AtomicU64,
    failures: AtomicU64,
    /// Told when the first lookup is over, whatever its outcome.
    answered: Notify,
    first_done: AtomicBool,
}

/// What the status page and `/metrics` show of one name.
#[derive(Debug, Clone)]
pub struct DiscoveryView {
    pub name: String,
    pub standing: Standing,
    /// When the last good answer came.
    pub resolved_at: Option<SystemTime>,
    pub backends: usize,
    pub lookups: u64,
    pub failures: u64,
}

impl Discovery {
    pub fn new(lookup: Lookup) -> Discovery {
        Discovery {
            label: lookup.to_string().into(),
            lookup,
            backends: ArcSwap::from_pointee(Vec::new()),
            standing: Mutex::new((Standing::Unresolved { error: None }, None)),
            checked: AtomicBool::new(false),
            lookups: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            answered: Notify::new(),
            first_done: AtomicBool::new(false),
        }
    }

    /// Its backends now (empty until its name first answers).
    pub fn backends(&self) -> Arc<Vec<Arc<BackendState>>> {
        self.backends.load_full()
    }

    pub fn view(&self) -> DiscoveryView {
        let (standing, resolved_at) = self
            .standing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Failures first: a lookup is counted before its failure, so this order never
        // reads more failures than lookups.
        let failures = self.failures.load(Ordering::Relaxed);
        DiscoveryView {
            name: self.label.to_string(),
            standing,
            resolved_at,
            backends: self.backends.load().len(),
            lookups: self.lookups.load(Ordering::Relaxed),
            failures,
        }
    }

    /// Why its route has nothing to try, while it has never answered.
    pub fn unresolved(&self) -> Option<String> {
        match &self.standing.lock().unwrap_or_else(|e| e.into_inner()).0 {
            Standing::Unresolved { error } => Some(match error {
                Some(e) => format!("{} has not resolved: {e}", self.label),
                None => format!("{} has not resolved yet", self.label),
            }),
            _ => None,
        }
    }

    /// Takes a good answer; true when the set of backends changed. Addresses kept keep
    /// their state; new ones start waiting for a check where there is one.
    pub fn answered(&self, answer: &Answer) -> bool {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let old = self.backends.load_full();
        let mut addrs = answer.addrs.clone();
        let kept = old.iter().filter_map(|b| b.address()).filter(|a| match a {
            SocketAddr::V4(_) => answer.keep_v4,
            SocketAddr::V6(_) => answer.keep_v6,
        });
        addrs.extend(kept);
        addrs.sort();
        addrs.dedup();
        let answer = Answer {
            addrs,
            ..answer.clone()
        };
        let changed = answer.addrs.len() != old.len()
            || answer
                .addrs
                .iter()
                .zip(old.iter())
                .any(|(addr, b)| b.address() != Some(*addr));
        let recovered = {
            let mut standing = self.standing.lock().unwrap_or_else(|e| e.into_inner());
            let was = std::mem::replace(&mut standing.0, Standing::Resolved);
            standing.1 = Some(SystemTime::now());
            was
        };
        if let Standing::Failing { .. } = recovered {
            tracing::info!(name = %self.label, "DNS lookups answer again");
        }
        if changed {
            let checked = self.checked.load(Ordering::Relaxed);
            let by_addr: HashMap<SocketAddr, &Arc<BackendState>> = old
                .iter()
                .filter_map(|b| b.address().map(|a| (a, b)))
                .collect();
            let set: Vec<Arc<BackendState>> = answer
                .addrs
                .iter()
                .map(|addr| match by_addr.get(addr) {
                    Some(kept) => (*kept).clone(),
                    None => Arc::new(BackendState::discovered(
                        Backend::from(*addr),
                        self.label.clone(),
                        checked && !old.is_empty(),
                    )),
                })
                .collect();
            let added: Vec<String> = set
                .iter()
                .filter(|b| !old.iter().any(|o| Arc::ptr_eq(o, b)))
                .map(|b| b.name().to_string())
                .collect();
            let removed: Vec<String> = old
                .iter()
                .filter(|o| !set.iter().any(|b| Arc::ptr_eq(o, b)))
                .map(|b| b.name().to_string())
                .collect();
            tracing::info!(
                name = %self.label,
                backends = set.len(),
                added = %added.join(","),
                removed = %removed.join(","),
                ttl = ?answer.ttl,
                "discovered backends changed; live tunnels keep theirs"
            );
            self.backends.store(Arc::new(set));
        }
        self.first_answered();
        changed
    }

    /// A failed lookup (or an empty answer): the set stays; logged once per change of
    /// standing (the first failure after answers, or of a name never resolved), not per
    /// lookup nor per new error text.
    pub fn failed(&self, error: String) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        let kept = self.backends.load().len();
        let mut standing = self.standing.lock().unwrap_or_else(|e| e.into_inner());
        let next = match &standing.0 {
            Standing::Unresolved { .. } => Standing::Unresolved {
                error: Some(error.clone()),
            },
            _ => Standing::Failing {
                error: error.clone(),
            },
        };
        // Failing already (or unresolved with an error already): the same state, whatever
        // the error says now (a timeout, then a refusal); the status page shows the latest.
        let same_state = matches!(
            (&standing.0, &next),
            (Standing::Failing { .. }, Standing::Failing { .. })
                | (
                    Standing::Unresolved { error: Some(_) },
                    Standing::Unresolved { .. }
                )
        );
        if !same_state {
            match &next {
                Standing::Unresolved { .. } => tracing::warn!(
                    name = %self.label,
                    "DNS lookup failed: {error}; its route has no backend from it until it \
                     answers (asked again)"
                ),
                _ => tracing::warn!(
                    name = %self.label,
                    "DNS lookup failed: {error}; keeping the last {kept} backends (asked again)"
                ),
            }
        }
        standing.0 = next;
        drop(standing);
        self.first_answered();
    }

    fn first_answered(&self) {
        if !self.first_done.swap(true, Ordering::Relaxed) {
            self.answered.notify_waiters();
        }
    }

    /// Waits until the first lookup is over (at once if it is).
    pub async fn first_lookup(&self) {
        let notified = self.answered.notified();
        if self.first_done.load(Ordering::Relaxed) {
            return;
        }
        notified.await;
    }
}

/// The running lookup loops, by name.
#[derive(Debug, Default)]
pub struct Loops {
    running: Mutex<HashMap<Lookup, (Vec<SocketAddr>, CancellationToken)>>,
}

impl Loops {
    /// Makes the running loops those `pools` ask for, with `resolver`: starts the missing,
    /// restarts those whose resolver changed, stops those no route names any more. Each
    /// tells `changed` when its set changes.
    pub fn reconcile(
        &self,
        pools: &Pools,
        resolver: Option<&Resolver>,
        changed: &Arc<Notify>,
        spawner: &Spawner,
        shutdown: &Shutdown,
    ) {
        let mut wanted: HashMap<Lookup, Arc<Discovery>> = HashMap::new();
        for pool in pools.iter() {
            for discovery in pool.discoveries() {
                wanted.insert(discovery.lookup.clone(), discovery.clone());
            }
        }
        let servers = resolver.map(|r| r.servers.clone()).unwrap_or_default();
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|lookup, (with, stop)| {
            let keep = wanted.contains_key(lookup) && *with == servers;
            if !keep {
                stop.cancel();
            }
            keep
        });
        let Some(resolver) = resolver else { return };
        for (lookup, discovery) in wanted {
            if running.contains_key(&lookup) {
                continue;
            }
            let stop = shutdown.stop_child();
            spawner.background(run(
                discovery,
                resolver.clone(),
                changed.clone(),
                stop.clone(),
            ));
            running.insert(lookup, (servers.clone(), stop));
        }
    }
}

/// Asks `discovery`'s name until `stop`: at once, then as each answer's TTL says.
async fn run(
    discovery: Arc<Discovery>,
    resolver: Resolver,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut retry = MIN_WAIT;
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = resolver.resolve(&discovery.lookup) => outcome,
        };
        let wait = match outcome {
            Ok(answer) => {
                retry = MIN_WAIT;
                if discovery.answered(&answer) {
                    changed.notify_one();
                }
                answer.ttl.clamp(MIN_WAIT, MAX_WAIT)
            }
            Err(error) => {
                discovery.failed(error);
                let wait = retry;
                retry = (retry * 2).min(MAX_RETRY);
                wait
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discovery() -> Discovery {
        Discovery::new(Lookup::Dns {
            name: "chat".into(),
            port: 3000,
        })
    }

    fn answer(addrs: &[&str], keep_v4: bool, keep_v6: bool) -> Answer {
        let mut addrs: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        addrs.sort();
        Answer {
            addrs,
            ttl: Duration::from_secs(1),
            keep_v4,
            keep_v6,
        }
    }

    fn names(d: &Discovery) -> Vec<String> {
        d.backends().iter().map(|b| b.name().to_string()).collect()
    }

    #[test]
    fn a_half_answer_keeps_the_failed_family_and_a_kept_address_its_state() {
        let d = discovery();
        assert!(d.answered(&answer(&["10.0.0.1:3000", "[fd00::1]:3000"], false, false)));
        let v6 = d.backends()[1].clone();
        // AAAA failed beside A's records: the IPv6 address stays, with its state.
        assert!(d.answered(&answer(&["10.0.0.2:3000"], false, true)));
        assert_eq!(names(&d), ["10.0.0.2:3000", "[fd00::1]:3000"]);
        assert!(Arc::ptr_eq(&v6, &d.backends()[1]));
        assert!(!d.answered(&answer(&["10.0.0.2:3000", "[fd00::1]:3000"], false, false)));
    }

    #[test]
    fn in_a_checked_route_only_addresses_added_later_wait_for_a_check() {
        let d = discovery();
        d.checked.store(true, Ordering::Relaxed);
        d.answered(&answer(&["10.0.0.1:3000"], false, false));
        assert!(d.backends()[0].is_up(), "the first answer serves at once");
        d.answered(&answer(&["10.0.0.1:3000", "10.0.0.2:3000"], false, false));
        let added = d.backends()[1].clone();
        assert!(!added.is_up());
        assert!(matches!(
            added.health(),
            crate::balance::Health::DownByCheck { .. }
        ));
        added.checked(Ok(()));
        assert!(added.is_up(), "one pass is enough for a new address");
    }

    #[test]
    fn a_failure_keeps_the_set_and_is_counted() {
        let d = discovery();
        assert!(d.unresolved().is_some());
        d.failed("the DNS server did not answer".into());
        assert!(d.unresolved().unwrap().contains("did not answer"));
        d.answered(&answer(&["10.0.0.1:3000"], false, false));
        d.failed("no answer".into());
        d.failed("SERVFAIL".into());
        assert_eq!(names(&d), ["10.0.0.1:3000"]);
        let view = d.view();
        assert_eq!(
            view.standing,
            Standing::Failing {
                error: "SERVFAIL".into()
            }
        );
        assert_eq!((view.lookups, view.failures), (4, 3));
        assert!(d.unresolved().is_none());
    }
}
