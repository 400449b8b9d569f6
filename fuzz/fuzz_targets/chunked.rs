//! The chunked-body framing (chunk-line grammar, extension bound, trailer checks) on
//! arbitrary bytes, fed whole and in pieces of any size: never a panic, never more taken than
//! given, the same verdict however the bytes come and, for a good body, the same bytes
//! passed on; what is passed on is always a subsequence of what came.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wssbridge::http::framing::Body;

fn run(data: &[u8], step: usize) -> (Result<usize, String>, Vec<u8>, bool) {
    let mut body = Body::chunked().limit_trailers(1024);
    let mut out = Vec::new();
    let mut taken = 0;
    while taken < data.len() && !body.is_done() {
        let end = (taken + step).min(data.len());
        let piece = &data[taken..end];
        match body.advance(piece, &mut out) {
            Ok(n) => {
                assert!(n <= piece.len());
                assert!(
                    n == piece.len() || body.is_done(),
                    "a chunked body takes all it is given until it is done"
                );
                taken += n;
            }
            Err(e) => return (Err(e.to_string()), out, false),
        }
    }
    (Ok(taken), out, body.is_done())
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let whole = run(data, data.len().max(1));
    let pieces = run(data, usize::from(step.max(1)));
    assert_eq!((&whole.0, whole.2), (&pieces.0, pieces.2), "the same verdict");
    match whole.0 {
        Ok(_) => assert_eq!(whole.1, pieces.1, "the same bytes passed on"),
        // Fed in pieces, the bytes of the line under way before the error may have gone on
        // (a streaming proxy cannot take them back; the connection then ends): whole, none.
        Err(_) => assert!(pieces.1.starts_with(&whole.1)),
    }
    // A subsequence of the input, in order.
    let mut rest = data.iter();
    for b in &whole.1 {
        assert!(rest.any(|d| d == b), "passed on a byte that did not come");
    }
});
