//! The process's life: one token tree every task hears, one phase value that says how far
//! shutdown has gone, the trackers every task is spawned on, and the lifecycle events.
//!
//! Shutdown is three tokens, each the child of the next, so a later stage implies the
//! earlier ones, and a fourth, farewell, that force implies too:
//!
//! ```text
//! drain ──► stop ──► force ◄── farewell
//! ```
//!
//! - **drain**: shutdown began. `/readyz` answers 503; each connection ends at its next safe
//!   point (a keep-alive connection at its next request boundary);
//! - **stop**: `--shutdown-delay` later. The listeners close and background work ends;
//! - **farewell**: WebSocket tunnels end with a close frame: when the grace ends, or with
//!   drain under `--websocket-close-on-drain`;
//! - **force**: `--shutdown-grace` later, or once every connection is done. What is left
//!   closes now; the admin listener, which answered through the drain, goes last.
//!
//! Three kinds of holders, three types, so that only the supervisor can move the process on:
//!
//! - [`Lifecycle`], the supervisor's alone: it fires the stages and owns the trackers;
//! - [`Spawner`], which the supervisor hands to what starts tasks for it (an accept loop its
//!   connections, the admin listener its connections): spawning, no cancelling;
//! - [`Shutdown`], read-only, for every task: the stages as futures, and the phase as one
//!   atomic load (a token's own flag takes a lock; connections read the phase at every poll).
//!
//! The phase is one value, moved only by [`Lifecycle`] and always before the token it
//! mirrors, so it never disagrees with the tree: forcing sets it past draining too.
//!
//! Events (ready, reloading, reloaded, draining, stopped) go out on one broadcast channel:
//! whoever needs to tell the outside world (systemd's readiness, a status page) listens to
//! it, and nothing else knows about them. A leaf: imports nothing of the crate.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
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

/// Where the process is in its life; it only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Built, not yet accepting: `/readyz` says "starting".
    Starting,
    Serving,
    Draining,
    Stopping,
    Forced,
}

/// The phase value's bits: the stage in the low three, then two facts that come with it.
const STAGE: u8 = 0b0_0111;
/// WebSocket tunnels were asked to end with a close frame.
const FAREWELL: u8 = 0b0_1000;
/// A new process took the listeners over (a binary upgrade): requests on connections this
/// one accepted are still served after its listeners close.
const HANDED_OVER: u8 = 0b1_0000;

struct Shared {
    phase: AtomicU8,
    drain: CancellationToken,
    stop: CancellationToken,
    farewell: CancellationToken,
    force: CancellationToken,
}

impl Shared {
    fn load(&self) -> u8 {
        self.phase.load(Ordering::Acquire)
    }

    /// Moves the stage forward to `stage` (never back) and sets `bits`.
    fn advance(&self, stage: Phase, bits: u8) {
        let _ = self
            .phase
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                Some((now & STAGE).max(stage as u8) | (now & !STAGE) | bits)
            });
    }
}

/// The read-only side of shutdown, for every task: its stages as futures, its phase as
/// flags. Cheap to clone.
#[derive(Clone)]
pub struct Shutdown {
    shared: Arc<Shared>,
}

impl Shutdown {
    pub fn phase(&self) -> Phase {
        match self.shared.load() & STAGE {
            0 => Phase::Starting,
            1 => Phase::Serving,
            2 => Phase::Draining,
            3 => Phase::Stopping,
            _ => Phase::Forced,
        }
    }

    /// Shutdown began (an atomic load).
    pub fn draining(&self) -> bool {
        self.phase() >= Phase::Draining
    }

    /// The listeners closed (an atomic load).
    pub fn stopping(&self) -> bool {
        self.phase() >= Phase::Stopping
    }

    /// WebSocket tunnels were asked to end with a close frame (an atomic load).
    pub fn farewell_asked(&self) -> bool {
        self.shared.load() & FAREWELL != 0
    }

    /// Whether a new process took the listeners over.
    pub fn handing_over(&self) -> bool {
        self.shared.load() & HANDED_OVER != 0
    }

    /// Resolves when shutdown begins.
    pub fn drained(&self) -> WaitForCancellationFutureOwned {
        self.shared.drain.clone().cancelled_owned()
    }

    /// Resolves when the listeners close and background work must end.
    pub fn stopped(&self) -> WaitForCancellationFutureOwned {
        self.shared.stop.clone().cancelled_owned()
    }

    /// Resolves when WebSocket tunnels are asked to end with a close frame.
    pub fn farewell(&self) -> WaitForCancellationFutureOwned {
        self.shared.farewell.clone().cancelled_owned()
    }

    /// Resolves when whatever is left must close now.
    pub fn forced(&self) -> WaitForCancellationFutureOwned {
        self.shared.force.clone().cancelled_owned()
    }

    /// A token of one's own that stop cancels too: for a task that may also be ended alone
    /// (a health check whose backend left the configuration). Cancelling it touches nothing
    /// else.
    pub fn stop_child(&self) -> CancellationToken {
        self.shared.stop.child_token()
    }
}

/// Starts tasks on the supervisor's trackers, so shutdown waits for them; cannot cancel
/// anything. Cheap to clone.
#[derive(Clone)]
pub struct Spawner {
    connections: TaskTracker,
    background: TaskTracker,
}

impl Spawner {
    /// Runs a connection's task; shutdown waits for it (within the grace).
    pub fn connection(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.connections.spawn(task);
    }

    /// Runs background work that ends by stop (or force, for what answers through the
    /// drain); shutdown waits for it after the connections.
    pub fn background(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.background.spawn(task);
    }
}

/// Connections being served: a count anyone may read.
#[derive(Clone)]
pub struct Census {
    connections: TaskTracker,
}

