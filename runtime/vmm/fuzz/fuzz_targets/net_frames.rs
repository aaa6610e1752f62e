//! Arbitrary TX descriptor chains, RX buffers, frames written into the tap
//! and feature sets through the net device's queue handler.
//! Run with `hack/fuzz.sh net_frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    husk_vmm::devices::virtio::fuzzing::net_frames(data);
});
