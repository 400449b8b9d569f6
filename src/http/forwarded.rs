//! `--add-forwarded`: the client's address for the app, in every request head forwarded (the
//! upgrade request and every request of a keep-alive connection).
//!
//! Byte by byte, a head becomes: the request line as received; every header line as
//! received, in its order, except the four below; then, at the end of the head (just before
//! its blank line), in this order:
//!
//! ```text
//! X-Forwarded-For: CLIENT
//! X-Forwarded-Proto: https
//! X-Real-IP: CLIENT
//! Forwarded: for=CLIENT;proto=https
//! ```
//!
//! CLIENT is the client's address (from the PROXY header when there is one); in `Forwarded`
//! an IPv6 address is quoted and bracketed (`for="[2001:db8::1]"`, RFC 7239 §6). Any of the
//! four the client sent are removed, so a client cannot choose the address the app sees, and
//! so are its `X-Forwarded-Host` and `X-Forwarded-Port`, and any spelling of these six with
//! `_` for `-` (`X_Forwarded_For`: CGI, WSGI and PHP read it as the real header).
//! From an address in `--trust-forwarded` (a proxy in front), the client's `X-Forwarded-For`
//! and `Forwarded` values are kept, in order, each in one line, with CLIENT appended
//! (`X-Forwarded-For: 203.0.113.9, 10.0.0.2`), as nginx's `$proxy_add_x_forwarded_for` does,
//! and its `X-Forwarded-Host` and `X-Forwarded-Port` lines are kept where they were;
//! underscore spellings are removed from it too.

use std::net::IpAddr;

use crate::splice::Preread;

/// Who the forwarded headers name, and whether what the client says of its own origin counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarding {
    pub client: IpAddr,
    pub trusted: bool,
}

