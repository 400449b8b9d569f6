//! Admission: the one decision every request head goes through before any of its bytes reach
//! a backend, the first request of a connection and every later one alike.
//!
//! In order: domain fronting (421), the upgrade rules (only `websocket` and `--allow-upgrade`
//! protocols, only on a GET; 400), then the route. The first request picks the connection's
//! route (404 when none matches); a later one must route to the same one, or it is never
//! forwarded (route confinement: the connection closes once the responses before it are
//! complete, and the client sends it again on a fresh connection).

use crate::respond::Status;
use crate::route::normalize_host;

use super::head::{Head, HeadError};
use super::policy::Policy;

/// What an upgrade request asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// The protocol name, lower-case, without version (`websocket`).
    pub protocol: String,
    pub websocket_key: Option<String>,
}

/// A request that may go on: its route (an index into the route table) and the upgrade it
/// asks for, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub route: usize,
    pub upgrade: Option<Upgrade>,
}

/// Why a request may not go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Answered with this status, then the connection closes.
    Status(Status),
    /// A later request for another route: closed without an answer, so the client retries it
    /// on a fresh connection, which is routed on its own.
    Confined,
}

/// Decides whether `head` may go on. `sni` is the name the client's TLS handshake asked for;
/// `bound` is the connection's route once its first request has chosen it.
pub fn admit(
    policy: &Policy,
    head: &Head,
    sni: Option<&str>,
    bound: Option<usize>,
) -> Result<Admitted, Refusal> {
    if misdirected(policy, head, sni) {
        return Err(Refusal::Status(Status::Misdirected));
    }
    let upgrade = check_upgrade(head, &policy.security.allowed_upgrades).map_err(|e| {
        tracing::debug!("refusing request: {e}");
        Refusal::Status(Status::BadRequest)
    })?;
    // The Host header, or the SNI name for a request without one (HTTP/1.0).
    let host = head.host.as_deref().or(sni);
    let found = policy.routes.find_index(host, &head.target);
    match (found, bound) {
        (Some(route), None) => Ok(Admitted { route, upgrade }),
        (None, None) => Err(Refusal::Status(Status::NotFound)),
        (found, Some(route)) if found == Some(route) => Ok(Admitted { route, upgrade }),
        (_, Some(_)) => Err(Refusal::Confined),
    }
}

/// 421 when the TLS SNI names one host and the request's Host another that the certificate
/// served for the SNI does not cover, but that a host route or another certificate names:
/// domain fronting, a request sent on a connection set up for someone else (RFC 9110
/// §15.5.20). A client that sent no SNI is not checked: it cannot ask for another name.
fn misdirected(policy: &Policy, head: &Head, sni: Option<&str>) -> bool {
    let (Some(sni), Some(host)) = (sni, head.host.as_deref()) else {
        return false;
    };
    let Some(certs) = policy
        .certs
        .as_deref()
        .filter(|_| policy.security.sni_host_check)
    else {
        return false;
    };
    let host = normalize_host(host);
    host != normalize_host(sni)
        && !certs.served_covers(Some(sni), &host)
        && (policy.routes.has_host(&host) || certs.knows(&host))
}

/// Classifies a request's `Upgrade` (RFC 9110 §7.8). `Ok(None)`: not an upgrade request. Only
/// `websocket` and the protocols given with `--allow-upgrade` may be asked for, and only by a
/// GET, and never with a body (`Content-Length` other than 0, or `Transfer-Encoding`); an
/// `Upgrade` header without `Connection: upgrade` is inert (and a `101` to it is refused).
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
        // Nobody would frame such a body: wssbridge holds the client's bytes after an
        // upgrade request until the answer, and a backend that refuses the upgrade may or
        // may not read the body first, so the next request would begin at a different byte
        // for each (request smuggling). A WebSocket client never sends one.
        (Some(_), true) if !head.body.is_done() => {
            Err(HeadError::Malformed("upgrade request with a body"))
        }
        (Some(protocol), true) => Ok(Some(Upgrade {
            protocol: protocol.to_string(),
            websocket_key: head.websocket_key.clone(),
        })),
        _ => Ok(None),
    }
}
