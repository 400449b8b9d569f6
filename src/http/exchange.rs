//! The HTTP phase of a connection: from the first request head until it becomes a blind
//! tunnel (after a `101` to a WebSocket upgrade) or ends. Pure: bytes in, verdicts out; the
//! splice asks it, as its [`Gate`], what may pass.
//!
//! Why it exists: a tunnel that forwards bytes blindly after the first head is the shape of
//! real request-smuggling bugs (RFC 9931). While the connection is still HTTP, wssbridge
//! follows the framing of every request and response (Content-Length, chunked), and:
//! - after forwarding an upgrade request it forwards no further client byte until the
//!   backend's response head has been parsed; only a `101` whose `Upgrade` names the
//!   requested protocol opens the tunnel. Any other answer is relayed and the connection
//!   stays HTTP; a `101` that does not fit is answered 502 and the connection closed;
//! - every later request on a keep-alive connection is parsed as strictly as the first and
//!   goes through the same [`admit`]: one whose host and path route elsewhere is never
//!   forwarded to this backend (see `admit`).
//!
//! Once the tunnel is open the exchange is dropped: no parsing, no extra memory.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::respond::Status;
use crate::splice::{Gate, Halt, Wait};

use super::admit::{Refusal, Upgrade, admit};
use super::forwarded::{self, Forwarding};
use super::framing::{Body, FramingError};
use super::head::{self, Fed, Head};
use super::policy::Policy;

/// A response head larger than this from a backend is treated as a broken backend.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Why the exchange stopped forwarding client bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A later request routes to another backend: close so the client retries it.
    Confined,
    /// Under `--balance cookie`, a later request's affinity cookie names another backend of
    /// the route: close before it, so the client's retry goes where its cookie says.
    Elsewhere,
    /// A later request is refused with this status.
    Refused(Status),
    /// A request body's framing broke behind responses still due: answered once they are
    /// relayed, or closed when its own response had begun.
    BadBody,
    /// No next request within `--keepalive-timeout`: closed without an answer.
    KeepaliveTimeout,
    /// A request body made no progress for `--body-timeout` after its response had begun:
    /// closed without an answer (with none begun it is answered 408).
    BodyTimeout,
    /// Shutdown: closed at a request boundary, once every response before it is complete.
    Drained,
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
    policy: Arc<Policy>,
    /// Index of the connection's route in the route table.
    route: usize,
    sni: Option<String>,
    up: Up,
    up_head: Vec<u8>,
    down: Down,
    down_head: Vec<u8>,
    /// Requests forwarded whose responses are still to come, oldest first.
    awaited: VecDeque<Awaited>,
    stop: Option<Stop>,
    /// The stop ends the connection at once, not after the responses before it.
    stop_now: bool,
    /// Requests forwarded so far: tells one wait for the client from the next.
    requests: u64,
    /// Body bytes taken so far: each read of a body restarts `--body-timeout`.
    body_taken: u64,
    /// The protocol a `101` opened the tunnel to (its `Upgrade` token).
    opened_to: Option<String>,
    /// Shutdown asked: stop at the next request boundary.
    draining: bool,
    upgraded: bool,
    /// Set when a backend event may let held client bytes move.
    changed: bool,
    /// `--add-forwarded`: every later request head gets the client's address.
    forwarding: Option<Forwarding>,
    /// `--balance cookie`: the affinity cookie this connection's backend answers to.
    affinity: Option<CookieRule>,
}

