//! Session tickets, with keys that outlive the process: after a deploy or a network blip,
//! thousands of socket.io clients reconnect within a second or two, and each that resumes
//! skips the key exchange and the signature of a full handshake.
//!
//! - `--ticket-keys PATH` (nginx's `ssl_session_ticket_key`, HAProxy's `tls-ticket-keys`): a
//!   file of keys, one per line, each the base64 of 80 random bytes (`openssl rand 80 |
//!   base64 -w0`); blank lines and `#` comments are skipped. **The first line issues
//!   tickets; every line is accepted.** The file is read again at each reload, so a fleet
//!   shares its keys and a rotation is a file change (a new first line, the old one kept
//!   below it for a ticket's lifetime). Checked like a private key ([`check_file`]).
//! - Without it, the process makes its own key and replaces it every [`ROTATE`] (keeping
//!   the one before, so tickets live out their lifetime), as rustls's own ticketer does; a
//!   binary upgrade hands the keys in force, with their age, to the new process (`upgrade`,
//!   as one datagram on an inherited socket: never a file), so an upgrade keeps resumption.
//!
//! A key's first 16 bytes are its name, as in nginx's and HAProxy's 80-byte keys (which order
//! the other 64 differently: nginx HMAC then AES, HAProxy AES then HMAC). Here the AES-256-GCM
//! key is derived from those 64 bytes with HKDF-SHA256 under a label of wssbridge's own, so a
//! file made for nginx or HAProxy is never used as the same key in another cipher. A ticket
//! is `name ‖ nonce (12) ‖ AES-256-GCM(state) ‖ tag (16)`, the name as associated data; the
//! tickets are wssbridge's own (no two TLS stacks share a ticket's contents).

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use rustls::server::ProducesTickets;

/// The bytes of one key.
pub const KEY_BYTES: usize = 80;
const NAME: usize = 16;
const TAG: usize = 16;

/// How long the process's own key issues tickets before a new one takes over (rustls's
/// ticketer rotates as often).
pub const ROTATE: Duration = Duration::from_secs(6 * 3600);
/// The lifetime a ticket is announced with: what a client may keep it for.
const LIFETIME: u32 = 6 * 3600;

/// One key: its 80 bytes as given, and the AEAD key made of them.
pub struct Key {
    bytes: [u8; KEY_BYTES],
    aead: LessSafeKey,
}

impl Key {
    pub fn new(bytes: [u8; KEY_BYTES]) -> Key {
        let salt = Salt::new(HKDF_SHA256, b"wssbridge session ticket key");
        let prk = salt.extract(&bytes[NAME..]);
        let unbound: UnboundKey = prk
            .expand(&[b"aes-256-gcm"], &AES_256_GCM)
            .expect("32 bytes are within HKDF-SHA256's reach")
            .into();
        Key {
            bytes,
            aead: LessSafeKey::new(unbound),
        }
    }

    fn random(rng: &SystemRandom) -> Option<Key> {
        let mut bytes = [0u8; KEY_BYTES];
        rng.fill(&mut bytes).ok()?;
        Some(Key::new(bytes))
    }

    fn name(&self) -> &[u8] {
        &self.bytes[..NAME]
    }
}

impl fmt::Debug for Key {
    /// The name only: a key's secret never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:02x?})", &self.bytes[..4])
    }
}

/// Keys read from a `--ticket-keys` file: the first issues, all are accepted.
#[derive(Debug, Clone)]
pub struct TicketKeys(pub Vec<[u8; KEY_BYTES]>);

/// Reads the keys of `text`; an error names the line and says what to write.
pub fn parse(text: &str) -> Result<TicketKeys, String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(line)
            .map_err(|e| format!("line {}: not base64 ({e})", i + 1))?;
        let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "line {}: {} bytes where a key is {KEY_BYTES} (write one with `openssl rand 80 | base64 -w0`)",
                i + 1,
                bytes.len()
            )
        })?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err("no key in it (write one with `openssl rand 80 | base64 -w0`)".into());
    }
    Ok(TicketKeys(keys))
}