/// Appends `head` (a complete request head with CRLF line endings, as `head::parse` accepts)
/// to `out` with the forwarding headers set as this module describes.
pub fn rewrite(head: &[u8], fwd: &Forwarding, out: &mut Vec<u8>) {
    let client = fwd.client.to_canonical();
    let mut xff: Vec<&[u8]> = Vec::new();
    let mut forwarded: Vec<&[u8]> = Vec::new();
    out.reserve(head.len() + 128);
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    if let Some(request_line) = lines.next() {
        out.extend_from_slice(request_line);
        out.extend_from_slice(b"\r\n");
    }
    for line in lines.take_while(|l| !l.is_empty()) {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        let value = || trim(&line[(name.len() + 1).min(line.len())..]);
        match owned(name) {
            Some(Owned::For) if fwd.trusted => xff.push(value()),
            Some(Owned::Forwarded) if fwd.trusted => forwarded.push(value()),
            Some(Owned::HostOrPort) if fwd.trusted => {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            Some(_) => {}
            None => {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    let node = match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    out.extend_from_slice(b"X-Forwarded-For: ");
    for earlier in xff.iter().filter(|v| !v.is_empty()) {
        out.extend_from_slice(earlier);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client.to_string().as_bytes());
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: https\r\nX-Real-IP: ");
    out.extend_from_slice(client.to_string().as_bytes());
    out.extend_from_slice(b"\r\nForwarded: ");
    for earlier in forwarded.iter().filter(|v| !v.is_empty()) {
        out.extend_from_slice(earlier);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(format!("for={node};proto=https\r\n\r\n").as_bytes());
}

/// The headers this module owns, by what becomes of a client's copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owned {
    /// `X-Forwarded-For`: kept and extended from a trusted proxy.
    For,
    /// `Forwarded`: the same.
    Forwarded,
    /// `X-Forwarded-Host`, `X-Forwarded-Port`: kept as they came from a trusted proxy.
    HostOrPort,
    /// `X-Forwarded-Proto`, `X-Real-IP`, and any underscore spelling: always removed.
    Ours,
}

/// Whether `name` is a header this module owns. An underscore spelling (`X_Forwarded_For`) is
/// removed whoever sent it: CGI, WSGI and PHP map `_` to `-`, so the app would read it as the
/// real header (nginx drops such headers by default for the same reason).
fn owned(name: &[u8]) -> Option<Owned> {
    const NAMES: [(&[u8], Owned); 6] = [
        (b"x-forwarded-for", Owned::For),
        (b"forwarded", Owned::Forwarded),
        (b"x-forwarded-host", Owned::HostOrPort),
        (b"x-forwarded-port", Owned::HostOrPort),
        (b"x-forwarded-proto", Owned::Ours),
        (b"x-real-ip", Owned::Ours),
    ];
    let same = |ours: &[u8]| {
        ours.len() == name.len()
            && ours
                .iter()
                .zip(name)
                .all(|(&o, &n)| o == n.to_ascii_lowercase() || (o == b'-' && n == b'_'))
    };
    let (_, kind) = NAMES.iter().find(|(ours, _)| same(ours))?;
    match name.contains(&b'_') {
        true => Some(Owned::Ours),
        false => Some(*kind),
    }
}

/// What goes to the backend before the splice copies: `header` (a PROXY header, not the
/// client's bytes), the first request head (`buf[..head_len]`) rewritten when `forwarding`
/// asks, and whatever the client sent after the head, which the exchange still frames.
pub fn preread(
    header: Vec<u8>,
    mut buf: Vec<u8>,
    head_len: usize,
    forwarding: Option<&Forwarding>,
) -> Preread {
    let uncounted = header.len();
    let held = buf.split_off(head_len);
    let first = match forwarding {
        Some(fwd) => {
            let mut first = header;
            rewrite(&buf, fwd, &mut first);
            first
        }
        // The head's own buffer, when nothing comes before it: no copy.
        None if header.is_empty() => buf,
        None => [header, buf].concat(),
    };
    Preread {
        first,
        uncounted,
        held,
    }
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &value[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(head: &str, client: &str, trusted: bool) -> String {
        let fwd = Forwarding {
            client: client.parse().unwrap(),
            trusted,
        };
        let mut out = Vec::new();
        rewrite(head.as_bytes(), &fwd, &mut out);
        String::from_utf8(out).unwrap()
    }

    const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\
        X-Forwarded-For: 6.6.6.6\r\nConnection: Upgrade\r\nx-real-ip: 6.6.6.6\r\n\
        Forwarded: for=6.6.6.6\r\nX-Forwarded-Proto: http\r\n\r\n";

    #[test]
    fn spoofed_values_go_and_ours_come_last() {
        assert_eq!(
            rewritten(UPGRADE, "127.0.0.7", false),
            "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             X-Forwarded-For: 127.0.0.7\r\nX-Forwarded-Proto: https\r\nX-Real-IP: 127.0.0.7\r\n\
             Forwarded: for=127.0.0.7;proto=https\r\n\r\n"
        );
    }

    #[test]
    fn from_a_trusted_proxy_the_chain_is_kept_and_extended() {
        let got = rewritten(UPGRADE, "10.0.0.2", true);
        assert!(
            got.contains("\r\nX-Forwarded-For: 6.6.6.6, 10.0.0.2\r\n"),
            "{got}"
        );
        assert!(
            got.contains("\r\nForwarded: for=6.6.6.6, for=10.0.0.2;proto=https\r\n"),
            "{got}"
        );
        assert!(got.contains("\r\nX-Real-IP: 10.0.0.2\r\n") && !got.contains("6.6.6.6\r\nx-real"));
        assert!(!got.contains("proto: http\r"), "{got}");
    }

    #[test]
    fn ipv6_is_quoted_and_bracketed_in_forwarded_only() {
        let got = rewritten("GET / HTTP/1.1\r\nHost: a\r\n\r\n", "2001:db8::1", false);
        assert!(got.contains("X-Forwarded-For: 2001:db8::1\r\n"), "{got}");
        assert!(
            got.contains("Forwarded: for=\"[2001:db8::1]\";proto=https\r\n"),
            "{got}"
        );
        let mapped = rewritten(
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "::ffff:10.1.2.3",
            false,
        );
        assert!(mapped.contains("X-Real-IP: 10.1.2.3\r\n"), "{mapped}");
    }

    #[test]
    fn underscore_spellings_and_host_or_port_are_removed() {
        let head = "GET / HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nx_real_ip: 6.6.6.6\r\n\
            X-Forwarded-Host: evil\r\nX-Forwarded-Port: 1\r\nX_Forwarded_Host: evil\r\n\
            X_Forwarded_Proto: http\r\nForwarded_: x\r\nX-Forwarded_For_: y\r\n\r\n";
        let got = rewritten(head, "127.0.0.2", false);
        assert!(!got.contains("6.6.6.6") && !got.contains("evil"), "{got}");
        assert!(
            !got.contains("X-Forwarded-Port") && !got.contains(": http\r"),
            "{got}"
        );
        assert!(
            got.contains("Forwarded_: x\r\nX-Forwarded_For_: y\r\n"),
            "{got}"
        );
        let trusted = rewritten(head, "10.0.0.2", true);
        assert!(
            trusted.contains("\r\nX-Forwarded-Host: evil\r\nX-Forwarded-Port: 1\r\n"),
            "{trusted}"
        );
        assert!(
            trusted.contains("X-Forwarded-For: 10.0.0.2\r\n"),
            "{trusted}"
        );
        assert_eq!(trusted.matches("evil").count(), 1, "{trusted}");
    }

    #[test]
    fn every_other_byte_is_kept_in_order() {
        let head = "POST /x?y=1 HTTP/1.1\r\nHost: a\r\nX-Custom:  two  spaces \r\nCookie: a=b; c=d\r\n\
            Content-Length: 3\r\n\r\n";
        let got = rewritten(head, "127.0.0.2", false);
        let ours = got.find("X-Forwarded-For").unwrap();
        assert_eq!(&got[..ours], &head[..head.len() - 2]);
    }
}