/// Under `--balance cookie`: the affinity cookie of the connection's backend. A final
/// response to a request that did not carry `mine` gets `line` (one header line, the rest of
/// the head unchanged); a later request carrying a value in `others` goes elsewhere (the
/// connection is closed before it, so the client's retry is placed by its cookie, and its
/// cookie is never overwritten here). A `101` is never changed.
#[derive(Debug, Clone)]
pub struct CookieRule {
    pub name: String,
    /// The value naming this connection's backend.
    pub mine: String,
    /// The values naming the route's other backends when it connected.
    pub others: Vec<String>,
    /// `Set-Cookie: NAME=MINE; …` and CRLF.
    pub line: Vec<u8>,
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

/// A forwarded request, as its response will be framed and checked.
struct Awaited {
    head_method: bool,
    upgrade: Option<Upgrade>,
    /// Under `--balance cookie`: it did not carry the cookie naming this backend, so its
    /// final response sets it.
    set_cookie: bool,
}

impl Exchange {
    /// An exchange on a connection bound to `route` whose requests are all still to come.
    pub fn new(policy: Arc<Policy>, route: usize, sni: Option<String>) -> Self {
        Exchange {
            policy,
            route,
            sni,
            up: Up::Head,
            up_head: Vec::new(),
            down: Down::Head,
            down_head: Vec::new(),
            awaited: VecDeque::new(),
            stop: None,
            stop_now: false,
            requests: 0,
            body_taken: 0,
            opened_to: None,
            draining: false,
            upgraded: false,
            changed: false,
            forwarding: None,
            affinity: None,
        }
    }

    /// Adds the client's address to every later request head (`--add-forwarded`).
    pub fn forwarding(mut self, forwarding: Option<Forwarding>) -> Self {
        self.forwarding = forwarding;
        self
    }

    /// The exchange after the connection's first request, which [`admit`] let through with
    /// `upgrade`, and whose head bytes go to the backend as they are: the first head is
    /// parsed once.
    pub fn after_first(
        policy: Arc<Policy>,
        (route, affinity): (usize, Option<CookieRule>),
        sni: Option<String>,
        first: &Head,
        upgrade: Option<Upgrade>,
    ) -> Self {
        let mut exchange = Exchange::new(policy, route, sni);
        exchange.affinity = affinity;
        exchange.forwarded(first, upgrade);
        exchange
    }

    /// True once a `101` opened the tunnel: from here on the bytes are not looked at.
    pub fn upgraded(&self) -> bool {
        self.upgraded
    }

    /// Whether held client bytes may now move (reset by reading it).
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Set once the exchange stopped and every response before the stop is complete (or at
    /// once, for a stop that cannot wait for them): the connection should now be closed
    /// (after the status, if any).
    pub fn finished(&self) -> Option<Stop> {
        let stop = self.stop?;
        if self.stop_now || self.responses_done() {
            return Some(stop);
        }
        // A broken body behind other requests: their responses go first; then only the
        // broken one is left, whose response the backend will not send (it waits for the rest
        // of the body), and none has begun: answer it.
        (stop == Stop::BadBody && self.only_its_response_left())
            .then_some(Stop::Refused(Status::BadRequest))
    }

    /// No response is due or under way.
    fn responses_done(&self) -> bool {
        self.awaited.is_empty() && matches!(self.down, Down::Head) && self.down_head.is_empty()
    }

    /// What the exchange waits for from the client: the rest of a head it has begun, the
    /// next bytes of a body on its way, or, with every response complete, the next request.
    /// Nothing while a response is due to an upgrade (the backend's turn).
    pub fn waiting(&self) -> Option<Wait> {
        match self.up {
            Up::Head if !self.up_head.is_empty() => Some(Wait::Head(self.requests)),
            Up::Head if self.responses_done() => Some(Wait::Next(self.requests)),
            Up::Body(_) => Some(Wait::Body(self.body_taken)),
            _ => None,
        }
    }

    /// A wait for the client ran out: a head begun and not complete is answered 408 (after
    /// the responses before it), a keep-alive connection with no next request is closed, and
    /// a body that stopped is answered 408 when no response to it has begun (the backend
    /// still waits for the body), else the connection ends at once: both sides.
    pub fn expired(&mut self, wait: Wait) {
        match wait {
            Wait::Head(_) => self.halt(Stop::Refused(Status::RequestTimeout)),
            Wait::Next(_) => self.halt(Stop::KeepaliveTimeout),
            Wait::Body(_) => {
                let stop = match self.only_its_response_left() {
                    true => Stop::Refused(Status::BodyTimeout),
                    false => Stop::BodyTimeout,
                };
                self.halt(stop);
                self.stop_now = true;
            }
        }
    }

    /// The request whose body is on its way is the only one due, and no response to it has
    /// begun: an answer from us now would be read as its response.
    fn only_its_response_left(&self) -> bool {
        self.awaited.len() == 1 && matches!(self.down, Down::Head) && self.down_head.is_empty()
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
                Up::Body(body) => match body.advance(rest, out) {
                    Ok(n) => {
                        taken += n;
                        self.body_taken += n as u64;
                        if body.is_done() {
                            self.next_request();
                        }
                    }
                    Err(FramingError::TooLarge) => {
                        self.body_broken(Status::HeadersTooLarge);
                    }
                    Err(FramingError::Malformed(_)) => self.body_broken(Status::BadRequest),
                },
                Up::Head => taken += self.take_head(rest, out),
            }
        }
        taken
    }

