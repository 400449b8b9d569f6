//! Shared fixtures: a test PKI, wssbridge started in-process on port 0, a TLS client that
//! trusts only the test root, and real backends (echo, upgrade-echo, WebSocket echo,
//! recording, refusing, silent). Everything listens on 127.0.0.1.
#![allow(dead_code)]

pub mod binary;
pub mod dns;
pub mod insecure;
pub mod peers;
pub mod pki;

/// Fails at once, in one line naming the Debian package, when a program a test needs is
/// missing: before the test starts anything, not half-way.
pub fn require(programs: &[(&str, &str)]) {
    for (program, package) in programs {
        let found = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
        }) || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|dir| std::path::Path::new(dir).join(program).is_file());
        assert!(
            found,
            "this test needs {program}: apt-get install {package} (.ci/run installs it)"
        );
    }
}

/// A fresh directory under cargo's per-target temp dir, unique to this test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        peers_serial()
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// One plain-HTTP GET to an admin port: the status, the content type and the body.
pub async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("admin connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut reply))
        .await
        .expect("admin answer")
        .unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("a response");
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_default()
        .to_string();
    (status_of(head), content_type, body.to_string())
}

/// A number unique within this test process, for directory names.
pub fn peers_serial() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use wssbridge::cli::Args;
use wssbridge::{Config, Server};

/// Bound on any single wait in a test, so a broken tunnel fails a test instead of hanging it.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Pki {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub root: CertificateDer<'static>,
}

/// One PKI per test binary, written under cargo's per-target temp dir.
pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let generated = pki::generate(&["localhost", "127.0.0.1"]).expect("generate test PKI");
        let dir =
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pki-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create PKI dir");
        let cert = dir.join("chain.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, &generated.chain_pem).expect("write chain");
        std::fs::write(&key, &generated.key_pem).expect("write key");
        std::fs::write(dir.join("root.pem"), &generated.root_pem).expect("write root");
        let root = CertificateDer::from_pem_slice(generated.root_pem.as_bytes()).expect("root PEM");
        Pki {
            dir,
            cert,
            key,
            root,
        }
    })
}

/// A root store holding only the test root.
pub fn roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki().root.clone()).expect("add root");
    roots
}

/// A rustls client that trusts only the test root and offers `alpn`.
pub fn client_config_with(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

pub fn client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| client_config_with(&[b"http/1.1"]))
        .clone()
}

pub async fn tls_connect_with(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("localhost").expect("server name");
    TlsConnector::from(config).connect(name, tcp).await
}

/// A TLS connection to `addr` from the local address `from` (any of 127/8 on Linux), so a
/// test can be several clients.
pub async fn tls_connect_from(from: std::net::IpAddr, addr: SocketAddr) -> TlsStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind client");
    let tcp = tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(WAIT, TlsConnector::from(client_config()).connect(name, tcp))
        .await
        .expect("TLS connect timed out")
        .expect("TLS connect")
}

pub async fn tls_connect(addr: SocketAddr) -> TlsStream<TcpStream> {
    tokio::time::timeout(WAIT, tls_connect_with(addr, client_config()))
        .await
        .expect("TLS connect timed out")
        .expect("TLS connect")
}

/// What wssbridge logged in this test process (text format, debug and above), captured from
/// the first call on. Lines of other tests running in the same process may be mixed in:
/// pick yours by something unique, such as the client's port.
pub fn logs() -> Logs {
    static CAPTURED: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    let captured = CAPTURED.get_or_init(|| {
        let captured = Arc::new(Mutex::new(Vec::new()));
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("wssbridge=debug"))
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one log capture");
        captured
    });
    Logs(captured.clone())
}

pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// The lines logged so far that contain every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        let all = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        all.lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_string)
            .collect()
    }

    /// Waits (bounded by [`WAIT`]) for a line with every one of `needles`, and returns it.
    pub async fn wait_for(&self, needles: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(line) = self.lines_with(needles).pop() {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {needles:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A blocking client on rustls's own API, for tests that look at what each read from the
/// socket brings (which TLS messages arrive together).
pub struct RawTls {
    sock: std::net::TcpStream,
    pub tls: rustls::ClientConnection,
}

impl RawTls {
    /// Connects and completes the handshake. `first` (may be empty) is handed to rustls
    /// before the handshake ends, so it goes right behind the client's Finished.
    pub fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>, first: &[u8]) -> RawTls {
        use std::io::Write;
        let mut sock = std::net::TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(WAIT)).expect("read timeout");
        let name = ServerName::try_from("localhost").expect("server name");
        let mut tls = rustls::ClientConnection::new(config, name).expect("client");
        tls.writer()
            .write_all(first)
            .expect("buffer the first bytes");
        while tls.is_handshaking() {
            tls.complete_io(&mut sock).expect("handshake");
        }
        while tls.wants_write() {
            tls.write_tls(&mut sock).expect("write");
        }
        RawTls { sock, tls }
    }

    /// Sends `bytes` now.
    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.tls.writer().write_all(bytes).expect("buffer");
        while self.tls.wants_write() {
            self.tls.write_tls(&mut self.sock).expect("write");
        }
    }

    /// Sends each of `messages` as a TLS record of its own, all in one write to the socket.
    pub fn send_records(&mut self, messages: &[&[u8]]) {
        use std::io::Write;
        for m in messages {
            self.tls.writer().write_all(m).expect("buffer");
        }
        let mut wire = Vec::new();
        while self.tls.wants_write() {
            self.tls.write_tls(&mut wire).expect("encrypt");
        }
        self.sock.write_all(&wire).expect("write");
    }

    /// One read from the socket, all of it through rustls; the state after it.
    pub fn read_once(&mut self) -> rustls::IoState {
        use std::io::Read;
        let mut buf = vec![0u8; 64 * 1024];
        let n = self.sock.read(&mut buf).expect("read");
        assert!(n > 0, "closed by the server");
        let mut got = &buf[..n];
        let mut state = None;
        while !got.is_empty() {
            self.tls.read_tls(&mut got).expect("read_tls");
            state = Some(self.tls.process_new_packets().expect("TLS"));
        }
        state.expect("bytes were read")
    }
}

/// Waits until `done` says yes, checking every 10 ms, or fails after [`WAIT`] naming `what`:
/// a test waits on the event itself, not on a guess of how long it takes.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A configuration from command-line flags (the first being the program name), as the
/// binary builds it: the tests speak the flags users write.
pub fn config_from_flags(argv: &[String]) -> Config {
    let args = <Args as clap::Parser>::try_parse_from(argv).expect("flags parse");
    Config::build(&args.into_settings().expect("settings")).expect("config")
}

