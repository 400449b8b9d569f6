//! What a new user tripped on in the first five minutes, against the real binary: SIGHUP,
//! routes and listen addresses written the way people write them, `http://` backends, the
//! signal log lines, the order of start-up messages, and the demo backend's log outcome.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::binary::{Running, fails, field};
use support::{Backend, WAIT};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_never_ends_the_process() {
    let backend = Backend::http("app").await;
    // The ephemeral certificate too: a reload keeps the one browsers were told to accept.
    let running = Running::start(
        &["--listen", "127.0.0.1:0", "--to", &backend.address()],
        &[],
    );
    let before = served_fingerprint(running.addr).await;
    for _ in 0..3 {
        running.signal("HUP");
    }
    let line = running.wait_for_line(&["SIGHUP received"]).await;
    assert!(line.contains("INFO"), "{line}");
    running.wait_for_line(&["configuration reloaded"]).await;
    // The ephemeral certificate is not in the test root store: read it unverified.
    let after = served_fingerprint(running.addr).await;
    assert_eq!(
        after, before,
        "the same development certificate after reloads"
    );
    let mut running = running;
    assert!(running.child.try_wait().unwrap().is_none(), "still running");
}

async fn served_fingerprint(addr: SocketAddr) -> String {
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(support::insecure::AcceptAny))
        .with_no_client_auth();
    let tls = support::tls_connect_with(addr, std::sync::Arc::new(config))
        .await
        .unwrap();
    wssbridge::tls::certs::fingerprint(&tls.get_ref().1.peer_certificates().unwrap()[0])
}

