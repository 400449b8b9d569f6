//! For the splice's own tests: a client in memory (the user's end is a `DuplexStream`), a
//! backend on loopback (the splice takes a `TcpStream`), and a blind splice between them.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{
    AsyncBufRead, AsyncRead, AsyncWrite, BufReader, DuplexStream, ReadBuf, ReadHalf, WriteHalf,
};
use tokio::net::{TcpListener, TcpStream};

use super::{Client, End, Gate, Halt, Preread, Timers, Transfer, Wait, Watch};
use crate::metrics::Traffic;

/// The client's side as the splice sees it: plaintext in memory, with rustls's queue
/// imitated (`queue` holds bytes until a flush) and how it ended recorded.
pub struct Memory {
    read: BufReader<ReadHalf<DuplexStream>>,
    write: WriteHalf<DuplexStream>,
    queued: Vec<u8>,
    written: u64,
    /// Ended by `poll_cut` (no close_notify) rather than `poll_shutdown`.
    pub cut: Arc<AtomicBool>,
}

/// A client in memory and the user's end of it.
pub fn memory_client() -> (Memory, DuplexStream) {
    let (ours, user) = tokio::io::duplex(256 * 1024);
    let (read, write) = tokio::io::split(ours);
    let client = Memory {
        read: BufReader::new(read),
        write,
        queued: Vec::new(),
        written: 0,
        cut: Arc::default(),
    };
    (client, user)
}

/// The backend's socket as the splice holds it, and the app's end.
pub async fn backend_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ours = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (app, _) = listener.accept().await.unwrap();
    (ours, app)
}

/// Splices `client` and `backend` blind (no gate) until the tunnel ends.
pub async fn blind(client: &mut Memory, backend: &mut TcpStream, timeouts: Timers) -> End<()> {
    let traffic = Traffic::default();
    let mut transfer = Transfer::default();
    let watch = Watch::<NoGate, ()> {
        gate: None,
        drain: None,
        tunnel: (),
        close: None,
    };
    let preread = Preread::default();
    super::splice(
        client,
        backend,
        preread,
        watch,
        timeouts,
        &mut transfer,
        &traffic,
    )
    .await
}

/// A gate that is never there (the tunnel is blind from the start).
pub struct NoGate;

impl Gate for NoGate {
    type Reason = ();
    fn client(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        out.extend_from_slice(input);
        input.len()
    }
    fn backend(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Halt<()>> {
        out.extend_from_slice(input);
        Ok(input.len())
    }
    fn is_open(&self) -> bool {
        true
    }
    fn opened_to(&self) -> Option<&str> {
        None
    }
    fn take_changed(&mut self) -> bool {
        false
    }
    fn finished(&self) -> Option<()> {
        None
    }
    fn answer(_: ()) -> Option<Vec<u8>> {
        None
    }
    fn waiting(&self) -> Option<Wait> {
        None
    }
    fn expired(&mut self, _: Wait) {}
    fn drain(&mut self) {}
}

/// `len` bytes of a pattern that shows a lost or reordered byte.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

impl AsyncRead for Memory {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncBufRead for Memory {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().read).poll_fill_buf(cx)
    }

    fn consume(mut self: Pin<&mut Self>, n: usize) {
        Pin::new(&mut self.read).consume(n)
    }
}

impl AsyncWrite for Memory {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.queued.extend_from_slice(data);
        let _ = self.as_mut().poll_flush(cx)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queued.is_empty() {
            let this = &mut *self;
            let n = ready!(Pin::new(&mut this.write).poll_write(cx, &this.queued))?;
            this.queued.drain(..n);
            this.written += n as u64;
        }
        Pin::new(&mut self.write).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}

impl Client for Memory {
    fn queue(&mut self, data: &[u8]) -> io::Result<usize> {
        // rustls's send buffer, bounded: at most 64 KiB waits.
        let room = (64 * 1024usize).saturating_sub(self.queued.len());
        let n = room.min(data.len());
        self.queued.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn buffered(&mut self) -> usize {
        self.read.buffer().len()
    }

    fn unsent(&self) -> bool {
        !self.queued.is_empty()
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut *self).poll_flush(cx))?;
        self.cut.store(true, Ordering::Release);
        Pin::new(&mut self.write).poll_shutdown(cx)
    }
}
