//! A WebSocket frame-length reader (RFC 6455 §5.2): it follows where each frame ends in a
//! stream of bytes, and counts what went by ([`Tally`]: frames, control frames, messages and
//! each message's size, all read off the headers). It never buffers more than a frame header
//! (14 bytes) and never fails: bytes that are not WebSocket framing make it
//! [`Frames::lost`] for good, and whoever asks then knows no boundary can be found.
//!
//! Of a payload it reads exactly one thing: the first two bytes of the first close frame,
//! the close code (unmasked with the frame's key when the client sent it), so an operator
//! learns how a WebSocket ended ([`Close`]). Nothing else of a payload is looked at, and
//! nothing is ever copied or changed: the bytes pass on as they came.
//!
//! Pure, like the head parser: bytes in, a position and counts out. Tested on every prefix
//! and fuzzed.

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte masking key.
const MAX_HEADER: usize = 14;

/// Whose frames a stream carries: a client's are masked, a server's are not (§5.1). A frame
/// with the other mask bit is not WebSocket framing from that peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

/// Where a stream of frames is, and what went by.
#[derive(Debug, Clone)]
pub struct Frames {
    sender: Sender,
    at: At,
    /// A close frame went by: the sender is ending the connection itself.
    closed: bool,
    tally: Tally,
    /// Payload bytes of the message under way (its frames so far).
    message: u64,
    /// The first close frame's code and reason length, once its payload's first two bytes
    /// went by.
    close: Option<Close>,
    /// The first close frame's code, while its bytes are going by.
    capture: Option<Capture>,
}

/// What a stream of frames carried, counted from the frame headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Every frame, data and control.
    pub frames: u64,
    /// Control frames (close, ping, pong): counted apart, never as messages.
    pub controls: u64,
    /// Whole messages: a data frame with FIN set, unfragmented or the last of its fragments
    /// (a message sent in three fragments is one message and three frames).
    pub messages: u64,
}

/// A close frame as its sender wrote it (§5.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Close {
    /// The status code; 1005 (`No Status Rcvd`, what the receiving end reports) for a close
    /// frame with no payload, 0 for a malformed one-byte payload.
    pub code: u16,
    /// Bytes of the reason after the code (at most 123).
    pub reason: u8,
}

/// The first two payload bytes of a close frame, gathered as they go by.
#[derive(Debug, Clone, Copy)]
struct Capture {
    key: [u8; 4],
    got: u8,
    code: [u8; 2],
    reason: u8,
}

#[derive(Debug, Clone)]
enum At {
    /// Inside a header: the bytes of it seen so far (none: at a frame boundary).
    Header { bytes: [u8; MAX_HEADER], seen: u8 },
    /// Inside a payload: this many bytes of it are still to come (never 0).
    Payload(u64),
    /// Not WebSocket framing: no boundary can be found any more.
    Lost,
}

impl Frames {
    /// A stream from `sender`, at a frame boundary.
    pub fn new(sender: Sender) -> Frames {
        Frames {
            sender,
            at: boundary(),
            closed: false,
            tally: Tally::default(),
            message: 0,
            close: None,
            capture: None,
        }
    }

