//! The holes an attack from outside found (issue #37), each reproduced against the real
//! binary and shown closed: a body that stalls, bytes before and between requests, chunk
//! lines and trailers, HTTP/1.0 with Transfer-Encoding, a WebSocket opened by a later
//! request at shutdown, and a backend reset in the middle of a response.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::binary::Running;
use support::{WAIT, read_head, read_to_close, status_of, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// wssbridge in front of a backend the test scripts itself, with `extra` flags.
async fn bridge(extra: &[&str]) -> (TcpListener, Running) {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = backend.local_addr().unwrap().to_string();
    let mut args = vec!["--listen", "127.0.0.1:0", "--to", &to];
    args.extend_from_slice(extra);
    (backend, Running::with_test_cert(&args))
}

/// A client through `running` that sent `request`, and the backend connection that read its
/// head.
async fn sent(
    running: &Running,
    backend: &TcpListener,
    request: &[u8],
) -> (tokio_rustls::client::TlsStream<TcpStream>, TcpStream) {
    let mut client = tls_connect(running.addr).await;
    client.write_all(request).await.unwrap();
    let (mut app, _) = tokio::time::timeout(WAIT, backend.accept())
        .await
        .expect("the request reached the backend")
        .unwrap();
    read_head(&mut app).await.unwrap();
    (client, app)
}

/// Everything a backend connection receives until wssbridge closes it (bounded by WAIT).
async fn read_all(app: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, app.read_to_end(&mut got))
        .await
        .expect("wssbridge closed the backend connection in time")
        .expect("read");
    got
}

// 1. A request body that stops.

