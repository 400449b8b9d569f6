//! One walk of the state, for every view the admin port has: what `/metrics` reads at scrape
//! time, and what the status page and `/status.json` show. Gathered per request; nothing
//! here runs while nobody asks.

use std::time::Duration;

use crate::balance::Health;
pub use crate::balance::discovery::{DiscoveryView, Standing};
use crate::metrics::websockets::{Direction, Ender, Histogram, RouteWebSockets};
use crate::state::State;

/// Open WebSockets whose ages the status page lists, oldest first.
pub const OLDEST: usize = 5;

/// What the admin port shows beyond the counters, gathered in one walk of the state; each
/// view (Prometheus text now) encodes it without walking the state again.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// TLS connections open now, in any stage.
    pub connections: i64,
    pub websockets: i64,
    /// TLS handshakes so far, whatever their result.
    pub handshakes: u64,
    /// Bytes moved: client to backend, backend to client.
    pub bytes: (u64, u64),
    /// Every backend of every route, in the routes' order.
    pub backends: Vec<BackendView>,
    /// Each certificate: its file, names and expiry.
    pub certs: Vec<CertView>,
    /// Each route with its policy and check; its backends are those of `backends` with its
    /// name.
    pub routes: Vec<RouteView>,
    /// Answers wssbridge gave itself, by status.
    pub responses: Vec<(&'static str, u64)>,
    /// Why `/readyz` says 503, if it does.
    pub unready: Option<String>,
    pub process: ProcessView,
    pub config: ConfigView,
    pub runtime: RuntimeView,
}

/// How connections are spread over threads (`--runtime`, `--threads`), and how many each
/// per-core thread took.
#[derive(Debug, Default)]
pub struct RuntimeView {
    pub mode: String,
    pub threads: usize,
    /// Per core: connections each thread accepted so far (empty when work-stealing).
    pub accepted_by_thread: Vec<u64>,
}

/// The serving config in force: which, since when, from where.
#[derive(Debug, Default)]
pub struct ConfigView {
    pub generation: u64,
    /// Unix seconds.
    pub loaded_at: i64,
    /// `--flags-file`, if one is read.
    pub flags_file: Option<String>,
}

#[derive(Debug)]
pub struct CertView {
    pub file: String,
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
}

#[derive(Debug)]
pub struct RouteView {
    pub route: String,
    pub policy: String,
    /// The active check, `off` without one.
    pub check: String,
    /// The DNS names it discovers backends by.
    pub discovery: Vec<DiscoveryView>,
    /// Under `--balance cookie`: connections placed by their cookie, and by least-conn.
    pub placements: Option<(u64, u64)>,
    pub websockets: WebSocketView,
}

/// A route's WebSockets: how they ended and what they carried, so far.
#[derive(Debug, Default)]
pub struct WebSocketView {
    /// Ended, by who ended them first and the close code that side sent (those counted).
    pub closes: Vec<(Ender, &'static str, u64)>,
    /// Upgraded, then not WebSocket framing.
    pub unframed: u64,
    /// Message sizes client→backend, then backend→client.
    pub sizes: [Histogram; 2],
    pub durations: Histogram,
    /// The ages of its oldest open tunnels, oldest first.
    pub oldest: Vec<Duration>,
}

impl WebSocketView {
    fn read(ws: &RouteWebSockets) -> WebSocketView {
        let now = tokio::time::Instant::now();
        WebSocketView {
            closes: ws.closes(),
            unframed: ws.unframed(),
            sizes: Direction::ALL.map(|d| ws.sizes(d)),
            durations: ws.durations(),
            oldest: ws
                .oldest(OLDEST)
                .into_iter()
                .map(|at| now.saturating_duration_since(at))
                .collect(),
        }
    }

    /// Messages that went `way`.
    pub fn messages(&self, way: Direction) -> u64 {
        self.sizes[way as usize].count()
    }
}

#[derive(Debug)]
pub struct BackendView {
    pub route: String,
    pub backend: String,
    /// The DNS name it was discovered by, if it was.
    pub from: Option<String>,
    pub health: Health,
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
    pub fn gather(state: &State, unready: Option<String>) -> Snapshot {
        let traffic = &state.metrics.traffic;
        let config = state.serving.load();
        let backends = config
            .pools
            .iter()
            .flat_map(|pool| {
                pool.backends().into_iter().map(move |b| BackendView {
                    route: pool.route(),
                    backend: b.name().to_string(),
                    from: b.from().map(str::to_string),
                    health: b.health(),
                    active: b.active(),
                    connect_failures: b.connect_failures(),
                })
            })
            .collect();
        let certs = config
            .tls
            .certs
            .infos()
            .iter()
            .map(|cert| CertView {
                file: cert.file.clone(),
                names: cert.names.clone(),
                not_after: cert.not_after,
            })
            .collect();
        let routes = config
            .pools
            .iter()
            .map(|pool| RouteView {
                route: pool.route(),
                policy: pool.policy.to_string(),
                check: pool
                    .check
                    .as_ref()
                    .map_or("off".to_string(), ToString::to_string),
                discovery: pool.discoveries().iter().map(|d| d.view()).collect(),
                placements: pool.placements(),
                websockets: WebSocketView::read(&pool.websockets),
            })
            .collect();
        let loaded_at = config
            .loaded_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let config = ConfigView {
            generation: config.generation,
            loaded_at,
            flags_file: state.reread.as_ref().map(|r| r.file()),
        };
        Snapshot {
            connections: state.metrics.connections_now(),
            websockets: traffic.websockets(),
            handshakes: state.metrics.handshakes_total(),
            bytes: traffic.bytes(),
            backends,
            certs,
            routes,
            responses: state.metrics.responses(),
            unready,
            process: ProcessView::read(),
            config,
            runtime: RuntimeView {
                mode: state.process.runtime.to_string(),
                threads: state.process.threads,
                accepted_by_thread: match state.process.runtime.per_core() {
                    true => state.metrics.accepted_by_thread(state.process.threads),
                    false => Vec::new(),
                },
            },
        }
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
