//! The WebSocket frame-length reader on arbitrary bytes, fed whole, split in two, and in the
//! steps it says are safe: never a panic, and the same position, counts, message sizes and
//! close code however the bytes come.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wssbridge::websocket::frames::{Frames, Sender};

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let sender = if first & 1 == 0 { Sender::Client } else { Sender::Server };
    let mut whole = Frames::new(sender);
    let mut whole_sizes = Vec::new();
    whole.feed(data, |n| whole_sizes.push(n));
    let split = usize::from(first) % (data.len() + 1);
    let mut parts = Frames::new(sender);
    let mut sizes = Vec::new();
    parts.feed(&data[..split], |n| sizes.push(n));
    parts.feed(&data[split..], |n| sizes.push(n));
    assert_eq!(whole.at_boundary(), parts.at_boundary());
    assert_eq!(whole.lost(), parts.lost());
    assert_eq!(whole.to_boundary(), parts.to_boundary());
    assert_eq!(whole.tally(), parts.tally());
    assert_eq!(whole.close(), parts.close());
    assert_eq!(whole_sizes, sizes);
    assert_eq!(whole.tally().messages, sizes.len() as u64);
    // Stepping by what `to_boundary` promises belongs to the frame under way: each step ends
    // inside that frame or exactly at its end.
    let mut steps = Frames::new(sender);
    let mut at = 0;
    while at < data.len() {
        let Some(step) = steps.to_boundary() else {
            break;
        };
        let step = (if step == 0 { 1 } else { step }).min((data.len() - at) as u64) as usize;
        steps.feed(&data[at..at + step], |_| ());
        at += step;
    }
    if at == data.len() {
        assert_eq!(steps.at_boundary(), whole.at_boundary());
    }
});
