//! Peers that stop reading: what a stalled tunnel holds is bounded, and `--send-timeout`
//! frees it; peers that vanish: the other side is told at once.

mod support;

use std::time::{Duration, Instant};

use support::binary::Running;
use support::{Tunnel, UPGRADE_REQUEST, WAIT, accept_upgrade, read_head, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A client whose 101 has been read, and the backend side of its tunnel.
async fn upgraded(
    addr: std::net::SocketAddr,
    listener: &TcpListener,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    tokio::net::TcpStream,
) {
    let mut client = tls_connect(addr).await;
    client.write_all(UPGRADE_REQUEST).await.unwrap();
    client.flush().await.unwrap();
    let backend = accept_upgrade(listener).await;
    let head = read_head(&mut client).await.expect("101");
    assert!(head.starts_with(b"HTTP/1.1 101"));
    (client, backend)
}

/// Writes until the peer stops taking bytes for good; returns how many it took.
async fn flood<W: AsyncWriteExt + Unpin>(w: &mut W, stall: Duration) -> u64 {
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while let Ok(Ok(n)) = tokio::time::timeout(stall, w.write(&chunk)).await {
        if n == 0 {
            break;
        }
        sent += n as u64;
    }
    sent
}

async fn gone(tunnel: &Tunnel, within: Duration) -> Duration {
    let started = Instant::now();
    while tunnel.server.connections() > 0 {
        assert!(
            started.elapsed() < within,
            "the stalled tunnel was not freed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_at_the_send_timeout() {
    let logs = support::logs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tunnel = Tunnel::start(&[
        "--to",
        &listener.local_addr().unwrap().to_string(),
        "--send-timeout",
        "500ms",
    ])
    .await;
    let (client, mut backend) = upgraded(tunnel.addr, &listener).await;
    // The backend keeps sending; the client reads nothing.
    let pushed = tokio::spawn(async move { flood(&mut backend, Duration::from_secs(3)).await });
    let took = gone(&tunnel, Duration::from_secs(10)).await;
    assert!(
        took >= Duration::from_millis(400),
        "cut off too soon: {took:?}"
    );
    let line = logs
        .wait_for(&["connection", "send-timeout (the client stopped reading)"])
        .await;
    assert!(line.contains("INFO"), "{line}");
    assert!(pushed.await.unwrap() > 0);
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_reading_is_cut_off_at_the_send_timeout() {
    let logs = support::logs();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tunnel = Tunnel::start(&[
        "--to",
        &listener.local_addr().unwrap().to_string(),
        "--send-timeout",
        "500ms",
    ])
    .await;
    let (mut client, backend) = upgraded(tunnel.addr, &listener).await;
    // The client keeps sending; the backend reads nothing.
    let pushed = tokio::spawn(async move { flood(&mut client, Duration::from_secs(3)).await });
    gone(&tunnel, Duration::from_secs(10)).await;
    logs.wait_for(&["connection", "send-timeout (the backend stopped reading)"])
        .await;
    assert!(pushed.await.unwrap() > 0);
    drop(backend);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_send_timeout_off_a_stalled_tunnel_waits_and_then_drains_whole() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tunnel = Tunnel::start(&[
        "--to",
        &listener.local_addr().unwrap().to_string(),
        "--send-timeout",
        "0",
    ])
    .await;
    let (mut client, mut backend) = upgraded(tunnel.addr, &listener).await;
    let total: u64 = 32 * 1024 * 1024;
    let writer = tokio::spawn(async move {
        let chunk = vec![b'y'; 64 * 1024];
        let mut sent = 0;
        while sent < total {
            backend.write_all(&chunk).await.unwrap();
            sent += chunk.len() as u64;
        }
        backend.shutdown().await.unwrap();
        backend
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(tunnel.server.connections(), 1, "still there, stalled");
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + WAIT;
    while got < total {
        let n = tokio::time::timeout_at(deadline.into(), client.read(&mut buf))
            .await
            .expect("drains in time")
            .unwrap();
        assert!(n > 0, "closed after {got} bytes");
        got += n as u64;
    }
    drop(writer.await.unwrap());
    drop(client);
    tunnel.assert_idle().await;
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tunnel_holds_a_bounded_amount_of_memory() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap().to_string();
    let running = Running::with_test_cert(&[
        "--listen",
        "127.0.0.1:0",
        "--to",
        &backend,
        "--send-timeout",
        "0",
    ]);
    let pid = running.child.id();
    // Warm up the allocator with one tunnel that moves data, then measure.
    let (mut warm, mut warm_backend) = upgraded(running.addr, &listener).await;
    warm_backend
        .write_all(&vec![b'w'; 256 * 1024])
        .await
        .unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    warm.read_exact(&mut buf).await.unwrap();
    let before = rss_kib(pid);
    // Both directions stalled: the client reads nothing while its backend sends, and the
    // backend reads nothing while its client sends.
    let (client, mut to_client) = upgraded(running.addr, &listener).await;
    let (mut from_client, stuck_backend) = upgraded(running.addr, &listener).await;
    let down = tokio::spawn(async move { flood(&mut to_client, Duration::from_secs(2)).await });
    let up = tokio::spawn(async move { flood(&mut from_client, Duration::from_secs(2)).await });
    let (down, up) = (down.await.unwrap(), up.await.unwrap());
    let after = rss_kib(pid);
    let grew = after.saturating_sub(before);
    // Beyond the kernel's socket buffers: ≤ 256 KiB per direction by design (64 KiB of
    // rustls records, 64 KiB read from the peer, 64 KiB read ahead); allow the allocator's
    // slack on top.
    assert!(
        grew < 1024,
        "RSS grew {grew} KiB after {down} and {up} bytes were pushed"
    );
    drop((client, stuck_backend, warm, warm_backend));
}

/// A backend process that answers the upgrade and then streams until it is killed.
const STREAMING_BACKEND: &str = r#"
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen()
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
head = b""
while b"\r\n\r\n" not in head:
    head += c.recv(4096)
c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
while True:
    c.sendall(b"z" * 1024)
    time.sleep(0.005)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_stream_closes_the_client_at_once() {
    use std::io::BufRead;
    let mut child = std::process::Command::new("python3")
        .args(["-c", STREAMING_BACKEND])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut port = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let backend = format!("127.0.0.1:{}", port.trim());
    let tunnel = Tunnel::start(&["--to", &backend]).await;
    let mut client = tls_connect(tunnel.addr).await;
    client.write_all(UPGRADE_REQUEST).await.unwrap();
    client.flush().await.unwrap();
    assert!(
        read_head(&mut client)
            .await
            .unwrap()
            .starts_with(b"HTTP/1.1 101")
    );
    let mut buf = vec![0u8; 16 * 1024];
    let mut streamed = 0;
    while streamed < 20 * 1024 {
        streamed += client.read(&mut buf).await.unwrap();
    }
    child.kill().unwrap(); // SIGKILL
    let killed = Instant::now();
    let end = loop {
        match tokio::time::timeout(WAIT, client.read(&mut buf))
            .await
            .expect("closed")
        {
            Ok(0) => break Ok(()),
            Ok(_) => continue,
            Err(e) => break Err(e),
        }
    };
    let took = killed.elapsed();
    let _ = child.wait();
    // Ok(0) from rustls means close_notify came before the FIN (a bare FIN is an error).
    assert!(end.is_ok(), "no close_notify: {end:?}");
    assert!(
        took < Duration::from_secs(1),
        "closed {took:?} after the kill"
    );
    drop(client);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_reading_small_messages_is_cut_off_too() {
    let logs = support::logs();
    // A backend whose receive window is tiny: a few small messages fill it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let tunnel = Tunnel::start(&[
        "--to",
        &listener.local_addr().unwrap().to_string(),
        "--send-timeout",
        "500ms",
    ])
    .await;
    let (mut client, backend) = upgraded(tunnel.addr, &listener).await;
    // One small message at a time, each its own record: the lone-record path.
    let writer = tokio::spawn(async move {
        let message = [b's'; 1024];
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if client.write_all(&message).await.is_err() || client.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        client
    });
    gone(&tunnel, Duration::from_secs(14)).await;
    logs.wait_for(&["connection", "send-timeout (the backend stopped reading)"])
        .await;
    drop((writer.await.unwrap(), backend));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_answer_is_not_a_client_that_stopped_reading() {
    // TLS 1.3 with the request sent right behind the client's Finished: the session tickets
    // are held for the first answer, which the backend takes 1.5 s to give.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tunnel = Tunnel::start(&[
        "--to",
        &listener.local_addr().unwrap().to_string(),
        "--send-timeout",
        "500ms",
    ])
    .await;
    let backend = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_head(&mut s).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow")
            .await
            .unwrap();
    });
    let addr = tunnel.addr;
    let answer = tokio::task::spawn_blocking(move || {
        let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let mut raw = support::RawTls::connect(addr, support::client_config(), request);
        let mut got = Vec::new();
        let deadline = Instant::now() + WAIT;
        while !got.ends_with(b"slow") && Instant::now() < deadline {
            raw.read_once();
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut raw.tls.reader(), &mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.ends_with("slow"), "{answer:?}");
    backend.await.unwrap();
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_after_the_backend_closed_ends_the_connection_at_once() {
    // The backend answers one request and closes (as Node does with an idle keep-alive
    // connection); the client, still open, then sends a request that must be refused.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tunnel = Tunnel::start(&[
        "--to",
        &listener.local_addr().unwrap().to_string(),
        "--close-timeout",
        "0",
    ])
    .await;
    let backend = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_head(&mut s).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    });
    let mut client = tls_connect(tunnel.addr).await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, client.read_to_end(&mut got)).await;
    assert!(got.ends_with(b"ok"), "{:?}", String::from_utf8_lossy(&got));
    // A request with no Host: refused by the exchange, with nobody left to answer.
    let _ = client.write_all(b"GET / HTTP/1.1\r\n\r\n").await;
    let _ = client.flush().await;
    gone(&tunnel, Duration::from_secs(3)).await;
    drop(client);
    backend.await.unwrap();
}
