//! wssbridge as a systemd service, against the real binary: readiness messages on a real
//! AF_UNIX datagram socket, sockets passed by the LISTEN_FDS convention, and `--check`.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use support::binary::{Running, fails, wssbridge};
use support::{Backend, WAIT, pki, status_of};

/// Reads datagrams until one contains `needle`; returns every one read.
fn until(socket: &UnixDatagram, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = message.contains(needle);
            seen.push(message);
            if found {
                return seen;
            }
        }
    }
    panic!("no {needle:?} in {seen:?}");
}

/// Runs the binary with `NOTIFY_SOCKET=env_value` (which `socket` receives on) through a
/// start, a SIGHUP reload and a SIGTERM, checking each message systemd expects.
fn notified(socket: UnixDatagram, env_value: &str) {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let pki = pki();
    let mut running = Running::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--to",
            "127.0.0.1:9",
            "--cert",
            &pki.cert.display().to_string(),
            "--key",
            &pki.key.display().to_string(),
        ],
        &[("NOTIFY_SOCKET", env_value)],
    );
    let mut seen = until(&socket, "READY=1");
    // The status goes out once a second while it changes, the first right at start.
    if !seen.iter().any(|m| m.starts_with("STATUS=")) {
        seen.extend(until(&socket, "STATUS="));
    }
    assert!(
        seen.iter()
            .any(|m| m == "STATUS=0 connections, 0 WebSockets"),
        "{seen:?}"
    );
    running.signal("HUP");
    let reload = until(&socket, "RELOADING=1");
    let message = reload.last().unwrap();
    let usec = message
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1");
    assert!(usec.parse::<u64>().unwrap() > 0, "{message}");
    until(&socket, "READY=1");
    running.signal("TERM");
    until(&socket, "STOPPING=1");
    assert!(running.wait().success());
}

#[test]
fn readiness_reload_and_stopping_reach_the_notify_socket() {
    let dir = support::temp_dir("notify");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    notified(socket, path.to_str().unwrap());
}

#[cfg(target_os = "linux")]
#[test]
fn an_abstract_notify_socket_works_too() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!(
        "wssbridge-test-{}-{}",
        std::process::id(),
        support::peers_serial()
    );
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let socket = UnixDatagram::bind_addr(&addr).unwrap();
    notified(socket, &format!("@{name}"));
}

/// Runs wssbridge with listening sockets passed as systemd would: bound by a parent (a small
/// python3 program), placed at fd 3 and up, `LISTEN_FDS`, `LISTEN_PID` (its own, kept across
/// exec) and `LISTEN_FDNAMES` set.
fn activated(names: &[&str], args: &[&str]) -> Command {
    support::require(&[("python3", "python3")]);
    let script = r#"
import os, socket, sys
names = sys.argv[1].split(":")
socks = []
for i, name in enumerate(names):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    os.dup2(s.fileno(), 3 + i)
    os.set_inheritable(3 + i, True)
    socks.append(s)
os.environ["LISTEN_FDS"] = str(len(names))
os.environ["LISTEN_PID"] = str(os.getpid())
os.environ["LISTEN_FDNAMES"] = sys.argv[1]
os.execv(sys.argv[2], sys.argv[2:])
"#;
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        script,
        &names.join(":"),
        env!("CARGO_BIN_EXE_wssbridge"),
    ]);
    cmd.args(args);
    cmd.env_remove("RUST_LOG");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inherited_sockets_serve_tls_and_the_redirect() {
    let backend = Backend::ws_echo().await;
    let pki = pki();
    let (cert, key) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
    );
    let mut cmd = activated(
        &["https", "http"],
        &["--to", &backend.address(), "--cert", &cert, "--key", &key],
    );
    cmd.stderr(std::process::Stdio::piped());
    let running = Running::spawn(cmd);
    // The first listening line is the TLS one (fd 3); the redirect's follows.
    let mut socket = support::ws_connect(running.addr).await;
    support::echo(&mut socket, "through an inherited socket").await;
    let line = running
        .wait_for_line(&["redirecting plain HTTP to https"])
        .await;
    let redirect: std::net::SocketAddr = support::binary::field(&line, "addr")
        .unwrap()
        .parse()
        .unwrap();
    let mut tcp = tokio::net::TcpStream::connect(redirect).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tcp.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(status_of(&reply), 308, "{reply}");
}

