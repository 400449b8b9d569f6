//! The `tls` stage: the rustls server configuration and the handshake under a deadline.
//!
//! TLS 1.2 and 1.3 with rustls's default (aws-lc-rs) cipher suites; ALPN offers `http/1.1`
//! only, because a browser that negotiates h2 cannot send a WebSocket upgrade over it.
//! Session resumption is on, by stateful cache and by tickets.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Sessions remembered for stateful resumption; each is a few hundred bytes.
const SESSION_CACHE: usize = 4096;

/// Builds the server configuration from a PEM chain and key, checking that they belong together.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = read_chain(cert)?;
    let key_der = read_key(key)?;
    build(chain, key_der).with_context(|| {
        format!(
            "--key {} does not belong to --cert {} (or is not a usable key)",
            key.display(),
            cert.display()
        )
    })
}

/// A self-signed certificate for `localhost`, made at start for development; its fingerprint
/// is logged so a user can check what the browser shows.
pub fn ephemeral_server_config() -> anyhow::Result<Arc<ServerConfig>> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let certified = rcgen::generate_simple_self_signed(names)?;
    let der = certified.cert.der().clone();
    let fingerprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    let hex: Vec<String> = fingerprint
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    tracing::warn!(
        sha256 = %hex.join(":"),
        "no --cert/--key given: serving an ephemeral self-signed certificate for localhost; \
         browsers will warn. Use it for development only"
    );
    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    build(vec![der], key)
}

fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    Ok(Arc::new(config))
}

fn read_chain(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let shown = path.display();
    let pem = std::fs::read(path).with_context(|| format!("--cert {shown}: cannot read"))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--cert {shown}: bad PEM"))?;
    if chain.is_empty() {
        bail!("--cert {shown}: no CERTIFICATE in the file");
    }
    Ok(chain)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let shown = path.display();
    let pem = std::fs::read(path).with_context(|| format!("--key {shown}: cannot read"))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow::anyhow!(
            "--key {shown}: no private key in the file (expected PKCS#8, PKCS#1 or SEC1 PEM)"
        ),
        e => anyhow::anyhow!("--key {shown}: bad PEM: {e}"),
    })
}
