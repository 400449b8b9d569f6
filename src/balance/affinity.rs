//! `--balance cookie`: stickiness by a cookie the response sets, for clients that share an
//! address (an office, a carrier NAT) or change it mid-session (a phone leaving Wi-Fi), where
//! `ip-hash` fails socket.io's long-polling.
//!
//! The cookie's value names a backend without revealing its address: the first 12 bytes of
//! HMAC-SHA256(key, the backend as written), in unpadded base64url (16 characters). The key
//! is `--affinity-secret`, or a fixed one without it, so every instance with the same backend
//! list (and secret) gives the same value: shared-nothing, like `ip-hash`. A value that names
//! no backend of the route (forged, truncated, from a backend gone) is ignored: the request
//! is placed as one without a cookie, and gets a new one.
//!
//! The `Set-Cookie` line added to a response, byte for byte:
//! `Set-Cookie: NAME=VALUE; Path=PATH; Secure; HttpOnly; SameSite=Lax` (then `; Max-Age=N`
//! under `--affinity-max-age`), CRLF, where PATH is the route's path.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine;

/// The key without `--affinity-secret`: values are stable, but anyone can compute which
/// backend address a value names by trying addresses. A secret makes them opaque.
const DEFAULT_KEY: &[u8] = b"wssbridge affinity v1";

/// `SameSite` of the affinity cookie (`--affinity-samesite`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SameSite {
    #[default]
    Lax,
    Strict,
    /// For a page on another site than the socket.io endpoint (always with `Secure`).
    None,
}

impl FromStr for SameSite {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "lax" => Ok(SameSite::Lax),
            "strict" => Ok(SameSite::Strict),
            "none" => Ok(SameSite::None),
            other => Err(format!(
                "unknown SameSite '{other}' (use lax, strict or none)"
            )),
        }
    }
}

impl fmt::Display for SameSite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
            SameSite::None => "None",
        })
    }
}

/// The affinity cookie's name, key and attributes.
#[derive(Clone)]
pub struct Affinity {
    pub name: String,
    key: hmac::Key,
    pub same_site: SameSite,
    /// `Max-Age`; `None`: a session cookie, gone when the browser closes.
    pub max_age: Option<Duration>,
}

impl fmt::Debug for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Affinity")
            .field("name", &self.name)
            .field("same_site", &self.same_site)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

impl Default for Affinity {
    fn default() -> Self {
        Affinity::new("wssbridge", None, SameSite::Lax, None).expect("the default name")
    }
}

impl Affinity {
    /// Fails on a name that is not a cookie name (RFC 6265 §4.1.1: an HTTP token).
    pub fn new(
        name: &str,
        secret: Option<&str>,
        same_site: SameSite,
        max_age: Option<Duration>,
    ) -> Result<Affinity, String> {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(format!(
                "'{name}' is not a cookie name: letters, digits and !#$%&'*+-.^_`|~ only"
            ));
        }
        let key = secret.map_or(DEFAULT_KEY, str::as_bytes);
        Ok(Affinity {
            name: name.to_string(),
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            same_site,
            max_age,
        })
    }

    /// The cookie value naming `backend` (as written).
    pub fn value(&self, backend: &str) -> String {
        let tag = hmac::sign(&self.key, backend.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..12])
    }

    /// The header line (CRLF included) that gives a client `value` for the route at `path`.
    pub fn set_cookie(&self, value: &str, path: &str) -> Vec<u8> {
        // Whole seconds, rounded up: `Max-Age=0` would delete the cookie at once.
        let max_age = self.max_age.map_or(String::new(), |d| {
            format!("; Max-Age={}", d.as_millis().div_ceil(1000))
        });
        format!(
            "Set-Cookie: {}={value}; Path={path}; Secure; HttpOnly; SameSite={}{max_age}\r\n",
            self.name, self.same_site
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_opaque_stable_and_keyed() {
        let a = Affinity::default();
        let v = a.value("127.0.0.1:3001");
        assert_eq!(v.len(), 16);
        assert!(!v.contains("127"));
        assert_eq!(
            v,
            Affinity::default().value("127.0.0.1:3001"),
            "every instance agrees"
        );
        assert_ne!(v, a.value("127.0.0.1:3002"));
        let keyed = Affinity::new("wssbridge", Some("s3cret"), SameSite::Lax, None).unwrap();
        assert_ne!(v, keyed.value("127.0.0.1:3001"));
    }

    #[test]
    fn the_line_is_written_as_documented() {
        let a = Affinity::new(
            "sticky",
            None,
            SameSite::None,
            Some(Duration::from_secs(60)),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(a.set_cookie("abc", "/socket.io/")).unwrap(),
            "Set-Cookie: sticky=abc; Path=/socket.io/; Secure; HttpOnly; SameSite=None; \
             Max-Age=60\r\n"
        );
        assert!(Affinity::new("a b", None, SameSite::Lax, None).is_err());
        assert!(Affinity::new("a;b", None, SameSite::Lax, None).is_err());
    }
}
