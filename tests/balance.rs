//! Load balancing and health on real sockets: the policies' splits, stickiness by client
//! address (clients bound to 127.0.0.2…: all of 127/8 is loopback on Linux), passive and
//! active health, and that health never cuts a live tunnel.

mod support;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use support::{Backend, Tunnel, echo, ws_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

fn accepted(backend: &Backend) -> usize {
    backend.received.lock().unwrap().len()
}

/// Sends one request that closes and returns the body (the backend's name).
async fn ask_from(from: IpAddr, addr: SocketAddr) -> String {
    let mut tls = support::tls_connect_from(from, addr).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = support::read_to_close(&mut tls).await;
    reply
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

fn routes(backends: &[&Backend]) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.address()).collect();
    format!("/={}", list.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_conn_splits_long_lived_websockets_evenly() {
    let (a, b, c) = (
        Backend::ws_echo().await,
        Backend::ws_echo().await,
        Backend::ws_echo().await,
    );
    let route = routes(&[&a, &b, &c]);
    let tunnel = Tunnel::start(&["--route", &route, "--balance", "least-conn"]).await;
    let mut live = Vec::new();
    for i in 0..30 {
        let mut ws = ws_connect(tunnel.addr).await;
        echo(&mut ws, &format!("{i}")).await;
        live.push(ws);
    }
    assert_eq!((accepted(&a), accepted(&b), accepted(&c)), (10, 10, 10));
    // Ten close on one backend: the next ten go there.
    let on_a: Vec<usize> = (0..30).filter(|i| i % 3 == 0).collect();
    for i in on_a.into_iter().rev() {
        live.remove(i).close(None).await.unwrap();
    }
    // Their tunnels ended (least-conn counts them no more).
    let server = tunnel.server.clone();
    support::eventually("ten tunnels ended", || server.connections() == 20).await;
    for i in 0..10 {
        let mut ws = ws_connect(tunnel.addr).await;
        echo(&mut ws, &format!("again {i}")).await;
        live.push(ws);
    }
    let counts = [accepted(&a), accepted(&b), accepted(&c)];
    assert_eq!(counts.iter().sum::<usize>(), 40);
    assert!(
        counts.contains(&20),
        "the emptied backend took the ten: {counts:?}"
    );
    for mut ws in live {
        ws.close(None).await.unwrap();
    }
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_splits_short_connections_evenly() {
    let (a, b, c) = (
        Backend::http("a").await,
        Backend::http("b").await,
        Backend::http("c").await,
    );
    let route = routes(&[&a, &b, &c]);
    let tunnel = Tunnel::start(&["--route", &route]).await;
    for _ in 0..30 {
        tunnel
            .exchange(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await;
    }
    assert_eq!((accepted(&a), accepted(&b), accepted(&c)), (10, 10, 10));
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_sends_each_client_address_to_the_same_backend() {
    let (a, b, c) = (
        Backend::http("a").await,
        Backend::http("b").await,
        Backend::http("c").await,
    );
    let route = routes(&[&a, &b, &c]);
    let tunnel = Tunnel::start(&["--route", &route, "--balance", "/=ip-hash"]).await;
    let mut chosen: HashMap<IpAddr, String> = HashMap::new();
    for host in 2..=31u8 {
        let from = IpAddr::from([127, 0, 0, host]);
        for _ in 0..3 {
            let name = ask_from(from, tunnel.addr).await;
            let first = chosen.entry(from).or_insert_with(|| name.clone());
            assert_eq!(*first, name, "{from} moved");
        }
    }
    let mut per_backend: HashMap<&str, usize> = HashMap::new();
    for name in chosen.values() {
        *per_backend.entry(name).or_default() += 1;
    }
    assert_eq!(
        per_backend.len(),
        3,
        "every backend gets clients: {per_backend:?}"
    );

    // A second wssbridge with the same backend list picks the same for every address.
    let other = Tunnel::start(&["--route", &route, "--balance", "ip-hash"]).await;
    for (from, name) in &chosen {
        assert_eq!(ask_from(*from, other.addr).await, *name);
    }
    tunnel.assert_idle().await;
    other.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_moves_only_its_own_clients_and_they_return() {
    let (a, c) = (Backend::http("a").await, Backend::http("c").await);
    // b is a port we can close and open again.
    let b_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b_addr = b_listener.local_addr().unwrap();
    let b = named_http(b_listener, "b");
    let route = format!("/={},{},{}", a.address(), b_addr, c.address());
    let tunnel = Tunnel::start(&[
        "--route",
        &route,
        "--balance",
        "ip-hash",
        "--fail-timeout",
        "1s",
    ])
    .await;
    let mut before = HashMap::new();
    for host in 2..=31u8 {
        let from = IpAddr::from([127, 0, 0, host]);
        before.insert(from, ask_from(from, tunnel.addr).await);
    }
    assert!(before.values().any(|n| n == "b"));
    b.abort();
    let gone = async {
        while TcpStream::connect(b_addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(support::WAIT, gone)
        .await
        .expect("b still accepts");
    for (from, name) in &before {
        let now = ask_from(*from, tunnel.addr).await;
        match name.as_str() {
            "b" => assert_ne!(now, "b", "{from} moved off the dead backend"),
            _ => assert_eq!(now, *name, "{from} was not on it and stays"),
        }
    }
    // Back on the same port: after the fail timeout, its clients return.
    let b = named_http(TcpListener::bind(b_addr).await.unwrap(), "b");
    // Once its fail timeout is over, b's clients return (waited for, not slept on).
    let (one, _) = before.iter().find(|(_, name)| *name == "b").unwrap();
    let returned = async {
        while ask_from(*one, tunnel.addr).await != "b" {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(support::WAIT, returned)
        .await
        .expect("b's clients never returned");
    for (from, name) in &before {
        assert_eq!(ask_from(*from, tunnel.addr).await, *name, "{from} returned");
    }
    b.abort();
    tunnel.assert_idle().await;
}

/// An HTTP backend answering every request with `name`, on `listener`, until aborted.
fn named_http(listener: TcpListener, name: &'static str) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut s, _)) = listener.accept().await {
            conns.spawn(async move {
                if support::read_head(&mut s).await.is_some() {
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                        name.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_times_out_is_marked_down_and_skipped_at_once() {
    let logs = support::logs();
    let good = Backend::http("good").await;
    // A listener whose backlog is full: connects to it hang until their timeout.
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    let socket = socket2::SockRef::from(&stuck);
    socket.listen(0).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(stuck_addr)).await
        {
            fillers.push(s);
        }
    }
    let route = format!("/={stuck_addr},{}", good.address());
    let tunnel = Tunnel::start(&["--route", &route, "--connect-timeout", "500ms"]).await;
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let first = Instant::now();
    assert!(tunnel.exchange(request).await.ends_with("good"));
    let first = first.elapsed();
    assert!(
        first >= Duration::from_millis(500),
        "the first waited: {first:?}"
    );
    // Round-robin would try the stuck one first every other time; marked down, it goes last.
    let rest = Instant::now();
    for _ in 0..6 {
        assert!(tunnel.exchange(request).await.ends_with("good"));
    }
    assert!(
        rest.elapsed() < Duration::from_millis(500),
        "{:?}",
        rest.elapsed()
    );
    let line = logs
        .wait_for(&["backend down", &stuck_addr.to_string()])
        .await;
    assert!(
        line.contains("WARN") && line.contains("timed out"),
        "{line}"
    );
    assert_eq!(
        logs.lines_with(&["backend down", &stuck_addr.to_string()])
            .len(),
        1
    );
    drop(fillers);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_backend_down_all_are_still_tried() {
    let a_addr = support::refusing_address().await;
    let b_addr = support::refusing_address().await;
    let route = format!("/={a_addr},{b_addr}");
    let tunnel = Tunnel::start(&["--route", &route, "--fail-timeout", "1h"]).await;
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    assert_eq!(support::status_of(&tunnel.exchange(request).await), 502);
    // Both are down for an hour now; one comes back: the next connection finds it.
    let b = named_http(TcpListener::bind(&b_addr).await.unwrap(), "b");
    assert!(tunnel.exchange(request).await.ends_with("b"));
    assert!(tunnel.exchange(request).await.ends_with("b"));
    b.abort();
    tunnel.assert_idle().await;
}

/// A backend whose `/healthz` answers with a status the test sets, that echoes WebSockets,
/// and that counts the WebSockets it serves.
struct App {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    served: Arc<std::sync::atomic::AtomicUsize>,
    task: JoinHandle<()>,
}

impl App {
    async fn start() -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        App::on(listener, Arc::new(AtomicU16::new(200)), Arc::default())
    }

    fn on(
        listener: TcpListener,
        health: Arc<AtomicU16>,
        served: Arc<std::sync::atomic::AtomicUsize>,
    ) -> App {
        let addr = listener.local_addr().unwrap();
        let (h, s) = (health.clone(), served.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (h, s) = (h.clone(), s.clone());
                tokio::spawn(async move {
                    let mut peek = [0u8; 2048];
                    let n = stream.peek(&mut peek).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&peek[..n]).to_ascii_lowercase();
                    if head.starts_with("get /healthz") {
                        let mut stream = stream;
                        let status = h.load(Ordering::Relaxed);
                        let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                        let _ = stream.write_all(reply.as_bytes()).await;
                        let mut sink = Vec::new();
                        let _ = stream.read_to_end(&mut sink).await;
                        return;
                    }
                    use futures_util::{SinkExt, StreamExt};
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return; // a tcp check, or not a WebSocket
                    };
                    s.fetch_add(1, Ordering::Relaxed);
                    while let Some(Ok(msg)) = ws.next().await {
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        App {
            addr,
            health,
            served,
            task,
        }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_takes_a_backend_out_and_two_passes_bring_it_back() {
    let logs = support::logs();
    let (sick, well) = (App::start().await, App::start().await);
    let route = format!("/={},{}", sick.addr, well.addr);
    let tunnel = Tunnel::start(&[
        "--route",
        &route,
        "--health-check",
        "/=/healthz",
        "--health-interval",
        "200ms",
    ])
    .await;
    // A WebSocket on the soon-sick backend: health never cuts it.
    let mut kept = ws_connect(tunnel.addr).await;
    echo(&mut kept, "before").await;
    assert_eq!(sick.served(), 1);

    sick.health.store(503, Ordering::Relaxed);
    let marked = Instant::now();
    let line = logs
        .wait_for(&["backend down", &sick.addr.to_string()])
        .await;
    assert!(
        marked.elapsed() <= Duration::from_millis(3 * 200 + 300),
        "{:?}",
        marked.elapsed()
    );
    assert!(line.contains("status 503"), "{line}");
    for i in 0..10 {
        let mut ws = ws_connect(tunnel.addr).await;
        echo(&mut ws, &format!("while sick {i}")).await;
        ws.close(None).await.unwrap();
    }
    assert_eq!(sick.served(), 1, "no new connection while down");
    echo(&mut kept, "still here").await;

    sick.health.store(200, Ordering::Relaxed);
    let healed = Instant::now();
    let line = logs.wait_for(&["backend up", &sick.addr.to_string()]).await;
    assert!(line.contains("INFO"), "{line}");
    assert!(
        healed.elapsed() <= Duration::from_millis(2 * 200 + 300),
        "{:?}",
        healed.elapsed()
    );
    for i in 0..4 {
        let mut ws = ws_connect(tunnel.addr).await;
        echo(&mut ws, &format!("healed {i}")).await;
        ws.close(None).await.unwrap();
    }
    assert_eq!(sick.served(), 3, "round-robin again");
    kept.close(None).await.unwrap();
    drop(kept);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_check_takes_a_closed_port_out_until_it_opens_again() {
    let logs = support::logs();
    let (gone, well) = (App::start().await, App::start().await);
    let gone_addr = gone.addr;
    let route = format!("/={gone_addr},{}", well.addr);
    let tunnel = Tunnel::start(&[
        "--route",
        &route,
        "--health-check",
        "tcp",
        "--health-interval",
        "200ms",
        "--fail-timeout",
        "0",
    ])
    .await;
    drop(gone);
    logs.wait_for(&["backend down", &gone_addr.to_string(), "connect"])
        .await;
    for i in 0..4 {
        let mut ws = ws_connect(tunnel.addr).await;
        echo(&mut ws, &format!("{i}")).await;
        ws.close(None).await.unwrap();
    }
    assert_eq!(well.served(), 4);
    let back = App::on(
        TcpListener::bind(gone_addr).await.unwrap(),
        Arc::new(AtomicU16::new(200)),
        Arc::default(),
    );
    logs.wait_for(&["backend up", &gone_addr.to_string()]).await;
    for i in 0..4 {
        let mut ws = ws_connect(tunnel.addr).await;
        echo(&mut ws, &format!("back {i}")).await;
        ws.close(None).await.unwrap();
    }
    assert_eq!(back.served(), 2);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_stop_at_shutdown() {
    let app = App::start().await;
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = counter.clone();
    let probe = tokio::spawn(async move {
        while let Ok((_s, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::Relaxed);
        }
    });
    let route = format!("/={},{addr}", app.addr);
    let mut tunnel = Tunnel::start(&[
        "--route",
        &route,
        "--health-check",
        "tcp",
        "--health-interval",
        "100ms",
    ])
    .await;
    let runs = counter.clone();
    support::eventually("three checks", || runs.load(Ordering::Relaxed) >= 3).await;
    tunnel.begin_shutdown();
    tunnel.finished().await;
    let after = counter.load(Ordering::Relaxed);
    // `finished` means every task ended, the check loops with them; four intervals later
    // nothing more has come (a negative: a check still running would have shown by then).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        counter.load(Ordering::Relaxed),
        after,
        "no check after shutdown"
    );
    probe.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backend_checked_two_ways_is_warned_about_naming_both() {
    let logs = support::logs();
    // Two routes to one backend; only one sends PROXY headers, so its checks would too.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap().to_string();
    let _tunnel = Tunnel::start(&[
        "--route",
        &format!("/plain/={backend}"),
        "--route",
        &format!("/proxied/={backend}"),
        "--send-proxy",
        "/proxied/=v2",
        "--health-check",
        "tcp",
    ])
    .await;
    let line = logs
        .wait_for(&["two health checks for one backend", &backend])
        .await;
    assert!(line.contains("tcp after a PROXY v2 header"), "{line}");
}
