//! The handshake's last writes, held back to leave with the first answer.
//!
//! A TLS 1.3 server sends its session tickets the moment the handshake ends, in a write of
//! their own, and the answer to the request that came with the client's Finished follows in
//! another. For a short request that is one more system call here, one more segment, and one
//! more wake-up and read for the client. `Coalesce` sits under rustls and holds what rustls
//! writes during the handshake, letting it go:
//! - while the handshake runs, as soon as a read finds the socket empty: the client may be
//!   waiting for those bytes, so they leave before anything waits (one write per flight, as
//!   without this layer);
//! - once the handshake is over with the request already in hand (`handshake_done(true)`),
//!   with the next write: tickets and answer in one;
//! - otherwise (TLS 1.2, whose last flight the client needs; a client that has not sent its
//!   request yet), like during the handshake, or with the next write or flush.
//!
//! What is held is a few hundred bytes (two tickets) up to a certificate chain, freed once
//! sent. A handshake that fails hands the socket back (`release` sends the alert first).

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// More than any handshake flight: beyond this, writes go straight through.
const HOLD_MAX: usize = 64 * 1024;

pub struct Coalesce<T> {
    inner: T,
    /// Bytes written but not sent yet (from `pos`); no allocation when none are.
    held: Vec<u8>,
    pos: usize,
    /// New writes are held (the handshake is running).
    collecting: bool,
    /// Held bytes leave when a read finds the socket empty (else only with the next write).
    release_on_wait: bool,
}

impl<T> Coalesce<T> {
    /// Starts holding: the handshake is about to run.
    pub fn new(inner: T) -> Self {
        Coalesce {
            inner,
            held: Vec::new(),
            pos: 0,
            collecting: true,
            release_on_wait: true,
        }
    }

    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// The handshake is over: later writes go straight through. With `request_in_hand`,
    /// what it left (the tickets) waits for the first of them, the answer.
    pub fn handshake_done(&mut self, request_in_hand: bool) {
        self.collecting = false;
        self.release_on_wait = !request_in_hand;
    }

    fn holds(&self) -> bool {
        self.pos < self.held.len()
    }

    fn advance(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.held.len() {
            self.held = Vec::new();
            self.pos = 0;
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Sends everything held.
    pub fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.holds() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Sends everything held, then drops the socket: the alert of a failed handshake.
    pub async fn release(mut self) {
        let _ = std::future::poll_fn(|cx| self.poll_release(cx)).await;
    }

    /// Sends `alert` after whatever is held, then drops the socket: a handshake refused
    /// before rustls took it on.
    pub async fn refuse(mut self, alert: &[u8]) {
        self.held.extend_from_slice(alert);
        self.release().await;
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending if this.release_on_wait && this.holds() => {
                // About to wait for the client, which may be waiting for these.
                ready!(this.poll_release(cx))?;
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if this.collecting && this.held.len() - this.pos + len <= HOLD_MAX {
            for b in bufs {
                this.held.extend_from_slice(b);
            }
            return Poll::Ready(Ok(len));
        }
        if this.collecting {
            // Too much to hold: what is held goes first, then this.
            ready!(this.poll_release(cx))?;
        }
        while this.holds() {
            // Held bytes first, in the same system call as these.
            let rest = this.held.len() - this.pos;
            let mut slices = Vec::with_capacity(bufs.len() + 1);
            slices.push(IoSlice::new(&this.held[this.pos..]));
            slices.extend_from_slice(bufs);
            let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &slices))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            this.advance(n.min(rest));
            if n > rest {
                return Poll::Ready(Ok(n - rest));
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// During the handshake (and while tickets wait for the answer) a flush sends nothing:
    /// tokio-rustls flushes after every flight, and the rules above decide instead. So,
    /// unlike `AsyncWrite`'s contract, `Ok` here does not mean all is sent: only that
    /// nothing the client needs to go on is held.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.collecting && this.release_on_wait {
            ready!(this.poll_release(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    /// Whether a read on `c` (whose peer sends nothing) waits, as rustls's reads do when the
    /// client is quiet.
    async fn read_waits(c: &mut Coalesce<DuplexStream>) -> bool {
        let mut buf = [0u8; 16];
        tokio::time::timeout(Duration::from_millis(20), c.read(&mut buf))
            .await
            .is_err()
    }

    /// What the peer has received so far (nothing if nothing came within a moment).
    async fn received(peer: &mut DuplexStream) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(20), peer.read(&mut buf)).await {
            Ok(n) => buf[..n.expect("read")].to_vec(),
            Err(_) => Vec::new(),
        }
    }

    #[tokio::test]
    async fn handshake_flights_leave_when_a_read_finds_nothing() {
        let (ours, mut peer) = duplex(64 * 1024);
        let mut c = Coalesce::new(ours);
        c.write_all(b"server flight").await.expect("write");
        c.flush().await.expect("flush");
        assert_eq!(received(&mut peer).await, b"");
        assert!(read_waits(&mut c).await);
        assert_eq!(received(&mut peer).await, b"server flight");
    }

    #[tokio::test]
    async fn tickets_wait_for_the_answer_when_the_request_is_in_hand() {
        let (ours, mut peer) = duplex(64 * 1024);
        let mut c = Coalesce::new(ours);
        c.write_all(b"tickets;").await.expect("write");
        c.handshake_done(true);
        assert!(read_waits(&mut c).await);
        c.flush().await.expect("flush");
        assert_eq!(received(&mut peer).await, b"", "held until the answer");
        c.write_all(b"answer").await.expect("write");
        assert_eq!(received(&mut peer).await, b"tickets;answer");
        assert_eq!(c.held.capacity(), 0, "sent: nothing may stay allocated");
        // Later writes go straight through.
        c.write_all(b"more").await.expect("write");
        assert_eq!(received(&mut peer).await, b"more");
    }

    #[tokio::test]
    async fn without_a_request_held_bytes_leave_when_reading_waits_or_on_flush() {
        let (ours, mut peer) = duplex(64 * 1024);
        let mut c = Coalesce::new(ours);
        c.write_all(b"last flight").await.expect("write");
        c.handshake_done(false);
        assert!(read_waits(&mut c).await);
        assert_eq!(received(&mut peer).await, b"last flight");

        let (ours, mut peer) = duplex(64 * 1024);
        let mut c = Coalesce::new(ours);
        c.write_all(b"last flight").await.expect("write");
        c.handshake_done(false);
        c.flush().await.expect("flush");
        assert_eq!(received(&mut peer).await, b"last flight");
    }

    #[tokio::test]
    async fn shutdown_sends_what_is_held() {
        let (ours, mut peer) = duplex(64 * 1024);
        let mut c = Coalesce::new(ours);
        c.write_all(b"tickets").await.expect("write");
        c.handshake_done(true);
        c.shutdown().await.expect("shutdown");
        let mut all = Vec::new();
        peer.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"tickets");
    }

    /// A socket that takes a few bytes at a time: held bytes and the answer arrive whole and
    /// in order however the writes are cut.
    #[tokio::test]
    async fn partial_writes_lose_nothing() {
        let (ours, mut peer) = duplex(7);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            peer.read_to_end(&mut all).await.expect("read");
            all
        });
        let mut c = Coalesce::new(ours);
        let held: Vec<u8> = (0..100u8).collect();
        let answer: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        c.write_all(&held).await.expect("write");
        c.handshake_done(true);
        c.write_all(&answer).await.expect("write");
        c.shutdown().await.expect("shutdown");
        drop(c);
        let all = reader.await.expect("reader");
        assert_eq!(all, [held, answer].concat());
    }
}
