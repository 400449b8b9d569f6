//! What rustls holds per idle server connection, with its buffered API (what wssbridge
//! uses) and with its unbuffered one (issue 43, part 4): `cargo run --release --example
//! tlsmem [N]`.
//!
//! N in-memory handshakes against a rustls client (bytes passed through `Vec`s, no
//! sockets), each followed by one small record each way, as a WebSocket's first exchange;
//! then the clients are dropped and the heap the servers still hold is counted by a global
//! allocator that adds what is allocated and takes off what is freed (the bytes asked for,
//! without malloc's own overhead). The unbuffered servers keep no buffer at all between
//! records: the caller owns them, and here gives them back after each exchange.
//!
//! Prints one JSON line: bytes per connection for each API.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ClientConnection, ServerConnection};

struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to `System` unchanged; only a counter is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn held() -> isize {
    HELD.load(Ordering::Relaxed)
}

fn configs() -> anyhow::Result<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert = certified.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No tickets: they would be sent after the handshake and land in the client's buffers.
    server.send_tls13_tickets = 0;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(server), Arc::new(client)))
}

/// Everything `from` has to send, written into `to`.
fn pass(from: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut out).expect("write_tls to a Vec");
    }
    out
}

fn buffered(
    server_config: &Arc<rustls::ServerConfig>,
    client_config: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<(ServerConnection, ClientConnection)> {
    let mut server = ServerConnection::new(server_config.clone())?;
    let mut client = ClientConnection::new(client_config.clone(), "localhost".try_into()?)?;
    client.writer().write_all(b"ping")?;
    for _ in 0..10 {
        let bytes = pass(&mut client);
        server.read_tls(&mut &bytes[..])?;
        server.process_new_packets()?;
        let mut back = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut back)?;
        }
        client.read_tls(&mut &back[..])?;
        client.process_new_packets()?;
        if !server.is_handshaking() && !client.is_handshaking() && !client.wants_write() {
            break;
        }
    }
    let mut got = [0u8; 4];
    server.reader().read_exact(&mut got)?;
    server.writer().write_all(b"pong")?;
    let mut back = Vec::new();
    while server.wants_write() {
        server.write_tls(&mut back)?;
    }
    client.read_tls(&mut &back[..])?;
    client.process_new_packets()?;
    client.reader().read_exact(&mut got)?;
    anyhow::ensure!(&got == b"pong", "no pong");
    Ok((server, client))
}

/// Runs the unbuffered server over `incoming` until it wants more bytes, returning what it
/// sends; what it decrypts is appended to `plaintext`, and once that is `ping` it answers
/// `pong` (once: `replied`).
fn drive(
    server: &mut UnbufferedServerConnection,
    incoming: &mut Vec<u8>,
    plaintext: &mut Vec<u8>,
    replied: &mut bool,
) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut scratch = vec![0u8; 32 * 1024];
    loop {
        let UnbufferedStatus { discard, state } = server.process_tls_records(incoming);
        let mut done = false;
        match state? {
            ConnectionState::EncodeTlsData(mut encode) => match encode.encode(&mut scratch) {
                Ok(n) => out.extend_from_slice(&scratch[..n]),
                Err(EncodeError::InsufficientSize(e)) => anyhow::bail!("encode: {e:?}"),
                Err(e) => anyhow::bail!("encode: {e:?}"),
            },
            ConnectionState::TransmitTlsData(transmit) => transmit.done(),
            ConnectionState::ReadTraffic(mut read) => {
                while let Some(record) = read.next_record() {
                    plaintext.extend_from_slice(record?.payload);
                }
            }
            ConnectionState::WriteTraffic(mut write) => {
                if plaintext == b"ping" && !*replied {
                    let n = write.encrypt(b"pong", &mut scratch)?;
                    out.extend_from_slice(&scratch[..n]);
                    *replied = true;
                }
                done = true;
            }
            ConnectionState::BlockedHandshake => done = true,
            other => anyhow::bail!("unexpected {other:?}"),
        }
        incoming.drain(..discard);
        if done {
            return Ok(out);
        }
    }
}

fn unbuffered(
    server_config: &Arc<rustls::ServerConfig>,
    client_config: &Arc<rustls::ClientConfig>,
) -> anyhow::Result<(UnbufferedServerConnection, ClientConnection)> {
    let mut server = UnbufferedServerConnection::new(server_config.clone())?;
    let mut client = ClientConnection::new(client_config.clone(), "localhost".try_into()?)?;
    client.writer().write_all(b"ping")?;
    let (mut plaintext, mut replied, mut incoming) = (Vec::new(), false, Vec::new());
    for _ in 0..10 {
        incoming.extend(pass(&mut client));
        let back = drive(&mut server, &mut incoming, &mut plaintext, &mut replied)?;
        client.read_tls(&mut &back[..])?;
        client.process_new_packets()?;
        if replied {
            break;
        }
    }
    let mut got = [0u8; 4];
    client.reader().read_exact(&mut got)?;
    anyhow::ensure!(&got == b"pong", "no pong");
    // The caller's buffers go: an idle connection holds none.
    anyhow::ensure!(incoming.is_empty(), "bytes left over");
    Ok((server, client))
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(Ok(2000), |a| a.parse())
        .map_err(|e| anyhow::anyhow!("N: {e}"))?;
    let (server_config, client_config) = configs()?;
    let mut per_connection = Vec::new();
    for api in ["buffered", "unbuffered"] {
        let before = held();
        let (servers, clients): (Vec<_>, Vec<_>) = match api {
            "buffered" => {
                let pairs = (0..n)
                    .map(|_| buffered(&server_config, &client_config))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let (s, c): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
                (s.into_iter().map(Server::Buffered).collect(), c)
            }
            _ => {
                let pairs = (0..n)
                    .map(|_| unbuffered(&server_config, &client_config))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let (s, c): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
                (s.into_iter().map(Server::Unbuffered).collect(), c)
            }
        };
        drop(clients);
        let bytes = (held() - before) as f64 / n as f64;
        per_connection.push(format!("\"{api}\":{bytes:.0}"));
        drop(servers);
    }
    println!(
        "{{\"connections\":{n},\"bytes_per_idle_server_connection\":{{{}}}}}",
        per_connection.join(",")
    );
    Ok(())
}

/// Either kind, held alive until measured.
#[allow(dead_code)]
enum Server {
    Buffered(ServerConnection),
    Unbuffered(UnbufferedServerConnection),
}
