//! The numbers an operator watches, with names a dashboard can rely on (counters end in
//! `_total`, no label ever holds a client address or a request path).
//!
//! Counted where things happen, at the cost of one relaxed atomic add: connections and their
//! outcomes, handshakes, the answers wssbridge gave itself, reloads. Bytes are counted as
//! they move, in sharded counters (one cache line per slot, a slot per thread) so tunnels on
//! different cores do not contend; a WebSocket open for a day shows up during the day.
//! What is state rather than an event (backends, certificates, the process) is read at
//! scrape time by `admin`, from the configuration and `/proc`.
//!
//! A leaf: imports nothing of the crate, so every stage may count.

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Label = [(&'static str, &'static str); 1];

/// Every metric counted as things happen.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub traffic: Traffic,
    connections_active: Gauge,
    connections: Family<Label, Counter>,
    handshakes: Family<Label, Counter>,
    handshake_seconds: Histogram,
    responses: Family<[(&'static str, String); 1], Counter>,
    reloads: Family<Label, Counter>,
}

/// How a connection ended, as `wssbridge_connections_total{outcome}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Upgraded (a WebSocket), then closed.
    Tunnel,
    /// HTTP requests and responses, then closed.
    Http,
    /// Answered with an error status by wssbridge.
    HttpError,
    /// The TLS handshake failed or timed out.
    TlsError,
    /// Refused before TLS: over a limit, or a PROXY header missing or unexpected.
    Refused,
    /// TLS up, then closed without a request.
    NoRequest,
    /// A read or write failed mid-way.
    Aborted,
    /// Closed when the shutdown grace ran out.
    Forced,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Tunnel => "tunnel",
            Outcome::Http => "http",
            Outcome::HttpError => "http_error",
            Outcome::TlsError => "tls_error",
            Outcome::Refused => "refused",
            Outcome::NoRequest => "no_request",
            Outcome::Aborted => "aborted",
            Outcome::Forced => "forced",
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let connections_active = Gauge::default();
        registry.register(
            "wssbridge_connections_active",
            "TLS connections open now, in any stage",
            connections_active.clone(),
        );
        let connections = Family::<Label, Counter>::default();
        registry.register(
            "wssbridge_connections",
            "TLS connections ended, by outcome",
            connections.clone(),
        );
        let handshakes = Family::<Label, Counter>::default();
        registry.register(
            "wssbridge_tls_handshakes",
            "TLS handshakes, by result (ok, failed, timeout, unknown_name)",
            handshakes.clone(),
        );
        let handshake_seconds = Histogram::new([
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "wssbridge_tls_handshake_duration_seconds",
            "Time from accept to the end of a successful TLS handshake",
            handshake_seconds.clone(),
        );
        let responses = Family::<[(&'static str, String); 1], Counter>::default();
        registry.register(
            "wssbridge_responses",
            "Responses wssbridge answered itself (errors, redirects), by status",
            responses.clone(),
        );
        let reloads = Family::<Label, Counter>::default();
        registry.register(
            "wssbridge_config_reloads",
            "Configuration reloads (SIGHUP, file polling), by result",
            reloads.clone(),
        );
        let build = Family::<Label, Gauge>::default();
        build
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        registry.register("wssbridge_build_info", "The running version", build);
        Metrics {
            registry,
            traffic: Traffic::default(),
            connections_active,
            connections,
            handshakes,
            handshake_seconds,
            responses,
            reloads,
        }
    }
}

impl Metrics {
    /// The counted metrics, for `admin` to encode beside what it reads at scrape time.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// A connection was accepted; its end is [`Metrics::ended`].
    pub fn accepted(&self) {
        self.connections_active.inc();
    }

    pub fn ended(&self, outcome: Outcome) {
        self.connections_active.dec();
        self.counted(outcome);
    }

    /// A connection that never became one (refused at accept).
    pub fn counted(&self, outcome: Outcome) {
        self.connections
            .get_or_create(&[("outcome", outcome.label())])
            .inc();
    }

    /// A handshake's result (`ok`, `failed`, `timeout`, `unknown_name`), and for a
    /// successful one how long it took.
    pub fn handshake(&self, result: &'static str, seconds: Option<f64>) {
        self.handshakes.get_or_create(&[("result", result)]).inc();
        if let Some(s) = seconds {
            self.handshake_seconds.observe(s);
        }
    }

    pub fn responded(&self, status: u16) {
        self.responses
            .get_or_create(&[("status", status.to_string())])
            .inc();
    }

    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.reloads.get_or_create(&[("result", result)]).inc();
    }
}

/// What tunnels move, counted as it moves.
#[derive(Debug, Default)]
pub struct Traffic {
    client_to_backend: Sharded,
    backend_to_client: Sharded,
    websockets: AtomicI64,
}

impl Traffic {
    pub fn up(&self, bytes: usize) {
        self.client_to_backend.add(bytes as u64);
    }

    pub fn down(&self, bytes: usize) {
        self.backend_to_client.add(bytes as u64);
    }

    /// A WebSocket (any upgrade) opened; [`Traffic::closed`] when it ends.
    pub fn opened(&self) {
        self.websockets.fetch_add(1, Ordering::Relaxed);
    }

    pub fn closed(&self) {
        self.websockets.fetch_sub(1, Ordering::Relaxed);
    }

    /// (client→backend, backend→client) bytes so far.
    pub fn bytes(&self) -> (u64, u64) {
        (self.client_to_backend.sum(), self.backend_to_client.sum())
    }

    pub fn websockets(&self) -> i64 {
        self.websockets.load(Ordering::Relaxed)
    }
}

/// Slots, at least as many as a machine usually has cores; a thread keeps to one.
const SLOTS: usize = 16;

/// A counter in slots of their own cache line: threads add without contending.
#[derive(Debug, Default)]
struct Sharded {
    slots: [Slot; SLOTS],
}

/// 128 bytes: two cache lines, as adjacent-line prefetching pairs them on x86.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot(AtomicU64);

impl Sharded {
    fn add(&self, n: u64) {
        self.slots[slot()].0.fetch_add(n, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// This thread's slot: handed out in turn as threads first count.
fn slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SLOT.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS);
        }
        s.get()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sharded_counts_add_up_across_threads() {
        let traffic = std::sync::Arc::new(Traffic::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let t = traffic.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        t.up(3);
                        t.down(1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(traffic.bytes(), (24_000, 8_000));
    }
}