/// wssbridge running in-process on 127.0.0.1 port 0.
pub struct Tunnel {
    pub addr: SocketAddr,
    /// The `--redirect-http` listeners, bound like the TLS one.
    pub redirect_addrs: Vec<SocketAddr>,
    /// The `--admin` listener, if asked for.
    pub admin_addr: Option<SocketAddr>,
    pub server: Server,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Tunnel {
    /// Starts with the test certificate and `flags` (routes, timeouts...).
    pub async fn start(flags: &[&str]) -> Tunnel {
        Tunnel::start_with_cert(&pki().cert, &pki().key, flags).await
    }

    /// Starts with the given certificate chain and key files and `flags`.
    pub async fn start_with_cert(cert: &Path, key: &Path, flags: &[&str]) -> Tunnel {
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let mut all = vec!["--cert", &cert, "--key", &key];
        all.extend_from_slice(flags);
        Tunnel::start_with_flags(&all).await
    }

    /// Starts with exactly `flags` (and `--listen 127.0.0.1:0`): certificates included.
    pub async fn start_with_flags(flags: &[&str]) -> Tunnel {
        let mut argv: Vec<String> =
            vec!["wssbridge".into(), "--listen".into(), "127.0.0.1:0".into()];
        argv.extend(flags.iter().map(|f| f.to_string()));
        let config = config_from_flags(&argv);
        let listening = config.process.listening.clone();
        let listener = wssbridge::accept::bind(listening.tls[0]).expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let redirect: Vec<_> = listening
            .redirect
            .iter()
            .map(|a| wssbridge::accept::bind(*a).expect("bind"))
            .collect();
        let redirect_addrs = redirect.iter().map(|l| l.local_addr().unwrap()).collect();
        let admin = listening
            .admin
            .map(|a| wssbridge::accept::bind(a).expect("bind"));
        let admin_addr = admin.as_ref().map(|l| l.local_addr().unwrap());
        let listeners = wssbridge::Listeners {
            tls: vec![listener],
            redirect,
            admin,
            parent: None,
            ticket_keys: None,
            from_flags: Default::default(),
        };
        let server = Server::new(config).expect("server");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut events = server.events();
        let task = tokio::spawn(server.clone().run(listeners, async {
            let _ = stopped.await;
        }));
        // Ready before the test's first request (`/readyz` says "starting" until then), or
        // ended: a test of a failing start sees the error from `finished`.
        let ready = async {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match events.recv().await {
                    Ok(wssbridge::lifecycle::Event::Ready) | Err(RecvError::Closed) => return,
                    _ => {}
                }
            }
        };
        let ended = async {
            while !task.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let _ = tokio::time::timeout(WAIT, async {
            tokio::select! {
                _ = ready => {}
                _ = ended => {}
            }
        })
        .await;
        Tunnel {
            addr,
            redirect_addrs,
            admin_addr,
            server,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Reloads the running server with the test certificate and `flags`, as a reload of the
    /// binary's configuration would.
    pub fn reload(&self, flags: &[&str]) {
        let mut argv: Vec<String> = ["wssbridge", "--listen", "127.0.0.1:0", "--cert"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        argv.push(pki().cert.display().to_string());
        argv.push("--key".into());
        argv.push(pki().key.display().to_string());
        argv.extend(flags.iter().map(|f| f.to_string()));
        self.server
            .reload(config_from_flags(&argv))
            .expect("reload");
    }

    /// Fires the shutdown future, as SIGTERM would.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits for `run` to return after [`Tunnel::begin_shutdown`].
    pub async fn finished(&mut self) {
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("run did not return")
                .expect("run panicked")
                .expect("run failed");
        }
    }

    /// Waits until no connection is open in the tunnel; every test ends with this.
    pub async fn assert_idle(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.server.connections() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} connection(s) still open in the tunnel",
                self.server.connections()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends `raw` over a new TLS connection and returns everything read until close.
    pub async fn exchange(&self, raw: &[u8]) -> String {
        exchange(self.addr, raw).await
    }
}

/// Sends `raw` over a new TLS connection to `addr` and returns everything read until close.
pub async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut tls = tls_connect(addr).await;
    tls.write_all(raw).await.expect("write request");
    read_to_close(&mut tls).await
}

/// A WebSocket client over TLS through the tunnel.
pub type Ws = tokio_tungstenite::WebSocketStream<TlsStream<TcpStream>>;

/// Opens a `wss://localhost:PORT/` WebSocket (tokio-tungstenite) to `addr`.
pub async fn ws_connect(addr: SocketAddr) -> Ws {
    let tls = tls_connect(addr).await;
    let url = format!("wss://localhost:{}/", addr.port());
    tokio_tungstenite::client_async(url, tls)
        .await
        .expect("ws handshake")
        .0
}

/// Sends `text` and checks that the same message comes back, bounded by [`WAIT`].
pub async fn echo(ws: &mut Ws, text: &str) {
    use futures_util::{SinkExt, StreamExt};
    let message = tokio_tungstenite::tungstenite::Message::text(text);
    ws.send(message.clone()).await.expect("send");
    let got = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("echo in time");
    assert_eq!(got.expect("a message").expect("a good message"), message);
}

/// Reads until the peer closes (close_notify or EOF), bounded by [`WAIT`].
pub async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => panic!("read failed after {} bytes: {e}", out.len()),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "peer did not close; read {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw HTTP response.
pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// Reads (and drops) the body a request head announces: Content-Length, or chunked up to
/// the last chunk (no trailers).
async fn read_body<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, head: &str) -> Option<()> {
    if head.contains("transfer-encoding: chunked") {
        let mut tail = Vec::new();
        let mut byte = [0u8; 1];
        while !tail.ends_with(b"\r\n0\r\n\r\n") && tail != b"0\r\n\r\n" {
            stream.read_exact(&mut byte).await.ok()?;
            tail.push(byte[0]);
        }
        return Some(());
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(())
}

/// Reads one HTTP head (up to the blank line) from `stream`, byte by byte so nothing after it
/// is consumed.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(head)
}

pub const UPGRADE_REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// A backend on 127.0.0.1: its address, and what it recorded.
pub struct Backend {
    pub addr: SocketAddr,
    /// Every byte each connection sent, in accept order (recording backends only).
    pub received: Arc<Mutex<Vec<Vec<u8>>>>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    async fn spawn<F, Fut>(handler: F) -> Backend
    where
        F: Fn(TcpStream, Arc<Mutex<Vec<Vec<u8>>>>, usize) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let recorded = received.clone();
        let task = tokio::spawn(async move {
            let handler = Arc::new(handler);
            while let Ok((stream, _)) = listener.accept().await {
                let index = {
                    let mut r = recorded.lock().unwrap();
                    r.push(Vec::new());
                    r.len() - 1
                };
                let handler = handler.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move { handler(stream, recorded, index).await });
            }
        });
        Backend {
            addr,
            received,
            task,
        }
    }

    /// Answers the request head with 101, then echoes every byte until FIN.
    pub async fn upgrade_echo() -> Backend {
        Backend::spawn(|mut s, recorded, i| async move {
            let Some(head) = read_head(&mut s).await else {
                return;
            };
            recorded.lock().unwrap()[i] = head;
            let _ = s.write_all(SWITCHING_PROTOCOLS).await;
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        })
        .await
    }

    /// A real WebSocket server (tokio-tungstenite) that echoes every message.
    pub async fn ws_echo() -> Backend {
        use futures_util::{SinkExt, StreamExt};
        Backend::spawn(|s, _, _| async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                return;
            };
            // After a Close, the next poll sends tungstenite's reply and ends the stream.
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        })
        .await
    }

    /// Answers every request on the connection with 200 and body `name`, recording what it
    /// received; closes after a request with `Connection: close`, or when the client does.
    pub async fn http(name: &'static str) -> Backend {
        Backend::spawn(move |mut s, recorded, i| async move {
            while let Some(head) = read_head(&mut s).await {
                recorded.lock().unwrap()[i].extend_from_slice(&head);
                let lower = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if read_body(&mut s, &lower).await.is_none() {
                    return;
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Backend: {name}\r\n\r\n{name}",
                    name.len()
                );
                if s.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                if String::from_utf8_lossy(&head)
                    .to_ascii_lowercase()
                    .contains("connection: close")
                {
                    let _ = s.shutdown().await;
                    return;
                }
            }
        })
        .await
    }

    /// Records every byte until the client's FIN, then answers `200` with body
    /// `received N` (the byte count) and closes.
    pub async fn recording() -> Backend {
        Backend::spawn(|mut s, recorded, i| async move {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => recorded.lock().unwrap()[i].extend_from_slice(&buf[..n]),
                }
            }
            let total = recorded.lock().unwrap()[i].len();
            let body = format!("received {total}");
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(response.as_bytes()).await;
        })
        .await
    }

    /// Accepts and then neither reads nor writes until the test ends.
    pub async fn silent() -> Backend {
        Backend::spawn(|s, _, _| async move {
            std::future::pending::<()>().await;
            drop(s);
        })
        .await
    }
}

