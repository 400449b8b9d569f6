//! Session tickets that survive the process (issue #43): two instances sharing a
//! `--ticket-keys` file resume each other's sessions, a rotation keeps the old tickets good,
//! a binary upgrade hands its own keys to the new process, and a key file that is malformed
//! or readable by others is refused at start (exit 2) and at a reload (the keys in force
//! stay). Against the real binary, with a rustls client that keeps its tickets.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::Resumption;
use support::binary::{Running, fails};
use support::{WAIT, tls_connect_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A client that keeps the tickets servers give it (rustls's in-memory store).
fn client() -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(support::roots())
        .with_no_client_auth();
    config.resumption = Resumption::in_memory_sessions(64);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// One request through `running` with `config`; whether its handshake resumed a session.
/// The answer is read whole, so the tickets the server sends after the handshake are kept.
async fn resumed(addr: std::net::SocketAddr, config: &Arc<rustls::ClientConfig>) -> bool {
    let mut tls = tokio::time::timeout(WAIT, tls_connect_with(addr, config.clone()))
        .await
        .expect("connect in time")
        .expect("TLS");
    let kind = tls.get_ref().1.handshake_kind();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut answer)).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    kind == Some(rustls::HandshakeKind::Resumed)
}

fn key_line(fill: u8) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode([fill; 80])
}

/// A key file of `lines`, mode 600.
fn key_file(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn start(backend: &str, extra: &[&str]) -> Running {
    let mut args = vec!["--listen", "127.0.0.1:0", "--to", backend];
    args.extend_from_slice(extra);
    Running::with_test_cert(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_a_key_file_resume_each_other_s_sessions() {
    let dir = support::temp_dir("tickets-fleet");
    let backend = support::Backend::http("app").await;
    let keys = key_file(&dir, "keys", &[key_line(1)]);
    let keys_flag = keys.display().to_string();
    let a = start(&backend.address(), &["--ticket-keys", &keys_flag]);
    let b = start(&backend.address(), &["--ticket-keys", &keys_flag]);
    let lone = start(&backend.address(), &[]);
    let config = client();
    assert!(
        !resumed(a.addr, &config).await,
        "the first handshake is full"
    );
    assert!(resumed(b.addr, &config).await, "b opens a's ticket");
    assert!(resumed(a.addr, &config).await, "and a opens b's");
    // An instance without the file cannot: the test above could fail.
    let fresh = client();
    assert!(!resumed(a.addr, &fresh).await);
    assert!(
        !resumed(lone.addr, &fresh).await,
        "lone does not open a's ticket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_keeps_old_tickets_good_and_a_bad_file_at_a_reload_changes_nothing() {
    let dir = support::temp_dir("tickets-rotate");
    let backend = support::Backend::http("app").await;
    let keys = key_file(&dir, "keys", &[key_line(1)]);
    let keys_flag = keys.display().to_string();
    let running = start(&backend.address(), &["--ticket-keys", &keys_flag]);
    let config = client();
    assert!(!resumed(running.addr, &config).await);
    // A new first line, the old one kept below it; read at the reload.
    key_file(&dir, "keys", &[key_line(2), key_line(1)]);
    running.signal("HUP");
    running.wait_for_line(&["reloaded"]).await;
    assert!(
        resumed(running.addr, &config).await,
        "the old key still opens"
    );
    // A malformed file at a reload: refused, named, and the keys in force stay.
    std::fs::write(&keys, "not a key\n").unwrap();
    running.signal("HUP");
    let line = running.wait_for_line(&["--ticket-keys", "line 1"]).await;
    assert!(line.contains(&keys_flag), "{line}");
    assert!(
        resumed(running.addr, &config).await,
        "the keys in force stay"
    );
    // The old key dropped: its tickets no longer open.
    key_file(&dir, "keys", &[key_line(3)]);
    running.signal("HUP");
    let fresh = client();
    assert!(!resumed(running.addr, &fresh).await);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let old_only = client();
    assert!(!resumed(running.addr, &old_only).await);
}

#[test]
fn a_key_file_others_may_read_or_a_malformed_one_is_refused_at_start() {
    let dir = support::temp_dir("tickets-refused");
    let open = key_file(&dir, "open", &[key_line(1)]);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let short = key_file(&dir, "short", &[key_line(1), "AAAA".into()]);
    let empty = key_file(&dir, "empty", &["# nothing yet".into()]);
    for (file, says) in [
        (&open, "mode 644"),
        (&short, "line 2: 3 bytes where a key is 80"),
        (&empty, "no key"),
    ] {
        let path = file.display().to_string();
        let (code, stderr) = fails(&[
            "--listen",
            "127.0.0.1:0",
            "--to",
            "127.0.0.1:9",
            "--ticket-keys",
            &path,
        ]);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains(&format!("--ticket-keys {path}")),
            "{stderr}"
        );
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_hands_its_keys_to_the_new_process() {
    let backend = support::Backend::http("app").await;
    let mut old = start(&backend.address(), &["--shutdown-grace", "1s"]);
    let config = client();
    assert!(!resumed(old.addr, &config).await);
    old.signal("USR2");
    let ready = old.wait_for_line(&["the new process is ready"]).await;
    let pid = support::binary::field(&ready, "pid").unwrap().to_string();
    // The old process drains and exits; what answers from now on is the new one.
    assert!(old.wait().success());
    let resumed_after = resumed(old.addr, &config).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(resumed_after, "a ticket from before the upgrade resumes");
}
