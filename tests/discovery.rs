//! Backends found by DNS (`dns:NAME:PORT`, `srv:NAME`), against a real DNS server on
//! loopback (dnsmasq, TTL 1 s) whose answers each test changes, and the real binary.
//!
//! Each test's backends listen on addresses of their own in 127/8 (one port, several
//! addresses: what a headless Service's pods look like), so tests may run side by side.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::binary::Running;
use support::dns::Dns;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The port every test backend listens on, each on its own address.
const PORT: u16 = 3000;

/// A backend on `ip:PORT`: a plain request is answered 200 with `ip` as the body and
/// closed; an upgrade request gets 101 and then an echo of every byte.
async fn backend(ip: &str) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind((ip, PORT)).await.expect("bind backend");
    let name = ip.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let Some(head) = support::read_head(&mut s).await else {
                    return;
                };
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if head.contains("upgrade: websocket") {
                    let _ = s
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                        .await;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    return;
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    })
}

/// Which backend answers a GET from `from`, or the status when wssbridge answered itself.
async fn who(addr: SocketAddr, from: IpAddr, path: &str) -> String {
    let mut tls = support::tls_connect_from(from, addr).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.expect("write");
    let response = support::read_to_close(&mut tls).await;
    match support::status_of(&response) {
        200 => response.rsplit("\r\n\r\n").next().unwrap_or("").to_string(),
        status => format!("status {status}: {response}"),
    }
}

/// A WebSocket-style tunnel from `from`: the upgrade answered, then bytes echoed.
async fn tunnel(
    addr: SocketAddr,
    from: IpAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut tls = support::tls_connect_from(from, addr).await;
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("upgrade");
    let head = support::read_head(&mut tls).await.expect("101");
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    tls
}

async fn echoes(tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>, text: &str) {
    tls.write_all(text.as_bytes()).await.expect("write");
    let mut back = vec![0u8; text.len()];
    tokio::time::timeout(support::WAIT, tls.read_exact(&mut back))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(back, text.as_bytes());
}

fn clients(net: u8) -> Vec<IpAddr> {
    (2..32).map(|i| IpAddr::from([127, 0, net, i])).collect()
}

