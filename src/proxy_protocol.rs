//! The PROXY protocol (HAProxy's, versions 1 and 2): reading the header a trusted load
//! balancer puts before a connection's first byte (`--accept-proxy-from`), and writing one to
//! a backend (`--send-proxy`, and the `LOCAL` header of health checks).
//!
//! [`parse`] is pure and incremental (`Ok(None)`: need more bytes) so it is tested on every
//! prefix of real headers and fuzzed; [`read`] is the thin async loop around it, bounded in
//! bytes (107 for v1 as the specification says, 16 + the 16-bit length for v2) and in time
//! by the caller. Bytes after the header (the TLS ClientHello, often in the same segment)
//! are returned to be read next.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the specification's bound).
pub const V1_MAX: usize = 107;
/// A v2 header's fixed part; its 16-bit length follows.
const V2_FIXED: usize = 16;

/// TLV types (specification §2.2.1–2.2.6).
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// In `PP2_TYPE_SSL`'s client field: the client connected over TLS, and presented a
/// certificate on this connection.
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;

/// Which version to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "v1" => Ok(Version::V1),
            "v2" => Ok(Version::V2),
            other => Err(format!(
                "unknown PROXY protocol version '{other}' (use v1 or v2)"
            )),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// What a received header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// A proxied connection: the client (`source`) and the address it connected to.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
        /// v2 TLVs, as (type, value), for whoever wants them.
        tlvs: Vec<(u8, Vec<u8>)>,
    },
    /// The balancer's own connection (a v2 `LOCAL`, or v1 `UNKNOWN`): no client address.
    Local,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Invalid(pub &'static str);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad PROXY header: {}", self.0)
    }
}

impl std::error::Error for Invalid {}

/// Parses a header at the start of `buf`: `Ok(Some((header, length)))`, `Ok(None)` when more
/// bytes are needed, `Err` when `buf` does not start with a valid header.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, Invalid> {
    let signature = &V2_SIGNATURE[..buf.len().min(V2_SIGNATURE.len())];
    if buf.starts_with(signature) && !buf.is_empty() && buf[0] == b'\r' {
        return parse_v2(buf);
    }
    let v1 = b"PROXY ";
    if buf.len() < v1.len() {
        return match v1.starts_with(buf) {
            true => Ok(None),
            false => Err(Invalid("no PROXY header")),
        };
    }
    if !buf.starts_with(v1) {
        return Err(Invalid("no PROXY header"));
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, Invalid> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return match buf.len() >= V1_MAX {
            true => Err(Invalid("v1 header longer than 107 bytes")),
            false => Ok(None),
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| Invalid("v1 header not ASCII"))?;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY"
    let header = match fields.next() {
        Some("UNKNOWN") => Header::Local,
        Some(family @ ("TCP4" | "TCP6")) => {
            let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
                fields.next(),
            ) else {
                return Err(Invalid("v1 header needs four addresses and ports"));
            };
            let ip = |s: &str| -> Result<IpAddr, Invalid> {
                let ip: IpAddr = s.parse().map_err(|_| Invalid("v1 address"))?;
                match (family, ip) {
                    ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_)) => Ok(ip),
                    _ => Err(Invalid("v1 address of the other family")),
                }
            };
            let port = |s: &str| -> Result<u16, Invalid> {
                if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Invalid("v1 port"));
                }
                s.parse().map_err(|_| Invalid("v1 port"))
            };
            Header::Proxied {
                source: SocketAddr::new(ip(src)?, port(sport)?),
                destination: SocketAddr::new(ip(dst)?, port(dport)?),
                tlvs: Vec::new(),
            }
        }
        _ => return Err(Invalid("v1 protocol other than TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Some((header, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, Invalid> {
    if buf.len() < V2_FIXED {
        return Ok(None);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(Invalid("v2 version"));
    }
    let length = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = V2_FIXED + length;
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[V2_FIXED..total];
    let header = match version_command & 0x0f {
        0x0 => Header::Local,
        0x1 => {
            let (source, destination, rest) = match buf[13] {
                0x11 if body.len() >= 12 => {
                    let ip = |b: &[u8]| IpAddr::from(<[u8; 4]>::try_from(b).unwrap_or_default());
                    (
                        SocketAddr::new(ip(&body[0..4]), u16::from_be_bytes([body[8], body[9]])),
                        SocketAddr::new(ip(&body[4..8]), u16::from_be_bytes([body[10], body[11]])),
                        &body[12..],
                    )
                }
                0x21 if body.len() >= 36 => {
                    let ip = |b: &[u8]| IpAddr::from(<[u8; 16]>::try_from(b).unwrap_or_default());
                    (
                        SocketAddr::new(ip(&body[0..16]), u16::from_be_bytes([body[32], body[33]])),
                        SocketAddr::new(
                            ip(&body[16..32]),
                            u16::from_be_bytes([body[34], body[35]]),
                        ),
                        &body[36..],
                    )
                }
                0x11 | 0x21 => return Err(Invalid("v2 addresses shorter than their family")),
                // UNSPEC or UNIX: no address to use; the connection is the balancer's own.
                0x00 | 0x31 | 0x32 => return Ok(Some((Header::Local, total))),
                _ => return Err(Invalid("v2 family")),
            };
            Header::Proxied {
                source,
                destination,
                tlvs: tlvs(rest)?,
            }
        }
        _ => return Err(Invalid("v2 command")),
    };
    Ok(Some((header, total)))
}

fn tlvs(mut rest: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, Invalid> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 3 {
            return Err(Invalid("v2 TLV cut short"));
        }
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
        let value = rest
            .get(3..3 + len)
            .ok_or(Invalid("v2 TLV longer than the header"))?;
        out.push((rest[0], value.to_vec()));
        rest = &rest[3 + len..];
    }
    Ok(out)
}

