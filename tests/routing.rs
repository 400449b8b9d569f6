//! Choosing the backend: host and path rules, failover, round-robin, and the head forwarded
//! untouched.

mod support;

use support::{
    Backend, Tunnel, UPGRADE_REQUEST, read_head, refusing_address, status_of, tls_connect,
};
use tokio::io::AsyncWriteExt;

fn get(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The body of the response: the name of the backend that answered.
async fn served_by(tunnel: &Tunnel, path: &str, host: &str) -> String {
    let response = tunnel.exchange(&get(path, host)).await;
    assert_eq!(status_of(&response), 200, "{path} on {host}: {response}");
    response.rsplit("\r\n\r\n").next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_longest_prefix_at_segment_boundaries() {
    let root = Backend::http("root").await;
    let ws = Backend::http("ws").await;
    let chat = Backend::http("chat").await;
    let tunnel = Tunnel::start(&[
        "--route",
        &format!("/={}", root.address()),
        "--route",
        &format!("/ws={}", ws.address()),
        "--route",
        &format!("/ws/chat/={}", chat.address()),
    ])
    .await;
    for (path, expected) in [
        ("/ws", "ws"),
        ("/ws/x", "ws"),
        ("/ws?x=1", "ws"),
        ("/wsx", "root"),
        ("/ws/chat/room", "chat"),
        ("/ws/chat", "ws"),
        ("/", "root"),
        ("/ws/chat/../../other", "root"),
        ("/ws/chat/./x", "chat"),
    ] {
        assert_eq!(
            served_by(&tunnel, path, "localhost").await,
            expected,
            "path {path}"
        );
    }
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_route_beats_hostless_route() {
    let any = Backend::http("any").await;
    let api = Backend::http("api").await;
    let tunnel = Tunnel::start(&[
        "--route",
        &format!("/api/v1/={}", any.address()),
        "--route",
        &format!("api.example.com/={}", api.address()),
        // The test client's SNI is localhost: allow other Host names on its connections.
        "--allow-sni-mismatch",
    ])
    .await;
    assert_eq!(
        served_by(&tunnel, "/api/v1/users", "API.Example.com:8443").await,
        "api"
    );
    assert_eq!(
        served_by(&tunnel, "/api/v1/users", "www.example.com").await,
        "any"
    );
    let absolute = tunnel
        .exchange(b"GET http://api.example.com/x HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
        .await;
    assert!(absolute.ends_with("api"), "{absolute}");
    let response = tunnel.exchange(&get("/other", "www.example.com")).await;
    assert_eq!(status_of(&response), 404);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_head_reaches_the_backend_byte_for_byte() {
    let backend = Backend::upgrade_echo().await;
    let tunnel = Tunnel::start(&["--route", &format!("/ws={}", backend.address())]).await;
    let mut tls = tls_connect(tunnel.addr).await;
    tls.write_all(UPGRADE_REQUEST).await.unwrap();
    let head = read_head(&mut tls).await.expect("response head");
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert_eq!(backend.received.lock().unwrap()[0], UPGRADE_REQUEST);
    drop(tls);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_second_backend() {
    let up = Backend::http("up").await;
    let down = refusing_address().await;
    let tunnel = Tunnel::start(&["--route", &format!("/={down},{}", up.address())]).await;
    // Round-robin starts on each backend in turn; every request still lands on the live one.
    for _ in 0..4 {
        assert_eq!(served_by(&tunnel, "/", "localhost").await, "up");
    }
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_connections() {
    let a = Backend::http("a").await;
    let b = Backend::http("b").await;
    let tunnel = Tunnel::start(&["--to", &format!("{},{}", a.address(), b.address())]).await;
    let mut served = Vec::new();
    for _ in 0..4 {
        served.push(served_by(&tunnel, "/", "localhost").await);
    }
    assert_eq!(served.iter().filter(|s| *s == "a").count(), 2, "{served:?}");
    assert_eq!(served.iter().filter(|s| *s == "b").count(), 2, "{served:?}");
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_names_are_resolved_when_connecting() {
    let backend = Backend::http("named").await;
    let tunnel = Tunnel::start(&["--to", &format!("localhost:{}", backend.addr.port())]).await;
    assert_eq!(served_by(&tunnel, "/", "localhost").await, "named");
    tunnel.assert_idle().await;
}
