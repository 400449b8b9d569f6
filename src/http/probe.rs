//! The HTTP of an active health check: the request a check sends and how the status line of
//! the answer is read. Pure; `balance::health` does the I/O.

/// Bytes of an answer a check reads: the status line up to its code (`HTTP/1.1 200`).
pub const STATUS_LINE: usize = 12;

/// `GET PATH` to `host` (the backend's `host:port`), closing after the answer.
pub fn request(path: &str, host: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: wssbridge-health\r\n\
         Connection: close\r\n\r\n"
    )
}

/// Whether the first [`STATUS_LINE`] bytes of an answer pass the check (2xx or 3xx), or why
/// not. Any bytes are read safely: they are the backend's.
pub fn verdict(line: &[u8]) -> Result<(), String> {
    let status = Some(line)
        .filter(|l| l.len() >= STATUS_LINE && l.starts_with(b"HTTP/1."))
        .and_then(|l| std::str::from_utf8(&l[9..12]).ok())
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", String::from_utf8_lossy(line)))?;
    match status {
        200..=399 => Ok(()),
        other => Err(format!("status {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_and_three_hundreds_pass_anything_else_says_why() {
        assert_eq!(verdict(b"HTTP/1.1 204"), Ok(()));
        assert_eq!(verdict(b"HTTP/1.0 302"), Ok(()));
        assert_eq!(verdict(b"HTTP/1.1 503"), Err("status 503".into()));
        for garbled in [
            &b"HTTP/1.1\xc3\xa900"[..],
            b"HTTP/1.1 2",
            b"\xff\xfe",
            b"SSH-2.0-Open",
        ] {
            assert!(verdict(garbled).is_err(), "{garbled:?}");
        }
    }
}
