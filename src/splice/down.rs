//! Backend → client: read into the stack and queued in rustls, written when the backend goes
//! quiet, closes or fills the buffer; through the gate until it opens. The backend's FIN
//! becomes close_notify and FIN; its reset, a cut without close_notify.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

use super::Splice;
use super::direction::{Dir, Outbox};
use super::end::{Op, Side, Step, fail};
use super::hooks::{Client, Gate, Halt, Tunnel, Way};

/// Four TLS records' worth of plaintext: one read from the backend becomes four records that
/// rustls writes out together, so a bulk transfer makes a quarter of the system calls it
/// would with one record per read (measured: ~30% more MB per CPU-second than 16 KiB). It
/// lives on the stack of the poll that uses it, so tunnels do not pay for its size.
const DOWN_BUFFER: usize = 64 * 1024;

impl<C, G, T> Splice<'_, C, G, T>
where
    C: Client,
    G: Gate,
    T: Tunnel,
{
    /// Backend → client: read into the stack and queued in rustls, which writes it when the
    /// backend goes quiet, closes or fills the buffer; only what rustls cannot take yet is
    /// kept on the heap. Through the gate until it opens.
    pub(super) fn poll_down(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            if self.down.out.pending() {
                let n = self
                    .client
                    .queue(self.down.out.rest())
                    .map_err(fail(Side::Client, Op::Write))?;
                if n == 0 {
                    // rustls's send buffer is full: write it out to make room.
                    ready!(self.flush_client(cx))?;
                    continue;
                }
                let _ = self.down.out.advance(n);
                self.sent_down(n);
                continue;
            }
            if self.down_burst {
                // The last read filled the buffer: send it before reading more, so a slow
                // client holds the backend back instead of the heap filling up.
                ready!(self.flush_client(cx))?;
                self.down_burst = false;
            }
            if self.down.state == Dir::Closing {
                match self.down_cut {
                    true => {
                        ready!(self.flush_client(cx))?;
                        ready!(self.client.poll_cut(cx)).map_err(fail(Side::Client, Op::Write))?;
                    }
                    false => ready!(Pin::new(&mut *self.client).poll_shutdown(cx))
                        .map_err(fail(Side::Client, Op::Write))?,
                }
                return Poll::Ready(Ok(()));
            }
            if self.stopped.is_some() {
                self.down.state = Dir::Closing;
                continue;
            }
            if let Some(stop) = self.gate.as_ref().and_then(|g| g.finished()) {
                self.stop(stop, cx);
                continue;
            }
            // Once the hook was asked to end the tunnel, read no further than it allows.
            let room = self.tunnel.room(Way::Down);
            if room == Some(0) {
                self.say_farewell(Way::Down);
                continue;
            }
            let limit = room.map_or(DOWN_BUFFER, |r| r.min(DOWN_BUFFER));
            // Read into the stack: nothing is allocated unless the client cannot take it all.
            let mut space = [MaybeUninit::<u8>::uninit(); DOWN_BUFFER];
            let mut read = ReadBuf::uninit(&mut space[..limit]);
            match Pin::new(&mut *self.backend).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    self.backend_gone(e);
                    continue;
                }
                Poll::Pending => {
                    // Quiet backend: push out what rustls holds.
                    ready!(self.flush_client(cx))?;
                    return Poll::Pending;
                }
            }
            let data = read.filled();
            self.down_burst = read.remaining() == 0;
            if data.is_empty() {
                if self.gate.is_none() {
                    self.tunnel.ended(Way::Down, false);
                }
                self.down.state = Dir::Closing;
                continue;
            }
            if self.gate.is_none() {
                self.tunnel.down(data);
            }
            if let Some(gate) = &mut self.gate {
                match gate.backend(data, &mut self.down.out.bytes) {
                    Ok(n) => {
                        if gate.take_changed() {
                            cx.waker().wake_by_ref();
                        }
                        if gate.is_open() {
                            // The tunnel is open: no more gate, no more of its state. What
                            // followed the opening is tunnel data.
                            self.tunnel.opened(gate.opened_to());
                            self.gate = None;
                            self.transfer.opened = true;
                            self.traffic.opened();
                            // What the gate let through before the 101 (and the 101) is
                            // HTTP; only what follows is the tunnel's, shown to the hook.
                            self.tunnel.down(&data[n..]);
                            self.down.out.bytes.extend_from_slice(&data[n..]);
                        } else {
                            debug_assert_eq!(n, data.len(), "the gate takes all until it opens");
                        }
                    }
                    Err(Halt::Stop(stop)) => self.stop(stop, cx),
                    Err(Halt::Broken(why)) => {
                        // A response nobody asked for, or one that cannot be framed: the
                        // backend and the client no longer agree on where they are, so
                        // nothing more goes either way.
                        let e = io::Error::new(io::ErrorKind::InvalidData, why);
                        self.backend_gone(e);
                        self.gate = None;
                        self.up.out = Outbox::default();
                        self.up.state = Dir::Done;
                    }
                }
                continue;
            }
            // Queued in rustls, written when the backend goes quiet, closes (then with the
            // close_notify) or fills the buffer; what rustls cannot take waits in `down.out`.
            let n = self
                .client
                .queue(data)
                .map_err(fail(Side::Client, Op::Write))?;
            if n < data.len() {
                self.down.out = Outbox::new(data[n..].to_vec());
            }
            self.sent_down(n);
        }
    }

    /// `n` bytes went (into rustls) to the client.
    fn sent_down(&mut self, n: usize) {
        self.transfer.down += n as u64;
        self.traffic.down(n);
        self.touch();
    }

    pub(super) fn flush_client(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        Pin::new(&mut *self.client)
            .poll_flush(cx)
            .map_err(fail(Side::Client, Op::Write))
    }

    /// A backend read failed (typically a reset, after an early answer or in the middle of
    /// a response): what was read has already been queued for the client, so it is written,
    /// then the client's side is cut without close_notify, so a client reading a response
    /// delimited by the close can tell it was cut short. The failure is reported once the
    /// tunnel is done.
    pub(super) fn backend_gone(&mut self, error: io::Error) {
        if self.gate.is_none() {
            self.tunnel.ended(Way::Down, true);
        }
        self.deferred
            .get_or_insert(fail(Side::Backend, Op::Read)(error));
        self.down.state = Dir::Closing;
        self.down_cut = true;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::testing::{backend_pair, blind, memory_client, pattern};
    use super::super::{End, Op, Side};

    /// Backend → client, byte-exact past rustls's bounded queue (so the rest waits in the
    /// direction's output); the backend's FIN becomes the client's orderly close while the
    /// client may still send.
    #[tokio::test]
    async fn the_backend_s_bytes_arrive_in_order_and_its_fin_closes_the_client_in_order() {
        let (mut client, mut user) = memory_client();
        let (mut backend, mut app) = backend_pair().await;
        let download = pattern(3 << 20);
        let sent = download.clone();
        let splice = tokio::spawn(async move {
            let end = blind(&mut client, &mut backend, Default::default()).await;
            (end, client)
        });
        let app_side = tokio::spawn(async move {
            app.write_all(&sent).await.unwrap();
            app.shutdown().await.unwrap();
            let mut late = Vec::new();
            app.read_to_end(&mut late).await.unwrap();
            late
        });
        let mut got = Vec::new();
        user.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), download.len());
        assert!(got == download, "backend bytes reordered or changed");
        user.write_all(b"after your close").await.unwrap();
        user.shutdown().await.unwrap();
        let late = tokio::time::timeout(Duration::from_secs(5), app_side)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(late, b"after your close");
        let (end, client) = splice.await.unwrap();
        assert!(matches!(end, End::Closed), "{end:?}");
        assert!(
            !client.cut.load(Ordering::Acquire),
            "closed in order, not cut"
        );
    }

    /// A backend reset after a partial answer: what it sent is delivered, then the client's
    /// side is cut (no close_notify), and the end names the backend's read.
    #[tokio::test]
    async fn a_backend_reset_delivers_what_came_then_cuts_the_client() {
        let (mut client, mut user) = memory_client();
        let (mut backend, app) = backend_pair().await;
        let splice = tokio::spawn(async move {
            let end = blind(&mut client, &mut backend, Default::default()).await;
            (end, client)
        });
        let mut app = app;
        app.write_all(b"half an answ").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let app = app.into_std().unwrap();
        socket2::SockRef::from(&app)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(app); // RST
        let mut got = Vec::new();
        let _ = user.read_to_end(&mut got).await;
        assert_eq!(got, b"half an answ");
        // The client, seeing the cut, closes its side too (the other direction's end).
        user.shutdown().await.unwrap();
        let (end, client) = tokio::time::timeout(Duration::from_secs(5), splice)
            .await
            .unwrap()
            .unwrap();
        match end {
            End::Failed(f) => assert_eq!((f.side, f.op), (Side::Backend, Op::Read)),
            other => panic!("{other:?}"),
        }
        assert!(
            client.cut.load(Ordering::Acquire),
            "cut, not closed in order"
        );
    }
}
