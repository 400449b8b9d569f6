//! `Server::reload`: a new configuration for new connections, while every live connection
//! keeps the one it was accepted with.

mod support;

use support::{Backend, Tunnel, echo, ws_connect};
use tokio::io::AsyncWriteExt;

fn accepted(backend: &Backend) -> usize {
    backend.received.lock().unwrap().len()
}

#[tokio::test]
async fn reload_under_live_websockets_changes_routes_only_for_new_connections() {
    let old = Backend::ws_echo().await;
    let new = Backend::ws_echo().await;
    let tunnel = Tunnel::start(&["--route", &format!("/={}", old.address())]).await;
    let mut live = Vec::new();
    for i in 0..20 {
        let mut ws = ws_connect(tunnel.addr).await;
        echo(&mut ws, &format!("before {i}")).await;
        live.push(ws);
    }
    assert_eq!(accepted(&old), 20);

    tunnel.reload(&["--route", &format!("/={}", new.address())]);

    for (i, ws) in live.iter_mut().enumerate() {
        echo(ws, &format!("after {i}")).await;
    }
    for i in 0..5 {
        let mut ws = ws_connect(tunnel.addr).await;
        echo(&mut ws, &format!("new {i}")).await;
        live.push(ws);
    }
    assert_eq!(accepted(&new), 5, "new connections take the new route");
    assert_eq!(
        accepted(&old),
        20,
        "no new connection reaches the old backend"
    );
    assert_eq!(tunnel.server.connections(), 25, "nothing live was dropped");
    for (i, ws) in live.iter_mut().enumerate() {
        echo(ws, &format!("last {i}")).await;
    }
    for mut ws in live {
        ws.close(None).await.expect("close");
    }
    tunnel.assert_idle().await;
}

#[tokio::test]
async fn a_keep_alive_connection_keeps_the_routes_it_was_accepted_with() {
    let a = Backend::http("a").await;
    let b = Backend::http("b").await;
    let tunnel = Tunnel::start(&["--route", &format!("/={}", a.address())]).await;
    let mut kept = support::tls_connect(tunnel.addr).await;
    let get = b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n";
    kept.write_all(get).await.expect("write");
    let first = support::read_head(&mut kept).await.expect("first response");
    assert!(String::from_utf8_lossy(&first).contains("X-Backend: a"));
    let mut body = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut kept, &mut body)
        .await
        .expect("body");

    tunnel.reload(&[
        "--route",
        &format!("/={}", b.address()),
        "--route",
        &format!("/x={}", b.address()),
    ]);

    // The same connection: its second request still follows the routes it started with. Under
    // the new ones `/x` would be another route, and the request would never be forwarded.
    kept.write_all(get).await.expect("write");
    let second = support::read_head(&mut kept)
        .await
        .expect("second response");
    assert!(String::from_utf8_lossy(&second).contains("X-Backend: a"));
    // A new connection gets the new routes.
    let fresh = tunnel
        .exchange(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    assert!(fresh.contains("X-Backend: b"), "{fresh}");
    drop(kept);
    tunnel.assert_idle().await;
}
