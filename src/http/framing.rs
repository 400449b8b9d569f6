//! HTTP/1.1 message-body framing (RFC 9112 §6–7): how many of the bytes after a head belong
//! to its message.
//!
//! Pure and incremental: bytes may arrive one at a time, and nothing is buffered (chunked
//! framing is followed with a small state machine). Used on connections that are not (yet) a
//! tunnel, to find where each request and response ends.

use std::fmt;

/// Where a message's body ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No body, or all of it seen.
    Done,
    /// This many bytes still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`, in progress.
    Chunked(Chunked),
    /// Until the connection closes (responses only).
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingError(&'static str);

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad chunked framing: {}", self.0)
    }
}

/// A chunk size of more than 16 hex digits cannot be real.
const MAX_SIZE_DIGITS: u8 = 16;

impl Body {
    pub fn chunked() -> Body {
        Body::Chunked(Chunked {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
        })
    }

    pub fn is_done(&self) -> bool {
        *self == Body::Done
    }

    /// Takes the bytes of `input` that belong to this body and returns how many; the rest
    /// belongs to the next message.
    pub fn advance(&mut self, input: &[u8]) -> Result<usize, FramingError> {
        match self {
            Body::Done => Ok(0),
            Body::UntilClose => Ok(input.len()),
            Body::Length(left) => {
                let n = (*left).min(input.len() as u64);
                *left -= n;
                if *left == 0 {
                    *self = Body::Done;
                }
                Ok(n as usize)
            }
            Body::Chunked(c) => {
                let (n, done) = c.advance(input)?;
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
    fn advance(&mut self, input: &[u8]) -> Result<(usize, bool), FramingError> {
        use ChunkState::*;
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
            self.state = match (self.state, b) {
                (Size, b) if b.is_ascii_hexdigit() => {
                    self.digits += 1;
                    if self.digits > MAX_SIZE_DIGITS {
                        return Err(FramingError("chunk size too long"));
                    }
                    let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                    self.size = self.size * 16 + digit;
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Extension,
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Size, _) => return Err(FramingError("bad chunk size")),
                (Extension, b'\r') => SizeLf,
                (Extension, b'\n') => return Err(FramingError("bare LF")),
                (Extension, _) => Extension,
                (SizeLf, b'\n') if self.size == 0 => TrailerStart,
                (SizeLf, b'\n') => Data,
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => {
                    self.digits = 0;
                    Size
                }
                (TrailerStart, b'\r') => FinalLf,
                (TrailerLine, b'\r') => TrailerLf,
                (TrailerStart | TrailerLine, b'\n') => return Err(FramingError("bare LF")),
                (TrailerStart | TrailerLine, _) => TrailerLine,
                (TrailerLf, b'\n') => TrailerStart,
                (FinalLf, b'\n') => return Ok((i, true)),
                _ => return Err(FramingError("expected CRLF")),
            };
        }
        Ok((i, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNKED: &[u8] =
        b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n";

    #[test]
    fn chunked_body_ends_exactly_whole_or_byte_by_byte() {
        let mut next = CHUNKED.to_vec();
        next.extend_from_slice(b"GET / HTTP/1.1");
        let mut body = Body::chunked();
        assert_eq!(body.advance(&next), Ok(CHUNKED.len()));
        assert!(body.is_done());

        let mut body = Body::chunked();
        for (i, b) in CHUNKED.iter().enumerate() {
            assert!(!body.is_done(), "done early at {i}");
            assert_eq!(body.advance(std::slice::from_ref(b)), Ok(1));
        }
        assert!(body.is_done());
        assert_eq!(body.advance(b"G"), Ok(0));
    }

    #[test]
    fn length_body_takes_exactly_its_length() {
        let mut body = Body::Length(5);
        assert_eq!(body.advance(b"abc"), Ok(3));
        assert_eq!(body.advance(b"deGET"), Ok(2));
        assert!(body.is_done());
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
        ] {
            assert!(Body::chunked().advance(bad).is_err(), "{bad:?}");
        }
    }
}
