//! How each WebSocket ended, who ended it and what it carried, against the real binary with
//! a real WebSocket client (tokio-tungstenite) and backends the tests script: the log line a
//! tunnel writes when it ends, and its sample of `wssbridge_websocket_closes_total`, the
//! message counts and the histograms on `/metrics` (read by promtool too).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::binary::{Running, field};
use support::{WAIT, Ws, accept_websocket, sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

/// wssbridge with an admin port, in front of `to`, with `extra` flags.
fn bridge(to: &str, extra: &[&str]) -> (Running, SocketAddr) {
    let admin: SocketAddr = format!("127.0.0.1:{}", support::peers::free_port())
        .parse()
        .unwrap();
    let admin_flag = admin.to_string();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--to",
        to,
        "--admin",
        &admin_flag,
    ];
    args.extend_from_slice(extra);
    (Running::with_test_cert(&args), admin)
}

async fn scrape(admin: SocketAddr) -> String {
    support::admin_get(admin, "/metrics").await.2
}

/// The closes sample for `side` and `code` on the route `/` (0 when absent).
fn closes(scrape: &str, side: &str, code: &str) -> f64 {
    let series =
        format!("wssbridge_websocket_closes_total{{route=\"/\",side=\"{side}\",code=\"{code}\"}}");
    match scrape.contains(&format!("{series} ")) {
        true => sample(scrape, &series),
        false => 0.0,
    }
}

/// Every `code` label on a closes sample is one of the bounded values.
fn assert_codes_bounded(scrape: &str) {
    let known: Vec<String> = (1000..=1015)
        .map(|c| c.to_string())
        .chain(["other".into(), "none".into()])
        .collect();
    for line in scrape
        .lines()
        .filter(|l| l.starts_with("wssbridge_websocket_closes_total{"))
    {
        let code = line
            .split("code=\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        assert!(
            code.is_some_and(|c| known.iter().any(|k| k == c)),
            "unbounded code in {line}"
        );
        let side = line
            .split("side=\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        assert!(
            matches!(side, Some("client" | "backend" | "proxy")),
            "{line}"
        );
    }
}

/// The tunnel's log line, once it is written.
async fn line(running: &Running) -> String {
    running.wait_for_line(&["ended_by"]).await
}

fn assert_fields(line: &str, want: &[(&str, &str)]) {
    for (key, value) in want {
        assert_eq!(field(line, key), Some(*value), "{key} in {line}");
    }
}

/// The next data message (pings and pongs skipped).
async fn next_data(ws: &mut Ws) -> Message {
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("a message, not the end")
            .expect("a well-formed message");
        if message.is_text() || message.is_binary() {
            return message;
        }
    }
}

