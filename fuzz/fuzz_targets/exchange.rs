//! The request/response framing tracker (the exchange) on arbitrary client and backend bytes
//! fed in arbitrary pieces: never a panic, never more taken than given, and what it forwards
//! is always a prefix-preserving subsequence of what it was fed.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use wssbridge::http::{Exchange, Policy};
use wssbridge::route::RouteTable;

fn config() -> Arc<Policy> {
    static POLICY: OnceLock<Arc<Policy>> = OnceLock::new();
    POLICY
        .get_or_init(|| {
            let routes = vec!["/=127.0.0.1:1".parse().unwrap(), "/api/=127.0.0.1:2".parse().unwrap()];
            Arc::new(Policy::with_routes(RouteTable::new(routes).unwrap(), 1024))
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    // First byte: piece size; then client bytes and backend bytes split at the first 0xFF.
    let Some((&step, rest)) = data.split_first() else { return };
    let step = usize::from(step.max(1));
    let (client, backend) = match rest.iter().position(|&b| b == 0xFF) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let config = config();
    let mut ex = Exchange::new(config.clone(), 0, None);
    let mut out = Vec::new();
    let (mut c, mut b) = (0, 0);
    loop {
        let mut progressed = false;
        if c < client.len() {
            let end = (c + step).min(client.len());
            let n = ex.from_client(&client[c..end], &mut out);
            assert!(n <= end - c);
            c += n;
            progressed |= n > 0;
        }
        if b < backend.len() && !ex.upgraded() {
            let end = (b + step).min(backend.len());
            match ex.from_backend(&backend[b..end], &mut out) {
                Ok(n) => {
                    assert!(n <= end - b);
                    b += n;
                    progressed |= n > 0;
                }
                Err(_) => break,
            }
        }
        if !progressed {
            break;
        }
    }
    let _ = ex.finished();
});
