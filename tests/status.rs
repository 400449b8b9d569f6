//! The status page and `/status.json` on the admin port, against the live state: routes and
//! backends (one killed and back), reloads with their result, certificates and their expiry,
//! and names holding markup shown escaped.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::pki::Ca;
use support::{Backend, Tunnel, WAIT};

async fn status(addr: SocketAddr) -> serde_json::Value {
    let (code, content_type, body) = support::admin_get(addr, "/status.json").await;
    assert_eq!((code, content_type.as_str()), (200, "application/json"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Polls `/status.json` until `pred` holds (bounded by [`WAIT`]).
async fn until(addr: SocketAddr, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let json = status(addr).await;
        if pred(&json) {
            return json;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {json:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_follows_backends_reloads_and_certificates() {
    let dir = support::temp_dir("status");
    let ca = Ca::new("status").unwrap();
    let leaf = ca.server(&["chat.localhost", "localhost"], 1, 10).unwrap();
    let (cert, key) = (dir.join("chain.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &leaf.chain_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let steady = Backend::http("steady").await;
    let doomed = Backend::http("doomed").await;
    let doomed_addr = doomed.addr;
    let tunnel = Tunnel::start_with_cert(
        &cert,
        &key,
        &[
            "--admin",
            "127.0.0.1:0",
            "--route",
            &format!("/socket.io/={},{}", steady.address(), doomed.address()),
            "--balance",
            "/socket.io/=ip-hash",
            "--health-check",
            "tcp",
            "--health-interval",
            "100ms",
            "--to",
            &steady.address(),
        ],
    )
    .await;
    let admin = tunnel.admin_addr.unwrap();
    let json = until(admin, |j| j["ready"] == true).await;
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert!(json["uptime_seconds"].is_u64());
    assert_eq!(json["listeners"][0]["kind"], "tls");
    assert_eq!(json["listeners"][0]["address"], tunnel.addr.to_string());
    let routes = json["routes"].as_array().unwrap();
    assert_eq!(routes[0]["route"], "/socket.io/");
    assert_eq!(routes[0]["policy"], "ip-hash");
    assert_eq!(routes[0]["health_check"], "tcp");
    assert_eq!(routes[0]["backends"][1]["backend"], doomed_addr.to_string());
    assert_eq!(routes[0]["backends"][1]["state"], "up");
    assert!(routes[0]["backends"][1]["down"].is_null());
    let certificate = &json["certificates"][0];
    assert_eq!(certificate["names"][0], "chat.localhost");
    assert_eq!(certificate["file"], cert.display().to_string());
    let days = certificate["days_left"].as_i64().unwrap();
    assert!((8..=10).contains(&days), "{certificate}");
    assert_eq!(certificate["state"], "warning");
    assert!(json["history"]["connections"].is_array());
    assert_eq!(json["history"]["interval_seconds"], 10);

    // Killed: down by its health check, with the reason; the page says it too.
    drop(doomed);
    let json = until(admin, |j| j["routes"][0]["backends"][1]["state"] == "down").await;
    let down = &json["routes"][0]["backends"][1]["down"];
    assert_eq!(down["by"], "check", "{down}");
    assert!(down["why"].as_str().unwrap().contains("connect"), "{down}");
    let (code, content_type, page) = support::admin_get(admin, "/").await;
    assert_eq!(
        (code, content_type.as_str()),
        (200, "text/html; charset=utf-8")
    );
    assert!(page.contains("<tr class=\"backend down\">"), "{page}");
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "nothing from elsewhere"
    );

    // Back on the same port: up again after two passes.
    let listener = std::net::TcpListener::bind(doomed_addr).unwrap();
    let json = until(admin, |j| j["routes"][0]["backends"][1]["state"] == "up").await;
    assert!(json["routes"][0]["backends"][1]["down"].is_null());
    drop(listener);

    // Reloads, newest first, with the result and the file that failed.
    tunnel.server.reload_files().unwrap();
    std::fs::write(&cert, "not a certificate\n").unwrap();
    assert!(tunnel.server.reload_files().is_err());
    let json = until(admin, |j| {
        j["reloads"].as_array().is_some_and(|r| r.len() == 2)
    })
    .await;
    assert_eq!(json["reloads"][0]["result"], "failure");
    assert_eq!(json["reloads"][0]["trigger"], "call");
    let error = json["reloads"][0]["error"].as_str().unwrap();
    assert!(error.contains(&cert.display().to_string()), "{error}");
    assert_eq!(json["reloads"][1]["result"], "success");
    assert!(json["reloads"][1]["error"].is_null());
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_name_holding_markup_is_shown_escaped() {
    let dir = support::temp_dir("markup");
    let ca = Ca::new("markup").unwrap();
    let leaf = ca
        .server(&["localhost", "<script>alert(1)</script>.example"], 1, 90)
        .unwrap();
    let (cert, key) = (dir.join("<b>chain&more.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &leaf.chain_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let backend = Backend::http("app").await;
    let tunnel = Tunnel::start_with_cert(
        &cert,
        &key,
        &["--admin", "127.0.0.1:0", "--to", &backend.address()],
    )
    .await;
    let admin = tunnel.admin_addr.unwrap();
    let (_, _, page) = support::admin_get(admin, "/").await;
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;.example"),
        "{page}"
    );
    assert!(page.contains("&lt;b&gt;chain&amp;more.pem"), "{page}");
    let (_, _, json) = support::admin_get(admin, "/status.json").await;
    assert!(!json.contains("<script>"), "{json}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        json["certificates"][0]["names"][1],
        "<script>alert(1)</script>.example"
    );
}

/// Issue #42: how WebSockets ended in the last hour (up to this moment, not only up to the
/// last 10 s sample), messages per route, and the oldest open WebSockets' ages, in
/// `/status.json` and on the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_how_websockets_ended_and_the_oldest_open_ones() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let echo = Backend::ws_echo().await;
    let tunnel = Tunnel::start(&["--admin", "127.0.0.1:0", "--to", &echo.address()]).await;
    let admin = tunnel.admin_addr.unwrap();
    // One stays open; two end with the client's 1000.
    let mut open = support::ws_connect(tunnel.addr).await;
    support::echo(&mut open, "still here").await;
    for _ in 0..2 {
        let mut ws = support::ws_connect(tunnel.addr).await;
        support::echo(&mut ws, "bye").await;
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        ws.close(Some(close)).await.unwrap();
    }
    let json = until(admin, |j| {
        j["websocket_closes"]["closes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["count"] == 2))
    })
    .await;
    let closes = &json["websocket_closes"]["closes"][0];
    assert_eq!(closes["side"], "client", "{json:#}");
    assert_eq!(closes["code"], "1000");
    assert_eq!(closes["meaning"], "normal");
    let oldest = json["oldest_websockets"].as_array().unwrap();
    assert_eq!(oldest.len(), 1, "the open one only: {json:#}");
    assert_eq!(oldest[0]["route"], "/");
    let messages = &json["routes"][0]["websockets"]["messages"];
    assert_eq!(messages["client_to_backend"], 3, "{json:#}");
    assert_eq!(messages["backend_to_client"], 3);
    assert!(json["history"]["messages_per_second"].is_array());
    let (_, _, page) = support::admin_get(admin, "/").await;
    assert!(page.contains("How WebSockets ended"), "{page}");
    assert!(page.contains("<td>client</td><td>1000 <small>normal</small></td><td>2</td>"));
    assert!(page.contains("Longest-lived WebSockets"));
    assert!(page.contains("messages/s"));
    drop(open);
    tunnel.assert_idle().await;
}