#[test]
fn routes_must_start_with_a_slash_and_say_how_to_write_them() {
    for (route, hint) in [
        ("socket.io/=127.0.0.1:3000", "/socket.io/=127.0.0.1:3000"),
        ("ws/=127.0.0.1:3000", "/ws/=127.0.0.1:3000"),
        ("api=127.0.0.1:3000", "/api=127.0.0.1:3000"),
        ("example.com=127.0.0.1:3000", "example.com/=127.0.0.1:3000"),
    ] {
        let (code, stderr) = fails(&["--route", route]);
        assert_eq!(code, 2, "{route}: {stderr}");
        assert!(
            stderr.contains(&format!("write {hint}")),
            "{route}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_takes_a_port_alone_localhost_and_says_what_to_write_otherwise() {
    let backend = Backend::http("app").await;
    let port = support::peers::free_port();
    let port_only = port.to_string();
    let colon = format!(":{}", support::peers::free_port());
    let local = format!("localhost:{}", support::peers::free_port());
    for listen in [&port_only, &colon, &local] {
        let running = Running::with_test_cert(&["--listen", listen, "--to", &backend.address()]);
        let port: u16 = listen.rsplit(':').next().unwrap().parse().unwrap();
        let v4 = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(TcpStream::connect(v4).await.is_ok(), "{listen} on IPv4");
        let v6 = SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], port));
        let has_v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
        if has_v6 {
            assert!(TcpStream::connect(v6).await.is_ok(), "{listen} on IPv6 too");
        }
        if listen.starts_with("localhost") {
            let public = running.log().join("\n");
            assert!(
                !public.contains("0.0.0.0"),
                "localhost is loopback only: {public}"
            );
        }
    }
    let (code, stderr) = fails(&["--listen", "example.com:443", "--to", "127.0.0.1:9"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--listen") && stderr.contains(":443 or 443"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("invalid socket address syntax"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_ws_backends_mean_the_plain_backend() {
    let backend = Backend::http("app").await;
    for to in [
        format!("http://{}", backend.address()),
        format!("ws://{}/", backend.address()),
    ] {
        let running = Running::with_test_cert(&["--listen", "127.0.0.1:0", "--to", &to]);
        let reply = support::exchange(
            running.addr,
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(reply.ends_with("app"), "{to}: {reply}");
    }
    let (code, stderr) = fails(&["--to", "http://127.0.0.1:3000/api"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("paths are not rewritten"), "{stderr}");
    for tls in ["https://127.0.0.1:3000", "wss://127.0.0.1:3000"] {
        let (code, stderr) = fails(&["--route", &format!("/={tls}")]);
        assert_eq!(code, 2);
        assert!(stderr.contains("not TLS"), "{stderr}");
        assert!(!stderr.contains("brackets"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_line_names_the_signal_received() {
    let backend = Backend::http("app").await;
    let mut running =
        Running::with_test_cert(&["--listen", "127.0.0.1:0", "--to", &backend.address()]);
    running.signal("TERM");
    let line = running.wait_for_line(&["received: shutting down"]).await;
    assert!(line.contains("SIGTERM received"), "{line}");
    assert!(!line.contains("SIGINT"), "{line}");
    assert!(running.wait().success());

    let mut running =
        Running::with_test_cert(&["--listen", "127.0.0.1:0", "--to", &backend.address()]);
    running.signal("INT");
    let line = running.wait_for_line(&["received: shutting down"]).await;
    assert!(line.contains("SIGINT received"), "{line}");
    assert!(line.contains("a second SIGINT exits at once"), "{line}");
    assert!(running.wait().success());
}

#[test]
fn a_start_up_failure_comes_before_the_development_certificate_warning() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = fails(&["--listen", &addr, "--to", "127.0.0.1:3000"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("in use"), "{stderr}");
    assert!(
        !stderr.contains("ephemeral"),
        "warned before failing: {stderr}"
    );
    // Started, it does warn, once it listens.
    let running = Running::start(&["--listen", "127.0.0.1:0", "--to", "127.0.0.1:3000"], &[]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let warning = runtime.block_on(running.wait_for_line(&["ephemeral self-signed"]));
    let log = running.log();
    let listening = log.iter().position(|l| l.contains("listening")).unwrap();
    let warned = log.iter().position(|l| *l == warning).unwrap();
    assert!(listening < warned, "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_backend_s_page_loads_are_logged_as_http_closed() {
    // examples/chat (package wssbridge-chat), built beside the binary by `make unit`'s
    // `cargo nextest run --workspace`.
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_wssbridge"));
    let chat = exe.parent().unwrap().join("chat");
    assert!(
        chat.exists(),
        "build the demo backend: cargo build -p wssbridge-chat (make unit does)"
    );
    let port = support::peers::free_port();
    let backend = format!("127.0.0.1:{port}");
    let child = std::process::Command::new(&chat)
        .arg(&backend)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = KillOnDrop(child);
    let deadline = std::time::Instant::now() + WAIT;
    while TcpStream::connect(&backend).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "chat never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let running = Running::with_test_cert(&["--listen", "127.0.0.1:0", "--to", &backend]);
    for _ in 0..5 {
        // A browser's page load: keep-alive, and it closes when done.
        let mut tls = support::tls_connect(running.addr).await;
        use tokio::io::AsyncWriteExt;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let page = support::read_to_close(&mut tls).await;
        assert!(
            page.contains("<html") || page.contains("<!doctype"),
            "{page}"
        );
    }
    let line = running.wait_for_line(&["connection", "path=\"/\""]).await;
    assert_eq!(field(&line, "outcome"), Some("http"), "{line}");
    assert!(line.contains("outcome=http closed "), "{line}");
    assert!(
        !running.log().iter().any(|l| l.contains("aborted")),
        "{:?}",
        running.log()
    );
    drop(child);

    // The backend's port taken: the chat says so, naming what to do.
    let out = std::process::Command::new(&chat)
        .arg(running.addr.to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("cannot listen") && said.contains("DEMO_BACKEND"),
        "{said}"
    );
}

/// A child process killed when the test ends, even by a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_missing_tool_is_named_with_its_package_in_one_line() {
    let caught = std::panic::catch_unwind(|| {
        support::require(&[
            ("sh", "dash"),
            ("wssbridge-no-such-tool", "no-such-package"),
        ])
    });
    let message = caught.expect_err("a missing program fails the test");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        message,
        "this test needs wssbridge-no-such-tool: apt-get install no-such-package \
         (.ci/run installs it)"
    );
}

/// `--redirect-http` takes every form `--listen` takes, through the same parser: the README's
/// ACME one-liner, `/etc/default/wssbridge` and `-h` write `:80`.
#[tokio::test]
async fn redirect_http_takes_every_form_listen_takes() {
    let backend = Backend::http("app").await;
    let tls = support::peers::free_port().to_string();
    for form in [
        format!(":{}", support::peers::free_port()),
        support::peers::free_port().to_string(),
        format!("localhost:{}", support::peers::free_port()),
        format!("127.0.0.1:{}", support::peers::free_port()),
    ] {
        let running = Running::with_test_cert(&[
            "--listen",
            &tls,
            "--redirect-http",
            &form,
            "--to",
            &backend.address(),
        ]);
        let port: u16 = form.rsplit(':').next().unwrap().parse().unwrap();
        let mut tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .unwrap_or_else(|e| panic!("--redirect-http {form}: {e}"));
        tcp.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let reply = support::read_to_close(&mut tcp).await;
        assert!(reply.starts_with("HTTP/1.1 308"), "{form}: {reply}");
        drop(running);
    }
    let (code, stderr) = fails(&[
        "--check",
        "--redirect-http",
        "[::]:80",
        "--to",
        "127.0.0.1:9",
    ]);
    assert_eq!(code, 0, "{stderr}");
}

/// The same address in two listeners is named at `--check` and at start, both flags, not
/// "Address already in use" as if someone else held it.
#[test]
fn the_same_address_twice_is_refused_naming_both_flags() {
    for args in [
        &["--listen", ":8443", "--redirect-http", ":8443"][..],
        &["--listen", "0.0.0.0:8443", "--listen", "127.0.0.1:8443"],
        &["--listen", ":8443", "--admin", "127.0.0.1:8443"],
    ] {
        for check in [true, false] {
            let mut all = args.to_vec();
            all.extend_from_slice(&["--to", "127.0.0.1:9"]);
            if check {
                all.push("--check");
            }
            let (code, stderr) = fails(&all);
            assert_eq!(code, 2, "{args:?}: {stderr}");
            assert!(
                stderr.contains("are the same address") && stderr.contains(args[0]),
                "{args:?}: {stderr}"
            );
            assert!(!stderr.contains("already in use"), "{stderr}");
        }
    }
}

/// `--check` catches what an ACME CA would refuse minutes later: an IP address for a name,
/// a directory that is not https://, an e-mail that is not one. Each names its flag.
#[test]
fn check_catches_what_the_acme_ca_would_refuse_later() {
    let state = support::temp_dir("acme-check");
    let state = state.display().to_string();
    let base = ["--check", "--to", "127.0.0.1:9", "--acme-state", &state];
    for (extra, says) in [
        (
            &["--acme", "203.0.113.7"][..],
            "--acme 203.0.113.7: an IP address",
        ),
        (
            &[
                "--acme",
                "chat.example.com",
                "--acme-directory",
                "http://ca.example/dir",
            ],
            "--acme-directory http://ca.example/dir: an ACME directory is served over https://",
        ),
        (
            &[
                "--acme",
                "chat.example.com",
                "--acme-email",
                "not-an-address",
            ],
            "--acme-email not-an-address: not an e-mail address",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let (code, stderr) = fails(&args);
        assert_eq!(code, 2, "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
    }
    let mut good = base.to_vec();
    good.extend_from_slice(&[
        "--acme",
        "chat.example.com",
        "--acme-email",
        "ops@example.com",
    ]);
    let (code, stderr) = fails(&good);
    assert_eq!(code, 0, "{stderr}");
}
