//! HTTP/1.1 request and response heads: parsing, and gathering their bytes.
//!
//! [`parse`] and [`parse_response`] are pure (bytes in, a head or "incomplete" out) so they
//! can be tested on every prefix of real messages. [`HeadBuf`] is the one place that gathers a
//! head's bytes up to a size bound, for the first request ([`read`], the thin async loop), for
//! every later request and for every response (the exchange). Every byte read is kept in the
//! caller's buffer: whatever arrived after the first head (a body, the first WebSocket frame)
//! is forwarded to the backend before the splice starts.

use std::fmt;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::respond::Status;
use crate::route::normalize_host;

use super::framing::{Body, MAX_BODY_LENGTH};

/// httparse needs a fixed header array; 100 is what nginx and HAProxy accept by default and
/// far above what browsers send (~20).
pub const MAX_HEADERS: usize = 100;

/// What routing and framing need from a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The request target in origin form (`/path?query`); an absolute-form target is reduced
    /// to this, its authority going to `host`.
    pub target: String,
    /// The host to route on: absolute-form authority first, then the Host header.
    pub host: Option<String>,
    /// The `Upgrade` header, lower-cased, if any.
    pub upgrade: Option<String>,
    /// Whether `Connection` carries the `upgrade` token.
    pub connection_upgrade: bool,
    /// `Sec-WebSocket-Key`, to check the backend's `Sec-WebSocket-Accept` against.
    pub websocket_key: Option<String>,
    /// How the request body is framed (never `UntilClose`: RFC 9112 §6.3).
    pub body: Body,
    /// Length of the head in bytes, including the blank line.
    pub len: usize,
    /// Every `Cookie` line's value, joined with `; ` (`None` without one, or when one is not
    /// UTF-8: a cookie never makes a request refused). Read for `--balance cookie` alone.
    pub cookie: Option<String>,
}

/// The value of the cookie `name` in a `Cookie` header value (`a=1; wssbridge=x`), the
/// first if several; quotes around it removed (RFC 6265 §4.1.1).
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key.trim() == name).then(|| {
            let value = value.trim();
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
    })
}

/// Why a head was refused; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400: not a parsable HTTP/1.x request, or one wssbridge will not pass on.
    Malformed(&'static str),
    /// 405: a CONNECT request; wssbridge is no forward proxy.
    Method,
    /// 431: larger than `--max-header-bytes` or more than [`MAX_HEADERS`] headers.
    TooLarge,
    /// 505: an HTTP version other than 1.x, e.g. the HTTP/2 preface.
    Version,
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::Malformed(why) => write!(f, "malformed request head: {why}"),
            HeadError::Method => f.write_str("CONNECT is not supported"),
            HeadError::TooLarge => f.write_str("request head too large"),
            HeadError::Version => f.write_str("HTTP version not supported"),
        }
    }
}

impl HeadError {
    /// The status that answers a refused head.
    pub fn status(self) -> Status {
        match self {
            HeadError::Malformed(_) => Status::BadRequest,
            HeadError::Method => Status::MethodNotAllowed,
            HeadError::TooLarge => Status::HeadersTooLarge,
            HeadError::Version => Status::VersionNotSupported,
        }
    }
}

