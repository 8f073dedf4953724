//! Feeds arbitrary bytes to the frame decoder and every control-frame parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian::wire::{FrameDecoder, Hello, RequestHeaders, Trailers, WireLimits};

fuzz_target!(|data: &[u8]| {
    let limits = WireLimits::default();
    let mut dec = FrameDecoder::new(limits);
    dec.extend(data);
    while let Ok(Some(frame)) = dec.next_frame() {
        let _ = RequestHeaders::decode(&frame.payload, &limits);
        let _ = Trailers::decode(&frame.payload, &limits);
        let _ = Hello::decode(&frame.payload);
    }
});
