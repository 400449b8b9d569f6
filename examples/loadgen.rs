//! `make bench`'s load generator: drives a TLS proxy (wssbridge, nginx, HAProxy) in front of
//! `benchd` and prints one JSON line of results.
//!
//! Modes:
//! - `rate`: workers loop connect → full handshake (never resuming) → `GET /ping` with
//!   `Connection: close` → read the answer → wait for close; connections/s and latency.
//! - `throughput`: upgraded connections stream writes of `--size` bytes (16 KiB by default,
//!   each one TLS record up to 16 KiB) that the backend echoes; MB/s sent + received.
//! - `latency`: upgraded connections ping-pong 64-byte messages, each echo checked; RTT.
//! - `idle`: open N upgraded connections, print `{"opened":N,"ms_per_1000":[…]}` (the time each
//!   thousand took to open), wait for a line on stdin, then check that every one still echoes
//!   and print `{"echoed":N}`. With `--steps 1000,2500`, it stops at each step too, printing
//!   the same line and waiting for one (`make bench-scale` measures the proxy there).
//! - `churn`: `--conns` new connections per second for `--seconds`, each its own task: half
//!   upgrade, echo one message and close; half `GET /ping` with `Connection: close`. Prints
//!   how many ended well and how many did not (`make soak`).
//! - `chat`: upgraded connections to benchd's `/chat` in rooms of 8: each sends one 100-byte
//!   message (a masked WebSocket frame: 6 header bytes, 94 of payload), waits until the
//!   room's fan-out brings it back (the server's frame, 96 bytes), and sends the next,
//!   counting every message the room delivers to it: one small message per connection per
//!   wake-up, the pattern of a chat, where the proxy cannot coalesce. Deliveries per second.
//! - `storm`: a reconnect storm. `--conns` upgraded connections, each its own client that
//!   keeps its TLS session tickets (as each browser does), opened in batches of 100; prints
//!   `{"opened":N}` and waits for a line on stdin. Then, with `--trigger client`, it drops
//!   every connection at once (a network blip); with `--trigger server` it waits for the
//!   proxy to end each (a drain's 1001, an upgrade). Each reconnects after a delay spread over
//!   0.5-1.5 s (socket.io's 1 s ± 50%) and is back once upgraded again; it prints how many
//!   came back, failed and resumed, and the seconds from the first end to the last return.
//! - `stream` / `frames`: upgraded connections to benchd's `/stream`, both sides writing
//!   `--size`-byte writes at once; with `frames` each write is one WebSocket frame. The pair
//!   gives the cost of following frame boundaries.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "../tests/support/insecure.rs"]
mod insecure;

use clap::Parser;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

#[derive(Parser)]
struct Args {
    /// rate | throughput | latency | idle | churn | stream | frames
    mode: String,
    /// The proxy's TLS address.
    addr: SocketAddr,
    /// Concurrent workers (rate) or connections (throughput, latency, idle).
    #[arg(long, default_value_t = 8)]
    conns: usize,
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Bytes per write in `throughput` mode.
    #[arg(long, default_value_t = 16 * 1024)]
    size: usize,
    /// In `throughput` mode, the bytes the backend's echo reads at a time (benchd's
    /// `/ws?read=N`; 0: its default, tokio's 8 KiB copy).
    #[arg(long, default_value_t = 0)]
    echo_read: usize,
    /// In `churn` mode, how long each upgraded connection stays open after its echo.
    #[arg(long, default_value_t = 0)]
    hold_ms: u64,
    /// Cipher suites offered first: `browser` puts TLS_AES_128_GCM_SHA256 first, as Chrome
    /// and Firefox do; `rustls` keeps rustls's default (TLS_AES_256_GCM_SHA384 first, as
    /// OpenSSL-based clients such as Node and Python also do).
    #[arg(long, default_value = "browser")]
    suites: String,
    /// Key-exchange groups offered: `x25519` (X25519 first: what every peer negotiates, the
    /// default) or `chromium` (X25519MLKEM768 first, then X25519, P-256, P-384: Chromium's
    /// order since version 131; a server that prefers the hybrid does ML-KEM too).
    #[arg(long, default_value = "x25519")]
    kx: String,
    /// In `storm` mode, who ends the connections: `client` (a blip) or `server` (a drain).
    #[arg(long, default_value = "client")]
    trigger: String,
    /// In `idle` mode, counts to stop at on the way to `--conns`.
    #[arg(long, value_delimiter = ',')]
    steps: Vec<usize>,
    /// The local address to connect from (any of 127/8): each source address has its own
    /// ephemeral ports, so several loadgens can hold more connections than one range allows.
    #[arg(long)]
    from: Option<std::net::IpAddr>,
}

