//! Answers to ACME's TLS-ALPN-01 challenge (RFC 8737) on the TLS listeners.
//!
//! The CA connects to the name's port 443 and offers only the ALPN protocol `acme-tls/1`; the
//! answer is a self-signed certificate for the name carrying the SHA-256 digest of the key
//! authorization in its critical `acmeIdentifier` extension. The connection is closed once the
//! handshake is done: it is never routed, never answered with anything else.
//!
//! The key authorizations are files in the ACME state directory (written by `acme`), read at
//! each such handshake, so any instance sharing the directory answers, whichever the CA
//! reaches. A name with no answer there is refused.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::PrivateKeyDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::provider;

/// The ALPN protocol of TLS-ALPN-01.
pub const ACME_TLS_1: &[u8] = b"acme-tls/1";

/// Whether a ClientHello is an ACME validation: it offers `acme-tls/1`.
pub fn is_validation(hello: &ClientHello<'_>) -> bool {
    hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_1))
}

/// The server configuration that answers `name`'s challenge, from the answers in `dir`, or
/// `None` when there is none for it (or `name` could not be a file name there).
pub fn answer(dir: &Path, name: &str) -> Option<Arc<ServerConfig>> {
    if !is_dns_name(name) {
        return None;
    }
    let authorization = std::fs::read_to_string(dir.join(name)).ok()?;
    let digest =
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, authorization.trim().as_bytes());
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).ok()?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest.as_ref())];
    let key = rcgen::KeyPair::generate().ok()?;
    let cert = params.self_signed(&key).ok()?;
    let key = PrivateKeyDer::try_from(key.serialize_der()).ok()?;
    let provider = Arc::new(provider());
    let signer = provider.key_provider.load_private_key(key).ok()?;
    // Not `with_single_cert`: its key check parses the certificate with webpki, which
    // refuses the critical acmeIdentifier extension this certificate exists for.
    let certified = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Answer(certified)));
    config.alpn_protocols = vec![ACME_TLS_1.to_vec()];
    Some(Arc::new(config))
}

/// The one certificate of a validation handshake.
#[derive(Debug)]
struct Answer(Arc<CertifiedKey>);

impl ResolvesServerCert for Answer {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A DNS name that is safe as a file name: letters, digits, `-` and `.`, no `..`.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_dns_names_are_looked_up() {
        for good in ["chat.example.com", "a-b.test", "localhost"] {
            assert!(is_dns_name(good), "{good}");
        }
        for bad in [
            "",
            "../etc/passwd",
            "a/b",
            ".hidden",
            "a..b",
            "x\0y",
            "*.example.com",
        ] {
            assert!(!is_dns_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn an_answer_carries_the_digest_for_its_name() {
        let dir = std::env::temp_dir().join(format!("wssbridge-alpn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("chat.test"), "token.thumbprint\n").unwrap();
        assert!(answer(&dir, "chat.test").is_some());
        assert!(answer(&dir, "other.test").is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
