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

use std::fmt;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::metrics::Traffic;

/// Four TLS records' worth of plaintext: one read from the backend becomes four records that
/// rustls writes out together, so a bulk transfer makes a quarter of the system calls it
/// would with one record per read (measured: ~30% more MB per CPU-second than 16 KiB). It
/// lives on the stack of the poll that uses it, so tunnels do not pay for its size.
const DOWN_BUFFER: usize = 64 * 1024;

/// The same for client→backend: records are gathered into one write of up to 64 KiB
/// (with `ReadAhead` reading the socket in pieces as large)...
const UP_BUFFER: usize = 64 * 1024;
/// ...once one record carries at least this much, a sign of a bulk transfer (then the socket
/// is read for more too). Smaller records are gathered when rustls already holds more than
/// one (a burst of chat messages leaves in one write, not one each); a lone small message
/// goes straight from rustls's buffer to the backend without a copy.
const GATHER_FROM: usize = 8 * 1024;

/// What may pass while the connection is not yet a blind tunnel.
pub trait Gate {
    /// Why the gate ended the connection, for the caller's log.
    type Stop: Copy + fmt::Debug;

    /// Takes client bytes: appends to `out` what may go to the backend and returns how many
    /// bytes of `input` it took. Taking none and passing none means: hold them until
    /// something from the backend changes that ([`Gate::take_changed`]).
    fn client(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize;

    /// Takes backend bytes: appends to `out` what may go to the client and returns how many
    /// bytes of `input` it took. Once the gate is open it takes no more: the rest of `input`
    /// is tunnel data.
    fn backend(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Halt<Self::Stop>>;

    /// True once the tunnel is blind: the gate is dropped.
    fn is_open(&self) -> bool;

    /// The protocol the tunnel opened to (an `Upgrade` token), told to the tunnel hook.
    fn opened_to(&self) -> Option<&str>;

    /// Whether held client bytes may move now (reading it resets it).
    fn take_changed(&mut self) -> bool;

    /// Set when the connection must end now that everything before the stop has passed.
    fn finished(&self) -> Option<Self::Stop>;

    /// What to send the client before closing after `stop`, if anything.
    fn answer(stop: Self::Stop) -> Option<Vec<u8>>;

    /// What the gate waits for from the client now, if anything. The splice bounds each
    /// wait by its timeout ([`Timeouts::keepalive`], [`Timeouts::head`]) and calls
    /// [`Gate::expired`] when it runs out.
    fn waiting(&self) -> Option<Wait>;

    /// `wait` ran out: the gate says through [`Gate::finished`] how the connection ends.
    fn expired(&mut self, wait: Wait);

    /// Shutdown asks the connection to end at its next safe point; the gate says through
    /// [`Gate::finished`] when that is.
    fn drain(&mut self);
}

/// A wait for the client that a gate asks the splice to bound in time. The number tells one
/// wait of a kind from the next: each new message restarts the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Between messages, nothing of the next one has come (`Timeouts::keepalive`).
    Next(u64),
    /// A message's head has begun and is not complete (`Timeouts::head`).
    Head(u64),
    /// A message's body is on its way; the number is how much of it has come, so each read
    /// restarts the clock (`Timeouts::body`). Not counted while the backend holds the body
    /// back (its bytes wait for it): that is `Timeouts::send`'s.
    Body(u64),
}

/// Why a gate cannot take a backend's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt<S> {
    /// End the connection now, answering the client as [`Gate::answer`] says.
    Stop(S),
    /// The backend sent what cannot be relayed: close both sides at once, the client's
    /// without close_notify (what it got may be cut short).
    Broken(&'static str),
}

/// The client's side of a tunnel: rustls over the client's socket. Besides reading and
/// writing, it takes plaintext without sending it yet, so what the backend sends in one go
/// leaves in one write: a response and the close_notify behind it, for one.
pub trait Client: AsyncBufRead + AsyncWrite + Unpin {
    /// Encrypts as much of `data` as rustls's send buffer takes (none when it is full)
    /// without writing to the socket; `poll_flush` or `poll_shutdown` sends it.
    fn queue(&mut self, data: &[u8]) -> io::Result<usize>;

