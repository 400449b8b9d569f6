//! `--flags-file`: the command line's flags from a file, one per line, read again by SIGHUP
//! (a new serving config for new connections; nothing live closed), checked by `--check`,
//! and read anew by the process a SIGUSR2 starts. Against the real binary.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use support::binary::{Running, wssbridge};
use support::peers::free_port;
use support::{Backend, echo, exchange, status_of};

fn write(path: &Path, text: &str) {
    // Renamed into place, as an editor or a config manager writes it.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write flags");
    std::fs::rename(&tmp, path).expect("rename flags");
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let response = exchange(addr, request.as_bytes()).await;
    let body = response.rsplit("\r\n\r\n").next().unwrap_or("").to_string();
    (status_of(&response), body)
}

async fn metric(admin: SocketAddr, series: &str) -> String {
    let (_, _, body) = support::admin_get(admin, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("no {series} in {body}"))
        .to_string()
}

/// How many "configuration reloaded" or "reload failed" lines the log has.
fn reloads(running: &Running) -> usize {
    running
        .log()
        .iter()
        .filter(|l| l.contains("configuration reloaded") || l.contains("reload failed"))
        .count()
}

async fn sighup(running: &Running) {
    let before = reloads(running);
    running.signal("HUP");
    support::eventually("the reload's outcome in the log", || {
        reloads(running) > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_file_under_live_websockets_and_a_bad_line_changes_nothing() {
    let ws = Backend::ws_echo().await;
    let app = Backend::http("new route").await;
    let dir = support::temp_dir("flags-reload");
    let file = dir.join("flags");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let base = format!(
        "# wssbridge\n--listen 127.0.0.1:0\n--admin {admin}\n--route \"/={}\"  # the WebSockets\n",
        ws.address()
    );
    write(&file, &base);
    let running = Running::with_test_cert(&["--flags-file", file.to_str().unwrap()]);
    let addr = running.addr;

    let mut live = Vec::new();
    for i in 0..200 {
        let mut socket = support::ws_connect(addr).await;
        echo(&mut socket, &format!("hello {i}")).await;
        live.push(socket);
    }
    // A steady stream of new connections while the file is read again.
    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicUsize::new(0));
    let stream = {
        let (stop, made) = (stop.clone(), made.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut socket = support::ws_connect(addr).await;
                echo(&mut socket, "new").await;
                made.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let with_route = format!("{base}--route /new/={}\n", app.address());
    write(&file, &with_route);
    sighup(&running).await;
    running
        .wait_for_line(&["configuration reloaded", "generation=2"])
        .await;
    assert_eq!(
        get(addr, "/new/").await,
        (200, "new route".to_string()),
        "the new route answers at once"
    );
    let (_, _, status) = support::admin_get(admin, "/status.json").await;
    assert!(status.contains("\"generation\":2"), "{status}");
    assert!(
        status.contains(&format!("\"flags_file\":\"{}\"", file.display())),
        "{status}"
    );

    // A line that is not a flag: nothing changes, the log names the line, the metric counts.
    write(&file, &format!("{with_route}--route /bad=nowhere\n"));
    sighup(&running).await;
    let line = running.wait_for_line(&["reload failed"]).await;
    assert!(
        line.contains(&format!("{} line 6", file.display())),
        "{line}"
    );
    assert!(line.contains("needs a port"), "{line}");
    assert_eq!(get(addr, "/new/").await.0, 200, "the old config goes on");
    assert!(
        metric(admin, "wssbridge_config_reloads_total{result=\"failure\"}")
            .await
            .ends_with(" 1")
    );

    // A flag only a restart can change is named; the rest of the file is applied.
    write(
        &file,
        &format!(
            "{with_route}--max-connections 5000\n--route /later/={}\n",
            app.address()
        ),
    );
    sighup(&running).await;
    running
        .wait_for_line(&[
            "--max-connections changed in the flags file",
            "(SIGUSR2) or a restart",
        ])
        .await;
    assert_eq!(get(addr, "/later/").await.0, 200);

    stop.store(true, Ordering::Relaxed);
    stream.await.expect("no new connection failed");
    assert!(made.load(Ordering::Relaxed) > 0);
    for (i, socket) in live.iter_mut().enumerate() {
        echo(socket, &format!("still here {i}")).await;
    }
    // Every one of the 200 still open, and the stream's own closed: the count settles at 200.
    let deadline = tokio::time::Instant::now() + support::WAIT;
    loop {
        let now = metric(admin, "wssbridge_websockets_active").await;
        if now == "wssbridge_websockets_active 200" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn check_reads_the_file_with_the_command_line_and_names_a_bad_line() {
    let backend = "127.0.0.1:9";
    let dir = support::temp_dir("flags-check");
    let file = dir.join("flags");
    let pki = support::pki();
    write(
        &file,
        &format!(
            "--cert {}\n--key {}\n--route /a/={backend}\n--to 127.0.0.1:7\n",
            pki.cert.display(),
            pki.key.display()
        ),
    );
    let out = wssbridge()
        .args(["--check", "--flags-file", file.to_str().unwrap()])
        .args(["--route", "/b/=127.0.0.1:8", "--to", "127.0.0.1:6"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    // Repeatable flags add up; a single flag on the command line wins, and says so.
    assert!(
        stdout.contains("route       /a/  -> 127.0.0.1:9"),
        "{stdout}"
    );
    assert!(
        stdout.contains("route       /b/  -> 127.0.0.1:8"),
        "{stdout}"
    );
    assert!(stdout.contains("route       /  -> 127.0.0.1:6"), "{stdout}");
    assert!(
        stderr.contains("line 4: its --to is overridden by the command line's"),
        "{stderr}"
    );

    // The same file through the environment.
    let out = wssbridge()
        .args(["--check"])
        .env("WSSBRIDGE_FLAGS_FILE", &file)
        .output()
        .expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("-> 127.0.0.1:7"));

    // The log level is one setting: the command line's -q wins over the file's -v.
    write(&file, "-v\n--to 127.0.0.1:3000\n");
    let out = wssbridge()
        .args(["--check", "-q", "--flags-file", file.to_str().unwrap()])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A single-valued flag twice on the command line is still clap's error.
    let out = wssbridge()
        .args(["--check", "--flags-file", file.to_str().unwrap()])
        .args(["--connect-timeout", "1s", "--connect-timeout", "2s"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));

    for (text, says) in [
        (
            "--to 127.0.0.1:3000\n# the app\n--to 127.0.0.1:3001\n",
            "line 3: --to is given again (line 1 has it)",
        ),
        (
            "--to 127.0.0.1:3000\n\n--listen :443 --to x\n",
            "line 3: '--listen :443 --to x': one flag per line",
        ),
        (
            "--to 127.0.0.1:3000\n--health-timeout 5\n",
            "line 2: invalid value '5' for '--health-timeout",
        ),
        (
            "--to 127.0.0.1:3000\n--nope\n",
            "line 2: unexpected argument '--nope'",
        ),
        (
            "to 127.0.0.1:3000\n",
            "line 1: 'to 127.0.0.1:3000' is not a flag",
        ),
    ] {
        write(&file, text);
        let out = wssbridge()
            .args(["--check", "--flags-file", file.to_str().unwrap()])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {stderr}");
        assert!(
            stderr.contains(&format!("{} {says}", file.display())),
            "{text}: {stderr}"
        );
    }
    let out = wssbridge()
        .args(["--check", "--flags-file", "/nonexistent/flags"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--flags-file /nonexistent/flags"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_the_new_process_from_the_file_as_it_is_now() {
    let app = Backend::http("app").await;
    let dir = support::temp_dir("flags-upgrade");
    let file = dir.join("flags");
    let (first, second, admin) = (free_port(), free_port(), free_port());
    write(
        &file,
        &format!(
            "--listen 127.0.0.1:{first}\n--admin 127.0.0.1:{admin}\n--to {}\n",
            app.address()
        ),
    );
    let mut running = Running::with_test_cert(&["--flags-file", file.to_str().unwrap()]);
    assert_eq!(get(running.addr, "/").await.0, 200);
    write(
        &file,
        &format!("--listen 127.0.0.1:{second}\n--to {}\n", app.address()),
    );
    running.signal("USR2");
    let ready = running
        .wait_for_line(&["upgrade: the new process is ready"])
        .await;
    let pid: u32 = support::binary::field(&ready, "pid")
        .expect("pid")
        .parse()
        .expect("pid number");
    // The new process's own stop, whatever happens below.
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.0.to_string()])
                .status();
        }
    }
    let _new = Kill(pid);
    let moved = SocketAddr::from(([127, 0, 0, 1], second));
    assert_eq!(get(moved, "/").await.0, 200, "the new listener serves");
    let closed = |port: u16| {
        std::net::TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(200),
        )
        .is_err()
    };
    support::eventually("the old listener closed", || closed(first)).await;
    support::eventually("the --admin the file dropped closed", || closed(admin)).await;
    let _ = running.wait();
}
