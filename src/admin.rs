//! `--admin ADDR`: a plain-HTTP listener for whoever runs wssbridge, not for its clients.
//!
//! - `GET /metrics`: Prometheus text format: the counters of `metrics`, and what is read at
//!   scrape time: live WebSockets and bytes, each backend's health and live connections,
//!   certificate expiry, and the process (descriptors, memory, CPU);
//! - `GET /livez`, `/healthz`: 200 while the process serves;
//! - `GET /readyz`: 200 when the listeners accept and every route has a backend up; 503 from
//!   the moment shutdown starts (so a balancer in front stops sending before the listeners
//!   close), or while a route has none up. The body says why;
//! - anything else: 404 (405 for a method other than GET or HEAD).
//!
//! What is read at scrape time is gathered once per request into a [`Snapshot`] (one walk
//! of the state), which each view encodes: Prometheus text now.
//!
//! Bounded like the main listener (`--header-timeout`, `--max-header-bytes`), in the time an
//! answer's write may take, and by its own small connection limit, outside
//! `--max-connections`: a scrape still works when the proxy is full. Answers are written by
//! `respond::answer`, as every answer wssbridge makes itself. It stays up until the process
//! exits, so `/livez` answers through the drain.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::http::head;
use crate::respond;
use crate::state::State;

/// Admin connections served at once; more are closed at accept.
const ADMIN_CONNECTIONS: usize = 64;
/// Time to write one answer: a page of metrics to a client on the same network.
const WRITE_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves the admin listener until `stop`.
pub async fn serve(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(ADMIN_CONNECTIONS));
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!("admin accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            answer(stream, &state).await;
            drop(slot);
        });
    }
}

/// One request, one answer, then close. The write is bounded like the read: a scraper that
/// stops reading does not hold a slot.
async fn answer(stream: TcpStream, state: &State) {
    let config = state.config.load_full();
    let mut stream = BufReader::with_capacity(1024, stream);
    let mut buf = Vec::new();
    let read = head::read(&mut stream, &mut buf, config.limits.max_header_bytes);
    let deadline = config
        .timeouts
        .header
        .map(|t| tokio::time::Instant::now() + t);
    let read = crate::deadline::within(deadline, read).await;
    let (status, content_type, body) = match read {
        Some(Ok(Some(request))) => route(&request, state),
        Some(Ok(None)) => return,
        Some(Err(_)) => (400, respond::TEXT, "bad request\n".to_string()),
        None => (408, respond::TEXT, "request timeout\n".to_string()),
    };
    let head_only = matches!(read_method(&buf), Some("HEAD"));
    let extra = [("Cache-Control", "no-store")];
    let response = respond::answer(status, content_type, &extra, body.as_bytes(), head_only);
    let stream = stream.get_mut();
    let write = async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(WRITE_TIME, write).await;
}

fn read_method(buf: &[u8]) -> Option<&str> {
    let end = buf.iter().position(|&b| b == b' ')?;
    std::str::from_utf8(&buf[..end]).ok()
}

fn route(request: &head::Head, state: &State) -> (u16, &'static str, String) {
    if request.method != "GET" && request.method != "HEAD" {
        return (405, respond::TEXT, "only GET and HEAD\n".to_string());
    }
    let path = request.target.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => (200, METRICS_TYPE, metrics(state)),
        "/livez" | "/healthz" => (200, respond::TEXT, "ok\n".to_string()),
        "/readyz" => match unready(state) {
            None => (200, respond::TEXT, "ready\n".to_string()),
            Some(why) => (503, respond::TEXT, format!("not ready: {why}\n")),
        },
        _ => (404, respond::TEXT, "not found\n".to_string()),
    }
}