/// Reads a header from the start of `stream`; returns it with the bytes read after it.
/// Reads at most the header's bound; the caller bounds the time.
pub async fn read<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<(Header, Vec<u8>)> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 536];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        match parse(&buf) {
            Ok(Some((header, len))) => return Ok((header, buf.split_off(len))),
            Ok(None) => {}
            Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }
    }
}

/// What a header sent to a backend says of the client's connection.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub client: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// The TLS SNI, carried by v2 as `PP2_TYPE_AUTHORITY`.
    pub sni: Option<&'a str>,
    /// The TLS version (`TLSv1.3`), carried by v2 in `PP2_TYPE_SSL`.
    pub tls_version: Option<&'a str>,
    /// Whether the client presented a certificate (`--client-ca`) on this connection.
    pub client_cert: bool,
}

/// The header to write to a backend before any byte of the connection.
pub fn encode(version: Version, origin: &Origin<'_>) -> Vec<u8> {
    // Both ends of one family: an IPv4 client on an IPv6 listener is sent as mapped IPv6.
    let (client, local) = match (origin.client, origin.local) {
        (c @ SocketAddr::V4(_), l @ SocketAddr::V4(_)) => (c, l),
        (c, l) => (v6(c), v6(l)),
    };
    match version {
        Version::V1 => {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                local.ip(),
                client.port(),
                local.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let mut body = Vec::with_capacity(64);
            let family = match (client.ip(), local.ip()) {
                (IpAddr::V4(c), IpAddr::V4(l)) => {
                    body.extend_from_slice(&c.octets());
                    body.extend_from_slice(&l.octets());
                    0x11
                }
                (c, l) => {
                    body.extend_from_slice(&ipv6(c).octets());
                    body.extend_from_slice(&ipv6(l).octets());
                    0x21
                }
            };
            body.extend_from_slice(&client.port().to_be_bytes());
            body.extend_from_slice(&local.port().to_be_bytes());
            if let Some(sni) = origin.sni {
                tlv(&mut body, PP2_TYPE_AUTHORITY, sni.as_bytes());
            }
            let client = match origin.client_cert {
                true => PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN,
                false => PP2_CLIENT_SSL,
            };
            // The client byte, then `verify`: 0, the certificate (if any) was verified.
            let mut ssl = vec![client, 0, 0, 0, 0];
            if let Some(v) = origin.tls_version {
                tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, v.as_bytes());
            }
            tlv(&mut body, PP2_TYPE_SSL, &ssl);
            v2(0x21, family, &body)
        }
    }
}

/// A TLS version as OpenSSL and HAProxy name it (`TLSv1.3`), for `PP2_SUBTYPE_SSL_VERSION`.
pub fn tls_version(version: rustls::ProtocolVersion) -> &'static str {
    match version {
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
        _ => "TLS",
    }
}

/// What a health check sends first: v2 `LOCAL`, or v1 `UNKNOWN` (v1 has no `LOCAL`).
pub fn local(version: Version) -> Vec<u8> {
    match version {
        Version::V1 => b"PROXY UNKNOWN\r\n".to_vec(),
        Version::V2 => v2(0x20, 0x00, &[]),
    }
}

