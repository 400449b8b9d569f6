//! Certificates in production: several names chosen by SNI, reloads that keep live
//! connections and sessions, client certificates, and the plain-HTTP redirect. Real TLS
//! clients: rustls, and `openssl s_client` for what a second implementation sees.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::binary::{Running, fails};
use support::pki::{Ca, Leaf};
use support::{Backend, Tunnel, WAIT, echo, status_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("certs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Writes `leaf` as `NAME.pem` and `NAME.key` in `dir`.
fn write(dir: &Path, name: &str, leaf: &Leaf) -> (String, String) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &leaf.chain_pem).expect("write cert");
    std::fs::write(&key, &leaf.key_pem).expect("write key");
    (cert.display().to_string(), key.display().to_string())
}

fn serial_of(der: &CertificateDer<'_>) -> u64 {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("certificate");
    cert.tbs_certificate
        .raw_serial()
        .iter()
        .fold(0u64, |n, b| (n << 8) | u64::from(*b))
}

/// A client trusting only `ca`'s root, optionally presenting `client` as its certificate.
fn client_config(ca: &Ca, client: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.root_pem.as_bytes()).expect("root"))
        .expect("add root");
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("chain");
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client cert")
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A client that reads whatever certificate it is served, without checking it.
fn any_cert() -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(support::insecure::AcceptAny))
        .with_no_client_auth();
    Arc::new(config)
}

