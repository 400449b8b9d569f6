//! The HTTP phase of a connection: from the first request head until it becomes a blind
//! tunnel (after a `101` to a WebSocket upgrade) or ends. Pure: bytes in, verdicts out.
//!
//! Why it exists: a tunnel that forwards bytes blindly after the first head is the shape of
//! real request-smuggling bugs (RFC 9931). While the connection is still HTTP, wssbridge
//! follows the framing of every request and response (Content-Length, chunked), and:
//! - after forwarding an upgrade request it forwards no further client byte until the
//!   backend's response head has been parsed; only a `101` whose `Upgrade` names the
//!   requested protocol opens the tunnel. Any other answer is relayed and the connection
//!   stays HTTP; a `101` that does not fit is answered 502 and the connection closed;
//! - every later request on a keep-alive connection is parsed as strictly as the first, and
//!   one whose host and path route elsewhere is never forwarded to this backend: the
//!   connection is closed once the responses to the requests before it are complete, so the
//!   client (a browser retries such a request) sends it again on a fresh connection, which
//!   is routed on its own.
//!
//! Once the tunnel is open the exchange is dropped: no parsing, no extra memory.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::config::Config;
use crate::framing::Body;
use crate::head::{self, BodyLength, Head, HeadError};
use crate::respond::Status;

/// A response head larger than this from a backend is treated as a broken backend.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Why the exchange stopped forwarding client bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A later request routes to another backend: close so the client retries it.
    Confined,
    /// A later request is refused with this status.
    Refused(Status),
}

/// Why a backend's bytes cannot be relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// A `101` that does not answer an upgrade request for that protocol: 502.
    BadUpgrade,
    /// Unparsable response, bad framing, or a response nobody asked for: close.
    Broken(&'static str),
}

pub struct Exchange {
    config: Arc<Config>,
    /// Index of the connection's route in the route table.
    route: usize,
    sni: Option<String>,
    up: Up,
    up_head: Vec<u8>,
    down: Down,
    down_head: Vec<u8>,
    pending: VecDeque<Pending>,
    stop: Option<Stop>,
    upgraded: bool,
    /// Set when a backend event may let held client bytes move.
    changed: bool,
}

enum Up {
    Head,
    Body(Body),
    /// An upgrade request was forwarded; hold until its response head.
    AwaitResponse,
    Stopped,
}

enum Down {
    Head,
    Body(Body),
}

struct Pending {
    head_method: bool,
    upgrade: Option<Upgrade>,
}

/// What an upgrade request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The protocol name, lower-case, without version (`websocket`).
    pub protocol: String,
    pub websocket_key: Option<String>,
}

/// Classifies a request's `Upgrade` (RFC 9110 §7.8). `Ok(None)`: not an upgrade request. Only
/// `websocket` and the protocols given with `--allow-upgrade` may be asked for, and only by a
/// GET; an `Upgrade` header without `Connection: upgrade` is inert (and a `101` to it is
/// refused).
pub fn check_upgrade(head: &Head, allowed: &[String]) -> Result<Option<Upgrade>, HeadError> {
    let Some(value) = &head.upgrade else {
        return Ok(None);
    };
    if head.method != "GET" {
        return Err(HeadError::Malformed("Upgrade on a request other than GET"));
    }
    let mut first = None;
    for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let protocol = token.split('/').next().unwrap_or(token);
        if protocol != "websocket" && !allowed.iter().any(|a| a == protocol) {
            return Err(HeadError::Malformed(
                "upgrade to a protocol that is not allowed",
            ));
        }
        first.get_or_insert(protocol);
    }
    match (first, head.connection_upgrade) {
        (Some(protocol), true) => Ok(Some(Upgrade {
            protocol: protocol.to_string(),
            websocket_key: head.websocket_key.clone(),
        })),
        _ => Ok(None),
    }
}

impl Exchange {
    pub fn new(config: Arc<Config>, route: usize, sni: Option<String>) -> Self {
        Exchange {
            config,
            route,
            sni,
            up: Up::Head,
            up_head: Vec::new(),
            down: Down::Head,
            down_head: Vec::new(),
            pending: VecDeque::new(),
            stop: None,
            upgraded: false,
            changed: false,
        }
    }

    /// True once a `101` opened the tunnel: from here on the bytes are not looked at.
    pub fn upgraded(&self) -> bool {
        self.upgraded
    }

    /// Whether held client bytes may now move (reset by reading it).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Set once the exchange stopped and every response before the stop is complete: the
    /// connection should now be closed (after the status, if any).
    pub fn finished(&self) -> Option<Stop> {
        let idle =
            self.pending.is_empty() && matches!(self.down, Down::Head) && self.down_head.is_empty();
        self.stop.filter(|_| idle)
    }

    /// Takes client bytes: appends what may go to the backend to `out` and returns how many
    /// bytes of `input` were taken. Takes nothing while holding (awaiting a response head, or
    /// stopped).
    pub fn from_client(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let mut taken = 0;
        while taken < input.len() {
            let rest = &input[taken..];
            match &mut self.up {
                Up::AwaitResponse | Up::Stopped => break,
                Up::Body(body) => match body.advance(rest) {
                    Ok(n) => {
                        out.extend_from_slice(&rest[..n]);
                        taken += n;
                        if body.is_done() {
                            self.up = Up::Head;
                        }
                    }
                    Err(_) => self.halt(Stop::Refused(Status::BadRequest)),
                },
                Up::Head => taken += self.take_head(rest, out),
            }
        }
        taken
    }