    /// About how much plaintext can be read now without a system call: what rustls has
    /// decrypted, and what was read from the socket ahead of it.
    fn buffered(&mut self) -> usize;

    /// Whether encrypted bytes wait to be written to the client's socket.
    fn unsent(&self) -> bool;

    /// Bytes written to the client's socket so far (any progress shows here).
    fn written(&self) -> u64;

    /// Ends the socket's sending side (TCP FIN) after what is already encrypted, without
    /// close_notify: the client can tell the stream was cut short (RFC 8446 §6.1), as it
    /// must when the backend's side ended abnormally.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// The splice's timeouts; `None` is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// No byte either way for this long ends the tunnel (`--idle-timeout`).
    pub idle: Option<Duration>,
    /// Once one direction closed, silence this long ends the tunnel (`--close-timeout`).
    pub close: Option<Duration>,
    /// A write that makes no progress this long ends the tunnel (`--send-timeout`): a
    /// peer that stops reading holds its bounded buffers only this long.
    pub send: Option<Duration>,
    /// While a gate is in place: the wait for the next message (`--keepalive-timeout`).
    pub keepalive: Option<Duration>,
    /// While a gate is in place: from a head's first byte to its end (`--header-timeout`).
    pub head: Option<Duration>,
    /// While a gate is in place: between two reads of a request body (`--body-timeout`).
    pub body: Option<Duration>,
}

/// Bytes moved, client→backend (`up`) and backend→client (`down`), and whether the gate
/// opened (the connection became a blind tunnel: a WebSocket, for one).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub up: u64,
    pub down: u64,
    pub opened: bool,
}

/// Which peer an I/O error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// Whether the failed call was reading from the peer or writing to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

/// An I/O error with where it happened.
#[derive(Debug)]
pub struct Failure {
    pub side: Side,
    pub op: Op,
    pub error: io::Error,
}

impl Failure {
    /// A reset, a broken pipe or a TLS close without close_notify: the peer went away, which
    /// is how browsers often end a WebSocket (closing a tab), not a fault in the tunnel.
    pub fn peer_went_away(&self) -> bool {
        matches!(
            self.error.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::UnexpectedEof
        )
    }
}

/// How a tunnel ended; `S` is the gate's reason for stopping.
#[derive(Debug)]
pub enum End<S> {
    /// Both directions finished with an orderly close.
    Closed,
    /// One direction ended and the other was then silent for `--close-timeout`.
    CloseTimeout,
    /// No byte either way for `--idle-timeout`.
    IdleTimeout,
    /// Bytes waited for this side to read them, with no progress, for `--send-timeout`.
    SendTimeout(Side),
    /// A read or write failed; the tunnel was torn down.
    Failed(Failure),
    /// The gate ended the connection.
    Stopped(S),
    /// Shutdown's close: the tunnel hook ended a side in order (a WebSocket close frame, then
    /// the close), and the other side is done too.
    Farewell,
}

/// What goes to the backend before the copy: `first` as it is (a PROXY header, then the
/// first request head, already admitted), then `held` (what the client sent after that
/// head) through the gate. The first `uncounted` bytes of `first` (the PROXY header) are
/// not the client's, so not counted.
#[derive(Debug, Default)]
pub struct Preread {
    pub first: Vec<u8>,
    pub uncounted: usize,
    pub held: Vec<u8>,
}

