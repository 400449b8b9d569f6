//! The data path: every byte through, in order, both ways; half-closes passed on; tunnels
//! bounded by their timeouts. Real TLS, real WebSocket client and server, real sockets.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{
    Backend, RawTls, Tunnel, UPGRADE_REQUEST, WAIT, accept_upgrade, pattern, read_head,
    read_to_close, tls_connect,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

fn big_messages() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

async fn ws_client(
    tunnel: &Tunnel,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tls = tls_connect(tunnel.addr).await;
    let url = format!("wss://localhost:{}{path}", tunnel.addr.port());
    let (ws, response) =
        tokio_tungstenite::client_async_with_config(url, tls, Some(big_messages()))
            .await
            .expect("WebSocket handshake through the tunnel");
    assert_eq!(response.status(), 101);
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_echo_text_and_16mib_binary() {
    let backend = Backend::ws_echo().await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    let mut ws = ws_client(&tunnel, "/chat").await;

    ws.send(Message::text("hello through wssbridge"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("hello through wssbridge"));

    let blob = pattern(16, 16 << 20);
    ws.send(Message::binary(blob.clone())).await.unwrap();
    let echoed = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Binary(data) = echoed else {
        panic!("expected binary, got {echoed:?}")
    };
    assert_eq!(data.len(), blob.len());
    assert!(data[..] == blob[..], "16 MiB message changed on the way");

    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_tunnel_carries_100mib_each_way_byte_exact() {
    echo_through_upgraded_tunnel(100 << 20, Duration::ZERO).await;
}

/// The client writes while not reading for a while: every buffer on the way fills, so
/// wssbridge's writes to both peers stall with bytes in hand (the backend stops reading
/// because its echoes cannot go out). Those bytes must wait and arrive, none lost or
/// reordered, once the client reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_pauses_stalls_both_directions_and_loses_nothing() {
    echo_through_upgraded_tunnel(96 << 20, Duration::from_millis(700)).await;
}

/// Streams `total` bytes in 1 MiB writes through an echoing upgraded tunnel, starting to
/// read the echo after `pause`, and checks every byte came back in order.
async fn echo_through_upgraded_tunnel(total: usize, pause: Duration) {
    const CHUNK: usize = 1 << 20;
    let backend = Backend::upgrade_echo().await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    let mut tls = tls_connect(tunnel.addr).await;
    tls.write_all(UPGRADE_REQUEST).await.unwrap();
    let head = read_head(&mut tls).await.expect("101 head");
    assert!(head.starts_with(b"HTTP/1.1 101"));

    let (mut rd, mut wr) = tokio::io::split(tls);
    let writer = tokio::spawn(async move {
        for i in 0..total / CHUNK {
            wr.write_all(&pattern(i as u64 + 1, CHUNK)).await.unwrap();
        }
        wr.shutdown().await.unwrap();
        wr
    });
    tokio::time::sleep(pause).await;
    if !pause.is_zero() {
        assert!(
            !writer.is_finished(),
            "the writer should be held up by the full buffers"
        );
    }
    let mut got = vec![0u8; CHUNK];
    for i in 0..total / CHUNK {
        tokio::time::timeout(WAIT, rd.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert!(got == pattern(i as u64 + 1, CHUNK), "chunk {i} differs");
    }
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, rd.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty(), "{} bytes too many came back", rest.len());
    drop(writer.await.unwrap());
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_bytes_in_the_same_record_as_the_head_reach_the_backend() {
    let backend = Backend::recording().await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    let request =
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\n\r\nhello world"
            .to_vec();
    let mut tls = tls_connect(tunnel.addr).await;
    // One write of less than a record: head and body travel in the same TLS record.
    tls.write_all(&request).await.unwrap();
    tls.shutdown().await.unwrap();
    let reply = read_to_close(&mut tls).await;
    assert!(
        reply.ends_with(&format!("\r\n\r\nreceived {}", request.len())),
        "{reply}"
    );
    assert_eq!(backend.received.lock().unwrap()[0], request);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_half_close_keeps_return_traffic() {
    let backend = Backend::recording().await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    let mut tls = tls_connect(tunnel.addr).await;
    let body = pattern(7, 1 << 20);
    tls.write_all(b"PUT /blob HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1048576\r\n\r\n")
        .await
        .unwrap();
    tls.write_all(&body).await.unwrap();
    // close_notify + FIN: the backend sees FIN, and only then answers.
    tls.shutdown().await.unwrap();
    let reply = read_to_close(&mut tls).await;
    let sent = backend.received.lock().unwrap()[0].clone();
    assert!(
        reply.ends_with(&format!("\r\n\r\nreceived {}", sent.len())),
        "{reply}"
    );
    assert!(sent.ends_with(&body));
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_close_without_close_notify_still_gets_the_whole_reply() {
    const REPLY: usize = 200_000;
    // A backend that answers only after the client's FIN.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap().to_string();
    let backend = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut sink = Vec::new();
        s.read_to_end(&mut sink).await.unwrap();
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {REPLY}\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&pattern(3, REPLY)).await.unwrap();
        s.shutdown().await.unwrap();
        sink.len()
    });
    let tunnel = Tunnel::start(&["--to", &backend_addr]).await;
    let mut tls = tls_connect(tunnel.addr).await;
    tls.write_all(b"GET /report HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    // FIN on the TCP socket without a TLS close_notify, as many clients do.
    tls.get_mut().0.shutdown().await.unwrap();
    let mut reply = Vec::new();
    let result = tokio::time::timeout(WAIT, tls.read_to_end(&mut reply))
        .await
        .unwrap();
    assert!(
        result.is_ok(),
        "reply ended with {result:?} after {} bytes",
        reply.len()
    );
    let body_start = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(reply.len() - body_start, REPLY);
    assert!(reply[body_start..] == pattern(3, REPLY));
    assert!(backend.await.unwrap() > 0);
    tunnel.assert_idle().await;
}

/// A bulk upload that ends with a TCP FIN and no close_notify: everything sent before the
/// FIN reaches the backend, then the backend sees the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_upload_ended_without_close_notify_arrives_whole() {
    const UPLOAD: usize = 3 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap().to_string();
    let backend = tokio::spawn(async move {
        let mut s = accept_upgrade(&listener).await;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    });
    let tunnel = Tunnel::start(&["--to", &backend_addr]).await;
    let mut tls = tls_connect(tunnel.addr).await;
    tls.write_all(UPGRADE_REQUEST).await.unwrap();
    read_head(&mut tls).await.expect("101 head");
    tls.write_all(&pattern(9, UPLOAD)).await.unwrap();
    tls.flush().await.unwrap();
    tls.get_mut().0.shutdown().await.unwrap();
    let got = tokio::time::timeout(WAIT, backend).await.unwrap().unwrap();
    assert_eq!(got.len(), UPLOAD);
    assert!(got == pattern(9, UPLOAD));
    drop(tls);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_half_close_reaches_client_and_client_can_still_send() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap().to_string();
    let backend = tokio::spawn(async move {
        let mut s = accept_upgrade(&listener).await;
        s.write_all(b"early reply").await.unwrap();
        s.shutdown().await.unwrap(); // FIN to the tunnel; keep reading
        let mut after = Vec::new();
        s.read_to_end(&mut after).await.unwrap();
        after
    });
    let tunnel = Tunnel::start(&["--to", &backend_addr]).await;
    let mut tls = tls_connect(tunnel.addr).await;
    tls.write_all(UPGRADE_REQUEST).await.unwrap();
    assert!(
        read_head(&mut tls)
            .await
            .unwrap()
            .starts_with(b"HTTP/1.1 101")
    );
    let reply = read_to_close(&mut tls).await;
    assert_eq!(reply, "early reply");
    tls.write_all(b"sent after the backend's FIN")
        .await
        .unwrap();
    tls.shutdown().await.unwrap();
    let after = tokio::time::timeout(WAIT, backend).await.unwrap().unwrap();
    assert_eq!(after, b"sent after the backend's FIN");
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_timeout_ends_a_half_closed_tunnel() {
    let backend = Backend::silent().await;
    let tunnel = Tunnel::start(&["--to", &backend.address(), "--close-timeout", "300ms"]).await;
    let mut tls = tls_connect(tunnel.addr).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tls.shutdown().await.unwrap();
    // The backend never answers nor closes: the tunnel must end by itself.
    read_to_close(&mut tls).await;
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_silent_tunnel_when_set() {
    let backend = Backend::ws_echo().await;
    let tunnel = Tunnel::start(&["--to", &backend.address(), "--idle-timeout", "300ms"]).await;
    let mut ws = ws_client(&tunnel, "/").await;
    ws.send(Message::text("ping")).await.unwrap();
    assert!(ws.next().await.unwrap().is_ok());
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(_)) => continue,
                other => return other.map(|r| r.is_err()),
            }
        }
    })
    .await
    .expect("idle tunnel was not closed");
    assert!(end.is_none() || end == Some(true));
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_websockets_exchange_messages() {
    const CLIENTS: usize = 1000;
    const MESSAGES: usize = 3;
    let backend = Backend::ws_echo().await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    let opened = std::sync::Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..CLIENTS {
        let addr = tunnel.addr;
        let opened = opened.clone();
        clients.spawn(async move {
            let tls = support::tls_connect(addr).await;
            let url = format!("wss://localhost:{}/c/{id}", addr.port());
            let (mut ws, _) = tokio_tungstenite::client_async(url, tls)
                .await
                .expect("handshake");
            // All connections are open at once before any message is exchanged.
            opened.wait().await;
            for m in 0..MESSAGES {
                let text = format!("client {id} message {m}");
                ws.send(Message::text(text.clone())).await.unwrap();
                assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
            }
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = clients.join_next().await {
            r.expect("client task");
        }
    })
    .await;
    assert!(
        all.is_ok(),
        "1,000 WebSocket clients did not finish in time"
    );
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_early_answer_reaches_the_client_while_it_uploads() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_head(&mut s).await.unwrap();
        s.write_all(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        // Close with the upload unread: the kernel resets the connection.
    });
    let tunnel = Tunnel::start(&["--to", &backend_addr]).await;
    let tls = tls_connect(tunnel.addr).await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let upload = tokio::spawn(async move {
        let _ = wr
            .write_all(
                b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 104857600\r\n\r\n",
            )
            .await;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..1600 {
            if wr.write_all(&chunk).await.is_err() {
                break;
            }
        }
        wr
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, rd.read_to_end(&mut answer))
        .await
        .expect("answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413 "), "got {answer:?}");
    drop(upload.await.unwrap());
    drop(rd);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_tunnel_goes_on_while_data_flows() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_head(&mut s).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        // Ten pieces 100 ms apart: the whole answer takes longer than --close-timeout,
        // but the tunnel is never silent for that long.
        for i in 0..10u8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.write_all(&[b'0' + i]).await.unwrap();
        }
        s.shutdown().await.unwrap();
    });
    let tunnel = Tunnel::start(&["--to", &backend_addr, "--close-timeout", "400ms"]).await;
    let mut tls = tls_connect(tunnel.addr).await;
    tls.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    tls.shutdown().await.unwrap();
    let reply = read_to_close(&mut tls).await;
    assert!(reply.ends_with("\r\n\r\n0123456789"), "{reply}");
    drop(tls);
    tunnel.assert_idle().await;
}