/// `--from`, set once in `main`: every connection of the process binds to it.
static FROM: std::sync::OnceLock<Option<std::net::IpAddr>> = std::sync::OnceLock::new();

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    FROM.get_or_init(|| args.from);
    let connector = TlsConnector::from(client_config(&args.suites, &args.kx)?);
    let run = Duration::from_secs_f64(args.seconds);
    let line = match args.mode.as_str() {
        "rate" => rate(connector, args.addr, args.conns, run).await,
        "throughput" => {
            let echo_read = args.echo_read;
            throughput(connector, args.addr, args.conns, run, args.size, echo_read).await?
        }
        "stream" | "frames" => {
            let frames = args.mode == "frames";
            stream(connector, args.addr, args.conns, run, args.size, frames).await?
        }
        "latency" => latency(connector, args.addr, args.conns, run).await?,
        "chat" => chat(connector, args.addr, args.conns, run).await?,
        "storm" => {
            let config = client_config(&args.suites, &args.kx)?;
            storm(config, args.addr, args.conns, &args.trigger).await?
        }
        "idle" => idle(connector, args.addr, args.conns, &args.steps).await?,
        "churn" => {
            let hold = Duration::from_millis(args.hold_ms);
            churn(connector, args.addr, args.conns, run, hold).await
        }
        other => anyhow::bail!("unknown mode {other}"),
    };
    println!("{line}");
    Ok(())
}