/// Parses `buf` as the start of an HTTP/1.x request. `Ok(None)`: not complete yet.
///
/// Strict where request smuggling lives (RFC 9112 §6.3, §11.2): both Transfer-Encoding and
/// Content-Length, differing Content-Lengths, a Transfer-Encoding other than `chunked`, bare
/// LF line endings, a missing or repeated Host on HTTP/1.1 are all refused. httparse already
/// refuses obs-fold and control characters in the target and header values.
pub fn parse(buf: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) if names_other_http_version(buf) => {
            return Err(HeadError::Version);
        }
        Err(e) => return Err(HeadError::Malformed(parse_error(e))),
    };
    if has_bare_lf(&buf[..len]) {
        return Err(HeadError::Malformed("bare LF line ending"));
    }
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or_default();
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(HeadError::Method);
    }
    let fields = Fields::read(req.headers).map_err(HeadError::Malformed)?;
    let body = match (fields.transfer_encoding, fields.content_length) {
        (Some(_), Some(_)) => {
            return Err(HeadError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding is faulty (1.0 has no
        // chunked coding, so a 1.0 backend frames it otherwise): refused, and the
        // connection closed after the answer.
        (Some(_), None) if req.version == Some(0) => {
            return Err(HeadError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        (Some(te), None) if te.eq_ignore_ascii_case("chunked") => Body::chunked(),
        (Some(_), None) => {
            return Err(HeadError::Malformed("Transfer-Encoding other than chunked"));
        }
        (None, Some(0)) | (None, None) => Body::Done,
        (None, Some(n)) => Body::Length(n),
    };
    if fields.content_lengths > 1 {
        // RFC 9112 §6.3 lets a server either refuse `5, 5` or forward one value in its place;
        // refusing keeps the head's bytes as they came. No real client sends it.
        return Err(HeadError::Malformed("more than one Content-Length"));
    }
    let mut host = match fields.hosts {
        0 if req.version == Some(1) => return Err(HeadError::Malformed("no Host header")),
        0 => None,
        1 => fields.host,
        _ => return Err(HeadError::Malformed("more than one Host header")),
    };
    let target = if target.starts_with('/') {
        target.to_string()
    } else if let Some(absolute) = absolute_form(target) {
        // The request is routed by the target's authority (RFC 9112 §3.2.2), so a backend
        // must not read another host in Host: refused, where rewriting Host would change
        // the bytes forwarded.
        if host.as_deref().is_some_and(|h| !absolute.same_authority(h)) {
            return Err(HeadError::Malformed("target authority and Host differ"));
        }
        host = Some(absolute.authority.to_string());
        absolute.path.to_string()
    } else {
        return Err(HeadError::Malformed("request target is not a path"));
    };
    Ok(Some(Head {
        method: method.to_string(),
        target,
        host,
        upgrade: fields.upgrade,
        connection_upgrade: fields.connection_upgrade,
        websocket_key: fields.websocket_key,
        body,
        len,
        cookie: fields.cookie,
    }))
}

/// A backend's response head, as the exchange needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub upgrade: Option<String>,
    pub connection_upgrade: bool,
    pub websocket_accept: Option<String>,
    /// Framing as the headers declare it; the request method and status refine it.
    pub body: Body,
    pub len: usize,
}

/// Parses a response head from a backend. `Ok(None)`: not complete yet.
pub fn parse_response(buf: &[u8]) -> Result<Option<ResponseHead>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(parse_error(e)),
    };
    let status = res.code.unwrap_or_default();
    let fields = Fields::read(res.headers)?;
    let body = match (fields.transfer_encoding, fields.content_length) {
        (Some(te), _) if te.to_ascii_lowercase().trim_end().ends_with("chunked") => Body::chunked(),
        (Some(_), _) => Body::UntilClose,
        (None, Some(0)) => Body::Done,
        (None, Some(n)) => Body::Length(n),
        (None, None) => Body::UntilClose,
    };
    Ok(Some(ResponseHead {
        status,
        upgrade: fields.upgrade,
        connection_upgrade: fields.connection_upgrade,
        websocket_accept: fields.websocket_accept,
        body,
        len,
    }))
}

/// The header fields that framing, routing and upgrades depend on.
#[derive(Default)]
struct Fields {
    hosts: usize,
    host: Option<String>,
    content_length: Option<u64>,
    /// Values seen across every Content-Length line (`5, 5` counts two).
    content_lengths: usize,
    transfer_encoding: Option<String>,
    upgrade: Option<String>,
    connection_upgrade: bool,
    websocket_key: Option<String>,
    websocket_accept: Option<String>,
    cookie: Option<String>,
}

impl Fields {
    fn read(headers: &[httparse::Header<'_>]) -> Result<Fields, &'static str> {
        let mut f = Fields::default();
        for h in headers {
            let text = || {
                std::str::from_utf8(h.value)
                    .map(str::trim)
                    .map_err(|_| "header is not UTF-8")
            };
            let name = h.name;
            if name.eq_ignore_ascii_case("host") {
                f.hosts += 1;
                f.host = Some(text()?.to_string());
            } else if name.eq_ignore_ascii_case("content-length") {
                for v in text()?.split(',') {
                    let n = decimal(v.trim()).ok_or("bad Content-Length")?;
                    f.content_lengths += 1;
                    if f.content_length.is_some_and(|old| old != n) {
                        return Err("differing Content-Length values");
                    }
                    f.content_length = Some(n);
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                let v = text()?;
                f.transfer_encoding = Some(match f.transfer_encoding.take() {
                    Some(old) => format!("{old}, {v}"),
                    None => v.to_string(),
                });
            } else if name.eq_ignore_ascii_case("upgrade") {
                let v = text()?.to_ascii_lowercase();
                f.upgrade = Some(match f.upgrade.take() {
                    Some(old) => format!("{old}, {v}"),
                    None => v,
                });
            } else if name.eq_ignore_ascii_case("connection") {
                f.connection_upgrade |= text()?
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
            } else if name.eq_ignore_ascii_case("sec-websocket-key") {
                f.websocket_key = Some(text()?.to_string());
            } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
                f.websocket_accept = Some(text()?.to_string());
            } else if name.eq_ignore_ascii_case("cookie")
                && let Ok(v) = std::str::from_utf8(h.value)
            {
                match &mut f.cookie {
                    Some(all) => {
                        all.push_str("; ");
                        all.push_str(v.trim());
                    }
                    None => f.cookie = Some(v.trim().to_string()),
                }
            }
        }
        Ok(f)
    }
}

/// A Content-Length value: decimal digits only (Rust's `parse` would take `+5`, which is no
/// length in RFC 9110 §8.6 and which a backend may read otherwise), at most
/// [`MAX_BODY_LENGTH`].
fn decimal(v: &str) -> Option<u64> {
    match !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        true => v.parse().ok().filter(|&n| n <= MAX_BODY_LENGTH),
        false => None,
    }
}

/// True when some line of the head ends in LF without CR.
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// A parsed head knows how many bytes it took.
pub trait Parsed {
    fn head_len(&self) -> usize;
}

impl Parsed for Head {
    fn head_len(&self) -> usize {
        self.len
    }
}

impl Parsed for ResponseHead {
    fn head_len(&self) -> usize {
        self.len
    }
}

/// What one [`gather`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed<T, E> {
    /// Not complete yet: give more bytes.
    More,
    /// Complete: `buf` holds exactly the head's bytes.
    Head(T),
    /// `max` bytes held and still no end.
    TooLarge,
    Invalid(E),
}

/// Gathers one head's bytes in `buf`: takes bytes of `input` until the head is complete or
/// `max` bytes are held, and returns how many it took and what it found. Bytes after a
/// complete head are not taken, and a peer can make `buf` hold no more than `max` however
/// it cuts its bytes. A piece without a newline cannot complete a head, so trickled bytes
/// are not re-parsed. The one gathering loop for first requests, later ones and responses.
pub fn gather<T: Parsed, E>(
    buf: &mut Vec<u8>,
    input: &[u8],
    max: usize,
    parse: impl Fn(&[u8]) -> Result<Option<T>, E>,
) -> (usize, Fed<T, E>) {
    let before = buf.len();
    let take = input.len().min(max.saturating_sub(before));
    buf.extend_from_slice(&input[..take]);
    let parsed = match input[..take].contains(&b'\n') {
        true => parse(buf),
        false => Ok(None),
    };
    match parsed {
        Ok(Some(head)) => {
            buf.truncate(head.head_len());
            (head.head_len() - before, Fed::Head(head))
        }
        Ok(None) if buf.len() >= max => (take, Fed::TooLarge),
        Ok(None) => (take, Fed::More),
        Err(e) => (take, Fed::Invalid(e)),
    }
}

/// Reads from `stream` into `buf` until a complete request head is there, at most `max`
/// bytes; what came after the head in the same read (a body, a WebSocket frame) is kept in
/// `buf` behind it, within the same bound.
///
/// Reads through the stream's own buffer and copies no more than `max` bytes, so a peer can
/// make this hold at most `max` bytes. `Ok(None)`: the peer closed before sending anything.
pub async fn read<S>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<Option<Head>, ReadError>
where
    S: AsyncBufRead + Unpin,
{
    loop {
        let chunk = match stream.fill_buf().await {
            Ok(chunk) => chunk,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => &[],
            Err(e) => return Err(ReadError::Io(e)),
        };
        if chunk.is_empty() {
            return match buf.is_empty() {
                true => Ok(None),
                false => Err(ReadError::Head(HeadError::Malformed("closed mid-head"))),
            };
        }
        // Blank lines before the request line are ignored (RFC 9112 §2.2) and not kept, so
        // a peer cannot make each re-parse walk an ever longer run of them.
        if buf.is_empty() {
            let blank = chunk
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if blank > 0 {
                stream.consume(blank);
                continue;
            }
        }
        let (taken, fed) = gather(buf, chunk, max, parse);
        match fed {
            Fed::More => stream.consume(taken),
            Fed::Head(head) => {
                let rest = (chunk.len() - taken).min(max - head.len);
                buf.extend_from_slice(&chunk[taken..taken + rest]);
                stream.consume(taken + rest);
                return Ok(Some(head));
            }
            Fed::TooLarge => return Err(ReadError::Head(HeadError::TooLarge)),
            Fed::Invalid(e) => return Err(ReadError::Head(e)),
        }
    }
}

#[derive(Debug)]
pub enum ReadError {
    Head(HeadError),
    Io(std::io::Error),
}

/// An absolute-form request target (`scheme://authority/path`).
struct Absolute<'a> {
    authority: &'a str,
    /// The path, `/` when the target has none.
    path: &'a str,
    /// The port the authority means when it names none.
    default_port: &'static str,
}