    /// Follows `bytes`, the next ones of the stream; `message` is told the payload size of
    /// each whole message as its last frame's header goes by.
    pub fn feed(&mut self, mut bytes: &[u8], mut message: impl FnMut(u64)) {
        while !bytes.is_empty() {
            match &mut self.at {
                At::Lost => return,
                At::Payload(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    if let Some(capture) = &mut self.capture {
                        self.close = capture.take(&bytes[..n as usize]);
                        if self.close.is_some() {
                            self.capture = None;
                        }
                    }
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.at = boundary();
                    }
                }
                // At a boundary with the whole header in hand (the usual case): read it in
                // place, no copy.
                At::Header { seen: 0, .. }
                    if header_len(bytes).is_some_and(|len| len <= bytes.len()) =>
                {
                    bytes = self.skip_data_frames(bytes, &mut message);
                    if let Some(len) = header_len(bytes).filter(|&len| len <= bytes.len()) {
                        self.at = self.after_header(&bytes[..len], &mut message);
                        bytes = &bytes[len..];
                    }
                }
                At::Header {
                    bytes: header,
                    seen,
                } => {
                    let have = usize::from(*seen);
                    // Take no more than this header can hold: its length is known from its
                    // second byte.
                    let want = header_len(&header[..have]).unwrap_or(2) - have;
                    let n = want.min(bytes.len());
                    header[have..have + n].copy_from_slice(&bytes[..n]);
                    *seen += n as u8;
                    bytes = &bytes[n..];
                    let have = usize::from(*seen);
                    if header_len(&header[..have]) == Some(have) {
                        let header = *header;
                        self.at = self.after_header(&header[..have], &mut message);
                    }
                }
            }
        }
    }

    /// From a boundary: skips the whole data frames of up to 64 KiB at the start of `bytes`
    /// and returns the rest, at a boundary: a burst of small messages costs a few
    /// instructions each (counting included). Anything else (a control frame, a longer or
    /// partial frame, a broken header) is left to the general path.
    fn skip_data_frames<'b>(
        &mut self,
        mut bytes: &'b [u8],
        message: &mut impl FnMut(u64),
    ) -> &'b [u8] {
        let mask_bit = match self.sender {
            Sender::Client => 0x80,
            Sender::Server => 0,
        };
        let key = usize::from(mask_bit >> 5);
        while let [first, second, rest @ ..] = bytes {
            let (extended, length) = match second & 0x7f {
                126 => match rest {
                    [hi, lo, ..] => (2, usize::from(u16::from_be_bytes([*hi, *lo]))),
                    _ => break,
                },
                127 => break,
                short => (0, usize::from(short)),
            };
            let data = matches!(first & 0x0f, 0x0..=0x2);
            let end = 2 + extended + key + length;
            if !data || second & 0x80 != mask_bit || end > bytes.len() {
                break;
            }
            self.data_frame(*first & 0x80 != 0, length as u64, message);
            bytes = &bytes[end..];
        }
        bytes
    }

    /// A whole header: where the stream is now.
    fn after_header(&mut self, header: &[u8], message: &mut impl FnMut(u64)) -> At {
        let opcode = header[0] & 0x0f;
        let fin = header[0] & 0x80 != 0;
        let masked = header[1] & 0x80 != 0;
        let length = match header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
            127 => {
                let mut eight = [0; 8];
                eight.copy_from_slice(&header[2..10]);
                u64::from_be_bytes(eight)
            }
            short => u64::from(short),
        };
        let known = matches!(opcode, 0x0..=0x2 | 0x8..=0xa);
        let control = opcode >= 0x8;
        let broken = !known
            || masked != (self.sender == Sender::Client)
            || (control && (!fin || length > 125))
            || length >> 63 != 0;
        if broken {
            return At::Lost;
        }
        match control {
            true => {
                self.tally.frames += 1;
                self.tally.controls += 1;
            }
            false => self.data_frame(fin, length, message),
        }
        if opcode == 0x8 && !self.closed {
            self.closed = true;
            // A client's key is the header's last four bytes (after a length written in two
            // or eight bytes too, which a peer may do even for a short control frame).
            let key = match (masked, header.len().checked_sub(4)) {
                (true, Some(at)) => [header[at], header[at + 1], header[at + 2], header[at + 3]],
                _ => [0; 4],
            };
            match length {
                0 => {
                    self.close = Some(Close {
                        code: 1005,
                        reason: 0,
                    })
                }
                1 => self.close = Some(Close { code: 0, reason: 0 }),
                n => {
                    self.capture = Some(Capture {
                        key,
                        got: 0,
                        code: [0; 2],
                        reason: (n - 2) as u8,
                    })
                }
            }
        }
        match length {
            0 => boundary(),
            n => At::Payload(n),
        }
    }

    /// A data frame's header went by: a message ends with its FIN.
    fn data_frame(&mut self, fin: bool, length: u64, message: &mut impl FnMut(u64)) {
        self.tally.frames += 1;
        self.message = self.message.saturating_add(length);
        if fin {
            self.tally.messages += 1;
            message(self.message);
            self.message = 0;
        }
    }

    /// What went by so far.
    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// The first close frame's code and reason length, once its code went by.
    pub fn close(&self) -> Option<Close> {
        self.close
    }

    /// Whether the stream is between two frames.
    pub fn at_boundary(&self) -> bool {
        matches!(self.at, At::Header { seen: 0, .. })
    }

    /// Whether the bytes seen were not WebSocket framing.
    pub fn lost(&self) -> bool {
        matches!(self.at, At::Lost)
    }

    /// Whether a close frame went by.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// How many of the next bytes certainly belong to the frame under way (0 at a boundary;
    /// `None` when lost). Inside a header whose length is not known yet, it is what the
    /// header needs at least; feed them and ask again.
    pub fn to_boundary(&self) -> Option<u64> {
        match &self.at {
            At::Lost => None,
            At::Payload(left) => Some(*left),
            At::Header { seen: 0, .. } => Some(0),
            At::Header { bytes, seen } => {
                let have = usize::from(*seen);
                let len = header_len(&bytes[..have]).unwrap_or(2);
                Some((len - have) as u64)
            }
        }
    }
}