    /// Accumulates a request head; when it is complete, decides whether it may go on.
    fn take_head(&mut self, rest: &[u8], out: &mut Vec<u8>) -> usize {
        let max = self.config.limits.max_header_bytes;
        if self.up_head.is_empty() {
            // Blank lines between requests are allowed (RFC 9112 §2.2) and passed on.
            let blank = rest
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if blank > 0 {
                out.extend_from_slice(&rest[..blank]);
                return blank;
            }
        }
        let before = self.up_head.len();
        let take = rest.len().min(max - before);
        self.up_head.extend_from_slice(&rest[..take]);
        match head::parse(&self.up_head) {
            Ok(None) if self.up_head.len() >= max => {
                self.halt(Stop::Refused(Status::HeadersTooLarge));
                take
            }
            Ok(None) => take,
            Err(e) => {
                self.halt(Stop::Refused(crate::conn::status_for(e)));
                take
            }
            Ok(Some(head)) => {
                let used = head.len - before;
                self.up_head.truncate(head.len);
                self.admit(head, out);
                used
            }
        }
    }

    /// A complete request head: forward it, or stop before it.
    fn admit(&mut self, head: Head, out: &mut Vec<u8>) {
        let upgrade = match check_upgrade(&head, &self.config.security.allowed_upgrades) {
            Ok(u) => u,
            Err(_) => return self.halt(Stop::Refused(Status::BadRequest)),
        };
        let host = head.host.as_deref().or(self.sni.as_deref());
        if self.config.routes.find_index(host, &head.target) != Some(self.route) {
            return self.halt(Stop::Confined);
        }
        out.append(&mut self.up_head);
        self.up_head = Vec::new();
        self.up = match (&upgrade, head.body) {
            (Some(_), _) => Up::AwaitResponse,
            (None, BodyLength::Length(n)) => Up::Body(Body::Length(n)),
            (None, BodyLength::Chunked) => Up::Body(Body::chunked()),
            (None, _) => Up::Head,
        };
        self.pending.push_back(Pending {
            head_method: head.method == "HEAD",
            upgrade,
        });
    }

    fn halt(&mut self, stop: Stop) {
        self.up_head = Vec::new();
        self.up = Up::Stopped;
        self.stop.get_or_insert(stop);
    }

    /// Takes backend bytes: appends what may go to the client to `out`, returns how many
    /// bytes of `input` were taken. After a `101` that opens the tunnel it takes no more:
    /// the rest is tunnel data.
    pub fn from_backend(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Reject> {
        let mut taken = 0;
        while taken < input.len() && !self.upgraded {
            let rest = &input[taken..];
            match &mut self.down {
                Down::Body(body) => {
                    let n = body
                        .advance(rest)
                        .map_err(|_| Reject::Broken("bad response framing"))?;
                    out.extend_from_slice(&rest[..n]);
                    taken += n;
                    if body.is_done() {
                        self.response_done();
                    }
                }
                Down::Head => taken += self.take_response_head(rest, out)?,
            }
        }
        Ok(taken)
    }

    fn take_response_head(&mut self, rest: &[u8], out: &mut Vec<u8>) -> Result<usize, Reject> {
        let before = self.down_head.len();
        let take = rest.len().min(MAX_RESPONSE_HEAD - before);
        self.down_head.extend_from_slice(&rest[..take]);
        let response = match head::parse_response(&self.down_head) {
            Ok(Some(r)) => r,
            Ok(None) if self.down_head.len() >= MAX_RESPONSE_HEAD => {
                return Err(Reject::Broken("response head too large"));
            }
            Ok(None) => return Ok(take),
            Err(why) => return Err(Reject::Broken(why)),
        };
        let used = response.len - before;
        self.down_head.truncate(response.len);
        let Some(request) = self.pending.front() else {
            return Err(Reject::Broken("a response to no request"));
        };
        let body = match response.status {
            101 => {
                let fits = request.upgrade.as_ref().is_some_and(|u| {
                    response
                        .upgrade
                        .as_deref()
                        .is_some_and(|p| p.split('/').next() == Some(u.protocol.as_str()))
                        && (!self.config.security.check_websocket_accept
                            || u.protocol != "websocket"
                            || accept_matches(
                                u.websocket_key.as_deref(),
                                response.websocket_accept.as_deref(),
                            ))
                });
                if !fits {
                    return Err(Reject::BadUpgrade);
                }
                out.append(&mut self.down_head);
                self.down_head = Vec::new();
                self.pending.pop_front();
                self.upgraded = true;
                self.changed = true;
                return Ok(used);
            }
            100..=199 => Body::Done,
            204 | 304 => Body::Done,
            _ if request.head_method => Body::Done,
            _ => match response.body {
                BodyLength::Length(0) | BodyLength::None => Body::Done,
                BodyLength::Length(n) => Body::Length(n),
                BodyLength::Chunked => Body::chunked(),
                BodyLength::UntilClose => Body::UntilClose,
            },
        };
        out.append(&mut self.down_head);
        self.down_head = Vec::new();
        if (100..200).contains(&response.status) {
            return Ok(used); // informational: the final response is still to come
        }
        // A final response to an upgrade request that was refused: the client may go on, as
        // plain HTTP under the same rules.
        if matches!(self.up, Up::AwaitResponse) {
            self.up = Up::Head;
            self.changed = true;
        }
        match body {
            Body::Done => self.response_done(),
            body => self.down = Down::Body(body),
        }
        Ok(used)
    }

    fn response_done(&mut self) {
        self.down = Down::Head;
        self.pending.pop_front();
        self.changed = true;
    }
}

/// RFC 6455 §4.2.2: `Sec-WebSocket-Accept` is base64(SHA-1(key + GUID)).
fn accept_matches(key: Option<&str>, accept: Option<&str>) -> bool {
    use base64::Engine;
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let (Some(key), Some(accept)) = (key, accept) else {
        return false;
    };
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref()) == accept
}

#[cfg(test)]
mod tests;
