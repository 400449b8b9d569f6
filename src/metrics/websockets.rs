//! How the WebSockets of one route ended and what they carried: the counts behind
//! `wssbridge_websocket_closes_total{route,side,code}`, `wssbridge_websocket_messages_total`
//! `{route,direction}`, the message-size and duration histograms, and the open tunnels' ages.
//!
//! One [`RouteWebSockets`] per route, shared by its connections and kept across reloads by
//! the route's name (as `balance` keeps its other per-route counts). A message is two adds to
//! this thread's own slot, which no other thread writes (a load and a store, no locked
//! instruction), summed when read: the frame reader sees every message, so this is the one
//! count on the per-message path. A tunnel's end is a few relaxed atomic adds and, with its
//! `101`, the one lock: the route's set of open tunnels by age (held for an insert or a
//! remove, never per message).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{SHARED, SLOTS, Timings, bump, slot};

/// Who ended a WebSocket first, as `side` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ender {
    Client,
    Backend,
    /// wssbridge itself: a timeout, the drain, the end of the shutdown grace.
    Proxy,
}

impl Ender {
    pub const ALL: [Ender; 3] = [Ender::Client, Ender::Backend, Ender::Proxy];

    pub fn label(self) -> &'static str {
        match self {
            Ender::Client => "client",
            Ender::Backend => "backend",
            Ender::Proxy => "proxy",
        }
    }
}

/// The `code` label's values: the registered close codes (RFC 6455 §7.4.1 and IANA's
/// registry, 1000–1015), then `other` for any other code and `none` for no close frame.
pub const CODES: [&str; 18] = [
    "1000", "1001", "1002", "1003", "1004", "1005", "1006", "1007", "1008", "1009", "1010", "1011",
    "1012", "1013", "1014", "1015", "other", "none",
];

/// The `code` label of a close frame's code, or of none.
pub fn code_label(code: Option<u16>) -> &'static str {
    CODES[code_index(code)]
}

fn code_index(code: Option<u16>) -> usize {
    match code {
        Some(c @ 1000..=1015) => usize::from(c - 1000),
        Some(_) => 16,
        None => 17,
    }
}

/// Which way a message went, as `direction` labels it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToBackend,
    BackendToClient,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::ClientToBackend, Direction::BackendToClient];

    pub fn label(self) -> &'static str {
        match self {
            Direction::ClientToBackend => "client_to_backend",
            Direction::BackendToClient => "backend_to_client",
        }
    }
}

/// Message sizes' bucket bounds in bytes: a socket.io heartbeat (1 byte) and a chat line to
/// a 16 MiB upload, by fours.
pub const SIZE_BOUNDS: [u64; 10] = [
    64,
    256,
    1024,
    4096,
    16 * 1024,
    64 * 1024,
    256 * 1024,
    1024 * 1024,
    4 * 1024 * 1024,
    16 * 1024 * 1024,
];

/// Tunnel durations' bucket bounds in seconds: a page closed at once, a reconnect loop, a
/// chat session, a shift, a day, a week (what a socket.io operator reads on a dashboard).
pub const DURATION_BOUNDS: [f64; 13] = [
    1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14_400.0, 43_200.0, 86_400.0, 259_200.0,
    604_800.0,
];

/// The counts of one route's WebSockets.
#[derive(Debug)]
pub struct RouteWebSockets {
    /// Tunnels ended, by who ended them first and the close code that side sent.
    closes: [[AtomicU64; CODES.len()]; 3],
    /// Upgraded to WebSocket, then carried bytes that are not WebSocket framing.
    unframed: AtomicU64,
    durations: Timings,
    /// Message sizes, client→backend and backend→client.
    sizes: [Sizes; 2],
    /// The tunnels open now, by when they opened: the oldest are the status page's.
    open: Mutex<BTreeSet<(Instant, u64)>>,
    next: AtomicU64,
}

impl Default for RouteWebSockets {
    fn default() -> Self {
        RouteWebSockets {
            closes: Default::default(),
            unframed: AtomicU64::new(0),
            durations: Timings::new(&DURATION_BOUNDS),
            sizes: Default::default(),
            open: Mutex::default(),
            next: AtomicU64::new(0),
        }
    }
}

/// One message-size histogram in per-thread slots: a slot's 11 buckets and sum fit in its
/// 128 bytes.
#[derive(Debug, Default)]
struct Sizes {
    slots: [SizeSlot; SLOTS + SHARED],
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct SizeSlot {
    counts: [AtomicU64; SIZE_BOUNDS.len() + 1],
    sum: AtomicU64,
}

/// A histogram read at scrape time: per-bucket counts (not cumulative, the last `+Inf`),
/// and the sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// An open tunnel's place among the open ones; it leaves when dropped.
#[derive(Debug)]
pub struct Open {
    route: Arc<RouteWebSockets>,
    key: (Instant, u64),
}

impl Open {
    /// When the tunnel opened.
    pub fn since(&self) -> Instant {
        self.key.0
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.route.lock_open().remove(&self.key);
    }
}

impl RouteWebSockets {
    /// A message of `size` payload bytes went `way`: two adds to this thread's slot.
    #[inline]
    pub fn message(&self, way: Direction, size: u64) {
        let (slot, own) = slot();
        let slot = &self.sizes[way as usize].slots[slot];
        bump(&slot.counts[size_bucket(size)], 1, own);
        bump(&slot.sum, size, own);
    }

