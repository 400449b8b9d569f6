//! The `splice` stage: copy bytes both ways until both directions are done.
//!
//! Why not `tokio::io::copy_bidirectional`:
//! - it ends both directions when one read fails, and a TLS peer that closes TCP without
//!   close_notify makes rustls report `UnexpectedEof`; the reply still on its way is then
//!   lost. Here that is the ordinary end of one direction;
//! - it allocates two 8 KiB buffers per tunnel up front and keeps them for the tunnel's life.
//!   Here client→backend writes small messages straight out of rustls's plaintext buffer
//!   (`AsyncBufRead`) and gathers bulk data on the stack; backend→client reads into the
//!   stack; only bytes a slow peer cannot take yet go to the heap. An idle WebSocket holds
//!   no copy buffer at all;
//! - it has no bound on a half-closed tunnel: here, once one direction has ended, the other
//!   may go on while it moves bytes but is closed after `--close-timeout` of silence; and
//!   `--idle-timeout` (when set) bounds how long both may be silent;
//! - one failed write ends both directions: here it ends only its own, so a backend's early
//!   answer (a 413 to an upload it refuses) still reaches the client.
//!
//! Half-closes are passed on: the client's close_notify (or EOF) becomes a TCP FIN to the
//! backend; the backend's FIN becomes close_notify plus FIN to the client.
//!
//! Backend→client bytes are queued in rustls and written when the backend goes quiet (its
//! socket is empty), closes, or has sent a full buffer's worth: an answer and the
//! close_notify behind it leave in one write, not two.
//!
//! The splice knows nothing of HTTP. While the connection is not yet a tunnel, a [`Gate`]
//! (the HTTP exchange) says which bytes may pass and when the connection must end; once the
//! gate opens, it is dropped and the copy is blind.
//!
//! The folder: `hooks.rs`, what other stages implement or build (`Gate`, `Tunnel`, `Client`,
//! `Preread`, `Drain`, `Watch`); `end.rs`, the timeouts and how a tunnel ended; `direction.rs`,
//! one direction's close, output and stall, written once and used twice; `up.rs` and
//! `down.rs`, how each direction reads and writes; this file, the orchestrator: the state,
//! the turn-taking poll, and the timers.

mod direction;
mod down;
mod end;
mod hooks;
#[cfg(test)]
mod testing;
mod up;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::metrics::Traffic;
use direction::{Dir, Direction, Outbox};
pub use end::{End, Failure, Op, Side, Timers, Transfer};
pub use hooks::{Client, Drain, Gate, Halt, Preread, Tunnel, Wait, Watch, Way};

/// Copies until both directions end, a timeout fires, or an error tears the tunnel down.
/// `watch.gate`, when given, says what may pass until it opens; `watch.tunnel` sees what
/// passes after.
/// The counts are written to `transfer` (this connection's) and `traffic` (the process's)
/// as bytes move, so they are right even if the caller drops this future (e.g. when the
/// shutdown grace runs out). When the gate opens (or with no gate), `transfer.opened` is set
/// and `traffic` told: the caller tells it when the tunnel ends.
///
/// Not an `async fn`: the future is the splice's state and nothing else (an `async fn` would
/// keep its arguments beside the state built from them, for the tunnel's whole life).
pub fn splice<'a, C, G, T>(
    client: &'a mut C,
    backend: &'a mut TcpStream,
    preread: Preread,
    watch: Watch<'a, G, T>,
    timeouts: Timers,
    transfer: &'a mut Transfer,
    traffic: &'a Traffic,
) -> impl Future<Output = End<G::Reason>> + 'a
where
    C: Client,
    G: Gate + 'a,
    T: Tunnel + 'a,
{
    let Watch {
        gate,
        drain,
        tunnel,
        close,
    } = watch;
    if gate.is_none() {
        transfer.opened = true;
        traffic.opened();
    }
    let drain = drain.filter(|_| gate.is_some());
    let close = close.filter(|_| T::DRAINS);
    let mut state = Splice {
        client,
        backend,
        up: Direction::with_output(preread.first),
        down: Direction::default(),
        transfer,
        idle: timeouts.idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
        last_activity: Instant::now(),
        close: timeouts.close,
        send: timeouts.send,
        send_timer: None,
        waits: (timeouts.keepalive, timeouts.head, timeouts.body),
        wait_current: None,
        wait_timer: None,
        drain,
        farewell_asked: close,
        close_timer: None,
        half_closed_at: None,
        up_first: false,
        deferred: None,
        up_error: None,
        initial: Outbox::new(preread.held),
        gate,
        tunnel,
        farewell: false,
        uncounted: preread.uncounted,
        traffic,
        down_burst: false,
        down_cut: false,
        stopped: None,
    };
    std::future::poll_fn(move |cx| state.poll(cx))
}

