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
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    Misdirected,
    HeadersTooLarge,
    BadGateway,
    Unavailable,
    VersionNotSupported,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::RequestTimeout => 408,
            Status::Misdirected => 421,
            Status::HeadersTooLarge => 431,
            Status::BadGateway => 502,
            Status::Unavailable => 503,
            Status::VersionNotSupported => 505,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::RequestTimeout => "Request Timeout",
            Status::Misdirected => "Misdirected Request",
            Status::HeadersTooLarge => "Request Header Fields Too Large",
            Status::BadGateway => "Bad Gateway",
            Status::Unavailable => "Service Unavailable",
            Status::VersionNotSupported => "HTTP Version Not Supported",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Status::BadRequest => "wssbridge: the request could not be parsed as HTTP/1.1",
            Status::NotFound => "wssbridge: no route for this host and path",
            Status::MethodNotAllowed => "wssbridge: CONNECT is not supported",
            Status::RequestTimeout => "wssbridge: the request head did not arrive in time",
            Status::Misdirected => "wssbridge: this connection's TLS name does not serve that host",
            Status::HeadersTooLarge => "wssbridge: the request head is too large",
            Status::BadGateway => "wssbridge: no backend could be reached",
            Status::Unavailable => "wssbridge: over capacity or shutting down, try again",
            Status::VersionNotSupported => "wssbridge: only HTTP/1.0 and HTTP/1.1 are supported",
        }
    }

    /// The whole response, head and body.
    pub fn response(self) -> String {
        let body = self.body();
        let extra = match self {
            Status::MethodNotAllowed => "Allow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\n",
            Status::Unavailable => "Retry-After: 1\r\n",
            _ => "",
        };
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
             {extra}Connection: close\r\n\r\n{body}\n",
            self.code(),
            self.reason(),
            body.len() + 1,
        )
    }
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
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < LINGER_BYTES {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(LINGER_TIME, answer).await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
