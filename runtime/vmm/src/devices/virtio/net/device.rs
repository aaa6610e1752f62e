//! The virtio-net device: features, the configuration space (MAC, MTU), and
//! activation, which sets the tap's header length and offloads from what the
//! driver accepted and hands the queues and the tap to a worker. A reset
//! takes the tap back, so the device may be activated again.

use super::event_handler::NetHandler;
use super::tap::Tap;
use super::{
    CONFIG_LEN, FEATURES, F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_UFO, F_MTU, HEADER_LEN,
    QUEUE_SIZE, STATUS_LINK_UP,
};
use crate::devices::virtio::worker::Worker;
use crate::devices::virtio::{
    read_config_bytes, ActivateError, ActiveQueue, Interrupt, VirtioDevice, TYPE_NET,
};
use crate::vstate::memory::GuestMemory;

/// virtio-net on a tap.
pub struct Net {
    config: [u8; CONFIG_LEN],
    features: u64,
    acked: u64,
    /// The tap while the device is not active (the worker has it then).
    tap: Option<Tap>,
    worker: Worker<NetHandler>,
}

impl Net {
    /// A NIC with address `mac` (and `mtu`, offered with VIRTIO_NET_F_MTU
    /// when given) on `tap`; its worker thread starts parked.
    pub fn new(tap: Tap, mac: [u8; 6], mtu: Option<u16>) -> std::io::Result<Net> {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&mtu.unwrap_or(0).to_le_bytes());
        let features = if mtu.is_some() {
            FEATURES | F_MTU
        } else {
            FEATURES
        };
        Ok(Net {
            config,
            features,
            acked: 0,
            tap: Some(tap),
            worker: Worker::new("virtio-net")?,
        })
    }

    /// The tap, while the device is not active.
    pub fn tap(&self) -> Option<&Tap> {
        self.tap.as_ref()
    }
}

/// The tap offloads (`TUN_F_*`) that match the features the driver
/// accepted: the tap may hand the guest partially checksummed frames if it
/// takes them, and segmented ones only along with those.
pub fn tap_offloads(acked: u64) -> u32 {
    if acked & F_GUEST_CSUM == 0 {
        return 0;
    }
    [
        (F_GUEST_TSO4, libc::TUN_F_TSO4),
        (F_GUEST_TSO6, libc::TUN_F_TSO6),
        (F_GUEST_UFO, libc::TUN_F_UFO),
    ]
    .into_iter()
    .filter(|(feature, _)| acked & feature != 0)
    .fold(libc::TUN_F_CSUM, |flags, (_, flag)| flags | flag)
}

