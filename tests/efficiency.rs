//! What the tunnel costs in writes, counted by the kernel: a burst of small WebSocket
//! messages reaches the backend in a few writes, not one write per message. With
//! TCP_NODELAY every write leaves as at least one segment, so the segments the backend's
//! socket received (`ss -ti`'s `segs_in`) count the writes.

mod support;

use std::time::{Duration, Instant};

use support::binary::Running;
use support::{RawTls, UPGRADE_REQUEST, WAIT, client_config};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Segments the socket with local port `port` (one connection) has received so far.
fn segments_in(port: u16) -> u64 {
    let out = std::process::Command::new("ss")
        .args([
            "-tinH",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .expect("ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .find_map(|f| f.strip_prefix("segs_in:"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no segs_in in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_small_messages_reaches_the_backend_in_a_few_writes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap().to_string();
    let running = Running::with_test_cert(&["--listen", "127.0.0.1:0", "--to", &backend]);
    let addr = running.addr;
    let client = std::thread::spawn(move || {
        let mut raw = RawTls::connect(addr, client_config(), UPGRADE_REQUEST);
        raw.read_once(); // the 101 (and the session tickets)
        raw
    });
    let mut upstream = support::accept_upgrade(&listener).await;
    let mut raw = tokio::task::spawn_blocking(move || client.join().unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let port = listener.local_addr().unwrap().port();
    let before = segments_in(port);
    // 100 messages of 200 bytes, each its own TLS record, all in one segment burst.
    let burst = std::thread::spawn(move || {
        let message = [b'm'; 200];
        let messages: Vec<&[u8]> = (0..100).map(|_| &message[..]).collect();
        raw.send_records(&messages);
        raw
    });
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + WAIT;
    while got < 20_000 {
        let n = tokio::time::timeout_at(deadline.into(), upstream.read(&mut buf))
            .await
            .expect("the burst arrives")
            .unwrap();
        assert!(n > 0);
        got += n;
    }
    let raw = burst.join().unwrap();
    let after = segments_in(port);
    assert_eq!(got, 20_000);
    assert!(
        after - before <= 10,
        "{} segments for 100 messages (one write per message would be 100)",
        after - before
    );
    drop((raw, upstream));
}
