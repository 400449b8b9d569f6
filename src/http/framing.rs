//! HTTP/1.1 message-body framing (RFC 9112 §6–7): how many of the bytes after a head belong
//! to its message, and which of them go on.
//!
//! Pure and incremental: bytes may arrive one at a time, and the result is the same however
//! they are split. Body bytes are never buffered; chunked framing is followed with a small
//! state machine that keeps the chunk-line grammar of RFC 9112 §7.1 exactly:
//!
//! ```text
//! chunk-line = 1*HEXDIG *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] ) CRLF
//! ```
//!
//! Whitespace is allowed only around `;` and `=`, so `5 0`, `5 ` and a NUL in an extension are
//! refused: a backend that reads them otherwise (Node answers 400; others have read `5 0` as
//! 5 or as 0) would frame the body differently from us.
//!
//! Bounds, each an error and never a silent cut:
//! - a chunk size or `Content-Length` above [`MAX_BODY_LENGTH`];
//! - one chunk line's extensions above [`MAX_EXTENSION`] bytes;
//! - the trailer section above the head's size limit (`--max-header-bytes`; answered 431).
//!
//! The trailer section is the one part held until it is whole: each line is checked with the
//! head's rules (a token, a colon, no control character, no obs-fold), and the fields RFC
//! 9110 §6.5.1 says cannot be processed after the content (framing, routing, authentication,
//! request modifiers, response controls, content format) are dropped, with every forwarded
//! header wssbridge owns (`X-Forwarded-*`, `X-Real-IP`, `Forwarded`): a trailer must not say
//! what `--add-forwarded` removed from the head. Other trailer fields pass unchanged.

use std::fmt;

/// The largest body length taken: 2^53 − 1, the largest integer a JavaScript backend (Node's
/// `Number`) holds exactly. Far beyond any real upload, and clear of every peer's overflow: a
/// length of `18446744073709551615` is refused, not passed to a backend to wrap around.
pub const MAX_BODY_LENGTH: u64 = (1 << 53) - 1;

/// One chunk line's extensions (after the size, before CRLF). No client sends any in
/// practice; Node refuses lines past 16 KiB in all. A megabyte of "extension" is an attack.
pub const MAX_EXTENSION: usize = 4096;

/// The trailer section's bound when none is given: the backend's response head bound.
const DEFAULT_TRAILER_LIMIT: usize = 64 * 1024;

/// Where a message's body ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No body, or all of it seen.
    Done,
    /// This many bytes still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`, in progress.
    Chunked(Box<Chunked>),
    /// Until the connection closes (responses only).
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    /// Digits of the size so far (leading zeros included).
    digits: u8,
    /// Bytes of the current chunk line after its size.
    extension: usize,
    /// The trailer section so far (its lines, without the final CRLF).
    trailer: Vec<u8>,
    trailer_limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    /// Whitespace after the size: only a `;` may follow.
    SizeBws,
    /// After `;`: optional whitespace, then a name.
    ExtNameStart,
    ExtName,
    /// Whitespace after a name: `=` or the next `;`.
    ExtNameBws,
    /// After `=`: optional whitespace, then a token or a quoted string.
    ExtValueStart,
    ExtToken,
    Quoted,
    QuotedPair,
    /// After a value: whitespace, then only the next `;`; or CRLF directly.
    ExtValueEnd,
    ExtValueBws,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
}

/// Why a body's framing cannot be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FramingError {
    /// Not the grammar: answered 400.
    Malformed(&'static str),
    /// The trailer section is larger than the head's limit: answered 431.
    TooLarge,
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FramingError::Malformed(why) => write!(f, "bad chunked framing: {why}"),
            FramingError::TooLarge => f.write_str("trailer section too large"),
        }
    }
}

/// A chunk size of more than 16 hex digits cannot be real (leading zeros included).
const MAX_SIZE_DIGITS: u8 = 16;

impl Body {
    pub fn chunked() -> Body {
        Body::Chunked(Box::new(Chunked {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
            extension: 0,
            trailer: Vec::new(),
            trailer_limit: DEFAULT_TRAILER_LIMIT,
        }))
    }

    /// Bounds a chunked body's trailer section at `limit` bytes (the head's limit).
    pub fn limit_trailers(mut self, limit: usize) -> Body {
        if let Body::Chunked(c) = &mut self {
            c.trailer_limit = limit;
        }
        self
    }

    pub fn is_done(&self) -> bool {
        *self == Body::Done
    }

