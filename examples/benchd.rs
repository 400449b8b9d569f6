//! `make bench`'s backend: answers `GET /ping` with a small 200 (keeping the connection
//! unless the request says `Connection: close`), and answers an upgrade request with `101`
//! and then echoes every byte. Plain TCP on loopback. Usage: `benchd ADDR` (prints the bound
//! address).
//!
//! An upgrade to `/stream?size=N` (`&frames` or not) streams instead of echoing: it writes
//! N-byte writes as fast as they are taken and discards what it reads; with `frames`, each
//! write is one WebSocket binary frame (unmasked, as a server sends them). `make bench`'s
//! `frames` part compares the two to measure what following frame boundaries costs.
//!
//! An upgrade to `/chat?room=R&size=N` joins a chat: connections are put in rooms of R in the
//! order they arrive, and every N-byte message one sends is written to each member of its
//! room, the sender included (a chat server's fan-out, as socket.io's rooms do it). With
//! `&frames`, each message is one masked WebSocket frame from the client, and goes to the
//! room as the server's frame (unmasked, the 4 key bytes dropped): WebSocket framing both
//! ways, as a real chat's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The chat's rooms: each member's queue of messages to write.
type Rooms = Mutex<HashMap<usize, Vec<mpsc::UnboundedSender<Vec<u8>>>>>;
static ROOMS: std::sync::LazyLock<Rooms> = std::sync::LazyLock::new(Rooms::default);
static JOINED: AtomicUsize = AtomicUsize::new(0);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let listener = TcpListener::bind(&addr).await?;
    println!("{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = serve(stream).await;
        });
    }
}

async fn serve(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 4096];
    loop {
        // One request head (requests here have no body); bytes after it stay in `head`.
        let end = loop {
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            head.extend_from_slice(&buf[..n]);
        };
        let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
        if text.contains("upgrade: websocket") {
            s.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            )
            .await?;
            if let Some((room, size)) = chat(&text) {
                let frames = text.contains("&frames");
                return serve_chat(s, head.split_off(end), room, size, frames).await;
            }
            if let Some(size) = stream_size(&text) {
                let frames = text.contains("&frames");
                let (mut r, mut w) = s.into_split();
                tokio::spawn(async move {
                    let mut sink = vec![0u8; 64 * 1024];
                    while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
                });
                let chunk = chunk(size, frames);
                loop {
                    w.write_all(&chunk).await?;
                }
            }
            s.write_all(&head[end..]).await?;
            if let Some(n) = echo_read(&text) {
                // The echo of an outside harness: reads of `n` bytes, each written back whole.
                let mut buf = vec![0u8; n];
                loop {
                    let got = s.read(&mut buf).await?;
                    if got == 0 {
                        return Ok(());
                    }
                    s.write_all(&buf[..got]).await?;
                }
            }
            let (mut r, mut w) = s.split();
            tokio::io::copy(&mut r, &mut w).await?;
            return Ok(());
        }
        let close = text.contains("connection: close");
        head.drain(..end);
        if close {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npong")
                .await?;
            return s.shutdown().await;
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npong")
            .await?;
    }
}

/// `(R, N)` from a `GET /chat?room=R&size=N` request line.
fn chat(head: &str) -> Option<(usize, usize)> {
    let target = head.split_whitespace().nth(1)?;
    let query = target.strip_prefix("/chat?")?;
    let mut room = None;
    let mut size = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("room", v)) => room = v.parse().ok(),
            Some(("size", v)) => size = v.parse().ok(),
            _ => {}
        }
    }
    Some((room?, size?)).filter(|&(r, n): &(usize, usize)| r > 0 && n > 0)
}

/// One chat member: what it writes, cut into `size`-byte messages, goes to its whole room.
async fn serve_chat(
    s: TcpStream,
    mut pending: Vec<u8>,
    room: usize,
    size: usize,
    frames: bool,
) -> std::io::Result<()> {
    let key = JOINED.fetch_add(1, Ordering::Relaxed) / room;
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let _member = Member(key, tx.clone());
    ROOMS.lock().unwrap().entry(key).or_default().push(tx);
    let (mut r, mut w) = s.into_split();
    tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            if w.write_all(&message).await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 4096];
    loop {
        while pending.len() >= size {
            let mut message: Vec<u8> = pending.drain(..size).collect();
            if frames && message.len() > 6 && message[1] & 0x80 != 0 {
                // A short masked client frame → the server's: mask bit off, key out, payload
                // unmasked.
                let key = [message[2], message[3], message[4], message[5]];
                let payload: Vec<u8> = (message[6..].iter().enumerate())
                    .map(|(i, b)| b ^ key[i % 4])
                    .collect();
                message = [&[message[0], message[1] & 0x7f][..], &payload].concat();
            }
            let mut rooms = ROOMS.lock().unwrap();
            let members = rooms.entry(key).or_default();
            members.retain(|m| m.send(message.clone()).is_ok());
        }
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// A chat member's place in its room, given up when its reader ends (however it ends): the
/// room's sender is then the last one, and dropping it ends the writer, which closes the
/// socket. Without this every chat connection stayed open in benchd for good, and a whole
/// `make bench` ran it out of descriptors.
struct Member(usize, mpsc::UnboundedSender<Vec<u8>>);

impl Drop for Member {
    fn drop(&mut self) {
        let mut rooms = ROOMS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(members) = rooms.get_mut(&self.0) {
            members.retain(|m| !m.same_channel(&self.1));
            if members.is_empty() {
                rooms.remove(&self.0);
            }
        }
    }
}

/// `N` from a `GET /stream?size=N` request line.
/// `N` from a `GET /ws?read=N` request line (at most 1 MiB).
fn echo_read(head: &str) -> Option<usize> {
    let target = head.split_whitespace().nth(1)?;
    let n: usize = target.strip_prefix("/ws?read=")?.parse().ok()?;
    Some(n).filter(|&n| (1..=1 << 20).contains(&n))
}

fn stream_size(head: &str) -> Option<usize> {
    let target = head.split_whitespace().nth(1)?;
    let query = target.strip_prefix("/stream?size=")?;
    query.split('&').next()?.parse().ok()
}

/// One write of the stream: `size` bytes, or one binary frame with a `size`-byte payload.
pub fn chunk(size: usize, frames: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 10);
    if frames {
        out.push(0x82);
        match size {
            0..=125 => out.push(size as u8),
            126..=0xffff => {
                out.push(126);
                out.extend_from_slice(&(size as u16).to_be_bytes());
            }
            _ => {
                out.push(127);
                out.extend_from_slice(&(size as u64).to_be_bytes());
            }
        }
    }
    out.resize(out.len() + size, 0x5a);
    out
}