impl Absolute<'_> {
    /// Whether a Host header value names the same host and port as the authority
    /// (case-insensitive; an omitted port is the scheme's default).
    fn same_authority(&self, host: &str) -> bool {
        let port = |a: &str| port_of(a).unwrap_or(self.default_port).to_string();
        normalize_host(self.authority) == normalize_host(host)
            && port(self.authority) == port(host.trim())
    }
}

fn absolute_form(target: &str) -> Option<Absolute<'_>> {
    let (scheme, rest) = target.split_once("://")?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    // A fragment, a backslash or userinfo: parsers disagree on where the authority ends
    // (WHATWG reads `http://b#@a/` as host b, a split at the last `@` as a), and RFC 9110
    // §4.2.4 has userinfo treated as an error: not a target wssbridge will route.
    if rest.contains(['#', '\\']) {
        return None;
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let path = if path.starts_with('/') { path } else { "/" };
    Some(Absolute {
        authority,
        path,
        default_port,
    })
}

/// The port of `host:port` or `[v6]:port`, if it names one.
fn port_of(authority: &str) -> Option<&str> {
    let after_host = match authority.strip_prefix('[') {
        Some(rest) => &rest[rest.find(']')? + 1..],
        None => authority,
    };
    let (_, port) = after_host.rsplit_once(':')?;
    (!port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())).then_some(port)
}

