//! `--balance cookie`: the backend an affinity cookie names, else least-conn, and one
//! `Set-Cookie` line added to the response; against the real binary and real sockets.
//! (tests/e2e/affinity.test.js has the socket.io clients and Chromium.)

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::binary::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What backend `name` answers to every request, byte for byte: the app's own cookie in it.
fn response(name: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nSet-Cookie: io=app-{name}; Path=/\r\n\
         X-Backend: {name}\r\n\r\n{name}",
        name.len()
    )
}

const SWITCHING: &str =
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

/// A keep-alive backend answering [`response`] to each request, and [`SWITCHING`] to an
/// upgrade (then silence).
async fn backend(name: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                while let Some(head) = support::read_head(&mut s).await {
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    if head.contains("upgrade: websocket") {
                        let _ = s.write_all(SWITCHING.as_bytes()).await;
                        let mut sink = [0u8; 64];
                        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                        return;
                    }
                    if s.write_all(response(name).as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

fn start(backends: &[SocketAddr], extra: &[&str]) -> Running {
    let list: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
    let route = format!("/socket.io/={}", list.join(","));
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--route",
        &route,
        "--balance",
        "/socket.io/=cookie",
    ];
    args.extend_from_slice(extra);
    Running::with_test_cert(&args)
}

/// One request (with `cookie`, if any) on a connection of its own: the whole response.
async fn get(addr: SocketAddr, cookie: Option<&str>) -> String {
    let mut tls = support::tls_connect(addr).await;
    tls.write_all(request(cookie).as_bytes()).await.unwrap();
    read_response(&mut tls).await
}

fn request(cookie: Option<&str>) -> String {
    let cookie = cookie.map_or(String::new(), |c| format!("Cookie: {c}\r\n"));
    format!("GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: localhost\r\n{cookie}\r\n")
}

/// One response: its head, then the body its Content-Length gives.
async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let head = tokio::time::timeout(support::WAIT, support::read_head(s))
        .await
        .expect("a response in time")
        .expect("a response");
    let text = String::from_utf8(head).unwrap();
    let length: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .map_or(0, |n| n.trim().parse().unwrap());
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).await.unwrap();
    text + &String::from_utf8(body).unwrap()
}

fn backend_of(response: &str) -> String {
    response.rsplit("\r\n\r\n").next().unwrap().to_string()
}

