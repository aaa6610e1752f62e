//! Arbitrary TX descriptor chains, RX buffers and host socket activity
//! through the vsock device's queue handler.
//! Run with `hack/fuzz.sh vsock_packets`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    husk_vmm::devices::virtio::fuzzing::vsock_packets(data);
});
