//! Micro-benchmarks of the work done per connection before the tunnel: parsing the first
//! head, choosing a route, and following a keep-alive request's framing.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use wssbridge::http::framing::Body;
use wssbridge::http::head;
use wssbridge::route::RouteTable;

const UPGRADE: &[u8] = b"GET /socket.io/?EIO=4&transport=websocket&sid=Hx7K2 HTTP/1.1\r\n\
    Host: chat.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0\r\n\
    Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
    Origin: https://chat.example.com\r\nAccept-Language: en-US,en;q=0.9\r\nCookie: io=Hx7K2\r\n\r\n";

fn parsing(c: &mut Criterion) {
    c.bench_function("head::parse websocket upgrade (12 headers)", |b| {
        b.iter(|| head::parse(black_box(UPGRADE)))
    });
    let response =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
    c.bench_function("head::parse_response 101", |b| {
        b.iter(|| head::parse_response(black_box(response)))
    });
}

fn routing(c: &mut Criterion) {
    let rules = [
        "/=a:1",
        "/socket.io/=b:1",
        "/api/=c:1",
        "/api/v1/=d:1",
        "/static/=e:1",
        "/ws=f:1",
        "chat.example.com/=g:1",
        "chat.example.com/admin/=h:1",
        "api.example.com/=i:1",
        "/health=j:1",
    ];
    let table = RouteTable::new(rules.iter().map(|r| r.parse().unwrap()).collect()).unwrap();
    c.bench_function("route find among 10 routes", |b| {
        b.iter(|| {
            table.find(
                black_box(Some("Chat.Example.com:443")),
                black_box("/socket.io/?EIO=4&transport=websocket"),
            )
        })
    });
    c.bench_function("route find with dot-segments", |b| {
        b.iter(|| {
            table.find(
                black_box(Some("x")),
                black_box("/static/../api/v1/./users?q=1"),
            )
        })
    });
}

fn framing(c: &mut Criterion) {
    let mut body = Vec::new();
    for _ in 0..64 {
        body.extend_from_slice(b"400\r\n");
        body.extend_from_slice(&[b'x'; 1024]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut out = Vec::with_capacity(body.len());
    c.bench_function("chunked framing of a 64 KiB body", |b| {
        b.iter(|| {
            out.clear();
            let mut f = Body::chunked();
            f.advance(black_box(&body), &mut out).unwrap()
        })
    });
}

criterion_group!(benches, parsing, routing, framing);
criterion_main!(benches);