    /// Gathers a request head; when it is complete, decides whether it may go on.
    fn take_head(&mut self, rest: &[u8], out: &mut Vec<u8>) -> usize {
        if self.up_head.is_empty() {
            // Blank lines between requests are allowed (RFC 9112 §2.2) and dropped: a
            // backend that answers one would send a response to no request, and they do not
            // restart `--keepalive-timeout`.
            let blank = rest
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if blank > 0 {
                return blank;
            }
        }
        let max = self.policy.max_header_bytes;
        let (taken, fed) = head::gather(&mut self.up_head, rest, max, head::parse);
        match fed {
            Fed::More => {}
            Fed::TooLarge => self.halt(Stop::Refused(Status::HeadersTooLarge)),
            Fed::Invalid(e) => self.halt(Stop::Refused(e.status())),
            Fed::Head(head) => {
                match admit(&self.policy, &head, self.sni.as_deref(), Some(self.route)) {
                    Ok(_) if self.goes_elsewhere(&head) => self.halt(Stop::Elsewhere),
                    Ok(admitted) => {
                        match &self.forwarding {
                            Some(fwd) => forwarded::rewrite(&self.up_head, fwd, out),
                            None => out.extend_from_slice(&self.up_head),
                        }
                        self.up_head = Vec::new();
                        self.forwarded(&head, admitted.upgrade);
                    }
                    Err(Refusal::Status(status)) => self.halt(Stop::Refused(status)),
                    Err(Refusal::Confined) => self.halt(Stop::Confined),
                }
            }
        }
        taken
    }

    /// A request head went to the backend: follow its body, and expect its response.
    fn forwarded(&mut self, head: &Head, upgrade: Option<Upgrade>) {
        self.requests += 1;
        match (&upgrade, &head.body) {
            (Some(_), _) => self.up = Up::AwaitResponse,
            (None, Body::Done) => self.next_request(),
            (None, body) => {
                let body = body.clone().limit_trailers(self.policy.max_header_bytes);
                self.up = Up::Body(body);
            }
        };
        let set_cookie = self.affinity.as_ref().is_some_and(|rule| {
            let carried = head
                .cookie
                .as_deref()
                .and_then(|c| head::cookie(c, &rule.name));
            carried != Some(rule.mine.as_str())
        });
        self.awaited.push_back(Awaited {
            head_method: head.method == "HEAD",
            upgrade,
            set_cookie,
        });
    }

    /// Under `--balance cookie`: `head` carries a cookie naming another backend of the route
    /// that was up.
    fn goes_elsewhere(&self, head: &Head) -> bool {
        let (Some(rule), Some(cookie)) = (&self.affinity, &head.cookie) else {
            return false;
        };
        head::cookie(cookie, &rule.name).is_some_and(|v| rule.others.iter().any(|o| o == v))
    }

