//! Abuse limits: the process stays up and responsive. Floods, per-address limits and running
//! out of file descriptors, against the real binary where the limit is per process.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::binary::Running;
use support::{Backend, Tunnel, WAIT, echo, pki, ws_connect};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_flood_does_not_starve_live_tunnels() {
    let backend = Backend::ws_echo().await;
    let tunnel = Tunnel::start(&[
        "--to",
        &backend.address(),
        "--max-handshakes",
        "2",
        "--handshake-timeout",
        "1s",
    ])
    .await;
    let mut live = ws_connect(tunnel.addr).await;
    // 50 clients start a ClientHello and stall, holding every handshake slot.
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut tcp = TcpStream::connect(tunnel.addr).await.unwrap();
        tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        stalled.push(tcp);
    }
    for i in 0..20 {
        echo(&mut live, &format!("still alive {i}")).await;
    }
    // New clients are only delayed: stalled handshakes time out and free their slots.
    let late = tokio::time::timeout(WAIT, async { ws_connect(tunnel.addr).await }).await;
    assert!(late.is_ok(), "a new client never got a handshake slot");
    drop((stalled, late, live));
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_are_limited() {
    let backend = Backend::ws_echo().await;
    let tunnel =
        Tunnel::start(&["--to", &backend.address(), "--max-connections-per-ip", "2"]).await;
    let mut first = ws_connect(tunnel.addr).await;
    let second = ws_connect(tunnel.addr).await;
    let third = support::tls_connect_with(tunnel.addr, support::client_config()).await;
    assert!(
        third.is_err(),
        "a third connection from 127.0.0.1 was served"
    );
    echo(&mut first, "the first two still work").await;
    drop(second);
    // The freed place is given back.
    let deadline = Instant::now() + WAIT;
    loop {
        match support::tls_connect_with(tunnel.addr, support::client_config()).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("the freed place was not given back: {e}"),
        }
    }
    drop(first);
    tunnel.assert_idle().await;
}

/// The real binary with a soft RLIMIT_NOFILE of `nofile`, its stderr collected.
/// The binary under a descriptor limit of `nofile`, set by a shell that then `exec`s it.
fn start_limited(nofile: u32, backend: &str) -> Running {
    let pki = pki();
    let script = format!(
        "ulimit -Sn {nofile} && ulimit -Hn {nofile} && exec \"$0\" --listen 127.0.0.1:0 --cert {} --key {} --to {backend} --max-connections 10000",
        pki.cert.display(),
        pki.key.display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script, env!("CARGO_BIN_EXE_wssbridge")])
        .env_remove("RUST_LOG");
    Running::spawn(cmd)
}

/// CPU seconds a process has used (utime + stime from /proc).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_backs_off_keeps_tunnels_and_recovers() {
    let backend = Backend::ws_echo().await;
    let server = start_limited(64, &backend.address());
    let mut live = ws_connect(server.addr).await;
    echo(&mut live, "before").await;
    // Far more connections than the server has descriptors for: accept hits EMFILE.
    let mut flood = Vec::new();
    for _ in 0..150 {
        if let Ok(tcp) = TcpStream::connect(server.addr).await {
            flood.push(tcp);
        }
    }
    server.wait_for_line(&["accept failed"]).await;
    // While out of descriptors: no busy loop, a warning at most once a second, and the live
    // tunnel keeps working.
    let cpu_before = cpu_seconds(server.child.id());
    let warnings_before = server
        .log()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count();
    for i in 0..10 {
        echo(&mut live, &format!("during {i}")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu = cpu_seconds(server.child.id()) - cpu_before;
    let warnings = server
        .log()
        .iter()
        .filter(|l| l.contains("accept failed"))
        .count()
        - warnings_before;
    assert!(
        cpu < 1.0,
        "the server used {cpu:.2} CPU seconds in 2 s out of descriptors"
    );
    assert!(warnings <= 4, "{warnings} accept warnings in 2 s");
    // Descriptors come back: the server serves new clients again.
    drop(flood);
    let recovered = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Ok(tls)) = tokio::time::timeout(
                Duration::from_secs(2),
                support::tls_connect_with(server.addr, support::client_config()),
            )
            .await
            {
                return tls;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        recovered.is_ok(),
        "never recovered after descriptors were freed"
    );
    echo(&mut live, "after").await;
}

/// `/proc/net/tcp` rows as (local port, remote port, timer kind, seconds to expiry).
fn tcp_timers() -> Vec<(u16, u16, u8, f64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |s: &str| u16::from_str_radix(s.rsplit(':').next()?, 16).ok();
            let (kind, when) = f.get(5)?.split_once(':')?;
            let ticks = u64::from_str_radix(when, 16).ok()? as f64 / 100.0;
            Some((port(f[1])?, port(f[2])?, kind.parse().ok()?, ticks))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_keepalive_is_on_both_sockets_of_a_tunnel() {
    let backend = Backend::ws_echo().await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    let mut ws = ws_connect(tunnel.addr).await;
    echo(&mut ws, "idle from now on").await;
    let (proxy_port, backend_port) = (tunnel.addr.port(), backend.addr.port());
    // Once idle, the kernel runs the keepalive timer (kind 2), first probe after 60 s.
    let deadline = Instant::now() + WAIT;
    loop {
        let timers = tcp_timers();
        let client_side = timers.iter().find(|t| t.0 == proxy_port && t.1 != 0);
        let backend_side = timers.iter().find(|t| t.1 == backend_port);
        let keepalive = |t: Option<&(u16, u16, u8, f64)>| {
            t.is_some_and(|t| t.2 == 2 && t.3 > 30.0 && t.3 <= 60.0)
        };
        if keepalive(client_side) && keepalive(backend_side) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no keepalive timer: client {client_side:?}, backend {backend_side:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(ws);
    tunnel.assert_idle().await;
}

/// Resident memory of this test process, in KiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// The trim task gives a spike's memory back. 100 MB of small blocks freed below one that
/// stays are kept resident by glibc (it only gives back the top of its heap) until
/// `malloc_trim`, which `trim::after_drops` calls once the connections have fallen by
/// `trim::DROP`.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fall_in_connections_gives_freed_memory_back() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use wssbridge::trim;

    let logs = support::logs();
    let count = Arc::new(AtomicUsize::new(trim::DROP));
    let stop = tokio_util::sync::CancellationToken::new();
    let read = count.clone();
    let task = tokio::spawn(trim::after_drops(
        move || read.load(Ordering::Relaxed),
        stop.clone().cancelled_owned(),
    ));
    let spike: Vec<Box<[u8]>> = (0..50_000u32)
        .map(|i| vec![i as u8; 2048].into_boxed_slice())
        .collect();
    let stays = std::hint::black_box(vec![1u8; 64]);
    let peak = rss_kib();
    drop(spike);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let kept = rss_kib();
    assert!(
        kept + 10_000 > peak,
        "glibc gave it back by itself: {peak} -> {kept} KiB"
    );

    count.store(0, Ordering::Relaxed);
    logs.wait_for(&["gave freed memory back"]).await;
    let after = rss_kib();
    assert!(
        after + 50_000 < kept,
        "{peak} KiB at the peak, {kept} kept, {after} after the trim"
    );
    stop.cancel();
    task.await.unwrap();
    drop(stays);
}
