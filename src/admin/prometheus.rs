//! The snapshot in Prometheus's text format, after the counters `metrics` keeps.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use super::snapshot::{ProcessView, Snapshot, Standing};
use crate::balance::Health;
use crate::metrics::websockets::{Direction, Histogram};
use crate::state::State;

pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The counted metrics, then the snapshot's.
pub fn text(state: &State) -> String {
    let mut out = String::new();
    let _ =
        prometheus_client::encoding::prometheus_text::encode(&mut out, state.metrics.registry());
    let now = prometheus(&Snapshot::gather(state, None));
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &now);
    out
}

type Labels2 = [(&'static str, String); 2];
type Labels1 = [(&'static str, String); 1];

/// The snapshot in Prometheus's terms.
fn prometheus(snapshot: &Snapshot) -> Registry {
    let mut registry = Registry::default();
    let websockets = Gauge::<i64>::default();
    websockets.set(snapshot.websockets);
    registry.register(
        "wssbridge_websockets_active",
        "Upgraded tunnels (WebSockets) open now",
        websockets,
    );
    let bytes = Family::<[(&'static str, &'static str); 1], Counter>::default();
    let (up, down) = snapshot.bytes;
    bytes
        .get_or_create(&[("direction", "client_to_backend")])
        .inc_by(up);
    bytes
        .get_or_create(&[("direction", "backend_to_client")])
        .inc_by(down);
    registry.register(
        "wssbridge_bytes",
        "Bytes moved between clients and backends, counted as they move",
        bytes,
    );

    let up = Family::<Labels2, Gauge>::default();
    let active = Family::<Labels1, Gauge>::default();
    let failures = Family::<Labels1, Counter>::default();
    // A backend's state is one per backend, whichever routes name it: its own series once.
    let mut seen = std::collections::HashSet::new();
    for b in &snapshot.backends {
        up.get_or_create(&[("route", b.route.clone()), ("backend", b.backend.clone())])
            .set(i64::from(b.health == Health::Up));
        if seen.insert(b.backend.clone()) {
            active
                .get_or_create(&[("backend", b.backend.clone())])
                .set(b.active as i64);
            failures
                .get_or_create(&[("backend", b.backend.clone())])
                .inc_by(b.connect_failures);
        }
    }
    registry.register(
        "wssbridge_backend_up",
        "1 while the backend is not marked down (passive or active health)",
        up,
    );
    registry.register(
        "wssbridge_backend_connections_active",
        "Connections through this process to the backend now",
        active,
    );
    registry.register(
        "wssbridge_backend_connect_failures",
        "Failed connects to the backend",
        failures,
    );
    discovery(&mut registry, snapshot);
    websocket_families(&mut registry, snapshot);
    threads(&mut registry, snapshot);
    let placements = Family::<Labels2, Counter>::default();
    for route in &snapshot.routes {
        if let Some((cookie, least)) = route.placements {
            let by = |how: &str| [("route", route.route.clone()), ("by", how.to_string())];
            placements.get_or_create(&by("cookie")).inc_by(cookie);
            placements.get_or_create(&by("least_conn")).inc_by(least);
        }
    }
    registry.register(
        "wssbridge_affinity_placements",
        "Connections a --balance cookie route placed, by their affinity cookie or by least-conn",
        placements,
    );

    // Each name once: the first certificate naming it serves it.
    let expiry = Family::<Labels1, Gauge>::default();
    let mut named = std::collections::HashSet::new();
    for cert in &snapshot.certs {
        for name in cert.names.iter().filter(|n| named.insert(n.as_str())) {
            expiry
                .get_or_create(&[("name", name.clone())])
                .set(cert.not_after);
        }
    }
    registry.register(
        "wssbridge_certificate_expiry_timestamp_seconds",
        "When the certificate serving the name expires (Unix time)",
        expiry,
    );
    process(&mut registry, &snapshot.process);
    registry
}

/// Per core: what each thread accepted, to see how evenly the threads share the load.
fn threads(registry: &mut Registry, snapshot: &Snapshot) {
    if snapshot.runtime.accepted_by_thread.is_empty() {
        return;
    }
    let accepted = Family::<Labels1, Counter>::default();
    for (n, count) in snapshot.runtime.accepted_by_thread.iter().enumerate() {
        accepted
            .get_or_create(&[("thread", n.to_string())])
            .inc_by(*count);
    }
    registry.register(
        "wssbridge_thread_accepted_connections",
        "Connections each serving thread accepted (--runtime per-core: it serves them to \
         their end), by thread number",
        accepted,
    );
}

/// How each route's WebSockets ended and what they carried. Labels are bounded: the route as
/// configured, the side, a close code among 1000–1015 or `other`/`none`, the direction.
fn websocket_families(registry: &mut Registry, snapshot: &Snapshot) {
    let closes = Family::<[(&'static str, String); 3], Counter>::default();
    let messages = Family::<Labels2, Counter>::default();
    let unframed = Family::<Labels1, Counter>::default();
    let mut sizes = Histograms::default();
    let mut durations = Histograms::default();
    for route in &snapshot.routes {
        let name = || route.route.clone();
        let ws = &route.websockets;
        for (ender, code, count) in &ws.closes {
            let labels = [
                ("route", name()),
                ("side", ender.label().to_string()),
                ("code", code.to_string()),
            ];
            closes.get_or_create(&labels).inc_by(*count);
        }
        for way in Direction::ALL {
            let labels = [("route", name()), ("direction", way.label().to_string())];
            messages.get_or_create(&labels).inc_by(ws.messages(way));
            sizes.series.push((labels, ws.sizes[way as usize].clone()));
        }
        unframed
            .get_or_create(&[("route", name())])
            .inc_by(ws.unframed);
        durations
            .series
            .push(([("route", name())], ws.durations.clone()));
    }
    registry.register(
        "wssbridge_websocket_closes",
        "WebSockets ended, by the side that ended them first (client, backend, proxy) and \
         the close code it sent (1000-1015, other, none)",
        closes,
    );
    registry.register(
        "wssbridge_websocket_messages",
        "WebSocket messages (fragments counted once, control frames apart), by direction",
        messages,
    );
    registry.register(
        "wssbridge_websocket_message_size_bytes",
        "WebSocket message payload sizes, by direction",
        sizes,
    );
    registry.register(
        "wssbridge_websocket_duration_seconds",
        "How long WebSockets lasted, from the 101 to their end",
        durations,
    );
    registry.register(
        "wssbridge_websocket_unframed",
        "Tunnels upgraded to WebSocket whose bytes were not WebSocket framing",
        unframed,
    );
}

/// Histograms read at scrape time, one series per label set.
#[derive(Debug)]
struct Histograms<L> {
    series: Vec<(L, Histogram)>,
}

impl<L> Default for Histograms<L> {
    fn default() -> Self {
        Histograms { series: Vec::new() }
    }
}

impl<L> TypedMetric for Histograms<L> {
    const TYPE: MetricType = MetricType::Histogram;
}

impl<L: EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static> EncodeMetric for Histograms<L> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, h) in &self.series {
            let bounds = h.bounds.iter().copied().chain([f64::INFINITY]);
            let buckets: Vec<(f64, u64)> = bounds.zip(h.counts.iter().copied()).collect();
            encoder
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(h.sum, h.count(), &buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Discovered names and backends: one series per name configured and per address it has
/// now, so nothing grows without bound (a removed address's series go with it).
fn discovery(registry: &mut Registry, snapshot: &Snapshot) {
    let discovered = Family::<Labels2, Gauge>::default();
    for b in &snapshot.backends {
        if let Some(name) = &b.from {
            discovered
                .get_or_create(&[("backend", b.backend.clone()), ("name", name.clone())])
                .set(1);
        }
    }
    let backends = Family::<Labels1, Gauge>::default();
    let failing = Family::<Labels1, Gauge>::default();
    let lookups = Family::<Labels2, Counter>::default();
    let mut seen = std::collections::HashSet::new();
    for d in snapshot.routes.iter().flat_map(|r| &r.discovery) {
        if !seen.insert(d.name.clone()) {
            continue;
        }
        let name = || d.name.clone();
        backends
            .get_or_create(&[("name", name())])
            .set(d.backends as i64);
        failing
            .get_or_create(&[("name", name())])
            .set(i64::from(d.standing != Standing::Resolved));
        lookups
            .get_or_create(&[("name", name()), ("result", "success".into())])
            .inc_by(d.lookups.saturating_sub(d.failures));
        lookups
            .get_or_create(&[("name", name()), ("result", "failure".into())])
            .inc_by(d.failures);
    }
    registry.register(
        "wssbridge_backend_discovered",
        "1 for each backend a DNS name gave (dns:NAME:PORT, srv:NAME), with the name",
        discovered,
    );
    registry.register(
        "wssbridge_discovery_backends",
        "Addresses a discovered name has now (the last good answer's)",
        backends,
    );
    registry.register(
        "wssbridge_discovery_failing",
        "1 while a discovered name's lookups fail (its last good set kept) or it has never resolved",
        failing,
    );
    registry.register(
        "wssbridge_discovery_lookups",
        "DNS lookups of discovered names, by result (an empty answer is a failure)",
        lookups,
    );
}

/// The Prometheus client libraries' standard process metrics.
fn process(registry: &mut Registry, p: &ProcessView) {
    if let Some(seconds) = p.cpu_seconds {
        let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        cpu.inc_by(seconds);
        registry.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            cpu,
        );
    }
    let gauges = [
        (
            p.resident_bytes,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
        ),
        (
            p.virtual_bytes,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
        ),
        (
            p.open_fds,
            "process_open_fds",
            "Number of open file descriptors",
        ),
        (
            p.max_fds,
            "process_max_fds",
            "Maximum number of open file descriptors",
        ),
    ];
    for (value, name, help) in gauges {
        if let Some(value) = value {
            let g = Gauge::<i64>::default();
            g.set(value);
            registry.register(name, help, g);
        }
    }
    if let Some(start) = p.start_time {
        let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        g.set(start);
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            g,
        );
    }
}