/// Why the proxy should not be sent new connections now, if it should not.
fn unready(state: &State) -> Option<String> {
    if state.life.drain().is_cancelled() {
        return Some("shutting down".to_string());
    }
    if !state.running() {
        return Some("starting".to_string());
    }
    let config = state.config.load();
    let down: Vec<String> = config
        .pools
        .iter()
        .filter(|pool| !pool.backends().iter().any(|b| b.is_up()))
        .map(|pool| pool.route())
        .collect();
    (!down.is_empty()).then(|| format!("no backend up for route {}", down.join(", ")))
}

const METRICS_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The counted metrics, then the snapshot's.
fn metrics(state: &State) -> String {
    let mut out = String::new();
    let _ =
        prometheus_client::encoding::prometheus_text::encode(&mut out, state.metrics.registry());
    let now = prometheus(&Snapshot::gather(state));
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &now);
    out
}

/// What the admin port shows beyond the counters, gathered in one walk of the state; each
/// view (Prometheus text now) encodes it without walking the state again.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub websockets: i64,
    /// Bytes moved: client to backend, backend to client.
    pub bytes: (u64, u64),
    /// Every backend of every route, in the routes' order.
    pub backends: Vec<BackendView>,
    /// Each name a certificate serves, once, with its expiry (Unix time).
    pub certificates: Vec<(String, i64)>,
    pub process: ProcessView,
}

#[derive(Debug)]
pub struct BackendView {
    pub route: String,
    pub backend: String,
    pub up: bool,
    pub active: usize,
    pub connect_failures: u64,
}

/// The process as `/proc/self` shows it; what could not be read is `None`.
#[derive(Debug, Default)]
pub struct ProcessView {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<i64>,
    pub virtual_bytes: Option<i64>,
    pub start_time: Option<f64>,
    pub open_fds: Option<i64>,
    pub max_fds: Option<i64>,
}

impl Snapshot {
    pub fn gather(state: &State) -> Snapshot {
        let traffic = &state.metrics.traffic;
        let config = state.config.load();
        let backends = config
            .pools
            .iter()
            .flat_map(|pool| {
                pool.backends().iter().map(move |b| BackendView {
                    route: pool.route(),
                    backend: b.name().to_string(),
                    up: b.is_up(),
                    active: b.active(),
                    connect_failures: b.connect_failures(),
                })
            })
            .collect();
        let mut named = std::collections::HashSet::new();
        let certificates = config
            .tls
            .certs
            .infos()
            .iter()
            .flat_map(|cert| cert.names.iter().map(|n| (n.clone(), cert.not_after)))
            .filter(|(name, _)| named.insert(name.clone()))
            .collect();
        Snapshot {
            websockets: traffic.websockets(),
            bytes: traffic.bytes(),
            backends,
            certificates,
            process: ProcessView::read(),
        }
    }
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
            .set(i64::from(b.up));
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

    let expiry = Family::<Labels1, Gauge>::default();
    for (name, not_after) in &snapshot.certificates {
        expiry
            .get_or_create(&[("name", name.clone())])
            .set(*not_after);
    }
    registry.register(
        "wssbridge_certificate_expiry_timestamp_seconds",
        "When the certificate serving the name expires (Unix time)",
        expiry,
    );
    process(&mut registry, &snapshot.process);
    registry
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

impl ProcessView {
    /// From `/proc/self`.
    fn read() -> ProcessView {
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let page = rustix::param::page_size() as i64;
        let mut view = ProcessView::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name, which may hold spaces, in parentheses.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
            let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
            view.cpu_seconds = field(14)
                .zip(field(15))
                .map(|(utime, stime)| (utime + stime) / ticks);
            view.resident_bytes = field(24).map(|rss| rss as i64 * page);
            view.virtual_bytes = field(23).map(|v| v as i64);
            view.start_time = field(22)
                .zip(boot_time())
                .map(|(start, boot)| boot + start / ticks);
        }
        view.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|fds| fds.count() as i64);
        view.max_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .map(|max| max.min(i64::MAX as u64) as i64);
        view
    }
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line[6..].trim().parse().ok()
}
