//! The exchange on captured-style byte sequences, whole and byte by byte.

use super::*;
use crate::route::RouteTable;

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const SWITCH: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";

fn exchange(extra: &[&str]) -> Exchange {
    let routes = vec![
        "/=127.0.0.1:1".parse().unwrap(),
        "/api/=127.0.0.1:2".parse().unwrap(),
    ];
    let mut policy = Policy::with_routes(RouteTable::new(routes).unwrap(), 16 * 1024);
    for flag in extra {
        match *flag {
            "--check-websocket-accept" => policy.security.check_websocket_accept = true,
            other => panic!("no setting for {other}"),
        }
    }
    let index = policy.routes.find_index(Some("a"), "/").unwrap();
    Exchange::new(Arc::new(policy), index, None)
}

/// Feeds `input` in pieces of `step` bytes; returns (taken, forwarded).
fn client(ex: &mut Exchange, input: &[u8], step: usize) -> (usize, Vec<u8>) {
    let mut out = Vec::new();
    let mut taken = 0;
    while taken < input.len() {
        let end = taken.saturating_add(step).min(input.len());
        let n = ex.from_client(&input[taken..end], &mut out);
        taken += n;
        if n == 0 {
            break;
        }
    }
    (taken, out)
}

fn backend(ex: &mut Exchange, input: &[u8]) -> Result<(usize, Vec<u8>), Reject> {
    let mut out = Vec::new();
    let n = ex.from_backend(input, &mut out)?;
    Ok((n, out))
}

#[test]
fn bytes_after_an_upgrade_request_wait_for_the_101() {
    for step in [1, 7, usize::MAX] {
        let mut ex = exchange(&[]);
        let smuggled = b"GET /api/admin HTTP/1.1\r\nHost: a\r\n\r\n";
        let input = [UPGRADE, smuggled].concat();
        let (taken, out) = client(&mut ex, &input, step);
        assert_eq!(out, UPGRADE, "step {step}");
        assert_eq!(taken, UPGRADE.len());
        let (n, out) = backend(&mut ex, &[SWITCH, b"frame"].concat()).unwrap();
        assert_eq!((n, out.as_slice()), (SWITCH.len(), SWITCH));
        assert!(ex.upgraded());
    }
}

#[test]
fn refused_upgrade_never_becomes_a_tunnel() {
    let mut ex = exchange(&[]);
    client(&mut ex, UPGRADE, usize::MAX);
    let refusal = b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno";
    let (n, out) = backend(&mut ex, refusal).unwrap();
    assert_eq!((n, out.as_slice()), (refusal.len(), &refusal[..]));
    assert!(!ex.upgraded());
    // The connection is HTTP again: a request for another route is not forwarded.
    let (_, out) = client(
        &mut ex,
        b"GET /api/admin HTTP/1.1\r\nHost: a\r\n\r\n",
        usize::MAX,
    );
    assert!(out.is_empty());
    assert_eq!(ex.finished(), Some(Stop::Confined));
}

