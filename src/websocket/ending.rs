//! How a WebSocket ended, in one word for its log line and as the `side` and `code` of
//! `wssbridge_websocket_closes_total`: the first thing that began its end (a close frame, a
//! FIN or reset, one of our timeouts, the drain), whatever followed.
//!
//! Pure: the hook records the first event it sees, the splice's end fills in what the hook
//! could not see (a timeout, a failed write), and [`Report`] says it all.

use crate::metrics::websockets::Ender;
use crate::splice::{End, Side};

use super::frames::{Close, Tally};

/// The first thing that ended a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The client sent a close frame.
    ClientClose,
    /// The backend sent a close frame.
    BackendClose,
    /// The client's side ended without a close frame: close_notify or a TCP FIN.
    ClientFin,
    /// The client's side failed: a reset, a write it no longer took. (A TLS close without
    /// close_notify is an ordinary end of its side, as the splice treats it: `ClientFin`.)
    ClientReset,
    /// The backend's TCP FIN, without a close frame.
    BackendFin,
    /// The backend's connection failed (a reset: the process died with bytes unread).
    BackendReset,
    /// `--idle-timeout`: no byte either way.
    IdleTimeout,
    /// `--close-timeout` (only first when no side was seen to end before it).
    CloseTimeout,
    /// `--send-timeout`: a side stopped reading.
    SendTimeout,
    /// Shutdown's drain (SIGTERM, an upgrade's hand-over): our 1001, or a close.
    Drain,
    /// The shutdown grace ran out with the tunnel still open.
    Shutdown,
}

impl Ending {
    /// The word the log line says.
    pub fn word(self) -> &'static str {
        match self {
            Ending::ClientClose => "client_close",
            Ending::BackendClose => "backend_close",
            Ending::ClientFin => "client_fin",
            Ending::ClientReset => "client_reset",
            Ending::BackendFin => "backend_fin",
            Ending::BackendReset => "backend_reset",
            Ending::IdleTimeout => "idle_timeout",
            Ending::CloseTimeout => "close_timeout",
            Ending::SendTimeout => "send_timeout",
            Ending::Drain => "drain",
            Ending::Shutdown => "shutdown",
        }
    }

    /// The `side` label: who ended it first.
    pub fn ender(self) -> Ender {
        match self {
            Ending::ClientClose | Ending::ClientFin | Ending::ClientReset => Ender::Client,
            Ending::BackendClose | Ending::BackendFin | Ending::BackendReset => Ender::Backend,
            Ending::IdleTimeout
            | Ending::CloseTimeout
            | Ending::SendTimeout
            | Ending::Drain
            | Ending::Shutdown => Ender::Proxy,
        }
    }

    /// A side's read ended: in order (`abruptly` false) or failed.
    pub fn read_ended(client: bool, abruptly: bool) -> Ending {
        match (client, abruptly) {
            (true, false) => Ending::ClientFin,
            (true, true) => Ending::ClientReset,
            (false, false) => Ending::BackendFin,
            (false, true) => Ending::BackendReset,
        }
    }

    /// What the splice's end says when the hook saw nothing end first; `None` is the end of
    /// the shutdown grace (the splice was dropped).
    pub fn from_end<S>(end: Option<&End<S>>) -> Ending {
        match end {
            None => Ending::Shutdown,
            Some(End::IdleTimeout) => Ending::IdleTimeout,
            Some(End::CloseTimeout) => Ending::CloseTimeout,
            Some(End::SendTimeout(_)) => Ending::SendTimeout,
            Some(End::Farewell) => Ending::Drain,
            Some(End::Failed(f)) => match f.side {
                Side::Client => Ending::ClientReset,
                Side::Backend => Ending::BackendReset,
            },
            // Both sides closed in order, the first unseen: the client's, as a browser's
            // tab closing is the common case. The hook sees every read's end, so this is
            // not reached in a tunnel it watched.
            Some(End::Closed | End::Stopped(_)) => Ending::ClientFin,
        }
    }
}

/// What a WebSocket tunnel carried and how it ended: its log line's fields and its sample of
/// `wssbridge_websocket_closes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub ending: Ending,
    /// False when its bytes stopped being WebSocket framing: the counts stop there.
    pub framed: bool,
    /// Client→backend and backend→client frames and messages.
    pub up: Tally,
    pub down: Tally,
    /// The close frame each side sent, if it did.
    pub client_close: Option<Close>,
    pub backend_close: Option<Close>,
    /// At a drain, whether our `1001 Going Away` went to the client.
    pub going_away_sent: bool,
}

impl Report {
    /// The close code the side that ended it first sent: its close frame's, our 1001 at a
    /// drain, none for a FIN, a reset or a timeout.
    pub fn code(&self) -> Option<u16> {
        match self.ending {
            Ending::ClientClose => self.client_close.map(|c| c.code),
            Ending::BackendClose => self.backend_close.map(|c| c.code),
            Ending::Drain | Ending::Shutdown if self.going_away_sent => Some(1001),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ending: Ending) -> Report {
        Report {
            ending,
            framed: true,
            up: Tally::default(),
            down: Tally::default(),
            client_close: Some(Close {
                code: 1000,
                reason: 0,
            }),
            backend_close: Some(Close {
                code: 4001,
                reason: 9,
            }),
            going_away_sent: false,
        }
    }

    #[test]
    fn the_code_is_the_one_the_first_side_sent() {
        assert_eq!(report(Ending::ClientClose).code(), Some(1000));
        assert_eq!(report(Ending::BackendClose).code(), Some(4001));
        assert_eq!(report(Ending::ClientFin).code(), None);
        assert_eq!(report(Ending::IdleTimeout).code(), None);
        assert_eq!(report(Ending::Drain).code(), None);
        let drained = Report {
            going_away_sent: true,
            ..report(Ending::Drain)
        };
        assert_eq!(drained.code(), Some(1001));
    }

    #[test]
    fn timeouts_the_drain_and_the_grace_are_the_proxy_s() {
        for ending in [
            Ending::IdleTimeout,
            Ending::CloseTimeout,
            Ending::SendTimeout,
            Ending::Drain,
            Ending::Shutdown,
        ] {
            assert_eq!(ending.ender(), Ender::Proxy, "{ending:?}");
        }
        assert_eq!(Ending::read_ended(true, true).ender(), Ender::Client);
        assert_eq!(Ending::read_ended(false, false).ender(), Ender::Backend);
        assert_eq!(Ending::from_end::<()>(None), Ending::Shutdown);
        assert_eq!(
            Ending::from_end::<()>(Some(&End::IdleTimeout)),
            Ending::IdleTimeout
        );
    }
}