/// Handshakes with `sni` (`None`: no SNI, as a client of an IP address sends none).
async fn connect(
    addr: SocketAddr,
    sni: Option<&str>,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = match sni {
        Some(name) => ServerName::try_from(name.to_string()).expect("name"),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("handshake in time")
}

/// The serial of the certificate served for `sni`.
async fn served(addr: SocketAddr, sni: Option<&str>) -> u64 {
    let tls = connect(addr, sni, any_cert()).await.expect("handshake");
    serial_of(&tls.get_ref().1.peer_certificates().expect("certificate")[0])
}

/// What `openssl s_client -servername NAME` is served: the serial, or its error output.
fn openssl_serial(addr: SocketAddr, sni: &str) -> Result<u64, String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername {sni} </dev/null 2>/tmp/s_client.$$ \
             | openssl x509 -noout -serial; cat /tmp/s_client.$$ >&2; rm -f /tmp/s_client.$$"
        ))
        .output()
        .expect("run openssl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.trim().strip_prefix("serial=") {
        Some(hex) => Ok(u64::from_str_radix(hex, 16).expect("hex serial")),
        None => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// Several certificates for one process: the default (serial 1, localhost), an exact name
/// (2), a wildcard (3), and a latecomer claiming the exact name again (4).
struct Sites {
    ca: Ca,
    flags: Vec<String>,
}

fn sites(dir: &Path) -> Sites {
    let ca = Ca::new("sites").expect("CA");
    let mut flags = Vec::new();
    for (name, names, serial) in [
        ("default", &["localhost"][..], 1),
        ("exact", &["a.example"][..], 2),
        ("wild", &["*.wild.example"][..], 3),
        ("late", &["a.example", "late.example"][..], 4),
    ] {
        let (cert, key) = write(dir, name, &ca.server(names, serial, 90).expect("leaf"));
        flags.extend(["--cert".to_string(), cert, "--key".to_string(), key]);
    }
    Sites { ca, flags }
}

async fn start(flags: &[String], extra: &[&str]) -> Tunnel {
    let mut all: Vec<&str> = flags.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    Tunnel::start_with_flags(&all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_exact_name_then_a_wildcard_then_the_first_certificate() {
    let logs = support::logs();
    let dir = scratch("sni");
    let sites = sites(&dir);
    let backend = Backend::http("site").await;
    let tunnel = start(&sites.flags, &["--to", &backend.address()]).await;
    let addr = tunnel.addr;
    assert_eq!(served(addr, Some("a.example")).await, 2, "exact");
    assert_eq!(served(addr, Some("A.Example")).await, 2, "any case");
    assert_eq!(served(addr, Some("late.example")).await, 4, "its own name");
    assert_eq!(served(addr, Some("x.wild.example")).await, 3, "wildcard");
    assert_eq!(
        served(addr, Some("y.x.wild.example")).await,
        1,
        "one label only"
    );
    assert_eq!(
        served(addr, Some("wild.example")).await,
        1,
        "not the bare parent"
    );
    assert_eq!(served(addr, Some("unknown.example")).await, 1, "default");
    assert_eq!(served(addr, None).await, 1, "no SNI gets the default");
    // A second implementation agrees.
    for (sni, serial) in [("a.example", 2), ("x.wild.example", 3), ("nope.example", 1)] {
        let addr = tunnel.addr;
        let got = tokio::task::spawn_blocking(move || openssl_serial(addr, sni))
            .await
            .unwrap();
        assert_eq!(got, Ok(serial), "openssl -servername {sni}");
    }
    // The name both claim: the first given serves it, and start-up said so.
    assert!(
        !logs
            .lines_with(&["two certificates claim a.example"])
            .is_empty()
    );
    // The chosen certificate is the one a verifying client accepts for its name.
    let mut tls = connect(addr, Some("x.wild.example"), client_config(&sites.ca, None))
        .await
        .expect("verified handshake");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x.wild.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(support::read_to_close(&mut tls).await.ends_with("site"));
    drop(tls);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_sni_refuses_unknown_names_with_unrecognized_name() {
    let dir = scratch("strict");
    let sites = sites(&dir);
    let backend = Backend::http("site").await;
    let tunnel = start(&sites.flags, &["--to", &backend.address(), "--strict-sni"]).await;
    let addr = tunnel.addr;
    let refused = connect(addr, Some("unknown.example"), any_cert()).await;
    let error = refused.expect_err("unknown name refused").to_string();
    assert!(error.contains("UnrecognisedName"), "{error}");
    assert_eq!(served(addr, Some("a.example")).await, 2);
    assert_eq!(served(addr, Some("x.wild.example")).await, 3);
    assert_eq!(served(addr, None).await, 1, "no SNI still gets the default");
    let openssl = tokio::task::spawn_blocking(move || openssl_serial(addr, "unknown.example"))
        .await
        .unwrap();
    let error = openssl.expect_err("openssl refused");
    assert!(error.contains("unrecognized name"), "{error}");
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_fronting_is_421_with_several_certificates() {
    let dir = scratch("fronting");
    let sites = sites(&dir);
    let backend = Backend::http("site").await;
    let tunnel = start(&sites.flags, &["--to", &backend.address()]).await;
    let ask = |sni: &'static str, host: &'static str| async move {
        let mut tls = connect(tunnel.addr, Some(sni), any_cert()).await.unwrap();
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tls.write_all(request.as_bytes()).await.unwrap();
        status_of(&support::read_to_close(&mut tls).await)
    };
    // The certificate served for a.example does not cover x.wild.example, which another
    // certificate names: 421, so the browser opens a connection for that name.
    assert_eq!(ask("a.example", "x.wild.example").await, 421);
    // Covered by the served certificate (the wildcard): fine, as is a name nobody claims.
    assert_eq!(ask("x.wild.example", "y.wild.example").await, 200);
    assert_eq!(ask("a.example", "a.example:8443").await, 200);
    assert_eq!(ask("a.example", "nobody.example").await, 200);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certbot_renewal_is_picked_up_by_cert_poll_within_two_intervals() {
    let dir = scratch("certbot");
    let ca = Ca::new("certbot").expect("CA");
    // /etc/letsencrypt's shape: live/NAME/*.pem are symlinks into archive/NAME/*N.pem.
    let archive = dir.join("archive/example.com");
    let live = dir.join("live/example.com");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    let issue = |n: u64| {
        let leaf = ca.server(&["localhost"], n, 90).expect("leaf");
        std::fs::write(archive.join(format!("fullchain{n}.pem")), &leaf.chain_pem).unwrap();
        std::fs::write(archive.join(format!("privkey{n}.pem")), &leaf.key_pem).unwrap();
        for (link, file) in [("fullchain.pem", "fullchain"), ("privkey.pem", "privkey")] {
            let tmp = live.join(format!("{link}.new"));
            let _ = std::fs::remove_file(&tmp);
            let target = format!("../../archive/example.com/{file}{n}.pem");
            std::os::unix::fs::symlink(target, &tmp).unwrap();
            std::fs::rename(&tmp, live.join(link)).unwrap();
        }
    };
    issue(1);
    let backend = Backend::ws_echo().await;
    let interval = Duration::from_millis(500);
    let cert = live.join("fullchain.pem").display().to_string();
    let key = live.join("privkey.pem").display().to_string();
    let tunnel = Tunnel::start_with_flags(&[
        "--cert",
        &cert,
        "--key",
        &key,
        "--cert-poll",
        "500ms",
        "--to",
        &backend.address(),
    ])
    .await;
    assert_eq!(served(tunnel.addr, Some("localhost")).await, 1);
    let mut ws = ws_connect_with(tunnel.addr, client_config(&ca, None)).await;
    echo(&mut ws, "before the renewal").await;

    issue(2);
    let renewed = Instant::now();
    while served(tunnel.addr, Some("localhost")).await != 2 {
        assert!(renewed.elapsed() < interval * 2 + Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        renewed.elapsed() <= interval * 2 + Duration::from_millis(300),
        "picked up after {:?}",
        renewed.elapsed()
    );
    echo(&mut ws, "after the renewal").await;
    ws.close(None).await.unwrap();
    drop(ws);
    tunnel.assert_idle().await;
}

async fn ws_connect_with(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> support::Ws {
    let tls = connect(addr, Some("localhost"), config)
        .await
        .expect("handshake");
    let url = format!("wss://localhost:{}/", addr.port());
    tokio_tungstenite::client_async(url, tls)
        .await
        .expect("ws handshake")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_before_a_reload_resumes_after_it() {
    let dir = scratch("resume");
    let ca = Ca::new("resume").expect("CA");
    let (cert, key) = write(&dir, "site", &ca.server(&["localhost"], 1, 90).unwrap());
    let backend = Backend::http("site").await;
    let tunnel =
        Tunnel::start_with_flags(&["--cert", &cert, "--key", &key, "--to", &backend.address()])
            .await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            r.add(CertificateDer::from_pem_slice(ca.root_pem.as_bytes()).unwrap())
                .unwrap();
            r
        };
        let config = Arc::new(
            rustls::ClientConfig::builder_with_protocol_versions(&[version])
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let mut first = connect(tunnel.addr, Some("localhost"), config.clone())
            .await
            .unwrap();
        first.write_all(request).await.unwrap();
        support::read_to_close(&mut first).await;
        drop(first);

        // A renewed certificate for the same name, swapped in by a reload.
        let (cert2, key2) = write(&dir, "site", &ca.server(&["localhost"], 2, 90).unwrap());
        assert_eq!((&cert2, &key2), (&cert, &key));
        tunnel.server.reload_files().expect("reload");

        let mut again = connect(tunnel.addr, Some("localhost"), config.clone())
            .await
            .unwrap();
        assert_eq!(
            again.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{version:?} session resumed across the reload"
        );
        again.write_all(request).await.unwrap();
        assert!(support::read_to_close(&mut again).await.ends_with("site"));
        // And a full handshake now gets the new certificate.
        assert_eq!(served(tunnel.addr, Some("localhost")).await, 2);
        let (cert1, _) = write(&dir, "site", &ca.server(&["localhost"], 1, 90).unwrap());
        assert_eq!(cert1, cert);
        tunnel.server.reload_files().expect("reload back");
    }
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_and_checked() {
    let dir = scratch("mtls");
    let ca = Ca::new("server").expect("CA");
    let clients = Ca::new("clients").expect("client CA");
    let other = Ca::new("other").expect("other CA");
    let (cert, key) = write(&dir, "site", &ca.server(&["localhost"], 1, 90).unwrap());
    let client_ca = dir.join("clients.pem");
    std::fs::write(&client_ca, &clients.root_pem).unwrap();
    let client_ca = client_ca.display().to_string();
    let good = clients.client("alice", 10).unwrap();
    let stranger = other.client("mallory", 11).unwrap();
    let backend = Backend::ws_echo().await;

    let base = ["--cert", &cert, "--key", &key, "--to", &backend.address()];
    let mut flags = base.to_vec();
    flags.extend(["--client-ca", &client_ca]);
    let tunnel = Tunnel::start_with_flags(&flags).await;
    // No certificate, or one from another CA: refused (no WebSocket, no answer).
    assert!(!ws_works(tunnel.addr, client_config(&ca, None)).await);
    assert!(!ws_works(tunnel.addr, client_config(&ca, Some(&stranger))).await);
    // One that chains to --client-ca: a tunnel.
    assert!(ws_works(tunnel.addr, client_config(&ca, Some(&good))).await);
    tunnel.assert_idle().await;

    flags.extend(["--client-auth", "optional"]);
    let tunnel = Tunnel::start_with_flags(&flags).await;
    assert!(ws_works(tunnel.addr, client_config(&ca, None)).await);
    assert!(!ws_works(tunnel.addr, client_config(&ca, Some(&stranger))).await);
    assert!(ws_works(tunnel.addr, client_config(&ca, Some(&good))).await);
    tunnel.assert_idle().await;

    // Reloaded with the rest: after the CA file changes, the old CA's clients are refused.
    let tunnel = Tunnel::start_with_flags(&flags[..flags.len() - 2]).await;
    std::fs::write(dir.join("clients.pem"), &other.root_pem).unwrap();
    tunnel.server.reload_files().expect("reload");
    assert!(!ws_works(tunnel.addr, client_config(&ca, Some(&good))).await);
    assert!(ws_works(tunnel.addr, client_config(&ca, Some(&stranger))).await);
    tunnel.assert_idle().await;
}

/// Whether a WebSocket opens and echoes with this client configuration.
async fn ws_works(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> bool {
    use futures_util::{SinkExt, StreamExt};
    let Ok(tls) = connect(addr, Some("localhost"), config).await else {
        return false;
    };
    let url = format!("wss://localhost:{}/", addr.port());
    let Ok(Ok((mut ws, _))) =
        tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tls)).await
    else {
        return false;
    };
    let message = tokio_tungstenite::tungstenite::Message::text("hello");
    if ws.send(message.clone()).await.is_err() {
        return false;
    }
    let echoed = matches!(ws.next().await, Some(Ok(m)) if m == message);
    let _ = ws.close(None).await;
    echoed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_is_redirected_to_https_with_path_and_query() {
    let backend = Backend::http("never").await;
    let tunnel = Tunnel::start(&[
        "--to",
        &backend.address(),
        "--redirect-http",
        "127.0.0.1:0",
        "--header-timeout",
        "1s",
    ])
    .await;
    let port = tunnel.addr.port();
    let plain = tunnel.redirect_addrs[0];
    let ask = |raw: &'static [u8]| async move {
        let mut tcp = TcpStream::connect(plain).await.unwrap();
        tcp.write_all(raw).await.unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(WAIT, tcp.read_to_end(&mut reply))
            .await
            .expect("closed")
            .unwrap();
        String::from_utf8(reply).unwrap()
    };
    let reply = ask(b"GET /chat/room?x=1&y=%20 HTTP/1.1\r\nHost: Example.com:80\r\n\r\n").await;
    assert_eq!(status_of(&reply), 308, "{reply}");
    let location = format!("\r\nLocation: https://example.com:{port}/chat/room?x=1&y=%20\r\n");
    assert!(reply.contains(&location), "{reply}");
    assert!(reply.contains("\r\nConnection: close\r\n"), "{reply}");
    // POST keeps its method under 308; the body is not read beyond the head.
    let reply =
        ask(b"POST /form HTTP/1.1\r\nHost: example.com\r\nContent-Length: 3\r\n\r\nabc").await;
    assert!(reply.contains(&format!("Location: https://example.com:{port}/form\r\n")));
    // No usable Host: 400.
    assert_eq!(status_of(&ask(b"GET / HTTP/1.0\r\n\r\n").await), 400);
    assert_eq!(status_of(&ask(b"GET / HTTP/1.1\r\n\r\n").await), 400);
    // A head trickled byte by byte is cut off at the header timeout, counted from accept.
    let started = Instant::now();
    let (mut read, mut write) = TcpStream::connect(plain).await.unwrap().into_split();
    let trickle = tokio::spawn(async move {
        for b in b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Slow: yes, very slow indeed" {
            if write.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut status = [0u8; 12];
    tokio::time::timeout(WAIT, read.read_exact(&mut status))
        .await
        .expect("answered")
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(&status, b"HTTP/1.1 408");
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    trickle.abort();
    drop(read);
    tunnel.assert_idle().await;
}

/// A verifying client that never resumes, so every handshake shows the served certificate.
fn fresh_handshakes(ca: &Ca) -> Arc<rustls::ClientConfig> {
    let mut config = (*client_config(ca, None)).clone();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_under_load_swaps_certificates_without_dropping_a_websocket() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let dir = scratch("sighup");
    let ca = Ca::new("sighup").expect("CA");
    let (cert, key) = write(&dir, "site", &ca.server(&["localhost"], 1, 90).unwrap());
    let backend = Backend::ws_echo().await;
    let mut running = Running::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &cert,
            "--key",
            &key,
            "--cert-poll",
            "0",
            "--to",
            &backend.address(),
        ],
        &[],
    );
    let addr = running.addr;
    let mut live = Vec::new();
    for i in 0..200 {
        let mut ws = ws_connect_with(addr, client_config(&ca, None)).await;
        echo(&mut ws, &format!("hello {i}")).await;
        live.push(ws);
    }

    // New handshakes all the while, each recording the serial it was served.
    let stop = Arc::new(AtomicBool::new(false));
    let latest = Arc::new(AtomicU64::new(0));
    let (config, handshakes) = (fresh_handshakes(&ca), stop.clone());
    let seen = latest.clone();
    let load = tokio::spawn(async move {
        let (mut ok, mut failed) = (0u32, Vec::new());
        while !handshakes.load(Ordering::Relaxed) {
            match connect(addr, Some("localhost"), config.clone()).await {
                Ok(tls) => {
                    let der = &tls.get_ref().1.peer_certificates().unwrap()[0];
                    seen.store(serial_of(der), Ordering::Relaxed);
                    ok += 1;
                }
                Err(e) => failed.push(e.to_string()),
            }
        }
        (ok, failed)
    });
    for serial in 2..=21 {
        write(
            &dir,
            "site",
            &ca.server(&["localhost"], serial, 90).unwrap(),
        );
        running.signal("HUP");
        let deadline = Instant::now() + WAIT;
        while latest.load(Ordering::Relaxed) != serial {
            assert!(Instant::now() < deadline, "serial {serial} never served");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} handshakes failed: {failed:?}",
        failed.len(),
        ok
    );
    assert!(ok >= 20, "{ok} handshakes");
    for (i, ws) in live.iter_mut().enumerate() {
        echo(ws, &format!("still here {i}")).await;
    }
    let reloads = running
        .log()
        .iter()
        .filter(|l| l.contains("configuration reloaded"))
        .count();
    assert_eq!(reloads, 20);
    let line = running
        .wait_for_line(&["certificate", "names=localhost", "expires="])
        .await;
    assert!(line.contains("INFO"), "{line}");
    assert!(running.child.try_wait().unwrap().is_none(), "still running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_on_sighup_changes_nothing_and_is_logged_once() {
    let dir = scratch("broken");
    let ca = Ca::new("broken").expect("CA");
    let (cert, key) = write(&dir, "site", &ca.server(&["localhost"], 1, 90).unwrap());
    let backend = Backend::ws_echo().await;
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--cert",
        &cert,
        "--key",
        &key,
        "--to",
        &backend.address(),
    ];
    let mut running = Running::start(&args, &[]);
    let mut ws = ws_connect_with(running.addr, client_config(&ca, None)).await;
    let (addr, fresh) = (running.addr, fresh_handshakes(&ca));
    let check = |expected: u64| {
        let fresh = fresh.clone();
        async move {
            let tls = connect(addr, Some("localhost"), fresh)
                .await
                .expect("handshake");
            assert_eq!(
                serial_of(&tls.get_ref().1.peer_certificates().unwrap()[0]),
                expected
            );
        }
    };
    let other_key = ca.server(&["localhost"], 7, 90).unwrap().chain_pem;
    for (broken, what) in [
        ("not a certificate\n", "no CERTIFICATE"),
        // A well-formed certificate whose key is elsewhere: the pair must match.
        (
            other_key.as_str(),
            "does not match the certificate in --cert",
        ),
    ] {
        std::fs::write(&cert, broken).unwrap();
        running.signal("HUP");
        let line = running.wait_for_line(&["reload failed", what]).await;
        assert!(line.contains("ERROR") && line.contains(&cert), "{line}");
        check(1).await;
        echo(&mut ws, "still served").await;
        assert!(running.child.try_wait().unwrap().is_none(), "still running");
    }
    let failures = running
        .log()
        .iter()
        .filter(|l| l.contains("reload failed"))
        .count();
    assert_eq!(failures, 2, "one error per failed reload");
    std::fs::remove_file(&key).unwrap();
    running.signal("HUP");
    running
        .wait_for_line(&["reload failed", &key, "cannot read"])
        .await;
    check(1).await;
    // Mended: the next SIGHUP takes the new pair.
    write(&dir, "site", &ca.server(&["localhost"], 2, 90).unwrap());
    running.signal("HUP");
    running.wait_for_line(&["configuration reloaded"]).await;
    check(2).await;
    echo(&mut ws, "after all that").await;
}

#[test]
fn expiry_is_warned_at_start_and_an_expired_certificate_is_an_error() {
    let dir = scratch("expiry");
    let ca = Ca::new("expiry").expect("CA");
    let (soon, soon_key) = write(&dir, "soon", &ca.server(&["soon.example"], 1, 5).unwrap());
    let (old, old_key) = write(&dir, "old", &ca.server(&["old.example"], 2, -1).unwrap());
    let (fine, fine_key) = write(&dir, "fine", &ca.server(&["fine.example"], 3, 90).unwrap());
    let mut running = Running::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--cert",
            &fine,
            "--key",
            &fine_key,
            "--cert",
            &soon,
            "--key",
            &soon_key,
            "--cert",
            &old,
            "--key",
            &old_key,
            "--to",
            "127.0.0.1:9",
        ],
        &[],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let warn = running
            .wait_for_line(&["certificate expires in", "soon.example"])
            .await;
        assert!(warn.contains("WARN"), "{warn}");
        let error = running
            .wait_for_line(&["certificate has expired", "old.example"])
            .await;
        assert!(error.contains("ERROR"), "{error}");
    });
    let about_fine = running
        .log()
        .iter()
        .any(|l| l.contains("fine.example") && !l.contains("INFO"));
    assert!(!about_fine, "{:?}", running.log());
    running.signal("TERM");
    assert!(running.wait().success());
}

#[test]
fn certificates_and_keys_must_pair_up() {
    let dir = scratch("pairs");
    let ca = Ca::new("pairs").expect("CA");
    let (a, a_key) = write(&dir, "a", &ca.server(&["a.example"], 1, 90).unwrap());
    let (b, _) = write(&dir, "b", &ca.server(&["b.example"], 2, 90).unwrap());
    let (code, stderr) = fails(&[
        "--cert",
        &a,
        "--key",
        &a_key,
        "--cert",
        &b,
        "--to",
        "127.0.0.1:9",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("--cert {b} has no --key")),
        "{stderr}"
    );
    // The second key belongs to the first certificate: named as not belonging.
    let (code, stderr) = fails(&[
        "--cert",
        &a,
        "--key",
        &a_key,
        "--cert",
        &b,
        "--key",
        &a_key,
        "--to",
        "127.0.0.1:9",
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("does not match the certificate in --cert {b}")),
        "{stderr}"
    );
    // Pairs from the environment, space-separated lists.
    let out = support::binary::wssbridge()
        .args(["--to", "127.0.0.1:9"])
        .env("WSSBRIDGE_CERT", format!("{a} {b}"))
        .env("WSSBRIDGE_KEY", &a_key)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("--cert {b} has no --key")),
        "{stderr}"
    );
}