impl Census {
    pub fn connections(&self) -> usize {
        self.connections.len()
    }
}

/// The lifecycle events: anyone may tell or listen. Cheap to clone.
#[derive(Clone)]
pub struct Events {
    sender: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            sender: broadcast::channel(EVENTS).0,
        }
    }
}

impl Events {
    /// Tells every listener `event`; nobody listening is fine.
    pub fn emit(&self, event: Event) {
        tracing::debug!(?event, "lifecycle");
        let _ = self.sender.send(event);
    }

    /// Events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}

/// The supervisor's side: fires the stages, owns the trackers.
pub struct Lifecycle {
    shared: Arc<Shared>,
    connections: TaskTracker,
    background: TaskTracker,
    /// The accept loops: ended at stop, before the listening descriptors are let go.
    accepting: TaskTracker,
}

impl Default for Lifecycle {
    fn default() -> Self {
        let force = CancellationToken::new();
        let stop = force.child_token();
        let drain = stop.child_token();
        let farewell = force.child_token();
        Lifecycle {
            shared: Arc::new(Shared {
                phase: AtomicU8::new(Phase::Starting as u8),
                drain,
                stop,
                farewell,
                force,
            }),
            connections: TaskTracker::new(),
            background: TaskTracker::new(),
            accepting: TaskTracker::new(),
        }
    }
}

impl Lifecycle {
    /// The read-only side, for tasks.
    pub fn shutdown(&self) -> Shutdown {
        Shutdown {
            shared: self.shared.clone(),
        }
    }

    /// The spawning side, for what starts tasks on the supervisor's behalf.
    pub fn spawner(&self) -> Spawner {
        Spawner {
            connections: self.connections.clone(),
            background: self.background.clone(),
        }
    }

    /// The connection count, for whoever shows it.
    pub fn census(&self) -> Census {
        Census {
            connections: self.connections.clone(),
        }
    }

    /// Runs an accept loop, which ends at stop; [`Lifecycle::accepting_done`] waits for it.
    pub fn spawn_accepting(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.accepting.spawn(task);
    }

    /// [`Lifecycle::spawn_accepting`] on another runtime (one of the per-core threads'),
    /// whose connections are then spawned there too.
    pub fn spawn_accepting_on(
        &self,
        task: impl Future<Output = ()> + Send + 'static,
        runtime: &tokio::runtime::Handle,
    ) {
        self.accepting.spawn_on(task, runtime);
    }

    /// The listeners accept: ready.
    pub fn serving(&self) {
        self.shared.advance(Phase::Serving, 0);
    }

    /// Runs a task shutdown does not wait for, which lives as long as the runtime: for the
    /// one watcher that must still hear a second SIGINT while shutdown waits for what is left.
    pub fn spawn_detached(&self, task: impl Future<Output = ()> + Send + 'static) {
        tokio::spawn(task);
    }

    /// Shutdown begins: the phase, then the token (whose waiters then see the phase).
    pub fn begin_drain(&self) {
        self.shared.advance(Phase::Draining, 0);
        self.shared.drain.cancel();
    }

    /// The listeners close and background work ends (drain too, if it had not fired).
    pub fn stop(&self) {
        self.shared.advance(Phase::Stopping, 0);
        self.shared.stop.cancel();
    }

    /// WebSocket tunnels end now, each with a close frame (at most once: later calls do
    /// nothing).
    pub fn say_farewell(&self) {
        self.shared.advance(Phase::Starting, FAREWELL);
        self.shared.farewell.cancel();
    }

    /// Whatever is left closes now: every stage before is implied, in the phase as in the
    /// tree.
    pub fn force(&self) {
        self.shared.advance(Phase::Forced, FAREWELL);
        self.shared.force.cancel();
    }

    /// A new process took the listeners over: this one drains without turning requests
    /// away.
    pub fn hand_over(&self) {
        self.shared.advance(Phase::Starting, HANDED_OVER);
    }

    /// Connections being served now.
    pub fn connections(&self) -> usize {
        self.connections.len()
    }

    /// No more connections will be spawned; waits until those there are have ended.
    pub async fn connections_done(&self) {
        self.connections.close();
        self.connections.wait().await;
    }

    /// Waits until every accept loop has ended (after stop).
    pub async fn accepting_done(&self) {
        self.accepting.close();
        self.accepting.wait().await;
    }

    /// Waits until every background task has ended (after `force`, at the latest).
    pub async fn background_done(&self) {
        self.background.close();
        self.background.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_only_moves_forward_and_force_implies_every_stage() {
        let life = Lifecycle::default();
        let shutdown = life.shutdown();
        assert_eq!(shutdown.phase(), Phase::Starting);
        life.serving();
        assert_eq!(shutdown.phase(), Phase::Serving);
        life.hand_over();
        assert!(shutdown.handing_over() && !shutdown.draining());
        life.force();
        assert_eq!(shutdown.phase(), Phase::Forced);
        assert!(shutdown.draining() && shutdown.stopping() && shutdown.farewell_asked());
        assert!(shutdown.handing_over(), "the facts stay");
        // Later calls do not move it back.
        life.begin_drain();
        life.stop();
        assert_eq!(shutdown.phase(), Phase::Forced);
        assert!(life.shared.drain.is_cancelled() && life.shared.farewell.is_cancelled());
    }

    #[test]
    fn farewell_at_drain_keeps_the_stage() {
        let life = Lifecycle::default();
        let shutdown = life.shutdown();
        life.serving();
        life.begin_drain();
        life.say_farewell();
        assert_eq!(shutdown.phase(), Phase::Draining);
        assert!(shutdown.farewell_asked() && !shutdown.stopping());
        life.stop();
        assert_eq!(shutdown.phase(), Phase::Stopping);
        assert!(shutdown.farewell_asked());
    }
}
