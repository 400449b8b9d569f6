//! The canned HTTP error responses sent before a tunnel starts.
//!
//! Each is HTTP/1.1 with `Connection: close` and a one-line text body that never names a
//! backend address. After the response wssbridge sends close_notify and then reads (and
//! discards) what the client is still sending for a moment, like nginx's lingering close:
//! closing a socket with unread input makes the kernel send a reset, and the client may then
//! lose the response it was about to read.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long to keep reading after an error response, and how much: enough for a client to
/// finish sending a head or small body and read our answer.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// A status wssbridge answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    BadRequest,
    /// 400 to a plain-HTTP request on the TLS port (nginx's "plain HTTP request was sent to
    /// HTTPS port"), before any TLS.
    PlainHttp,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    /// 408 for a request body that stopped arriving (`--body-timeout`).
    BodyTimeout,
    Misdirected,
    HeadersTooLarge,
    BadGateway,
    /// 502 from a route whose backends are all DNS names that have not resolved yet.
    NotDiscovered,
    Unavailable,
    VersionNotSupported,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::BadRequest | Status::PlainHttp => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout | Status::BodyTimeout => 408,
            Status::Misdirected => 421,
            Status::HeadersTooLarge => 431,
            Status::BadGateway | Status::NotDiscovered => 502,
            Status::Unavailable => 503,
            Status::VersionNotSupported => 505,
        }
    }

    fn body(self) -> &'static str {
        match self {
            Status::BadRequest => "wssbridge: the request could not be parsed as HTTP/1.1",
            Status::PlainHttp => {
                "wssbridge: a plain HTTP request was sent to the HTTPS port: use https://"
            }
            Status::NotFound => "wssbridge: no route for this host and path",
            Status::MethodNotAllowed => "wssbridge: CONNECT is not supported",
            Status::RequestTimeout => "wssbridge: the request head did not arrive in time",
            Status::BodyTimeout => "wssbridge: the request body stopped arriving",
            Status::Misdirected => "wssbridge: this connection's TLS name does not serve that host",
            Status::HeadersTooLarge => "wssbridge: the request head is too large",
            Status::BadGateway => "wssbridge: no backend could be reached",
            Status::NotDiscovered => {
                "wssbridge: no backend yet: this route's backends are found by DNS, and its \
                 name has not resolved"
            }
            Status::Unavailable => "wssbridge: over capacity or shutting down, try again",
            Status::VersionNotSupported => "wssbridge: only HTTP/1.0 and HTTP/1.1 are supported",
        }
    }

    /// The whole response, head and body.
    pub fn response(self) -> String {
        let body = format!("{}\n", self.body());
        let extra: &[(&str, &str)] = match self {
            Status::MethodNotAllowed => {
                &[("Allow", "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH")]
            }
            Status::Unavailable => &[("Retry-After", "1")],
            _ => &[],
        };
        let response = answer(self.code(), TEXT, extra, body.as_bytes(), false);
        String::from_utf8_lossy(&response).into_owned()
    }
}

/// The content type of every text answer.
pub const TEXT: &str = "text/plain; charset=utf-8";

/// The reason phrase of every status wssbridge writes itself (errors, redirects, the admin
/// port): one table.
pub fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// An HTTP/1.1 answer that closes the connection: status line, `Content-Type`,
/// `Content-Length`, the `extra` headers in order, `Connection: close`, then the body (left
/// out for a HEAD request, its length still given). The one writer of the answers wssbridge
/// makes itself.
pub fn answer(
    code: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    head_only: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason(code),
        body.len()
    );
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// Sends `status`, closes our side (close_notify, then FIN) and lingers briefly; errors are
/// the client's business and are not reported.
pub async fn send<S>(stream: &mut S, status: Status)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send_bytes(stream, status.response().as_bytes()).await;
}

/// Sends a whole `response` and closes as [`send`] does.
pub async fn send_bytes<S>(stream: &mut S, response: &[u8])
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let answer = async {
        stream.write_all(response).await?;
        stream.shutdown().await?;
        drain(stream).await
    };
    let _ = tokio::time::timeout(LINGER_TIME, answer).await;
}

/// After an answer sent and the connection shut down by someone else (the splice, at a
/// gate's stop): reads and discards what the client still sends, as [`send`] does, so the
/// close does not become a reset that loses the answer.
pub async fn linger<S>(stream: &mut S)
where
    S: AsyncRead + Unpin,
{
    let _ = tokio::time::timeout(LINGER_TIME, drain(stream)).await;
}

async fn drain<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<()> {
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        match stream.read(&mut sink).await? {
            0 => break,
            n => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_has_its_reason_phrase() {
        for s in [
            Status::BadRequest,
            Status::PlainHttp,
            Status::NotFound,
            Status::MethodNotAllowed,
            Status::RequestTimeout,
            Status::BodyTimeout,
            Status::Misdirected,
            Status::HeadersTooLarge,
            Status::BadGateway,
            Status::NotDiscovered,
            Status::Unavailable,
            Status::VersionNotSupported,
        ] {
            assert!(!reason(s.code()).is_empty(), "{s:?}");
        }
        let head = answer(200, TEXT, &[("Cache-Control", "no-store")], b"ok\n", true);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn responses_are_complete_http() {
        for s in [
            Status::BadRequest,
            Status::Unavailable,
            Status::MethodNotAllowed,
        ] {
            let r = s.response();
            let (head, body) = r.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {} ", s.code())));
            assert!(head.contains("Connection: close"));
            assert!(head.contains(&format!("Content-Length: {}", body.len())));
        }
    }
}