/// The affinity cookie's value the response sets, if it sets one.
fn set_value(response: &str) -> Option<String> {
    response
        .lines()
        .find_map(|l| l.strip_prefix("Set-Cookie: wssbridge="))
        .map(|rest| rest.split(';').next().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_is_added_and_no_other_byte_changes() {
    let (a, _ta) = backend("a").await;
    let running = start(&[a], &[]);
    let first = get(running.addr, None).await;
    let value = set_value(&first).expect("a cookie for a request without one");
    assert_eq!(value.len(), 16, "{first}");
    let line = format!(
        "Set-Cookie: wssbridge={value}; Path=/socket.io/; Secure; HttpOnly; SameSite=Lax\r\n"
    );
    let expected = response("a").replacen("\r\n\r\n", &format!("\r\n{line}\r\n"), 1);
    assert_eq!(
        first, expected,
        "the line last among the headers, the rest as sent"
    );
    // Carried back (beside the app's own cookie): nothing added, nothing changed.
    let again = get(running.addr, Some(&format!("io=app-a; wssbridge={value}"))).await;
    assert_eq!(again, response("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_keeps_its_backend_and_a_bad_one_is_placed_again() {
    let backends = [backend("a").await, backend("b").await, backend("c").await];
    let addrs: Vec<SocketAddr> = backends.iter().map(|(a, _)| *a).collect();
    let admin = SocketAddr::from(([127, 0, 0, 1], support::peers::free_port()));
    let running = start(&addrs, &["--admin", &admin.to_string()]);
    // Least-conn places connections held open one per backend in turn.
    let mut held = Vec::new();
    let mut cookies = std::collections::BTreeMap::new();
    for _ in 0..3 {
        let mut tls = support::tls_connect(running.addr).await;
        tls.write_all(request(None).as_bytes()).await.unwrap();
        let r = read_response(&mut tls).await;
        cookies.insert(backend_of(&r), set_value(&r).unwrap());
        held.push(tls);
    }
    assert_eq!(cookies.len(), 3, "least-conn spread them: {cookies:?}");
    for (name, value) in &cookies {
        for _ in 0..3 {
            let r = get(running.addr, Some(&format!("wssbridge={value}"))).await;
            assert_eq!(&backend_of(&r), name);
            assert_eq!(set_value(&r), None, "a valid cookie is not set again");
        }
    }
    let good = &cookies["a"];
    for bad in [
        "forged-value-xyz".to_string(),
        good[..8].to_string(),
        format!("{good}x"),
        String::new(),
        "\"\"".to_string(),
        "é€".to_string(),
    ] {
        let r = get(running.addr, Some(&format!("wssbridge={bad}"))).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{bad}: {r}");
        let set = set_value(&r).expect("cookied again");
        assert_eq!(&set, &cookies[&backend_of(&r)], "{bad}");
    }
    // 3 + 6 placed by least-conn, 9 by their cookie.
    let (_, _, metrics) = support::admin_get(admin, "/metrics").await;
    for (by, n) in [("cookie", 9), ("least_conn", 9)] {
        let series =
            format!("wssbridge_affinity_placements_total{{route=\"/socket.io/\",by=\"{by}\"}} {n}");
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
    let (_, _, status) = support::admin_get(admin, "/status.json").await;
    assert!(
        status.contains("\"placed_by_cookie\":9") && status.contains("\"placed_by_least_conn\":9"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_gone_down_places_its_clients_again_and_nobody_else_moves() {
    let (a, _ta) = backend("a").await;
    let (b, tb) = backend("b").await;
    let (c, _tc) = backend("c").await;
    let running = start(&[a, b, c], &[]);
    // The values every instance without a secret gives (the fixed key).
    let affinity = wssbridge::balance::affinity::Affinity::default();
    let (va, vb, vc) = (
        affinity.value(&a.to_string()),
        affinity.value(&b.to_string()),
        affinity.value(&c.to_string()),
    );
    assert_eq!(
        backend_of(&get(running.addr, Some(&format!("wssbridge={vb}"))).await),
        "b"
    );
    tb.abort();
    support::eventually("b refuses", || std::net::TcpStream::connect(b).is_err()).await;
    let moved = get(running.addr, Some(&format!("wssbridge={vb}"))).await;
    let to = backend_of(&moved);
    assert!(to == "a" || to == "c", "{moved}");
    let new = set_value(&moved).expect("a new cookie");
    assert_eq!(new, if to == "a" { va.clone() } else { vc.clone() });
    for (v, name) in [(&va, "a"), (&vc, "c")] {
        let r = get(running.addr, Some(&format!("wssbridge={v}"))).await;
        assert_eq!(backend_of(&r), name);
        assert_eq!(set_value(&r), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_one_secret_honour_each_other_s_cookies() {
    let backends = [backend("a").await, backend("b").await, backend("c").await];
    let addrs: Vec<SocketAddr> = backends.iter().map(|(a, _)| *a).collect();
    let secret = ["--affinity-secret", "fleet-secret"];
    let one = start(&addrs, &secret);
    let two = start(&addrs, &secret);
    let other = start(&addrs, &["--affinity-secret", "another"]);
    for _ in 0..3 {
        let first = get(one.addr, None).await;
        let value = set_value(&first).unwrap();
        let there = get(two.addr, Some(&format!("wssbridge={value}"))).await;
        assert_eq!(backend_of(&there), backend_of(&first));
        assert_eq!(set_value(&there), None);
        let elsewhere = get(other.addr, Some(&format!("wssbridge={value}"))).await;
        assert!(
            set_value(&elsewhere).is_some(),
            "another secret: not its cookie"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_is_never_changed_and_the_attributes_follow_the_flags() {
    let (a, _ta) = backend("a").await;
    let running = start(
        &[a],
        &[
            "--affinity-cookie",
            "sticky",
            "--affinity-samesite",
            "none",
            "--affinity-max-age",
            "1h",
        ],
    );
    let mut tls = support::tls_connect(running.addr).await;
    tls.write_all(
        b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: localhost\r\n\
          Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let head = support::read_head(&mut tls).await.unwrap();
    assert_eq!(String::from_utf8(head).unwrap(), SWITCHING);
    let r = get(running.addr, None).await;
    let line = r
        .lines()
        .find(|l| l.starts_with("Set-Cookie: sticky="))
        .unwrap();
    assert!(
        line.ends_with("; Path=/socket.io/; Secure; HttpOnly; SameSite=None; Max-Age=3600"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_request_naming_another_backend_closes_the_connection_before_it() {
    let (a, _ta) = backend("a").await;
    let (b, _tb) = backend("b").await;
    let running = start(&[a, b], &[]);
    let affinity = wssbridge::balance::affinity::Affinity::default();
    let (va, vb) = (
        affinity.value(&a.to_string()),
        affinity.value(&b.to_string()),
    );
    let mut tls = support::tls_connect(running.addr).await;
    tls.write_all(request(Some(&format!("wssbridge={va}"))).as_bytes())
        .await
        .unwrap();
    assert_eq!(backend_of(&read_response(&mut tls).await), "a");
    tls.write_all(request(Some(&format!("wssbridge={vb}"))).as_bytes())
        .await
        .unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(5), support::read_to_close(&mut tls))
        .await
        .expect("closed in time");
    assert_eq!(rest, "", "nothing of b's answer on a's connection");
    let retry = get(running.addr, Some(&format!("wssbridge={vb}"))).await;
    assert_eq!(backend_of(&retry), "b");
}