fn v2(version_command: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(V2_FIXED + body.len());
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(version_command);
    out.push(family);
    // A body is at most a few hundred bytes: addresses, an SNI name (≤ 255) and a version.
    out.extend_from_slice(&(body.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let value = &value[..value.len().min(usize::from(u16::MAX))];
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

fn v6(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(ipv6(addr.ip())), addr.port())
}

fn ipv6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A TLV's value by type, from a parsed header.
pub fn find(tlvs: &[(u8, Vec<u8>)], kind: u8) -> Option<&[u8]> {
    tlvs.iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v.as_slice())
}

/// The TLS version inside a `PP2_TYPE_SSL` value (after its client byte and 32-bit verify
/// field), if it carries one.
pub fn ssl_version(ssl: &[u8]) -> Option<String> {
    let nested = tlvs(ssl.get(5..)?).ok()?;
    let (_, version) = nested
        .into_iter()
        .find(|(k, _)| *k == PP2_SUBTYPE_SSL_VERSION)?;
    String::from_utf8(version).ok()
}

/// `PP2_TYPE_AUTHORITY` and `PP2_TYPE_SSL`, for readers of headers this module wrote.
pub const AUTHORITY: u8 = PP2_TYPE_AUTHORITY;
pub const SSL: u8 = PP2_TYPE_SSL;

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin<'static> {
        Origin {
            client: "127.0.0.7:40000".parse().unwrap(),
            local: "127.0.0.1:8443".parse().unwrap(),
            sni: Some("chat.example.com"),
            tls_version: Some("TLSv1.3"),
            client_cert: false,
        }
    }

    #[test]
    fn every_prefix_is_incomplete_then_the_whole_parses() {
        let v1 = encode(Version::V1, &origin());
        assert_eq!(v1, b"PROXY TCP4 127.0.0.7 127.0.0.1 40000 8443\r\n");
        let v2 = encode(Version::V2, &origin());
        let v6 = encode(
            Version::V2,
            &Origin {
                client: "[2001:db8::7]:40000".parse().unwrap(),
                local: "[::1]:8443".parse().unwrap(),
                sni: None,
                tls_version: None,
                client_cert: false,
            },
        );
        for whole in [&v1, &v2, &v6, &local(Version::V2), &local(Version::V1)] {
            let mut with_tls = whole.clone();
            with_tls.extend_from_slice(b"\x16\x03\x01");
            for i in 0..whole.len() {
                assert_eq!(parse(&whole[..i]), Ok(None), "prefix of {i} of {whole:?}");
            }
            let (_, len) = parse(&with_tls).unwrap().unwrap();
            assert_eq!(len, whole.len(), "the bytes after it are not its");
        }
        let Some((
            Header::Proxied {
                source,
                destination,
                tlvs,
            },
            _,
        )) = parse(&v2).unwrap()
        else {
            panic!("proxied");
        };
        assert_eq!(source, origin().client);
        assert_eq!(destination, origin().local);
        assert_eq!(find(&tlvs, AUTHORITY), Some(&b"chat.example.com"[..]));
        assert_eq!(
            ssl_version(find(&tlvs, SSL).unwrap()).as_deref(),
            Some("TLSv1.3")
        );
        assert_eq!(
            parse(&local(Version::V2)).unwrap().unwrap().0,
            Header::Local
        );
    }

    #[test]
    fn an_ipv4_client_on_an_ipv6_listener_is_sent_as_mapped_ipv6() {
        let mixed = Origin {
            client: "10.0.0.1:1".parse().unwrap(),
            local: "[::1]:2".parse().unwrap(),
            ..origin()
        };
        let v1 = String::from_utf8(encode(Version::V1, &mixed)).unwrap();
        assert_eq!(v1, "PROXY TCP6 ::ffff:10.0.0.1 ::1 1 2\r\n");
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY TCP4 ".to_vec(), vec![b'1'; 120]].concat();
        assert!(parse(&long).is_err(), "v1 is at most 107 bytes");
        let mut wrong_version = local(Version::V2);
        wrong_version[12] = 0x10;
        assert!(parse(&wrong_version).is_err());
        let mut short = encode(Version::V2, &origin());
        short[15] = 4; // claims 4 bytes: less than two IPv4 addresses and ports
        assert!(parse(&short).is_err());
    }
}