/// Checks `path` as a private key is checked, then reads its keys: a file others may read,
/// or its group may write, is refused (chmod 600, or 640 with a group such as ssl-cert).
pub fn read_file(path: &Path) -> anyhow::Result<TicketKeys> {
    check_file(path)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--ticket-keys {}: {e}", path.display()))?;
    parse(&text).map_err(|e| anyhow::anyhow!("--ticket-keys {}: {e}", path.display()))
}

/// Whoever reads the file can decrypt every ticket it issued, and so every session resumed
/// with one: the file is refused when others may read or write it, or its group may write.
pub fn check_file(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| anyhow::anyhow!("--ticket-keys {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o027 != 0 {
        anyhow::bail!(
            "--ticket-keys {}: mode {mode:03o} lets others read it or its group write it; \
             whoever reads it can decrypt resumed sessions (chmod 600, or 640 with a group \
             such as ssl-cert)",
            path.display()
        );
    }
    Ok(())
}

/// The keys in force, with when the first was made (for the process's own, which rotate).
struct InForce {
    keys: Vec<Key>,
    since: Instant,
    /// Made by this process (or handed down by the one before): replaced every [`ROTATE`].
    own: bool,
}

/// The process's ticketer, shared by every TLS configuration; its keys are swapped by a
/// reload (`--ticket-keys`) or rotated (its own).
pub struct Ticketer {
    keys: ArcSwap<InForce>,
    rng: SystemRandom,
    /// Held while a rotation decides, so two handshakes that find the key due do not both
    /// rotate (the second would drop the key before the first).
    rotating: Mutex<()>,
}

impl fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.keys.load();
        f.debug_struct("Ticketer")
            .field("keys", &keys.keys.len())
            .field("own", &keys.own)
            .finish()
    }
}

impl Ticketer {
    /// With a key of its own, or those handed down by the process before an upgrade.
    pub fn new(inherited: Option<TicketKeys>) -> anyhow::Result<Ticketer> {
        let rng = SystemRandom::new();
        let keys = match inherited {
            Some(keys) => keys.0.into_iter().map(Key::new).collect(),
            None => {
                let key = Key::random(&rng);
                vec![key.ok_or_else(|| anyhow::anyhow!("no random bytes for a ticket key"))?]
            }
        };
        Ok(Ticketer {
            keys: ArcSwap::from_pointee(InForce {
                keys,
                since: Instant::now(),
                own: true,
            }),
            rng,
            rotating: Mutex::new(()),
        })
    }

    /// Issues with the first of `keys` from now on and accepts them all (a reload of
    /// `--ticket-keys`). `None` (the flag removed) goes back to a key of its own, keeping the
    /// file's keys acceptable until the next rotation.
    pub fn set(&self, keys: Option<&TicketKeys>) {
        match keys {
            Some(keys) => self.keys.store(Arc::new(InForce {
                keys: keys.0.iter().copied().map(Key::new).collect(),
                since: Instant::now(),
                own: false,
            })),
            None if !self.keys.load().own => {
                let _held = self.rotating.lock().unwrap_or_else(|e| e.into_inner());
                self.rotate(usize::MAX);
            }
            None => {}
        }
    }

    /// Takes the keys the process before an upgrade handed down (`lines`, as
    /// [`Ticketer::export`] writes them), unless `--ticket-keys` gives them: they go on
    /// issuing, and rotate when they would have there (their age comes with them), so
    /// upgrades more often than [`ROTATE`] do not keep a key for good.
    pub fn adopt(&self, keys: &TicketKeys, lines: &str) {
        if !self.keys.load().own {
            return;
        }
        let age = made_at(lines)
            .and_then(|made| SystemTime::now().duration_since(made).ok())
            .unwrap_or_default();
        let since = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.keys.store(Arc::new(InForce {
            keys: keys.0.iter().copied().map(Key::new).collect(),
            since,
            own: true,
        }));
    }

