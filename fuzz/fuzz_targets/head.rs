//! The request and response head parsers on arbitrary bytes: never a panic; a complete head
//! never claims more bytes than it was given, and every prefix of it is "incomplete".
#![no_main]

use libfuzzer_sys::fuzz_target;
use wssbridge::http::head;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(h)) = head::parse(data) {
        assert!(h.len <= data.len());
        assert!(h.target.starts_with('/'));
        if h.len > 0 {
            assert!(!matches!(head::parse(&data[..h.len - 1]), Ok(Some(_))));
        }
    }
    if let Ok(Some(r)) = head::parse_response(data) {
        assert!(r.len <= data.len());
    }
});
