//! Request framing against the real binary: each test sends what a smuggling or
//! slot-pinning probe sends, and checks the raw bytes each backend received.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::binary::Running;
use support::{Backend, WAIT, read_head, read_to_close, status_of, tls_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A minimal backend of the shape that desyncs: it answers each request at the end of its
/// head (`426` to an upgrade, `200` otherwise, keep-alive), then reads and discards the body
/// its Content-Length declares, and takes what follows as the next request. Records every
/// request line it parsed.
async fn answers_at_the_head() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let record = lines.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                while let Some(head) = read_head(&mut s).await {
                    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let line = text.lines().next().unwrap_or_default().to_string();
                    record.lock().unwrap().push(line);
                    let answer: &[u8] = match text.contains("upgrade: websocket") {
                        true => b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n",
                        false => b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA",
                    };
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; length];
                    if s.read_exact(&mut body).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, lines)
}

const UPGRADE_HEAD: &str = "GET /a HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
    Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n";

/// The issue's desync: an upgrade request declaring a body that holds request B, whose own
/// body holds a request for a route the first backend must never see.
fn smuggling_payload(framing: &str) -> Vec<u8> {
    let secret = "GET /admin/secret HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 6.6.6.6\r\n\
        X-Real-IP: 6.6.6.6\r\n\r\n";
    let b = format!(
        "POST /b HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
        secret.len()
    );
    let framing = framing.replace("{len}", &b.len().to_string());
    format!("{UPGRADE_HEAD}{framing}\r\n\r\n{b}{secret}").into_bytes()
}