/// Reads until the stream ends (the close handshake done, or the connection gone), then
/// closes the connection as a client does once the handshake is over.
async fn drain_to_end(mut ws: Ws) {
    let _ = tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_s_1000_with_fragments_and_pings_is_counted_frame_by_frame() {
    support::require(&[("promtool", "prometheus")]);
    let backend = support::Backend::ws_echo().await;
    let (running, admin) = bridge(&backend.address(), &[]);
    let mut ws = support::ws_connect(running.addr).await;
    // engine.io's own ping ("2") is a text message like any other.
    ws.send(Message::text("2")).await.unwrap();
    for (data, fin, opcode) in [
        ("hel", false, Data::Text),
        ("lo ", false, Data::Continue),
        ("world", true, Data::Continue),
    ] {
        let frame = Frame::message(data, OpCode::Data(opcode), fin);
        ws.send(Message::Frame(frame)).await.unwrap();
    }
    ws.send(Message::Ping(vec![1].into())).await.unwrap();
    ws.send(Message::Ping(vec![2].into())).await.unwrap();
    ws.send(Message::binary(vec![7u8; 100])).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("2"));
    assert_eq!(next_data(&mut ws).await, Message::text("hello world"));
    assert_eq!(next_data(&mut ws).await, Message::binary(vec![7u8; 100]));
    let during = scrape(admin).await;
    let up = "wssbridge_websocket_messages_total{route=\"/\",direction=\"client_to_backend\"}";
    assert_eq!(sample(&during, up), 3.0, "counted as they go");
    let close = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    ws.close(Some(close)).await.unwrap();
    drain_to_end(ws).await;

    let line = line(&running).await;
    // Up: 1 + 3 fragments + 2 pings + 1 + the close; down: 3 echoes, 2 pongs, the close.
    assert_fields(
        &line,
        &[
            ("ended_by", "client_close"),
            ("frames_up", "8"),
            ("messages_up", "3"),
            ("controls_up", "3"),
            ("frames_down", "6"),
            ("messages_down", "3"),
            ("controls_down", "3"),
            ("close_client", "1000"),
            ("close_client_reason", "0"),
            ("close_backend", "1000"),
            ("route", "/"),
        ],
    );
    assert_eq!(field(&line, "going_away"), None, "{line}");
    let after = scrape(admin).await;
    assert_eq!(closes(&after, "client", "1000"), 1.0, "{after}");
    let down = "wssbridge_websocket_messages_total{route=\"/\",direction=\"backend_to_client\"}";
    assert_eq!(sample(&after, down), 3.0);
    let sizes = "wssbridge_websocket_message_size_bytes";
    let labels = "route=\"/\",direction=\"client_to_backend\"";
    assert_eq!(sample(&after, &format!("{sizes}_sum{{{labels}}}")), 112.0);
    assert_eq!(sample(&after, &format!("{sizes}_count{{{labels}}}")), 3.0);
    assert_eq!(
        sample(&after, &format!("{sizes}_bucket{{{labels},le=\"64\"}}")),
        2.0
    );
    assert_eq!(
        sample(&after, &format!("{sizes}_bucket{{{labels},le=\"256\"}}")),
        3.0
    );
    let lasted = "wssbridge_websocket_duration_seconds_count{route=\"/\"}";
    assert_eq!(sample(&after, lasted), 1.0);
    assert_codes_bounded(&after);
    support::promtool_accepts(&after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_s_4001_with_a_reason_is_the_backend_s_other() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = listener.local_addr().unwrap().to_string();
    let (running, admin) = bridge(&to, &["--log-format", "json"]);
    let app = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        let hi = ws.next().await.unwrap().unwrap();
        assert_eq!(hi, Message::text("hi"));
        let close = CloseFrame {
            code: CloseCode::from(4001),
            reason: "bye".into(),
        };
        ws.close(Some(close)).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    });
    let mut ws = support::ws_connect(running.addr).await;
    ws.send(Message::text("hi")).await.unwrap();
    match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4001),
        other => panic!("expected the backend's close, got {other:?}"),
    }
    drain_to_end(ws).await;
    app.await.unwrap();

    let line = line(&running).await;
    assert!(line.starts_with('{'), "JSON: {line}");
    assert_fields(&line, &[("ended_by", "backend_close")]);
    for (key, value) in [
        ("close_backend", 4001),
        ("close_backend_reason", 3),
        ("close_client", 4001),
        ("messages_up", 1),
        ("frames_down", 1),
    ] {
        assert!(
            line.contains(&format!("\"{key}\":{value}")),
            "{key} in {line}"
        );
    }
    let after = scrape(admin).await;
    assert_eq!(closes(&after, "backend", "other"), 1.0, "{after}");
    assert_eq!(closes(&after, "client", "other"), 0.0);
}

