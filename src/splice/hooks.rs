//! What the other stages implement or build to plug into the splice: the [`Gate`] that
//! `http` puts in front of the copy until a `101`, the [`Tunnel`] hook `websocket` watches an
//! open tunnel with, the [`Client`] side `tls` provides, what was read before the copy
//! ([`Preread`]), and shutdown's requests ([`Drain`], [`Watch`]). Types only, and `Drain`'s
//! few lines: the copy itself is in the files beside this one.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncWrite};
use tokio::time::Sleep;

/// What may pass while the connection is not yet a blind tunnel.
pub trait Gate {
    /// Why the gate ended the connection, for the caller's log.
    type Reason: Copy + fmt::Debug;

    /// Takes client bytes: appends to `out` what may go to the backend and returns how many
    /// bytes of `input` it took. Taking none and passing none means: hold them until
    /// something from the backend changes that ([`Gate::take_changed`]).
    fn client(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize;

    /// Takes backend bytes: appends to `out` what may go to the client and returns how many
    /// bytes of `input` it took. Once the gate is open it takes no more: the rest of `input`
    /// is tunnel data.
    fn backend(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Halt<Self::Reason>>;

    /// True once the tunnel is blind: the gate is dropped.
    fn is_open(&self) -> bool;

    /// The protocol the tunnel opened to (an `Upgrade` token), told to the tunnel hook.
    fn opened_to(&self) -> Option<&str>;

    /// Whether held client bytes may move now (reading it resets it).
    fn take_changed(&mut self) -> bool;

    /// Set when the connection must end now that everything before the stop has passed.
    fn finished(&self) -> Option<Self::Reason>;

    /// What to send the client before closing after `stop`, if anything.
    fn answer(stop: Self::Reason) -> Option<Vec<u8>>;

    /// What the gate waits for from the client now, if anything. The splice bounds each
    /// wait by its timeout ([`Timers::keepalive`](super::Timers::keepalive), [`Timers::head`](super::Timers::head)) and calls
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
    /// Between messages, nothing of the next one has come (`Timers::keepalive`).
    Next(u64),
    /// A message's head has begun and is not complete (`Timers::head`).
    Head(u64),
    /// A message's body is on its way; the number is how much of it has come, so each read
    /// restarts the clock (`Timers::body`). Not counted while the backend holds the body
    /// back (its bytes wait for it): that is `Timers::send`'s.
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
    pub(super) fn poll_asked(&mut self, cx: &mut Context<'_>) -> bool {
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

    /// Reading `way` ended: in order (the client's close_notify or EOF, the backend's FIN),
    /// or `abruptly` (a failed read: a reset). Told once the tunnel is open, once per way.
    fn ended(&mut self, _way: Way, _abruptly: bool) {}

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

/// A hook the caller keeps: what it learnt outlives the splice (and a splice dropped at the
/// end of the shutdown grace).
impl<T: Tunnel> Tunnel for &mut T {
    const DRAINS: bool = T::DRAINS;

    fn up(&mut self, bytes: &[u8]) {
        (**self).up(bytes)
    }

    fn down(&mut self, bytes: &[u8]) {
        (**self).down(bytes)
    }

    fn ended(&mut self, way: Way, abruptly: bool) {
        (**self).ended(way, abruptly)
    }

    fn drain(&mut self) {
        (**self).drain()
    }

    fn opened(&mut self, protocol: Option<&str>) {
        (**self).opened(protocol)
    }

    fn room(&self, way: Way) -> Option<usize> {
        (**self).room(way)
    }

    fn last(&mut self, way: Way) -> Option<Vec<u8>> {
        (**self).last(way)
    }
}