    /// Whether the keys are the process's own (not a `--ticket-keys` file's).
    pub fn own(&self) -> bool {
        self.keys.load().own
    }

    /// The keys in force, first the one that issues, as a `--ticket-keys` file's lines (for
    /// the next process of an upgrade).
    /// A `# made UNIX-SECONDS` line first says when the first key began issuing.
    pub fn export(&self) -> String {
        let keys = self.keys.load();
        let made = SystemTime::now()
            .checked_sub(keys.since.elapsed())
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let mut out = format!("# made {made}\n");
        for key in &keys.keys {
            out += &(base64::engine::general_purpose::STANDARD.encode(key.bytes) + "\n");
        }
        out
    }

    /// A new key of its own issues; the `keep` that issued before are still accepted (the
    /// caller holds `rotating`).
    fn rotate(&self, keep: usize) {
        let Some(new) = Key::random(&self.rng) else {
            return;
        };
        let old = self.keys.load();
        let previous = old.keys.iter().take(keep).map(|k| Key::new(k.bytes));
        self.keys.store(Arc::new(InForce {
            keys: std::iter::once(new).chain(previous).collect(),
            since: Instant::now(),
            own: true,
        }));
    }

    /// Rotates its own key once it has issued for [`ROTATE`]: decided under `rotating`, with
    /// the age read again there, so one handshake rotates and the others see the new key.
    fn rotate_if_due(&self) {
        let due = |keys: &InForce| keys.own && keys.since.elapsed() >= ROTATE;
        if !due(&self.keys.load()) {
            return;
        }
        let _held = self.rotating.lock().unwrap_or_else(|e| e.into_inner());
        if due(&self.keys.load()) {
            self.rotate(1);
        }
    }
}

impl ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.rotate_if_due();
        let keys = self.keys.load();
        let key = keys.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NAME + NONCE_LEN + plain.len() + TAG);
        ticket.extend_from_slice(key.name());
        ticket.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.name()),
                &mut sealed,
            )
            .ok()?;
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    /// `cipher` is the client's: any length, any bytes. A name no key has, or a ticket that
    /// does not open, is `None`: the client gets a full handshake.
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        if cipher.len() < NAME + NONCE_LEN + TAG {
            return None;
        }
        let (name, rest) = cipher.split_at(NAME);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.keys.load();
        let key = keys.keys.iter().find(|k| k.name() == name)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut opened = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(name), &mut opened)
            .ok()?;
        let len = plain.len();
        opened.truncate(len);
        Some(opened)
    }
}

