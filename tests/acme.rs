//! `--acme` against a real ACME server: Debian's pebble (Let's Encrypt's test CA) with
//! pebble-challtestsrv resolving every name to 127.0.0.1. Pebble's own HTTPS uses the test
//! PKI (trusted with `--acme-ca`); its validations connect to the ports the test gives
//! wssbridge. Each test: a certificate is issued through one challenge kind, served for the
//! name (a client trusting only pebble's root verifies it), and a WebSocket works through it.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use support::binary::Running;
use support::peers::free_port;
use support::{Backend, WAIT, pki, require};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const NAME: &str = "chat.test";

/// pebble and its DNS, killed on drop.
struct Pebble {
    children: Vec<Child>,
    directory: String,
    management: SocketAddr,
    dir: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Pebble {
    /// Validates TLS-ALPN-01 on `tls_port` and HTTP-01 on `http_port` of 127.0.0.1.
    fn start(tls_port: u16, http_port: u16) -> Pebble {
        require(&[("pebble", "pebble"), ("pebble-challtestsrv", "pebble")]);
        let dir = support::temp_dir("pebble");
        let (listen, management, dns) = (free_port(), free_port(), free_port());
        let pki = pki();
        let config = format!(
            r#"{{"pebble": {{"listenAddress": "127.0.0.1:{listen}",
                "managementListenAddress": "127.0.0.1:{management}",
                "certificate": "{}", "privateKey": "{}",
                "httpPort": {http_port}, "tlsPort": {tls_port},
                "ocspResponderURL": "", "externalAccountBindingRequired": false}}}}"#,
            pki.cert.display(),
            pki.key.display()
        );
        std::fs::write(dir.join("pebble.json"), config).unwrap();
        let quiet = || Stdio::null();
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(quiet())
            .stderr(quiet())
            .spawn()
            .expect("pebble-challtestsrv");
        let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("pebble");
        let pebble = Pebble {
            children: vec![dns_server, pebble],
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management: SocketAddr::from(([127, 0, 0, 1], management)),
            dir,
        };
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err()
            || std::net::TcpStream::connect(pebble.management).is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "pebble did not start: {}",
                pebble.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        pebble
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// Pebble's root (it makes a new one at each start), from its management interface.
    async fn root(&self) -> CertificateDer<'static> {
        let pem = support::exchange(
            self.management,
            b"GET /roots/0 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        let body = pem.split("\r\n\r\n").nth(1).expect("a body");
        CertificateDer::from_pem_slice(body.as_bytes()).expect("pebble's root")
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }
}

/// wssbridge with `--acme NAME` against the CA at `directory`, its state in `state`.
fn bridge(directory: &str, state: &Path, tls_port: u16, backend: &str, extra: &[&str]) -> Running {
    let ca = pki().dir.join("root.pem");
    let mut cmd = support::binary::wssbridge();
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{tls_port}"),
        "--to",
        backend,
    ])
    .args(["--acme", NAME, "--acme-directory", directory])
    .arg("--acme-ca")
    .arg(&ca)
    .arg("--acme-state")
    .arg(state)
    .args(["--shutdown-grace", "1s"])
    .args(extra);
    Running::spawn(cmd)
}

/// The leaf certificate `addr` serves for NAME, verified against `root` only.
async fn served(addr: SocketAddr, root: &CertificateDer<'static>) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from(NAME).unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok(leaf)
}

