//! How connections are spread over threads (issue #43, part 1), against the real binary:
//! `--runtime per-core` starts `--threads` threads named `wssbridge-N`, each accepting from
//! the shared listeners and serving what it took, counted per thread in `/status.json` and
//! `/metrics`; the limits stay process-wide; `--runtime work-stealing` (the default) has
//! `--threads` workers and drains as ever. (`make test` runs every other test under per-core
//! too, with `WSSBRIDGE_RUNTIME=per-core`.)

mod support;

use std::net::SocketAddr;

use futures_util::StreamExt;
use support::binary::{Running, fails, field};
use support::{Backend, admin_get, echo, ws_connect};

/// The names of the process's threads named `wssbridge-…` (per core `wssbridge-N`, the
/// work-stealing runtime's `wssbridge-ws`), sorted.
fn serving_threads(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("wssbridge-"))
        .collect();
    names.sort();
    names
}

async fn admin_of(running: &Running) -> SocketAddr {
    let line = running.wait_for_line(&["admin:"]).await;
    field(&line, "addr").unwrap().parse().unwrap()
}

async fn status_json(admin: SocketAddr) -> serde_json::Value {
    let (status, _, body) = admin_get(admin, "/status.json").await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_core_threads_share_the_connections_and_each_is_counted() {
    let backend = Backend::ws_echo().await;
    let running = Running::with_test_cert(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--runtime",
        "per-core",
        "--threads",
        "3",
        "--to",
        &backend.address(),
    ]);
    let pid = running.child.id();
    support::eventually("three serving threads", || {
        serving_threads(pid) == ["wssbridge-0", "wssbridge-1", "wssbridge-2"]
    })
    .await;
    let admin = admin_of(&running).await;
    // Three waves of 30 WebSockets opened at once, each echoing, all kept open: a thread
    // busy with a handshake leaves the next accept to another.
    let mut open = Vec::new();
    for wave in 0..3 {
        let opened = futures_util::future::join_all((0..30).map(|i| async move {
            let mut ws = ws_connect(running.addr).await;
            echo(&mut ws, &format!("wave {wave} socket {i}")).await;
            ws
        }))
        .await;
        open.extend(opened);
    }
    for (i, ws) in open.iter_mut().enumerate() {
        echo(ws, &format!("still there {i}")).await;
    }
    let status = status_json(admin).await;
    assert_eq!(status["runtime"]["mode"], "per-core");
    assert_eq!(status["runtime"]["threads"], 3);
    let accepted: Vec<u64> = status["runtime"]["accepted_by_thread"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert_eq!(accepted.len(), 3, "{status}");
    assert_eq!(
        accepted.iter().sum::<u64>(),
        90,
        "every accept counted once"
    );
    assert!(
        accepted.iter().filter(|&&n| n > 0).count() >= 2,
        "connections arriving together are spread over the threads: {accepted:?}"
    );
    let (_, _, scrape) = admin_get(admin, "/metrics").await;
    let series =
        |n: usize| format!("wssbridge_thread_accepted_connections_total{{thread=\"{n}\"}}");
    let scraped: Vec<u64> = (0..3)
        .map(|n| support::sample(&scrape, &series(n)) as u64)
        .collect();
    assert_eq!(scraped, accepted);
    support::promtool_accepts(&scrape);
}

/// `--max-connections` is one limit for the process, whichever thread accepts: with two
/// WebSockets open (on whichever threads), every further connection is answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_is_one_for_all_threads() {
    let backend = Backend::ws_echo().await;
    let running = Running::with_test_cert(&[
        "--listen",
        "127.0.0.1:0",
        "--runtime",
        "per-core",
        "--threads",
        "4",
        "--max-connections",
        "2",
        "--to",
        &backend.address(),
    ]);
    let mut first = ws_connect(running.addr).await;
    let mut second = ws_connect(running.addr).await;
    for _ in 0..6 {
        let answer = support::exchange(
            running.addr,
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(support::status_of(&answer), 503, "{answer}");
    }
    echo(&mut first, "one").await;
    echo(&mut second, "two").await;
}

/// The default: `--threads` workers (one more than the default of one per CPU would start;
/// blocking threads, if any, share their name), no per-core threads, nothing counted per
/// thread, and a SIGTERM drains a live WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_stealing_serves_and_drains() {
    let backend = Backend::ws_echo().await;
    let asked = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    let asked_flag = asked.to_string();
    let mut running = Running::with_test_cert(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--runtime",
        "work-stealing",
        "--threads",
        &asked_flag,
        "--shutdown-grace",
        "20s",
        "--to",
        &backend.address(),
    ]);
    let admin = admin_of(&running).await;
    let mut ws = ws_connect(running.addr).await;
    echo(&mut ws, "before").await;
    let threads = serving_threads(running.child.id());
    assert!(
        threads.len() >= asked && threads.iter().all(|name| name == "wssbridge-ws"),
        "{threads:?}"
    );
    let status = status_json(admin).await;
    assert_eq!(status["runtime"]["mode"], "work-stealing");
    assert_eq!(status["runtime"]["threads"], asked);
    assert_eq!(
        status["runtime"]["accepted_by_thread"],
        serde_json::json!([])
    );
    running.signal("TERM");
    running.wait_for_line(&["draining"]).await;
    echo(&mut ws, "during the drain").await;
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    drop(ws);
    assert_eq!(running.wait().code(), Some(0));
    running.wait_for_line(&["drained"]).await;
}

#[test]
fn bad_runtime_flags_are_refused_at_start() {
    let (code, stderr) = fails(&["--threads", "0", "--to", "127.0.0.1:1"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--threads must be at least 1"), "{stderr}");
    let (code, stderr) = fails(&["--threads", "5000", "--to", "127.0.0.1:1"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--threads 5000"), "{stderr}");
    let (code, stderr) = fails(&["--runtime", "green", "--to", "127.0.0.1:1"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--runtime") && stderr.contains("per-core"),
        "{stderr}"
    );
}
