//! Binary upgrade on SIGUSR2, against the real binary: connections opened every few
//! milliseconds through five upgrades in a row are never refused or reset, WebSockets opened
//! before each upgrade keep echoing, a new binary that fails leaves the old one serving, and
//! a second SIGUSR2 during an upgrade is ignored.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::binary::{Running, field};
use support::{Backend, WAIT, pki, status_of};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The binary copied to `dir`, so a test can replace it as a package upgrade would.
fn copy_of_the_binary(dir: &std::path::Path) -> std::path::PathBuf {
    let exe = dir.join("wssbridge");
    std::fs::copy(env!("CARGO_BIN_EXE_wssbridge"), &exe).unwrap();
    exe
}

/// Replaces `exe` with a shell script (a new file: the running process keeps the old one).
fn replace_with_script(exe: &std::path::Path, script: &str) {
    let fresh = exe.with_extension("new");
    std::fs::write(&fresh, format!("#!/bin/sh\n{script}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&fresh, exe).unwrap();
}

fn start(exe: &std::path::Path, backend: &str, extra: &[&str]) -> Running {
    let pki = pki();
    let mut cmd = Command::new(exe);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--to",
        backend,
        "--shutdown-grace",
        "20s",
    ])
    .arg("--cert")
    .arg(&pki.cert)
    .arg("--key")
    .arg(&pki.key)
    .args(extra)
    .env_remove("RUST_LOG");
    Running::spawn(cmd)
}

fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
}

