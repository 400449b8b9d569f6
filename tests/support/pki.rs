//! A development PKI: root CA → intermediate CA → server certificate.
//!
//! A fresh one per test run, shaped as `make certs` (`certs/gen.sh`, which the end-to-end
//! suite and its browser use) writes them. The server chain is served leaf first, then the
//! intermediate; clients trust only the root, so every test that connects also proves the
//! intermediate is served.
#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SerialNumber,
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

/// A root and an intermediate that go on issuing: server certificates for any names (with a
/// chosen serial and validity), and client certificates.
pub struct Ca {
    /// The root certificate clients (or, for client certificates, `--client-ca`) trust.
    pub root_pem: String,
    mid: CertifiedIssuer<'static, KeyPair>,
}

/// One issued certificate: its chain (leaf first, then the intermediate), key and serial.
pub struct Leaf {
    pub chain_pem: String,
    pub key_pem: String,
    pub serial: u64,
}

impl Ca {
    pub fn new(name: &str) -> Result<Ca, rcgen::Error> {
        let mut root_params = CertificateParams::new(Vec::<String>::new())?;
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} root CA"));
        root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let root = CertifiedIssuer::self_signed(root_params, KeyPair::generate()?)?;
        let mut mid_params = CertificateParams::new(Vec::<String>::new())?;
        mid_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        mid_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} intermediate CA"));
        mid_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mid = CertifiedIssuer::signed_by(mid_params, KeyPair::generate()?, &root)?;
        Ok(Ca {
            root_pem: root.pem(),
            mid,
        })
    }

    /// A server certificate for `names`, valid for `days` from yesterday (negative: expired).
    pub fn server(&self, names: &[&str], serial: u64, days: i64) -> Result<Leaf, rcgen::Error> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "wssbridge test server");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, serial, days)
    }

    /// A client certificate for `name`.
    pub fn client(&self, name: &str, serial: u64) -> Result<Leaf, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, serial, 30)
    }

    fn issue(
        &self,
        mut params: CertificateParams,
        serial: u64,
        days: i64,
    ) -> Result<Leaf, rcgen::Error> {
        let now = std::time::SystemTime::now();
        let day = std::time::Duration::from_secs(86_400);
        let from = now - day * 2;
        let until = match days {
            d if d >= 0 => now + day * d as u32,
            d => now - day * (-d) as u32,
        };
        params.not_before = from.into();
        params.not_after = until.into();
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.mid)?;
        Ok(Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.mid.pem()),
            key_pem: key.serialize_pem(),
            serial,
        })
    }
}
