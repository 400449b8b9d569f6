//! Every error before the tunnel starts gets a clear HTTP answer with `Connection: close`
//! (never a backend address); a failed TLS handshake is closed quietly.

mod support;

use std::time::Duration;

use support::{Backend, Tunnel, WAIT, read_to_close, refusing_address, status_of, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn assert_error(response: &str, status: u16) {
    assert_eq!(status_of(response), status, "{response}");
    assert!(response.contains("\r\nConnection: close\r\n"), "{response}");
    assert!(
        !response.contains("127.0.0.1"),
        "leaks an address: {response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_request_is_400() {
    let backend = Backend::http("never").await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    assert_error(&tunnel.exchange(b"hello there\r\n\r\n").await, 400);
    assert_error(
        &tunnel
            .exchange(b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await,
        400,
    );
    assert_error(
        &tunnel
            .exchange(b"GET / HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n")
            .await,
        400,
    );
    assert!(backend.received.lock().unwrap().is_empty());
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_is_404() {
    let backend = Backend::http("api").await;
    let tunnel = Tunnel::start(&["--route", &format!("/api/={}", backend.address())]).await;
    assert_error(
        &tunnel
            .exchange(b"GET /apix HTTP/1.1\r\nHost: a\r\n\r\n")
            .await,
        404,
    );
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_method_is_405() {
    let backend = Backend::http("never").await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    let response = tunnel
        .exchange(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .await;
    assert_error(&response, 405);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_head_is_408_counted_from_accept() {
    let backend = Backend::http("never").await;
    let tunnel = Tunnel::start(&["--to", &backend.address(), "--header-timeout", "800ms"]).await;
    let mut tls = tls_connect(tunnel.addr).await;
    // Trickle a byte every 100 ms: each byte would restart a per-read timer, never this one.
    let trickle = async {
        for b in b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if tls.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), trickle).await;
    let response = read_to_close(&mut tls).await;
    assert_error(&response, 408);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_is_431() {
    let backend = Backend::http("never").await;
    let tunnel = Tunnel::start(&["--to", &backend.address(), "--max-header-bytes", "1KiB"]).await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "x".repeat(2048)
    );
    assert_error(&tunnel.exchange(big.as_bytes()).await, 431);
    let many = format!(
        "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
        "X: y\r\n".repeat(101)
    );
    let tunnel2 = Tunnel::start(&["--to", &backend.address()]).await;
    assert_error(&tunnel2.exchange(many.as_bytes()).await, 431);
    tunnel.assert_idle().await;
    tunnel2.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backends_are_502() {
    let tunnel = Tunnel::start(&[
        "--to",
        &format!("{},{}", refusing_address().await, refusing_address().await),
    ])
    .await;
    assert_error(
        &tunnel.exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await,
        502,
    );
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_is_503() {
    let backend = Backend::silent().await;
    // A short close timeout: a dropped client half-closes; the silent backend never answers.
    let tunnel = Tunnel::start(&[
        "--to",
        &backend.address(),
        "--max-connections",
        "1",
        "--close-timeout",
        "200ms",
    ])
    .await;
    let mut first = tls_connect(tunnel.addr).await;
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    // Wait until the first connection holds the only slot (its tunnel is open).
    while tunnel.server.connections() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let response = tunnel.exchange(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert_error(&response, 503);
    assert!(response.contains("Retry-After:"));
    drop(first);
    tunnel.assert_idle().await;
    // The slot is free again.
    let third = tunnel.exchange(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    // Admitted this time: tunnelled to the silent backend, so no answer comes.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third)
            .await
            .is_err(),
        "third connection was refused"
    );
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_arriving_during_shutdown_is_503() {
    let backend = Backend::http("never").await;
    let mut tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    let mut tls = tls_connect(tunnel.addr).await;
    while tunnel.server.connections() < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tunnel.begin_shutdown();
    // The listener closes at once: new connections are refused.
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(tunnel.addr).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tls.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_error(&read_to_close(&mut tls).await, 503);
    tunnel.finished().await;
    assert!(backend.received.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_preface_is_505() {
    let backend = Backend::http("never").await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    let response = tunnel.exchange(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    assert_error(&response, 505);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_is_answered_400_saying_so() {
    let backend = Backend::http("never").await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    let mut tcp = TcpStream::connect(tunnel.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut reply))
        .await
        .expect("not closed");
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    assert!(
        reply.contains("plain HTTP request was sent to the HTTPS port"),
        "{reply}"
    );
    assert!(backend.received.lock().unwrap().is_empty());
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_tls_handshake_is_closed_at_the_handshake_timeout() {
    let backend = Backend::http("never").await;
    let tunnel = Tunnel::start(&["--to", &backend.address(), "--handshake-timeout", "300ms"]).await;
    let started = std::time::Instant::now();
    let mut tcp = TcpStream::connect(tunnel.addr).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap(); // the start of a ClientHello, then nothing
    let mut reply = Vec::new();
    let closed = tokio::time::timeout(WAIT, tcp.read_to_end(&mut reply)).await;
    let elapsed = started.elapsed();
    assert!(closed.is_ok(), "stalled handshake was not closed");
    assert!(reply.is_empty());
    // At the flag's 300 ms, not at the 10 s header timeout that would also end it.
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "closed after {elapsed:?}"
    );
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_closes_before_a_request_is_not_an_error() {
    let backend = Backend::http("never").await;
    let logs = support::logs();
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    let mut tls = tls_connect(tunnel.addr).await;
    let port = tls.get_ref().0.local_addr().unwrap().port();
    tls.shutdown().await.unwrap();
    assert_eq!(read_to_close(&mut tls).await, "");
    tunnel.assert_idle().await;
    // Logged at debug, as a client that went away, not as a failure.
    let peer = format!("peer=127.0.0.1:{port} ");
    let line = logs.wait_for(&[&peer, "connection"]).await;
    assert!(line.contains("DEBUG"), "{line}");
    assert!(line.contains("outcome=no request"), "{line}");
    assert!(logs.lines_with(&[&peer, "WARN"]).is_empty());
    assert!(logs.lines_with(&[&peer, "ERROR"]).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_rustls_refuses_gets_an_alert_before_the_close() {
    let backend = Backend::http("never").await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    let mut tcp = TcpStream::connect(tunnel.addr).await.unwrap();
    // A handshake record holding a ClientHello one byte long: not a ClientHello.
    tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00])
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut reply))
        .await
        .expect("closed");
    assert_eq!(reply.first(), Some(&0x15), "an alert record: {reply:?}");
    assert_eq!(reply.get(5), Some(&2), "a fatal one: {reply:?}");
    tunnel.assert_idle().await;
}