fn start(args: &[&str]) -> Running {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    Running::with_test_cert(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_request_with_a_body_smuggles_nothing() {
    let (a, seen_a) = answers_at_the_head().await;
    let admin = Backend::http("admin").await;
    let running = start(&[
        "--add-forwarded",
        "--route",
        &format!("/={a}"),
        "--route",
        &format!("/admin/={}", admin.address()),
    ]);
    for framing in ["Content-Length: {len}", "Transfer-Encoding: chunked"] {
        // As the connection's first request, and as a later one on a keep-alive connection.
        for first in ["", "GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n"] {
            let mut tls = tls_connect(running.addr).await;
            let payload = [first.as_bytes(), &smuggling_payload(framing)].concat();
            tls.write_all(&payload).await.unwrap();
            let reply = read_to_close(&mut tls).await;
            let last = reply.rfind("HTTP/1.1 ").unwrap();
            assert_eq!(status_of(&reply[last..]), 400, "{framing}: {reply}");
        }
    }
    let seen = seen_a.lock().unwrap().clone();
    assert!(seen.iter().all(|l| l == "get /x http/1.1"), "{seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(admin.received.lock().unwrap().is_empty());
}

/// A backend that reads what it is sent and never answers (no request timeout of its own).
async fn never_answers() -> Backend {
    Backend::silent().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_frees_both_connections_at_once() {
    let backend = never_answers().await;
    let running = start(&[
        "--max-connections",
        "4",
        "--route",
        &format!("/={}", backend.address()),
    ]);
    let head = "POST /up HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n";
    let started = Instant::now();
    // More bad bodies than slots, one after another: each must free its slot.
    for bad in [
        "0x5\r\nhello\r\n",
        " 5\r\n",
        "10000000000000005\r\n",
        "5\nhello",
    ]
    .repeat(2)
    {
        let mut tls = tls_connect(running.addr).await;
        tls.write_all(format!("{head}{bad}").as_bytes())
            .await
            .unwrap();
        let reply = read_to_close(&mut tls).await;
        assert_eq!(status_of(&reply), 400, "{bad:?}: {reply}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // A new client is served, not refused with 503.
    let mut tls = tls_connect(running.addr).await;
    tls.write_all(format!("{head}5\r\nhello\r\n0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_millis(500), tls.read(&mut first)).await;
    assert!(
        r.is_err(),
        "a well-framed request waits for its answer: {r:?}"
    );
    running
        .wait_for_line(&["outcome=http closed after answering 400"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_fin_in_the_middle_of_a_body_reaches_the_backend() {
    let backend = Backend::recording().await;
    let running = start(&["--route", &format!("/={}", backend.address())]);
    let head = b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n0123456789";
    let mut tls = tls_connect(running.addr).await;
    tls.write_all(head).await.unwrap();
    tls.shutdown().await.unwrap();
    let reply = read_to_close(&mut tls).await;
    assert!(
        reply.ends_with(&format!("received {}", head.len())),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_head_trickled_is_cut_at_the_header_timeout() {
    let backend = Backend::http("first").await;
    let running = start(&[
        "--header-timeout",
        "1s",
        "--route",
        &format!("/={}", backend.address()),
    ]);
    let mut tls = tls_connect(running.addr).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(buf[..n].ends_with(b"first"));
    let started = Instant::now();
    let trickle = async {
        for b in b"GET / HTTP/1.1\r\nHost: localhost\r\n" {
            if tls.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut peek = [0u8; 256];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), tls.read(&mut peek)).await
            {
                return String::from_utf8_lossy(&peek[..n]).into_owned();
            }
        }
        read_to_close(&mut tls).await
    };
    let reply = tokio::time::timeout(WAIT, trickle)
        .await
        .expect("cut in time");
    let took = started.elapsed();
    assert_eq!(status_of(&reply), 408, "{reply}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_but_an_idle_websocket_is_not() {
    let http = Backend::http("one").await;
    let ws = Backend::ws_echo().await;
    let running = start(&[
        "--keepalive-timeout",
        "1s",
        "--route",
        &format!("/={}", ws.address()),
        "--route",
        &format!("/plain={}", http.address()),
    ]);
    let mut socket = support::ws_connect(running.addr).await;
    let mut tls = tls_connect(running.addr).await;
    tls.write_all(b"GET /plain HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let reply = read_to_close(&mut tls).await;
    let took = started.elapsed();
    assert!(
        reply.ends_with("one") && status_of(&reply) == 200,
        "{reply}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    running
        .wait_for_line(&["outcome=http keepalive-timeout"])
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    support::echo(&mut socket, "still here").await;
}

/// Sends `request` with `--add-forwarded` and returns the head the backend received.
async fn forwarded_head(request: &str) -> String {
    let backend = Backend::http("app").await;
    let running = start(&[
        "--add-forwarded",
        "--route",
        &format!("/={}", backend.address()),
    ]);
    let reply = support::exchange(running.addr, request.as_bytes()).await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    let received = backend.received.lock().unwrap().concat();
    String::from_utf8(received).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscore_spellings_of_forwarding_headers_never_reach_the_app() {
    let head = forwarded_head(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX_Forwarded_For: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\n\
         x_forwarded_proto: http\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Port: 1\r\n\
         Connection: close\r\n\r\n",
    )
    .await;
    assert!(!head.contains("6.6.6.6"), "{head}");
    assert!(!head.contains("evil.example") && !head.contains("X-Forwarded-Port"));
    assert!(
        !head.to_ascii_lowercase().contains("proto: http\r"),
        "{head}"
    );
    assert_eq!(head.matches("X-Forwarded-For: 127.0.0.1\r\n").count(), 1);
    assert_eq!(head.matches("X-Real-IP: 127.0.0.1\r\n").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_forms_a_backend_may_read_otherwise_are_refused() {
    let backend = Backend::http("app").await;
    let running = start(&["--route", &format!("/={}", backend.address())]);
    for length in [
        "Content-Length: +5",
        "Content-Length: 5, 5",
        "Content-Length: 5\r\nContent-Length: 5",
    ] {
        for first in ["", "GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n"] {
            let request =
                format!("{first}POST /x HTTP/1.1\r\nHost: localhost\r\n{length}\r\n\r\nhello");
            let reply = support::exchange(running.addr, request.as_bytes()).await;
            let last = reply.rfind("HTTP/1.1 ").unwrap();
            assert_eq!(status_of(&reply[last..]), 400, "{length}: {reply}");
        }
    }
    let received = String::from_utf8(backend.received.lock().unwrap().concat()).unwrap();
    assert!(!received.contains("POST"), "{received}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_target_and_a_host_that_differ_are_refused() {
    let a = Backend::http("a").await;
    let b = Backend::http("b").await;
    let running = start(&[
        "--allow-sni-mismatch",
        "--route",
        &format!("a.localhost/={}", a.address()),
        "--route",
        &format!("b.localhost/={}", b.address()),
    ]);
    let request =
        b"GET http://a.localhost/x HTTP/1.1\r\nHost: b.localhost\r\nConnection: close\r\n\r\n";
    let reply = support::exchange(running.addr, request).await;
    assert_eq!(status_of(&reply), 400, "{reply}");
    let same =
        b"GET http://a.localhost/x HTTP/1.1\r\nHost: A.localhost\r\nConnection: close\r\n\r\n";
    let reply = support::exchange(running.addr, same).await;
    assert!(status_of(&reply) == 200 && reply.ends_with('a'), "{reply}");
    assert!(b.received.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_picks_the_cipher_suite_from_its_own_order() {
    use rustls::crypto::aws_lc_rs as provider;
    let backend = Backend::http("app").await;
    let running = start(&["--route", &format!("/={}", backend.address())]);
    // A client that prefers ChaCha20 and also offers AES-128-GCM.
    let mut suites = provider::default_provider();
    suites.cipher_suites = vec![
        provider::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        provider::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(suites))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(support::roots())
        .with_no_client_auth();
    let tls = support::tls_connect_with(running.addr, Arc::new(config))
        .await
        .unwrap();
    let suite = tls.get_ref().1.negotiated_cipher_suite().unwrap().suite();
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
}