/// True when the request line ends in `HTTP/<digit>...` that httparse refused: a real HTTP
/// version we do not speak (505), as opposed to garbage (400).
fn names_other_http_version(buf: &[u8]) -> bool {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = buf[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&buf[..line_end]);
    match line.rsplit(|&b| b == b' ').next() {
        Some(v) => v.starts_with(b"HTTP/") && v.get(5).is_some_and(u8::is_ascii_digit),
        None => false,
    }
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "not HTTP",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: &[u8] = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n\
        Host: Chat.Example.com:8443\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn every_prefix_is_incomplete_then_the_whole_parses() {
        for i in 0..WS.len() {
            assert_eq!(parse(&WS[..i]), Ok(None), "prefix of {i} bytes");
        }
        let head = parse(WS).unwrap().unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/socket.io/?EIO=4&transport=websocket");
        assert_eq!(head.host.as_deref(), Some("Chat.Example.com:8443"));
        assert_eq!(head.upgrade.as_deref(), Some("websocket"));
        assert!(head.connection_upgrade);
        assert_eq!(head.len, WS.len());
    }

    #[test]
    fn bytes_after_the_head_are_not_part_of_it() {
        let mut buf = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc".to_vec();
        let head = parse(&buf).unwrap().unwrap();
        assert_eq!(&buf[head.len..], b"abc");
        buf.truncate(head.len);
        assert_eq!(head.body, Body::Length(3));
        assert_eq!(head.upgrade, None);
    }

    #[test]
    fn absolute_form_gives_host_and_path() {
        let head =
            parse(b"GET http://api.example.com:80/v1?q HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(head.host.as_deref(), Some("api.example.com:80"));
        assert_eq!(head.target, "/v1?q");
    }

    #[test]
    fn refusals_map_to_their_status() {
        assert_eq!(
            parse(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Err(HeadError::Version)
        );
        assert_eq!(parse(b"GET / HTTP/3.0\r\n\r\n"), Err(HeadError::Version));
        assert!(matches!(
            parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"hello world\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        let refused = |raw: &[u8]| matches!(parse(raw), Err(HeadError::Malformed(_)));
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
            b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9007199254740992\r\n\r\n",
            b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET http://a.localhost/x HTTP/1.1\r\nHost: b.localhost\r\n\r\n",
            b"GET https://a.localhost:8443/x HTTP/1.1\r\nHost: a.localhost\r\n\r\n",
        ] {
            assert!(refused(raw), "{:?}", String::from_utf8_lossy(raw));
        }
        let zero = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(zero.unwrap().unwrap().body, Body::Done);
        let http10 = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(http10.host, None);
        assert_eq!(
            parse(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"),
            Err(HeadError::Method)
        );
        assert!(matches!(
            parse(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        let many: Vec<u8> = [
            b"GET / HTTP/1.1\r\n".to_vec(),
            b"X: y\r\n".repeat(MAX_HEADERS + 1),
            b"\r\n".to_vec(),
        ]
        .concat();
        assert_eq!(parse(&many), Err(HeadError::TooLarge));
    }

    #[test]
    fn response_heads_give_status_upgrade_and_framing() {
        let raw =
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        for i in 0..raw.len() {
            assert_eq!(parse_response(&raw[..i]), Ok(None));
        }
        let r = parse_response(raw).unwrap().unwrap();
        assert_eq!(
            (r.status, r.upgrade.as_deref(), r.connection_upgrade),
            (101, Some("websocket"), true)
        );
        let chunked = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(chunked.unwrap().unwrap().body, Body::chunked());
        let close = parse_response(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(close.body, Body::UntilClose);
    }

    #[test]
    fn absolute_form_must_name_the_host_it_carries() {
        for (target, host) in [
            ("http://A.localhost/x", "a.localhost"),
            ("http://a.localhost:80/x", "a.localhost"),
            ("https://a.localhost/x", "a.localhost:443"),
            ("http://[::1]:8080/x", "[::1]:8080"),
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let head = parse(raw.as_bytes()).unwrap().unwrap();
            assert_eq!(head.target, "/x", "{raw}");
        }
        for smuggled in [
            "http://b.example#@a.example/",
            "http://user@a.example/",
            "http://a.example\\@b.example/",
            "http://a.example/#x",
        ] {
            let raw = format!("GET {smuggled} HTTP/1.1\r\nHost: a.example\r\n\r\n");
            assert!(
                matches!(parse(raw.as_bytes()), Err(HeadError::Malformed(_))),
                "{raw}"
            );
        }
        let http10 = parse(b"GET http://a.localhost/ HTTP/1.0\r\n\r\n");
        assert_eq!(
            http10.unwrap().unwrap().host.as_deref(),
            Some("a.localhost")
        );
    }

    #[test]
    fn repeated_host_is_refused() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(HeadError::Malformed("more than one Host header"))
        );
    }

    #[tokio::test]
    async fn read_skips_blank_lines_before_the_request() {
        let mut input: &[u8] = b"\r\n\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut buf = Vec::new();
        let head = read(&mut input, &mut buf, 1024).await.unwrap().unwrap();
        assert_eq!(head.method, "GET");
        assert!(buf.starts_with(b"GET "));
    }

    #[tokio::test]
    async fn read_stops_at_max_bytes() {
        let mut input: &[u8] = b"GET / HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut buf = Vec::new();
        let r = read(&mut input, &mut buf, 20).await;
        assert!(matches!(r, Err(ReadError::Head(HeadError::TooLarge))));
        assert_eq!(buf.len(), 20);
    }

    #[tokio::test]
    async fn read_keeps_bytes_after_the_head() {
        let mut input: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nFRAME";
        let mut buf = Vec::new();
        let head = read(&mut input, &mut buf, 1024).await.unwrap().unwrap();
        assert_eq!(&buf[head.len..], b"FRAME");
    }
}
