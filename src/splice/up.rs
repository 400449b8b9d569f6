//! Client → backend: the bytes read before the splice, then straight out of rustls's
//! plaintext buffer, through the gate until it opens; bulk data and bursts of records gathered
//! on the stack into one write. The client's close_notify (or EOF) becomes a FIN.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncWrite, ReadBuf};

use super::Splice;
use super::direction::{Dir, is_eof, write_or_keep};
use super::end::{Op, Side, Step, fail};
use super::hooks::{Client, Gate, Tunnel, Way};

/// Client→backend records are gathered into one write of up to 64 KiB
/// (with `ReadAhead` reading the socket in pieces as large)...
const UP_BUFFER: usize = 64 * 1024;
/// ...once one record carries at least this much, a sign of a bulk transfer (then the socket
/// is read for more too). Smaller records are gathered when rustls already holds more than
/// one (a burst of chat messages leaves in one write, not one each); a lone small message
/// goes straight from rustls's buffer to the backend without a copy.
const GATHER_FROM: usize = 8 * 1024;

impl<C, G, T> Splice<'_, C, G, T>
where
    C: Client,
    G: Gate,
    T: Tunnel,
{
    /// Client → backend: the bytes read before the splice, then straight out of the TLS
    /// plaintext buffer; through the gate until it opens.
    pub(super) fn poll_up(&mut self, cx: &mut Context<'_>) -> Poll<Step> {
        loop {
            if self.up.out.pending() {
                let n = ready!(Pin::new(&mut *self.backend).poll_write(cx, self.up.out.rest()))
                    .map_err(fail(Side::Backend, Op::Write))?;
                self.up
                    .out
                    .advance(n)
                    .map_err(fail(Side::Backend, Op::Write))?;
                self.sent_up(n);
                continue;
            }
            if self.up.state == Dir::Closing {
                match ready!(Pin::new(&mut *self.backend).poll_shutdown(cx)) {
                    // Already reset: the FIN has nowhere to go, and nothing is lost by that.
                    Err(e) if e.kind() != io::ErrorKind::NotConnected => {
                        return Poll::Ready(Err(fail(Side::Backend, Op::Write)(e)));
                    }
                    _ => return Poll::Ready(Ok(())),
                }
            }
            // Once the hook was asked to end the tunnel, take no further than it allows.
            let room = self.tunnel.room(Way::Up);
            if room == Some(0) {
                self.say_farewell(Way::Up);
                continue;
            }
            let from_initial = self.initial.pos < self.initial.bytes.len();
            // Plaintext rustls holds already (before this read adds to it), for gathering.
            let mut held = 0;
            let chunk = if from_initial {
                self.initial.rest()
            } else if let Some(e) = self.up_error.take() {
                if !is_eof(&e) {
                    return Poll::Ready(Err(fail(Side::Client, Op::Read)(e)));
                }
                &[]
            } else {
                if self.gate.is_none() {
                    held = self.client.buffered();
                }
                match ready!(Pin::new(&mut *self.client).poll_fill_buf(cx)) {
                    Ok(chunk) => chunk,
                    Err(e) if is_eof(&e) => &[],
                    Err(e) => return Poll::Ready(Err(fail(Side::Client, Op::Read)(e))),
                }
            };
            if chunk.is_empty() {
                if self.gate.is_none() {
                    self.tunnel.ended(Way::Up, false);
                }
                self.up.state = Dir::Closing;
                continue;
            }
            let (chunk, room) = match room {
                Some(room) => (&chunk[..room.min(chunk.len())], room),
                None => (chunk, UP_BUFFER),
            };
            let n = match &mut self.gate {
                Some(gate) => {
                    let taken = gate.client(chunk, &mut self.up.out.bytes);
                    if taken == 0 && self.up.out.bytes.is_empty() {
                        if self.down.is_done() {
                            // Held for an answer that can no longer come: end this side.
                            self.up.state = Dir::Closing;
                            continue;
                        }
                        // Held until the backend answers; its side wakes this task.
                        return Poll::Pending;
                    }
                    taken
                }
                None if !from_initial && chunk.len() >= GATHER_FROM => {
                    if let Err(f) = self.gather(cx, room.min(UP_BUFFER)) {
                        return Poll::Ready(Err(f));
                    }
                    continue;
                }
                None if !from_initial && held > chunk.len() => {
                    // Several records in hand: one write for all of them.
                    if let Err(f) = self.gather(cx, held.min(room)) {
                        return Poll::Ready(Err(f));
                    }
                    continue;
                }
                None => {
                    let written = Pin::new(&mut *self.backend).poll_write(cx, chunk);
                    let Poll::Ready(written) = written else {
                        // The bytes stay in rustls's buffer: waiting, as `up.out` would be.
                        self.up.blocked = true;
                        return Poll::Pending;
                    };
                    let n = written.map_err(fail(Side::Backend, Op::Write))?;
                    if n == 0 {
                        let zero = io::ErrorKind::WriteZero.into();
                        return Poll::Ready(Err(fail(Side::Backend, Op::Write)(zero)));
                    }
                    self.tunnel.up(&chunk[..n]);
                    self.sent_up(n);
                    n
                }
            };
            if from_initial {
                let _ = self.initial.advance(n);
            } else {
                Pin::new(&mut *self.client).consume(n);
            }
        }
    }

    /// Gathers up to `limit` bytes of the plaintext of every TLS record rustls can give
    /// without waiting (on the stack) and writes it to the backend at once, where it would
    /// take one write per record. What the backend cannot take now waits in `up.out`. A
    /// read error met on the way is kept for after the bytes before it. With a limit of
    /// what rustls already holds, the socket is not read (no read that finds it empty).
    fn gather(&mut self, cx: &mut Context<'_>, limit: usize) -> Step {
        let mut space = [MaybeUninit::<u8>::uninit(); UP_BUFFER];
        let mut gathered = ReadBuf::uninit(&mut space[..limit.min(UP_BUFFER)]);
        while gathered.remaining() > 0 {
            match Pin::new(&mut *self.client).poll_fill_buf(cx) {
                Poll::Ready(Ok(chunk)) if !chunk.is_empty() => {
                    let n = chunk.len().min(gathered.remaining());
                    gathered.put_slice(&chunk[..n]);
                    Pin::new(&mut *self.client).consume(n);
                }
                // EOF: `poll_up` sees it again on its next read.
                Poll::Ready(Ok(_)) | Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    self.up_error = Some(e);
                    break;
                }
            }
        }
        let data = gathered.filled();
        if data.is_empty() {
            return Ok(());
        }
        self.tunnel.up(data);
        let n = match write_or_keep(&mut *self.backend, cx, data, &mut self.up.out) {
            Ok(n) => n,
            // A client read error found while gathering still ends the tunnel, as any other
            // client read error does; the failed write to the backend comes second.
            Err(e) => match self.up_error.take() {
                Some(read) if !is_eof(&read) => return Err(fail(Side::Client, Op::Read)(read)),
                _ => return Err(fail(Side::Backend, Op::Write)(e)),
            },
        };
        self.sent_up(n);
        Ok(())
    }

    /// `n` bytes went to the backend.
    fn sent_up(&mut self, n: usize) {
        self.up.blocked = false;
        let header = n.min(self.uncounted);
        self.uncounted -= header;
        let n = n - header;
        self.transfer.up += n as u64;
        self.traffic.up(n);
        self.touch();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::super::End;
    use super::super::testing::{backend_pair, blind, memory_client, pattern};

    /// Client → backend, byte-exact over the gathering path (records far above
    /// `GATHER_FROM`) and the straight path (small writes); the client's close becomes the
    /// backend's EOF while the other direction goes on: the backend still answers after it.
    #[tokio::test]
    async fn the_client_s_bytes_arrive_in_order_and_its_close_is_passed_on_alone() {
        let (mut client, mut user) = memory_client();
        let (mut backend, mut app) = backend_pair().await;
        let upload = pattern(1 << 20);
        let sent = upload.clone();
        let splice = tokio::spawn(async move {
            let end = blind(&mut client, &mut backend, Default::default()).await;
            (end, client)
        });
        let user_side = tokio::spawn(async move {
            for piece in sent.chunks(100).take(50) {
                user.write_all(piece).await.unwrap();
            }
            user.write_all(&sent[5000..]).await.unwrap();
            user.shutdown().await.unwrap();
            let mut answer = Vec::new();
            user.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), upload.len());
        assert!(got == upload, "client bytes reordered or changed");
        // Half-closed: the backend may still answer.
        app.write_all(b"after your close").await.unwrap();
        app.shutdown().await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), user_side)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, b"after your close");
        let (end, client) = splice.await.unwrap();
        assert!(matches!(end, End::Closed), "{end:?}");
        assert!(!client.cut.load(std::sync::atomic::Ordering::Acquire));
    }

    /// A backend that stops reading holds the client's bytes only `--send-timeout`: the
    /// up direction's stall ends the tunnel, naming the backend.
    #[tokio::test]
    async fn a_backend_that_stops_reading_is_ended_by_the_send_timeout() {
        let (mut client, mut user) = memory_client();
        let (mut backend, _app) = backend_pair().await;
        let timeouts = super::super::Timers {
            send: Some(Duration::from_millis(300)),
            ..Default::default()
        };
        let splice = tokio::spawn(async move { blind(&mut client, &mut backend, timeouts).await });
        // Far more than the socket buffers hold; the app never reads.
        let writer = tokio::spawn(async move {
            let chunk = pattern(64 * 1024);
            loop {
                if user.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let end = tokio::time::timeout(Duration::from_secs(10), splice)
            .await
            .expect("the stall was not ended")
            .unwrap();
        assert!(
            matches!(end, End::SendTimeout(super::super::Side::Backend)),
            "{end:?}"
        );
        writer.abort();
    }
}