impl VirtioDevice for Net {
    fn name(&self) -> &'static str {
        "net"
    }

    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 2]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        memory: GuestMemory,
        queues: Vec<ActiveQueue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        let backend = |message: String| ActivateError::Backend {
            device: "net",
            message,
        };
        let queues: [ActiveQueue; 2] =
            queues
                .try_into()
                .map_err(|q: Vec<ActiveQueue>| ActivateError::QueueCount {
                    device: "net",
                    expected: 2,
                    got: q.len(),
                })?;
        let mut tap = self
            .tap
            .take()
            .ok_or_else(|| backend("activated twice".into()))?;
        let set_up = tap
            .set_header_len(HEADER_LEN)
            .and_then(|()| tap.set_offloads(tap_offloads(self.acked)));
        if let Err(e) = set_up {
            self.tap = Some(tap);
            return Err(backend(e.to_string()));
        }
        let handler = NetHandler::new(memory, queues, interrupt, tap, self.acked);
        self.worker
            .start(handler)
            .map_err(|e| backend(format!("starting the worker: {e}")))
    }

    fn reset(&mut self) {
        if let Some(handler) = self.worker.stop() {
            self.tap = Some(handler.into_tap());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use super::*;
    use crate::devices::virtio::net::{F_CSUM, F_MAC, F_MRG_RXBUF};
    use crate::devices::virtio::test_utils::{eventfd, guest_memory, seqpacket_pair};
    use crate::devices::virtio::VIRTIO_F_VERSION_1;

    const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];

    /// A device on a socket standing in for its tap, and the host's end.
    fn net(mtu: Option<u16>) -> (Net, OwnedFd) {
        let (tap, host) = seqpacket_pair();
        (
            Net::new(Tap::from_socket_for_tests(tap), MAC, mtu).unwrap(),
            host,
        )
    }

    fn config(device: &Net, offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0xff; len];
        device.read_config(offset, &mut data);
        data
    }

    #[test]
    fn the_config_space_reads_back_the_mac_and_the_mtu() {
        let (device, _host) = net(Some(1450));

        assert_eq!(config(&device, 0, 6), MAC);
        assert_eq!(config(&device, 6, 2), STATUS_LINK_UP.to_le_bytes());
        assert_eq!(config(&device, 8, 2), 1u16.to_le_bytes());
        assert_eq!(config(&device, 10, 2), 1450u16.to_le_bytes());
        assert_eq!(config(&device, 12, 4), [0; 4], "nothing past mtu");
        assert_eq!(config(&net(None).0, 10, 2), [0, 0]);
    }

    #[test]
    fn mtu_is_offered_only_when_the_nic_has_one() {
        let with = net(Some(9000)).0.features();
        let without = net(None).0.features();

        assert_ne!(with & F_MTU, 0);
        assert_eq!(without & F_MTU, 0);
        assert_eq!(with & !F_MTU, without);
        let always = VIRTIO_F_VERSION_1 | F_CSUM | F_MAC | F_MRG_RXBUF | F_GUEST_CSUM;
        assert_eq!(without & always, always);
        let status = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_STATUS;
        assert_eq!(without & status, 0, "no link status");
    }

    #[test]
    fn tap_offloads_follow_the_acked_guest_features() {
        let cases = [
            (0, 0),
            (F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_UFO, 0),
            (F_GUEST_CSUM, libc::TUN_F_CSUM),
            (
                F_GUEST_CSUM | F_GUEST_TSO6,
                libc::TUN_F_CSUM | libc::TUN_F_TSO6,
            ),
            (
                F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_UFO,
                libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO,
            ),
            (FEATURES & !F_GUEST_CSUM, 0),
        ];
        for (acked, flags) in cases {
            assert_eq!(tap_offloads(acked), flags, "acked {acked:#x}");
        }
    }

    #[test]
    fn activation_sets_the_tap_up_from_what_the_driver_acked() {
        use crate::devices::virtio::test_utils::{DriverQueue, NetLayout};
        let memory = NetLayout::FULL.memory();
        let rx = DriverQueue::new(&memory, NetLayout::FULL.queue(0));
        let tx = DriverQueue::new(&memory, NetLayout::FULL.queue(1));
        let (mut device, _host) = net(None);
        // Not offered, so not taken.
        device.ack_features(F_GUEST_CSUM | F_GUEST_UFO | F_MTU);

        device
            .activate(
                memory.clone(),
                vec![rx.active(), tx.active()],
                Interrupt::new(eventfd()),
            )
            .unwrap();
        let tap_while_active = device.tap().is_some();
        device.reset();

        assert!(!tap_while_active, "the worker has the tap");
        let tap = device.tap().unwrap();
        assert_eq!(tap.header_len(), Some(HEADER_LEN));
        assert_eq!(tap.offloads(), Some(libc::TUN_F_CSUM | libc::TUN_F_UFO));
    }

    #[test]
    fn activation_with_one_queue_fails_and_keeps_the_tap() {
        let memory = guest_memory(1 << 20);
        let (mut device, _host) = net(None);

        let err = device
            .activate(memory, Vec::new(), Interrupt::new(eventfd()))
            .unwrap_err();

        assert!(
            err.to_string().starts_with("net: expected 2 queues"),
            "{err}"
        );
        assert!(device.tap().is_some());
    }
}