    /// Takes the bytes of `input` that belong to this body, appends those that go on to `out`
    /// (all of them but a trailer section's dropped fields, which go on once it is whole),
    /// and returns how many were taken; the rest belongs to the next message.
    pub fn advance(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, FramingError> {
        match self {
            Body::Done => Ok(0),
            Body::UntilClose => {
                out.extend_from_slice(input);
                Ok(input.len())
            }
            Body::Length(left) => {
                let n = (*left).min(input.len() as u64) as usize;
                *left -= n as u64;
                out.extend_from_slice(&input[..n]);
                if *left == 0 {
                    *self = Body::Done;
                }
                Ok(n)
            }
            Body::Chunked(c) => {
                let (n, done) = c.advance(input, out)?;
                if done {
                    *self = Body::Done;
                }
                Ok(n)
            }
        }
    }
}

impl Chunked {
    /// Returns (bytes taken, whole body seen).
    fn advance(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(usize, bool), FramingError> {
        use ChunkState::*;
        let bad = |why| Err(FramingError::Malformed(why));
        // Bytes from `from` on are passed through unchanged (chunk lines and data); trailer
        // bytes are held.
        let mut from = match self.state {
            TrailerStart | TrailerLine | TrailerLf | FinalLf => input.len(),
            _ => 0,
        };
        let mut i = 0;
        while i < input.len() {
            if self.state == Data {
                let n = self.size.min((input.len() - i) as u64);
                self.size -= n;
                i += n as usize;
                if self.size == 0 {
                    self.state = DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            if matches!(
                self.state,
                SizeBws
                    | ExtNameStart
                    | ExtName
                    | ExtNameBws
                    | ExtValueStart
                    | ExtToken
                    | Quoted
                    | QuotedPair
                    | ExtValueEnd
                    | ExtValueBws
            ) {
                self.extension += 1;
                if self.extension > MAX_EXTENSION {
                    return bad("chunk extension too long");
                }
            }
            let ws = b == b' ' || b == b'\t';
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    self.digits += 1;
                    let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.size = self.size.saturating_mul(16).saturating_add(digit);
                    if self.digits > MAX_SIZE_DIGITS || self.size > MAX_BODY_LENGTH {
                        return bad("chunk size too large");
                    }
                    Size
                }
                (Size, _) if self.digits == 0 => return bad("bad chunk size"),
                (Size, b';') => ExtNameStart,
                (Size, _) if ws => SizeBws,
                (Size, b'\r') => SizeLf,
                (Size, _) => return bad("bad chunk size"),
                (SizeBws, _) if ws => SizeBws,
                (SizeBws, b';') => ExtNameStart,
                (SizeBws, _) => return bad("whitespace after a chunk size"),
                (ExtNameStart, _) if ws => ExtNameStart,
                (ExtNameStart | ExtName, b) if is_tchar(b) => ExtName,
                (ExtNameStart, _) => return bad("bad chunk extension name"),
                (ExtName | ExtNameBws, b';') => ExtNameStart,
                (ExtName | ExtNameBws, b'=') => ExtValueStart,
                (ExtName | ExtNameBws, _) if ws => ExtNameBws,
                (ExtName, b'\r') => SizeLf,
                (ExtName | ExtNameBws, _) => return bad("bad chunk extension"),
                (ExtValueStart, _) if ws => ExtValueStart,
                (ExtValueStart, b'"') => Quoted,
                (ExtValueStart | ExtToken, b) if is_tchar(b) => ExtToken,
                (ExtValueStart, _) => return bad("bad chunk extension value"),
                (Quoted, b'"') => ExtValueEnd,
                (Quoted, b'\\') => QuotedPair,
                (Quoted, b) if is_qdtext(b) => Quoted,
                (QuotedPair, b) if ws || is_vchar_or_obs(b) => Quoted,
                (Quoted | QuotedPair, _) => return bad("bad quoted chunk extension"),
                (ExtToken | ExtValueEnd | ExtValueBws, b';') => ExtNameStart,
                (ExtToken | ExtValueEnd | ExtValueBws, _) if ws => ExtValueBws,
                (ExtToken | ExtValueEnd, b'\r') => SizeLf,
                (ExtToken | ExtValueEnd | ExtValueBws, _) => return bad("bad chunk extension"),
                (SizeLf, b'\n') if self.size == 0 => {
                    // The last chunk: its line goes on now, the trailer section once whole.
                    out.extend_from_slice(&input[from..i]);
                    from = input.len();
                    TrailerStart
                }
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.digits = 0;
                    self.extension = 0;
                    Size
                }
                (TrailerStart | TrailerLine | TrailerLf, _) => {
                    // The section's final CR is not part of it.
                    let last = self.state == TrailerStart && b == b'\r';
                    if !last && self.trailer.len() >= self.trailer_limit {
                        return Err(FramingError::TooLarge);
                    }
                    self.trailer.push(b);
                    match (self.state, b) {
                        (TrailerStart, b'\r') => {
                            self.trailer.pop();
                            FinalLf
                        }
                        (TrailerStart | TrailerLine, b'\n') => return bad("bare LF"),
                        (TrailerLine, b'\r') => TrailerLf,
                        (TrailerStart | TrailerLine, _) => TrailerLine,
                        (TrailerLf, b'\n') => TrailerStart,
                        _ => return bad("expected CRLF"),
                    }
                }
                (FinalLf, b'\n') => {
                    filter_trailers(&self.trailer, out)?;
                    out.extend_from_slice(b"\r\n");
                    self.trailer = Vec::new();
                    return Ok((i, true));
                }
                _ => return bad("expected CRLF"),
            };
        }
        if from < i {
            out.extend_from_slice(&input[from..i]);
        }
        Ok((i, false))
    }
}

/// Checks every line of a whole trailer section (each ends in CRLF) with the head's rules and
/// appends those that may go on: nothing at all unless every line is good.
fn filter_trailers(section: &[u8], out: &mut Vec<u8>) -> Result<(), FramingError> {
    let bad = |why| Err(FramingError::Malformed(why));
    let start = out.len();
    let mut lines = section.split_inclusive(|&b| b == b'\n');
    let result = lines.try_for_each(|line| {
        let text = line.strip_suffix(b"\r\n").unwrap_or(line);
        let Some(colon) = text.iter().position(|&b| b == b':') else {
            return bad("trailer line without a colon");
        };
        let (name, value) = (&text[..colon], &text[colon + 1..]);
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            // Whitespace before the colon, obs-fold, a request line: all refused here.
            return bad("bad trailer field name");
        }
        if !value
            .iter()
            .all(|&b| b == b' ' || b == b'\t' || is_vchar_or_obs(b))
        {
            return bad("control character in a trailer field");
        }
        if !forbidden_in_trailers(name) {
            out.extend_from_slice(line);
        }
        Ok(())
    });
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// Fields RFC 9110 §6.5.1 says a recipient cannot process after the content, and the
/// forwarded headers wssbridge owns: dropped from every trailer section.
fn forbidden_in_trailers(name: &[u8]) -> bool {
    const NAMES: &[&[u8]] = &[
        // Framing.
        b"content-length",
        b"transfer-encoding",
        b"trailer",
        b"te",
        // Routing and the connection.
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"upgrade",
        b"via",
        b"forwarded",
        b"x-real-ip",
        // Authentication.
        b"authorization",
        b"proxy-authorization",
        b"www-authenticate",
        b"proxy-authenticate",
        b"cookie",
        b"set-cookie",
        // Request modifiers.
        b"expect",
        b"range",
        b"max-forwards",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
        // Response controls.
        b"cache-control",
        b"expires",
        b"age",
        b"location",
        b"retry-after",
        b"vary",
        // Content format.
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"content-language",
        b"content-location",
    ];
    let lower: Vec<u8> = name
        .iter()
        .map(|b| match b.to_ascii_lowercase() {
            // CGI-style readers take `_` for `-` (see `forwarded`).
            b'_' => b'-',
            b => b,
        })
        .collect();
    lower.starts_with(b"x-forwarded-")
        || lower.starts_with(b"sec-websocket-")
        || NAMES.contains(&lower.as_slice())
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 §5.6.4 `qdtext`.
fn is_qdtext(b: u8) -> bool {
    matches!(b, b'\t' | b' ' | 0x21 | 0x23..=0x5B | 0x5D..=0x7E | 0x80..=0xFF)
}

fn is_vchar_or_obs(b: u8) -> bool {
    matches!(b, 0x21..=0x7E | 0x80..=0xFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNKED: &[u8] =
        b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n";

    fn whole(input: &[u8]) -> Result<(usize, Vec<u8>, bool), FramingError> {
        let mut body = Body::chunked();
        let mut out = Vec::new();
        let n = body.advance(input, &mut out)?;
        Ok((n, out, body.is_done()))
    }

    #[test]
    fn chunked_body_ends_exactly_whole_or_byte_by_byte() {
        let mut next = CHUNKED.to_vec();
        next.extend_from_slice(b"GET / HTTP/1.1");
        assert_eq!(whole(&next), Ok((CHUNKED.len(), CHUNKED.to_vec(), true)));

        let mut body = Body::chunked();
        let mut out = Vec::new();
        for (i, b) in CHUNKED.iter().enumerate() {
            assert!(!body.is_done(), "done early at {i}");
            assert_eq!(body.advance(std::slice::from_ref(b), &mut out), Ok(1));
        }
        assert!(body.is_done());
        assert_eq!(out, CHUNKED);
        assert_eq!(body.advance(b"G", &mut out), Ok(0));
    }

    #[test]
    fn length_body_takes_exactly_its_length() {
        let mut body = Body::Length(5);
        let mut out = Vec::new();
        assert_eq!(body.advance(b"abc", &mut out), Ok(3));
        assert_eq!(body.advance(b"deGET", &mut out), Ok(2));
        assert!(body.is_done());
        assert_eq!(out, b"abcde");
    }

    #[test]
    fn malformed_chunks_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello",
            b"5\r\nhelloX",
            b"11111111111111111\r\n",
            b"0\r\nTrailer\n",
            b"5 0\r\n",
            b"5 \r\n",
            b"5\t\r\n",
            b"5;\r\n",
            b"5;a\x00\r\n",
            b"5;a=\"\x00\"\r\n",
            b"5;a=b c\r\n",
            b"5;a =\r\n",
            b"5;a b\r\n",
            b"FFFFFFFFFFFFFFFF\r\n",
            b"20000000000000\r\n",
        ] {
            assert!(whole(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn extensions_follow_the_grammar_with_whitespace_only_around_separators() {
        for good in [
            &b"5;a\r\nhello\r\n0\r\n\r\n"[..],
            b"5 ; a = b\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"x y;\\\"z\"\r\nhello\r\n0\r\n\r\n",
            b"5;a=1;b;c=\"\"\r\nhello\r\n0\r\n\r\n",
            b"5;a=1 ;b\r\nhello\r\n0\r\n\r\n",
            b"0005\r\nhello\r\n0\r\n\r\n",
            b"1FFFFFFFFFFFFF\r\n",
        ] {
            let got = whole(good);
            assert!(got.is_ok(), "{:?}", String::from_utf8_lossy(good));
        }
    }

    #[test]
    fn an_extension_is_bounded() {
        let mut line = b"5;a=".to_vec();
        line.resize(MAX_EXTENSION + 10, b'x');
        assert_eq!(
            whole(&line),
            Err(FramingError::Malformed("chunk extension too long"))
        );
        let mut line = b"5;a=".to_vec();
        line.resize(MAX_EXTENSION + 1, b'x');
        line.extend_from_slice(b"\r\nhello\r\n");
        assert!(whole(&line).is_ok());
    }

    #[test]
    fn trailers_we_own_or_that_frame_or_route_are_dropped() {
        let body = b"3\r\nabc\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
                     Forwarded: for=6.6.6.6\r\nContent-Length: 5\r\nHost: evil\r\n\
                     X_Forwarded_For: 6.6.6.6\r\nX-Checksum: abc\r\nhost: e\r\n\r\n";
        let (n, out, done) = whole(body).unwrap();
        assert_eq!((n, done), (body.len(), true));
        assert_eq!(out, b"3\r\nabc\r\n0\r\nX-Checksum: abc\r\n\r\n");
    }

    #[test]
    fn bad_trailer_lines_are_refused() {
        for bad in [
            &b"0\r\nno colon here\r\n\r\n"[..],
            b"0\r\nX-A: a\x00b\r\n\r\n",
            b"0\r\nGET / HTTP/1.1\r\n\r\n",
            b"0\r\nX-A : b\r\n\r\n",
            b"0\r\nX-A: b\r\n c\r\n\r\n",
            b"0\r\n: b\r\n\r\n",
        ] {
            assert!(
                matches!(whole(bad), Err(FramingError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_trailer_section_past_the_limit_is_too_large() {
        let mut body = b"0\r\nX-A: ".to_vec();
        body.resize(300, b'a');
        let mut out = Vec::new();
        let mut limited = Body::chunked().limit_trailers(100);
        assert_eq!(
            limited.advance(&body, &mut out),
            Err(FramingError::TooLarge)
        );
        assert_eq!(out, b"0\r\n", "nothing of the trailer went on");
        let exactly = b"0\r\nX-A: 123456789\r\n\r\n";
        let mut at_limit = Body::chunked().limit_trailers(16);
        let mut out = Vec::new();
        assert_eq!(at_limit.advance(exactly, &mut out), Ok(exactly.len()));
        assert!(
            at_limit.is_done(),
            "a section of exactly the limit is taken"
        );
    }

    /// However the bytes are split, the same bytes go on and the same verdict comes.
    #[test]
    fn every_split_gives_the_same_result() {
        let cases: [&[u8]; 3] = [
            CHUNKED,
            b"3;a=\"q\"\r\nabc\r\n0\r\nHost: x\r\nX-Ok: 1\r\n\r\n",
            b"3\r\nabc\r\n0\r\nbad line\r\n\r\n",
        ];
        for case in cases {
            let expected = whole(case);
            for split in 0..=case.len() {
                let mut body = Body::chunked();
                let mut out = Vec::new();
                let result = body
                    .advance(&case[..split], &mut out)
                    .and_then(|a| Ok(a + body.advance(&case[split..], &mut out)?));
                let got = result.map(|n| (n, out, body.is_done()));
                assert_eq!(got, expected, "split at {split}");
            }
        }
    }
}
