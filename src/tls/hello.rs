//! Before the handshake: wait for a client's first bytes holding nothing, then read its
//! ClientHello into memory that grows with what arrives, under one budget for every
//! connection still in this phase.
//!
//! Why: a connection that has not finished its handshake is the cheapest thing an attacker
//! can make. Handed to rustls at once, each held a handshake's state and read buffers from its
//! first moment (~20 KiB silent, ~29 KiB after 11 bytes, ~72 KiB stalled 48 KB into a 60 KB
//! ClientHello), so `--max-connections` alone let silent connections reach gigabytes. Here a
//! silent connection holds its task and socket only; bytes of a ClientHello are held in a
//! buffer exactly as large as what came, counted in a process-wide [`Budget`]
//! (`--max-handshake-memory`); when it is full, the connections that have held bytes the
//! longest are closed first (an honest ClientHello arrives whole in one round trip, so the
//! oldest partial ones are the stalled ones). rustls is handed the whole ClientHello at once.
//!
//! The reading is the TLS record layer only (RFC 8446 §5.1, §4): record headers and the
//! handshake message's length, to know how many bytes the ClientHello needs. Anything that
//! is not a ClientHello is handed to rustls as it is, which refuses it with the right alert.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The largest TLS record payload a ClientHello may come in (2^14, RFC 8446 §5.1, with
/// room for what TLS 1.2 allowed); a larger length is not a ClientHello.
const MAX_RECORD: usize = (1 << 14) + 2048;
/// How often shedding is logged while it goes on.
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The largest ClientHello read here (rustls's own bound on a handshake message).
const MAX_HELLO: usize = 0xffff;

/// The memory that every connection still reading its ClientHello may hold together.
pub struct Budget {
    limit: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    total: usize,
    /// When shedding was last logged: at most once a minute.
    warned: Option<std::time::Instant>,
    /// By order of their first byte: the first is the oldest.
    held: BTreeMap<u64, Held>,
}

struct Held {
    bytes: usize,
    shed: Arc<Notify>,
}

/// A connection's part of the budget; given back when dropped.
struct Share<'a> {
    budget: &'a Budget,
    id: u64,
    shed: Arc<Notify>,
}

/// Why no ClientHello was had.
#[derive(Debug)]
pub enum NoHello {
    /// The deadline passed.
    TimedOut,
    /// Closed to keep the budget: this connection held bytes the longest.
    Shed,
    /// The socket failed, or closed before its first byte.
    Io(std::io::Error),
}

