//! Request smuggling and route confinement, against real backends that misbehave on purpose;
//! each test is named after the attack or rule it covers.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{
    Backend, SWITCHING_PROTOCOLS, Tunnel, UPGRADE_REQUEST, WAIT, read_head, read_to_close,
    status_of, tls_connect,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A backend that records every byte it receives and answers each connection's first
/// request head with `answer`, then keeps the connection open, reading.
async fn answering(answer: &'static [u8]) -> (String, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut s).await else {
                    return;
                };
                record.lock().unwrap().extend_from_slice(&head);
                let _ = s.write_all(answer).await;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    record.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (addr, seen)
}

const ADMIN: &[u8] = b"GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Sends an upgrade request to a backend answering `answer`, then a request for /admin on the
/// same connection: /admin must never reach that backend.
async fn upgrade_then_admin(answer: &'static [u8]) -> (String, Vec<u8>) {
    let (ws_backend, seen) = answering(answer).await;
    let admin = Backend::http("admin").await;
    let tunnel = Tunnel::start(&[
        "--route",
        &format!("/ws={ws_backend}"),
        "--route",
        &format!("/admin={}", admin.address()),
    ])
    .await;
    let mut tls = tls_connect(tunnel.addr).await;
    tls.write_all(&[UPGRADE_REQUEST, ADMIN].concat())
        .await
        .unwrap();
    let reply = read_to_close(&mut tls).await;
    drop(tls);
    tunnel.assert_idle().await;
    let seen = seen.lock().unwrap().clone();
    assert!(
        admin.received.lock().unwrap().is_empty(),
        "admin reached on the tunnel"
    );
    (reply, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrade_never_becomes_a_tunnel() {
    let (reply, seen) = upgrade_then_admin(
        b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\nUpgrade: websocket\r\n\r\nnope",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 426 "), "{reply}");
    assert_eq!(
        seen, UPGRADE_REQUEST,
        "the backend saw bytes past the refused upgrade"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_answered_200_stays_http_and_confined() {
    let (reply, seen) = upgrade_then_admin(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert_eq!(seen, UPGRADE_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_without_websocket_upgrade_is_502_and_no_tunnel() {
    let (reply, seen) = upgrade_then_admin(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&reply), 502, "{reply}");
    assert_eq!(seen, UPGRADE_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_upgrade_wait_for_101() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap().to_string();
    let checked = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let head = read_head(&mut s).await.unwrap();
        // Nothing may follow the upgrade request before we answer it.
        let mut early = [0u8; 64];
        let before = tokio::time::timeout(Duration::from_millis(300), s.read(&mut early)).await;
        s.write_all(SWITCHING_PROTOCOLS).await.unwrap();
        let mut after = vec![0u8; 5];
        s.read_exact(&mut after).await.unwrap();
        (head, before.is_err(), after)
    });
    let tunnel = Tunnel::start(&["--to", &backend]).await;
    let mut tls = tls_connect(tunnel.addr).await;
    // The upgrade request and the first frame in one write, as optimistic clients send them.
    tls.write_all(&[UPGRADE_REQUEST, b"frame"].concat())
        .await
        .unwrap();
    let (head, nothing_early, after) = tokio::time::timeout(WAIT, checked).await.unwrap().unwrap();
    assert_eq!(head, UPGRADE_REQUEST);
    assert!(nothing_early, "bytes reached the backend before its 101");
    assert_eq!(after, b"frame", "the held bytes were lost");
    drop(tls);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_request_to_other_route_never_reaches_first_backend() {
    let site = Backend::http("site").await;
    let api = Backend::http("api").await;
    let tunnel = Tunnel::start(&[
        "--route",
        &format!("/={}", site.address()),
        "--route",
        &format!("/api/={}", api.address()),
    ])
    .await;
    let mut tls = tls_connect(tunnel.addr).await;
    let first = b"GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let same = b"GET /style.css HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let other = b"GET /api/private HTTP/1.1\r\nHost: localhost\r\n\r\n";
    tls.write_all(&[&first[..], same, other].concat())
        .await
        .unwrap();
    let reply = read_to_close(&mut tls).await;
    // Both same-route requests answered, then the connection closed before the other one.
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 2, "{reply}");
    assert_eq!(
        site.received.lock().unwrap()[0],
        [&first[..], same].concat()
    );
    assert!(api.received.lock().unwrap().is_empty());
    // On a fresh connection it goes where it routes.
    let fresh = tunnel
        .exchange(b"GET /api/private HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(fresh.ends_with("api"), "{fresh}");
    drop(tls);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_on_one_route_are_all_answered_in_order() {
    let site = Backend::http("site").await;
    let tunnel = Tunnel::start(&["--to", &site.address()]).await;
    let mut tls = tls_connect(tunnel.addr).await;
    let body = b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n";
    let chunks = b"4\r\nwiki\r\n0\r\n\r\n";
    let last = b"GET /b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    tls.write_all(&[&body[..], chunks, last].concat())
        .await
        .unwrap();
    let reply = read_to_close(&mut tls).await;
    assert_eq!(reply.matches("HTTP/1.1 200 OK").count(), 2, "{reply}");
    drop(tls);
    tunnel.assert_idle().await;
}

/// The request is refused with `status` and nothing reaches the backend.
async fn refused(request: &[u8], status: u16, flags: &[&str]) {
    let backend = Backend::http("never").await;
    let mut all = vec!["--to", backend.address().leak() as &str];
    all.extend_from_slice(flags);
    let tunnel = Tunnel::start(&all).await;
    let reply = tunnel.exchange(request).await;
    assert_eq!(status_of(&reply), status, "{reply}");
    assert!(reply.contains("Connection: close"));
    assert!(
        backend.received.lock().unwrap().is_empty(),
        "reached the backend"
    );
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_refused() {
    let h2c = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n\
        Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    refused(h2c, 400, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_upgrade_token_is_passed_on() {
    let backend = Backend::http("h2c-ok").await;
    let tunnel = Tunnel::start(&["--to", &backend.address(), "--allow-upgrade", "h2c"]).await;
    let reply = tunnel
        .exchange(b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: h2c\r\nConnection: close, Upgrade\r\n\r\n")
        .await;
    assert_eq!(status_of(&reply), 200, "{reply}");
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_on_a_post_refused() {
    refused(b"POST /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n", 400, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_and_cl_rejected() {
    refused(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_content_lengths_rejected() {
    refused(b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_other_than_chunked_rejected() {
    refused(
        b"POST / HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        400,
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obs_fold_rejected() {
    refused(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n  b\r\n\r\n",
        400,
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_host_rejected() {
    refused(b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n", 400, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_host_rejected() {
    refused(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n",
        400,
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_rejected() {
    refused(b"GET / HTTP/1.1\nHost: localhost\n\n", 400, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_target_rejected() {
    refused(b"GET /a\x00b HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_character_in_header_value_rejected() {
    refused(
        b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Bad: a\x01b\r\n\r\n",
        400,
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asterisk_target_rejected_and_connect_is_405() {
    refused(b"OPTIONS * HTTP/1.1\r\nHost: localhost\r\n\r\n", 400, &[]).await;
    refused(
        b"CONNECT localhost:443 HTTP/1.1\r\nHost: localhost:443\r\n\r\n",
        405,
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_fronting_is_421_unless_allowed() {
    let public = Backend::http("public").await;
    let internal = Backend::http("internal").await;
    let routes = [
        "--route".to_string(),
        format!("/={}", public.address()),
        "--route".to_string(),
        format!("internal.example/={}", internal.address()),
    ];
    let args: Vec<&str> = routes.iter().map(String::as_str).collect();
    // SNI is localhost; the Host asks for another host-routed name.
    let fronted = b"GET / HTTP/1.1\r\nHost: internal.example\r\nConnection: close\r\n\r\n";
    let tunnel = Tunnel::start(&args).await;
    assert_eq!(status_of(&tunnel.exchange(fronted).await), 421);
    // A Host no host route claims is routed as usual (hostless route).
    let reply = tunnel
        .exchange(b"GET / HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n")
        .await;
    assert!(reply.ends_with("public"), "{reply}");
    tunnel.assert_idle().await;
    let mut allowed = args.clone();
    allowed.push("--allow-sni-mismatch");
    let tunnel = Tunnel::start(&allowed).await;
    assert!(tunnel.exchange(fronted).await.ends_with("internal"));
    assert!(internal.received.lock().unwrap().len() == 1);
    tunnel.assert_idle().await;
}
