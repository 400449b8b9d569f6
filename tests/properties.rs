//! Property tests for the parts a peer controls: the head parser, chunked framing, the
//! exchange and route matching, on generated input split at random points.

use std::sync::Arc;

use proptest::prelude::*;
use wssbridge::http::framing::Body;
use wssbridge::http::{Exchange, Policy, head};
use wssbridge::route::{RouteTable, match_path};

fn token() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._~-]{1,8}"
}

/// A valid request head with a random path and random extra headers.
fn request_head() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "HEAD"]),
        prop::collection::vec(token(), 0..5),
        prop::collection::vec(("X-[a-zA-Z]{1,10}", "[ -~]{0,20}"), 0..8),
    )
        .prop_map(|(method, segments, headers)| {
            let mut head = format!(
                "{method} /{} HTTP/1.1\r\nHost: localhost\r\n",
                segments.join("/")
            );
            for (name, value) in headers {
                head.push_str(&format!("{name}: {}\r\n", value.trim()));
            }
            head.push_str("\r\n");
            head.into_bytes()
        })
}

/// Splits `bytes` into pieces at the given (sorted, deduplicated) cut points.
fn pieces<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn head_parsers_never_panic_and_never_overrun(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(Some(h)) = head::parse(&bytes) {
            prop_assert!(h.len <= bytes.len());
        }
        if let Ok(Some(r)) = head::parse_response(&bytes) {
            prop_assert!(r.len <= bytes.len());
        }
    }

    #[test]
    fn every_prefix_of_a_request_head_is_incomplete(head_bytes in request_head()) {
        for i in 0..head_bytes.len() {
            prop_assert_eq!(head::parse(&head_bytes[..i]), Ok(None));
        }
        let parsed = head::parse(&head_bytes).unwrap().unwrap();
        prop_assert_eq!(parsed.len, head_bytes.len());
    }

    #[test]
    fn chunked_body_ends_exactly_whatever_the_splits(
        body in prop::collection::vec(any::<u8>(), 0..300),
        sizes in prop::collection::vec(1usize..40, 1..6),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let encoded = chunked(&body, &sizes);
        let mut stream = encoded.clone();
        stream.extend_from_slice(b"NEXT");
        let mut framing = Body::chunked();
        let mut taken = 0;
        let mut out = Vec::new();
        for piece in pieces(&stream, &cuts) {
            let n = framing.advance(piece, &mut out).unwrap();
            taken += n;
            if framing.is_done() { break; }
            prop_assert_eq!(n, piece.len());
        }
        prop_assert!(framing.is_done());
        prop_assert_eq!(taken, encoded.len());
        prop_assert_eq!(out, encoded, "every byte of a body without trailers goes on");
    }

    #[test]
    fn exchange_forwards_keep_alive_requests_unchanged_whatever_the_splits(
        bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..60), 1..5),
        cuts in prop::collection::vec(any::<usize>(), 0..16),
    ) {
        let routes = vec!["/=127.0.0.1:1".parse().unwrap(), "/api/=127.0.0.1:2".parse().unwrap()];
        let policy = Policy::with_routes(RouteTable::new(routes).unwrap(), 16 * 1024);
        let mut stream = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            if i % 2 == 0 {
                stream.extend_from_slice(format!("POST /r{i} HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
                stream.extend_from_slice(body);
            } else {
                stream.extend_from_slice(format!("POST /r{i} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes());
                stream.extend_from_slice(&chunked(body, &[7, 3]));
            }
        }
        let route = policy.routes.find_index(Some("a"), "/").unwrap();
        let mut exchange = Exchange::new(Arc::new(policy), route, None);
        let mut out = Vec::new();
        for piece in pieces(&stream, &cuts) {
            let mut at = 0;
            while at < piece.len() {
                let n = exchange.from_client(&piece[at..], &mut out);
                prop_assert!(n > 0, "held at byte {} of {}", at, piece.len());
                at += n;
            }
        }
        prop_assert_eq!(out, stream);
    }

    #[test]
    fn a_route_matches_only_at_a_segment_boundary(
        parts in prop::collection::vec(prop::sample::select(vec!["ws", "wsx", "api", "..", ".", "%2e", "", "chat", "?q", "v1"]), 0..6),
    ) {
        let rules = ["/=a:1", "/ws=b:1", "/ws/chat/=c:1", "/api/v1=d:1"];
        let table = RouteTable::new(rules.iter().map(|r| r.parse().unwrap()).collect()).unwrap();
        let target = format!("/{}", parts.join("/"));
        let route = table.find(None, &target).expect("/ matches everything");
        let path = match_path(&target);
        let prefix = route.spec.path.as_str();
        prop_assert!(path.starts_with(prefix));
        let rest = &path[prefix.len()..];
        prop_assert!(prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'), "{} matched {}", target, prefix);
        prop_assert!(!path.split('/').any(|s| s == ".." || s == "." || s.eq_ignore_ascii_case("%2e")));
    }
}