    /// A tunnel ended after `lasted`: `ender` ended it first, with close `code` if it sent a
    /// close frame; `framed` is false when its bytes were not WebSocket framing.
    pub fn ended(&self, ender: Ender, code: Option<u16>, lasted: Duration, framed: bool) {
        self.closes[ender as usize][code_index(code)].fetch_add(1, Ordering::Relaxed);
        self.durations.observe(lasted.as_secs_f64());
        if !framed {
            self.unframed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A tunnel opened `at`: it counts among the open ones until the guard is dropped.
    pub fn opened(self: &Arc<Self>, at: Instant) -> Open {
        let key = (at, self.next.fetch_add(1, Ordering::Relaxed));
        self.lock_open().insert(key);
        Open {
            route: self.clone(),
            key,
        }
    }

    /// When the `n` oldest open tunnels opened, oldest first.
    pub fn oldest(&self, n: usize) -> Vec<Instant> {
        self.lock_open().iter().take(n).map(|(at, _)| *at).collect()
    }

    /// Tunnels ended, by (ender, code label), those counted only.
    pub fn closes(&self) -> Vec<(Ender, &'static str, u64)> {
        let mut out = Vec::new();
        for ender in Ender::ALL {
            for (code, count) in CODES.iter().zip(&self.closes[ender as usize]) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    out.push((ender, *code, count));
                }
            }
        }
        out
    }

    /// Tunnels whose bytes were not WebSocket framing.
    pub fn unframed(&self) -> u64 {
        self.unframed.load(Ordering::Relaxed)
    }

    /// Message sizes that went `way`, summed over the threads' slots.
    pub fn sizes(&self, way: Direction) -> Histogram {
        let mut counts = vec![0; SIZE_BOUNDS.len() + 1];
        let mut sum = 0u64;
        for slot in &self.sizes[way as usize].slots {
            for (total, c) in counts.iter_mut().zip(&slot.counts) {
                *total += c.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(slot.sum.load(Ordering::Relaxed));
        }
        Histogram {
            bounds: SIZE_BOUNDS.iter().map(|&b| b as f64).collect(),
            counts,
            sum: sum as f64,
        }
    }

    /// Messages that went `way` so far.
    pub fn messages(&self, way: Direction) -> u64 {
        self.sizes[way as usize]
            .slots
            .iter()
            .flat_map(|s| &s.counts)
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// How long the ended tunnels lasted.
    pub fn durations(&self) -> Histogram {
        let (counts, sum) = self.durations.read();
        Histogram {
            bounds: DURATION_BOUNDS.to_vec(),
            counts,
            sum,
        }
    }

    fn lock_open(&self) -> std::sync::MutexGuard<'_, BTreeSet<(Instant, u64)>> {
        // Plain keys: a panic elsewhere while holding it leaves them usable.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The bucket of a message of `size` bytes: the first bound it does not exceed. The bounds
/// are 64 × 4ⁱ, so it is a count of bits, not a search.
fn size_bucket(size: u64) -> usize {
    let bits = (u64::BITS - size.saturating_sub(1).leading_zeros()) as usize;
    (bits.saturating_sub(6).div_ceil(2)).min(SIZE_BOUNDS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_falls_in_the_first_bucket_it_does_not_exceed() {
        for size in (0..70_000u64).chain([1 << 24, (1 << 24) + 1, u64::MAX]) {
            let want = SIZE_BOUNDS
                .iter()
                .position(|&b| size <= b)
                .unwrap_or(SIZE_BOUNDS.len());
            assert_eq!(size_bucket(size), want, "{size}");
        }
    }

    #[test]
    fn every_close_code_has_a_bounded_label() {
        assert_eq!(code_label(Some(1000)), "1000");
        assert_eq!(code_label(Some(1015)), "1015");
        assert_eq!(code_label(Some(1016)), "other");
        assert_eq!(code_label(Some(4001)), "other");
        assert_eq!(code_label(Some(0)), "other");
        assert_eq!(code_label(None), "none");
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let route = std::sync::Arc::new(RouteWebSockets::default());
        let threads: Vec<_> = (0..20)
            .map(|_| {
                let route = route.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        route.message(Direction::ClientToBackend, i % 300);
                    }
                    route.ended(Ender::Client, Some(1000), Duration::from_secs(2), true);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(route.messages(Direction::ClientToBackend), 20_000);
        assert_eq!(route.messages(Direction::BackendToClient), 0);
        let sizes = route.sizes(Direction::ClientToBackend);
        assert_eq!(sizes.count(), 20_000);
        let one: u64 = (0..1000u64).map(|i| i % 300).sum();
        assert_eq!(sizes.sum, (20 * one) as f64);
        assert_eq!(route.closes(), vec![(Ender::Client, "1000", 20)]);
        assert_eq!(route.durations().count(), 20);
    }

    #[tokio::test]
    async fn the_oldest_open_tunnels_come_first_and_leave_when_closed() {
        let route = Arc::new(RouteWebSockets::default());
        let t0 = Instant::now();
        let first = route.opened(t0);
        let second = route.opened(t0 + Duration::from_secs(1));
        let third = route.opened(t0 + Duration::from_secs(2));
        assert_eq!(route.oldest(2), vec![t0, t0 + Duration::from_secs(1)]);
        drop(first);
        assert_eq!(route.oldest(5).len(), 2);
        drop((second, third));
        assert!(route.oldest(5).is_empty());
    }
}