#[test]
fn a_101_that_does_not_fit_is_refused() {
    let mut ex = exchange(&[]);
    client(&mut ex, UPGRADE, usize::MAX);
    let wrong = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n";
    assert_eq!(backend(&mut ex, wrong), Err(Reject::BadUpgrade));

    let mut ex = exchange(&[]);
    client(&mut ex, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", usize::MAX);
    assert_eq!(
        backend(&mut ex, SWITCH),
        Err(Reject::BadUpgrade),
        "101 to a plain GET"
    );
}

#[test]
fn websocket_accept_is_checked_when_asked() {
    let mut ex = exchange(&["--check-websocket-accept"]);
    client(&mut ex, UPGRADE, usize::MAX);
    assert!(backend(&mut ex, SWITCH).is_ok());
    assert!(ex.upgraded());
    let mut ex = exchange(&["--check-websocket-accept"]);
    client(&mut ex, UPGRADE, usize::MAX);
    let forged = String::from_utf8_lossy(SWITCH).replace("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "AAAA");
    assert_eq!(backend(&mut ex, forged.as_bytes()), Err(Reject::BadUpgrade));
}

#[test]
fn keep_alive_requests_stay_on_their_route() {
    let mut ex = exchange(&[]);
    let first =
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let second = b"GET /y HTTP/1.1\r\nHost: a\r\n\r\n";
    let third = b"GET /api/secret HTTP/1.1\r\nHost: a\r\n\r\n";
    let input = [&first[..], second, third].concat();
    for step in [1, 5, usize::MAX] {
        let mut ex2 = exchange(&[]);
        let (taken, out) = client(&mut ex2, &input, step);
        assert_eq!(out, [&first[..], second].concat(), "step {step}");
        assert_eq!(taken, first.len() + second.len() + third.len());
        assert_eq!(ex2.finished(), None, "responses still owed");
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA";
        backend(&mut ex2, &[&ok[..], ok].concat()).unwrap();
        assert_eq!(ex2.finished(), Some(Stop::Confined));
    }
    // HEAD responses have no body even with Content-Length.
    client(&mut ex, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", usize::MAX);
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
    backend(&mut ex, head).unwrap();
    let (_, out) = client(&mut ex, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", usize::MAX);
    assert!(!out.is_empty());
}

#[test]
fn h2c_and_upgrades_on_other_methods_are_refused() {
    let head = |raw: &[u8]| crate::http::head::parse(raw).unwrap().unwrap();
    let h2c = head(
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
    );
    assert!(crate::http::admit::check_upgrade(&h2c, &[]).is_err());
    assert!(
        crate::http::admit::check_upgrade(&h2c, &["h2c".to_string()])
            .unwrap()
            .is_some()
    );
    let post =
        head(b"POST / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
    assert!(crate::http::admit::check_upgrade(&post, &[]).is_err());
    let inert = head(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n");
    assert_eq!(crate::http::admit::check_upgrade(&inert, &[]), Ok(None));
    // Later on the connection too.
    let mut ex = exchange(&[]);
    let (_, out) = client(
        &mut ex,
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
        usize::MAX,
    );
    assert!(out.is_empty());
    assert_eq!(ex.finished(), Some(Stop::Refused(Status::BadRequest)));
}

#[test]
fn an_upgrade_request_with_a_body_is_refused() {
    let ws = "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    for framing in ["Content-Length: 58", "Transfer-Encoding: chunked"] {
        let raw = format!("{ws}{framing}\r\n\r\n");
        let head = crate::http::head::parse(raw.as_bytes()).unwrap().unwrap();
        assert!(
            crate::http::admit::check_upgrade(&head, &[]).is_err(),
            "{framing}"
        );
        let mut ex = exchange(&[]);
        let (_, out) = client(&mut ex, raw.as_bytes(), usize::MAX);
        assert!(out.is_empty(), "{framing}");
        assert_eq!(ex.finished(), Some(Stop::Refused(Status::BadRequest)));
    }
    let zero = format!("{ws}Content-Length: 0\r\n\r\n");
    let head = crate::http::head::parse(zero.as_bytes()).unwrap().unwrap();
    assert!(
        crate::http::admit::check_upgrade(&head, &[])
            .unwrap()
            .is_some()
    );
}

#[test]
fn informational_responses_do_not_end_the_request() {
    let mut ex = exchange(&[]);
    client(
        &mut ex,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
        usize::MAX,
    );
    let (_, out) = backend(&mut ex, b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
    assert_eq!(out, b"HTTP/1.1 100 Continue\r\n\r\n");
    let (_, out) = client(&mut ex, b"hi", usize::MAX);
    assert_eq!(out, b"hi");
    backend(&mut ex, b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
    assert_eq!(
        backend(&mut ex, b"HTTP/1.1 200 OK\r\n\r\n"),
        Err(Reject::Broken("a response to no request"))
    );
}

#[test]
fn a_broken_chunked_body_is_answered_400_at_once() {
    let head = b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    for bad in [
        &b"0x5\r\n"[..],
        b" 5\r\n",
        b"10000000000000005\r\n",
        b"5\nhello",
    ] {
        let mut ex = exchange(&[]);
        let (_, out) = client(&mut ex, head, usize::MAX);
        assert_eq!(out, head);
        assert_eq!(ex.finished(), None);
        client(&mut ex, bad, usize::MAX);
        // No response has come, and none needs to: the backend waits for a body that will
        // never be whole, so the connection ends now.
        assert_eq!(
            ex.finished(),
            Some(Stop::Refused(Status::BadRequest)),
            "{bad:?}"
        );
    }
}

#[test]
fn a_broken_body_behind_another_request_lets_its_response_through_first() {
    let mut ex = exchange(&[]);
    let (_, out) = client(
        &mut ex,
        b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nPOST /b HTTP/1.1\r\nHost: a\r\n\
          Transfer-Encoding: chunked\r\n\r\nZZ\r\n",
        usize::MAX,
    );
    assert!(out.ends_with(b"chunked\r\n\r\n"));
    assert_eq!(ex.finished(), None, "GET /a's response is due");
    let (_, relayed) = backend(&mut ex, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA").unwrap();
    assert!(relayed.ends_with(b"A"));
    assert_eq!(ex.finished(), Some(Stop::Refused(Status::BadRequest)));
}

#[test]
fn a_broken_body_after_its_response_began_closes_without_an_answer() {
    let mut ex = exchange(&[]);
    client(
        &mut ex,
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        usize::MAX,
    );
    backend(&mut ex, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").unwrap();
    client(&mut ex, b"zz\r\n", usize::MAX);
    assert_eq!(ex.finished(), Some(Stop::BadBody));
}

#[test]
fn waits_for_the_client_are_told_apart() {
    let mut ex = exchange(&[]);
    assert_eq!(ex.waiting(), Some(Wait::Next(0)));
    client(&mut ex, b"GET / HTTP/1.1\r\n", usize::MAX);
    assert_eq!(ex.waiting(), Some(Wait::Head(0)));
    client(&mut ex, b"Host: a\r\n\r\n", usize::MAX);
    // The backend's turn: no wait for the client.
    assert_eq!(ex.waiting(), None);
    backend(&mut ex, b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
    assert_eq!(ex.waiting(), Some(Wait::Next(1)));
    client(&mut ex, b"G", usize::MAX);
    assert_eq!(ex.waiting(), Some(Wait::Head(1)));
    ex.expired(Wait::Head(1));
    assert_eq!(ex.finished(), Some(Stop::Refused(Status::RequestTimeout)));

    let mut idle = exchange(&[]);
    idle.expired(Wait::Next(0));
    assert_eq!(idle.finished(), Some(Stop::KeepaliveTimeout));
}

#[test]
fn a_later_head_that_times_out_waits_for_the_responses_before_it() {
    let mut ex = exchange(&[]);
    client(
        &mut ex,
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HT",
        usize::MAX,
    );
    assert_eq!(ex.waiting(), Some(Wait::Head(1)));
    ex.expired(Wait::Head(1));
    assert_eq!(ex.finished(), None, "the first response is still due");
    backend(&mut ex, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx").unwrap();
    assert_eq!(ex.finished(), Some(Stop::Refused(Status::RequestTimeout)));
}

#[test]
fn the_last_response_before_a_drain_says_connection_close() {
    let ok = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\nhi";
    let closing = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";
    // A request forwarded, then the drain: its response is the last.
    let mut ex = exchange(&[]);
    client(&mut ex, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", usize::MAX);
    ex.drain();
    let (_, out) = backend(&mut ex, ok).unwrap();
    assert_eq!(out, closing);
    assert_eq!(ex.finished(), Some(Stop::Drained));
    // A body still on its way when the drain comes: the response is the last too.
    let mut ex = exchange(&[]);
    client(
        &mut ex,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nab",
        1,
    );
    ex.drain();
    assert_eq!(backend(&mut ex, ok).unwrap().1, closing);
    // Two pipelined requests: only the second response says close.
    let mut ex = exchange(&[]);
    let two = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    client(&mut ex, two, usize::MAX);
    ex.drain();
    assert_eq!(backend(&mut ex, ok).unwrap().1, ok);
    assert_eq!(backend(&mut ex, ok).unwrap().1, closing);
    // No drain, no change; and a bare-LF head keeps its line endings.
    let mut ex = exchange(&[]);
    client(&mut ex, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", usize::MAX);
    assert_eq!(backend(&mut ex, ok).unwrap().1, ok);
    let mut ex = exchange(&[]);
    client(&mut ex, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", usize::MAX);
    ex.drain();
    let lf = b"HTTP/1.1 204 No Content\nServer: x\n\n";
    let out = backend(&mut ex, lf).unwrap().1;
    assert_eq!(
        out, b"HTTP/1.1 204 No Content\nServer: x\nConnection: close\n\n",
        "a line added to a bare-LF head ends as its lines do"
    );
}

#[test]
fn a_response_head_is_rewritten_only_where_it_ends() {
    let line = b"Set-Cookie: w=v; Path=/; Secure; HttpOnly; SameSite=Lax\r\n";
    let mut out = Vec::new();
    rewritten(b"HTTP/1.1 200 OK\r\nA: 1\r\n\r\n", false, line, &mut out);
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\r\nA: 1\r\nSet-Cookie: w=v; Path=/; Secure; HttpOnly; SameSite=Lax\r\n\r\n"
    );
    // Blank lines before the status line (which the parser skips) pass as they came.
    out.clear();
    rewritten(
        b"\r\n\r\nHTTP/1.1 200 OK\r\nA: 1\r\n\r\n",
        true,
        line,
        &mut out,
    );
    assert_eq!(
        out,
        b"\r\n\r\nHTTP/1.1 200 OK\r\nA: 1\r\nSet-Cookie: w=v; Path=/; Secure; HttpOnly; \
          SameSite=Lax\r\nConnection: close\r\n\r\n"
            .as_slice()
    );
    // A head in bare LF gets its added lines in bare LF.
    out.clear();
    rewritten(
        b"HTTP/1.1 200 OK\nConnection: keep-alive\n\n",
        true,
        line,
        &mut out,
    );
    assert_eq!(
        out,
        b"HTTP/1.1 200 OK\nSet-Cookie: w=v; Path=/; Secure; HttpOnly; SameSite=Lax\n\
          Connection: close\n\n"
            .as_slice()
    );
}

#[test]
fn the_affinity_line_goes_to_final_responses_of_requests_without_the_cookie() {
    let rule = CookieRule {
        name: "w".into(),
        mine: "mine".into(),
        others: vec!["theirs".into()],
        line: b"Set-Cookie: w=mine\r\n".to_vec(),
    };
    let policy = exchange(&[]).policy.clone();
    let first = head::parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap()
        .unwrap();
    let mut ex = Exchange::after_first(policy, (0, Some(rule)), None, &first, None);
    let ok = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(
        backend(&mut ex, ok).unwrap().1,
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\nSet-Cookie: w=mine\r\n\r\n"
    );
    // Carrying it (among others): the response as it came.
    let (_, fwd) = client(
        &mut ex,
        b"GET /x HTTP/1.1\r\nHost: a\r\nCookie: io=1; w=mine\r\n\r\n",
        64,
    );
    assert!(!fwd.is_empty());
    let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(backend(&mut ex, plain).unwrap().1, plain);
    // Naming another backend: closed before it, nothing forwarded.
    let (_, fwd) = client(
        &mut ex,
        b"GET /y HTTP/1.1\r\nHost: a\r\nCookie: w=theirs\r\n\r\n",
        64,
    );
    assert!(fwd.is_empty());
    assert_eq!(ex.finished(), Some(Stop::Elsewhere));
}