    /// The affinity cookie's line, for the response to `request`.
    fn set_cookie_for(&self, request: &Awaited) -> Option<&[u8]> {
        let rule = self.affinity.as_ref()?;
        request.set_cookie.then_some(rule.line.as_slice())
    }

    /// A request body's framing broke after its head went on: the backend waits for a body
    /// that will never be whole, and its answer may never come. When no response to it has
    /// begun and none before it is due, it is answered `status` (400, or 431 for a trailer
    /// section too large) and the connection ends now, both sides at once; when its own
    /// response has begun, it is closed at once. When responses to earlier requests are still
    /// due, they are relayed first (`finished`), then it is answered 400.
    fn body_broken(&mut self, status: Status) {
        let answerable = self.only_its_response_left();
        let its_own_response_began = !answerable && self.awaited.len() == 1;
        match (answerable, its_own_response_began) {
            (true, _) => {
                self.halt(Stop::Refused(status));
                self.stop_now = true;
            }
            // A 400 now would read as part of the response under way: close at once.
            (false, true) => {
                self.halt(Stop::BadBody);
                self.stop_now = true;
            }
            (false, false) => self.halt(Stop::BadBody),
        }
    }

    /// A request is wholly forwarded: the next one may begin, unless shutdown asked the
    /// connection to end here.
    fn next_request(&mut self) {
        self.up = Up::Head;
        if self.draining {
            self.halt(Stop::Drained);
        }
    }