#[tokio::test]
async fn a_stalled_body_is_answered_408_and_frees_its_slot() {
    let (backend, running) = bridge(&["--max-connections", "20", "--body-timeout", "1s"]).await;
    let request =
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n0123456789";
    let mut clients = Vec::new();
    let mut apps = Vec::new();
    for _ in 0..20 {
        let (client, app) = sent(&running, &backend, request).await;
        clients.push(client);
        apps.push(app);
    }
    let started = Instant::now();
    for client in &mut clients {
        let answer = read_to_close(client).await;
        assert_eq!(status_of(&answer), 408, "{answer}");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    for app in &mut apps {
        assert_eq!(
            read_all(app).await,
            b"0123456789",
            "the backend's side closed too"
        );
    }
    // The slots are free again (once the 408s' lingering closes end): a new client is
    // served, not refused with 503.
    drop(clients);
    let deadline = Instant::now() + WAIT;
    loop {
        let mut client = tls_connect(running.addr).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let accepted = tokio::time::timeout(Duration::from_millis(300), backend.accept()).await;
        if let Ok(Ok((mut app, _))) = accepted {
            read_head(&mut app).await.unwrap();
            app.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                .await
                .unwrap();
            drop(app);
            assert_eq!(status_of(&read_to_close(&mut client).await), 200);
            return;
        }
        let answer = read_to_close(&mut client).await;
        assert!(Instant::now() < deadline, "never served again: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_body_that_keeps_moving_is_never_cut() {
    let (backend, running) = bridge(&["--body-timeout", "1s"]).await;
    let (mut client, mut app) = sent(
        &running,
        &backend,
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 8\r\n\r\n",
    )
    .await;
    // 8 bytes over 3.2 s, one every 400 ms: no gap reaches the timeout, the whole does.
    for byte in b"abcdefgh" {
        tokio::time::sleep(Duration::from_millis(400)).await;
        client.write_all(&[*byte]).await.unwrap();
        client.flush().await.unwrap();
    }
    let mut body = [0u8; 8];
    tokio::time::timeout(WAIT, app.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&body, b"abcdefgh");
    app.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        .await
        .unwrap();
    drop(app);
    assert_eq!(status_of(&read_to_close(&mut client).await), 200);
}

#[tokio::test]
async fn a_stalled_body_whose_response_began_is_closed_both_ways() {
    let (backend, running) = bridge(&["--body-timeout", "1s"]).await;
    let (mut client, mut app) = sent(
        &running,
        &backend,
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nabc",
    )
    .await;
    // The backend begins its answer before the body is whole, then waits for the rest.
    app.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        .await
        .unwrap();
    let answer = read_to_close(&mut client).await;
    assert_eq!(answer, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello");
    assert_eq!(read_all(&mut app).await, b"abc");
    running
        .wait_for_line(&["body-timeout after the response began"])
        .await;
}

// 5. and 7. Chunk lines and trailers.

/// Sends a chunked request whose body is `body` and returns the answer and what the backend
/// received after the head; the backend answers once it has the body up to `until`.
async fn chunked(body: &[u8], until: &[u8]) -> (String, Vec<u8>) {
    let (backend, running) = bridge(&[]).await;
    let head = b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (client, mut app) = sent(&running, &backend, head).await;
    // The body is written while the answer is read: wssbridge may refuse it before it is all
    // sent, and then stop reading it (a write error here is expected, not a failure).
    let (mut reader, mut writer) = tokio::io::split(client);
    let body = body.to_vec();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&body).await;
        writer
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let read = tokio::time::timeout(Duration::from_secs(3), async {
        while !got.ends_with(until) {
            match app.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
        let _ = app.write_all(ok).await;
    })
    .await;
    drop(app);
    assert!(read.is_ok(), "the backend neither got the body nor a close");
    let answer = read_to_close(&mut reader).await;
    let _ = writing.await;
    (answer, got)
}

#[tokio::test]
async fn trailers_cannot_carry_forwarded_or_framing_fields() {
    let body = b"3\r\nabc\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
                 Forwarded: for=6.6.6.6\r\nContent-Length: 5\r\nHost: evil.example\r\n\
                 X-Checksum: 900150983cd24fb0\r\n\r\n";
    let (answer, got) = chunked(body, b"\r\n\r\n").await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "3\r\nabc\r\n0\r\nX-Checksum: 900150983cd24fb0\r\n\r\n"
    );
}

#[tokio::test]
async fn malformed_trailer_lines_are_refused() {
    for trailer in [
        &b"no colon here\r\n"[..],
        b"X-A: a\x00b\r\n",
        b"GET /admin HTTP/1.1\r\n",
        b"X-A: b\r\n folded\r\n",
    ] {
        let mut body = b"3\r\nabc\r\n0\r\n".to_vec();
        body.extend_from_slice(trailer);
        body.extend_from_slice(b"\r\n");
        let (answer, got) = chunked(&body, b"never").await;
        assert_eq!(status_of(&answer), 400, "{trailer:?}: {answer}");
        assert_eq!(got, b"3\r\nabc\r\n0\r\n", "nothing of the trailer went on");
    }
}

#[tokio::test]
async fn a_trailer_section_past_the_head_limit_is_431() {
    let mut body = b"0\r\nX-Big: ".to_vec();
    body.resize(200 * 1024, b'a');
    let (answer, got) = chunked(&body, b"never").await;
    assert_eq!(status_of(&answer), 431, "{answer}");
    assert_eq!(got, b"0\r\n");
}

#[tokio::test]
async fn chunk_lines_outside_the_grammar_are_refused() {
    for line in [
        &b"5 0\r\nhello\r\n0\r\n\r\n"[..],
        b"5 \r\nhello\r\n0\r\n\r\n",
        b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
        b"FFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n",
    ] {
        let (answer, got) = chunked(line, b"never").await;
        assert_eq!(status_of(&answer), 400, "{line:?}: {answer}");
        assert!(got.is_empty(), "{line:?}: the bad line went on: {got:?}");
    }
}

#[tokio::test]
async fn a_megabyte_of_chunk_extension_does_not_stream_through() {
    let mut body = b"5;a=".to_vec();
    body.resize(1024 * 1024, b'x');
    let (answer, got) = chunked(&body, b"never").await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(got.len() <= 8 * 1024, "{} bytes went on", got.len());
}

#[tokio::test]
async fn lengths_past_two_to_the_53_are_refused() {
    let (backend, running) = bridge(&[]).await;
    let answer = support::exchange(
        running.addr,
        b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 18446744073709551615\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    let accepted = tokio::time::timeout(Duration::from_millis(300), backend.accept()).await;
    assert!(accepted.is_err(), "the request reached the backend");
}

// 8. HTTP/1.0 with Transfer-Encoding.

#[tokio::test]
async fn http_1_0_with_transfer_encoding_is_400_and_closed() {
    let (backend, running) = bridge(&[]).await;
    let answer = support::exchange(
        running.addr,
        b"POST / HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          GET / HTTP/1.0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(
        !answer.contains(" 200 "),
        "one answer, then closed: {answer}"
    );
    let accepted = tokio::time::timeout(Duration::from_millis(300), backend.accept()).await;
    assert!(accepted.is_err(), "the request reached the backend");
}

// 6. Blank lines between requests, and a response nobody asked for.

#[tokio::test]
async fn blank_lines_between_requests_are_dropped_and_do_not_keep_a_connection() {
    let (backend, running) = bridge(&["--keepalive-timeout", "1s"]).await;
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let (mut client, mut app) = sent(&running, &backend, request).await;
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    app.write_all(ok).await.unwrap();
    let mut first = vec![0u8; ok.len()];
    client.read_exact(&mut first).await.unwrap();
    // Blank lines every 300 ms: none reaches the backend, and they do not restart the
    // keep-alive clock.
    let started = Instant::now();
    let trickle = async {
        for _ in 0..20 {
            if client.write_all(b"\r\n").await.is_err() || client.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let (_, got) = tokio::join!(trickle, read_all(&mut app));
    assert!(got.is_empty(), "blank lines reached the backend: {got:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
}

#[tokio::test]
async fn an_unsolicited_response_ends_the_connection_both_ways() {
    let (backend, running) = bridge(&["--keepalive-timeout", "60s"]).await;
    let (mut client, mut app) = sent(
        &running,
        &backend,
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    // One request, two answers.
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    app.write_all(ok).await.unwrap();
    app.write_all(ok).await.unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, client.read_to_end(&mut got)).await;
    assert_eq!(got, ok, "the first answer, then the end");
    // The backend's side is closed at once too: later requests go nowhere.
    let _ = client
        .write_all(b"GET /again HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert!(read_all(&mut app).await.is_empty());
    assert!(started.elapsed() < Duration::from_secs(3));
}

// 9. A WebSocket opened by a later request on a keep-alive connection.

#[tokio::test]
async fn a_websocket_opened_by_a_later_request_gets_1001_at_shutdown() {
    let (backend, mut running) =
        bridge(&["--shutdown-grace", "10s", "--websocket-close-on-drain"]).await;
    let (mut tls, mut app) = {
        let request = b"GET /plain HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let (mut tls, mut app) = sent(&running, &backend, request).await;
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        app.write_all(ok).await.unwrap();
        let mut first = vec![0u8; ok.len()];
        tls.read_exact(&mut first).await.unwrap();
        (tls, app)
    };
    // The upgrade, on the same connection: tungstenite's handshake over it.
    let url = format!("wss://localhost:{}/ws", running.addr.port());
    let handshake = async {
        let head = String::from_utf8(read_head(&mut app).await.unwrap()).unwrap();
        let key = head
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("a key")
            .to_string();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        app.write_all(response.as_bytes()).await.unwrap();
    };
    let (ws, ()) = tokio::join!(
        async {
            tokio_tungstenite::client_async(url, &mut tls)
                .await
                .expect("ws handshake")
                .0
        },
        handshake
    );
    let mut ws = ws;
    running.signal("TERM");
    let started = Instant::now();
    let message = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a close in time")
        .expect("a frame")
        .expect("a good frame");
    match message {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected 1001, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    drop(ws);
    assert!(running.wait().success());
}

// 10. A backend reset in the middle of a response.

/// A close-delimited response of which the backend sends `partial`, then ends its side with
/// a reset (`reset`) or a FIN; returns what the client read and how its read ended.
async fn close_delimited(reset: bool) -> (Vec<u8>, std::io::Result<usize>) {
    let (backend, running) = bridge(&[]).await;
    let request = b"GET /download HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let (mut client, mut app) = sent(&running, &backend, request).await;
    app.write_all(b"HTTP/1.1 200 OK\r\n\r\npartial")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    if reset {
        socket2::SockRef::from(&app)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(app);
    } else {
        app.shutdown().await.unwrap();
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match client.read(&mut buf).await {
                Ok(0) => return Ok(0),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the client's side ended");
    (got, end)
}

#[tokio::test]
async fn a_backend_reset_mid_response_reaches_the_client_as_a_cut_not_an_end() {
    let (got, end) = close_delimited(true).await;
    assert!(got.ends_with(b"partial"), "{got:?}");
    let e = end.expect_err("no clean end after a reset");
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    // The control: a backend that ends in order gives the client close_notify.
    let (got, end) = close_delimited(false).await;
    assert!(got.ends_with(b"partial"), "{got:?}");
    assert_eq!(end.expect("a clean end"), 0);
}

// 2. and 12. The admin port: slow clients, and Host.

/// The binary with `--admin 127.0.0.1:0` and `extra`; its admin address.
async fn with_admin(extra: &[&str]) -> (Running, std::net::SocketAddr, TcpListener) {
    let mut args = vec!["--admin", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let (backend, running) = bridge(&args).await;
    let line = running.wait_for_line(&["admin:", "addr="]).await;
    let admin = support::binary::field(&line, "addr")
        .expect("the admin address")
        .parse()
        .expect("an address");
    (running, admin, backend)
}

/// A plain-HTTP connection to `admin` from `from`.
async fn connect_from(from: [u8; 4], admin: std::net::SocketAddr) -> Option<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket
        .bind((std::net::Ipv4Addr::from(from), 0).into())
        .ok()?;
    tokio::time::timeout(Duration::from_secs(2), socket.connect(admin))
        .await
        .ok()?
        .ok()
}

/// One GET with `host`, answered within `within`: its status, or `None`.
async fn probe(admin: std::net::SocketAddr, host: &str, within: Duration) -> Option<u16> {
    let ask = async {
        let mut tcp = connect_from([127, 0, 0, 1], admin).await?;
        let request = format!("GET /livez HTTP/1.1\r\nHost: {host}\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut reply = String::new();
        tcp.read_to_string(&mut reply).await.ok()?;
        reply.starts_with("HTTP/1.1 ").then(|| status_of(&reply))
    };
    tokio::time::timeout(within, ask).await.ok().flatten()
}

#[tokio::test]
async fn the_admin_port_answers_probes_while_200_slow_clients_try_to_hold_it() {
    // A long --header-timeout: the admin port's own deadline is what bounds its heads.
    let (running, admin, _backend) = with_admin(&["--header-timeout", "60s"]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 200 clients trickling a head, each reconnecting when closed: from one address (the
    // attacker's pod) and from 40 others.
    let mut attackers = Vec::new();
    for i in 0..200u32 {
        let stop = stop.clone();
        let from = match i % 2 {
            0 => [127, 0, 0, 2],
            _ => [127, 0, 1, (i % 40) as u8 + 10],
        };
        attackers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                let Some(mut tcp) = connect_from(from, admin).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                for byte in b"GET /livez HTTP/1.1\r\n" {
                    if tcp.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut answered = 0;
    for _ in 0..30 {
        if probe(admin, "127.0.0.1", Duration::from_secs(1)).await == Some(200) {
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
    assert_eq!(answered, 30, "probes answered under the attack");
    drop(running);
}

#[tokio::test]
async fn the_admin_port_answers_only_hosts_no_other_site_can_hold() {
    let (_running, admin, _backend) = with_admin(&["--admin-host", "metrics.internal"]).await;
    let wait = Duration::from_secs(5);
    for host in [
        "127.0.0.1",
        "localhost:9090",
        "[::1]:9090",
        "metrics.internal:9090",
    ] {
        assert_eq!(probe(admin, host, wait).await, Some(200), "{host}");
    }
    for host in ["rebind.attacker.example", "localhost.attacker.example:9090"] {
        assert_eq!(probe(admin, host, wait).await, Some(421), "{host}");
    }
    // /status.json in particular.
    let mut tcp = connect_from([127, 0, 0, 1], admin).await.unwrap();
    tcp.write_all(b"GET /status.json HTTP/1.1\r\nHost: rebind.attacker.example:9090\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).await.unwrap();
    assert_eq!(status_of(&reply), 421);
    assert!(!reply.contains("\"version\""), "{reply}");
}

// 11. ACME TLS-ALPN-01 validations count in --max-handshakes.

#[tokio::test]
async fn acme_validation_handshakes_wait_for_a_handshake_slot() {
    const NAME: &str = "validation.test";
    let state = support::temp_dir("acme-slots");
    let answers = state.join("challenges").join("tls-alpn-01");
    std::fs::create_dir_all(&answers).unwrap();
    std::fs::write(answers.join(NAME), "token.thumbprint").unwrap();
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = backend.local_addr().unwrap().to_string();
    let state_arg = state.display().to_string();
    let running = Running::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--to",
            &to,
            "--acme",
            NAME,
            "--acme-directory",
            "https://127.0.0.1:9/directory",
            "--acme-state",
            &state_arg,
            "--max-handshakes",
            "1",
            "--handshake-timeout",
            "3s",
        ],
        &[],
    );
    let addr = running.addr;
    // One client takes the only slot and never finishes: it sends its ClientHello, and
    // nothing after the server's flight.
    let holder = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = rustls::ClientConnection::new(support::client_config(), name).unwrap();
        let mut hello = Vec::new();
        tls.write_tls(&mut hello).unwrap();
        sock.write_all(&hello).unwrap();
        let mut buf = [0u8; 4096];
        let _ = sock.read(&mut buf);
        std::thread::sleep(Duration::from_secs(4));
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A validation handshake offering acme-tls/1 now waits for that slot.
    let mut config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(support::insecure::AcceptAny))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let started = Instant::now();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(NAME).unwrap();
    let done = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("the validation ended");
    let took = started.elapsed();
    assert!(done.is_ok(), "the validation was answered: {done:?}");
    assert!(
        took >= Duration::from_millis(2000),
        "answered after {took:?}, while the only slot was held"
    );
    holder.join().unwrap();
    let _ = std::fs::remove_dir_all(&state);
}

// 4. Memory before the handshake.

/// The first `len` bytes of a ClientHello of about 60 KB (a padding extension), in records
/// of 16 KiB, as a client whose hello is large (post-quantum keys, many names) sends it.
fn large_client_hello(len: usize) -> Vec<u8> {
    let body_len = 60_000;
    let mut message = vec![
        1,
        (body_len >> 16) as u8,
        (body_len >> 8) as u8,
        body_len as u8,
    ];
    message.extend_from_slice(&[3, 3]);
    message.resize(4 + body_len, 0);
    let mut records = Vec::new();
    for piece in message.chunks(16 * 1024) {
        records.extend_from_slice(&[0x16, 3, 1]);
        records.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        records.extend_from_slice(piece);
    }
    records.truncate(len);
    records
}

/// Whether wssbridge closed `tcp` (EOF or reset), waiting at most `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// wssbridge with a 1 MiB ClientHello budget (and deadlines long enough not to interfere),
/// and `clients` connections each sending `first` then nothing, `pause` apart: which of
/// them it closed, oldest first.
async fn stall(clients: usize, first: &[u8], pause: Duration) -> (Running, TcpListener, Vec<bool>) {
    let (backend, running) = bridge(&[
        "--max-handshake-memory",
        "1MiB",
        "--handshake-timeout",
        "60s",
        "--header-timeout",
        "60s",
    ])
    .await;
    let mut stalled = Vec::new();
    for _ in 0..clients {
        let mut tcp = TcpStream::connect(running.addr).await.unwrap();
        tcp.write_all(first).await.unwrap();
        stalled.push(tcp);
        tokio::time::sleep(pause).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut shed = Vec::new();
    for tcp in &mut stalled {
        shed.push(closed_within(tcp, Duration::from_millis(20)).await);
    }
    (running, backend, shed)
}

#[tokio::test]
async fn stalled_client_hellos_beyond_the_budget_are_shed_oldest_first() {
    // 40 clients stall 48 KB into a 60 KB ClientHello: 1.9 MB, over the 1 MiB budget.
    let hello = large_client_hello(48_000);
    let (running, _backend, shed) = stall(40, &hello, Duration::from_millis(20)).await;
    let closed = shed.iter().filter(|s| **s).count();
    assert!((15..=30).contains(&closed), "{closed} of 40 shed: {shed:?}");
    assert!(shed[0] && !shed[39], "the oldest go first: {shed:?}");
    // Silent connections hold nothing of it and are not shed; honest clients still connect.
    let mut silent = TcpStream::connect(running.addr).await.unwrap();
    let mut client = tls_connect(running.addr).await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(!closed_within(&mut silent, Duration::from_millis(300)).await);
    running.wait_for_line(&["--max-handshake-memory"]).await;
}

/// A record header that claims a large record, then nothing: the room kept for that record
/// counts in the budget as soon as it is made, not only once bytes fill it.
#[tokio::test]
async fn a_claimed_record_counts_in_the_budget_before_it_arrives() {
    // 100 headers claiming 18 KiB each: 1.8 MB of room, over the 1 MiB budget.
    let header = [0x16, 3, 1, 0x48, 0x00];
    let (_running, _backend, shed) = stall(100, &header, Duration::from_millis(5)).await;
    let shed = shed.iter().filter(|s| **s).count();
    assert!((30..=70).contains(&shed), "{shed} of 100 shed");
}
