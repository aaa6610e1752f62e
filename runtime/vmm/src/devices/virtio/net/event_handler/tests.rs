//! The handler driven through real virtqueues (virtio-queue's mock as the
//! guest driver) and a `SOCK_SEQPACKET` socket standing in for the tap; the
//! device-level test at the end runs it on its worker thread.

use std::fs::File;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EpollEvent;

use super::*;
use crate::devices::virtio::net::{FEATURES, F_GUEST_CSUM, F_GUEST_TSO4, MAX_FRAME};
use crate::devices::virtio::test_utils::{Desc, NetDriver, NetLayout, RxFrame};

/// What Linux accepts of the device's features, merged buffers included.
const MERGEABLE: u64 = FEATURES;
/// The same without merged buffers: one chain per frame.
const SINGLE: u64 = FEATURES & !F_MRG_RXBUF;
/// Small queues, for a ring the device can empty.
const SMALL: NetLayout = NetLayout {
    queue_size: 16,
    slot: 0x1_1000,
};

/// A TCPv4 GSO header as the kernel writes it: NEEDS_CSUM, gso_size 1448,
/// csum_start 34, csum_offset 16, hdr_len 54, num_buffers 0.
fn gso_header() -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0] = 1;
    header[1] = 1;
    header[2..4].copy_from_slice(&54u16.to_le_bytes());
    header[4..6].copy_from_slice(&1448u16.to_le_bytes());
    header[6..8].copy_from_slice(&34u16.to_le_bytes());
    header[8..10].copy_from_slice(&16u16.to_le_bytes());
    header
}

/// A header and `len` bytes of frame, different for each `seed`.
fn frame(len: usize, seed: usize) -> Vec<u8> {
    let mut bytes = gso_header().to_vec();
    bytes.extend((0..len).map(|i| ((i * 7 + seed * 13) % 251) as u8));
    bytes
}

/// `bytes` with `num_buffers` set to `count`, as the guest must get it.
fn as_received(bytes: &[u8], count: u16) -> Vec<u8> {
    let mut bytes = bytes.to_vec();
    bytes[NUM_BUFFERS_OFFSET..HEADER_LEN].copy_from_slice(&count.to_le_bytes());
    bytes
}

fn used_lens(net: &mut NetDriver<'_>) -> Vec<u32> {
    std::iter::from_fn(|| net.rx.next_used())
        .map(|u| u.len)
        .collect()
}

fn tap_events(net: &NetDriver<'_>) -> usize {
    let mut events = vec![EpollEvent::default(); 8];
    let ready = net.poller.wait(0, &mut events).unwrap();
    events[..ready].iter().filter(|e| e.data() == TAP).count()
}

#[test]
fn a_tx_frame_reaches_the_tap_byte_for_byte_with_its_header() {
    let memory = NetLayout::FULL.memory();
    let mut net = NetDriver::new(&memory, NetLayout::FULL, MERGEABLE);
    let sent = frame(1500, 1);

    net.send(&[&sent]).unwrap();
    net.run();

    assert_eq!(net.host_received(), vec![sent]);
    let used: Vec<u32> = net.tx_used().iter().map(|u| u.len).collect();
    assert_eq!(used, vec![0], "TX chains are used with length 0");
    assert_eq!(net.irq.read().unwrap(), 1, "one interrupt for the batch");
    let stats = net.handler.stats();
    assert_eq!((stats.tx_frames, stats.tx_bytes), (1, 1500));
}

#[test]
fn a_tx_frame_over_several_descriptors_is_written_in_one_piece() {
    let memory = NetLayout::FULL.memory();
    let mut net = NetDriver::new(&memory, NetLayout::FULL, MERGEABLE);
    let sent = frame(9000, 2);

    net.send(&[&sent[..HEADER_LEN], &sent[HEADER_LEN..100], &sent[100..]])
        .unwrap();
    net.run();

    assert_eq!(net.host_received(), vec![sent]);
}

#[test]
fn a_tap_frame_lands_in_an_rx_buffer_with_num_buffers_one() {
    for features in [MERGEABLE, SINGLE] {
        let memory = NetLayout::FULL.memory();
        let mut net = NetDriver::new(&memory, NetLayout::FULL, features);
        net.post_rx(4, &[2048]);
        let sent = frame(1500, 3);

        net.host_send(&sent).unwrap();
        net.run();

        let received = net.received();
        assert_eq!(
            received,
            vec![RxFrame {
                bytes: as_received(&sent, 1),
                chains: 1
            }],
            "features {features:#x}"
        );
        assert_eq!(net.rx.outstanding(), 3);
        assert_eq!(net.irq.read().unwrap(), 1);
        let stats = net.handler.stats();
        assert_eq!((stats.rx_frames, stats.rx_bytes), (1, 1500));
    }
}

