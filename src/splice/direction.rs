//! One direction of the copy, written once and used twice (client→backend, `up`;
//! backend→client, `down`): where its close stands, the bytes on their way to its receiver,
//! and since when they have waited without progress (what `--send-timeout` bounds). How each
//! direction reads and writes is its own (`up.rs`, `down.rs`); what they share is here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tokio::time::Instant;

/// Where a direction's close stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum Dir {
    #[default]
    Open,
    /// EOF seen; passing the close on.
    Closing,
    Done,
}

/// One direction: its close, its output, its stall.
#[derive(Default)]
pub(super) struct Direction {
    pub(super) state: Dir,
    /// Bytes on their way to the receiver: approved by the gate, or left over when the
    /// receiver could not take all of a read.
    pub(super) out: Outbox,
    /// The sender's own buffer holds bytes the receiver would not take (client→backend:
    /// rustls's plaintext, written without a copy).
    pub(super) blocked: bool,
    /// Since when output has waited for the receiver, and how much the receiver had taken
    /// then: a change in that count is progress.
    stalled: Option<(Instant, u64)>,
}

impl Direction {
    /// A direction whose first output is `first` (the first head, for client→backend).
    pub(super) fn with_output(first: Vec<u8>) -> Direction {
        Direction {
            out: Outbox::new(first),
            ..Direction::default()
        }
    }

    pub(super) fn is_done(&self) -> bool {
        self.state == Dir::Done
    }

    /// Whether output waits for the receiver: in this direction's buffers, or (`unsent`) in
    /// the receiver's own (rustls's encrypted bytes, for the client).
    pub(super) fn waiting(&self, unsent: bool) -> bool {
        !self.is_done() && (self.out.pending() || self.blocked || unsent)
    }

    /// Follows a stall: `waiting` says whether output waits now, `taken` how much the
    /// receiver has taken so far. Returns since when it has waited with no progress.
    pub(super) fn stall(&mut self, waiting: bool, taken: u64, now: Instant) -> Option<Instant> {
        self.stalled = match (waiting, self.stalled) {
            (false, _) => None,
            (true, Some((since, mark))) if mark == taken => Some((since, mark)),
            (true, _) => Some((now, taken)),
        };
        self.stalled.map(|(since, _)| since)
    }

    /// Ends this direction in order after what is already on its way and `last`: the close
    /// is passed on once they are written.
    pub(super) fn close_after(&mut self, last: &[u8]) {
        self.out.bytes.extend_from_slice(last);
        self.state = Dir::Closing;
    }
}

/// Bytes waiting to be written, released as soon as they are.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) bytes: Vec<u8>,
    pub(super) pos: usize,
}

impl Outbox {
    pub(super) fn new(bytes: Vec<u8>) -> Self {
        Outbox { bytes, pos: 0 }
    }

    pub(super) fn rest(&self) -> &[u8] {
        &self.bytes[self.pos..]
    }

    /// Whether bytes wait to be written.
    pub(super) fn pending(&self) -> bool {
        self.pos < self.bytes.len()
    }

    /// Marks `n` bytes written; frees the buffer once all are.
    pub(super) fn advance(&mut self, n: usize) -> io::Result<()> {
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

/// Writes as much of `data` as `dst` takes now and keeps the rest in `out` (empty until
/// then), so bytes already taken from the other peer are never dropped; returns how many
/// were written.
pub(super) fn write_or_keep<W: AsyncWrite + Unpin>(
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
pub(super) fn is_eof(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_stall_counts_from_the_last_progress_and_ends_when_nothing_waits() {
        let mut d = Direction::with_output(b"head".to_vec());
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        assert!(d.waiting(false));
        assert_eq!(d.stall(d.waiting(false), 0, t0), Some(t0));
        // No progress: the same start.
        assert_eq!(d.stall(true, 0, t1), Some(t0));
        // The receiver took something: counted again from now.
        assert_eq!(d.stall(true, 3, t1), Some(t1));
        // Written out: nothing waits, no stall.
        d.out.advance(4).unwrap();
        assert!(!d.waiting(false));
        assert_eq!(d.stall(d.waiting(false), 4, t1), None);
        // The receiver's own unsent bytes count as waiting; a finished direction never does.
        assert!(d.waiting(true));
        d.state = Dir::Done;
        assert!(!d.waiting(true));
    }

    #[test]
    fn the_outbox_frees_its_buffer_once_written_and_refuses_a_zero_write() {
        let mut out = Outbox::new(b"abcdef".to_vec());
        assert!(out.pending());
        out.advance(2).unwrap();
        assert_eq!(out.rest(), b"cdef");
        assert_eq!(out.advance(0).unwrap_err().kind(), io::ErrorKind::WriteZero);
        out.advance(4).unwrap();
        assert!(!out.pending());
        assert_eq!(out.bytes.capacity(), 0, "the buffer is let go");
    }

    #[test]
    fn closing_after_last_bytes_keeps_them_behind_what_was_on_its_way() {
        let mut d = Direction::with_output(b"frame".to_vec());
        d.close_after(b"close");
        assert_eq!(d.state, Dir::Closing);
        assert_eq!(d.out.rest(), b"frameclose");
    }
}