/// Waits until NAME is served with a certificate `root` verifies, other than `not`.
async fn wait_served(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    not: &[u8],
    running: &Running,
) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        match served(addr, root).await {
            Ok(leaf) if leaf != not => return leaf,
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no issued certificate served: {:?}",
            running.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A WebSocket echo through `addr` for NAME, over TLS verified against `root`.
async fn websocket(addr: SocketAddr, root: &CertificateDer<'static>) -> support::Ws {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await
        .unwrap();
    let url = format!("wss://{NAME}:{}/", addr.port());
    tokio_tungstenite::client_async(url, tls)
        .await
        .expect("ws handshake")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_a_certificate_a_restart_keeps_it_and_renewal_swaps_it_live() {
    let tls_port = free_port();
    let pebble = Pebble::start(tls_port, free_port());
    let state = support::temp_dir("acme-alpn").join("state");
    let backend = Backend::ws_echo().await;
    let running = bridge(&pebble.directory, &state, tls_port, &backend.address(), &[]);
    let addr = running.addr;
    running
        .wait_for_line(&["serving a self-signed one", NAME])
        .await;
    let root = pebble.root().await;

    let issued = wait_served(addr, &root, &[], &running).await;
    running
        .wait_for_line(&["acme: certificate issued", NAME])
        .await;
    let mut ws = websocket(addr, &root).await;
    support::echo(&mut ws, "through the issued certificate").await;
    assert!(
        running.log().iter().any(|l| l.contains("TlsAlpn01")),
        "{:?}",
        running.log()
    );
    // The state directory is private, its key too.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(state.clone()), 0o700);
    assert_eq!(mode(state.join("certs").join(format!("{NAME}.key"))), 0o600);
    drop(ws);
    drop(running);

    // A restart with the state directory serves the same certificate at once, no order.
    let running = bridge(&pebble.directory, &state, tls_port, &backend.address(), &[]);
    assert_eq!(served(running.addr, &root).await.unwrap(), issued);
    // Its first look at the name decides: kept, and no order before or after that line.
    running
        .wait_for_line(&["acme: the certificate in the state directory is kept"])
        .await;
    assert!(
        !running.log().iter().any(|l| l.contains("ordering")),
        "{:?}",
        running.log()
    );
    drop(running);

    // Renewal: with --acme-renew-before longer than the lifetime, a restart orders at once.
    // pebble is held still until a WebSocket is open on the old certificate.
    let signal = |s: &str| {
        for pid in pebble.pids() {
            let _ = Command::new("kill").args([s, &pid.to_string()]).status();
        }
    };
    signal("-STOP");
    let running = bridge(
        &pebble.directory,
        &state,
        tls_port,
        &backend.address(),
        &["--acme-renew-before", "3650d"],
    );
    let mut before = websocket(running.addr, &root).await;
    signal("-CONT");
    let renewed = wait_served(running.addr, &root, &issued, &running).await;
    assert_ne!(renewed, issued);
    support::echo(&mut before, "opened before the renewal").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_on_the_redirect_listener_issues_a_certificate() {
    let (tls_port, http_port) = (free_port(), free_port());
    // TLS-ALPN-01 would reach nothing: pebble's tlsPort is a closed port.
    let pebble = Pebble::start(free_port(), http_port);
    let state = support::temp_dir("acme-http").join("state");
    let backend = Backend::ws_echo().await;
    let redirect = format!("127.0.0.1:{http_port}");
    let running = bridge(
        &pebble.directory,
        &state,
        tls_port,
        &backend.address(),
        &[
            "--redirect-http",
            &redirect,
            "--acme-email",
            "ops@example.com",
        ],
    );
    let root = pebble.root().await;
    wait_served(running.addr, &root, &[], &running).await;
    assert!(
        running.log().iter().any(|l| l.contains("Http01")),
        "{:?}",
        running.log()
    );
    let mut ws = websocket(running.addr, &root).await;
    support::echo(&mut ws, "through the HTTP-01 certificate").await;
    // Other paths on the redirect listener still redirect; an unknown token is 404.
    let mut plain = TcpStream::connect(&redirect).await.unwrap();
    plain
        .write_all(b"GET /.well-known/acme-challenge/nope HTTP/1.1\r\nHost: chat.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    plain.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_that_cannot_be_reached_leaves_the_fallback_served_and_is_retried() {
    require(&[("pebble", "pebble")]);
    let tls_port = free_port();
    let state = support::temp_dir("acme-down").join("state");
    let backend = Backend::ws_echo().await;
    let directory = format!("https://127.0.0.1:{}/dir", free_port());
    let running = bridge(&directory, &state, tls_port, &backend.address(), &[]);
    let line = running
        .wait_for_line(&["acme: no certificate this time", "trying again in 60s"])
        .await;
    assert!(line.contains(NAME), "{line}");
    // There was none before: the line does not pretend otherwise.
    assert!(
        line.contains("serving a self-signed one for it meanwhile"),
        "{line}"
    );
    // Still serving, with the self-signed fallback for the name.
    let tcp = TcpStream::connect(running.addr).await.unwrap();
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(support::insecure::AcceptAny))
        .with_no_client_auth();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await
        .expect("a handshake with the fallback");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert_eq!(cert.issuer(), cert.subject(), "self-signed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_the_state_behind_haproxy_make_one_order_and_both_serve_it() {
    require(&[("haproxy", "haproxy")]);
    let front = free_port();
    let pebble = Pebble::start(front, free_port());
    let state = support::temp_dir("acme-shared").join("state");
    let backend = Backend::ws_echo().await;
    let (a_port, b_port) = (free_port(), free_port());
    let poll = ["--cert-poll", "1s"];
    let a = bridge(&pebble.directory, &state, a_port, &backend.address(), &poll);
    let b = bridge(&pebble.directory, &state, b_port, &backend.address(), &poll);
    // The CA validates on the balancer's port, which sends each connection to either.
    let _haproxy = support::peers::Peer::haproxy(
        "acme-front",
        &format!(
            "frontend front\n    mode tcp\n    bind 127.0.0.1:{front}\n    default_backend both\n\
             backend both\n    mode tcp\n    balance roundrobin\n    \
             server a 127.0.0.1:{a_port}\n    server b 127.0.0.1:{b_port}\n"
        ),
        front,
    );
    let root = pebble.root().await;
    let from_a = wait_served(a.addr, &root, &[], &a).await;
    let from_b = wait_served(b.addr, &root, &[], &b).await;
    assert_eq!(from_a, from_b, "both serve the one certificate");
    let orders = |r: &Running| {
        r.log()
            .iter()
            .filter(|l| l.contains("ordering a certificate"))
            .count()
    };
    assert_eq!(
        orders(&a) + orders(&b),
        1,
        "one order: {:?} {:?}",
        a.log(),
        b.log()
    );
    let mut ws = websocket(SocketAddr::from(([127, 0, 0, 1], front)), &root).await;
    support::echo(&mut ws, "through the balancer").await;
}

/// The two mistakes a first setup makes most are named with what to do: a CA whose HTTPS
/// certificate is not trusted (give --acme-ca), and a URL that is not an ACME directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_ca_and_a_wrong_directory_url_say_what_to_do() {
    let tls_port = free_port();
    let pebble = Pebble::start(tls_port, free_port());
    let backend = Backend::ws_echo().await;
    // No --acme-ca: pebble's certificate chains to the test root, which nothing trusts.
    let state = support::temp_dir("acme-untrusted").join("state");
    let mut cmd = support::binary::wssbridge();
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{tls_port}"),
        "--to",
        &backend.address(),
    ])
    .args(["--acme", NAME, "--acme-directory", &pebble.directory])
    .arg("--acme-state")
    .arg(&state);
    let untrusted = Running::spawn(cmd);
    let line = untrusted
        .wait_for_line(&["acme: no certificate this time"])
        .await;
    assert!(line.contains("give its root with --acme-ca"), "{line}");
    drop(untrusted);
    // A path on the CA's server that is not its directory.
    let wrong = pebble.directory.replace("/dir", "/nope");
    let state = support::temp_dir("acme-wrong-url").join("state");
    let running = bridge(&wrong, &state, free_port(), &backend.address(), &[]);
    let line = running
        .wait_for_line(&["acme: no certificate this time"])
        .await;
    assert!(
        line.contains("is --acme-directory the CA's directory URL?"),
        "{line}"
    );
    // Said once: instant-acme's error writes its cause into its own text.
    assert_eq!(line.matches("invalid type").count(), 1, "{line}");
}

/// `--check --online` asks the CA what a first order would (directory, nonce, a signed
/// request), creating nothing, and checks every backend once: it catches the untrusted CA
/// and the wrong URL that a plain `--check` cannot, and reports a backend down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_asks_the_ca_and_the_backends() {
    let pebble = Pebble::start(free_port(), free_port());
    let backend = Backend::ws_echo().await;
    let down = format!("127.0.0.1:{}", free_port());
    let state = support::temp_dir("acme-online").join("state");
    let check = |directory: &str, trust: bool| {
        let mut cmd = support::binary::wssbridge();
        cmd.args(["--check", "--online", "--listen", "127.0.0.1:0"])
            .args(["--route", &format!("/a/={}", backend.address())])
            .args(["--route", &format!("/b/={down}")])
            .args(["--to", &backend.address()])
            .args(["--acme", NAME, "--acme-directory", directory])
            .arg("--acme-state")
            .arg(&state);
        if trust {
            cmd.arg("--acme-ca").arg(pki().dir.join("root.pem"));
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, text) = check(&pebble.directory, true);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("acme        {}  answers", pebble.directory)),
        "{text}"
    );
    assert!(
        text.contains(&format!("/a/  {}  up", backend.address())),
        "{text}"
    );
    assert!(
        text.contains(&format!("/b/  {down}  DOWN: connect")),
        "{text}"
    );
    assert!(text.contains("1 backend(s) down now"), "{text}");
    // Nothing was created: no account file, no order (pebble counts none).
    assert!(!state.exists() || std::fs::read_dir(&state).unwrap().next().is_none());
    // The plain --check says ok to both of these; --online does not.
    let (code, text) = check(&pebble.directory, false);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("give its root with --acme-ca"), "{text}");
    let (code, text) = check(&pebble.directory.replace("/dir", "/nope"), true);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("is --acme-directory the CA's directory URL?"),
        "{text}"
    );
    assert_eq!(text.matches("invalid type").count(), 1, "{text}");
}
