//! Larger reads from the client's socket, underneath rustls; and the bytes read before a
//! stage began (`with_early`: what the accept loop read looking for a PROXY header), handed
//! on first. The TLS stage and the plain-HTTP redirect listener both read through it, so it
//! belongs to neither: a leaf.
//!
//! rustls reads TLS records into its own buffer with at most one record's room (about
//! 16 KiB, and only 4 KiB when its buffer was empty), so a client uploading at full speed
//! costs at least one system call per record. `ReadAhead` sits between rustls and the socket:
//! once a read shows the client sending in bulk (it filled all the room rustls offered), it
//! reads up to 64 KiB at a time and hands rustls record-sized pieces from memory.
//!
//! The 64 KiB is allocated for each large read (not zeroed) and freed as soon as rustls has
//! taken all of it. Small messages (chat, pings, the handshake) are read straight into
//! rustls's buffer and never allocate it, so an idle tunnel holds nothing here.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::io::poll_read_buf;

/// Four TLS records and their headers: one system call brings in what rustls would have read
/// in four or more.
const AHEAD: usize = 64 * 1024;

/// A stream whose reads come in 64 KiB pieces while its peer is sending in bulk; writes pass
/// straight through.
pub struct ReadAhead<T> {
    inner: T,
    /// Bytes read but not yet handed on (from `pos`); empty, with no allocation, whenever
    /// everything read has been handed on.
    buf: Vec<u8>,
    pos: usize,
    /// The last read filled all the room it was given: more is probably waiting.
    bulk: bool,
    /// Bytes written to the socket so far, for `--send-timeout` to see progress.
    written: u64,
}

impl<T> ReadAhead<T> {
    pub fn new(inner: T) -> Self {
        ReadAhead::with_early(inner, Vec::new())
    }

    /// A stream whose first bytes were already read (after a PROXY header): they are handed
    /// on first.
    pub fn with_early(inner: T, early: Vec<u8>) -> Self {
        ReadAhead {
            inner,
            buf: early,
            pos: 0,
            bulk: false,
            written: 0,
        }
    }

    /// Bytes written to the socket so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes read from the socket and not yet handed on.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether a read-ahead buffer is held (for tests of the idle-memory promise).
    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        self.buf.capacity() > 0
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let room = out.remaining();
        if room == 0 {
            // Never read zero bytes into no room: rustls would take it for EOF.
            return Poll::Ready(Ok(()));
        }
        if this.pos < this.buf.len() {
            let n = room.min(this.buf.len() - this.pos);
            out.put_slice(&this.buf[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.buf.len() {
                // All handed on: give the memory back now, not at the next read, which may
                // never come (the client's close_notify arrived with its last bytes).
                this.buf = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        if !this.bulk || room >= AHEAD {
            ready!(Pin::new(&mut this.inner).poll_read(cx, out))?;
            this.bulk = out.remaining() == 0;
            return Poll::Ready(Ok(()));
        }
        // Bulk: one large read, into fresh memory that is not zeroed first.
        let mut ahead = Vec::with_capacity(AHEAD);
        match poll_read_buf(Pin::new(&mut this.inner), cx, &mut ahead) {
            Poll::Pending => {
                // The socket is empty: the burst is over.
                this.bulk = false;
                Poll::Pending
            }
            Poll::Ready(Ok(n)) if n > 0 => {
                let give = room.min(n);
                out.put_slice(&ahead[..give]);
                if give < n {
                    (this.buf, this.pos) = (ahead, give);
                }
                Poll::Ready(Ok(()))
            }
            // EOF or an error.
            Poll::Ready(other) => {
                this.bulk = false;
                Poll::Ready(other.map(|_| ()))
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ReadAhead<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.written += n as u64;
        Poll::Ready(Ok(n))
    }

    /// rustls writes several records at once through this: without it they would go one
    /// system call each.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        this.written += n as u64;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads in rustls's pattern (small room each time) until `want` bytes have come.
    async fn read_in_pieces(
        r: &mut ReadAhead<tokio::io::DuplexStream>,
        room: usize,
        want: usize,
    ) -> Vec<u8> {
        let mut got = Vec::new();
        let mut piece = vec![0u8; room];
        while got.len() < want {
            let n = r.read(&mut piece).await.expect("read");
            assert!(n > 0, "early EOF after {} bytes", got.len());
            got.extend_from_slice(&piece[..n]);
        }
        got
    }

    #[tokio::test]
    async fn bulk_reads_are_exact_and_the_buffer_goes_once_handed_on() {
        let (mut tx, rx) = tokio::io::duplex(256 * 1024);
        let mut r = ReadAhead::new(rx);
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&sent).await.expect("write");
        // A full direct read switches to bulk; the next read takes 64 KiB at once.
        let mut got = read_in_pieces(&mut r, 4096, 4096).await;
        assert!(r.bulk, "a full read should switch to bulk reads");
        got.extend(read_in_pieces(&mut r, 4096, 4096).await);
        assert!(r.holds_buffer(), "a bulk read should read ahead");
        got.extend(read_in_pieces(&mut r, 4096, sent.len() - got.len()).await);
        assert_eq!(got, sent);
        assert!(
            !r.holds_buffer(),
            "everything was handed on: nothing may be held"
        );

        // The socket is now empty: the next read waits and ends the burst.
        let mut piece = [0u8; 4096];
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(50), r.read(&mut piece)).await;
        assert!(waiting.is_err(), "nothing was sent, nothing may be read");
        assert!(!r.holds_buffer() && !r.bulk);

        // Small messages afterwards are read directly.
        tx.write_all(b"ping").await.expect("write");
        assert_eq!(read_in_pieces(&mut r, 4096, 4).await, b"ping");
        assert!(!r.holds_buffer());
        drop(tx);
        assert_eq!(r.read(&mut piece).await.expect("eof"), 0);
    }

    #[tokio::test]
    async fn small_messages_never_allocate() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        let mut r = ReadAhead::new(rx);
        for i in 0..100u8 {
            tx.write_all(&[i; 100]).await.expect("write");
            assert_eq!(read_in_pieces(&mut r, 4096, 100).await, [i; 100]);
            assert!(!r.holds_buffer() && !r.bulk);
        }
    }
}
