//! The splice's hook after the `101`: a hook that asks sees every tunnel byte each way, in
//! order, and none of the HTTP before it, and hears shutdown's drain; the default `()` hook
//! changes nothing (every other test runs with it). Driven on real sockets with a small
//! plain-TCP `Client` in place of rustls.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf,
};
use tokio::net::{TcpListener, TcpStream};
use wssbridge::http::{Exchange, Policy};
use wssbridge::metrics::Traffic;
use wssbridge::route::RouteTable;
use wssbridge::splice::{self, Client, Drain, Preread, Timers, Transfer, Tunnel, Watch, Way};

const WAIT: Duration = Duration::from_secs(10);

/// The client side without TLS: reads through a buffer, queues writes until a flush.
struct Plain {
    io: BufReader<TcpStream>,
    queued: Vec<u8>,
    written: u64,
}

impl AsyncRead for Plain {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncBufRead for Plain {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        Pin::new(&mut self.get_mut().io).poll_fill_buf(cx)
    }

    fn consume(mut self: Pin<&mut Self>, n: usize) {
        Pin::new(&mut self.io).consume(n)
    }
}

impl AsyncWrite for Plain {
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
            let n = std::task::ready!(Pin::new(this.io.get_mut()).poll_write(cx, &this.queued))?;
            this.queued.drain(..n);
            this.written += n as u64;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(self.io.get_mut()).poll_shutdown(cx)
    }
}

impl Client for Plain {
    fn queue(&mut self, data: &[u8]) -> io::Result<usize> {
        self.queued.extend_from_slice(data);
        Ok(data.len())
    }

    fn buffered(&mut self) -> usize {
        self.io.buffer().len()
    }

    fn unsent(&self) -> bool {
        !self.queued.is_empty()
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(Pin::new(&mut *self).poll_flush(cx))?;
        Pin::new(self.io.get_mut()).poll_shutdown(cx)
    }
}

/// A hook that records what it is shown and ends the tunnel when asked, with a last word each
/// way.
#[derive(Clone, Default)]
struct Recorder {
    up: Arc<Mutex<Vec<u8>>>,
    down: Arc<Mutex<Vec<u8>>>,
    drained: Arc<AtomicBool>,
}

impl Tunnel for Recorder {
    const DRAINS: bool = true;

    fn up(&mut self, bytes: &[u8]) {
        self.up.lock().unwrap().extend_from_slice(bytes);
    }

    fn down(&mut self, bytes: &[u8]) {
        self.down.lock().unwrap().extend_from_slice(bytes);
    }

    fn drain(&mut self) {
        self.drained.store(true, Ordering::Relaxed);
    }

    fn room(&self, _way: Way) -> Option<usize> {
        self.drained.load(Ordering::Relaxed).then_some(0)
    }

    fn last(&mut self, way: Way) -> Option<Vec<u8>> {
        Some(format!("bye {way:?}").into_bytes())
    }
}

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let near = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (far, _) = listener.accept().await.unwrap();
    (near, far)
}

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const SWITCH: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_sees_the_tunnel_s_bytes_only_and_hears_the_drain() {
    let (mut user, client_side) = pair().await;
    let (backend_side, mut app) = pair().await;
    let routes = RouteTable::new(vec!["/=127.0.0.1:1".parse().unwrap()]).unwrap();
    let policy = Arc::new(Policy::with_routes(routes, 16 * 1024));
    let head = wssbridge::http::head::parse(UPGRADE).unwrap().unwrap();
    let upgrade = wssbridge::http::admit(&policy, &head, None, None)
        .unwrap()
        .upgrade;
    let gate = Exchange::after_first(policy, (0, None), None, &head, upgrade);
    let recorder = Recorder::default();
    let asked: &'static AtomicBool = Box::leak(Box::new(AtomicBool::new(false)));
    let is_asked = Box::leak(Box::new(move || asked.load(Ordering::Acquire)));
    let notify = Arc::new(tokio::sync::Notify::new());
    let wake = notify.clone();
    let drain = Drain::new(is_asked, Box::pin(async move { wake.notified().await }));
    let hook = recorder.clone();
    let spliced = tokio::spawn(async move {
        let mut client = Plain {
            io: BufReader::new(client_side),
            queued: Vec::new(),
            written: 0,
        };
        let mut backend = backend_side;
        let traffic = Traffic::default();
        let mut transfer = Transfer::default();
        let preread = Preread {
            first: UPGRADE.to_vec(),
            uncounted: 0,
            held: Vec::new(),
        };
        let watch = Watch {
            gate: Some(Box::new(gate)),
            drain: None,
            tunnel: hook,
            close: Some(drain),
        };
        let end = splice::splice(
            &mut client,
            &mut backend,
            preread,
            watch,
            Timers::default(),
            &mut transfer,
            &traffic,
        );
        let end = end.await;
        (format!("{end:?}"), transfer)
    });

    let mut head = vec![0u8; UPGRADE.len()];
    app.read_exact(&mut head).await.unwrap();
    assert_eq!(head, UPGRADE);
    app.write_all(SWITCH).await.unwrap();
    app.write_all(b"first frame").await.unwrap();
    let mut got = vec![0u8; SWITCH.len() + b"first frame".len()];
    tokio::time::timeout(WAIT, user.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    user.write_all(b"hello backend").await.unwrap();
    let mut up = vec![0u8; 13];
    tokio::time::timeout(WAIT, app.read_exact(&mut up))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&up, b"hello backend");
    assert_eq!(recorder.up.lock().unwrap().as_slice(), b"hello backend");
    assert_eq!(recorder.down.lock().unwrap().as_slice(), b"first frame");

    // Shutdown asks: the hook hears it after the 101 and ends the tunnel, both sides, each
    // with its last word and then a close.
    asked.store(true, Ordering::Release);
    notify.notify_waiters();
    let (mut to_user, mut to_app) = (Vec::new(), Vec::new());
    tokio::time::timeout(WAIT, user.read_to_end(&mut to_user))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(WAIT, app.read_to_end(&mut to_app))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(to_user, b"bye Down");
    assert_eq!(to_app, b"bye Up");
    let (end, transfer) = tokio::time::timeout(WAIT, spliced).await.unwrap().unwrap();
    assert!(recorder.drained.load(Ordering::Relaxed));
    assert!(transfer.opened, "{end}");
    assert_eq!(end, "Farewell");
}