/// Where each client lands now, asked twice (ip-hash: the same both times).
async fn placement(addr: SocketAddr, clients: &[IpAddr]) -> HashMap<IpAddr, String> {
    let mut placed = HashMap::new();
    for &client in clients {
        let first = who(addr, client, "/").await;
        assert_eq!(who(addr, client, "/").await, first, "{client} stays put");
        placed.insert(client, first);
    }
    placed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovered_name_spreads_follows_its_answers_and_never_cuts_a_tunnel() {
    let net = 201;
    let ip = |i: u8| format!("127.0.{net}.{i}");
    let mut dns = Dns::start("discovery-follow", &[]);
    dns.set("chat.test", &[&ip(11), &ip(12), &ip(13)]);
    let _backends = [
        backend(&ip(11)).await,
        backend(&ip(12)).await,
        backend(&ip(13)).await,
        backend(&ip(14)).await,
    ];
    let running = Running::with_test_cert(&[
        "--listen",
        "127.0.0.1:0",
        "--resolver",
        &dns.addr(),
        "--route",
        &format!("/=dns:chat.test:{PORT}"),
        "--balance",
        "ip-hash",
    ]);
    running
        .wait_for_line(&["discovered backends changed", "backends=3"])
        .await;
    let addr = running.addr;
    let clients = clients(net + 1);

    // Three addresses: every one a backend, every client on one of them.
    let before = placement(addr, &clients).await;
    for i in [11, 12, 13] {
        let n = before.values().filter(|b| **b == ip(i)).count();
        assert!(n >= 3, "{} has {n} of 30 clients: {before:?}", ip(i));
    }

    // A fourth appears: it takes clients within the TTL, and only clients that move to it
    // move at all.
    dns.set("chat.test", &[&ip(11), &ip(12), &ip(13), &ip(14)]);
    running
        .wait_for_line(&["discovered backends changed", &format!("added={}", ip(14))])
        .await;
    let after = placement(addr, &clients).await;
    let moved: Vec<_> = clients.iter().filter(|c| before[c] != after[c]).collect();
    assert!(!moved.is_empty(), "the new address took no client");
    for c in &moved {
        assert_eq!(after[c], ip(14), "{c} moved between the first three");
    }

    // One disappears while tunnels through it are open: they go on; new connections go
    // elsewhere.
    let on_12: Vec<IpAddr> = clients
        .iter()
        .copied()
        .filter(|c| after[c] == ip(12))
        .collect();
    assert!(!on_12.is_empty());
    let mut live = Vec::new();
    for &c in &on_12 {
        let mut t = tunnel(addr, c).await;
        echoes(&mut t, "before").await;
        live.push(t);
    }
    dns.set("chat.test", &[&ip(11), &ip(13), &ip(14)]);
    running
        .wait_for_line(&[
            "discovered backends changed",
            &format!("removed={}", ip(12)),
        ])
        .await;
    for t in &mut live {
        echoes(t, "after the answer changed").await;
    }
    for &c in &on_12 {
        let now = who(addr, c, "/").await;
        assert!(now != ip(12) && now.starts_with("127.0."), "{c}: {now}");
    }
    for t in &mut live {
        echoes(t, "still").await;
    }

    // The DNS server stops: nothing changes, one log line; it comes back with a new answer:
    // applied.
    dns.stop();
    running
        .wait_for_line(&["DNS lookup failed", "keeping the last 3 backends"])
        .await;
    // Asked again meanwhile (from 1 s, doubling), failing again: no new line.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let failed = running
        .log()
        .iter()
        .filter(|l| l.contains("DNS lookup failed"))
        .count();
    assert_eq!(failed, 1, "one line for the failure");
    let during = placement(addr, &clients).await;
    for c in &clients {
        if after[c] != ip(12) {
            assert_eq!(during[c], after[c], "{c} moved while DNS was down");
        }
    }
    dns.set("chat.test", &[&ip(11)]);
    dns.resume();
    running.wait_for_line(&["DNS lookups answer again"]).await;
    running
        .wait_for_line(&["discovered backends changed", "backends=1"])
        .await;
    let last = placement(addr, &clients).await;
    assert!(last.values().all(|b| *b == ip(11)), "{last:?}");
    for t in &mut live {
        echoes(t, "to the end").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_never_resolved_answers_502_until_it_does() {
    let ip = "127.0.203.11";
    let dns = Dns::start("discovery-later", &[]);
    let _backend = backend(ip).await;
    let running = Running::with_test_cert(&[
        "--listen",
        "127.0.0.1:0",
        "--resolver",
        &dns.addr(),
        "--route",
        &format!("/=dns:later.test:{PORT}"),
    ]);
    let client = IpAddr::from([127, 0, 0, 1]);
    let answer = who(running.addr, client, "/").await;
    assert!(
        answer.starts_with("status 502") && answer.contains("no backend yet"),
        "{answer}"
    );
    running
        .wait_for_line(&["DNS lookup failed", "later.test has no A or AAAA record"])
        .await;
    dns.set("later.test", &[ip]);
    running
        .wait_for_line(&["discovered backends changed"])
        .await;
    assert_eq!(who(running.addr, client, "/").await, ip);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_name_the_targets_and_their_ports() {
    let ips = ["127.0.204.11", "127.0.204.12"];
    let dns = Dns::start(
        "discovery-srv",
        &[&format!("_http._tcp.chat.test,pods.test,{PORT}")],
    );
    dns.set("pods.test", &ips);
    let _backends = [backend(ips[0]).await, backend(ips[1]).await];
    let running = Running::with_test_cert(&[
        "--listen",
        "127.0.0.1:0",
        "--resolver",
        &dns.addr(),
        "--route",
        "/=srv:_http._tcp.chat.test",
    ]);
    running
        .wait_for_line(&["discovered backends changed"])
        .await;
    let client = IpAddr::from([127, 0, 0, 1]);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(who(running.addr, client, "/").await);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ips,
        "round-robin over both"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_address_in_a_checked_route_waits_for_its_first_passing_check() {
    let ip = |i: u8| format!("127.0.205.{i}");
    let dns = Dns::start("discovery-checked", &[]);
    dns.set("chat.test", &[&ip(11)]);
    let _backend = backend(&ip(11)).await;
    let admin = SocketAddr::from(([127, 0, 0, 1], support::peers::free_port()));
    let running = Running::with_test_cert(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        &admin.to_string(),
        "--resolver",
        &dns.addr(),
        "--route",
        &format!("/=dns:chat.test:{PORT}"),
        "--health-check",
        "tcp",
        "--health-interval",
        "200ms",
    ]);
    running
        .wait_for_line(&["discovered backends changed"])
        .await;
    // .12 is named but nothing listens there: it never passes, and no request goes to it.
    dns.set("chat.test", &[&ip(11), &ip(12)]);
    running
        .wait_for_line(&["discovered backends changed", &format!("added={}", ip(12))])
        .await;
    let (_, _, status) = support::admin_get(admin, "/status.json").await;
    assert!(
        status.contains("waiting for its first health check"),
        "{status}"
    );
    let client = IpAddr::from([127, 0, 0, 1]);
    for _ in 0..6 {
        assert_eq!(who(running.addr, client, "/").await, ip(11));
    }
    // Now it listens: its first pass brings it in.
    let _late = backend(&ip(12)).await;
    running.wait_for_line(&["new backend up"]).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(who(running.addr, client, "/").await);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (_, _, metrics) = support::admin_get(admin, "/metrics").await;
    let discovered = format!(
        "wssbridge_backend_discovered{{backend=\"{}:{PORT}\",name=\"dns:chat.test:{PORT}\"}} 1",
        ip(12)
    );
    assert!(metrics.contains(&discovered), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "wssbridge_discovery_backends{{name=\"dns:chat.test:{PORT}\"}} 2"
        )),
        "{metrics}"
    );
}
