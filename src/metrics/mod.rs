//! The numbers an operator watches, with names a dashboard can rely on (counters end in
//! `_total`, no label ever holds a client address or a request path).
//!
//! Counted where things happen, at the cost of a relaxed atomic add or two and never a lock
//! (DESIGN: per-connection work stays off shared locks): connections and their outcomes,
//! handshakes and their duration, the answers wssbridge gave itself, reloads. Bytes are counted as
//! they move, in sharded counters (one cache line per slot, a slot per thread) so tunnels on
//! different cores do not contend; a WebSocket open for a day shows up during the day.
//! What is state rather than an event (backends, certificates, the process) is read at
//! scrape time by `admin`, from the configuration and `/proc`.
//!
//! A leaf: imports nothing of the crate, so every stage may count.

pub mod websockets;

use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

type Label = [(&'static str, &'static str); 1];

/// Every metric counted as things happen.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub traffic: Traffic,
    connections_active: Gauge,
    connections: Known<8>,
    handshakes: Known<6>,
    handshake_seconds: Timings,
    responses: Known<10>,
    reloads: Known<2>,
    /// Connections each per-core thread accepted, by its number (a cache line each: the
    /// threads count at once).
    by_thread: Box<[Padded]>,
}

/// A counter alone on its cache line.
#[repr(align(64))]
#[derive(Debug, Default)]
struct Padded(AtomicU64);

/// Per-core threads whose accepts are counted apart (`--threads` allows no more); a higher
/// number shares the last slot.
pub const THREADS_COUNTED: usize = 1024;