/// No verification and no resumption: every connection is a full handshake, and the client
/// spends as little CPU as it can (the machine is shared with the proxy). Key exchange is
/// X25519, the group every peer (OpenSSL 3.0 included) negotiates, so all peers do the same
/// handshake crypto; rustls would otherwise pick the post-quantum hybrid against wssbridge
/// only.
fn client_config(suites: &str, kx: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    match suites {
        "browser" => {
            let first = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256;
            provider
                .cipher_suites
                .retain(|s| s.suite() != first.suite());
            provider.cipher_suites.insert(0, first);
        }
        "rustls" => {}
        other => anyhow::bail!("--suites {other}: expected browser or rustls"),
    }
    // X25519 first, so it is the key share sent; P-256 and P-384 listed because OpenSSL 3.0
    // refuses an ECDSA certificate whose curve the client does not list ("no shared cipher").
    use rustls::crypto::aws_lc_rs::kx_group::{SECP256R1, SECP384R1, X25519, X25519MLKEM768};
    provider.kx_groups = match kx {
        "x25519" => vec![X25519, SECP256R1, SECP384R1],
        "chromium" => vec![X25519MLKEM768, X25519, SECP256R1, SECP384R1],
        other => anyhow::bail!("--kx {other}: expected x25519 or chromium"),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(insecure::AcceptAny))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn tls(connector: &TlsConnector, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = match FROM.get().copied().flatten() {
        Some(from) => connect_from(from, addr).await?,
        None => TcpStream::connect(addr).await?,
    };
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await
}

/// The next local port `--from` connections bind to.
static NEXT_PORT: AtomicU64 = AtomicU64::new(PORTS.start as u64);
/// Ports below Linux's default ephemeral range (32768-60999). A port taken by `bind` (on any
/// address) is one the kernel no longer gives to any `connect` on the machine, so binding
/// ephemeral ports for 100,000 clients starves the proxies' own connections to their
/// backends (they answered 503); ports outside the range leave it whole.
const PORTS: std::ops::Range<u16> = 10_000..32_000;

/// Connects from `from`, on the next free port of [`PORTS`].
async fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use std::io::ErrorKind::{AddrInUse, AddrNotAvailable};
    loop {
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(port)
            .ok()
            .filter(|p| PORTS.contains(p))
            .ok_or_else(|| std::io::Error::new(AddrNotAvailable, "--from: out of local ports"))?;
        let socket = match from {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // A port whose last connection is in TIME_WAIT can be bound again.
        socket.set_reuseaddr(true)?;
        match socket.bind(SocketAddr::new(from, port)) {
            Err(e) if e.kind() == AddrInUse => continue,
            other => other?,
        }
        match socket.connect(addr).await {
            Err(e) if matches!(e.kind(), AddrInUse | AddrNotAvailable) => continue,
            other => return other,
        }
    }
}

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A connection upgraded through the proxy: the 101 has been read, what follows is echoed.
async fn upgraded(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> anyhow::Result<TlsStream<TcpStream>> {
    upgraded_with(connector, addr, UPGRADE).await
}

/// The same with `request` as the upgrade request.
async fn upgraded_with(
    connector: &TlsConnector,
    addr: SocketAddr,
    request: &[u8],
) -> anyhow::Result<TlsStream<TcpStream>> {
    let mut s = tls(connector, addr).await?;
    // tokio-rustls may keep written bytes in rustls until a flush.
    s.write_all(request).await?;
    s.flush().await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await?;
        head.push(byte[0]);
    }
    anyhow::ensure!(
        head.starts_with(b"HTTP/1.1 101"),
        "not upgraded: {}",
        String::from_utf8_lossy(&head)
    );
    Ok(s)
}

/// One short HTTPS exchange on a new connection: `GET /ping`, answered 200, then closed.
async fn ping(connector: &TlsConnector, addr: SocketAddr) -> std::io::Result<()> {
    let mut s = tls(connector, addr).await?;
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    s.flush().await?;
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer).await {
        Ok(_) => {}
        // A peer that closes without close_notify: the answer is still whole.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e),
    }
    if answer.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other("bad answer"))
    }
}

/// `n` upgraded connections, opened one after the other before the clock starts.
async fn open(
    connector: &TlsConnector,
    addr: SocketAddr,
    n: usize,
) -> anyhow::Result<Vec<TlsStream<TcpStream>>> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        streams.push(upgraded(connector, addr).await?);
    }
    Ok(streams)
}