    /// Shutdown asks the connection to end at its next request boundary: now, if it is at
    /// one (no head begun); else once the request under way is wholly forwarded. A request
    /// already forwarded gets its response first; an upgrade that succeeds is a tunnel, which
    /// drains on its own terms.
    pub fn drain(&mut self) {
        self.draining = true;
        if matches!(self.up, Up::Head) && self.up_head.is_empty() {
            self.halt(Stop::Drained);
        }
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
                        .advance(rest, out)
                        .map_err(|_| Reject::Broken("bad response framing"))?;
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
        let (used, fed) = head::gather(
            &mut self.down_head,
            rest,
            MAX_RESPONSE_HEAD,
            head::parse_response,
        );
        let response = match fed {
            Fed::Head(r) => r,
            Fed::More => return Ok(used),
            Fed::TooLarge => return Err(Reject::Broken("response head too large")),
            Fed::Invalid(why) => return Err(Reject::Broken(why)),
        };
        let Some(request) = self.awaited.front() else {
            return Err(Reject::Broken("a response to no request"));
        };
        let body = match response.status {
            101 => {
                let fits = request.upgrade.as_ref().is_some_and(|u| {
                    response
                        .upgrade
                        .as_deref()
                        .is_some_and(|p| p.split('/').next() == Some(u.protocol.as_str()))
                        && (!self.policy.security.check_websocket_accept
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
                self.opened_to = self
                    .awaited
                    .pop_front()
                    .and_then(|r| r.upgrade)
                    .map(|u| u.protocol);
                self.upgraded = true;
                self.changed = true;
                return Ok(used);
            }
            100..=199 => Body::Done,
            204 | 304 => Body::Done,
            _ if request.head_method => Body::Done,
            _ => response.body,
        };
        if (100..200).contains(&response.status) {
            out.append(&mut self.down_head);
            return Ok(used); // informational: the final response is still to come
        }
        let add = self.set_cookie_for(request);
        match (self.last_before_drain(), add) {
            (false, None) => out.extend_from_slice(&self.down_head),
            (closing, add) => rewritten(&self.down_head, closing, add.unwrap_or_default(), out),
        }
        self.down_head = Vec::new();
        // A final response to an upgrade request that was refused: the client may go on, as
        // plain HTTP under the same rules.
        if matches!(self.up, Up::AwaitResponse) {
            self.next_request();
            self.changed = true;
        }
        match body {
            Body::Done => self.response_done(),
            body => self.down = Down::Body(body),
        }
        Ok(used)
    }

    /// Whether the final response beginning now is the connection's last: shutdown asked, it
    /// answers the only request still due, and no other request will follow it.
    fn last_before_drain(&self) -> bool {
        let ending = match self.up {
            Up::Stopped => self.stop == Some(Stop::Drained),
            Up::Body(_) | Up::AwaitResponse => self.stop.is_none(),
            Up::Head => false,
        };
        self.draining && ending && self.awaited.len() == 1
    }

    fn response_done(&mut self) {
        self.down = Down::Head;
        self.awaited.pop_front();
        self.changed = true;
    }
}

/// The splice's view of the exchange: client bytes held or passed, backend bytes relayed
/// until a `101` opens the tunnel, and the answer to send when the exchange stops.
impl Gate for Exchange {
    type Reason = Stop;

    fn client(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        self.from_client(input, out)
    }

    fn backend(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Halt<Stop>> {
        self.from_backend(input, out).map_err(|r| match r {
            Reject::BadUpgrade => Halt::Stop(Stop::Refused(Status::BadGateway)),
            Reject::Broken(why) => Halt::Broken(why),
        })
    }

    fn is_open(&self) -> bool {
        self.upgraded
    }

    fn opened_to(&self) -> Option<&str> {
        self.opened_to.as_deref()
    }

    fn take_changed(&mut self) -> bool {
        Exchange::take_changed(self)
    }

    fn finished(&self) -> Option<Stop> {
        Exchange::finished(self)
    }

    fn answer(stop: Stop) -> Option<Vec<u8>> {
        match stop {
            Stop::Refused(status) => Some(status.response().into_bytes()),
            Stop::Confined
            | Stop::Elsewhere
            | Stop::BadBody
            | Stop::KeepaliveTimeout
            | Stop::BodyTimeout
            | Stop::Drained => None,
        }
    }

    fn waiting(&self) -> Option<Wait> {
        Exchange::waiting(self)
    }

    fn expired(&mut self, wait: Wait) {
        Exchange::expired(self, wait)
    }

    fn drain(&mut self) {
        Exchange::drain(self)
    }
}

/// Appends a response `head` to `out`, byte for byte the same but for two changes, the only
/// ones wssbridge makes to a response: `add` (whole header lines, CRLF-ended: the affinity
/// cookie) goes last among the header lines; and when `closing` (the connection's last
/// response, at shutdown), `Connection` and `Keep-Alive` lines are left out and
/// `Connection: close` (CRLF) is the very last header line.
///
/// Blank lines before the status line (which the parser skips) pass as they came; the lines
/// added end as the head's own last line does (CRLF, or a bare LF a backend sent).
fn rewritten(head: &[u8], closing: bool, add: &[u8], out: &mut Vec<u8>) {
    let mut lines = head.split_inclusive(|&b| b == b'\n');
    for line in lines.by_ref() {
        out.extend_from_slice(line);
        if !matches!(line, b"\r\n" | b"\n") {
            break; // the status line
        }
    }
    for line in lines {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.is_empty() {
            let ending: &[u8] = if line == b"\n" { b"\n" } else { b"\r\n" };
            let add_close: &[u8] = if closing {
                b"Connection: close\r\n"
            } else {
                b""
            };
            for added in [add, add_close]
                .iter()
                .flat_map(|a| a.split_inclusive(|&b| b == b'\n'))
            {
                let added = added.strip_suffix(b"\n").unwrap_or(added);
                out.extend_from_slice(added.strip_suffix(b"\r").unwrap_or(added));
                out.extend_from_slice(ending);
            }
            out.extend_from_slice(line);
            return;
        }
        let name = text.split(|&b| b == b':').next().unwrap_or_default();
        let hop =
            name.eq_ignore_ascii_case(b"connection") || name.eq_ignore_ascii_case(b"keep-alive");
        if !(closing && hop) {
            out.extend_from_slice(line);
        }
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
#[path = "exchange_tests.rs"]
mod tests;