/// Shutdown's request that a connection (through its gate) or a tunnel (through its hook) end
/// at its next safe point.
pub struct Drain<'a> {
    /// Whether it was asked: called at every poll, so an atomic load, not a lock.
    asked: &'a (dyn Fn() -> bool + Send + Sync),
    /// Resolves when it is asked: polled once, so the task is woken then, and kept (not
    /// polled again) until the drain is handled or the gate is gone.
    wake: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    registered: bool,
    /// How long after it is asked this connection acts on it: each tunnel its own, so a
    /// thousand tunnels do not all end in the same instant.
    delay: Duration,
    /// The delay's timer, made once it is asked.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<'a> Drain<'a> {
    /// `asked` must say yes before `wake` resolves.
    pub fn new(
        asked: &'a (dyn Fn() -> bool + Send + Sync),
        wake: Pin<Box<dyn Future<Output = ()> + Send + 'a>>,
    ) -> Drain<'a> {
        Drain {
            asked,
            wake,
            registered: false,
            delay: Duration::ZERO,
            timer: None,
        }
    }

    /// The same, acted on `delay` after it is asked.
    pub fn after(mut self, delay: Duration) -> Drain<'a> {
        self.delay = delay;
        self
    }

    /// Whether it was asked (and its delay is over). The wake-up is registered once; after
    /// that each poll reads the flag, an atomic load, not a lock.
    fn poll_asked(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.registered {
            self.registered = true;
            // Registers the task to be woken; whether it is already asked, the flag says.
            let _ = self.wake.as_mut().poll(cx);
        }
        if !(self.asked)() {
            return false;
        }
        if self.delay.is_zero() {
            return true;
        }
        let delay = self.delay;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
        timer.as_mut().poll(cx).is_ready()
    }
}

/// What watches a connection besides the copy: the gate until the `101` (none: blind from
/// the start) with shutdown's `drain`, and the tunnel hook after it with shutdown's `close`
/// (for a hook that asks, [`Tunnel::DRAINS`]). With the no-op hook `()`, an open tunnel goes
/// on until the shutdown grace is over.
pub struct Watch<'a, G, T> {
    pub gate: Option<Box<G>>,
    pub drain: Option<Drain<'a>>,
    pub tunnel: T,
    pub close: Option<Drain<'a>>,
}

/// A direction of the tunnel: client→backend (`Up`) or backend→client (`Down`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    Up,
    Down,
}

/// What may watch an open tunnel: a no-op unless a feature asks. Once the gate has opened
/// (or with no gate), the splice shows it every tunnel byte it takes each way (from the
/// client's TLS, from the backend's socket), in order, none of the HTTP before; and, for a
/// hook that asks ([`Tunnel::DRAINS`]), shutdown's close. Once asked, the hook bounds what
/// may still pass each way ([`Tunnel::room`]) and says what goes last ([`Tunnel::last`]).
/// `()` watches nothing: the calls compile to nothing and the default tunnel stays blind.
/// The WebSocket hook (`websocket::Farewell`, a close frame at a frame boundary) plugs in
/// here, the way `http` plugs in the [`Gate`] before the `101`.
pub trait Tunnel {
    /// Whether shutdown's close is heard by this hook.
    const DRAINS: bool = false;

    /// Client bytes taken on their way to the backend.
    fn up(&mut self, _bytes: &[u8]) {}

    /// Backend bytes taken on their way to the client.
    fn down(&mut self, _bytes: &[u8]) {}

    /// Shutdown asks the tunnel to end.
    fn drain(&mut self) {}

    /// The gate opened the tunnel to `protocol` (an `Upgrade` token): the hook learns what
    /// it watches, whichever request on the connection it was.
    fn opened(&mut self, _protocol: Option<&str>) {}

    /// How many more bytes may be taken `way` before that side ends (`None`: no bound, the
    /// tunnel was not asked to end). At 0 the side gets [`Tunnel::last`] and is closed in
    /// order: FIN to the backend; close_notify and FIN to the client.
    fn room(&self, _way: Way) -> Option<usize> {
        None
    }

    /// What to send `way` before closing it, once its room is 0.
    fn last(&mut self, _way: Way) -> Option<Vec<u8>> {
        None
    }
}

