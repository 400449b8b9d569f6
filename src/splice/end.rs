//! What a tunnel is bounded by ([`Timers`]), what it moved ([`Transfer`]), and how it
//! ended ([`End`], with a [`Failure`] that says which peer and which call).

use std::io;
use std::time::Duration;

/// The splice's timeouts; `None` is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timers {
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

/// One direction's poll: done, or the failure that ended it.
pub(super) type Step = Result<(), Failure>;

/// Tags an I/O error with where it happened.
pub(super) fn fail(side: Side, op: Op) -> impl FnOnce(io::Error) -> Failure {
    move |error| Failure { side, op, error }
}