struct Splice<'a, C, G: Gate, T> {
    client: &'a mut C,
    backend: &'a mut TcpStream,
    /// Client → backend.
    up: Direction,
    /// Backend → client.
    down: Direction,
    transfer: &'a mut Transfer,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    last_activity: Instant,
    close: Option<Duration>,
    close_timer: Option<Pin<Box<Sleep>>>,
    send: Option<Duration>,
    /// Armed only while output waits: idle tunnels keep no timer.
    send_timer: Option<Pin<Box<Sleep>>>,
    /// The bounds of a gate's waits: `Wait::Next`, `Wait::Head`, `Wait::Body`.
    waits: (Option<Duration>, Option<Duration>, Option<Duration>),
    /// The gate's current wait and its deadline.
    wait_current: Option<(Wait, Instant)>,
    /// The one timer for the gate's waits, made at the first and dropped with the gate.
    wait_timer: Option<Pin<Box<Sleep>>>,
    /// Shutdown's request to end at the next safe point, while a gate can act on it.
    drain: Option<Drain<'a>>,
    /// Shutdown's request that the tunnel end, for a hook that hears it.
    farewell_asked: Option<Drain<'a>>,
    half_closed_at: Option<Instant>,
    up_first: bool,
    /// Client bytes read before the splice that the gate has not seen yet.
    initial: Outbox,
    /// Until the tunnel is blind: what may pass.
    gate: Option<Box<G>>,
    /// After: what watches the tunnel.
    tunnel: T,
    /// The hook ended a side of the tunnel at shutdown's close.
    farewell: bool,
    /// Bytes at the start of `up.out` that are not the client's (a PROXY header).
    uncounted: usize,
    /// The process's counts.
    traffic: &'a Traffic,
    /// The last backend read filled the buffer: more is probably coming.
    down_burst: bool,
    /// The backend's side ended abnormally: the client's is cut, not closed in order.
    down_cut: bool,
    /// Set when the gate stopped the connection.
    stopped: Option<G::Reason>,
    /// A write failure that ended one direction, reported once the other is done too.
    deferred: Option<Failure>,
    /// A client read error met while gathering, reported after the bytes before it are sent.
    up_error: Option<io::Error>,
}