/// The blind tunnel.
impl Tunnel for () {}

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
    timeouts: Timeouts,
    transfer: &'a mut Transfer,
    traffic: &'a Traffic,
) -> impl Future<Output = End<G::Stop>> + 'a
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
        up: Dir::Open,
        down: Dir::Open,
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
        stalled: [None, None],
        up_blocked: false,
        close_timer: None,
        half_closed_at: None,
        up_first: false,
        deferred: None,
        up_error: None,
        initial: Outbox::new(preread.held),
        gate,
        tunnel,
        farewell: false,
        up_out: Outbox::new(preread.first),
        uncounted: preread.uncounted,
        traffic,
        down_out: Outbox::default(),
        down_burst: false,
        down_cut: false,
        stopped: None,
    };
    std::future::poll_fn(move |cx| state.poll(cx))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Open,
    /// EOF seen; passing the close on.
    Closing,
    Done,
}

struct Splice<'a, C, G: Gate, T> {
    client: &'a mut C,
    backend: &'a mut TcpStream,
    up: Dir,
    down: Dir,
    transfer: &'a mut Transfer,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    last_activity: Instant,
    close: Option<Duration>,
    close_timer: Option<Pin<Box<Sleep>>>,
    send: Option<Duration>,
    /// Armed only while output waits: idle tunnels keep no timer.
    send_timer: Option<Pin<Box<Sleep>>>,
    /// For the backend [0] and the client [1]: since when output has waited for it, and how
    /// much had been written then (a change means progress).
    stalled: [Option<(Instant, u64)>; 2],
    /// A write of bytes still in rustls's buffer found the backend full.
    up_blocked: bool,
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
    /// Bytes the gate approved, on their way to the backend / the client.
    up_out: Outbox,
    /// Bytes at the start of `up_out` that are not the client's (a PROXY header).
    uncounted: usize,
    /// The process's counts.
    traffic: &'a Traffic,
    down_out: Outbox,
    /// The last backend read filled the buffer: more is probably coming.
    down_burst: bool,
    /// The backend's side ended abnormally: the client's is cut, not closed in order.
    down_cut: bool,
    /// Set when the gate stopped the connection.
    stopped: Option<G::Stop>,
    /// A write failure that ended one direction, reported once the other is done too.
    deferred: Option<Failure>,
    /// A client read error met while gathering, reported after the bytes before it are sent.
    up_error: Option<io::Error>,
}

type Step = Result<(), Failure>;

fn fail(side: Side, op: Op) -> impl FnOnce(io::Error) -> Failure {
    move |error| Failure { side, op, error }
}

/// Bytes waiting to be written, released as soon as they are.
#[derive(Default)]
struct Outbox {
    bytes: Vec<u8>,
    pos: usize,
}

impl Outbox {
    fn new(bytes: Vec<u8>) -> Self {
        Outbox { bytes, pos: 0 }
    }

    fn rest(&self) -> &[u8] {
        &self.bytes[self.pos..]
    }

