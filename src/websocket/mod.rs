//! The one exception to the blind tunnel: at shutdown, a WebSocket tunnel is ended the way
//! the protocol ends one, so browsers and socket.io see a clean close (`1001 Going Away`)
//! and reconnect at once, instead of a transport error (1006).
//!
//! [`Farewell`] is the splice's tunnel hook (`splice::Tunnel`). Until shutdown asks, it only
//! follows where frames end, each way ([`frames`]: header bytes, a length, a skip over the
//! payload; never a copy, never an unmask). Once asked, it lets each side run to the end of
//! the frame under way (a frame the backend is mid-way through writing is passed on whole),
//! then sends the close frame: unmasked to the client, masked to the backend, as each expects
//! from its peer; the splice then closes that side (close_notify and FIN; FIN). A stream
//! that turned out not to be WebSocket framing is closed without a frame.
//!
//! The same reading tells the operator what no peer tells them: frames and messages each way
//! (message sizes counted per route as they go), the close code each side sent, and who
//! began the end ([`ending`]); the connection's log line and
//! `wssbridge_websocket_closes_total` say it when the tunnel ends ([`Farewell::report`]).

pub mod ending;
pub mod frames;

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::metrics::websockets::{Direction, Open, RouteWebSockets};
use crate::splice::{End, Tunnel, Way};
use ending::{Ending, Report};
use frames::{Frames, Sender};

/// The window the tunnels' ends are spread over, so their reconnects are too.
pub const SPREAD: Duration = Duration::from_millis(1500);

/// The WebSocket tunnel hook: frame boundaries each way, and a close frame at shutdown.
#[derive(Debug)]
pub struct Farewell {
    /// Client→backend frames (masked) and backend→client frames.
    up: Frames,
    down: Frames,
    /// `None` for a tunnel that is not a WebSocket: it is not followed, and not ended here
    /// (the shutdown grace ends it).
    asked: Option<bool>,
    /// The route's counts: message sizes as they go, the end when it comes.
    counts: Option<Arc<RouteWebSockets>>,
    /// Among the route's open tunnels since the `101`.
    open: Option<Open>,
    /// The first thing seen to end the tunnel.
    first: Option<Ending>,
    /// Our `1001 Going Away` went to the client.
    going_away_sent: bool,
}

impl Farewell {
    /// For a tunnel that will carry WebSocket frames.
    pub fn websocket() -> Farewell {
        Farewell {
            up: Frames::new(Sender::Client),
            down: Frames::new(Sender::Server),
            asked: Some(false),
            counts: None,
            open: None,
            first: None,
            going_away_sent: false,
        }
    }

    /// Counts into the route's `counts`.
    pub fn counted(mut self, counts: Arc<RouteWebSockets>) -> Farewell {
        self.counts = Some(counts);
        self
    }

    /// For any other tunnel: inert.
    pub fn off() -> Farewell {
        let mut off = Farewell::websocket();
        off.asked = None;
        off
    }

    /// `websocket()` when `protocol` (an `Upgrade` token, lower-case) is WebSocket.
    pub fn for_upgrade(protocol: Option<&str>) -> Farewell {
        match protocol {
            Some("websocket") => Farewell::websocket(),
            _ => Farewell::off(),
        }
    }

    /// Whether this hook follows a WebSocket (not inert).
    pub fn is_websocket(&self) -> bool {
        self.asked.is_some()
    }

    fn frames(&self, way: Way) -> &Frames {
        match way {
            Way::Up => &self.up,
            Way::Down => &self.down,
        }
    }

    fn first(&mut self, ending: Ending) {
        self.first.get_or_insert(ending);
    }

    /// Once the tunnel has ended (`end` is the splice's, `None` when the shutdown grace
    /// ended it): what it carried and how it ended, counted in the route's
    /// `wssbridge_websocket_*` metrics. `None` for a tunnel that was not a WebSocket or
    /// never opened.
    pub fn report<S>(&self, end: Option<&End<S>>) -> Option<Report> {
        let open = self.open.as_ref()?;
        self.asked?;
        let report = Report {
            ending: self.first.unwrap_or_else(|| Ending::from_end(end)),
            framed: !self.up.lost() && !self.down.lost(),
            up: self.up.tally(),
            down: self.down.tally(),
            client_close: self.up.close(),
            backend_close: self.down.close(),
            going_away_sent: self.going_away_sent,
        };
        if let Some(counts) = &self.counts {
            let lasted = open.since().elapsed();
            counts.ended(report.ending.ender(), report.code(), lasted, report.framed);
        }
        Some(report)
    }
}

/// Inert, until the pipeline knows what the first request asked for.
impl Default for Farewell {
    fn default() -> Self {
        Farewell::off()
    }
}

impl Tunnel for Farewell {
    const DRAINS: bool = true;

    fn up(&mut self, bytes: &[u8]) {
        if self.asked.is_some() {
            let counts = self.counts.as_deref();
            self.up.feed(bytes, |size| {
                if let Some(counts) = counts {
                    counts.message(Direction::ClientToBackend, size);
                }
            });
            if self.first.is_none() && self.up.closed() {
                self.first = Some(Ending::ClientClose);
            }
        }
    }

