//! `--redirect-http`: a plain-HTTP listener that answers every request with `308 Permanent
//! Redirect` to the same host, path and query over https, and serves nothing else.
//!
//! The request head is read under the same `--header-timeout` (from accept) and
//! `--max-header-bytes` as on the TLS port, so a slow or endless head costs no more here. The
//! `Location` is `https://HOST[:PORT]/PATH?QUERY`: `HOST` is the `Host` header without its
//! port, `:PORT` the first TLS listener's port unless it is 443. A request without a usable
//! `Host` gets 400. Every answer closes the connection.
//!
//! With `--acme`, it also answers ACME's HTTP-01 validations: `GET
//! /.well-known/acme-challenge/TOKEN` gets the key authorization the state directory holds
//! for TOKEN (200, text/plain), or 404 when there is none.

use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{AcmeSettings, ServingConfig};
use crate::http::head::{self, Head, ReadError};
use crate::readahead::ReadAhead;
use crate::respond::{self, Status};

/// Serves one plain-HTTP connection, accepted at `started`, whose first bytes (`early`) were
/// already read after a PROXY header: one request, one redirect (or error), then close.
pub async fn serve(
    stream: TcpStream,
    early: Vec<u8>,
    started: Instant,
    config: &ServingConfig,
    acme: Option<&AcmeSettings>,
    https_port: u16,
) -> Option<u16> {
    let mut stream = BufReader::with_capacity(1024, ReadAhead::with_early(stream, early));
    let mut buf = Vec::new();
    let read = head::read(&mut stream, &mut buf, config.max_header_bytes());
    let Some(read) =
        crate::deadline::within(config.timeouts.header.map(|t| started + t), read).await
    else {
        return Some(answer(&mut stream, Status::RequestTimeout).await);
    };
    let head = match read {
        Ok(Some(head)) => head,
        Ok(None) | Err(ReadError::Io(_)) => return None,
        Err(ReadError::Head(e)) => return Some(answer(&mut stream, e.status()).await),
    };
    if let Some(acme) = acme
        && let Some(token) = head.target.strip_prefix(CHALLENGE_PATH)
    {
        let response = challenge_answer(&acme.challenges("http-01"), token);
        let code = if response.is_some() { 200 } else { 404 };
        let body = response.unwrap_or_else(|| "wssbridge: no such challenge\n".to_string());
        let answer = respond::answer(code, respond::TEXT, &[], body.as_bytes(), false);
        respond::send_bytes(&mut stream, &answer).await;
        return Some(code);
    }
    match location(&head, https_port) {
        Some(location) => {
            respond::send_bytes(&mut stream, &redirect(&location)).await;
            Some(308)
        }
        None => Some(answer(&mut stream, Status::BadRequest).await),
    }
}

async fn answer(stream: &mut BufReader<ReadAhead<TcpStream>>, status: Status) -> u16 {
    respond::send(stream, status).await;
    status.code()
}

/// Where a request goes over https; `None` without a usable host.
pub fn location(head: &Head, https_port: u16) -> Option<String> {
    let host = head.host.as_deref()?;
    let host = crate::route::normalize_host(host);
    let usable = !host.is_empty()
        && match host.strip_prefix('[') {
            Some(v6) => v6
                .strip_suffix(']')
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok()),
            None => host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
        };
    if !usable {
        return None;
    }
    let port = match https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    Some(format!("https://{host}{port}{}", head.target))
}

/// A `308` to `location`, with a short body for clients that do not follow redirects.
/// Where ACME's HTTP-01 validations ask (RFC 8555 §8.3).
const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// The key authorization kept in `dir` for `token`, if there is one. A token is base64url
/// (RFC 8555 §8.1): anything else is no file of ours.
fn challenge_answer(dir: &std::path::Path, token: &str) -> Option<String> {
    let plain = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plain {
        return None;
    }
    let authorization = std::fs::read_to_string(dir.join(token)).ok()?;
    Some(authorization.trim().to_string())
}

fn redirect(location: &str) -> Vec<u8> {
    let body = format!("wssbridge: this site is served at {location}\n");
    respond::answer(
        308,
        respond::TEXT,
        &[("Location", location)],
        body.as_bytes(),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Head {
        head::parse(raw.as_bytes()).unwrap().unwrap()
    }

    #[test]
    fn keeps_path_and_query_and_drops_the_host_port() {
        let h = head("GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: Example.COM:80\r\n\r\n");
        assert_eq!(
            location(&h, 443).as_deref(),
            Some("https://example.com/a/b?x=1&y=2")
        );
        assert_eq!(
            location(&h, 8443).as_deref(),
            Some("https://example.com:8443/a/b?x=1&y=2")
        );
        let v6 = head("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n");
        assert_eq!(location(&v6, 443).as_deref(), Some("https://[::1]/"));
    }

    #[test]
    fn no_usable_host_is_none() {
        assert_eq!(location(&head("GET / HTTP/1.0\r\n\r\n"), 443), None);
        let bad = head("GET / HTTP/1.1\r\nHost: a b@evil\r\n\r\n");
        assert_eq!(location(&bad, 443), None);
        let empty = head("GET / HTTP/1.1\r\nHost: \r\n\r\n");
        assert_eq!(location(&empty, 443), None);
    }
}