/// A WebSocket whose backend side is a raw stream the test holds.
async fn raw_pair(running: &Running, listener: &TcpListener) -> (Ws, TcpStream) {
    let (ws, app) = tokio::join!(
        support::ws_connect(running.addr),
        accept_websocket(listener)
    );
    (ws, app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_is_a_client_reset_with_no_code() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = listener.local_addr().unwrap().to_string();
    let (running, admin) = bridge(&to, &[]);
    let (mut ws, mut app) = raw_pair(&running, &listener).await;
    ws.send(Message::text("x")).await.unwrap();
    let mut frame = [0u8; 7];
    app.read_exact(&mut frame).await.unwrap();
    // The client's machine is gone: a reset, no close frame, no close_notify.
    let tcp = ws.get_ref().get_ref().0;
    socket2::SockRef::from(tcp)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(ws);

    let line = line(&running).await;
    assert_fields(&line, &[("ended_by", "client_reset"), ("messages_up", "1")]);
    assert_eq!(field(&line, "close_client"), None, "{line}");
    assert_eq!(closes(&scrape(admin).await, "client", "none"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_dies_is_the_backend_s_fin_or_reset() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = listener.local_addr().unwrap().to_string();
    let (running, admin) = bridge(&to, &[]);
    for (reset, word) in [(false, "backend_fin"), (true, "backend_reset")] {
        let (mut ws, mut app) = raw_pair(&running, &listener).await;
        app.write_all(&[0x81, 0x02, b'o', b'k']).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text("ok"));
        if reset {
            // Unread bytes at close make the kernel send a reset, as a process killed
            // mid-read does.
            ws.send(Message::text("unread")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            socket2::SockRef::from(&app)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
        drop(app);
        drain_to_end(ws).await;
        let line = running.wait_for_line(&["ended_by", word]).await;
        assert_fields(&line, &[("messages_down", "1")]);
    }
    assert_eq!(closes(&scrape(admin).await, "backend", "none"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_timeout_is_the_proxy_s() {
    let backend = support::Backend::ws_echo().await;
    let (running, admin) = bridge(&backend.address(), &["--idle-timeout", "1s"]);
    let mut ws = support::ws_connect(running.addr).await;
    support::echo(&mut ws, "once").await;
    drain_to_end(ws).await;
    let line = line(&running).await;
    assert_fields(
        &line,
        &[
            ("ended_by", "idle_timeout"),
            ("messages_up", "1"),
            ("messages_down", "1"),
        ],
    );
    assert_eq!(closes(&scrape(admin).await, "proxy", "none"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_framing_are_counted_as_such_and_pass_unchanged() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to = listener.local_addr().unwrap().to_string();
    let (running, admin) = bridge(&to, &[]);
    // A raw TLS client: after the 101, it and the backend speak anything but WebSocket.
    let mut client = support::tls_connect(running.addr).await;
    client
        .write_all(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
    let mut app = accept_websocket(&listener).await;
    support::read_head(&mut client).await.expect("the 101");
    let junk = b"HTTP/1.1 200 OK\r\n\r\nnot a frame";
    app.write_all(junk).await.unwrap();
    let mut got = vec![0u8; junk.len()];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, junk, "unchanged");
    client.write_all(b"plain text up").await.unwrap();
    let mut up = vec![0u8; 13];
    app.read_exact(&mut up).await.unwrap();
    assert_eq!(&up, b"plain text up");
    // The client ends first: the backend sees its FIN, then closes too.
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    app.read_to_end(&mut rest).await.unwrap();
    drop(app);

    let line = line(&running).await;
    assert_fields(&line, &[("ended_by", "client_fin")]);
    assert!(line.contains("framing=\"not websocket\""), "{line}");
    assert_eq!(field(&line, "frames_down"), None, "no frame counts: {line}");
    let after = scrape(admin).await;
    assert_eq!(
        sample(&after, "wssbridge_websocket_unframed_total{route=\"/\"}"),
        1.0
    );
}

/// At a drain the proxy ends the tunnel, with our 1001 to the client: in-process, so the
/// route's counts can be read after the server stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_is_the_proxy_s_1001_and_says_it_was_sent() {
    let logs = support::logs();
    let backend = support::Backend::ws_echo().await;
    let mut tunnel = support::Tunnel::start(&[
        "--to",
        &backend.address(),
        "--websocket-close-on-drain",
        "--shutdown-grace",
        "10s",
    ])
    .await;
    let mut ws = support::ws_connect(tunnel.addr).await;
    support::echo(&mut ws, "before").await;
    tunnel.begin_shutdown();
    match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected 1001, got {other:?}"),
    }
    drain_to_end(ws).await;
    tunnel.finished().await;
    let line = logs.wait_for(&["ended_by"]).await;
    assert!(line.contains("going_away=\"sent\""), "{line}");
    let config = tunnel.server.config();
    let counts = &config.pools.get(0).websockets;
    let closes: Vec<(&str, &str, u64)> = counts
        .closes()
        .into_iter()
        .map(|(side, code, n)| (side.label(), code, n))
        .collect();
    assert_eq!(closes, vec![("proxy", "1001", 1)]);
}
