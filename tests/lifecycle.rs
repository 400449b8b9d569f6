//! The process's life: signals from the first moment, the order of shutdown, what each
//! connection hears when it begins, and the events the server reports.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::binary::{Running, wssbridge};
use support::{Backend, Tunnel, WAIT, read_to_close, status_of, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wssbridge::lifecycle::Event;

#[test]
fn a_sighup_while_the_certificate_is_still_being_read_does_not_end_the_process() {
    support::require(&[("mkfifo", "coreutils")]);
    let pki = support::pki();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("chain.pem");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let mut child = wssbridge()
        .args([
            "--listen",
            "127.0.0.1:0",
            "--to",
            "127.0.0.1:9",
            "--cert-poll",
            "0",
        ])
        .arg("--cert")
        .arg(&fifo)
        .arg("--key")
        .arg(&pki.key)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The certificate's read holds start-up open until the FIFO gets a writer. The signal
    // goes once the process has its SIGHUP handler (its SigCgt mask says so), which it must
    // have before it reads any file.
    let caught = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
        let mask = status.ok().and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        });
        mask.is_some_and(|m| m & 1 != 0) // SIGHUP is signal 1: bit 0
    };
    let deadline = Instant::now() + WAIT;
    while !caught() {
        assert!(Instant::now() < deadline, "no SIGHUP handler");
        std::thread::sleep(Duration::from_millis(10));
    }
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    // The FIFO opens for writing only while the process is there to read it: if SIGHUP
    // had ended it, this never succeeds and the exit shows.
    let chain = std::fs::read(&pki.cert).unwrap();
    let mut writer = loop {
        use std::os::unix::fs::OpenOptionsExt;
        let open = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
        match open {
            Ok(writer) => break writer,
            Err(_) => {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "SIGHUP during start-up ended the process"
                );
                assert!(Instant::now() < deadline, "the certificate was never read");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    writer.write_all(&chain).unwrap();
    drop(writer);
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("listening")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("did not start after the SIGHUP: {seen:?}"),
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_timeout_counts_from_accept_not_from_the_proxy_header() {
    let backend = Backend::http("never").await;
    let tunnel = Tunnel::start(&[
        "--to",
        &backend.address(),
        "--accept-proxy-from",
        "127.0.0.0/8",
        "--handshake-timeout",
        "1s",
        "--header-timeout",
        "0",
    ])
    .await;
    let started = Instant::now();
    let mut tcp = TcpStream::connect(tunnel.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    tcp.write_all(b"PROXY TCP4 192.0.2.1 127.0.0.1 5000 443\r\n")
        .await
        .unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut reply = Vec::new();
    let closed = tokio::time::timeout(WAIT, tcp.read_to_end(&mut reply)).await;
    let took = started.elapsed();
    assert!(closed.is_ok(), "not closed");
    // One second from accept; counted from the PROXY header it would be 1.7 s.
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(1550),
        "closed after {took:?}"
    );
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_shutdown_a_keep_alive_connection_closes_at_its_next_request_boundary() {
    let http = Backend::http("one").await;
    let ws = Backend::ws_echo().await;
    let mut tunnel = Tunnel::start(&[
        "--route",
        &format!("/={}", ws.address()),
        "--route",
        &format!("/plain={}", http.address()),
        "--shutdown-grace",
        "20s",
    ])
    .await;
    let mut socket = support::ws_connect(tunnel.addr).await;
    let mut idle = tls_connect(tunnel.addr).await;
    idle.write_all(b"GET /plain HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].ends_with(b"one"));
    // A request already under way when shutdown begins: its body, then its answer.
    let mut busy = tls_connect(tunnel.addr).await;
    busy.write_all(b"POST /plain HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\r\nab")
        .await
        .unwrap();
    // Under way: its head was admitted and the backend connected to (its second connection).
    let received = http.received.clone();
    support::eventually("the POST reached the backend", || {
        received.lock().unwrap().len() >= 2
    })
    .await;

    let started = Instant::now();
    tunnel.begin_shutdown();
    // Between requests: closed at once, with no answer.
    assert_eq!(read_to_close(&mut idle).await, "");
    assert!(started.elapsed() < Duration::from_secs(2));
    busy.write_all(b"cd").await.unwrap();
    let reply = read_to_close(&mut busy).await;
    assert!(
        status_of(&reply) == 200 && reply.ends_with("one"),
        "{reply}"
    );
    // The WebSocket goes on through the drain.
    support::echo(&mut socket, "still here").await;
    drop(socket);
    tunnel.finished().await;
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_reports_ready_reloads_draining_and_stopped_in_order() {
    let pki = support::pki();
    let argv: Vec<String> = [
        "wssbridge",
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:9",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--cert".into(), pki.cert.display().to_string()])
    .chain(["--key".into(), pki.key.display().to_string()])
    .collect();
    let config = support::config_from_flags(&argv);
    let listeners = wssbridge::Listeners::bind(&config.process.listening).unwrap();
    let server = wssbridge::Server::new(config).unwrap();
    let mut events = server.events();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(server.clone().run(listeners, async {
        let _ = stopped.await;
    }));
    let first = tokio::time::timeout(WAIT, events.recv()).await.unwrap();
    assert_eq!(first.unwrap(), Event::Ready);
    server.reload_files().unwrap();
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert_eq!(
        seen,
        vec![
            Event::Reloading { why: "call" },
            Event::Reloaded { result: Ok(()) },
            Event::Draining,
            Event::Stopped,
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_keep_alive_connections_and_exits_0() {
    let backend = Backend::http("app").await;
    let mut running =
        Running::with_test_cert(&["--listen", "127.0.0.1:0", "--to", &backend.address()]);
    let mut tls = tls_connect(running.addr).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(buf[..n].ends_with(b"app"));
    running.signal("TERM");
    assert_eq!(read_to_close(&mut tls).await, "");
    assert!(running.wait().success());
    let log = running.log().join("\n");
    assert!(log.contains("drained: all connections finished"), "{log}");
    assert!(
        log.contains("outcome=http closed at a request boundary: shutting down"),
        "{log}"
    );
}

/// Admin connections are tasks of the supervisor like every other: one half-way through its
/// request when shutdown ends is closed at force, and `run` returns only once it is gone.
/// (They were spawned apart once, and outlived the server by their 2 s head deadline.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_connection_ends_with_the_server() {
    let mut tunnel = Tunnel::start(&["--to", "127.0.0.1:9", "--admin", "127.0.0.1:0"]).await;
    let admin = tunnel.admin_addr.expect("an admin listener");
    let mut slow = TcpStream::connect(admin).await.unwrap();
    slow.write_all(b"GET /livez HTTP/1.1\r\n").await.unwrap();
    // Its task exists before shutdown: a complete probe on another connection is answered.
    let mut probe = TcpStream::connect(admin).await.unwrap();
    probe
        .write_all(b"GET /livez HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    probe.read_to_string(&mut answer).await.unwrap();
    assert_eq!(status_of(&answer), 200, "{answer}");

    let started = Instant::now();
    tunnel.begin_shutdown();
    tunnel.finished().await;
    // Closed by then: no wait for the head deadline.
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_millis(300), slow.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the admin connection outlived the server: {read:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}