async fn rate(connector: TlsConnector, addr: SocketAddr, workers: usize, run: Duration) -> String {
    let deadline = Instant::now() + run;
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let connector = connector.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            while Instant::now() < deadline {
                let start = Instant::now();
                match ping(&connector, addr).await {
                    Ok(()) => times.push(start.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            times
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        times.extend(t.await.unwrap_or_default());
    }
    times.sort_unstable();
    let secs = run.as_secs_f64();
    format!(
        "{{\"conns\":{},\"per_sec\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"errors\":{}}}",
        times.len(),
        times.len() as f64 / secs,
        pct(&times, 50.0).as_secs_f64() * 1e3,
        pct(&times, 99.0).as_secs_f64() * 1e3,
        errors.load(Ordering::Relaxed)
    )
}

/// Both ways at once, as fast as the proxy moves them: the client writes `size`-byte writes
/// and benchd (`/stream`) writes its own; with `frames`, each write is one WebSocket binary
/// frame (masked with a zero key, as a client sends them), so the proxy's frame reader has
/// one header per write to follow. Compared with the same without frames, it is the cost of
/// following frame boundaries.
async fn stream(
    connector: TlsConnector,
    addr: SocketAddr,
    conns: usize,
    run: Duration,
    size: usize,
    frames: bool,
) -> anyhow::Result<String> {
    let flag = if frames { "&frames" } else { "" };
    let request = String::from_utf8_lossy(UPGRADE).replacen(
        "GET /ws ",
        &format!("GET /stream?size={size}{flag} "),
        1,
    );
    let mut streams = Vec::new();
    for _ in 0..conns {
        streams.push(upgraded_with(&connector, addr, request.as_bytes()).await?);
    }
    let mut chunk = Vec::with_capacity(size + 14);
    if frames {
        chunk.push(0x82);
        match size {
            0..=125 => chunk.push(0x80 | size as u8),
            126..=0xffff => {
                chunk.push(0x80 | 126);
                chunk.extend_from_slice(&(size as u16).to_be_bytes());
            }
            _ => {
                chunk.push(0x80 | 127);
                chunk.extend_from_slice(&(size as u64).to_be_bytes());
            }
        }
        chunk.extend_from_slice(&[0; 4]);
    }
    chunk.resize(chunk.len() + size, 0x5a);
    let (sent, received) = pump(streams, chunk, run).await;
    Ok(rates(sent, received, run))
}

/// The JSON line of a throughput run: MB/s both ways together, and each way's MB.
fn rates(tx: u64, rx: u64, run: Duration) -> String {
    format!(
        "{{\"mb_per_sec\":{:.1},\"tx_mb\":{:.1},\"rx_mb\":{:.1}}}",
        (tx + rx) as f64 / 1e6 / run.as_secs_f64(),
        tx as f64 / 1e6,
        rx as f64 / 1e6
    )
}

/// Writes `chunk` over and over on every stream and counts what comes back, for `run`.
async fn pump(streams: Vec<TlsStream<TcpStream>>, chunk: Vec<u8>, run: Duration) -> (u64, u64) {
    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + run;
    let mut tasks = Vec::new();
    for s in streams {
        let (mut rd, mut wr) = tokio::io::split(s);
        let (sent, received, chunk) = (sent.clone(), received.clone(), chunk.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                if wr.write_all(&chunk).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }));
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), rd.read(&mut buf)).await
            {
                if n == 0 {
                    break;
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep_until(deadline.into()).await;
    let counts = (
        sent.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
    );
    for t in tasks {
        t.abort();
    }
    counts
}

async fn throughput(
    connector: TlsConnector,
    addr: SocketAddr,
    conns: usize,
    run: Duration,
    size: usize,
    echo_read: usize,
) -> anyhow::Result<String> {
    let streams = match echo_read {
        0 => open(&connector, addr, conns).await?,
        n => {
            let request =
                String::from_utf8_lossy(UPGRADE).replacen("/ws", &format!("/ws?read={n}"), 1);
            let mut streams = Vec::with_capacity(conns);
            for _ in 0..conns {
                streams.push(upgraded_with(&connector, addr, request.as_bytes()).await?);
            }
            streams
        }
    };
    let (tx, rx) = pump(streams, vec![0x5au8; size], run).await;
    Ok(rates(tx, rx, run))
}

/// Members per room and bytes per message in `chat` mode.
const ROOM: usize = 8;
const MESSAGE: usize = 100;

async fn chat(
    connector: TlsConnector,
    addr: SocketAddr,
    conns: usize,
    run: Duration,
) -> anyhow::Result<String> {
    let request = format!(
        "GET /chat?room={ROOM}&size={MESSAGE}&frames HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        streams.push(upgraded_with(&connector, addr, request.as_bytes()).await?);
    }
    // Every room full before anyone speaks.
    let start = Arc::new(tokio::sync::Barrier::new(conns));
    let deadline = Instant::now() + run + Duration::from_millis(100);
    let began = Instant::now() + Duration::from_millis(100);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (id, mut s) in streams.into_iter().enumerate() {
        let (start, errors) = (start.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut delivered = 0u64;
            // A binary frame, masked with the key 0 (the payload reads as it is).
            let mut message = [0x20u8; MESSAGE];
            message[..6].copy_from_slice(&[0x82, 0x80 | (MESSAGE - 6) as u8, 0, 0, 0, 0]);
            let mut unit = [0u8; MESSAGE - 4];
            let mut seq = 0u64;
            let once = async {
                while Instant::now() < deadline {
                    message[6..14].copy_from_slice(&(id as u64).to_le_bytes());
                    message[14..22].copy_from_slice(&seq.to_le_bytes());
                    s.write_all(&message).await?;
                    s.flush().await?;
                    loop {
                        s.read_exact(&mut unit).await?;
                        delivered += 1;
                        if unit[2..18] == message[6..22] {
                            break;
                        }
                    }
                    seq += 1;
                }
                Ok::<_, std::io::Error>(())
            };
            if tokio::time::timeout(run + Duration::from_secs(10), once)
                .await
                .map_or(true, |r| r.is_err())
            {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            delivered
        }));
    }
    let mut delivered = 0;
    for t in tasks {
        delivered += t.await?;
    }
    let secs = began.elapsed().as_secs_f64();
    Ok(format!(
        "{{\"conns\":{conns},\"deliveries\":{delivered},\"per_sec\":{:.1},\"errors\":{}}}",
        delivered as f64 / secs,
        errors.load(Ordering::Relaxed)
    ))
}

