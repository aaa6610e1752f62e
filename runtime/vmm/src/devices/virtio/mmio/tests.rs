use std::sync::{Arc, Mutex};

use super::*;
use crate::devices::virtio::test_utils::{eventfd, guest_memory, DriverQueue, QueueLayout};
use crate::devices::virtio::{read_config_bytes, ActivateError, INTERRUPT_CONFIG};
use vm_memory::GuestAddress;

const ACKNOWLEDGE: u32 = 0x01;
const DRIVER: u32 = 0x02;
const MEMORY_SIZE: usize = 1 << 20;
const FAKE_TYPE: u32 = 42;
const FAKE_FEATURES: u64 = 0x0000_0004_0000_0011;
const FAKE_CONFIG: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

/// A queue as the device received it on activation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct QueueSeen {
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

/// What the fake device was asked to do.
#[derive(Default)]
struct Record {
    acked: Vec<u64>,
    activations: Vec<Vec<QueueSeen>>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
    interrupt: Option<Interrupt>,
}

/// A recording test double of a device with two queues.
struct FakeDevice {
    record: Arc<Mutex<Record>>,
    fail_activation: bool,
    bypass: bool,
}

impl VirtioDevice for FakeDevice {
    fn name(&self) -> &'static str {
        "fake"
    }
    fn device_type(&self) -> u32 {
        FAKE_TYPE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        FAKE_FEATURES
    }
    fn ack_features(&mut self, features: u64) {
        self.record.lock().unwrap().acked.push(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&FAKE_CONFIG, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut record = self.record.lock().unwrap();
        record.config_writes.push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        _memory: GuestMemory,
        queues: Vec<ActiveQueue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        if self.fail_activation {
            return Err(ActivateError::Backend {
                device: "fake",
                message: "refused".into(),
            });
        }
        let seen = queues
            .iter()
            .map(|q| QueueSeen {
                size: q.queue.size(),
                ready: q.queue.ready(),
                desc: q.queue.desc_table(),
                avail: q.queue.avail_ring(),
                used: q.queue.used_ring(),
            })
            .collect();
        let mut record = self.record.lock().unwrap();
        record.activations.push(seen);
        record.interrupt = Some(interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        self.record.lock().unwrap().resets += 1;
    }
    fn interrupts_bypass_status(&self) -> bool {
        self.bypass
    }
}

struct Fixture {
    transport: MmioTransport,
    record: Arc<Mutex<Record>>,
    memory: GuestMemory,
}

fn fixture_with(fail_activation: bool, bypass: bool) -> Fixture {
    let record = Arc::new(Mutex::new(Record::default()));
    let device = FakeDevice {
        record: record.clone(),
        fail_activation,
        bypass,
    };
    let memory = guest_memory(MEMORY_SIZE);
    let transport = MmioTransport::new(Box::new(device), memory.clone(), eventfd()).unwrap();
    Fixture {
        transport,
        record,
        memory,
    }
}

fn fixture() -> Fixture {
    fixture_with(false, false)
}

impl Fixture {
    fn read(&mut self, offset: u64) -> u32 {
        let mut data = [0xaa; 4];
        self.transport.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write(&mut self, offset: u64, value: u32) {
        self.transport.write(offset, &value.to_le_bytes());
    }

    fn status(&mut self) -> u32 {
        self.read(reg::STATUS)
    }

    fn record(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap()
    }

    /// ACKNOWLEDGE, DRIVER, `features` and FEATURES_OK, as a driver does.
    fn negotiate(&mut self, features: u64) {
        self.write(reg::STATUS, ACKNOWLEDGE);
        self.write(reg::STATUS, ACKNOWLEDGE | DRIVER);
        self.write(reg::DRIVER_FEATURES_SEL, 0);
        self.write(reg::DRIVER_FEATURES, features as u32);
        self.write(reg::DRIVER_FEATURES_SEL, 1);
        self.write(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.write(reg::STATUS, ACKNOWLEDGE | DRIVER | status::FEATURES_OK);
    }

    fn set_up_queue(&mut self, index: u32, size: u32, (desc, avail, used): (u64, u64, u64)) {
        self.write(reg::QUEUE_SEL, index);
        self.write(reg::QUEUE_NUM, size);
        self.write(reg::QUEUE_DESC_LOW, desc as u32);
        self.write(reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
        self.write(reg::QUEUE_DRIVER_LOW, avail as u32);
        self.write(reg::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        self.write(reg::QUEUE_DEVICE_LOW, used as u32);
        self.write(reg::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        self.write(reg::QUEUE_READY, 1);
    }

    /// Rings laid out by the mock driver for queue `index` of `size`.
    fn rings(&self, index: u64, size: u16) -> (u64, u64, u64) {
        let layout = QueueLayout {
            rings: GuestAddress(0x1000 + index * 0x1000),
            size,
            data: GuestAddress(0x8_0000),
            slot: 0x100,
        };
        DriverQueue::new(&self.memory, layout).addresses()
    }

    /// Negotiates, sets up both queues and writes DRIVER_OK.
    fn bring_up(&mut self) -> [(u64, u64, u64); 2] {
        let rings = [self.rings(0, 16), self.rings(1, 4)];
        self.negotiate(VIRTIO_F_VERSION_1);
        self.set_up_queue(0, 16, rings[0]);
        self.set_up_queue(1, 4, rings[1]);
        self.write(
            reg::STATUS,
            ACKNOWLEDGE | DRIVER | status::FEATURES_OK | status::DRIVER_OK,
        );
        rings
    }
}

#[test]
fn identifies_as_a_version_2_virtio_mmio_device_of_its_type() {
    let mut f = fixture();

    assert_eq!(f.read(reg::MAGIC), 0x7472_6976);
    assert_eq!(f.read(reg::VERSION), 2);
    assert_eq!(f.read(reg::DEVICE_ID), FAKE_TYPE);
    assert_eq!(f.read(reg::VENDOR_ID), VENDOR_ID);
    assert_eq!(f.transport.name(), "fake");
    assert!(!f.transport.is_activated());
}

#[test]
fn device_features_are_paged_by_select_and_always_offer_version_1() {
    let mut f = fixture();

    f.write(reg::DEVICE_FEATURES_SEL, 0);
    let low = f.read(reg::DEVICE_FEATURES);
    f.write(reg::DEVICE_FEATURES_SEL, 1);
    let high = f.read(reg::DEVICE_FEATURES);
    f.write(reg::DEVICE_FEATURES_SEL, 2);
    let beyond = f.read(reg::DEVICE_FEATURES);

    assert_eq!(low, FAKE_FEATURES as u32);
    assert_eq!(
        high,
        (FAKE_FEATURES >> 32) as u32 | 1,
        "VERSION_1 is bit 32"
    );
    assert_eq!(beyond, 0);
}

#[test]
fn features_ok_acks_only_the_offered_features_the_driver_chose() {
    let mut f = fixture();

    f.negotiate(VIRTIO_F_VERSION_1 | 0x10 | 0x2 | (1 << 40));

    assert_ne!(f.status() & status::FEATURES_OK, 0);
    assert_eq!(f.record().acked, vec![VIRTIO_F_VERSION_1 | 0x10]);
}

#[test]
fn a_driver_without_version_1_does_not_get_features_ok() {
    let mut f = fixture();

    f.negotiate(0x11);

    assert_eq!(f.status() & status::FEATURES_OK, 0);
    assert!(f.record().acked.is_empty());
}

#[test]
fn driver_features_written_after_features_ok_are_ignored() {
    let mut f = fixture();
    f.negotiate(VIRTIO_F_VERSION_1);

    f.write(reg::DRIVER_FEATURES_SEL, 0);
    f.write(reg::DRIVER_FEATURES, 0x10);
    f.write(reg::STATUS, ACKNOWLEDGE | DRIVER | status::FEATURES_OK);

    assert_eq!(f.record().acked, vec![VIRTIO_F_VERSION_1]);
}

#[test]
fn driver_features_select_beyond_the_second_page_is_ignored() {
    let mut f = fixture();
    f.write(reg::DRIVER_FEATURES_SEL, 1);
    f.write(reg::DRIVER_FEATURES, 1);

    f.write(reg::DRIVER_FEATURES_SEL, 2);
    f.write(reg::DRIVER_FEATURES, 0xffff_ffff);
    f.write(reg::STATUS, ACKNOWLEDGE | DRIVER | status::FEATURES_OK);

    assert_eq!(f.record().acked, vec![VIRTIO_F_VERSION_1]);
}

#[test]
fn queue_num_max_reports_each_queue_and_zero_past_the_last() {
    let mut f = fixture();

    let sizes: Vec<u32> = (0..3)
        .map(|index| {
            f.write(reg::QUEUE_SEL, index);
            f.read(reg::QUEUE_NUM_MAX)
        })
        .collect();
    f.write(reg::QUEUE_SEL, u32::MAX);
    let far = (f.read(reg::QUEUE_NUM_MAX), f.read(reg::QUEUE_READY));

    assert_eq!(sizes, vec![16, 8, 0]);
    assert_eq!(far, (0, 0));
}

#[test]
fn writes_to_a_queue_past_the_last_are_ignored() {
    let mut f = fixture();
    let rings = f.rings(0, 16);

    f.set_up_queue(7, 16, rings);

    assert!(f.transport.queues.iter().all(|q| !q.ready()));
}

#[test]
fn driver_ok_activates_the_device_with_the_queues_as_written() {
    let mut f = fixture();

    let rings = f.bring_up();

    assert!(f.transport.is_activated());
    let record = f.record();
    assert_eq!(record.activations.len(), 1);
    let expected: Vec<QueueSeen> = [(16, rings[0]), (4, rings[1])]
        .into_iter()
        .map(|(size, (desc, avail, used))| QueueSeen {
            size,
            ready: true,
            desc,
            avail,
            used,
        })
        .collect();
    assert_eq!(record.activations[0], expected);
}

#[test]
fn queue_ready_reads_back_what_the_driver_wrote_before_driver_ok() {
    let mut f = fixture();
    let rings = f.rings(0, 16);

    f.set_up_queue(0, 16, rings);

    assert_eq!(f.read(reg::QUEUE_READY), 1);
    f.write(reg::QUEUE_SEL, 1);
    assert_eq!(f.read(reg::QUEUE_READY), 0);
}

#[test]
fn only_the_leading_ready_queues_are_handed_over() {
    let mut f = fixture();
    let rings = f.rings(0, 16);
    f.negotiate(VIRTIO_F_VERSION_1);
    f.set_up_queue(0, 16, rings);

    f.write(
        reg::STATUS,
        ACKNOWLEDGE | DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );

    assert_eq!(f.record().activations[0].len(), 1);
}

#[test]
fn queue_registers_are_ignored_after_driver_ok() {
    let mut f = fixture();
    f.bring_up();

    f.write(reg::QUEUE_SEL, 0);
    f.write(reg::QUEUE_NUM, 2);
    f.write(reg::QUEUE_DESC_LOW, 0x5000);
    f.write(reg::QUEUE_READY, 1);

    let queue = &f.transport.queues[0];
    assert_eq!(
        queue.size(),
        16,
        "the untouched queue left behind keeps its size"
    );
    assert_ne!(queue.desc_table(), 0x5000);
    assert!(!queue.ready());
    assert_eq!(f.record().activations.len(), 1);
}

#[test]
fn queue_addresses_outside_guest_memory_need_a_reset_and_do_not_activate() {
    let mut f = fixture();
    let far = MEMORY_SIZE as u64 + 0x1000;
    f.negotiate(VIRTIO_F_VERSION_1);
    f.set_up_queue(0, 16, (far, far + 0x100, far + 0x200));

    f.write(
        reg::STATUS,
        ACKNOWLEDGE | DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );

    assert_ne!(f.status() & status::NEEDS_RESET, 0);
    assert!(!f.transport.is_activated());
    assert!(f.record().activations.is_empty());
}

#[test]
fn misaligned_queue_addresses_are_not_taken() {
    let mut f = fixture();
    let (desc, avail, used) = f.rings(0, 16);
    f.set_up_queue(0, 16, (desc, avail, used));

    f.write(reg::QUEUE_DESC_LOW, desc as u32 + 1);
    f.write(reg::QUEUE_DEVICE_LOW, used as u32 + 2);

    assert_eq!(f.transport.queues[0].desc_table(), desc);
    assert_eq!(f.transport.queues[0].used_ring(), used);
}

#[test]
fn queue_sizes_that_are_not_powers_of_two_or_too_big_are_not_taken() {
    let mut f = fixture();
    f.write(reg::QUEUE_SEL, 0);

    let sizes: Vec<u16> = [3, 32, 0, 0x1_0008, 8]
        .into_iter()
        .map(|size| {
            f.write(reg::QUEUE_NUM, size);
            f.transport.queues[0].size()
        })
        .collect();

    assert_eq!(sizes, vec![16, 16, 16, 16, 8]);
}

#[test]
fn a_device_refusing_activation_needs_a_reset() {
    let mut f = fixture_with(true, false);

    f.bring_up();

    assert_ne!(f.status() & status::NEEDS_RESET, 0);
    assert!(!f.transport.is_activated());
}

#[test]
fn driver_ok_without_features_ok_does_not_activate() {
    let mut f = fixture();
    let rings = f.rings(0, 16);
    f.negotiate(0x10);
    f.set_up_queue(0, 16, rings);

    f.write(reg::STATUS, ACKNOWLEDGE | DRIVER | status::DRIVER_OK);

    assert!(!f.transport.is_activated());
    assert!(f.record().activations.is_empty());
    assert_ne!(f.status() & status::NEEDS_RESET, 0);
}

#[test]
fn status_zero_resets_the_device_and_bumps_the_config_generation() {
    let mut f = fixture();
    f.bring_up();
    let generation = f.read(reg::CONFIG_GENERATION);

    f.write(reg::STATUS, 0);

    assert_eq!(f.record().resets, 1);
    assert!(!f.transport.is_activated());
    assert_eq!(f.status(), 0);
    assert_eq!(f.read(reg::CONFIG_GENERATION), generation.wrapping_add(1));
    f.write(reg::QUEUE_SEL, 0);
    assert_eq!(f.read(reg::QUEUE_READY), 0);
}

#[test]
fn a_reset_device_can_be_brought_up_again() {
    let mut f = fixture();
    f.bring_up();
    f.write(reg::STATUS, 0);

    f.bring_up();

    assert!(f.transport.is_activated());
    assert_eq!(f.record().activations.len(), 2);
    assert_eq!(f.record().acked.len(), 2);
}

#[test]
fn a_reset_after_a_failed_activation_clears_needs_reset() {
    let mut f = fixture();
    let far = MEMORY_SIZE as u64;
    f.negotiate(VIRTIO_F_VERSION_1);
    f.set_up_queue(0, 16, (far, far, far));
    f.write(
        reg::STATUS,
        ACKNOWLEDGE | DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );

    f.write(reg::STATUS, 0);
    f.bring_up();

    assert_eq!(f.status() & status::NEEDS_RESET, 0);
    assert!(f.transport.is_activated());
    assert_eq!(f.record().resets, 0, "the device never ran");
}

#[test]
fn interrupt_status_shows_used_buffers_until_acknowledged() {
    let mut f = fixture();
    f.bring_up();
    let interrupt = f.record().interrupt.clone().unwrap();

    interrupt.signal_used_queue();
    let raised = f.read(reg::INTERRUPT_STATUS);
    f.write(reg::INTERRUPT_ACK, INTERRUPT_CONFIG);
    let after_other_ack = f.read(reg::INTERRUPT_STATUS);
    f.write(reg::INTERRUPT_ACK, INTERRUPT_VRING);
    let after_ack = f.read(reg::INTERRUPT_STATUS);

    assert_eq!(raised, INTERRUPT_VRING);
    assert_eq!(after_other_ack, INTERRUPT_VRING);
    assert_eq!(after_ack, 0);
}

#[test]
fn a_reset_clears_pending_interrupts() {
    let mut f = fixture();
    f.bring_up();
    f.record().interrupt.clone().unwrap().signal_used_queue();

    f.write(reg::STATUS, 0);

    assert_eq!(f.read(reg::INTERRUPT_STATUS), 0);
}

#[test]
fn a_device_with_bypassing_interrupts_always_reports_used_buffers_once_active() {
    let mut f = fixture_with(false, true);
    let before = f.read(reg::INTERRUPT_STATUS);

    f.bring_up();

    assert_eq!(before, 0);
    assert_eq!(f.read(reg::INTERRUPT_STATUS), INTERRUPT_VRING);
}

#[test]
fn config_space_reads_come_from_the_device_at_any_size() {
    let mut f = fixture();
    let mut word = [0u8; 4];
    let mut byte = [0u8; 1];
    let mut past = [0xffu8; 8];

    f.transport.read(reg::CONFIG + 4, &mut word);
    f.transport.read(reg::CONFIG + 11, &mut byte);
    f.transport.read(reg::CONFIG + 8, &mut past);

    assert_eq!(word, [5, 6, 7, 8]);
    assert_eq!(byte, [12]);
    assert_eq!(past, [9, 10, 11, 12, 0, 0, 0, 0]);
}

#[test]
fn config_space_writes_reach_the_device() {
    let mut f = fixture();

    f.transport.write(reg::CONFIG + 2, &[7, 8]);

    assert_eq!(f.record().config_writes, vec![(2, vec![7, 8])]);
}

#[test]
fn register_accesses_that_are_not_4_bytes_are_ignored() {
    let mut f = fixture();
    let mut short = [0xffu8; 2];
    let mut long = [0xffu8; 8];

    f.transport.read(reg::MAGIC, &mut short);
    f.transport.read(reg::MAGIC, &mut long);
    f.transport.write(reg::STATUS, &[ACKNOWLEDGE as u8]);
    f.transport
        .write(reg::STATUS, &u64::from(ACKNOWLEDGE).to_le_bytes());

    assert_eq!(short, [0, 0]);
    assert_eq!(long, [0; 8]);
    assert_eq!(f.status(), 0);
}

#[test]
fn unknown_registers_read_zero_and_ignore_writes() {
    let mut f = fixture();

    f.write(0x0c0, 0xdead_beef);

    assert_eq!(f.read(0x0c0), 0);
    assert_eq!(
        f.read(reg::DRIVER_FEATURES),
        0,
        "write-only registers read as zero"
    );
}

#[test]
fn queue_notify_signals_that_queues_kick_eventfd() {
    let f = &mut fixture();

    f.write(reg::QUEUE_NOTIFY, 1);
    f.write(reg::QUEUE_NOTIFY, 9);

    assert_eq!(QUEUE_NOTIFY_OFFSET, 0x50);
    assert_eq!(f.transport.kicks().len(), 2);
    assert!(
        f.transport.kicks()[0].read().is_err(),
        "queue 0 was not notified"
    );
    assert_eq!(f.transport.kicks()[1].read().unwrap(), 1);
}

#[test]
fn shutting_down_resets_an_active_device_once() {
    let mut f = fixture();
    f.bring_up();

    f.transport.shut_down();
    f.transport.shut_down();

    assert_eq!(f.record().resets, 1);
    assert!(!f.transport.is_activated());
}

#[test]
fn dropping_the_transport_resets_an_active_device() {
    let mut f = fixture();
    f.bring_up();
    let record = f.record.clone();

    drop(f);

    assert_eq!(record.lock().unwrap().resets, 1);
}

#[test]
fn status_writes_that_clear_bits_are_ignored() {
    let mut f = fixture();
    f.bring_up();
    let running = f.status();

    f.write(reg::STATUS, ACKNOWLEDGE | DRIVER);
    f.write(reg::DRIVER_FEATURES_SEL, 0);
    f.write(reg::DRIVER_FEATURES, 0x10);
    f.write(reg::STATUS, running);

    assert_eq!(f.status(), running);
    assert!(f.transport.is_activated());
    assert_eq!(
        f.record().acked,
        vec![VIRTIO_F_VERSION_1],
        "features acked once"
    );
}