/// What `wssbridge_responses_total{status}` can say: every status wssbridge answers itself
/// (`respond::Status`) and the redirect's 308.
const STATUSES: [(u16, &str); 10] = [
    (308, "308"),
    (400, "400"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (421, "421"),
    (431, "431"),
    (502, "502"),
    (503, "503"),
    (505, "505"),
];

/// How a connection ended, as `wssbridge_connections_total{outcome}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeLabel {
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

/// The `result` labels of `wssbridge_tls_handshakes_total`: `ok` and every
/// `HandshakeError::label` (a test in `tls` holds the two together), so each series exists
/// from the start.
pub const HANDSHAKE_RESULTS: [&str; 6] =
    ["ok", "failed", "timeout", "unknown_name", "acme", "shed"];

impl OutcomeLabel {
    const ALL: [&'static str; 8] = [
        "tunnel",
        "http",
        "http_error",
        "tls_error",
        "refused",
        "no_request",
        "aborted",
        "forced",
    ];

    fn label(self) -> &'static str {
        match self {
            OutcomeLabel::Tunnel => "tunnel",
            OutcomeLabel::Http => "http",
            OutcomeLabel::HttpError => "http_error",
            OutcomeLabel::TlsError => "tls_error",
            OutcomeLabel::Refused => "refused",
            OutcomeLabel::NoRequest => "no_request",
            OutcomeLabel::Aborted => "aborted",
            OutcomeLabel::Forced => "forced",
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
        let connections = Known::new("outcome", OutcomeLabel::ALL);
        registry.register(
            "wssbridge_connections",
            "TLS connections ended, by outcome",
            connections.family.clone(),
        );
        let handshakes = Known::new("result", HANDSHAKE_RESULTS);
        registry.register(
            "wssbridge_tls_handshakes",
            "TLS handshakes, by result (ok, failed, timeout, unknown_name, acme, shed)",
            handshakes.family.clone(),
        );
        let handshake_seconds = Timings::new(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "wssbridge_tls_handshake_duration_seconds",
            "Time from accept to the end of a successful TLS handshake",
            handshake_seconds.clone(),
        );
        let responses = Known::new("status", STATUSES.map(|(_, label)| label));
        registry.register(
            "wssbridge_responses",
            "Responses wssbridge answered itself (errors, redirects), by status",
            responses.family.clone(),
        );
        let reloads = Known::new("result", ["success", "failure"]);
        registry.register(
            "wssbridge_config_reloads",
            "Configuration reloads (SIGHUP, file polling), by result",
            reloads.family.clone(),
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
            by_thread: (0..THREADS_COUNTED).map(|_| Padded::default()).collect(),
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

    /// A per-core thread (`thread`: its number; `None` on any other) accepted a connection.
    pub fn accepted_by(&self, thread: Option<usize>) {
        if let Some(n) = thread {
            self.by_thread[n.min(THREADS_COUNTED - 1)]
                .0
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Connections each of the first `threads` per-core threads accepted so far.
    pub fn accepted_by_thread(&self, threads: usize) -> Vec<u64> {
        self.by_thread
            .iter()
            .take(threads)
            .map(|n| n.0.load(Ordering::Relaxed))
            .collect()
    }

    pub fn ended(&self, outcome: OutcomeLabel) {
        self.connections_active.dec();
        self.counted(outcome);
    }

    /// A connection that never became one (refused at accept).
    pub fn counted(&self, outcome: OutcomeLabel) {
        self.connections.inc(outcome.label());
    }

    /// A handshake's result (`ok`, `failed`, `timeout`, `unknown_name`), and for a
    /// successful one how long it took.
    pub fn handshake(&self, result: &'static str, seconds: Option<f64>) {
        self.handshakes.inc(result);
        if let Some(s) = seconds {
            self.handshake_seconds.observe(s);
        }
    }

    /// An answer wssbridge gave itself; `status` is one of [`STATUSES`] (another is
    /// counted under `other`).
    pub fn responded(&self, status: u16) {
        let known = STATUSES.iter().find(|(code, _)| *code == status);
        self.responses
            .inc(known.map_or("other", |(_, label)| label));
    }

    pub fn reloaded(&self, ok: bool) {
        self.reloads.inc(if ok { "success" } else { "failure" });
    }

    /// TLS connections open now, in any stage.
    pub fn connections_now(&self) -> i64 {
        self.connections_active.get()
    }

    /// Handshakes so far, whatever their result.
    pub fn handshakes_total(&self) -> u64 {
        self.handshakes.counts().iter().map(|(_, n)| n).sum()
    }

    /// Answers wssbridge gave itself so far, by status (each known status, then `other`).
    pub fn responses(&self) -> Vec<(&'static str, u64)> {
        self.responses.counts()
    }
}

/// A counter family whose label values are known ahead. Each value's counter is taken from
/// the family on its first use, so a series appears when first counted (as with
/// `Family::get_or_create`); from then on counting it is one relaxed atomic add, where
/// `get_or_create` takes the family's lock and hashes the label every time.
#[derive(Debug)]
struct Known<const N: usize> {
    family: Family<Label, Counter>,
    label: &'static str,
    values: [&'static str; N],
    counters: [OnceLock<Counter>; N],
}

impl<const N: usize> Known<N> {
    /// Every known series exists from the start, at 0: an alert on the rate of failed
    /// reloads needs the series before the first failure (Prometheus's practice of
    /// initialising known label values).
    fn new(label: &'static str, values: [&'static str; N]) -> Known<N> {
        let family: Family<Label, Counter> = Family::default();
        let counters = std::array::from_fn(|i| {
            OnceLock::from(family.get_or_create_owned(&[(label, values[i])]))
        });
        Known {
            family,
            label,
            values,
            counters,
        }
    }

    /// Each known value's count, then `other` (any value not known ahead) when counted.
    fn counts(&self) -> Vec<(&'static str, u64)> {
        let mut counts: Vec<(&'static str, u64)> = self
            .values
            .iter()
            .zip(&self.counters)
            .map(|(v, c)| (*v, c.get().map_or(0, Counter::get)))
            .collect();
        if let Some(other) = self.family.get(&[(self.label, "other")]) {
            counts.push(("other", other.get()));
        }
        counts
    }

    fn inc(&self, value: &'static str) {
        match self.values.iter().position(|v| *v == value) {
            Some(i) => self.counters[i]
                .get_or_init(|| self.family.get_or_create_owned(&[(self.label, value)]))
                .inc(),
            None => self.family.get_or_create(&[(self.label, value)]).inc(),
        };
    }
}

/// A histogram of fixed buckets kept in atomics: an observation is two atomic adds and a
/// compare-and-swap on the sum (prometheus-client's `Histogram` takes a mutex). Clones share
/// the counts: one is registered, one observed.
#[derive(Debug, Clone)]
pub(crate) struct Timings {
    /// Upper bounds, ascending; the last bucket (`+Inf`) is implicit.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative), one more than `bounds`.
    counts: Arc<[AtomicU64]>,
    /// The sum of observations, as `f64` bits.
    sum: Arc<AtomicU64>,
}

impl Timings {
    pub(crate) fn new(bounds: &'static [f64]) -> Timings {
        Timings {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: Arc::new(AtomicU64::new(0f64.to_bits())),
        }
    }

    /// Per-bucket counts (not cumulative, `+Inf` last) and the sum.
    pub(crate) fn read(&self) -> (Vec<u64>, f64) {
        let counts = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        (counts, f64::from_bits(self.sum.load(Ordering::Relaxed)))
    }

    pub(crate) fn observe(&self, v: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }
}

impl TypedMetric for Timings {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Timings {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let bounds = self.bounds.iter().copied().chain([f64::INFINITY]);
        let counts = self.counts.iter().map(|c| c.load(Ordering::Relaxed));
        let buckets: Vec<(f64, u64)> = bounds.zip(counts).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed));
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
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

/// Slots of their own, at least as many as a machine usually has worker threads; threads
/// beyond share [`SHARED`] more.
const SLOTS: usize = 16;
/// Shared slots, added to atomically by the threads beyond [`SLOTS`], in turn.
const SHARED: usize = 8;

/// A counter in slots of their own cache line: threads add without contending.
#[derive(Debug, Default)]
struct Sharded {
    slots: [Slot; SLOTS + SHARED],
}

/// 128 bytes: two cache lines, as adjacent-line prefetching pairs them on x86.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot(AtomicU64);

impl Sharded {
    fn add(&self, n: u64) {
        let (slot, own) = slot();
        bump(&self.slots[slot].0, n, own);
    }

    fn sum(&self) -> u64 {
        self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// This thread's slot, and whether it is its own: the first [`SLOTS`] threads to count get
/// one each, for good (a slot is never handed out twice); later threads share the [`SHARED`]
/// ones after them, in turn (so a many-core machine's extra workers do not all contend on
/// one line).
#[inline]
fn slot() -> (usize, bool) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    let slot = SLOT.with(|s| {
        if s.get() == usize::MAX {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            s.set(if n < SLOTS { n } else { SLOTS + n % SHARED });
        }
        s.get()
    });
    (slot, slot < SLOTS)
}

/// Adds `n` to a slot's counter: in a slot of its own, the thread is the only writer, so a
/// load and a store (no locked instruction) lose nothing; in the shared slot, an atomic add.
#[inline]
fn bump(counter: &AtomicU64, n: u64, own: bool) {
    match own {
        true => counter.store(
            counter.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        ),
        false => {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }
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

    /// The lock-free counters and histogram encode as prometheus-client's own did: a series
    /// appears on its first count, buckets are cumulative, and `+Inf` holds every observation.
    #[test]
    fn counters_and_the_histogram_encode_as_families() {
        let m = Metrics::default();
        m.counted(OutcomeLabel::Refused);
        m.counted(OutcomeLabel::Refused);
        m.handshake("ok", Some(0.003));
        m.handshake("ok", Some(0.2));
        m.handshake("ok", Some(20.0));
        m.handshake("timeout", None);
        m.responded(503);
        m.responded(299);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, m.registry()).unwrap();
        for line in [
            "wssbridge_connections_total{outcome=\"refused\"} 2\n",
            "wssbridge_tls_handshakes_total{result=\"ok\"} 3\n",
            "wssbridge_tls_handshakes_total{result=\"timeout\"} 1\n",
            "wssbridge_tls_handshake_duration_seconds_bucket{le=\"0.0025\"} 0\n",
            "wssbridge_tls_handshake_duration_seconds_bucket{le=\"0.005\"} 1\n",
            "wssbridge_tls_handshake_duration_seconds_bucket{le=\"0.25\"} 2\n",
            "wssbridge_tls_handshake_duration_seconds_bucket{le=\"10\"} 2\n",
            "wssbridge_tls_handshake_duration_seconds_bucket{le=\"+Inf\"} 3\n",
            "wssbridge_tls_handshake_duration_seconds_sum 20.203\n",
            "wssbridge_tls_handshake_duration_seconds_count 3\n",
            "wssbridge_responses_total{status=\"503\"} 1\n",
            "wssbridge_responses_total{status=\"other\"} 1\n",
        ] {
            assert!(out.contains(line), "no {line:?} in\n{out}");
        }
        // Known series exist from the start, at 0: an alert on failures has a series to read.
        for zero in [
            "wssbridge_connections_total{outcome=\"tunnel\"} 0\n",
            "wssbridge_config_reloads_total{result=\"success\"} 0\n",
            "wssbridge_config_reloads_total{result=\"failure\"} 0\n",
            "wssbridge_tls_handshakes_total{result=\"unknown_name\"} 0\n",
            "wssbridge_tls_handshakes_total{result=\"acme\"} 0\n",
        ] {
            assert!(out.contains(zero), "no {zero:?} in\n{out}");
        }
    }
}