/// The pid of the process the `n`-th successful upgrade started, from the log.
async fn upgraded_pid(running: &Running, n: usize) -> u32 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready: Vec<String> = running
            .log()
            .into_iter()
            .filter(|l| l.contains("upgrade: the new process is ready"))
            .collect();
        if let Some(line) = ready.get(n) {
            return field(line, "pid").unwrap().parse().unwrap();
        }
        let log = running.log();
        let tail = &log[log.len().saturating_sub(15)..];
        assert!(
            tokio::time::Instant::now() < deadline,
            "no upgrade {n}: {tail:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_upgrades_refuse_no_connection_and_cut_no_websocket() {
    let http = Backend::http("app").await;
    let ws = Backend::ws_echo().await;
    let dir = support::temp_dir("upgrade");
    let exe = copy_of_the_binary(&dir);
    let running = start(
        &exe,
        &http.address(),
        &["--route", &format!("/ws={}", ws.address())],
    );
    let addr = running.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
    let clients = tokio::spawn(async move {
        let mut errors = Vec::new();
        while !s.load(Ordering::Relaxed) {
            let attempt = async {
                let mut tls = support::tls_connect_with(addr, support::client_config()).await?;
                tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .await?;
                let mut reply = Vec::new();
                tls.read_to_end(&mut reply).await?;
                std::io::Result::Ok(String::from_utf8_lossy(&reply).into_owned())
            };
            match tokio::time::timeout(WAIT, attempt).await {
                Ok(Ok(reply)) if reply.starts_with("HTTP/1.1 200") => {
                    o.fetch_add(1, Ordering::Relaxed);
                }
                other => {
                    f.fetch_add(1, Ordering::Relaxed);
                    errors.push(format!("{other:?}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        errors
    });
    let mut sockets = Vec::new();
    let mut pid = running.child.id();
    for n in 0..5 {
        let mut socket = ws_connect(addr).await;
        support::echo(&mut socket, "before").await;
        sockets.push(socket);
        kill(pid, "USR2");
        pid = upgraded_pid(&running, n).await;
        for (i, socket) in sockets.iter_mut().enumerate() {
            support::echo(socket, &format!("after upgrade {n}, socket {i}")).await;
        }
    }
    // The clients go on past the last upgrade: ten more connections served by the new
    // process, and more than 50 in all, before they stop.
    let after = ok.load(Ordering::Relaxed);
    let served = ok.clone();
    support::eventually("ten connections after the last upgrade, 51 in all", || {
        served.load(Ordering::Relaxed) >= (after + 10).max(51)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let errors = clients.await.unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        ok.load(Ordering::Relaxed) > 50,
        "only {} connections",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    drop(sockets);
    kill(pid, "KILL");
    // The old processes drained their WebSockets' grace; none is left after the sockets close.
    let deadline = tokio::time::Instant::now() + WAIT;
    while running
        .log()
        .iter()
        .filter(|l| l.contains("drained: all connections finished"))
        .count()
        < 5
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            running.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ws_connect(addr: std::net::SocketAddr) -> support::Ws {
    let tls = support::tls_connect(addr).await;
    let url = format!("wss://localhost:{}/ws", addr.port());
    tokio_tungstenite::client_async(url, tls)
        .await
        .expect("ws handshake")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_fails_leaves_the_old_one_serving() {
    let http = Backend::http("app").await;
    let dir = support::temp_dir("upgrade-fails");
    let exe = copy_of_the_binary(&dir);
    let running = start(&exe, &http.address(), &[]);
    replace_with_script(&exe, "echo 'not a good build' >&2; exit 3");
    running.signal("USR2");
    let line = running
        .wait_for_line(&["upgrade failed, still serving"])
        .await;
    assert!(line.contains("exit status: 3"), "{line}");
    // A new process that starts and refuses its configuration says why.
    replace_with_script(
        &exe,
        &format!(
            "exec {} \"$@\" --max-connections 0",
            env!("CARGO_BIN_EXE_wssbridge")
        ),
    );
    running.signal("USR2");
    let deadline = tokio::time::Instant::now() + WAIT;
    while running
        .log()
        .iter()
        .filter(|l| l.contains("upgrade failed"))
        .count()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            running.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = running.log().join("\n");
    assert!(
        log.contains("--max-connections must be at least 1"),
        "{log}"
    );
    let reply = support::exchange(
        running.addr,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&reply), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigusr2_during_an_upgrade_is_ignored() {
    let http = Backend::http("app").await;
    let dir = support::temp_dir("upgrade-twice");
    let exe = copy_of_the_binary(&dir);
    let running = start(&exe, &http.address(), &[]);
    replace_with_script(
        &exe,
        &format!("sleep 1; exec {} \"$@\"", env!("CARGO_BIN_EXE_wssbridge")),
    );
    running.signal("USR2");
    running
        .wait_for_line(&["upgrade: started the new process"])
        .await;
    running.signal("USR2");
    running
        .wait_for_line(&["SIGUSR2 during an upgrade: ignored"])
        .await;
    let pid = upgraded_pid(&running, 0).await;
    kill(pid, "KILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_an_upgrade_stops_the_new_process_and_does_not_wait_for_it() {
    let http = Backend::http("app").await;
    let dir = support::temp_dir("upgrade-abandoned");
    let exe = copy_of_the_binary(&dir);
    let mut running = start(&exe, &http.address(), &[]);
    replace_with_script(
        &exe,
        &format!("sleep 5; exec {} \"$@\"", env!("CARGO_BIN_EXE_wssbridge")),
    );
    running.signal("USR2");
    let line = running
        .wait_for_line(&["upgrade: started the new process"])
        .await;
    let child: u32 = field(&line, "pid").unwrap().parse().unwrap();
    let started = std::time::Instant::now();
    running.signal("TERM");
    assert!(running.wait().success());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    running
        .wait_for_line(&["shutdown began before the new process was ready"])
        .await;
    // Killed, it may stay a zombie for a moment until init, its new parent, reaps it.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let running_still = || {
        std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|s| !s.trim_start().starts_with('Z'))
        })
    };
    while running_still() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!running_still(), "the new process {child} is still running");
}

/// A local user who sends `READY=1` to where the new process reports cannot make the old one
/// drain while the new one fails: the report socket has no name to send to (a socketpair the
/// new process inherits), and reports are checked to come from the new process's pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_message_from_anyone_but_the_new_process_is_not_heard() {
    let http = Backend::http("app").await;
    let dir = support::temp_dir("upgrade-forged-ready");
    let exe = copy_of_the_binary(&dir);
    let running = start(&exe, &http.address(), &[]);
    let old = running.child.id();
    replace_with_script(&exe, "sleep 2; echo 'bad certificate' >&2; exit 3");
    running.signal("USR2");
    running
        .wait_for_line(&["upgrade: started the new process"])
        .await;
    // What an attacker tried: READY=1 to the names the old process used to bind, looped.
    let forger = std::thread::spawn(move || {
        use std::os::linux::net::SocketAddrExt;
        let socket = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_millis(2500);
        let mut sent = 0;
        while std::time::Instant::now() < deadline {
            for n in 0..4 {
                let name = format!("wssbridge-upgrade-{old}-{n}");
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
                sent += usize::from(socket.send_to_addr(b"READY=1", &addr).is_ok());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        sent
    });
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
    assert!(
        !unix.contains("wssbridge-upgrade"),
        "a named report socket exists: {unix}"
    );
    let line = running
        .wait_for_line(&["upgrade failed, still serving"])
        .await;
    assert!(line.contains("exit status: 3"), "{line}");
    assert_eq!(forger.join().unwrap(), 0, "no forged report was delivered");
    let reply = support::exchange(
        running.addr,
        b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&reply), 200, "the old process still serves");
    assert!(
        !running.log().iter().any(|l| l.contains("drain")),
        "{:?}",
        running.log()
    );
}

/// The new process says READY=1 once and keeps no way to reach the old one: no variable
/// naming a socket in its environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_process_keeps_no_report_address() {
    let http = Backend::http("app").await;
    let dir = support::temp_dir("upgrade-no-address");
    let exe = copy_of_the_binary(&dir);
    let running = start(&exe, &http.address(), &[]);
    running.signal("USR2");
    let pid = upgraded_pid(&running, 0).await;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("UPGRADE_NOTIFY"), "{environ}");
    assert!(
        environ.contains("LISTEN_FDNAMES=https.flags:upgrade"),
        "{environ}"
    );
    kill(pid, "TERM");
}

/// `--pid-file` names the serving process: written when ready, taken over by the new process
/// after SIGUSR2 (so `kill -USR2 $(cat PATH)` works again without systemd), removed when the
/// last one exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pid_file_follows_the_serving_process_across_an_upgrade() {
    let http = Backend::http("app").await;
    let dir = support::temp_dir("upgrade-pid-file");
    let exe = copy_of_the_binary(&dir);
    let pid_file = dir.join("run").join("wssbridge.pid");
    std::fs::create_dir_all(pid_file.parent().unwrap()).unwrap();
    let path = pid_file.display().to_string();
    let mut running = start(&exe, &http.address(), &["--pid-file", &path]);
    let read = || std::fs::read_to_string(&pid_file).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + WAIT;
    while read().trim() != running.child.id().to_string() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pid file: {:?}",
            read()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kill(read().trim().parse().unwrap(), "USR2");
    let new = upgraded_pid(&running, 0).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while read().trim() != new.to_string() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pid file: {:?}",
            read()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The old process exits and leaves the new one's file in place.
    assert!(running.wait().success());
    assert_eq!(read().trim(), new.to_string());
    kill(new, "TERM");
    let deadline = tokio::time::Instant::now() + WAIT;
    while pid_file.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the last process left its pid file"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, stderr) = support::binary::fails(&[
        "--pid-file",
        "/nonexistent/dir/wssbridge.pid",
        "--to",
        "127.0.0.1:9",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--pid-file /nonexistent/dir/wssbridge.pid"),
        "{stderr}"
    );
}
