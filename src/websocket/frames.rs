//! A WebSocket frame-length reader (RFC 6455 §5.2): it follows where each frame ends in a
//! stream of bytes, and nothing else. It never looks at a payload, never unmasks, never
//! buffers more than a frame header (14 bytes), and never fails: bytes that are not
//! WebSocket framing make it [`Frames::lost`] for good, and whoever asks then knows no
//! boundary can be found.
//!
//! Pure, like the head parser: bytes in, a position out. Tested on every prefix and fuzzed.

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte masking key.
const MAX_HEADER: usize = 14;

/// Whose frames a stream carries: a client's are masked, a server's are not (§5.1). A frame
/// with the other mask bit is not WebSocket framing from that peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    Client,
    Server,
}

/// Where a stream of frames is.
#[derive(Debug, Clone)]
pub struct Frames {
    sender: Sender,
    at: At,
    /// A close frame went by: the sender is ending the connection itself.
    closed: bool,
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
        }
    }

    /// Follows `bytes`, the next ones of the stream.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match &mut self.at {
                At::Lost => return,
                At::Payload(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
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
                    bytes = self.skip_data_frames(bytes);
                    if let Some(len) = header_len(bytes).filter(|&len| len <= bytes.len()) {
                        self.at = self.after_header(&bytes[..len]);
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
                        self.at = self.after_header(&header[..have]);
                    }
                }
            }
        }
    }

    /// From a boundary: skips the whole data frames of up to 64 KiB at the start of `bytes`
    /// and returns the rest, at a boundary: a burst of small messages costs a few
    /// instructions each. Anything else (a control frame, a longer or partial frame, a
    /// broken header) is left to the general path.
    fn skip_data_frames<'b>(&self, mut bytes: &'b [u8]) -> &'b [u8] {
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
            bytes = &bytes[end..];
        }
        bytes
    }

    /// A whole header: where the stream is now.
    fn after_header(&mut self, header: &[u8]) -> At {
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
        self.closed |= opcode == 0x8 && !broken;
        match (broken, length) {
            (true, _) => At::Lost,
            (false, 0) => boundary(),
            (false, n) => At::Payload(n),
        }
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
                frames.feed(&bytes[i - 1..i]);
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
            frames.feed(&bytes[i..i + step]);
            i += step;
            assert_eq!(frames.at_boundary(), ends.contains(&i), "at {i}");
        }
    }

    #[test]
    fn any_split_gives_the_same_position() {
        let (bytes, _) = stream(true);
        let mut whole = Frames::new(Sender::Client);
        whole.feed(&bytes);
        assert!(whole.at_boundary());
        for split in 0..bytes.len().min(400) {
            let mut parts = Frames::new(Sender::Client);
            parts.feed(&bytes[..split]);
            parts.feed(&bytes[split..]);
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
            frames.feed(&bytes);
            frames.feed(&frame(1, 1, sender == Sender::Client));
            assert!(frames.lost(), "{what}");
            assert_eq!(frames.to_boundary(), None, "{what}");
        }
    }

    #[test]
    fn a_length_with_the_top_bit_set_is_lost() {
        let mut frames = Frames::new(Sender::Server);
        frames.feed(&[0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert!(frames.lost());
    }

    #[test]
    fn the_close_frames_read_as_one_frame_each() {
        let mut server = Frames::new(Sender::Server);
        server.feed(&GOING_AWAY);
        assert!(server.at_boundary() && !server.lost());
        let masked = going_away_masked([9, 8, 7, 6]);
        let mut client = Frames::new(Sender::Client);
        client.feed(&masked);
        assert!(client.at_boundary() && !client.lost());
        // Unmasked, the payload is the code 1001.
        assert_eq!([masked[6] ^ 9, masked[7] ^ 8], [0x03, 0xe9]);
    }
}
