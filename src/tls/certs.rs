//! Certificates: loading PEM files into keys rustls can serve, choosing one per handshake by
//! SNI, and the client CAs of `--client-ca`.
//!
//! A [`CertStore`] is built whole from its files or not at all: a key that does not match its
//! certificate, a file that cannot be read or holds no PEM fails the build, naming the file.
//! It is part of the configuration, so a reload builds a new one and swaps it in only once it
//! is complete.
//!
//! Choosing (as nginx and Caddy users expect): the certificate whose SAN DNS names contain
//! the SNI exactly, then one whose wildcard (`*.example.com`, exactly one label) matches it,
//! else the first pair given, which also serves clients that send no SNI.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;

/// One `--cert` file and the `--key` that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What the logs and metrics say of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The file it came from (`ephemeral` for a generated one).
    pub file: String,
    /// SAN DNS names (and IP addresses, for reading only: SNI never carries one).
    pub names: Vec<String>,
    pub issuer: String,
    /// The end of its validity, as Unix seconds.
    pub not_after: i64,
}

impl CertInfo {
    /// The expiry as an RFC 3339 date and time (UTC).
    pub fn expires(&self) -> String {
        rfc3339(self.not_after)
    }

    /// Seconds left until expiry (negative once expired).
    pub fn seconds_left(&self, now: SystemTime) -> i64 {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.not_after - now
    }
}

/// The certificates this configuration serves.
#[derive(Debug)]
pub struct CertStore {
    certs: Vec<Arc<CertifiedKey>>,
    infos: Vec<CertInfo>,
    /// Lower-case DNS name → the first certificate naming it.
    exact: HashMap<String, usize>,
    /// `example.com` for `*.example.com` → the first certificate with that wildcard.
    wildcard: HashMap<String, usize>,
    /// For a development certificate made at start: its SHA-256 fingerprint, to log.
    pub ephemeral: Option<String>,
}

impl CertStore {
    /// Loads every pair, checking that each key belongs to its certificate. The first pair is
    /// the default. A name claimed by two certificates goes to the first, with a warning.
    pub fn load(pairs: &[CertPaths]) -> anyhow::Result<CertStore> {
        if pairs.is_empty() {
            bail!("no certificate given");
        }
        let mut store = CertStore::empty();
        for paths in pairs {
            let key = load_pair(paths)?;
            let info = read_info(&key.cert[0], &paths.cert.display().to_string())?;
            store.add(key, info);
        }
        Ok(store)
    }

    /// The `--cert` pairs (which must load), then for each ACME name its certificate from the
    /// state directory, or, while it has none (or one that does not load: logged), a
    /// self-signed fallback for it. A name a `--cert` already covers is an error naming both.
    pub fn with_acme(
        pairs: &[CertPaths],
        acme: &[(String, CertPaths)],
    ) -> anyhow::Result<CertStore> {
        let mut store = CertStore::empty();
        for paths in pairs {
            let key = load_pair(paths)?;
            let info = read_info(&key.cert[0], &paths.cert.display().to_string())?;
            store.add(key, info);
        }
        for (name, _) in acme {
            if let Some(i) = store.find(name) {
                bail!(
                    "--acme {name} is also covered by --cert {}",
                    store.infos[i].file
                );
            }
        }
        for (name, paths) in acme {
            let loaded = load_pair(paths).and_then(|key| {
                let info = read_info(&key.cert[0], &paths.cert.display().to_string())?;
                Ok((key, info))
            });
            match loaded {
                Ok((key, info)) => store.add(key, info),
                Err(e) => {
                    if paths.cert.exists() {
                        tracing::warn!(name = %name, "acme: the stored certificate does not load: {e:#}");
                    }
                    let certified = rcgen::generate_simple_self_signed(vec![name.clone()])?;
                    let der = certified.cert.der().clone();
                    let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    let info = read_info(&der, &format!("acme fallback for {name} (self-signed)"))?;
                    store.add(CertifiedKey::from_der(vec![der], key, &provider())?, info);
                }
            }
        }
        Ok(store)
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
        let info = read_info(&der, "ephemeral")?;
        let key = CertifiedKey::from_der(vec![der.clone()], key, &provider())?;
        let mut store = CertStore::empty();
        store.add(key, info);
        store.ephemeral = Some(fingerprint(&der));
        Ok(store)
    }

    fn empty() -> CertStore {
        CertStore {
            certs: Vec::new(),
            infos: Vec::new(),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            ephemeral: None,
        }
    }

    fn add(&mut self, key: CertifiedKey, info: CertInfo) {
        let index = self.certs.len();
        for name in &info.names {
            let name = name.to_ascii_lowercase();
            let (map, key) = match name.strip_prefix("*.") {
                Some(parent) => (&mut self.wildcard, parent.to_string()),
                None => (&mut self.exact, name.clone()),
            };
            match map.get(&key) {
                Some(&first) if first != index => tracing::warn!(
                    name = %name,
                    serving = %self.infos[first].file,
                    ignored = %info.file,
                    "two certificates claim {name}: the first given serves it"
                ),
                Some(_) => {}
                None => {
                    map.insert(key, index);
                }
            }
        }
        self.certs.push(Arc::new(key));
        self.infos.push(info);
    }

    /// The certificate for a client that asked for `sni` (`None`: no SNI, or an unknown name
    /// that `strict` refuses).
    pub fn choose(&self, sni: Option<&str>, strict: bool) -> Option<Arc<CertifiedKey>> {
        let index = match sni {
            None => 0,
            Some(name) => match self.find(name) {
                Some(i) => i,
                None if strict => return None,
                None => 0,
            },
        };
        self.certs.get(index).cloned()
    }