#[test]
fn with_mrg_rxbuf_a_gso_frame_spans_small_buffers_and_counts_them() {
    let memory = NetLayout::FULL.memory();
    let mut net = NetDriver::new(&memory, NetLayout::FULL, MERGEABLE);
    net.post_rx(40, &[2048]);
    let sent = frame(64 << 10, 4);

    net.host_send(&sent).unwrap();
    net.run();

    let received = net.received();
    let chains = sent.len().div_ceil(2048);
    assert_eq!(chains, 33);
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].chains, chains);
    assert_eq!(received[0].bytes, as_received(&sent, chains as u16));
    assert_eq!(net.rx.outstanding(), 40 - chains);
}

#[test]
fn a_frame_of_the_largest_size_fits_one_big_chain_without_mrg_rxbuf() {
    let memory = NetLayout::FULL.memory();
    let mut net = NetDriver::new(&memory, NetLayout::FULL, SINGLE);
    // Linux's "big packets": a chain of page-sized buffers.
    net.post_rx(1, &[4096; 17]);
    let sent = frame(MAX_FRAME, 5);

    net.host_send(&sent).unwrap();
    net.run();

    let received = net.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].bytes, as_received(&sent, 1));
}

#[test]
fn without_mrg_rxbuf_a_frame_too_big_for_the_chain_is_dropped() {
    let memory = NetLayout::FULL.memory();
    let mut net = NetDriver::new(&memory, NetLayout::FULL, SINGLE);
    net.post_rx(1, &[1000]);
    net.post_rx(1, &[2000]);
    let small = frame(500, 6);

    net.host_send(&frame(1500, 7)).unwrap();
    net.host_send(&small).unwrap();
    net.run();

    let first = net.rx.next_used().unwrap();
    assert_eq!(first.len, 0, "the dropped frame's chain is used empty");
    let second = net.rx.next_used().unwrap();
    assert_eq!(net.rx.written(&second), as_received(&small, 1));
    assert_eq!(net.handler.stats().rx_dropped, 1);
}

#[test]
fn a_frame_without_rx_buffers_waits_unwatched_and_is_delivered_once_they_come() {
    let memory = NetLayout::FULL.memory();
    let mut net = NetDriver::new(&memory, NetLayout::FULL, MERGEABLE);
    let (first, second) = (frame(800, 8), frame(900, 9));

    net.host_send(&first).unwrap();
    net.run();
    net.host_send(&second).unwrap();
    let waiting = (net.handler.rx_pending(), net.handler.watch());
    let events_while_waiting = tap_events(&net);
    net.post_rx(2, &[2048]);
    net.run();

    assert_eq!(waiting, (true, TapWatch::Paused));
    assert_eq!(events_while_waiting, 0, "the worker would spin on the tap");
    let bytes: Vec<Vec<u8>> = net.received().into_iter().map(|f| f.bytes).collect();
    assert_eq!(bytes, vec![as_received(&first, 1), as_received(&second, 1)]);
    assert_eq!(net.handler.watch(), TapWatch::Reading);
    assert!(!net.handler.rx_pending());
}

#[test]
fn with_mrg_rxbuf_a_frame_needing_more_buffers_than_posted_puts_them_back_and_waits() {
    let memory = NetLayout::FULL.memory();
    let mut net = NetDriver::new(&memory, NetLayout::FULL, MERGEABLE);
    net.post_rx(2, &[1024]);
    let sent = frame(2500, 10);

    net.host_send(&sent).unwrap();
    net.run();
    let used_before = net.rx.outstanding();
    net.post_rx(1, &[1024]);
    net.run();

    assert_eq!(used_before, 2, "no buffer used while the frame did not fit");
    let received = net.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].chains, 3);
    assert_eq!(received[0].bytes, as_received(&sent, 3));
}

#[test]
fn with_mrg_rxbuf_a_frame_larger_than_the_whole_ring_is_dropped_not_stuck() {
    let memory = SMALL.memory();
    let mut net = NetDriver::new(&memory, SMALL, MERGEABLE);
    net.post_rx(16, &[100]);

    net.host_send(&frame(2000, 11)).unwrap();
    net.run();
    let lens = used_lens(&mut net);
    net.post_rx(1, &[2048]);
    let next = frame(100, 12);
    net.host_send(&next).unwrap();
    net.run();

    assert_eq!(lens, vec![0; 16]);
    assert_eq!(net.handler.stats().rx_dropped, 1);
    let bytes: Vec<Vec<u8>> = net.received().into_iter().map(|f| f.bytes).collect();
    assert_eq!(bytes, vec![as_received(&next, 1)]);
}

