use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::test_utils::{eventfd, guest_memory, Desc, DriverQueue, QueueLayout};

const LAYOUT: QueueLayout = QueueLayout {
    rings: GuestAddress(0),
    size: 16,
    data: GuestAddress(0x10_0000),
    slot: 0x1_0000,
};
const MEMORY_SIZE: usize = 4 << 20;
/// A buffer far bigger than the per-buffer cap, after the slots.
const HUGE: Desc = Desc {
    addr: 0x20_0000,
    len: 1 << 20,
    writable: true,
};

fn handler(memory: &GuestMemory, driver: &DriverQueue<'_>, irq: &EventFd) -> RngHandler {
    let interrupt = Interrupt::new(irq.try_clone().unwrap());
    RngHandler::new(memory.clone(), driver.active(), interrupt)
}

#[test]
fn every_buffer_is_filled_and_used_with_the_length_written() {
    let memory = guest_memory(MEMORY_SIZE);
    let mut driver = DriverQueue::new(&memory, LAYOUT);
    let irq = eventfd();
    let mut rng = handler(&memory, &driver, &irq);
    driver.add_writable(&[16]).unwrap();
    driver.add_writable(&[4096]).unwrap();
    driver.add_writable(&[100, 200]).unwrap();

    let used = rng.fill_buffers();

    assert_eq!(used, 3);
    let chains: Vec<_> = std::iter::from_fn(|| driver.next_used()).collect();
    let lens: Vec<u32> = chains.iter().map(|c| c.len).collect();
    assert_eq!(lens, vec![16, 4096, 300]);
    let page = driver.written(&chains[1]);
    assert!(page.iter().any(|b| *b != 0), "4 KiB of zeros is not random");
    assert_eq!(irq.read().unwrap(), 1);
}

#[test]
fn a_huge_buffer_gets_at_most_the_cap() {
    let memory = guest_memory(MEMORY_SIZE);
    let mut driver = DriverQueue::new(&memory, LAYOUT);
    let mut rng = handler(&memory, &driver, &eventfd());
    driver.add(&[HUGE]).unwrap();

    rng.fill_buffers();

    let used = driver.next_used().unwrap();
    assert_eq!(used.len as usize, MAX_BYTES_PER_BUFFER);
    let mut past_the_cap = vec![0xffu8; 4096];
    memory
        .read_slice(
            &mut past_the_cap,
            GuestAddress(HUGE.addr + MAX_BYTES_PER_BUFFER as u64),
        )
        .unwrap();
    assert!(past_the_cap.iter().all(|b| *b == 0), "written past the cap");
}

#[test]
fn buffers_the_device_cannot_write_are_used_empty() {
    let memory = guest_memory(MEMORY_SIZE);
    let mut driver = DriverQueue::new(&memory, LAYOUT);
    let mut rng = handler(&memory, &driver, &eventfd());
    driver.add_readable(&[&[0u8; 64]]).unwrap();
    driver
        .add(&[Desc {
            addr: MEMORY_SIZE as u64 - 16,
            len: 64,
            writable: true,
        }])
        .unwrap();

    let used = rng.fill_buffers();

    assert_eq!(used, 2);
    let lens: Vec<u32> = std::iter::from_fn(|| driver.next_used())
        .map(|c| c.len)
        .collect();
    assert_eq!(lens, vec![0, 0]);
}

#[test]
fn nothing_offered_raises_no_interrupt() {
    let memory = guest_memory(MEMORY_SIZE);
    let driver = DriverQueue::new(&memory, LAYOUT);
    let irq = eventfd();
    let mut rng = handler(&memory, &driver, &irq);

    let used = rng.fill_buffers();

    assert_eq!(used, 0);
    assert!(irq.read().is_err());
}

#[test]
fn the_device_fills_buffers_on_a_kick_from_its_worker_thread() {
    use crate::devices::virtio::rng::Rng;
    use crate::devices::virtio::VirtioDevice;
    use std::time::{Duration, Instant};

    let memory = guest_memory(MEMORY_SIZE);
    let mut driver = DriverQueue::new(&memory, LAYOUT);
    let mut device = Rng::new().unwrap();
    let queue = driver.active();
    let kick = queue.kick.try_clone().unwrap();
    let irq = eventfd();
    device
        .activate(
            memory.clone(),
            vec![queue],
            Interrupt::new(irq.try_clone().unwrap()),
        )
        .unwrap();

    driver.add_writable(&[32]).unwrap();
    kick.write(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let used = loop {
        if let Some(used) = driver.next_used() {
            break used;
        }
        assert!(Instant::now() < deadline, "the worker filled nothing");
        std::thread::sleep(Duration::from_millis(2));
    };
    device.reset();

    assert_eq!(used.len, 32);
    assert_eq!(irq.read().unwrap(), 1);
}
