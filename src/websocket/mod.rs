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

pub mod frames;

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::splice::{Tunnel, Way};
use frames::{Frames, Sender};

/// The window the tunnels' ends are spread over, so their reconnects are too.
pub const SPREAD: Duration = Duration::from_millis(1500);

/// The WebSocket tunnel hook: frame boundaries each way, and a close frame at shutdown.
#[derive(Debug, Clone)]
pub struct Farewell {
    /// Client→backend frames (masked) and backend→client frames.
    up: Frames,
    down: Frames,
    /// `None` for a tunnel that is not a WebSocket: it is not followed, and not ended here
    /// (the shutdown grace ends it).
    asked: Option<bool>,
}

impl Farewell {
    /// For a tunnel that will carry WebSocket frames.
    pub fn websocket() -> Farewell {
        Farewell {
            up: Frames::new(Sender::Client),
            down: Frames::new(Sender::Server),
            asked: Some(false),
        }
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
}

impl Tunnel for Farewell {
    const DRAINS: bool = true;

    fn up(&mut self, bytes: &[u8]) {
        if self.asked.is_some() {
            self.up.feed(bytes);
        }
    }

    fn down(&mut self, bytes: &[u8]) {
        if self.asked.is_some() {
            self.down.feed(bytes);
        }
    }

    fn drain(&mut self) {
        if let Some(asked) = &mut self.asked {
            *asked = true;
        }
    }

    /// The tunnel is what its `101` opened, whichever request asked: a WebSocket opened by a
    /// later request on a keep-alive connection is followed from its first byte, and a hook
    /// set up for a first request's WebSocket upgrade that was refused goes inert when a later
    /// request opens another protocol.
    fn opened(&mut self, protocol: Option<&str>) {
        if self.asked != Some(true) {
            *self = Farewell::for_upgrade(protocol);
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
            Way::Down => frames::GOING_AWAY.to_vec(),
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
