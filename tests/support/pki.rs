//! A development PKI: root CA → intermediate CA → server certificate.
//!
//! Shared by the tests (a fresh one per test run) and by `make certs` (the `gencerts`
//! example), so the chain users try in a browser is the one the tests prove. The server
//! chain is served leaf first, then the intermediate; clients trust only the root, so every
//! test that connects also proves the intermediate is served.
#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

pub struct DevPki {
    /// The root certificate clients trust.
    pub root_pem: String,
    /// Server certificate then intermediate, as `--cert` takes it.
    pub chain_pem: String,
    /// The server key, PKCS#8 PEM, as `--key` takes it.
    pub key_pem: String,
}

/// Generates a chain for `names` (DNS names or IP addresses). ECDSA P-256 throughout.
pub fn generate(names: &[&str]) -> Result<DevPki, rcgen::Error> {
    let mut root_params = CertificateParams::new(Vec::<String>::new())?;
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params
        .distinguished_name
        .push(DnType::CommonName, "wssbridge development root CA");
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = CertifiedIssuer::self_signed(root_params, KeyPair::generate()?)?;

    let mut mid_params = CertificateParams::new(Vec::<String>::new())?;
    mid_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    mid_params
        .distinguished_name
        .push(DnType::CommonName, "wssbridge development intermediate CA");
    mid_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mid = CertifiedIssuer::signed_by(mid_params, KeyPair::generate()?, &root)?;

    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut leaf_params = CertificateParams::new(names)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "wssbridge development server");
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &mid)?;

    Ok(DevPki {
        root_pem: root.pem(),
        chain_pem: format!("{}{}", leaf.pem(), mid.pem()),
        key_pem: leaf_key.serialize_pem(),
    })
}