    fn down(&mut self, bytes: &[u8]) {
        if self.asked.is_some() {
            let counts = self.counts.as_deref();
            self.down.feed(bytes, |size| {
                if let Some(counts) = counts {
                    counts.message(Direction::BackendToClient, size);
                }
            });
            if self.first.is_none() && self.down.closed() {
                self.first = Some(Ending::BackendClose);
            }
        }
    }

    fn ended(&mut self, way: Way, abruptly: bool) {
        if self.asked.is_some() {
            self.first(Ending::read_ended(way == Way::Up, abruptly));
        }
    }

    fn drain(&mut self) {
        if let Some(asked) = &mut self.asked {
            *asked = true;
            self.first(Ending::Drain);
        }
    }

    /// The tunnel is what its `101` opened, whichever request asked: a WebSocket opened by a
    /// later request on a keep-alive connection is followed from its first byte, and a hook
    /// set up for a first request's WebSocket upgrade that was refused goes inert when a later
    /// request opens another protocol.
    fn opened(&mut self, protocol: Option<&str>) {
        if self.asked != Some(true) {
            let counts = self.counts.take();
            *self = Farewell::for_upgrade(protocol);
            if self.is_websocket() {
                self.open = counts.as_ref().map(|c| c.opened(Instant::now()));
                self.counts = counts;
            }
        }
    }

    fn room(&self, way: Way) -> Option<usize> {
        if self.asked != Some(true) {
            return None;
        }
        let left = self.frames(way).to_boundary().unwrap_or(0);
        Some(usize::try_from(left).unwrap_or(usize::MAX))
    }

    fn last(&mut self, way: Way) -> Option<Vec<u8>> {
        let frames = self.frames(way);
        if frames.lost() || frames.closed() {
            return None;
        }
        Some(match way {
            Way::Down => {
                self.going_away_sent = true;
                frames::GOING_AWAY.to_vec()
            }
            Way::Up => {
                frames::going_away_masked(random().to_le_bytes()[..4].try_into().ok()?).to_vec()
            }
        })
    }
}

/// A random number from the standard library's per-process random keys: enough for a masking
/// key (whose job is to keep a tunnel's bytes from reading as plain HTTP to middle boxes) and
/// for spreading closes in time.
pub fn random() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// A delay in `[0, SPREAD)`: when, after shutdown's close, this tunnel ends.
pub fn jitter() -> Duration {
    let spread = SPREAD.as_millis() as u64;
    Duration::from_millis(random() % spread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inert_hook_never_bounds_a_tunnel() {
        let mut off = Farewell::for_upgrade(Some("h2c"));
        off.down(&[0x81, 0x05, b'h']);
        off.drain();
        assert_eq!(off.room(Way::Down), None);
        assert_eq!(off.room(Way::Up), None);
    }

    #[test]
    fn asked_mid_frame_it_lets_the_frame_finish_then_says_going_away() {
        let mut hook = Farewell::for_upgrade(Some("websocket"));
        hook.down(&[0x82, 0x05, 1, 2]);
        assert_eq!(hook.room(Way::Down), None, "not asked yet");
        hook.drain();
        assert_eq!(hook.room(Way::Down), Some(3));
        assert_eq!(hook.room(Way::Up), Some(0));
        hook.down(&[3, 4, 5]);
        assert_eq!(hook.room(Way::Down), Some(0));
        assert_eq!(hook.last(Way::Down), Some(frames::GOING_AWAY.to_vec()));
        let masked = hook.last(Way::Up).expect("a close for the backend");
        assert_eq!(masked.len(), 8);
        assert_eq!(&masked[..2], &[0x88, 0x82]);
    }

    #[test]
    fn a_side_that_already_carried_a_close_gets_no_second_one() {
        let mut hook = Farewell::websocket();
        hook.down(&frames::GOING_AWAY);
        hook.drain();
        assert_eq!(hook.room(Way::Down), Some(0));
        assert_eq!(hook.last(Way::Down), None);
    }

    #[test]
    fn a_stream_that_is_not_websocket_is_closed_without_a_frame() {
        let mut hook = Farewell::websocket();
        hook.down(b"HTTP/1.1 200 OK\r\n\r\n");
        hook.drain();
        assert_eq!(hook.room(Way::Down), Some(0));
        assert_eq!(hook.last(Way::Down), None);
    }

    #[test]
    fn the_protocol_the_101_opened_decides() {
        let mut refused_then_other = Farewell::for_upgrade(Some("websocket"));
        refused_then_other.opened(Some("h2c"));
        assert!(!refused_then_other.is_websocket());
        let mut later = Farewell::off();
        later.opened(Some("websocket"));
        assert!(later.is_websocket());
    }

    #[test]
    fn jitter_spreads_within_the_window() {
        let delays: Vec<Duration> = (0..200).map(|_| jitter()).collect();
        assert!(delays.iter().all(|d| *d < SPREAD));
        let early = delays.iter().filter(|d| **d < SPREAD / 2).count();
        assert!(
            (40..160).contains(&early),
            "{early} of 200 in the first half"
        );
    }
}
