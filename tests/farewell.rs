//! Shutdown ends each WebSocket the way the protocol ends one, against the real binary: a
//! `1001 Going Away` close frame to the client (unmasked) and to the backend (masked), never
//! inside a frame the backend is mid-way through, spread over the jitter window, at the
//! grace's end or at once with `--websocket-close-on-drain`; and the last response of a
//! keep-alive connection says `Connection: close`.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::binary::Running;
use support::{WAIT, Ws, pattern, read_head, read_to_close, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The jitter window (`websocket::SPREAD`) and a margin for a loaded machine.
const SPREAD: Duration = Duration::from_millis(1500);
const SLACK: Duration = Duration::from_millis(700);

/// wssbridge with `--shutdown-grace grace` and `extra`, in front of a backend the test
/// scripts itself.
async fn bridge(grace: &str, extra: &[&str]) -> (TcpListener, Running) {
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = backend.local_addr().unwrap().to_string();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--to",
        &to,
        "--shutdown-grace",
        grace,
    ];
    args.extend_from_slice(extra);
    let running = Running::with_test_cert(&args);
    (backend, running)
}

/// `n` WebSockets through `running`, each with its raw backend stream, in the same order.
async fn open(running: &Running, backend: &TcpListener, n: usize) -> Vec<(Ws, TcpStream)> {
    let mut pairs = Vec::new();
    for _ in 0..n {
        let (ws, app) = tokio::join!(
            support::ws_connect(running.addr),
            support::accept_websocket(backend)
        );
        pairs.push((ws, app));
    }
    pairs
}

/// The next message on `ws` and when it came.
async fn next(ws: &mut Ws) -> (Message, Instant) {
    let message = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a message in time")
        .expect("a message, not the end")
        .expect("a well-formed message");
    (message, Instant::now())
}

fn assert_going_away(message: &Message) {
    match message {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Away, "{frame:?}"),
        other => panic!("expected a close frame 1001, got {other:?}"),
    }
}

/// What a backend reads until wssbridge's FIN: one masked close frame, 1001.
async fn assert_backend_got_a_masked_close(app: &mut TcpStream) {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, app.read_to_end(&mut got))
        .await
        .expect("the backend's side closed in time")
        .expect("read");
    assert_eq!(got.len(), 8, "one masked close frame: {got:?}");
    assert_eq!(&got[..2], &[0x88, 0x82]);
    let key = &got[2..6];
    assert_eq!(
        [got[6] ^ key[0], got[7] ^ key[1]],
        [0x03, 0xe9],
        "code 1001"
    );
}

/// A binary frame header (server to client, unmasked) for `len` bytes.
fn binary_header(len: usize) -> Vec<u8> {
    let mut h = vec![0x82, 127];
    h.extend_from_slice(&(len as u64).to_be_bytes());
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_grace_s_end_each_websocket_gets_1001_spread_over_the_window() {
    let (backend, mut running) = bridge("1s", &[]).await;
    let mut pairs = open(&running, &backend, 12).await;

    running.signal("TERM");
    let term = Instant::now();
    // Within the grace the tunnels still carry messages, both ways.
    let (ws, app) = &mut pairs[0];
    app.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    assert_eq!(next(ws).await.0, Message::text("hi"));

    // All read at once, so each close is timed when it comes, not when the one before it
    // has been read.
    let closes = pairs.iter_mut().map(|(ws, app)| async move {
        let (message, at) = next(ws).await;
        assert_going_away(&message);
        assert_backend_got_a_masked_close(app).await;
        at - term
    });
    let times = futures_util::future::join_all(closes).await;
    let (first, last) = (times.iter().min().unwrap(), times.iter().max().unwrap());
    assert!(
        *first >= Duration::from_millis(950),
        "before the grace's end: {times:?}"
    );
    assert!(
        *last <= Duration::from_secs(1) + SPREAD + SLACK,
        "{times:?}"
    );
    assert!(
        *last - *first >= Duration::from_millis(200),
        "12 closes in one instant: {times:?}"
    );
    assert!(running.wait().success());
    running
        .wait_for_line(&["websocket closed with 1001 going away"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_close_on_drain_a_frame_under_way_is_finished_before_the_close() {
    let (backend, mut running) = bridge("30s", &["--websocket-close-on-drain"]).await;
    let mut pairs = open(&running, &backend, 4).await;
    // The backend is half-way through a 256 KiB frame when shutdown comes.
    let payload = pattern(7, 256 * 1024);
    let (_, app) = &mut pairs[0];
    app.write_all(&binary_header(payload.len())).await.unwrap();
    app.write_all(&payload[..100_000]).await.unwrap();
    // Time for those bytes to cross (nothing outside shows a partial frame's progress); if
    // they had not, the frame would still be under way at TERM, as the test wants.
    tokio::time::sleep(Duration::from_millis(200)).await;

    running.signal("TERM");
    let term = Instant::now();
    for (ws, app) in &mut pairs[1..] {
        let (message, at) = next(ws).await;
        assert_going_away(&message);
        assert!(at - term <= SPREAD + SLACK, "not at once: {:?}", at - term);
        assert_backend_got_a_masked_close(app).await;
    }
    // The rest of the frame comes after every other tunnel closed: it is passed on whole,
    // then the close.
    tokio::time::sleep_until(term + SPREAD + Duration::from_millis(300)).await;
    let (ws, app) = &mut pairs[0];
    app.write_all(&payload[100_000..]).await.unwrap();
    let (message, _) = next(ws).await;
    assert_eq!(message, Message::binary(payload), "the frame, whole");
    assert_going_away(&next(ws).await.0);
    assert_backend_got_a_masked_close(app).await;
    assert!(running.wait().success());
    assert!(
        term.elapsed() < Duration::from_secs(10),
        "not at the grace's end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_keep_alive_response_says_connection_close() {
    let (backend, mut running) = bridge("10s", &[]).await;
    let mut client = tls_connect(running.addr).await;
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    client.write_all(request).await.unwrap();
    let (mut app, _) = backend.accept().await.unwrap();
    read_head(&mut app).await.unwrap();
    // A first response before shutdown keeps the connection open.
    let ok = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok";
    app.write_all(ok).await.unwrap();
    let mut first = vec![0u8; ok.len()];
    client.read_exact(&mut first).await.unwrap();
    assert_eq!(first, ok);
    // The next request is under way when shutdown comes: its response is the last.
    client.write_all(request).await.unwrap();
    read_head(&mut app).await.unwrap();
    running.signal("TERM");
    // The drain has begun once the listeners closed (no --shutdown-delay): the response
    // is sent after it, so it is the connection's last.
    running.wait_for_line(&["listeners closed"]).await;
    app.write_all(ok).await.unwrap();
    let rest = read_to_close(&mut client).await;
    assert_eq!(
        rest,
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    );
    assert!(running.wait().success());
}