#[test]
fn bad_rx_chains_are_used_empty_and_the_next_frame_goes_through() {
    for features in [MERGEABLE, SINGLE] {
        let memory = NetLayout::FULL.memory();
        let end = NetLayout::FULL.queue(1).end();
        let mut net = NetDriver::new(&memory, NetLayout::FULL, features);
        let outside = Desc {
            addr: end - 8,
            len: 2048,
            writable: true,
        };
        net.rx.add(&[outside]).unwrap();
        net.rx.add_readable(&[&[0u8; 2048]]).unwrap();
        net.rx.add_writable(&[0]).unwrap();
        net.post_rx(1, &[2048]);
        let good = frame(1000, 13);

        for seed in 0..3 {
            net.host_send(&frame(1000, seed)).unwrap();
        }
        net.host_send(&good).unwrap();
        net.run();

        assert_eq!(used_lens(&mut net), vec![0, 0, 0, good.len() as u32]);
        assert_eq!(net.handler.stats().rx_dropped, 3, "features {features:#x}");
    }
}

#[test]
fn frames_shorter_than_a_header_from_the_tap_are_dropped() {
    let memory = NetLayout::FULL.memory();
    let mut net = NetDriver::new(&memory, NetLayout::FULL, MERGEABLE);
    net.post_rx(2, &[2048]);
    let good = frame(60, 14);

    net.host_send(&[1, 2, 3]).unwrap();
    net.host_send(&good).unwrap();
    net.run();

    let bytes: Vec<Vec<u8>> = net.received().into_iter().map(|f| f.bytes).collect();
    assert_eq!(bytes, vec![as_received(&good, 1)]);
    assert_eq!(net.handler.stats().rx_dropped, 1);
}

#[test]
fn many_frames_both_ways_keep_their_order() {
    let memory = NetLayout::FULL.memory();
    let mut net = NetDriver::new(&memory, NetLayout::FULL, MERGEABLE);
    net.post_rx(128, &[1024]);
    let outgoing: Vec<Vec<u8>> = (0..64).map(|i| frame(60 + i * 23, i)).collect();
    let incoming: Vec<Vec<u8>> = (0..64).map(|i| frame(1400 - i * 21, 100 + i)).collect();

    for (out, inc) in outgoing.iter().zip(&incoming) {
        net.send(&[&out[..HEADER_LEN], &out[HEADER_LEN..]]).unwrap();
        net.host_send(inc).unwrap();
    }
    net.run();

    assert_eq!(net.host_received(), outgoing);
    let received = net.received();
    let bytes: Vec<&[u8]> = received.iter().map(|f| &f.bytes[..]).collect();
    let expected: Vec<Vec<u8>> = incoming
        .iter()
        .map(|f| as_received(f, f.len().div_ceil(1024) as u16))
        .collect();
    assert_eq!(bytes, expected.iter().map(|f| &f[..]).collect::<Vec<_>>());
    assert_eq!(net.tx_used().len(), 64);
}

#[test]
fn bad_tx_chains_are_used_empty_and_the_next_frame_goes_through() {
    let memory = NetLayout::FULL.memory();
    let end = NetLayout::FULL.queue(1).end();
    let mut net = NetDriver::new(&memory, NetLayout::FULL, MERGEABLE);
    let slot = net.tx.slot(255);
    let header = gso_header();
    let largest = frame(MAX_FRAME, 15);
    let good = frame(100, 16);

    let outside = Desc {
        addr: end - 8,
        len: 64,
        writable: false,
    };
    net.tx.add(&[outside]).unwrap();
    let writable = Desc {
        addr: slot,
        len: 64,
        writable: true,
    };
    net.tx.add(&[writable]).unwrap();
    net.send(&[&header, &[0u8; 0x1_0000]]).unwrap(); // 65548 bytes: fine
    net.send(&[&header, &[0u8; MAX_FRAME + 1]]).unwrap(); // a byte too many
    net.send(&[&[0u8; 4096][..]; 17]).unwrap(); // 69632 bytes in 17 descriptors
    let empty = Desc {
        addr: slot,
        len: 0,
        writable: false,
    };
    net.tx.add(&[empty]).unwrap();
    net.send(&[&header[..11]]).unwrap();
    net.send(&[&largest]).unwrap();
    net.send(&[&good]).unwrap();
    net.run();

    let lens: Vec<u32> = net.tx_used().iter().map(|u| u.len).collect();
    assert_eq!(lens, vec![0; 9]);
    let frames = net.host_received();
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[0].len(), HEADER_LEN + 0x1_0000);
    assert_eq!((&frames[1], &frames[2]), (&largest, &good));
    assert_eq!(net.handler.stats().tx_dropped, 6);
}