/// A backend's answer and the close behind it leave in one write: the client reads the
/// answer and the close_notify from the same segment. Written apart, a short request costs
/// the client one more wake-up and read, for nothing.
#[cfg(target_os = "linux")] // TCP_CORK
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backends_answer_and_its_close_reach_the_client_in_one_write() {
    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\npong";
    // A backend whose answer and FIN travel in one segment: TCP_CORK holds the answer until
    // the shutdown tacks the FIN on, so wssbridge sees both in one wake-up.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap().to_string();
    let backend = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_head(&mut s).await.expect("request head");
        socket2::SockRef::from(&s).set_tcp_cork(true).unwrap();
        s.write_all(ANSWER).await.unwrap();
        s.shutdown().await.unwrap();
    });
    let tunnel = Tunnel::start(&["--to", &backend_addr]).await;
    let addr = tunnel.addr;
    let closed_with_answer = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let request = b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let mut client = RawTls::connect(addr, support::client_config(), b"");
        client.send(request);
        loop {
            let state = client.read_once();
            if state.plaintext_bytes_to_read() > 0 {
                let mut answer = vec![0u8; state.plaintext_bytes_to_read()];
                client.tls.reader().read_exact(&mut answer).unwrap();
                assert_eq!(answer, ANSWER);
                return state.peer_has_closed();
            }
        }
    })
    .await
    .unwrap();
    assert!(
        closed_with_answer,
        "the close_notify came in a later read than the answer"
    );
    backend.await.unwrap();
    tunnel.assert_idle().await;
}
