//! The start-up messages a new user meets, against the real binary: each says what to write
//! instead, in wssbridge's words, not a library's.

mod support;

use std::process::Command;

use support::binary::{fails, wssbridge};
use support::pki;

fn is_root() -> bool {
    let id = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&id.stdout).trim() == "0"
}

#[test]
fn an_address_without_a_port_and_a_port_without_a_host_say_what_to_write() {
    for (args, expected) in [
        (
            ["--listen", "0.0.0.0", "--to", "127.0.0.1:3000"],
            "'0.0.0.0' is an address without a port: write 0.0.0.0:443",
        ),
        (
            ["--listen", "::", "--to", "127.0.0.1:3000"],
            "'::' is an address without a port: write [::]:443",
        ),
        (
            ["--listen", ":8443", "--to", "3000"],
            "'3000' is a port without a host: write 127.0.0.1:3000",
        ),
    ] {
        let (code, stderr) = fails(&args);
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(stderr.starts_with("wssbridge: error: "), "{stderr}");
    }
}

#[test]
fn every_error_starts_with_wssbridge_error_clap_s_too() {
    for args in [
        &["--bogus"][..],
        &["--max-connections", "many"],
        &["--chekc"],
    ] {
        let (code, stderr) = fails(args);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.starts_with("wssbridge: error: "),
            "{args:?}: {stderr}"
        );
    }
    let (_, stderr) = fails(&["--chekc"]);
    assert!(stderr.contains("'--check'"), "{stderr}");
    let help = wssbridge().arg("--help").output().unwrap();
    assert!(help.status.success());
}

#[test]
fn a_key_that_does_not_match_and_swapped_files_are_named_plainly() {
    let pki = pki();
    let dir = support::temp_dir("keys");
    let other = dir.join("other.key");
    std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let (cert, key, other) = (
        pki.cert.display().to_string(),
        pki.key.display().to_string(),
        other.display().to_string(),
    );
    let (code, stderr) = fails(&["--to", "127.0.0.1:9", "--cert", &cert, "--key", &other]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(&format!(
            "--key {other} does not match the certificate in --cert {cert}"
        )),
        "{stderr}"
    );
    assert!(
        !stderr.contains("KeyMismatch") && !stderr.contains("consistent"),
        "{stderr}"
    );
    let (code, stderr) = fails(&["--to", "127.0.0.1:9", "--cert", &key, "--key", &cert]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(
            "the file holds a private key, not a certificate: were --cert and --key swapped?"
        ),
        "{stderr}"
    );
}

#[test]
fn days_are_a_unit() {
    let out = wssbridge()
        .args(["--check", "--idle-timeout", "1d", "--to", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, stderr) = fails(&["--idle-timeout", "1w", "--to", "127.0.0.1:9"]);
    assert!(stderr.contains("use ms, s, m, h or d"), "{stderr}");
}

/// Runs the binary as an unprivileged user when the test runs as root (CI), as itself
/// otherwise.
fn unprivileged(args: &[&str]) -> (i32, String) {
    let binary = env!("CARGO_BIN_EXE_wssbridge");
    let out = match is_root() {
        true => Command::new({
            support::require(&[("setpriv", "util-linux")]);
            "setpriv"
        })
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", binary])
        .args(args)
        .output()
        .expect("setpriv (util-linux)"),
        false => Command::new(binary).args(args).output().unwrap(),
    };
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().expect("exit code"), stderr)
}

#[test]
fn a_port_below_1024_as_a_normal_user_says_how_to_allow_it() {
    // A low port nothing listens on (found as root, or simply tried otherwise).
    let port = (900..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok() || !is_root())
        .unwrap();
    let listen = format!("127.0.0.1:{port}");
    let (code, stderr) = unprivileged(&["--listen", &listen, "--to", "127.0.0.1:9"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("--listen {listen}: cannot listen")),
        "{stderr}"
    );
    assert!(
        stderr.contains("needs CAP_NET_BIND_SERVICE")
            && stderr.contains("setcap 'cap_net_bind_service=+ep'")
            && stderr.contains("AmbientCapabilities"),
        "{stderr}"
    );
}

#[test]
fn an_unreadable_certificate_under_letsencrypt_points_at_the_recipe() {
    if !is_root() {
        eprintln!("skipped: needs root to make a file under /etc/letsencrypt (CI runs as root)");
        return;
    }
    let dir = std::path::PathBuf::from(format!(
        "/etc/letsencrypt/wssbridge-test-{}-{}",
        std::process::id(),
        support::peers_serial()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("privkey.pem");
    std::fs::copy(&pki().key, &key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cert = pki().cert.display().to_string();
    let (code, stderr) = unprivileged(&[
        "--check",
        "--to",
        "127.0.0.1:9",
        "--cert",
        &cert,
        "--key",
        key.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("cannot read")
            && stderr.contains("Certificates from Let's Encrypt under the unit"),
        "{stderr}"
    );
}