#[test]
fn a_full_tx_batch_kicks_the_queue_to_come_back() {
    let memory = NetLayout::FULL.memory();
    let mut net = NetDriver::new(&memory, NetLayout::FULL, MERGEABLE);
    for seed in 0..MAX_FRAMES_PER_WAKEUP {
        net.send(&[&frame(20, seed)]).unwrap();
    }

    let used = net.handler.process_tx();

    assert_eq!(used, MAX_FRAMES_PER_WAKEUP);
    let mut events = vec![EpollEvent::default(); 8];
    let ready = net.poller.wait(0, &mut events).unwrap();
    assert!(events[..ready].iter().any(|e| e.data() == TX_KICK));
}

#[test]
fn nothing_to_move_raises_no_interrupt() {
    let memory = NetLayout::FULL.memory();
    let mut net = NetDriver::new(&memory, NetLayout::FULL, MERGEABLE);
    net.post_rx(4, &[2048]);

    net.run();

    assert!(net.irq.read().is_err());
}

#[test]
fn a_tap_that_hangs_up_is_no_longer_watched_and_its_waiting_frame_still_arrives() {
    let memory = NetLayout::FULL.memory();
    let mut net = NetDriver::new(&memory, NetLayout::FULL, MERGEABLE);
    let sent = frame(300, 17);
    net.host_send(&sent).unwrap();
    net.run();

    drop(std::mem::replace(
        &mut net.host,
        File::open("/dev/null").unwrap(),
    ));
    net.run();
    let watch = net.handler.watch();
    let events = tap_events(&net);
    net.post_rx(1, &[2048]);
    net.run();

    assert_eq!(watch, TapWatch::Gone);
    assert_eq!(events, 0, "the worker would spin on the hang-up");
    let bytes: Vec<Vec<u8>> = net.received().into_iter().map(|f| f.bytes).collect();
    assert_eq!(bytes, vec![as_received(&sent, 1)]);
}

#[test]
fn the_device_moves_frames_on_its_worker_thread_and_can_be_activated_again() {
    use crate::devices::virtio::net::Net;
    use crate::devices::virtio::test_utils::{eventfd, seqpacket_pair, DriverQueue};
    use crate::devices::virtio::VirtioDevice;
    use std::io::{Read, Write};

    let memory = NetLayout::FULL.memory();
    let (tap, host) = seqpacket_pair();
    let mut host = File::from(host);
    let mut device = Net::new(Tap::from_socket_for_tests(tap), [2, 0, 0, 0, 0, 1], None).unwrap();
    device.ack_features(F_GUEST_CSUM | F_GUEST_TSO4 | F_MRG_RXBUF);
    for round in 0..2 {
        let mut rx = DriverQueue::new(&memory, NetLayout::FULL.queue(0));
        let mut tx = DriverQueue::new(&memory, NetLayout::FULL.queue(1));
        let (rx_queue, tx_queue) = (rx.active(), tx.active());
        let kicks = [
            rx_queue.kick.try_clone().unwrap(),
            tx_queue.kick.try_clone().unwrap(),
        ];
        let irq = eventfd();
        let interrupt = Interrupt::new(irq.try_clone().unwrap());
        device
            .activate(memory.clone(), vec![rx_queue, tx_queue], interrupt)
            .unwrap();
        let (out, inc) = (frame(1000, round), frame(1200, 10 + round));

        tx.add_readable(&[&out]).unwrap();
        kicks[1].write(1).unwrap();
        rx.add_writable(&[2048]).unwrap();
        kicks[0].write(1).unwrap();
        host.write_all(&inc).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let used = loop {
            if let Some(used) = rx.next_used() {
                break used;
            }
            assert!(Instant::now() < deadline, "no frame from the worker");
            std::thread::sleep(Duration::from_millis(2));
        };
        let mut buf = vec![0u8; 4096];
        let got = loop {
            match host.read(&mut buf) {
                Ok(len) => break buf[..len].to_vec(),
                Err(_) => {
                    assert!(Instant::now() < deadline, "no frame on the tap");
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        };
        device.reset();

        assert_eq!(got, out);
        assert_eq!(rx.written(&used), as_received(&inc, 1));
        let tap = device.tap().expect("the reset gave the tap back");
        assert_eq!(tap.header_len(), Some(HEADER_LEN));
        assert_eq!(tap.offloads(), Some(libc::TUN_F_CSUM | libc::TUN_F_TSO4));
    }
}