impl<C, G, T> Splice<'_, C, G, T>
where
    C: Client,
    G: Gate,
    T: Tunnel,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End<G::Reason>> {
        // Take turns going first, so a saturated direction cannot use up tokio's per-task
        // budget and starve the other.
        self.up_first = !self.up_first;
        for up in [self.up_first, !self.up_first] {
            if let Some(end) = self.step(up, cx) {
                return Poll::Ready(end);
            }
        }
        self.poll_drain(cx);
        self.poll_wait(cx);
        if let Some(stop) = self.gate.as_ref().and_then(|g| g.finished())
            && self.down.is_done()
        {
            // The gate stopped on client input after the client side was already closed:
            // nothing more can be answered, so end the other direction too (re-polling would
            // only find the same state again).
            self.stop(stop, cx);
        } else if let Some(gate) = &mut self.gate {
            // Poll again when held client bytes may move, or when the gate stopped and the
            // backend side is free to act on it; while output to the client still waits, its
            // socket wakes this task (waking here would spin).
            let output_waits = self.down.out.pending() || self.down_burst;
            if gate.take_changed() || (gate.finished().is_some() && !output_waits) {
                cx.waker().wake_by_ref();
            }
        }
        if self.up.is_done() && self.down.is_done() {
            let end = match (self.deferred.take(), self.stopped) {
                (Some(f), _) => End::Failed(f),
                (None, Some(stop)) => End::Stopped(stop),
                (None, None) if self.farewell => End::Farewell,
                (None, None) => End::Closed,
            };
            return Poll::Ready(end);
        }
        if (self.up.is_done() || self.down.is_done())
            && let Some(close) = self.close
        {
            // Counted from the half-close or the last byte, whichever is later: a half-closed
            // tunnel that still moves data is not cut off, a silent one is.
            let half_closed = *self.half_closed_at.get_or_insert_with(Instant::now);
            let timer = self
                .close_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(close)));
            while timer.as_mut().poll(cx).is_ready() {
                let deadline = self.last_activity.max(half_closed) + close;
                if deadline <= Instant::now() {
                    return Poll::Ready(End::CloseTimeout);
                }
                timer.as_mut().reset(deadline);
            }
        }
        if let Some((idle, timer)) = &mut self.idle {
            while timer.as_mut().poll(cx).is_ready() {
                let deadline = self.last_activity + *idle;
                if deadline <= Instant::now() {
                    return Poll::Ready(End::IdleTimeout);
                }
                timer.as_mut().reset(deadline);
            }
        }
        if let Some(limit) = self.send
            && let Some(side) = self.stalled_for(limit, cx)
        {
            return Poll::Ready(End::SendTimeout(side));
        }
        Poll::Pending
    }

    /// Hands shutdown's drain on to the gate once it is asked (or lets it go with the gate),
    /// and its close to an open tunnel's hook that hears it.
    fn poll_drain(&mut self, cx: &mut Context<'_>) {
        if let Some(drain) = &mut self.drain {
            match &mut self.gate {
                None => self.drain = None,
                Some(gate) if drain.poll_asked(cx) => {
                    self.drain = None;
                    gate.drain();
                    cx.waker().wake_by_ref();
                }
                Some(_) => {}
            }
        }
        if let Some(close) = &mut self.farewell_asked
            && close.poll_asked(cx)
            && self.transfer.opened
        {
            self.farewell_asked = None;
            self.tunnel.drain();
            cx.waker().wake_by_ref();
        }
    }

    /// Bounds what the gate waits for from the client: each wait gets its deadline when it
    /// begins (a new wait, a new deadline). One timer serves them all, armed lazily: moved
    /// earlier when a wait needs it sooner, otherwise left to fire and then re-armed for the
    /// current deadline, so a keep-alive request costs no timer-wheel update. When a deadline
    /// passes the gate is told, and decides the end through `finished`. No timer once the
    /// gate is gone.
    fn poll_wait(&mut self, cx: &mut Context<'_>) {
        let Some(gate) = &mut self.gate else {
            self.wait_timer = None;
            self.wait_current = None;
            return;
        };
        let wait = gate.waiting();
        let backend_holds_back = self.up.out.pending() || self.up.blocked;
        let limit = match wait {
            Some(Wait::Next(_)) => self.waits.0,
            Some(Wait::Head(_)) => self.waits.1,
            Some(Wait::Body(_)) if backend_holds_back => None,
            Some(Wait::Body(_)) => self.waits.2,
            None => None,
        };
        let (Some(wait), Some(limit)) = (wait, limit) else {
            // An armed timer stays: it fires once, harmlessly, and is re-armed if needed.
            self.wait_current = None;
            return;
        };
        let deadline = match self.wait_current {
            Some((current, deadline)) if current == wait => deadline,
            _ => {
                let deadline = Instant::now() + limit;
                self.wait_current = Some((wait, deadline));
                deadline
            }
        };
        let timer = self
            .wait_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        while timer.as_mut().poll(cx).is_ready() {
            if deadline <= Instant::now() {
                self.wait_current = None;
                gate.expired(wait);
                cx.waker().wake_by_ref();
                return;
            }
            timer.as_mut().reset(deadline);
        }
    }

    /// The side whose output has waited `limit` without progress, if one has; otherwise
    /// keeps a timer for the one waiting longest, or none when nothing waits.
    fn stalled_for(&mut self, limit: Duration, cx: &mut Context<'_>) -> Option<Side> {
        let now = Instant::now();
        let up = self.up.waiting(false);
        let down = self.down.waiting(self.client.unsent());
        let oldest = [
            self.up
                .stall(up, self.transfer.up, now)
                .map(|s| (s, Side::Backend)),
            self.down
                .stall(down, self.client.written(), now)
                .map(|s| (s, Side::Client)),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(since, _)| *since);
        let Some((since, side)) = oldest else {
            self.send_timer = None;
            return None;
        };
        let deadline = since + limit;
        let timer = self
            .send_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx).is_ready() {
            true => Some(side),
            false => None,
        }
    }

    /// Polls one direction. A failed write ends only that direction (the other may still be
    /// delivering, e.g. a backend's early 413 while the client uploads); a failed client read
    /// means the client is gone and ends the tunnel (backend read failures are handled in
    /// `poll_down`, which still delivers what it read).
    fn step(&mut self, up: bool, cx: &mut Context<'_>) -> Option<End<G::Reason>> {
        let done = if up {
            self.up.is_done()
        } else {
            self.down.is_done()
        };
        if done {
            return None;
        }
        let result = match up {
            true => self.poll_up(cx),
            false => self.poll_down(cx),
        };
        let failure = match result {
            Poll::Pending => return None,
            Poll::Ready(Ok(())) => None,
            Poll::Ready(Err(f)) if f.op == Op::Read => {
                if self.gate.is_none() {
                    let way = match f.side {
                        Side::Client => Way::Up,
                        Side::Backend => Way::Down,
                    };
                    self.tunnel.ended(way, true);
                }
                return Some(End::Failed(f));
            }
            Poll::Ready(Err(f)) => Some(f),
        };
        match up {
            true => self.up.state = Dir::Done,
            false => self.down.state = Dir::Done,
        }
        if let Some(f) = failure {
            self.deferred.get_or_insert(f);
        }
        None
    }

    /// Ends the tunnel at a gate's stop: send its answer if there is one, close the client
    /// side after it, and stop sending to the backend.
    fn stop(&mut self, stop: G::Reason, cx: &mut Context<'_>) {
        self.gate = None;
        self.stopped = Some(stop);
        if let Some(answer) = G::answer(stop) {
            // After whatever the gate let through that is still on its way.
            self.down.out.bytes.extend_from_slice(&answer);
        }
        if !self.up.is_done() {
            self.up.state = Dir::Closing;
            cx.waker().wake_by_ref();
        }
    }

    /// Ends one side of an open tunnel at its hook's word, after what is already on its way
    /// and the hook's last bytes: a FIN to the backend, close_notify and FIN to the client.
    fn say_farewell(&mut self, way: Way) {
        self.farewell = true;
        let last = self.tunnel.last(way).unwrap_or_default();
        match way {
            Way::Up => self.up.close_after(&last),
            Way::Down => self.down.close_after(&last),
        }
    }

    fn touch(&mut self) {
        if self.idle.is_some() || self.close_timer.is_some() {
            self.last_activity = Instant::now();
        }
    }
}
