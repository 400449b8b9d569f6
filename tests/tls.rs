//! TLS termination: versions, ALPN, session resumption, the served chain and every key form
//! `--key` promises to read.

mod support;

use std::process::Command;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use support::{
    Backend, RawTls, Tunnel, client_config_with, pki, status_of, tls_connect, tls_connect_with,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

fn client_with_versions(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_protocol_versions(versions)
        .with_root_certificates(support::roots())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_both_work() {
    let backend = Backend::http("ok").await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    for (version, expected) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut tls = tls_connect_with(tunnel.addr, client_with_versions(&[version]))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(expected));
        tls.write_all(GET).await.unwrap();
        assert_eq!(status_of(&support::read_to_close(&mut tls).await), 200);
    }
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_h2_lands_on_http11() {
    let backend = Backend::http("ok").await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    let tls = tls_connect_with(tunnel.addr, client_config_with(&[b"h2", b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(tls);
    // No ALPN at all is fine too (curl --no-alpn, old clients).
    let tls = tls_connect_with(tunnel.addr, client_config_with(&[]))
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    drop(tls);
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_resume_with_tls12_and_tls13() {
    let backend = Backend::http("ok").await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        // One config: its in-memory session store carries tickets from one connection to the next.
        let config = client_with_versions(&[version]);
        for round in 0..2 {
            let mut tls = tls_connect_with(tunnel.addr, config.clone()).await.unwrap();
            let kind = tls.get_ref().1.handshake_kind();
            tls.write_all(GET).await.unwrap();
            support::read_to_close(&mut tls).await;
            let expected = match round {
                0 => rustls::HandshakeKind::Full,
                _ => rustls::HandshakeKind::Resumed,
            };
            assert_eq!(kind, Some(expected), "{version:?} round {round}");
        }
    }
    tunnel.assert_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_with_its_intermediate_is_served() {
    let backend = Backend::http("ok").await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    // The client trusts only the root: the handshake succeeds only if the intermediate is sent.
    let tls = tls_connect(tunnel.addr).await;
    assert_eq!(tls.get_ref().1.peer_certificates().map(<[_]>::len), Some(2));
    drop(tls);
    tunnel.assert_idle().await;
}

/// A root and a leaf signed with `leaf_key`; returns (root, leaf PEM).
fn issue(leaf_key: &KeyPair) -> (CertificateDer<'static>, String) {
    let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = CertifiedIssuer::self_signed(root_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(leaf_key, &root)
        .unwrap();
    (root.der().clone(), leaf.pem())
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_promised_key_form_and_algorithm_serves() {
    let dir = pki().dir.join("keys");
    std::fs::create_dir_all(&dir).unwrap();
    let rsa_pkcs8 = String::from_utf8(openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
    ]))
    .unwrap();
    let cases: Vec<(&str, String)> = vec![
        (
            "p256",
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .unwrap()
                .serialize_pem(),
        ),
        (
            "p384",
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
                .unwrap()
                .serialize_pem(),
        ),
        (
            "ed25519",
            KeyPair::generate_for(&rcgen::PKCS_ED25519)
                .unwrap()
                .serialize_pem(),
        ),
        ("rsa", rsa_pkcs8),
    ];
    let backend = Backend::http("ok").await;
    for (name, pkcs8) in cases {
        let key = KeyPair::from_pem(&pkcs8).unwrap();
        let (root, leaf_pem) = issue(&key);
        let cert_path = dir.join(format!("{name}.crt"));
        std::fs::write(&cert_path, leaf_pem).unwrap();
        let pkcs8_path = dir.join(format!("{name}.pkcs8.key"));
        std::fs::write(&pkcs8_path, &pkcs8).unwrap();
        let mut forms = vec![("PKCS#8", pkcs8_path.clone())];
        if name != "ed25519" {
            // PKCS#1 for RSA, SEC1 for EC: openssl's "traditional" form.
            let traditional =
                openssl(&["pkey", "-in", pkcs8_path.to_str().unwrap(), "-traditional"]);
            let marker = if name == "rsa" {
                "BEGIN RSA PRIVATE KEY"
            } else {
                "BEGIN EC PRIVATE KEY"
            };
            assert!(String::from_utf8_lossy(&traditional).contains(marker));
            let path = dir.join(format!("{name}.trad.key"));
            std::fs::write(&path, traditional).unwrap();
            forms.push((if name == "rsa" { "PKCS#1" } else { "SEC1" }, path));
        }
        for (form, key_path) in forms {
            let tunnel =
                Tunnel::start_with_cert(&cert_path, &key_path, &["--to", &backend.address()]).await;
            let mut roots = rustls::RootCertStore::empty();
            roots.add(root.clone()).unwrap();
            let config = rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth();
            let tcp = TcpStream::connect(tunnel.addr).await.unwrap();
            let mut tls = TlsConnector::from(Arc::new(config))
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap_or_else(|e| panic!("{name} {form}: {e}"));
            tls.write_all(GET).await.unwrap();
            assert_eq!(
                status_of(&support::read_to_close(&mut tls).await),
                200,
                "{name} {form}"
            );
            drop(tls);
            tunnel.assert_idle().await;
        }
    }
}

/// A TLS 1.3 request sent with the client's Finished (as browsers and most clients do): the
/// session tickets come in the same write as the answer, not in one of their own, and they
/// still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_tickets_come_with_the_first_answer_and_resume() {
    let backend = Backend::http("ok").await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    let addr = tunnel.addr;
    let config = client_with_versions(&[&rustls::version::TLS13]);
    let resumed_config = config.clone();
    // The first read after the handshake brings the answer, not tickets alone.
    let first_read_had_answer = tokio::task::spawn_blocking(move || {
        let mut client = RawTls::connect(addr, config, GET);
        client.read_once().plaintext_bytes_to_read() > 0
    })
    .await
    .unwrap();
    assert!(
        first_read_had_answer,
        "something (the tickets) came before the answer, alone"
    );
    let mut tls = tls_connect_with(tunnel.addr, resumed_config).await.unwrap();
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    tls.write_all(GET).await.unwrap();
    assert_eq!(status_of(&support::read_to_close(&mut tls).await), 200);
    drop(tls);
    tunnel.assert_idle().await;
}

/// A TLS 1.3 client that has not sent a request yet (a browser's preconnect) gets its tickets
/// at once, not only once it asks for something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_tickets_reach_a_client_that_has_not_asked_yet() {
    let backend = Backend::http("ok").await;
    let tunnel = Tunnel::start(&["--to", &backend.address()]).await;
    let config = client_with_versions(&[&rustls::version::TLS13]);
    let mut idle = tls_connect_with(tunnel.addr, config.clone()).await.unwrap();
    // Reading lets rustls take in the tickets; nothing else is coming.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::io::AsyncReadExt::read(&mut idle, &mut buf),
    )
    .await;
    assert!(read.is_err(), "nothing but tickets was due: {read:?}");
    let tls = tls_connect_with(tunnel.addr, config).await.unwrap();
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the first connection never got its tickets"
    );
    drop((idle, tls));
    tunnel.assert_idle().await;
}

/// A handshake that fails still gets the alert that says why (here: the client offers only
/// RSA suites to an ECDSA certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handshake_gets_its_alert() {
    let tunnel = Tunnel::start(&["--to", "127.0.0.1:9"]).await;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites =
        vec![rustls::crypto::aws_lc_rs::cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256];
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(support::roots())
        .with_no_client_auth();
    let err = tls_connect_with(tunnel.addr, Arc::new(config))
        .await
        .expect_err("no suite in common");
    assert!(
        err.to_string().contains("HandshakeFailure"),
        "expected the server's handshake_failure alert, got: {err}"
    );
    tunnel.assert_idle().await;
}