    /// Marks `n` bytes written; frees the buffer once all are.
    fn advance(&mut self, n: usize) -> io::Result<()> {
        if n == 0 && self.pos < self.bytes.len() {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.pos += n;
        if self.pos >= self.bytes.len() {
            *self = Outbox::default();
        }
        Ok(())
    }
}

impl<C, G, T> Splice<'_, C, G, T>
where
    C: Client,
    G: Gate,
    T: Tunnel,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End<G::Stop>> {
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
            && self.down == Dir::Done
        {
            // The gate stopped on client input after the client side was already closed:
            // nothing more can be answered, so end the other direction too (re-polling would
            // only find the same state again).
            self.stop(stop, cx);
        } else if let Some(gate) = &mut self.gate {
            // Poll again when held client bytes may move, or when the gate stopped and the
            // backend side is free to act on it; while output to the client still waits, its
            // socket wakes this task (waking here would spin).
            let output_waits = self.down_out.pos < self.down_out.bytes.len() || self.down_burst;
            if gate.take_changed() || (gate.finished().is_some() && !output_waits) {
                cx.waker().wake_by_ref();
            }
        }
        if self.up == Dir::Done && self.down == Dir::Done {
            let end = match (self.deferred.take(), self.stopped) {
                (Some(f), _) => End::Failed(f),
                (None, Some(stop)) => End::Stopped(stop),
                (None, None) if self.farewell => End::Farewell,
                (None, None) => End::Closed,
            };
            return Poll::Ready(end);
        }
        if (self.up == Dir::Done || self.down == Dir::Done)
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
        let backend_holds_back = self.up_out.pos < self.up_out.bytes.len() || self.up_blocked;
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
        let waiting = [
            self.up != Dir::Done && (self.up_out.pos < self.up_out.bytes.len() || self.up_blocked),
            self.down != Dir::Done
                && (self.down_out.pos < self.down_out.bytes.len() || self.client.unsent()),
        ];
        let marks = [self.transfer.up, self.client.written()];
        for i in 0..2 {
            self.stalled[i] = match (waiting[i], self.stalled[i]) {
                (false, _) => None,
                (true, Some((since, mark))) if mark == marks[i] => Some((since, mark)),
                (true, _) => Some((Instant::now(), marks[i])),
            };
        }
        let oldest = (0..2)
            .filter_map(|i| self.stalled[i].map(|(since, _)| (since, i)))
            .min();
        let Some((since, i)) = oldest else {
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
            true => Some([Side::Backend, Side::Client][i]),
            false => None,
        }
    }

    /// Polls one direction. A failed write ends only that direction (the other may still be
    /// delivering, e.g. a backend's early 413 while the client uploads); a failed client read
    /// means the client is gone and ends the tunnel (backend read failures are handled in
    /// `poll_down`, which still delivers what it read).
    fn step(&mut self, up: bool, cx: &mut Context<'_>) -> Option<End<G::Stop>> {
        let state = if up { self.up } else { self.down };
        if state == Dir::Done {
            return None;
        }
        let result = match up {
            true => self.poll_up(cx),
            false => self.poll_down(cx),
        };
        let failure = match result {
            Poll::Pending => return None,
            Poll::Ready(Ok(())) => None,
            Poll::Ready(Err(f)) if f.op == Op::Read => return Some(End::Failed(f)),
            Poll::Ready(Err(f)) => Some(f),
        };
        match up {
            true => self.up = Dir::Done,
            false => self.down = Dir::Done,
        }
        if let Some(f) = failure {
            self.deferred.get_or_insert(f);
        }
        None
    }