/// When the first key of an exported list began issuing (its `# made` line).
fn made_at(lines: &str) -> Option<SystemTime> {
    let secs = lines.lines().find_map(|l| l.strip_prefix("# made "))?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(fill: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([fill; KEY_BYTES])
    }

    #[test]
    fn the_file_is_lines_of_80_bytes_in_base64() {
        let text = format!("# rotated 2026-12-06\n{}\n\n{}\n", line(1), line(2));
        let keys = parse(&text).unwrap();
        assert_eq!(keys.0, vec![[1; KEY_BYTES], [2; KEY_BYTES]]);
        let short = base64::engine::general_purpose::STANDARD.encode([0u8; 48]);
        let err = parse(&format!("{}\n{short}\n", line(1))).unwrap_err();
        assert!(
            err.starts_with("line 2: 48 bytes where a key is 80"),
            "{err}"
        );
        assert!(
            parse("not base64!\n")
                .unwrap_err()
                .starts_with("line 1: not base64")
        );
        assert!(
            parse("# only a comment\n")
                .unwrap_err()
                .starts_with("no key")
        );
    }

    #[test]
    fn the_first_key_issues_and_every_key_opens() {
        let one = Ticketer::new(None).unwrap();
        let two = parse(&format!("{}\n{}\n", line(7), line(8))).unwrap();
        one.set(Some(&two));
        let ticket = one.encrypt(b"session state").unwrap();
        assert_eq!(&ticket[..NAME], &[7; NAME], "issued by the first line");
        assert_eq!(one.decrypt(&ticket).unwrap(), b"session state");
        // Another process (a fleet member) with the same file opens it; after a rotation that
        // keeps the old key below the new one, it still does.
        let other = Ticketer::new(None).unwrap();
        other.set(Some(&two));
        assert_eq!(other.decrypt(&ticket).unwrap(), b"session state");
        let rotated = parse(&format!("{}\n{}\n", line(9), line(7))).unwrap();
        other.set(Some(&rotated));
        assert_eq!(other.decrypt(&ticket).unwrap(), b"session state");
        assert_eq!(&other.encrypt(b"x").unwrap()[..NAME], &[9; NAME]);
        // Dropped from the file: refused, and the client does a full handshake.
        other.set(Some(&parse(&line(9)).unwrap()));
        assert_eq!(other.decrypt(&ticket), None);
    }

    #[test]
    fn a_ticket_tampered_with_or_cut_short_does_not_open() {
        let t = Ticketer::new(None).unwrap();
        let ticket = t.encrypt(b"state").unwrap();
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(t.decrypt(&bad), None, "byte {i} flipped");
        }
        for len in 0..ticket.len() {
            assert_eq!(t.decrypt(&ticket[..len]), None, "cut to {len}");
        }
    }

    #[test]
    fn keys_handed_to_the_next_process_open_its_tickets() {
        let old = Ticketer::new(None).unwrap();
        let ticket = old.encrypt(b"resume me").unwrap();
        let lines = old.export();
        let new = Ticketer::new(None).unwrap();
        new.adopt(&parse(&lines).unwrap(), &lines);
        assert_eq!(new.decrypt(&ticket).unwrap(), b"resume me");
        // Its own keys rotate: the one before is still accepted.
        new.rotate(1);
        assert_eq!(new.decrypt(&ticket).unwrap(), b"resume me");
        assert_ne!(&new.encrypt(b"x").unwrap()[..NAME], &ticket[..NAME]);
    }

    #[test]
    fn handed_down_keys_keep_their_age() {
        let old = Ticketer::new(None).unwrap();
        let first = old.encrypt(b"x").unwrap();
        let made = SystemTime::now() - ROTATE - Duration::from_secs(60);
        let secs = made
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let exported = old.export();
        let keys: Vec<&str> = exported.lines().skip(1).collect();
        let lines = format!("# made {secs}\n{}\n", keys.join("\n"));
        let new = Ticketer::new(None).unwrap();
        new.adopt(&parse(&lines).unwrap(), &lines);
        // Due already: the next ticket is issued by a new key; the old one still opens.
        let next = new.encrypt(b"y").unwrap();
        assert_ne!(&next[..NAME], &first[..NAME]);
        assert_eq!(new.decrypt(&first).unwrap(), b"x");
    }

    #[test]
    fn rotations_racing_keep_the_key_before() {
        let t = Arc::new(Ticketer::new(None).unwrap());
        let ticket = t.encrypt(b"old").unwrap();
        // Make it due, then let eight handshakes find it so at once.
        let stale = Instant::now()
            .checked_sub(ROTATE + Duration::from_secs(1))
            .unwrap();
        let again: Vec<Key> = t
            .keys
            .load()
            .keys
            .iter()
            .map(|k| Key::new(k.bytes))
            .collect();
        t.keys.store(Arc::new(InForce {
            keys: again,
            since: stale,
            own: true,
        }));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || t.encrypt(b"new").unwrap())
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(t.keys.load().keys.len(), 2, "one rotation");
        assert_eq!(t.decrypt(&ticket).unwrap(), b"old", "the key before kept");
    }

    #[test]
    fn a_file_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("wssbridge-tickets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, line(3)).unwrap();
        for (mode, ok) in [(0o600, true), (0o640, true), (0o644, false), (0o660, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let read = read_file(&path);
            assert_eq!(read.is_ok(), ok, "{mode:o}: {read:?}");
            if let Err(e) = read {
                assert!(e.to_string().contains("chmod 600"), "{e}");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