async fn latency(
    connector: TlsConnector,
    addr: SocketAddr,
    conns: usize,
    run: Duration,
) -> anyhow::Result<String> {
    let streams = open(&connector, addr, conns).await?;
    let deadline = Instant::now() + run;
    let mut tasks = Vec::new();
    for (id, mut s) in streams.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut times = Vec::new();
            let mut message = [0u8; 64];
            let mut back = [0u8; 64];
            let mut seq = 0u64;
            while Instant::now() < deadline {
                message[..8].copy_from_slice(&seq.to_le_bytes());
                message[8..16].copy_from_slice(&(id as u64).to_le_bytes());
                let start = Instant::now();
                let sent = async {
                    s.write_all(&message).await?;
                    s.flush().await
                };
                if sent.await.is_err() || s.read_exact(&mut back).await.is_err() {
                    return Err(anyhow::anyhow!("connection {id} failed"));
                }
                anyhow::ensure!(back == message, "echo mismatch on connection {id}");
                times.push(start.elapsed());
                seq += 1;
            }
            Ok(times)
        }));
    }
    let mut times = Vec::new();
    for t in tasks {
        times.extend(t.await??);
    }
    times.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok(format!(
        "{{\"count\":{},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1}}}",
        times.len(),
        us(pct(&times, 50.0)),
        us(pct(&times, 90.0)),
        us(pct(&times, 99.0)),
        us(times.last().copied().unwrap_or_default())
    ))
}

async fn idle(
    connector: TlsConnector,
    addr: SocketAddr,
    count: usize,
    steps: &[usize],
) -> anyhow::Result<String> {
    let mut streams = Vec::with_capacity(count);
    // Time spent opening, without the pauses at steps.
    let mut per_1000 = Vec::new();
    let mut spent = Duration::ZERO;
    let wait_for_line = || async {
        tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await?
    };
    // Open in batches: a burst of thousands of handshakes is not what is being measured.
    for start in (0..count).step_by(100) {
        let began = Instant::now();
        let batch = (start..(start + 100).min(count)).map(|_| upgraded(&connector, addr));
        for s in futures_util::future::join_all(batch).await {
            streams.push(s?);
        }
        spent += began.elapsed();
        let opened = streams.len();
        if opened.is_multiple_of(1000) {
            per_1000.push(spent.as_secs_f64() * 1000.0);
            spent = Duration::ZERO;
        }
        if opened == count || steps.contains(&opened) {
            let ms: Vec<String> = per_1000.iter().map(|ms| format!("{ms:.1}")).collect();
            println!("{{\"opened\":{opened},\"ms_per_1000\":[{}]}}", ms.join(","));
            wait_for_line().await?;
        }
    }
    let checks = streams.into_iter().map(|mut s| async move {
        let ping = *b"still here? 0123";
        let mut back = [0u8; 16];
        s.write_all(&ping).await?;
        s.flush().await?;
        tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut back)).await??;
        anyhow::ensure!(back == ping, "echo mismatch");
        Ok::<_, anyhow::Error>(())
    });
    let mut echoed = 0;
    for chunk in futures_util::future::join_all(checks).await {
        echoed += usize::from(chunk.is_ok());
    }
    Ok(format!("{{\"echoed\":{echoed}}}"))
}

