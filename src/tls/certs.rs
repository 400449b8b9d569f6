//! Certificates: loading PEM files into keys rustls can serve, and choosing one per handshake.
//!
//! A [`CertStore`] is built whole from its files or not at all: a key that does not match its
//! certificate, a file that cannot be read or holds no PEM fails the build, naming the file.
//! It is part of the configuration, so a reload builds a new one and swaps it in only once it
//! is complete.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// One `--cert` file and the `--key` that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The certificates this configuration serves.
#[derive(Debug)]
pub struct CertStore {
    certs: Vec<Arc<CertifiedKey>>,
    /// For a development certificate made at start: its SHA-256 fingerprint, to log.
    pub ephemeral: Option<String>,
}

impl CertStore {
    /// Loads every pair, checking that each key belongs to its certificate.
    pub fn load(pairs: &[CertPaths]) -> anyhow::Result<CertStore> {
        let certs = pairs
            .iter()
            .map(|p| load_pair(p).map(Arc::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if certs.is_empty() {
            bail!("no certificate given");
        }
        Ok(CertStore {
            certs,
            ephemeral: None,
        })
    }

    /// A self-signed certificate for `localhost`, made at start for development.
    pub fn ephemeral() -> anyhow::Result<CertStore> {
        let names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let certified = rcgen::generate_simple_self_signed(names)?;
        let der = certified.cert.der().clone();
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let key = CertifiedKey::from_der(vec![der.clone()], key, &provider())?;
        Ok(CertStore {
            certs: vec![Arc::new(key)],
            ephemeral: Some(fingerprint(&der)),
        })
    }

    /// The certificate to serve a client that asked for `sni`.
    pub fn choose(&self, _sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        self.certs.first().cloned()
    }
}

/// The crypto provider every TLS object here is built with.
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// SHA-256 of a certificate, as browsers show it (`AB:CD:...`).
pub fn fingerprint(der: &CertificateDer<'_>) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

fn load_pair(paths: &CertPaths) -> anyhow::Result<CertifiedKey> {
    let chain = read_chain(&paths.cert)?;
    let key = read_key(&paths.key)?;
    CertifiedKey::from_der(chain, key, &provider()).with_context(|| {
        format!(
            "--key {} does not belong to --cert {} (or is not a usable key)",
            paths.key.display(),
            paths.cert.display()
        )
    })
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
