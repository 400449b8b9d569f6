//! The command-line contract, against the real binary: bad configuration fails at start with
//! a message naming the flag or file (exit 2 for anything before serving starts; 1 for
//! failures after), flags come from the environment too, signals drain, and every connection
//! writes one log line.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::StreamExt;
use support::binary::{Running, fails, field, wssbridge};
use support::{Backend, WAIT, echo, pki, status_of, ws_connect};

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn bad_configuration_fails_with_a_message_naming_the_flag_or_file() {
    let pki = pki();
    let (cert, key) = (path(&pki.cert), path(&pki.key));
    let other_key = pki.dir.join("other.key");
    std::fs::write(
        &other_key,
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let to = ["--to", "127.0.0.1:3000"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--cert", "/nonexistent/chain.pem", "--key", key],
            "--cert /nonexistent/chain.pem: cannot read",
        ),
        (
            vec!["--cert", cert, "--key", "/nonexistent/k.pem"],
            "--key /nonexistent/k.pem: cannot read",
        ),
        (
            vec!["--cert", key, "--key", key],
            "the file holds a private key, not a certificate: were --cert and --key swapped?",
        ),
        (vec!["--cert", cert, "--key", cert], "no private key"),
        (
            vec!["--cert", cert, "--key", path(&other_key)],
            "does not match the certificate in --cert",
        ),
        (vec!["--cert", cert], "--key"),
        (vec!["--route", "/ws"], "no '='"),
        (vec!["--route", "/ws=127.0.0.1:99999"], "bad port"),
        (vec!["--route", "/ws=127.0.0.1"], "needs a port"),
        (vec!["--header-timeout", "10"], "no unit"),
        (vec!["--idle-timeout", "5 minutes"], "--idle-timeout"),
        (vec!["--listen", "localhost"], "--listen"),
        (vec!["--max-header-bytes", "lots"], "--max-header-bytes"),
        (
            vec!["--route", "/a=127.0.0.1:1", "--route", "/a=127.0.0.1:2"],
            "two routes",
        ),
    ];
    for (mut args, expected) in cases {
        if !args.iter().any(|a| a.starts_with("--route")) {
            args.extend(to);
        }
        let (code, stderr) = fails(&args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
    }
    let (code, stderr) = fails(&[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("no route"), "{stderr}");
}

#[test]
fn port_in_use_exits_2_as_every_start_up_failure() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = fails(&["--listen", &addr, "--to", "127.0.0.1:3000"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains(&format!("--listen {addr}")), "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
}

#[test]
fn help_documents_every_flag_and_version_works() {
    let help = wssbridge().arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("Exit status: 0 after a clean shutdown; 2 when it cannot start"));
    for flag in [
        "--listen",
        "--cert",
        "--key",
        "--route",
        "--to",
        "--handshake-timeout",
        "--header-timeout",
        "--connect-timeout",
        "--idle-timeout",
        "--keepalive-timeout",
        "--check",
        "--close-timeout",
        "--shutdown-grace",
        "--max-header-bytes",
        "--max-connections",
        "--log-format",
        "--verbose",
        "--quiet",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let version = wssbridge().arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn short_help_is_grouped_and_long_help_wraps_and_ends_with_examples() {
    let short = wssbridge().arg("-h").output().unwrap();
    let long = wssbridge()
        .arg("--help")
        .env("COLUMNS", "80")
        .output()
        .unwrap();
    assert!(short.status.success() && long.status.success());
    let (short, long) = (
        String::from_utf8_lossy(&short.stdout).into_owned(),
        String::from_utf8_lossy(&long.stdout).into_owned(),
    );
    let headings = [
        "Listening:",
        "Certificates:",
        "Routing:",
        "Balancing:",
        "Forwarding:",
        "Timeouts:",
        "Limits:",
        "Admin:",
        "Logging:",
    ];
    let mut at = 0;
    for heading in headings {
        let found = short[at..].find(&format!("\n{heading}\n"));
        assert!(
            found.is_some(),
            "{heading} missing or out of order in -h:\n{short}"
        );
        at += found.unwrap() + 1;
    }
    assert!(
        short.lines().count() * 3 < long.lines().count(),
        "-h is the short form"
    );
    assert!(!short.contains("[env: "), "-h stays short: {short}");
    assert!(
        long.lines().all(|l| l.chars().count() <= 80),
        "wrapped at COLUMNS=80:\n{long}"
    );
    let examples = long
        .rfind("Examples:")
        .expect("examples at the end of --help");
    for example in ["--to 127.0.0.1:3000", "--balance ip-hash", "--cert-poll 1m"] {
        assert!(
            long[examples..].contains(example),
            "{example} in\n{}",
            &long[examples..]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_log_line_per_connection_with_its_fields() {
    let backend = Backend::http("logged").await;
    let running = Running::with_test_cert(&[
        "--listen",
        "127.0.0.1:0",
        "--route",
        &format!("/api={}", backend.address()),
    ]);
    let response = support::exchange(
        running.addr,
        b"GET /api/x?q=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&response), 200);
    let line = running.wait_for_line(&["connection", "outcome="]).await;
    for (key, value) in [
        ("sni", "localhost"),
        ("method", "GET"),
        ("path", "/api/x?q=1"),
        ("route", "/api"),
        ("backend", backend.address().as_str()),
    ] {
        assert_eq!(field(&line, key), Some(value), "{key} in {line}");
    }
    assert!(
        field(&line, "peer").is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{line}"
    );
    assert!(
        field(&line, "bytes_up").is_some_and(|b| b.parse::<u64>().unwrap() > 50),
        "{line}"
    );
    assert!(
        field(&line, "bytes_down").is_some_and(|b| b.parse::<u64>().unwrap() > 30),
        "{line}"
    );
    assert!(line.contains("outcome=http closed "), "{line}");
    assert!(field(&line, "duration_ms").is_some(), "{line}");
    // Start-up logged one line per listener and per route.
    running
        .wait_for_line(&["route", "/api", &backend.address()])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_and_flags_from_the_environment() {
    let backend = Backend::http("from-env").await;
    let pki = pki();
    let running = Running::start(
        &[],
        &[
            ("WSSBRIDGE_LISTEN", "127.0.0.1:0"),
            ("WSSBRIDGE_CERT", path(&pki.cert)),
            ("WSSBRIDGE_KEY", path(&pki.key)),
            ("WSSBRIDGE_TO", &backend.address()),
            ("WSSBRIDGE_LOG_FORMAT", "json"),
        ],
    );
    let response = support::exchange(
        running.addr,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.ends_with("from-env"), "{response}");
    let line = running.wait_for_line(&["\"outcome\""]).await;
    assert!(
        line.starts_with('{') && line.ends_with('}'),
        "not JSON: {line}"
    );
    assert!(line.contains("\"route\":\"/\""), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_certificate_an_ephemeral_one_is_served_and_its_fingerprint_logged() {
    let backend = Backend::http("dev").await;
    let running = Running::start(
        &["--listen", "127.0.0.1:0", "--to", &backend.address()],
        &[],
    );
    let warning = running.wait_for_line(&["self-signed", "sha256="]).await;
    let logged = field(&warning, "sha256").unwrap().to_string();
    let served = served_fingerprint(running.addr).await;
    assert_eq!(logged, served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_live_websocket() {
    let backend = Backend::ws_echo().await;
    let mut running = Running::with_test_cert(&[
        "--listen",
        "127.0.0.1:0",
        "--to",
        &backend.address(),
        "--shutdown-grace",
        "20s",
    ]);
    let mut ws = ws_connect(running.addr).await;
    echo(&mut ws, "before").await;
    running.signal("TERM");
    running.wait_for_line(&["draining"]).await;
    // New connections are refused at once...
    assert!(
        tokio::net::TcpStream::connect(running.addr).await.is_err(),
        "listener still open"
    );
    // ...while the live WebSocket keeps working.
    echo(&mut ws, "during shutdown").await;
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    assert_eq!(running.wait().code(), Some(0));
    running.wait_for_line(&["drained"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_closes_what_is_left() {
    let backend = Backend::ws_echo().await;
    let mut running = Running::with_test_cert(&[
        "--listen",
        "127.0.0.1:0",
        "--to",
        &backend.address(),
        "--shutdown-grace",
        "300ms",
    ]);
    let mut ws = ws_connect(running.addr).await;
    echo(&mut ws, "hello").await;
    running.signal("TERM");
    let closed =
        tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(closed.is_ok(), "the tunnel outlived the grace period");
    assert_eq!(running.wait().code(), Some(0));
    running.wait_for_line(&["grace over"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_exits_at_once() {
    let backend = Backend::ws_echo().await;
    let mut running = Running::with_test_cert(&[
        "--listen",
        "127.0.0.1:0",
        "--to",
        &backend.address(),
        "--shutdown-grace",
        "60s",
    ]);
    let mut ws = ws_connect(running.addr).await;
    echo(&mut ws, "hello").await;
    running.signal("INT");
    running.wait_for_line(&["draining"]).await;
    running.signal("INT");
    let status = running.wait();
    assert!(!status.success(), "{status:?}");
}

/// The SHA-256 fingerprint of the certificate a server presents, read without verifying it.
async fn served_fingerprint(addr: SocketAddr) -> String {
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(support::insecure::AcceptAny))
        .with_no_client_auth();
    let tls = support::tls_connect_with(addr, Arc::new(config))
        .await
        .unwrap();
    let cert = &tls.get_ref().1.peer_certificates().unwrap()[0];
    wssbridge::tls::certs::fingerprint(cert)
}

/// The kTLS probe's line at start says what the kernel offers, and either way TLS stays in
/// user space (a tunnel still echoes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_says_whether_ktls_is_available() {
    let backend = support::Backend::ws_echo().await;
    let running = support::binary::Running::with_test_cert(&[
        "--listen",
        "127.0.0.1:0",
        "--to",
        &backend.address(),
    ]);
    let line = running.wait_for_line(&["kTLS"]).await;
    let list = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").unwrap_or_default();
    if list.split_whitespace().any(|ulp| ulp == "tls") {
        assert!(
            line.contains("kTLS available in the kernel, not used"),
            "{line}"
        );
    } else {
        assert!(line.contains("kTLS unavailable: "), "{line}");
        assert!(line.contains("encrypted in user space"), "{line}");
    }
    let mut ws = ws_connect(running.addr).await;
    echo(&mut ws, "user-space TLS").await;
}
