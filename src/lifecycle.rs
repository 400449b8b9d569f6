//! The process's life: one token tree every task hears, the trackers every task is spawned
//! on, and the lifecycle events.
//!
//! Shutdown is three tokens, each the child of the next, so a later stage implies the
//! earlier ones:
//!
//! ```text
//! drain ──► stop ──► force
//! ```
//!
//! - **drain**: shutdown began. `/readyz` answers 503; each connection ends at its next safe
//!   point (a keep-alive connection at its next request boundary);
//! - **stop**: `--shutdown-delay` later. The listeners close and background work ends;
//! - **force**: `--shutdown-grace` later, or once every connection is done. What is left
//!   closes now; the admin listener, which answered through the drain, goes last.
//!
//! Beside them, **farewell** asks WebSocket tunnels to end with a close frame: when the grace
//! ends (then `force` waits a moment for them), or with drain under
//! `--websocket-close-on-drain`.
//!
//! `server` fires them in that order, in one place. Every background task and every
//! connection is spawned here, so nothing outlives the process's own shutdown.
//!
//! Events (ready, reloading, reloaded, draining, stopped) go out on one broadcast channel:
//! whoever needs to tell the outside world (systemd's readiness, a status page) listens to
//! it, and nothing else knows about them. A leaf: imports nothing of the crate.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Events kept for a listener that is slow to read; an older one is dropped, not waited for.
const EVENTS: usize = 64;

/// Something that happened to the process as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The listeners accept and background work runs.
    Ready,
    /// A reload began (`why`: "signal", "poll", "call").
    Reloading { why: &'static str },
    /// A reload ended: `Ok`, or the error that kept the previous configuration.
    Reloaded { result: Result<(), String> },
    /// Shutdown began: not ready; connections end at their next safe point.
    Draining,
    /// Every connection is done and every task ended.
    Stopped,
}

pub struct Lifecycle {
    /// Set just before `drain` fires: connections read it at every poll, an atomic load
    /// where the token would take a lock.
    draining: AtomicBool,
    /// Set when a new process took the listeners over (binary upgrade): requests on
    /// connections this one accepted are still served after its listeners close.
    handing_over: AtomicBool,
    drain: CancellationToken,
    /// Set just before `farewell` fires, read the same way as `draining`.
    farewells: AtomicBool,
    farewell: CancellationToken,
    stop: CancellationToken,
    force: CancellationToken,
    /// Every connection's task.
    connections: TaskTracker,
    /// Every background task (polls, checks, listeners other than the TLS ones' connections).
    background: TaskTracker,
    events: broadcast::Sender<Event>,
}

impl Default for Lifecycle {
    fn default() -> Self {
        let force = CancellationToken::new();
        let stop = force.child_token();
        let drain = stop.child_token();
        Lifecycle {
            draining: AtomicBool::new(false),
            handing_over: AtomicBool::new(false),
            drain,
            farewells: AtomicBool::new(false),
            farewell: CancellationToken::new(),
            stop,
            force,
            connections: TaskTracker::new(),
            background: TaskTracker::new(),
            events: broadcast::channel(EVENTS).0,
        }
    }
}

impl Lifecycle {
    /// Fired when shutdown begins.
    pub fn drain(&self) -> &CancellationToken {
        &self.drain
    }

    /// Set when shutdown begins, before [`Lifecycle::drain`] fires.
    pub fn draining(&self) -> &AtomicBool {
        &self.draining
    }

    /// A new process took the listeners over: this one drains without turning requests
    /// away.
    pub fn hand_over(&self) {
        self.handing_over.store(true, Ordering::Release);
    }

    /// Whether a new process took the listeners over.
    pub fn handing_over(&self) -> bool {
        self.handing_over.load(Ordering::Acquire)
    }

    /// Shutdown begins: the flag, then the token (whose waiters then see the flag set).
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.drain.cancel();
    }

    /// Fired when WebSocket tunnels are asked to end with a close frame.
    pub fn farewell(&self) -> &CancellationToken {
        &self.farewell
    }

    /// Set before [`Lifecycle::farewell`] fires.
    pub fn farewells(&self) -> &AtomicBool {
        &self.farewells
    }

    /// WebSocket tunnels end now, each with a close frame (at most once: later calls do
    /// nothing).
    pub fn say_farewell(&self) {
        self.farewells.store(true, Ordering::Release);
        self.farewell.cancel();
    }

    /// Fired when the listeners close and background work ends.
    pub fn stop(&self) -> &CancellationToken {
        &self.stop
    }

    /// Fired when whatever is left must close now.
    pub fn force(&self) -> &CancellationToken {
        &self.force
    }

    /// Runs a connection's task; shutdown waits for it (within the grace).
    pub fn spawn_connection(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.connections.spawn(task);
    }

    /// Connections being served now.
    pub fn connections(&self) -> usize {
        self.connections.len()
    }

    /// Runs background work that ends when `until` fires (a token of this tree or a child
    /// of one); shutdown waits for it after the connections.
    pub fn spawn_background(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.background.spawn(task);
    }

    /// Tells every listener `event`; nobody listening is fine.
    pub fn emit(&self, event: Event) {
        tracing::debug!(?event, "lifecycle");
        let _ = self.events.send(event);
    }

    /// Events from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// No more connections will be spawned; waits until those there are have ended.
    pub async fn connections_done(&self) {
        self.connections.close();
        self.connections.wait().await;
    }

    /// Waits until every background task has ended (after `force`, at the latest).
    pub async fn background_done(&self) {
        self.background.close();
        self.background.wait().await;
    }
}
