//! The PROXY protocol header parser on arbitrary bytes: never a panic, never a length past
//! the input, and every prefix of a header it accepts is "incomplete", never an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wssbridge::proxy_protocol::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, len))) = parse(data) {
        assert!(len <= data.len());
        if len <= 600 {
            for i in 0..len {
                assert_eq!(parse(&data[..i]), Ok(None), "prefix of {i}");
            }
        }
    }
});