async fn churn(
    connector: TlsConnector,
    addr: SocketAddr,
    per_sec: usize,
    run: Duration,
    hold: Duration,
) -> String {
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let deadline = Instant::now() + run;
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        tick.tick().await;
        n += 1;
        let (connector, ok, errors) = (connector.clone(), ok.clone(), errors.clone());
        tasks.spawn(async move {
            let once = async {
                if n.is_multiple_of(2) {
                    let mut s = upgraded(&connector, addr).await?;
                    let ping = *b"churning 0123456";
                    let mut back = [0u8; 16];
                    s.write_all(&ping).await?;
                    s.flush().await?;
                    s.read_exact(&mut back).await?;
                    anyhow::ensure!(back == ping, "echo mismatch");
                    tokio::time::sleep(hold).await;
                    s.shutdown().await?;
                } else {
                    ping(&connector, addr).await?;
                }
                Ok::<_, anyhow::Error>(())
            };
            match tokio::time::timeout(Duration::from_secs(30), once).await {
                Ok(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                _ => errors.fetch_add(1, Ordering::Relaxed),
            };
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    format!(
        "{{\"started\":{n},\"ok\":{},\"errors\":{}}}",
        ok.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed)
    )
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A reconnect storm (`storm` mode): see the module's text.
async fn storm(
    base: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    count: usize,
    trigger: &str,
) -> anyhow::Result<String> {
    anyhow::ensure!(
        matches!(trigger, "client" | "server"),
        "--trigger {trigger}: expected client or server"
    );
    // Each client its own session store, as each browser has.
    let clients: Vec<TlsConnector> = (0..count)
        .map(|_| {
            let mut config = (*base).clone();
            config.resumption = rustls::client::Resumption::in_memory_sessions(4);
            TlsConnector::from(Arc::new(config))
        })
        .collect();
    let mut streams = Vec::with_capacity(count);
    for start in (0..count).step_by(100) {
        let batch = clients[start..(start + 100).min(count)]
            .iter()
            .map(|c| upgraded(c, addr));
        for s in futures_util::future::join_all(batch).await {
            streams.push(s?);
        }
    }
    println!("{{\"opened\":{}}}", streams.len());
    tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await??;
    let began = Instant::now();
    let first_end = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let tasks = streams
        .into_iter()
        .zip(clients)
        .enumerate()
        .map(|(i, (mut s, client))| {
            let first_end = first_end.clone();
            let blip = trigger == "client";
            async move {
                if blip {
                    drop(s);
                } else {
                    // Until the proxy ends it (its close frame, then its close), for 30 s at most:
                    // a failed upgrade ends nothing, and the storm must still end.
                    let mut sink = [0u8; 256];
                    let ended =
                        async { while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {} };
                    let _ = tokio::time::timeout(Duration::from_secs(30), ended).await;
                    drop(s);
                }
                let ended = Instant::now();
                first_end.lock().unwrap().get_or_insert(ended);
                // 1 s ± 50%, spread evenly over the clients.
                let delay = 500 + (i as u64 * 7919) % 1000;
                tokio::time::sleep(Duration::from_millis(delay)).await;
                match upgraded(&client, addr).await {
                    Ok(s) => {
                        let resumed =
                            s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                        (Some(s), resumed, Instant::now())
                    }
                    Err(_) => (None, false, Instant::now()),
                }
            }
        });
    let results = futures_util::future::join_all(tasks).await;
    let back = results.iter().filter(|(s, _, _)| s.is_some()).count();
    let resumed = results.iter().filter(|(_, r, _)| *r).count();
    let last = results.iter().map(|(_, _, at)| *at).max().unwrap_or(began);
    let first = first_end.lock().unwrap().unwrap_or(began);
    Ok(format!(
        "{{\"conns\":{count},\"back\":{back},\"failed\":{},\"resumed\":{resumed},\"seconds\":{:.3}}}",
        count - back,
        last.duration_since(first).as_secs_f64()
    ))
}
