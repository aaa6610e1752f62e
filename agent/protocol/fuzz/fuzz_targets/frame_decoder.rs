//! Feeds arbitrary bytes to the frame decoder as host and as guest messages.
//! Run with `cargo fuzz run frame_decoder` in agent/protocol.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    husk_protocol::fuzz_decode(data);
});