    /// Client → backend: the bytes read before the splice, then straight out of the TLS
    /// plaintext buffer; through the gate until it opens.
    fn poll_up(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            if self.up_out.pos < self.up_out.bytes.len() {
                let n = ready!(Pin::new(&mut *self.backend).poll_write(cx, self.up_out.rest()))
                    .map_err(fail(Side::Backend, Op::Write))?;
                self.up_out
                    .advance(n)
                    .map_err(fail(Side::Backend, Op::Write))?;
                self.sent_up(n);
                continue;
            }
            if self.up == Dir::Closing {
                match ready!(Pin::new(&mut *self.backend).poll_shutdown(cx)) {
                    // Already reset: the FIN has nowhere to go, and nothing is lost by that.
                    Err(e) if e.kind() != io::ErrorKind::NotConnected => {
                        return Poll::Ready(Err(fail(Side::Backend, Op::Write)(e)));
                    }
                    _ => return Poll::Ready(Ok(())),
                }
            }
            // Once the hook was asked to end the tunnel, take no further than it allows.
            let room = self.tunnel.room(Way::Up);
            if room == Some(0) {
                self.say_farewell(Way::Up);
                continue;
            }
            let from_initial = self.initial.pos < self.initial.bytes.len();
            // Plaintext rustls holds already (before this read adds to it), for gathering.
            let mut held = 0;
            let chunk = if from_initial {
                self.initial.rest()
            } else if let Some(e) = self.up_error.take() {
                if !is_eof(&e) {
                    return Poll::Ready(Err(fail(Side::Client, Op::Read)(e)));
                }
                &[]
            } else {
                if self.gate.is_none() {
                    held = self.client.buffered();
                }
                match ready!(Pin::new(&mut *self.client).poll_fill_buf(cx)) {
                    Ok(chunk) => chunk,
                    Err(e) if is_eof(&e) => &[],
                    Err(e) => return Poll::Ready(Err(fail(Side::Client, Op::Read)(e))),
                }
            };
            if chunk.is_empty() {
                self.up = Dir::Closing;
                continue;
            }
            let (chunk, room) = match room {
                Some(room) => (&chunk[..room.min(chunk.len())], room),
                None => (chunk, UP_BUFFER),
            };
            let n = match &mut self.gate {
                Some(gate) => {
                    let taken = gate.client(chunk, &mut self.up_out.bytes);
                    if taken == 0 && self.up_out.bytes.is_empty() {
                        if self.down == Dir::Done {
                            // Held for an answer that can no longer come: end this side.
                            self.up = Dir::Closing;
                            continue;
                        }
                        // Held until the backend answers; its side wakes this task.
                        return Poll::Pending;
                    }
                    taken
                }
                None if !from_initial && chunk.len() >= GATHER_FROM => {
                    if let Err(f) = self.gather(cx, room.min(UP_BUFFER)) {
                        return Poll::Ready(Err(f));
                    }
                    continue;
                }
                None if !from_initial && held > chunk.len() => {
                    // Several records in hand: one write for all of them.
                    if let Err(f) = self.gather(cx, held.min(room)) {
                        return Poll::Ready(Err(f));
                    }
                    continue;
                }
                None => {
                    let written = Pin::new(&mut *self.backend).poll_write(cx, chunk);
                    let Poll::Ready(written) = written else {
                        // The bytes stay in rustls's buffer: waiting, as `up_out` would be.
                        self.up_blocked = true;
                        return Poll::Pending;
                    };
                    let n = written.map_err(fail(Side::Backend, Op::Write))?;
                    if n == 0 {
                        let zero = io::ErrorKind::WriteZero.into();
                        return Poll::Ready(Err(fail(Side::Backend, Op::Write)(zero)));
                    }
                    self.tunnel.up(&chunk[..n]);
                    self.sent_up(n);
                    n
                }
            };
            if from_initial {
                let _ = self.initial.advance(n);
            } else {
                Pin::new(&mut *self.client).consume(n);
            }
        }
    }

    /// Gathers up to `limit` bytes of the plaintext of every TLS record rustls can give
    /// without waiting (on the stack) and writes it to the backend at once, where it would
    /// take one write per record. What the backend cannot take now waits in `up_out`. A
    /// read error met on the way is kept for after the bytes before it. With a limit of
    /// what rustls already holds, the socket is not read (no read that finds it empty).
    fn gather(&mut self, cx: &mut Context<'_>, limit: usize) -> Step {
        let mut space = [MaybeUninit::<u8>::uninit(); UP_BUFFER];
        let mut gathered = ReadBuf::uninit(&mut space[..limit.min(UP_BUFFER)]);
        while gathered.remaining() > 0 {
            match Pin::new(&mut *self.client).poll_fill_buf(cx) {
                Poll::Ready(Ok(chunk)) if !chunk.is_empty() => {
                    let n = chunk.len().min(gathered.remaining());
                    gathered.put_slice(&chunk[..n]);
                    Pin::new(&mut *self.client).consume(n);
                }
                // EOF: `poll_up` sees it again on its next read.
                Poll::Ready(Ok(_)) | Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    self.up_error = Some(e);
                    break;
                }
            }
        }
        let data = gathered.filled();
        if data.is_empty() {
            return Ok(());
        }
        self.tunnel.up(data);
        let n = match write_or_keep(&mut *self.backend, cx, data, &mut self.up_out) {
            Ok(n) => n,
            // A client read error found while gathering still ends the tunnel, as any other
            // client read error does; the failed write to the backend comes second.
            Err(e) => match self.up_error.take() {
                Some(read) if !is_eof(&read) => return Err(fail(Side::Client, Op::Read)(read)),
                _ => return Err(fail(Side::Backend, Op::Write)(e)),
            },
        };
        self.sent_up(n);
        Ok(())
    }

    /// Backend → client: read into the stack and queued in rustls, which writes it when the
    /// backend goes quiet, closes or fills the buffer; only what rustls cannot take yet is
    /// kept on the heap. Through the gate until it opens.
    fn poll_down(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            if self.down_out.pos < self.down_out.bytes.len() {
                let n = self
                    .client
                    .queue(self.down_out.rest())
                    .map_err(fail(Side::Client, Op::Write))?;
                if n == 0 {
                    // rustls's send buffer is full: write it out to make room.
                    ready!(self.flush_client(cx))?;
                    continue;
                }
                let _ = self.down_out.advance(n);
                self.sent_down(n);
                continue;
            }
            if self.down_burst {
                // The last read filled the buffer: send it before reading more, so a slow
                // client holds the backend back instead of the heap filling up.
                ready!(self.flush_client(cx))?;
                self.down_burst = false;
            }
            if self.down == Dir::Closing {
                match self.down_cut {
                    true => {
                        ready!(self.flush_client(cx))?;
                        ready!(self.client.poll_cut(cx)).map_err(fail(Side::Client, Op::Write))?;
                    }
                    false => ready!(Pin::new(&mut *self.client).poll_shutdown(cx))
                        .map_err(fail(Side::Client, Op::Write))?,
                }
                return Poll::Ready(Ok(()));
            }
            if self.stopped.is_some() {
                self.down = Dir::Closing;
                continue;
            }
            if let Some(stop) = self.gate.as_ref().and_then(|g| g.finished()) {
                self.stop(stop, cx);
                continue;
            }
            // Once the hook was asked to end the tunnel, read no further than it allows.
            let room = self.tunnel.room(Way::Down);
            if room == Some(0) {
                self.say_farewell(Way::Down);
                continue;
            }
            let limit = room.map_or(DOWN_BUFFER, |r| r.min(DOWN_BUFFER));
            // Read into the stack: nothing is allocated unless the client cannot take it all.
            let mut space = [MaybeUninit::<u8>::uninit(); DOWN_BUFFER];
            let mut read = ReadBuf::uninit(&mut space[..limit]);
            match Pin::new(&mut *self.backend).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    self.backend_gone(e);
                    continue;
                }
                Poll::Pending => {
                    // Quiet backend: push out what rustls holds.
                    ready!(self.flush_client(cx))?;
                    return Poll::Pending;
                }
            }
            let data = read.filled();
            self.down_burst = read.remaining() == 0;
            if data.is_empty() {
                self.down = Dir::Closing;
                continue;
            }
            if self.gate.is_none() {
                self.tunnel.down(data);
            }
            if let Some(gate) = &mut self.gate {
                match gate.backend(data, &mut self.down_out.bytes) {
                    Ok(n) => {
                        if gate.take_changed() {
                            cx.waker().wake_by_ref();
                        }
                        if gate.is_open() {
                            // The tunnel is open: no more gate, no more of its state. What
                            // followed the opening is tunnel data.
                            self.tunnel.opened(gate.opened_to());
                            self.gate = None;
                            self.transfer.opened = true;
                            self.traffic.opened();
                            // What the gate let through before the 101 (and the 101) is
                            // HTTP; only what follows is the tunnel's, shown to the hook.
                            self.tunnel.down(&data[n..]);
                            self.down_out.bytes.extend_from_slice(&data[n..]);
                        } else {
                            debug_assert_eq!(n, data.len(), "the gate takes all until it opens");
                        }
                    }
                    Err(Halt::Stop(stop)) => self.stop(stop, cx),
                    Err(Halt::Broken(why)) => {
                        // A response nobody asked for, or one that cannot be framed: the
                        // backend and the client no longer agree on where they are, so
                        // nothing more goes either way.
                        let e = io::Error::new(io::ErrorKind::InvalidData, why);
                        self.backend_gone(e);
                        self.gate = None;
                        self.up_out = Outbox::default();
                        self.up = Dir::Done;
                    }
                }
                continue;
            }
            // Queued in rustls, written when the backend goes quiet, closes (then with the
            // close_notify) or fills the buffer; what rustls cannot take waits in `down_out`.
            let n = self
                .client
                .queue(data)
                .map_err(fail(Side::Client, Op::Write))?;
            if n < data.len() {
                self.down_out = Outbox::new(data[n..].to_vec());
            }
            self.sent_down(n);
        }
    }

    /// `n` bytes went to the backend.
    fn sent_up(&mut self, n: usize) {
        self.up_blocked = false;
        let header = n.min(self.uncounted);
        self.uncounted -= header;
        let n = n - header;
        self.transfer.up += n as u64;
        self.traffic.up(n);
        self.touch();
    }

    /// `n` bytes went (into rustls) to the client.
    fn sent_down(&mut self, n: usize) {
        self.transfer.down += n as u64;
        self.traffic.down(n);
        self.touch();
    }

    fn flush_client(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        Pin::new(&mut *self.client)
            .poll_flush(cx)
            .map_err(fail(Side::Client, Op::Write))
    }

    /// Ends the tunnel at a gate's stop: send its answer if there is one, close the client
    /// side after it, and stop sending to the backend.
    fn stop(&mut self, stop: G::Stop, cx: &mut Context<'_>) {
        self.gate = None;
        self.stopped = Some(stop);
        if let Some(answer) = G::answer(stop) {
            // After whatever the gate let through that is still on its way.
            self.down_out.bytes.extend_from_slice(&answer);
        }
        if self.up != Dir::Done {
            self.up = Dir::Closing;
            cx.waker().wake_by_ref();
        }
    }

    /// Ends one side of an open tunnel at its hook's word, after what is already on its way
    /// and the hook's last bytes: a FIN to the backend, close_notify and FIN to the client.
    fn say_farewell(&mut self, way: Way) {
        self.farewell = true;
        let last = self.tunnel.last(way).unwrap_or_default();
        let (dir, out) = match way {
            Way::Up => (&mut self.up, &mut self.up_out),
            Way::Down => (&mut self.down, &mut self.down_out),
        };
        out.bytes.extend_from_slice(&last);
        *dir = Dir::Closing;
    }

    /// A backend read failed (typically a reset, after an early answer or in the middle of
    /// a response): what was read has already been queued for the client, so it is written,
    /// then the client's side is cut without close_notify, so a client reading a response
    /// delimited by the close can tell it was cut short. The failure is reported once the
    /// tunnel is done.
    fn backend_gone(&mut self, error: io::Error) {
        self.deferred
            .get_or_insert(fail(Side::Backend, Op::Read)(error));
        self.down = Dir::Closing;
        self.down_cut = true;
    }

    fn touch(&mut self) {
        if self.idle.is_some() || self.close_timer.is_some() {
            self.last_activity = Instant::now();
        }
    }
}

/// Writes as much of `data` as `dst` takes now and keeps the rest in `out` (empty until
/// then), so bytes already taken from the other peer are never dropped; returns how many
/// were written.
fn write_or_keep<W: AsyncWrite + Unpin>(
    dst: &mut W,
    cx: &mut Context<'_>,
    data: &[u8],
    out: &mut Outbox,
) -> io::Result<usize> {
    let n = match Pin::new(dst).poll_write(cx, data) {
        Poll::Pending => 0,
        Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
        Poll::Ready(result) => result?,
    };
    if n < data.len() {
        *out = Outbox::new(data[n..].to_vec());
    }
    Ok(n)
}

/// A TLS peer that closes TCP without close_notify ends its direction like a FIN would.
fn is_eof(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
}