/// An address on 127.0.0.1 where nothing listens: connecting is refused.
/// A backend's answer that opens a WebSocket tunnel.
pub const SWITCHING_PROTOCOLS: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

/// Accepts one connection on a hand-made backend, reads its request head and answers 101:
/// the start of every raw upgraded backend a test scripts itself.
pub async fn accept_upgrade(listener: &TcpListener) -> TcpStream {
    let (mut s, _) = listener.accept().await.unwrap();
    read_head(&mut s).await.unwrap();
    s.write_all(SWITCHING_PROTOCOLS).await.unwrap();
    s
}

pub async fn refusing_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr.to_string()
}

/// Deterministic pseudo-random bytes (xorshift), so both ends can regenerate a stream.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The value of the sample `name{labels}` (labels as printed) in a scrape.
pub fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{scrape}"))
}

/// `promtool check metrics` reads `scrape` without a word of complaint.
pub fn promtool_accepts(scrape: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{scrape}"
    );
}

/// Accepts one connection on a hand-made backend and completes the WebSocket handshake (the
/// `Sec-WebSocket-Accept` the client checks); the rest is the test's, raw.
pub async fn accept_websocket(listener: &TcpListener) -> TcpStream {
    let (mut s, _) = listener.accept().await.unwrap();
    let head = String::from_utf8(read_head(&mut s).await.unwrap()).unwrap();
    let key = head
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .expect("a key");
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    s.write_all(response.as_bytes()).await.unwrap();
    s
}