impl Capture {
    /// Takes the start of `payload` (the close frame's next bytes) until the code's two
    /// bytes are in: then the close.
    fn take(&mut self, payload: &[u8]) -> Option<Close> {
        for &byte in payload.iter().take(usize::from(2 - self.got)) {
            let at = usize::from(self.got);
            self.code[at] = byte ^ self.key[at];
            self.got += 1;
        }
        (self.got == 2).then(|| Close {
            code: u16::from_be_bytes(self.code),
            reason: self.reason,
        })
    }
}

fn boundary() -> At {
    At::Header {
        bytes: [0; MAX_HEADER],
        seen: 0,
    }
}

/// A header's whole length, once its first two bytes are known.
fn header_len(start: &[u8]) -> Option<usize> {
    let second = *start.get(1)?;
    let extended = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    Some(2 + extended + mask)
}

/// The close frame `1001 Going Away` (§7.4.1) as a server sends it: unmasked.
pub const GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xe9];

/// The close frame `1001 Going Away` as a client sends it: masked with `key` (§5.3).
pub fn going_away_masked(key: [u8; 4]) -> [u8; 8] {
    [
        0x88,
        0x82,
        key[0],
        key[1],
        key[2],
        key[3],
        GOING_AWAY[2] ^ key[0],
        GOING_AWAY[3] ^ key[1],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a peer writes it: the header for `len` payload bytes, then the payload.
    fn frame(opcode: u8, len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        let bit = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(bit | len as u8),
            126..=0xffff => {
                f.push(bit | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(bit | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend((0..len).map(|i| i as u8));
        f
    }

    /// A stream of frames of every header size, and where each ends.
    fn stream(masked: bool) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for (opcode, len) in [
            (1, 5),
            (2, 0),
            (9, 3),
            (2, 300),
            (0, 70_000),
            (8, 2),
            (1, 125),
        ] {
            bytes.extend(frame(opcode, len, masked));
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    #[test]
    fn every_prefix_is_at_a_boundary_exactly_at_a_frame_end() {
        for (sender, masked) in [(Sender::Server, false), (Sender::Client, true)] {
            let (bytes, ends) = stream(masked);
            let mut frames = Frames::new(sender);
            assert!(frames.at_boundary());
            for i in 1..=bytes.len() {
                frames.feed(&bytes[i - 1..i], |_| ());
                assert_eq!(frames.at_boundary(), ends.contains(&i), "after {i} bytes");
                assert!(!frames.lost());
            }
        }
    }

    #[test]
    fn to_boundary_never_reaches_past_the_frame_end() {
        let (bytes, ends) = stream(false);
        let mut frames = Frames::new(Sender::Server);
        let mut i = 0;
        while i < bytes.len() {
            let next_end = *ends.iter().find(|&&e| e > i).expect("an end ahead");
            let step = frames.to_boundary().expect("framing") as usize;
            // At a boundary nothing is certain yet: the next header's first bytes are.
            let step = if step == 0 { 2 } else { step };
            assert!(i + step <= next_end, "at {i}: {step} would pass {next_end}");
            frames.feed(&bytes[i..i + step], |_| ());
            i += step;
            assert_eq!(frames.at_boundary(), ends.contains(&i), "at {i}");
        }
    }

    #[test]
    fn any_split_gives_the_same_position() {
        let (bytes, _) = stream(true);
        let mut whole = Frames::new(Sender::Client);
        whole.feed(&bytes, |_| ());
        assert!(whole.at_boundary());
        for split in 0..bytes.len().min(400) {
            let mut parts = Frames::new(Sender::Client);
            parts.feed(&bytes[..split], |_| ());
            parts.feed(&bytes[split..], |_| ());
            assert!(parts.at_boundary(), "split at {split}");
        }
    }

    #[test]
    fn what_is_not_websocket_framing_is_lost_for_good() {
        let cases: [(&str, Vec<u8>, Sender); 6] = [
            ("HTTP", b"HTTP/1.1 200 OK\r\n".to_vec(), Sender::Server),
            ("reserved opcode", frame(3, 1, false), Sender::Server),
            ("server frame masked", frame(1, 1, true), Sender::Server),
            ("client frame unmasked", frame(1, 1, false), Sender::Client),
            ("long ping", frame(9, 126, false), Sender::Server),
            ("fragmented close", vec![0x08, 0x00], Sender::Server),
        ];
        for (what, bytes, sender) in cases {
            let mut frames = Frames::new(sender);
            frames.feed(&bytes, |_| ());
            frames.feed(&frame(1, 1, sender == Sender::Client), |_| ());
            assert!(frames.lost(), "{what}");
            assert_eq!(frames.to_boundary(), None, "{what}");
        }
    }

    /// A frame with its FIN bit as given and its payload as given, masked with `key` when
    /// there is one.
    fn raw(fin: bool, opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = vec![u8::from(fin) << 7 | opcode];
        let bit = if key.is_some() { 0x80 } else { 0 };
        assert!(payload.len() < 126);
        f.push(bit | payload.len() as u8);
        let key = key.inspect(|k| f.extend_from_slice(k)).unwrap_or([0; 4]);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    #[test]
    fn fragments_are_one_message_and_control_frames_are_counted_apart() {
        for key in [None, Some([0x11, 0x22, 0x33, 0x44])] {
            let sender = if key.is_some() {
                Sender::Client
            } else {
                Sender::Server
            };
            let mut close = 4001u16.to_be_bytes().to_vec();
            close.extend_from_slice(b"bye now");
            let bytes: Vec<u8> = [
                raw(true, 1, b"2", key),    // engine.io's ping: a message
                raw(false, 1, b"hel", key), // a message in three fragments...
                raw(true, 9, b"", key),     // ...with a WebSocket ping between
                raw(false, 0, b"lo ", key),
                raw(true, 0, b"world", key),  // ...ends here: 11 bytes
                raw(true, 10, b"p", key),     // a pong
                raw(true, 2, &[0; 100], key), // a binary message
                raw(true, 8, &close, key),    // close 4001, a 7-byte reason
            ]
            .concat();
            let want = Tally {
                frames: 8,
                controls: 3,
                messages: 3,
            };
            // Whole, and split at every place: the same counts, sizes and close.
            for split in 0..=bytes.len() {
                let mut frames = Frames::new(sender);
                let mut sizes = Vec::new();
                frames.feed(&bytes[..split], |n| sizes.push(n));
                frames.feed(&bytes[split..], |n| sizes.push(n));
                assert_eq!(frames.tally(), want, "split at {split}");
                assert_eq!(sizes, [1, 11, 100], "split at {split}");
                let close = Close {
                    code: 4001,
                    reason: 7,
                };
                assert_eq!(frames.close(), Some(close), "split at {split}");
                assert!(frames.closed() && frames.at_boundary());
            }
        }
    }

    #[test]
    fn the_first_close_frame_is_the_one_reported() {
        let mut frames = Frames::new(Sender::Server);
        frames.feed(&raw(true, 8, b"", None), |_| ());
        assert_eq!(
            frames.close(),
            Some(Close {
                code: 1005,
                reason: 0
            })
        );
        frames.feed(&raw(true, 8, &1000u16.to_be_bytes(), None), |_| ());
        assert_eq!(frames.close().map(|c| c.code), Some(1005));
        let mut odd = Frames::new(Sender::Server);
        odd.feed(&raw(true, 8, &[3], None), |_| ());
        assert_eq!(odd.close(), Some(Close { code: 0, reason: 0 }));
        let mut going = Frames::new(Sender::Client);
        going.feed(&going_away_masked([0xde, 0xad, 0xbe, 0xef]), |_| ());
        assert_eq!(
            going.close(),
            Some(Close {
                code: 1001,
                reason: 0
            })
        );
    }

    #[test]
    fn a_length_with_the_top_bit_set_is_lost() {
        let mut frames = Frames::new(Sender::Server);
        frames.feed(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0], |_| ());
        assert!(frames.lost());
    }

    #[test]
    fn the_close_frames_read_as_one_frame_each() {
        let mut server = Frames::new(Sender::Server);
        server.feed(&GOING_AWAY, |_| ());
        assert!(server.at_boundary() && !server.lost());
        let masked = going_away_masked([9, 8, 7, 6]);
        let mut client = Frames::new(Sender::Client);
        client.feed(&masked, |_| ());
        assert!(client.at_boundary() && !client.lost());
        // Unmasked, the payload is the code 1001.
        assert_eq!([masked[6] ^ 9, masked[7] ^ 8], [0x03, 0xe9]);
    }
}