    /// Whether some certificate names `sni` (exactly or by wildcard).
    pub fn knows(&self, sni: &str) -> bool {
        self.find(sni).is_some()
    }

    /// Whether the certificate served for `sni` covers `host` (lower-case, without port).
    pub fn served_covers(&self, sni: Option<&str>, host: &str) -> bool {
        let served = sni.and_then(|s| self.find(s)).unwrap_or(0);
        self.infos
            .get(served)
            .is_some_and(|info| info.names.iter().any(|n| name_matches(n, host)))
    }

    /// Every certificate, in the order given (the first is the default).
    pub fn infos(&self) -> &[CertInfo] {
        &self.infos
    }

    fn find(&self, sni: &str) -> Option<usize> {
        let name = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&name) {
            return Some(i);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).copied()
    }
}

/// A SAN name against a lower-case host: exact, or `*.parent` for exactly one more label.
fn name_matches(name: &str, host: &str) -> bool {
    let name = name.to_ascii_lowercase();
    match name.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => name == host,
    }
}

/// The client certificates `--client-ca` accepts.
#[derive(Debug)]
pub struct ClientCas {
    /// The CA files, for logs.
    pub files: Vec<PathBuf>,
    pub verifier: Arc<dyn ClientCertVerifier>,
}

impl ClientCas {
    /// Loads the CA certificates of `files`; with `optional`, clients without a certificate
    /// are let through (a bad one is still refused).
    pub fn load(files: &[PathBuf], optional: bool) -> anyhow::Result<ClientCas> {
        let mut roots = RootCertStore::empty();
        for file in files {
            let shown = file.display();
            let pem =
                std::fs::read(file).with_context(|| format!("--client-ca {shown}: cannot read"))?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("--client-ca {shown}: bad PEM"))?;
            if certs.is_empty() {
                bail!("--client-ca {shown}: no CERTIFICATE in the file");
            }
            for cert in certs {
                roots
                    .add(cert)
                    .with_context(|| format!("--client-ca {shown}: not a usable CA certificate"))?;
            }
        }
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider()));
        let builder = match optional {
            true => builder.allow_unauthenticated(),
            false => builder,
        };
        let verifier = builder
            .build()
            .context("--client-ca: cannot build a client verifier")?;
        Ok(ClientCas {
            files: files.to_vec(),
            verifier,
        })
    }
}

/// The crypto provider every TLS object here is built with: aws-lc-rs's suites, AES-128-GCM
/// first. The server picks from its own order (`ignore_client_order`), and AES-128-GCM is
/// what browsers ask for first and what Mozilla's "intermediate" profile puts first; with
/// rustls's default order (AES-256-GCM with SHA-384 first) new ECDSA connections measured
/// 0.88x per CPU-second (make bench, paired).
pub fn provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    // A stable sort: within each protocol version, AES-128-GCM ahead, the rest as they were.
    provider.cipher_suites.sort_by_key(|suite| {
        !matches!(
            suite.suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    provider
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
    let (key_file, cert_file) = (paths.key.display(), paths.cert.display());
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            anyhow::anyhow!("--key {key_file} does not match the certificate in --cert {cert_file}")
        }
        _ => anyhow::anyhow!(
            "--key {key_file}: not a key wssbridge can sign with (RSA, ECDSA P-256/P-384 or \
             Ed25519), for --cert {cert_file}"
        ),
    })
}

/// Reads a certificate or key file; an unreadable one under certbot's tree points at the
/// permissions recipe, the usual cause under the unit.
fn read_file(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        let shown = path.display();
        let hint = match (e.kind(), path.starts_with("/etc/letsencrypt")) {
            (std::io::ErrorKind::PermissionDenied, true) => {
                " (certbot keeps it readable by root only: see \"Certificates from Let's \
                 Encrypt under the unit\" in /usr/share/doc/wssbridge/operations.md, or \
                 docs/operations.md)"
            }
            _ => "",
        };
        anyhow::anyhow!("{flag} {shown}: cannot read: {e}{hint}")
    })
}

fn read_chain(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let shown = path.display();
    let pem = read_file("--cert", path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--cert {shown}: bad PEM"))?;
    if chain.is_empty() && PrivateKeyDer::from_pem_slice(&pem).is_ok() {
        bail!(
            "--cert {shown}: the file holds a private key, not a certificate: were --cert and --key swapped?"
        );
    }
    if chain.is_empty() {
        bail!("--cert {shown}: no CERTIFICATE in the file");
    }
    Ok(chain)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let shown = path.display();
    let pem = read_file("--key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow::anyhow!(
            "--key {shown}: no private key in the file (expected PKCS#8, PKCS#1 or SEC1 PEM)"
        ),
        e => anyhow::anyhow!("--key {shown}: bad PEM: {e}"),
    })
}

/// Names, issuer and expiry of the end-entity certificate.
fn read_info(der: &CertificateDer<'_>, file: &str) -> anyhow::Result<CertInfo> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("--cert {file}: cannot parse the certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) => names.push(n.to_string()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from(bytes) {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        file: file.to_string(),
        names,
        issuer: cert.issuer().to_string(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn ip_from(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (RFC 3339, UTC), by the `time` crate; a date
/// outside years 0 to 9999 (which RFC 3339 cannot write) as `@SECONDS`.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{unix}"))
}

/// How long before expiry the daily check starts warning.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_exactly_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(name_matches("Example.COM", "example.com"));
    }

    #[test]
    fn dates_print_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(rfc3339(67_247_884_800), "4101-01-01T00:00:00Z");
        assert_eq!(rfc3339(i64::MAX), format!("@{}", i64::MAX));
    }
}
