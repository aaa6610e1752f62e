//! MMIO reads and writes at arbitrary offsets, sizes and values (and guest
//! memory scribbles, and DRIVER_OK over garbage queues) against the
//! virtio-mmio transport of an rng, a vsock or a net device.
//! Run with `hack/fuzz.sh mmio_registers`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    husk_vmm::devices::virtio::fuzzing::mmio_registers(data);
});