#[test]
fn listen_beside_inherited_sockets_is_refused_naming_both() {
    let pki = pki();
    let (cert, key) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
    );
    let out = activated(
        &["https"],
        &[
            "--listen",
            "127.0.0.1:0",
            "--to",
            "127.0.0.1:9",
            "--cert",
            &cert,
            "--key",
            &key,
        ],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--listen 127.0.0.1:0") && stderr.contains("LISTEN_FDS"),
        "{stderr}"
    );
}

#[test]
fn check_prints_what_would_be_served_and_binds_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let pki = pki();
    let out = wssbridge()
        .args(["--check", "--listen", &addr, "--admin", "127.0.0.1:0"])
        .args([
            "--route",
            "/socket.io/=localhost:3000,127.0.0.1:3001",
            "--to",
            "127.0.0.1:8080",
        ])
        .args(["--balance", "/socket.io/=ip-hash"])
        .arg("--cert")
        .arg(&pki.cert)
        .arg("--key")
        .arg(&pki.key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The port is taken: a start would fail, --check binds nothing and passes.
    assert!(out.status.success(), "{stdout}{stderr}");
    for expected in [
        &format!("listen      {addr}  TLS"),
        "admin: / (status page)",
        "names localhost,127.0.0.1",
        "route       /socket.io/  -> localhost:3000 (127.0.0.1:3000",
        "balance ip-hash",
        "route       /  -> 127.0.0.1:8080",
        "the configuration is ok",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in\n{stdout}");
    }
    assert!(stdout.contains("expires "), "{stdout}");
}

#[test]
fn check_fails_as_a_start_would() {
    let pki = pki();
    let key = pki.key.display().to_string();
    let (code, stderr) = fails(&[
        "--check",
        "--to",
        "127.0.0.1:9",
        "--cert",
        &key,
        "--key",
        &key,
    ]);
    let (start_code, start_stderr) = fails(&["--to", "127.0.0.1:9", "--cert", &key, "--key", &key]);
    assert_eq!((code, start_code), (2, 2), "{stderr}");
    assert_eq!(stderr, start_stderr);
    let (code, stderr) = fails(&["--check", "--to", "no-such-host.invalid:3000"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("route /: backend no-such-host.invalid:3000: cannot resolve"),
        "{stderr}"
    );
}

/// `--reuse-port`: two processes listen on one port and the kernel spreads connections
/// between them (each routes to its own backend, so the answer says which one served); a
/// process without the flag cannot take the port; when one stops, the other serves all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_port_shares_one_port_between_processes() {
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let listen = format!("127.0.0.1:{}", support::peers::free_port());
    let shared = |backend: &Backend| {
        Running::with_test_cert(&[
            "--listen",
            &listen,
            "--reuse-port",
            "--to",
            &backend.address(),
        ])
    };
    let mut first = shared(&a);
    let second = shared(&b);
    let (code, stderr) = fails(&["--listen", &listen, "--to", &a.address()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");

    let get = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let (mut by_a, mut by_b) = (0, 0);
    for _ in 0..200 {
        let reply = support::exchange(second.addr, get).await;
        assert_eq!(status_of(&reply), 200, "{reply}");
        match reply.rsplit("\r\n\r\n").next() {
            Some("a") => by_a += 1,
            Some("b") => by_b += 1,
            other => panic!("unexpected body {other:?}"),
        }
        if by_a >= 5 && by_b >= 5 {
            break;
        }
    }
    assert!(by_a >= 5 && by_b >= 5, "a served {by_a}, b served {by_b}");

    first.signal("TERM");
    assert!(first.wait().success(), "{:?}", first.log());
    for _ in 0..20 {
        let reply = support::exchange(second.addr, get).await;
        assert!(reply.ends_with("\r\n\r\nb"), "{reply}");
    }
}
