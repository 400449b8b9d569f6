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
//! Bounded like the main listener (`--header-timeout`, `--max-header-bytes`) and by its own
//! small connection limit, outside `--max-connections`: a scrape still works when the proxy
//! is full. It stays up until the process exits, so `/livez` answers through the drain.

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
use crate::state::State;

/// Admin connections served at once; more are closed at accept.
const ADMIN_CONNECTIONS: usize = 64;

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

/// One request, one answer, then close.
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
        Some(Err(_)) => (400, "text/plain", "bad request\n".to_string()),
        None => (408, "text/plain", "request timeout\n".to_string()),
    };
    let head_only = matches!(read_method(&buf), Some("HEAD"));
    let response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    let stream = stream.get_mut();
    let _ = stream.write_all(response.as_bytes()).await;
    if !head_only {
        let _ = stream.write_all(body.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

fn read_method(buf: &[u8]) -> Option<&str> {
    let end = buf.iter().position(|&b| b == b' ')?;
    std::str::from_utf8(&buf[..end]).ok()
}

fn route(request: &head::Head, state: &State) -> (u16, &'static str, String) {
    if request.method != "GET" && request.method != "HEAD" {
        return (405, "text/plain", "only GET and HEAD\n".to_string());
    }
    let path = request.target.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => (200, METRICS_TYPE, metrics(state)),
        "/livez" | "/healthz" => (200, "text/plain", "ok\n".to_string()),
        "/readyz" => match unready(state) {
            None => (200, "text/plain", "ready\n".to_string()),
            Some(why) => (503, "text/plain", format!("not ready: {why}\n")),
        },
        _ => (404, "text/plain", "not found\n".to_string()),
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

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        _ => "Service Unavailable",
    }
}

const METRICS_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The counted metrics, then what is read now.
fn metrics(state: &State) -> String {
    let mut out = String::new();
    let _ =
        prometheus_client::encoding::prometheus_text::encode(&mut out, state.metrics.registry());
    let now = read_now(state);
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &now);
    out
}

type Labels2 = [(&'static str, String); 2];
type Labels1 = [(&'static str, String); 1];

fn read_now(state: &State) -> Registry {
    let mut registry = Registry::default();
    let traffic = &state.metrics.traffic;
    let websockets = Gauge::<i64>::default();
    websockets.set(traffic.websockets());
    registry.register(
        "wssbridge_websockets_active",
        "Upgraded tunnels (WebSockets) open now",
        websockets,
    );
    let bytes = Family::<[(&'static str, &'static str); 1], Counter>::default();
    let (up, down) = traffic.bytes();
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

    let config = state.config.load();
    let up = Family::<Labels2, Gauge>::default();
    let active = Family::<Labels1, Gauge>::default();
    let failures = Family::<Labels1, Counter>::default();
    // A backend's state is one per backend, whichever routes name it: its own series once.
    let mut seen = std::collections::HashSet::new();
    for pool in config.pools.iter() {
        for backend in pool.backends() {
            let name = backend.name().to_string();
            up.get_or_create(&[("route", pool.route()), ("backend", name.clone())])
                .set(i64::from(backend.is_up()));
            if seen.insert(name.clone()) {
                active
                    .get_or_create(&[("backend", name.clone())])
                    .set(backend.active() as i64);
                failures
                    .get_or_create(&[("backend", name)])
                    .inc_by(backend.connect_failures());
            }
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
    let mut named = std::collections::HashSet::new();
    for cert in config.tls.certs.infos() {
        for name in &cert.names {
            if named.insert(name.clone()) {
                expiry
                    .get_or_create(&[("name", name.clone())])
                    .set(cert.not_after);
            }
        }
    }
    registry.register(
        "wssbridge_certificate_expiry_timestamp_seconds",
        "When the certificate serving the name expires (Unix time)",
        expiry,
    );
    process(&mut registry);
    registry
}

/// The Prometheus client libraries' standard process metrics, from `/proc/self`.
fn process(registry: &mut Registry) {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as i64;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which may hold spaces, in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            let cpu = Counter::<f64, std::sync::atomic::AtomicU64>::default();
            cpu.inc_by((utime + stime) / ticks);
            registry.register(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                cpu,
            );
        }
        if let Some(rss) = field(24) {
            let g = Gauge::<i64>::default();
            g.set(rss as i64 * page);
            registry.register(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                g,
            );
        }
        if let Some(vsize) = field(23) {
            let g = Gauge::<i64>::default();
            g.set(vsize as i64);
            registry.register(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                g,
            );
        }
        if let (Some(start), Some(boot)) = (field(22), boot_time()) {
            let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
            g.set(boot + start / ticks);
            registry.register(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                g,
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        let g = Gauge::<i64>::default();
        g.set(fds.count() as i64);
        registry.register("process_open_fds", "Number of open file descriptors", g);
    }
    if let Some(max) = rustix::process::getrlimit(rustix::process::Resource::Nofile).current {
        let g = Gauge::<i64>::default();
        g.set(max.min(i64::MAX as u64) as i64);
        registry.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            g,
        );
    }
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("btime "))?;
    line[6..].trim().parse().ok()
}
