//! The `splice` stage: copy bytes both ways until both directions are done.
//!
//! Why not `tokio::io::copy_bidirectional`:
//! - it ends both directions when one read fails, and a TLS peer that closes TCP without
//!   close_notify makes rustls report `UnexpectedEof`; the reply still on its way is then
//!   lost. Here that is the ordinary end of one direction;
//! - it allocates two 8 KiB buffers per tunnel up front and keeps them for the tunnel's life.
//!   Here client→backend reads straight out of rustls's plaintext buffer (`AsyncBufRead`)
//!   and backend→client allocates its buffer only while the backend has data, so an idle
//!   WebSocket holds no copy buffer at all;
//! - it has no bound on a half-closed tunnel: here `--close-timeout` limits how long one
//!   direction may go on after the other ended, and `--idle-timeout` (when set) how long
//!   both may be silent.
//!
//! Half-closes are passed on: the client's close_notify (or EOF) becomes a TCP FIN to the
//! backend; the backend's FIN becomes close_notify plus FIN to the client.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// One TLS record's worth of plaintext: a read fills at most one record on the way out.
const DOWN_BUFFER: usize = 16 * 1024;

/// Bytes moved, client→backend (`up`) and backend→client (`down`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    pub up: u64,
    pub down: u64,
}

/// Which peer an I/O error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

/// How a tunnel ended.
#[derive(Debug)]
pub enum End {
    /// Both directions finished with an orderly close.
    Closed,
    /// One direction ended and the other did not within `--close-timeout`.
    CloseTimeout,
    /// No byte either way for `--idle-timeout`.
    IdleTimeout,
    /// A read or write failed; the tunnel was torn down.
    Failed(Side, io::Error),
}

/// Copies until both directions end, a timeout fires, or an error tears the tunnel down.
/// The counts are written to `transfer` as bytes move, so they are right even if the caller
/// drops this future (e.g. when the shutdown grace runs out).
pub async fn splice<C>(
    client: &mut C,
    backend: &mut TcpStream,
    idle: Option<Duration>,
    close: Option<Duration>,
    transfer: &mut Transfer,
) -> End
where
    C: AsyncBufRead + AsyncWrite + Unpin,
{
    let mut state = Splice {
        client,
        backend,
        up: Dir::Open,
        down: Dir::Open,
        down_buf: None,
        down_pos: 0,
        down_len: 0,
        transfer,
        idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
        last_activity: Instant::now(),
        close,
        close_timer: None,
    };
    std::future::poll_fn(|cx| state.poll(cx)).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Open,
    /// EOF seen; passing the close on.
    Closing,
    Done,
}

struct Splice<'a, C> {
    client: &'a mut C,
    backend: &'a mut TcpStream,
    up: Dir,
    down: Dir,
    /// Backend→client bytes read but not yet written; `None` while the backend is quiet.
    down_buf: Option<Box<[u8]>>,
    down_pos: usize,
    down_len: usize,
    transfer: &'a mut Transfer,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
    last_activity: Instant,
    close: Option<Duration>,
    close_timer: Option<Pin<Box<Sleep>>>,
}

type Step = Result<(), (Side, io::Error)>;

impl<C> Splice<'_, C>
where
    C: AsyncBufRead + AsyncWrite + Unpin,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<End> {
        if self.up != Dir::Done
            && let Poll::Ready(step) = self.poll_up(cx)
        {
            if let Err((side, e)) = step {
                return Poll::Ready(End::Failed(side, e));
            }
            self.up = Dir::Done;
        }
        if self.down != Dir::Done
            && let Poll::Ready(step) = self.poll_down(cx)
        {
            if let Err((side, e)) = step {
                return Poll::Ready(End::Failed(side, e));
            }
            self.down = Dir::Done;
        }
        if self.up == Dir::Done && self.down == Dir::Done {
            return Poll::Ready(End::Closed);
        }
        if (self.up == Dir::Done || self.down == Dir::Done)
            && let Some(close) = self.close
        {
            let timer = self
                .close_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(close)));
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::CloseTimeout);
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
        Poll::Pending
    }

    /// Client → backend, straight out of the TLS plaintext buffer.
    fn poll_up(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            if self.up == Dir::Closing {
                ready!(Pin::new(&mut *self.backend).poll_shutdown(cx))
                    .map_err(|e| (Side::Backend, e))?;
                return Poll::Ready(Ok(()));
            }
            let chunk = match ready!(Pin::new(&mut *self.client).poll_fill_buf(cx)) {
                Ok(chunk) => chunk,
                Err(e) if is_eof(&e) => &[],
                Err(e) => return Poll::Ready(Err((Side::Client, e))),
            };
            if chunk.is_empty() {
                self.up = Dir::Closing;
                continue;
            }
            let n = ready!(Pin::new(&mut *self.backend).poll_write(cx, chunk))
                .map_err(|e| (Side::Backend, e))?;
            if n == 0 {
                return Poll::Ready(Err((Side::Backend, io::ErrorKind::WriteZero.into())));
            }
            Pin::new(&mut *self.client).consume(n);
            self.transfer.up += n as u64;
            self.touch();
        }
    }

    /// Backend → client, through a buffer that exists only while data is flowing.
    fn poll_down(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            if self.down == Dir::Closing {
                ready!(Pin::new(&mut *self.client).poll_shutdown(cx))
                    .map_err(|e| (Side::Client, e))?;
                return Poll::Ready(Ok(()));
            }
            if let Some(buf) = &self.down_buf
                && self.down_pos < self.down_len
            {
                let pending = &buf[self.down_pos..self.down_len];
                let n = ready!(Pin::new(&mut *self.client).poll_write(cx, pending))
                    .map_err(|e| (Side::Client, e))?;
                if n == 0 {
                    return Poll::Ready(Err((Side::Client, io::ErrorKind::WriteZero.into())));
                }
                self.down_pos += n;
                self.transfer.down += n as u64;
                self.touch();
                continue;
            }
            match self.backend.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err((Side::Backend, e))),
                Poll::Pending => {
                    // Quiet backend: give the buffer back and push out what rustls holds.
                    self.down_buf = None;
                    ready!(Pin::new(&mut *self.client).poll_flush(cx))
                        .map_err(|e| (Side::Client, e))?;
                    return Poll::Pending;
                }
            }
            let buf = self
                .down_buf
                .get_or_insert_with(|| vec![0u8; DOWN_BUFFER].into_boxed_slice());
            match self.backend.try_read(buf) {
                Ok(0) => {
                    self.down_buf = None;
                    self.down = Dir::Closing;
                }
                Ok(n) => {
                    self.down_pos = 0;
                    self.down_len = n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err((Side::Backend, e))),
            }
        }
    }

    fn touch(&mut self) {
        if self.idle.is_some() {
            self.last_activity = Instant::now();
        }
    }
}

/// A TLS peer that closes TCP without close_notify ends its direction like a FIN would.
fn is_eof(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::UnexpectedEof
}
