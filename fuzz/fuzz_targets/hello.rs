//! The ClientHello length reader before the handshake, on arbitrary bytes: never a panic,
//! and what it asks for never reaches past what it would need (asking again after getting
//! it never asks for less than nothing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wssbridge::tls::hello::missing;

fuzz_target!(|data: &[u8]| {
    let mut have = 0;
    while have <= data.len() {
        match missing(&data[..have]) {
            None => break,
            Some(0) => panic!("asked for nothing at {have}"),
            Some(n) => have += n,
        }
    }
});
