//! The client's address for the app (`--add-forwarded`), PROXY protocol out to real
//! consumers (HAProxy, nginx) and in from a real sender (HAProxy in front), and the admin
//! endpoint (/metrics read by Prometheus's own `promtool`, /livez, /readyz).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::peers::{Peer, free_port};
use support::{Backend, Tunnel, WAIT, echo, read_head, tls_connect_from, ws_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wssbridge::proxy_protocol::{self, Header};

const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 7));

/// Reads one response (head and Content-Length body) from `stream`.
async fn response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let head = tokio::time::timeout(WAIT, read_head(stream))
        .await
        .expect("response in time")
        .expect("response head");
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    head + &String::from_utf8_lossy(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_forwarded_request_names_the_client_and_spoofs_are_removed() {
    let app = Backend::http("app").await;
    let tunnel = Tunnel::start(&["--to", &app.address(), "--add-forwarded"]).await;
    let mut tls = tls_connect_from(CLIENT, tunnel.addr).await;
    let requests: [&[u8]; 3] = [
        b"GET /one HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 6.6.6.6\r\nX-Custom: a\r\n\r\n",
        b"GET /two HTTP/1.1\r\nHost: localhost\r\nforwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\r\n",
        b"POST /three HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nX-Forwarded-Proto: http\r\n\r\nhi",
    ];
    for request in requests {
        tls.write_all(request).await.unwrap();
        assert!(response(&mut tls).await.ends_with("app"));
    }
    drop(tls);
    let ours = "X-Forwarded-For: 127.0.0.7\r\nX-Forwarded-Proto: https\r\nX-Real-IP: 127.0.0.7\r\n\
                Forwarded: for=127.0.0.7;proto=https\r\n\r\n";
    let expected = format!(
        "GET /one HTTP/1.1\r\nHost: localhost\r\nX-Custom: a\r\n{ours}\
         GET /two HTTP/1.1\r\nHost: localhost\r\n{ours}\
         POST /three HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n{ours}"
    );
    // The backend records heads only (it reads bodies apart).
    let seen = String::from_utf8(app.received.lock().unwrap()[0].clone()).unwrap();
    assert_eq!(seen, expected);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_request_names_the_client_and_a_trusted_proxy_chain_is_extended() {
    let app = Backend::upgrade_echo().await;
    let tunnel = Tunnel::start(&[
        "--to",
        &app.address(),
        "--add-forwarded",
        "--trust-forwarded",
        "127.0.0.0/29",
    ])
    .await;
    let upgrade =
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Forwarded-For: 203.0.113.9\r\n\
        Forwarded: for=203.0.113.9;proto=https\r\nSec-WebSocket-Version: 13\r\n\r\n";
    for (from, xff, fwd) in [
        // Trusted (in 127.0.0.0/29): the chain it sent is kept and extended.
        (
            CLIENT,
            "203.0.113.9, 127.0.0.7",
            "for=203.0.113.9;proto=https, for=127.0.0.7;proto=https",
        ),
        // Not trusted: what it sent is dropped.
        (
            IpAddr::from([127, 0, 0, 9]),
            "127.0.0.9",
            "for=127.0.0.9;proto=https",
        ),
    ] {
        let mut tls = tls_connect_from(from, tunnel.addr).await;
        tls.write_all(upgrade).await.unwrap();
        let switched = read_head(&mut tls).await.expect("101");
        assert!(switched.starts_with(b"HTTP/1.1 101"));
        tls.write_all(b"frame").await.unwrap();
        let mut echoed = [0u8; 5];
        tls.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"frame", "a blind tunnel: bytes as sent");
        drop(tls);
        let expected = format!(
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             X-Forwarded-For: {xff}\r\nX-Forwarded-Proto: https\r\nX-Real-IP: {from}\r\n\
             Forwarded: {fwd}\r\n\r\n"
        );
        let seen = app.received.lock().unwrap().last().cloned().unwrap();
        assert_eq!(String::from_utf8(seen).unwrap(), expected);
    }
    tunnel.assert_idle().await;
}

/// HAProxy as a backend that takes PROXY headers and answers with what it read from them.
fn haproxy_reporting(port: u16) -> Peer {
    Peer::haproxy(
        "report",
        &format!(
            "frontend report\n    mode http\n    bind 127.0.0.1:{port} accept-proxy\n    \
             http-request return status 200 content-type text/plain \
             lf-string \"src=%[src] authority=%[fc_pp_authority]\"\n"
        ),
        port,
    )
}

async fn ask(tunnel: &Tunnel, path: &str) -> String {
    let mut tls = tls_connect_from(CLIENT, tunnel.addr).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    support::read_to_close(&mut tls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_out_are_read_by_haproxy_and_nginx() {
    support::require(&[("haproxy", "haproxy"), ("nginx", "nginx-light")]);
    let port = free_port();
    let _haproxy = haproxy_reporting(port);
    let nginx_port = free_port();
    let _nginx = Peer::nginx(
        "report",
        &format!(
            "server {{ listen 127.0.0.1:{nginx_port} proxy_protocol; \
             location / {{ return 200 \"src=$proxy_protocol_addr:$proxy_protocol_port\"; }} }}"
        ),
        nginx_port,
    );
    let haproxy = format!("127.0.0.1:{port}");
    let nginx = format!("127.0.0.1:{nginx_port}");
    let tunnel = Tunnel::start(&[
        "--route",
        &format!("/v1/={haproxy}"),
        "--route",
        &format!("/v2/={haproxy}"),
        "--route",
        &format!("/nginx1/={nginx}"),
        "--route",
        &format!("/nginx2/={nginx}"),
        "--send-proxy",
        "/v1/=v1",
        "--send-proxy",
        "/v2/=v2",
        "--send-proxy",
        "/nginx1/=v1",
        "--send-proxy",
        "/nginx2/=v2",
    ])
    .await;
    let v2 = ask(&tunnel, "/v2/").await;
    assert!(v2.ends_with("src=127.0.0.7 authority=localhost"), "{v2}");
    let v1 = ask(&tunnel, "/v1/").await;
    assert!(v1.ends_with("src=127.0.0.7 authority="), "{v1}");
    for path in ["/nginx1/", "/nginx2/"] {
        let got = ask(&tunnel, path).await;
        assert!(got.contains("src=127.0.0.7:"), "{path}: {got}");
    }
    tunnel.assert_idle().await;
}

/// Both flags on one route: the backend gets the PROXY header, then the first head with the
/// forwarding headers, then the body, byte for byte in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_comes_before_the_rewritten_first_head() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap().to_string();
    let tunnel = Tunnel::start(&["--to", &backend, "--send-proxy", "v1", "--add-forwarded"]).await;
    let mut tls = tls_connect_from(CLIENT, tunnel.addr).await;
    let port = tls.get_ref().0.local_addr().unwrap().port();
    tls.write_all(
        b"POST /a HTTP/1.1\r\nHost: localhost\r\nX-Real-IP: 6.6.6.6\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await
    .unwrap();
    let (mut s, _) = listener.accept().await.unwrap();
    let expected = format!(
        "PROXY TCP4 127.0.0.7 127.0.0.1 {port} {}\r\n\
         POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\
         X-Forwarded-For: 127.0.0.7\r\nX-Forwarded-Proto: https\r\nX-Real-IP: 127.0.0.7\r\n\
         Forwarded: for=127.0.0.7;proto=https\r\n\r\nhi",
        tunnel.addr.port()
    );
    let mut got = vec![0u8; expected.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut got))
        .await
        .expect("in time")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&got), expected);
    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        .await
        .unwrap();
    assert!(response(&mut tls).await.ends_with("ok"));
    drop((tls, s));
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_header_carries_the_addresses_the_sni_and_the_tls_version() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let tunnel = Tunnel::start(&["--to", &backend.to_string(), "--send-proxy", "v2"]).await;
    let client = tokio::spawn(async move {
        let mut tls = tls_connect_from(CLIENT, tunnel.addr).await;
        let port = tls.get_ref().0.local_addr().unwrap().port();
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        (tunnel, tls, port)
    });
    let (mut s, _) = listener.accept().await.unwrap();
    let mut got = Vec::new();
    let (header, len) = loop {
        let mut chunk = [0u8; 1024];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
        if let Some(parsed) = proxy_protocol::parse(&got).unwrap() {
            break parsed;
        }
    };
    let (tunnel, tls, port) = client.await.unwrap();
    let Header::Proxied {
        source,
        destination,
        tlvs,
    } = header
    else {
        panic!("a proxied connection");
    };
    assert_eq!(source, SocketAddr::new(CLIENT, port));
    assert_eq!(destination, tunnel.addr);
    assert_eq!(
        proxy_protocol::find(&tlvs, proxy_protocol::AUTHORITY),
        Some(&b"localhost"[..])
    );
    let ssl = proxy_protocol::find(&tlvs, proxy_protocol::SSL).expect("PP2_TYPE_SSL");
    assert_eq!(ssl[0] & 0x01, 0x01, "PP2_CLIENT_SSL");
    assert_eq!(proxy_protocol::ssl_version(ssl).as_deref(), Some("TLSv1.3"));
    assert!(
        got[len..].starts_with(b"GET / HTTP/1.1\r\n"),
        "the request right after it"
    );
    drop((s, tls));
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_to_a_proxy_protocol_backend_send_a_local_header_first() {
    support::require(&[("haproxy", "haproxy")]);
    let logs = support::logs();
    let port = free_port();
    let _haproxy = haproxy_reporting(port);
    let backend = format!("127.0.0.1:{port}");
    // Without --send-proxy the same checks fail: HAProxy wants the header.
    let tunnel = Tunnel::start(&[
        "--route",
        &format!("/a/={backend}"),
        "--health-check",
        "/healthz",
        "--health-interval",
        "100ms",
        "--send-proxy",
        "v2",
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        logs.lines_with(&["backend down", &backend]).is_empty(),
        "checks pass with LOCAL"
    );
    tunnel.assert_idle().await;
    drop(tunnel);
    let tunnel = Tunnel::start(&[
        "--route",
        &format!("/a/={backend}"),
        "--health-check",
        "/healthz",
        "--health-interval",
        "100ms",
    ])
    .await;
    logs.wait_for(&["backend down", &backend]).await;
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_in_from_haproxy_give_the_real_client_everywhere() {
    support::require(&[("haproxy", "haproxy")]);
    let logs = support::logs();
    let app = Backend::http("app").await;
    let tunnel = Tunnel::start(&[
        "--to",
        &app.address(),
        "--add-forwarded",
        "--accept-proxy-from",
        "127.0.0.1",
        "--max-connections-per-ip",
        "1",
    ])
    .await;
    let front = free_port();
    let _haproxy = Peer::haproxy(
        "front",
        &format!(
            "frontend front\n    mode tcp\n    bind 127.0.0.1:{front}\n    default_backend bridge\n\
             backend bridge\n    mode tcp\n    server w {} send-proxy-v2\n",
            tunnel.addr
        ),
        front,
    );
    let front: SocketAddr = ([127, 0, 0, 1], front).into();
    let mut tls = tls_connect_from(CLIENT, front).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(response(&mut tls).await.ends_with("app"));
    let seen = String::from_utf8(app.received.lock().unwrap()[0].clone()).unwrap();
    assert!(
        seen.contains("\r\nX-Forwarded-For: 127.0.0.7\r\n"),
        "{seen}"
    );
    // --max-connections-per-ip counts 127.0.0.7, not HAProxy's 127.0.0.1: another client
    // through the same balancer gets in, a second one from 127.0.0.7 does not.
    let mut other = tls_connect_from(IpAddr::from([127, 0, 0, 8]), front).await;
    other
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(support::read_to_close(&mut other).await.ends_with("app"));
    drop(other);
    let second = tokio::time::timeout(Duration::from_secs(3), async {
        let tcp = tokio::net::TcpSocket::new_v4().unwrap();
        tcp.bind(SocketAddr::new(CLIENT, 0)).unwrap();
        let tcp = tcp.connect(front).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(support::client_config())
            .connect(name, tcp)
            .await
    })
    .await
    .expect("answered in time");
    assert!(
        second.is_err(),
        "the second connection of 127.0.0.7 is refused"
    );
    drop(tls);
    let line = logs
        .wait_for(&["connection peer=127.0.0.1:", "client=127.0.0.7:"])
        .await;
    assert!(line.contains("outcome=http closed"), "{line}");
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_are_refused_from_strangers_and_required_from_balancers() {
    let app = Backend::http("app").await;
    // 127.0.0.1 is not trusted here: a PROXY header from it is not a TLS handshake.
    let tunnel =
        Tunnel::start(&["--to", &app.address(), "--accept-proxy-from", "10.0.0.0/8"]).await;
    let mut forged = TcpStream::connect(tunnel.addr).await.unwrap();
    let origin = proxy_protocol::Origin {
        client: "1.2.3.4:5".parse().unwrap(),
        local: tunnel.addr,
        sni: None,
        tls_version: None,
        client_cert: false,
    };
    forged
        .write_all(&proxy_protocol::encode(
            proxy_protocol::Version::V1,
            &origin,
        ))
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(WAIT, forged.read_to_end(&mut reply))
        .await
        .expect("closed");
    assert!(!reply.starts_with(b"HTTP"), "refused, not served");
    tunnel.assert_idle().await;
    assert_eq!(app.received.lock().unwrap().len(), 0);

    // Trusted: a TLS handshake without the header first is refused...
    let tunnel =
        Tunnel::start(&["--to", &app.address(), "--accept-proxy-from", "127.0.0.0/8"]).await;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tcp = TcpStream::connect(tunnel.addr).await.unwrap();
    let bare = tokio_rustls::TlsConnector::from(support::client_config())
        .connect(name.clone(), tcp)
        .await;
    assert!(bare.is_err(), "no PROXY header from a balancer: closed");
    // ...a v2 LOCAL (the balancer's own check) is a plain connection...
    let mut tcp = TcpStream::connect(tunnel.addr).await.unwrap();
    tcp.write_all(&proxy_protocol::local(proxy_protocol::Version::V2))
        .await
        .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(support::client_config())
        .connect(name.clone(), tcp)
        .await
        .expect("LOCAL then TLS");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(support::read_to_close(&mut tls).await.ends_with("app"));
    drop(tls);
    // ...and a header cut in pieces, with the ClientHello right behind it, works.
    let mut tcp = TcpStream::connect(tunnel.addr).await.unwrap();
    let header = proxy_protocol::encode(proxy_protocol::Version::V2, &origin);
    for piece in header.chunks(5) {
        tcp.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut tls = tokio_rustls::TlsConnector::from(support::client_config())
        .connect(name, tcp)
        .await
        .expect("header in pieces then TLS");
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(support::read_to_close(&mut tls).await.ends_with("app"));
    drop(tls);
    tunnel.assert_idle().await;
}

/// GETs `path` from the admin listener: (status, body).
async fn admin(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = support::admin_get(addr, path).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_things_happen_and_promtool_reads_them() {
    support::require(&[("promtool", "prometheus")]);
    let ws = Backend::ws_echo().await;
    let dead = support::refusing_address().await;
    let tunnel = Tunnel::start(&[
        "--route",
        &format!("/={}", ws.address()),
        "--route",
        &format!("/dead/={dead}"),
        "--admin",
        "127.0.0.1:0",
    ])
    .await;
    let admin_addr = tunnel.admin_addr.unwrap();
    let (status, before) = admin(admin_addr, "/metrics").await;
    assert_eq!(status, 200);
    support::promtool_accepts(&before);
    assert_eq!(support::sample(&before, "wssbridge_websockets_active"), 0.0);
    assert_eq!(
        support::sample(&before, "wssbridge_build_info{version=\"0.1.0\"}"),
        1.0
    );

    // A WebSocket that stays open, moving bytes.
    let mut live = ws_connect(tunnel.addr).await;
    let message = "x".repeat(10_000);
    for _ in 0..10 {
        echo(&mut live, &message).await;
    }
    // An answer wssbridge gives itself, a failed handshake, a 502.
    assert_eq!(
        support::status_of(&tunnel.exchange(b"GET / HTTP/1.1\r\n\r\n").await),
        400
    );
    let mut garbage = TcpStream::connect(tunnel.addr).await.unwrap();
    garbage.write_all(b"not tls at all\r\n\r\n").await.unwrap();
    let _ = garbage.read_to_end(&mut Vec::new()).await;
    let answer = tunnel
        .exchange(b"GET /dead/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert_eq!(support::status_of(&answer), 502);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (_, during) = admin(admin_addr, "/metrics").await;
    support::promtool_accepts(&during);
    assert_eq!(support::sample(&during, "wssbridge_websockets_active"), 1.0);
    assert_eq!(
        support::sample(&during, "wssbridge_connections_active"),
        1.0
    );
    let up = support::sample(
        &during,
        "wssbridge_bytes_total{direction=\"client_to_backend\"}",
    );
    let down = support::sample(
        &during,
        "wssbridge_bytes_total{direction=\"backend_to_client\"}",
    );
    assert!(
        up >= 100_000.0 && down >= 100_000.0,
        "a live tunnel's bytes show: {up} {down}"
    );
    assert_eq!(
        support::sample(&during, "wssbridge_responses_total{status=\"400\"}"),
        1.0
    );
    assert_eq!(
        support::sample(&during, "wssbridge_responses_total{status=\"502\"}"),
        1.0
    );
    assert_eq!(
        support::sample(
            &during,
            "wssbridge_connections_total{outcome=\"http_error\"}"
        ),
        2.0
    );
    assert_eq!(
        support::sample(
            &during,
            "wssbridge_connections_total{outcome=\"tls_error\"}"
        ),
        1.0
    );
    assert_eq!(
        support::sample(&during, "wssbridge_tls_handshakes_total{result=\"failed\"}"),
        1.0
    );
    assert!(support::sample(&during, "wssbridge_tls_handshakes_total{result=\"ok\"}") >= 3.0);
    assert!(support::sample(&during, "wssbridge_tls_handshake_duration_seconds_count") >= 3.0);
    let ws_backend = format!("{{backend=\"{}\"}}", ws.address());
    assert_eq!(
        support::sample(
            &during,
            &format!("wssbridge_backend_connections_active{ws_backend}")
        ),
        1.0
    );
    let dead_backend = format!("{{backend=\"{dead}\"}}");
    assert_eq!(
        support::sample(
            &during,
            &format!("wssbridge_backend_connect_failures_total{dead_backend}")
        ),
        1.0
    );
    assert_eq!(
        support::sample(
            &during,
            &format!("wssbridge_backend_up{{route=\"/dead/\",backend=\"{dead}\"}}")
        ),
        0.0
    );
    assert_eq!(
        support::sample(
            &during,
            &format!(
                "wssbridge_backend_up{{route=\"/\",backend=\"{}\"}}",
                ws.address()
            )
        ),
        1.0
    );
    assert!(
        support::sample(
            &during,
            "wssbridge_certificate_expiry_timestamp_seconds{name=\"localhost\"}"
        ) > 1e9
    );
    assert!(support::sample(&during, "process_open_fds") > 5.0);
    assert!(support::sample(&during, "process_resident_memory_bytes") > 1e6);
    assert!(during.contains("\nprocess_cpu_seconds_total "));
    tunnel.server.reload_files().unwrap();
    live.close(None).await.unwrap();
    drop(live);
    tunnel.assert_idle().await;
    let (_, after) = admin(admin_addr, "/metrics").await;
    support::promtool_accepts(&after);
    assert_eq!(support::sample(&after, "wssbridge_websockets_active"), 0.0);
    assert_eq!(
        support::sample(&after, "wssbridge_connections_total{outcome=\"tunnel\"}"),
        1.0
    );
    assert_eq!(
        support::sample(&after, "wssbridge_config_reloads_total{result=\"success\"}"),
        1.0
    );
    // No label holds a path or a client address.
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        assert!(!line.contains("peer") && !line.contains("path="), "{line}");
    }
    assert_eq!(admin(admin_addr, "/nope").await.0, 404);
    assert_eq!(admin(admin_addr, "/livez").await.0, 200);
    assert_eq!(admin(admin_addr, "/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_whether_every_route_has_a_backend_up() {
    let app = Backend::http("app").await;
    let tunnel = Tunnel::start(&[
        "--route",
        &format!("/={}", app.address()),
        "--route",
        &format!("/gone/={}", support::refusing_address().await),
        "--admin",
        "127.0.0.1:0",
    ])
    .await;
    let admin_addr = tunnel.admin_addr.unwrap();
    assert_eq!(
        admin(admin_addr, "/readyz").await,
        (200, "ready\n".to_string())
    );
    // The refusing backend is marked down by a failed connect.
    tunnel
        .exchange(b"GET /gone/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let (status, body) = admin(admin_addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("no backend up for route /gone/"), "{body}");
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_503_at_sigterm_before_the_listeners_close_and_livez_stays_200() {
    let backend = Backend::ws_echo().await;
    let mut running = support::binary::Running::with_test_cert(&[
        "--listen",
        "127.0.0.1:0",
        "--to",
        &backend.address(),
        "--admin",
        "127.0.0.1:0",
        "--shutdown-delay",
        "1s",
        "--shutdown-grace",
        "20s",
    ]);
    let line = running.wait_for_line(&["admin:", "addr="]).await;
    let admin_addr: SocketAddr = support::binary::field(&line, "addr")
        .unwrap()
        .parse()
        .unwrap();
    // Ready once the listeners accept ("not ready: starting" until then).
    let deadline = std::time::Instant::now() + WAIT;
    while admin(admin_addr, "/readyz").await.0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut ws = ws_connect(running.addr).await;
    echo(&mut ws, "before").await;

    running.signal("TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    let (status, body) = loop {
        let got = admin(admin_addr, "/readyz").await;
        if got.0 == 503 || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!((status, body.as_str()), (503, "not ready: shutting down\n"));
    // Not ready, yet the listener still serves for --shutdown-delay.
    let served = support::exchange(
        running.addr,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(!served.starts_with("HTTP/1.1 503"), "{served}");
    assert_eq!(admin(admin_addr, "/livez").await.0, 200);
    // Then the listener closes; the live WebSocket drains; /livez answers throughout.
    running.wait_for_line(&["listeners closed"]).await;
    assert!(
        TcpStream::connect(running.addr).await.is_err(),
        "listener closed"
    );
    assert_eq!(admin(admin_addr, "/livez").await.0, 200);
    assert_eq!(admin(admin_addr, "/readyz").await.0, 503);
    echo(&mut ws, "still draining").await;
    ws.close(None).await.unwrap();
    drop(ws);
    assert!(running.wait().success());
    assert!(
        TcpStream::connect(admin_addr).await.is_err(),
        "gone with the process"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_behind_a_balancer_keeps_the_request_that_came_with_the_header() {
    let app = Backend::http("app").await;
    let tunnel = Tunnel::start(&[
        "--to",
        &app.address(),
        "--redirect-http",
        "127.0.0.1:0",
        "--accept-proxy-from",
        "127.0.0.1",
    ])
    .await;
    let mut tcp = TcpStream::connect(tunnel.redirect_addrs[0]).await.unwrap();
    let origin = proxy_protocol::Origin {
        client: "203.0.113.9:5000".parse().unwrap(),
        local: tunnel.redirect_addrs[0],
        sni: None,
        tls_version: None,
        client_cert: false,
    };
    let mut first = proxy_protocol::encode(proxy_protocol::Version::V1, &origin);
    first.extend_from_slice(b"GET /x?y=1 HTTP/1.1\r\nHost: example.com\r\n\r\n");
    tcp.write_all(&first).await.unwrap(); // one segment: header and request together
    let mut reply = String::new();
    tokio::time::timeout(Duration::from_secs(3), tcp.read_to_string(&mut reply))
        .await
        .expect("answered at once, not at the header timeout")
        .unwrap();
    assert_eq!(support::status_of(&reply), 308, "{reply}");
    assert!(reply.contains("/x?y=1"), "{reply}");
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_deadline_counts_from_accept_even_behind_a_proxy_header() {
    let app = Backend::http("app").await;
    let tunnel = Tunnel::start(&[
        "--to",
        &app.address(),
        "--accept-proxy-from",
        "127.0.0.1",
        "--header-timeout",
        "1500ms",
    ])
    .await;
    let started = std::time::Instant::now();
    let mut tcp = TcpStream::connect(tunnel.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    tcp.write_all(&proxy_protocol::local(proxy_protocol::Version::V2))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(support::client_config())
        .connect(name, tcp)
        .await
        .expect("handshake");
    // No request: answered 408 at 1.5 s from accept, not 1.5 s after the PROXY header.
    let reply = support::read_to_close(&mut tls).await;
    let took = started.elapsed();
    assert_eq!(support::status_of(&reply), 408, "{reply}");
    assert!(took < Duration::from_millis(2100), "408 after {took:?}");
    drop(tls);
    tunnel.assert_idle().await;
}