impl Budget {
    pub fn new(limit: usize) -> Budget {
        Budget {
            limit,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Bytes held now, by every connection reading its ClientHello.
    pub fn held(&self) -> usize {
        self.lock().total
    }

    fn enter(&self) -> Share<'_> {
        let shed = Arc::new(Notify::new());
        let mut inner = self.lock();
        let id = inner.next;
        inner.next += 1;
        inner.held.insert(
            id,
            Held {
                bytes: 0,
                shed: shed.clone(),
            },
        );
        Share {
            budget: self,
            id,
            shed,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Share<'_> {
    /// Counts `bytes` more for this connection, closing the oldest others while the budget
    /// is over; `false` when it is over with this one alone.
    fn grow(&self, bytes: usize) -> bool {
        let mut inner = self.budget.lock();
        let Some(held) = inner.held.get_mut(&self.id) else {
            return false; // already shed
        };
        held.bytes += bytes;
        let mine = held.bytes;
        inner.total += bytes;
        if mine > self.budget.limit {
            return false;
        }
        while inner.total > self.budget.limit {
            let oldest = inner.held.keys().copied().find(|&id| id != self.id);
            let Some(oldest) = oldest else {
                return false;
            };
            if let Some(shed) = inner.held.remove(&oldest) {
                inner.total -= shed.bytes;
                shed.shed.notify_one();
            }
            if inner.warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                inner.warned = Some(std::time::Instant::now());
                tracing::warn!(
                    budget = self.budget.limit,
                    "unfinished ClientHellos hold all of --max-handshake-memory: closing the \
                     oldest (wssbridge_tls_handshakes_total{{result=\"shed\"}} counts them)"
                );
            }
        }
        true
    }
}

impl Drop for Share<'_> {
    fn drop(&mut self) {
        let mut inner = self.budget.lock();
        if let Some(held) = inner.held.remove(&self.id) {
            inner.total -= held.bytes;
        }
    }
}

/// Reads from `stream` until its ClientHello is whole (after `early`, bytes already read
/// after a PROXY header), by `deadline`; returns every byte read, for rustls.
pub async fn read(
    stream: &TcpStream,
    early: Vec<u8>,
    budget: &Budget,
    deadline: Option<Instant>,
) -> Result<Vec<u8>, NoHello> {
    let read = async {
        if early.is_empty() {
            // Silent so far: wait holding nothing but the socket.
            stream.readable().await.map_err(NoHello::Io)?;
        }
        let share = budget.enter();
        let mut bytes = early;
        if !share.grow(bytes.capacity()) {
            return Err(NoHello::Shed);
        }
        tokio::select! {
            read = fill(stream, &mut bytes, &share) => read.map(|()| bytes),
            _ = share.shed.notified() => Err(NoHello::Shed),
        }
    };
    match deadline {
        Some(d) => tokio::time::timeout_at(d, read)
            .await
            .unwrap_or(Err(NoHello::TimedOut)),
        None => read.await,
    }
}

/// Reads what the ClientHello still needs, growing `bytes` as it comes.
async fn fill(stream: &TcpStream, bytes: &mut Vec<u8>, share: &Share<'_>) -> Result<(), NoHello> {
    while let Some(want) = missing(bytes) {
        stream.readable().await.map_err(NoHello::Io)?;
        let before = bytes.capacity();
        let read = read_some(stream, bytes, want);
        // Counted whatever the read brought: a large record's room is reserved before it.
        if !share.grow(bytes.capacity().saturating_sub(before)) {
            return Err(NoHello::Shed);
        }
        match read {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            // EOF or an error: rustls gets what came and says what it makes of it.
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
    }
    Ok(())
}

/// One read: a whole small ClientHello (the usual case, a few hundred bytes to 2 KiB) in one
/// system call through the stack, appended exactly; the rest of a large record straight into
/// `bytes`, exactly as much as it lacks. Whatever is read goes to rustls, so reading past the
/// ClientHello loses nothing. Not async: the stack buffer is never part of a future.
fn read_some(stream: &TcpStream, bytes: &mut Vec<u8>, want: usize) -> std::io::Result<usize> {
    const SMALL: usize = 4096;
    if want > SMALL {
        let start = bytes.len();
        bytes.reserve_exact(want);
        bytes.resize(start + want, 0);
        let read = stream.try_read(&mut bytes[start..]);
        bytes.truncate(start + *read.as_ref().unwrap_or(&0));
        return read;
    }
    let mut chunk = [0u8; SMALL];
    let n = stream.try_read(&mut chunk)?;
    bytes.reserve_exact(n);
    bytes.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Whether the first bytes on the TLS port are plain HTTP: they begin a request line with a
/// method RFC 9110 defines (`GET /…`), which no TLS record can (a record begins with a
/// content type, 0x14–0x17). Anything else (a PROXY header from a stranger, garbage) is left
/// to rustls, which refuses it with an alert.
pub fn is_plain_http(bytes: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"HEAD ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"CONNECT ",
        b"OPTIONS ",
        b"TRACE ",
        b"PATCH ",
    ];
    !bytes.is_empty()
        && METHODS.iter().any(|m| {
            let n = m.len().min(bytes.len());
            bytes[..n] == m[..n]
        })
}

/// How many more bytes the ClientHello in `bytes` needs at the least (the rest of a record
/// header or of a record), or `None` when it is whole, or when what came is not a ClientHello
/// (rustls then refuses it). Pure: the record layer's headers and the handshake message's
/// length only.
pub fn missing(bytes: &[u8]) -> Option<usize> {
    let mut pos = 0;
    let mut header = [0u8; 4];
    let mut payload = 0;
    loop {
        let rest = &bytes[pos..];
        if rest.len() < 5 {
            return Some(5 - rest.len());
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if rest[0] != 0x16 || len == 0 || len > MAX_RECORD {
            return None;
        }
        let have = (rest.len() - 5).min(len);
        for (i, &b) in rest[5..5 + have].iter().enumerate() {
            if let Some(slot) = header.get_mut(payload + i) {
                *slot = b;
            }
        }
        payload += have;
        if have < len {
            return Some(len - have);
        }
        pos += 5 + len;
        if payload >= 4 {
            let length =
                usize::from(header[1]) << 16 | usize::from(header[2]) << 8 | usize::from(header[3]);
            if header[0] != 1 || length > MAX_HELLO || payload >= 4 + length {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello of `body` bytes in records of at most `record` bytes.
    fn hello(body: usize, record: usize) -> Vec<u8> {
        let mut message = vec![1, (body >> 16) as u8, (body >> 8) as u8, body as u8];
        message.resize(4 + body, 7);
        let mut out = Vec::new();
        for piece in message.chunks(record) {
            out.extend_from_slice(&[0x16, 3, 1]);
            out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
            out.extend_from_slice(piece);
        }
        out
    }

    #[test]
    fn every_prefix_needs_more_and_the_whole_needs_nothing() {
        for (body, record) in [(508, 16384), (60_000, 16384), (300, 100), (3, 2)] {
            let whole = hello(body, record);
            for i in 0..whole.len() {
                let want = missing(&whole[..i]).unwrap_or_else(|| panic!("complete at {i}"));
                assert!(want >= 1 && i + want <= whole.len(), "{i}: {want}");
            }
            assert_eq!(missing(&whole), None);
        }
    }

    #[test]
    fn a_request_line_is_plain_http_and_a_record_is_not() {
        assert!(is_plain_http(b"GET /"));
        assert!(is_plain_http(b"OPTIO"));
        assert!(!is_plain_http(&hello(508, 16384)[..5]));
        assert!(!is_plain_http(b""));
        assert!(!is_plain_http(b"\x80\x2e\x01\x03\x01"));
        assert!(!is_plain_http(b"PROXY"), "a PROXY header is not a request");
    }

    #[test]
    fn what_is_not_a_client_hello_is_handed_on_at_once() {
        assert_eq!(missing(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(missing(&[0x16, 3, 1, 0, 0]), None, "an empty record");
        assert_eq!(
            missing(&[0x16, 3, 1, 0xff, 0xff]),
            None,
            "a record too large"
        );
        assert_eq!(
            missing(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
            None,
            "not a ClientHello"
        );
        assert_eq!(
            missing(&[0x16, 3, 1, 0, 4, 1, 0xff, 0, 0]),
            None,
            "a hello too large"
        );
    }

    #[test]
    fn when_over_budget_the_oldest_holder_is_shed() {
        let budget = Budget::new(100);
        let first = budget.enter();
        let second = budget.enter();
        assert!(first.grow(60));
        assert!(second.grow(30));
        let third = budget.enter();
        assert!(third.grow(20), "room made by shedding the first");
        assert_eq!(budget.held(), 50);
        assert!(!first.grow(1), "the first was shed");
        assert!(!third.grow(200), "over the budget on its own");
        assert!(second.grow(1), "and no one else shed for it");
        drop((first, second, third));
        assert_eq!(budget.held(), 0);
    }
}
