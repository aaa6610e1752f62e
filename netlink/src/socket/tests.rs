//! The framing and status parsers on crafted bytes, and the request and
//! dump exchanges against a fake kernel: the other end of a datagram
//! socket pair, whose replies a test queues before the call.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixDatagram;

use netlink_packet_route::link::{LinkAttribute, LinkMessage};

use super::*;
use crate::LinkChange;

/// RTM_NEWLINK (`include/uapi/linux/rtnetlink.h`).
const RTM_NEWLINK: u16 = 16;
/// NLM_F_MULTI (`include/uapi/linux/netlink.h`).
const NLM_F_MULTI: u16 = 2;

/// A client and the fake kernel it talks to.
fn fake_kernel() -> (Netlink, UnixDatagram) {
    let (ours, kernel) = UnixDatagram::pair().unwrap();
    // SAFETY: the fd comes from into_raw_fd, so the Socket is its only owner.
    let socket = unsafe { Socket::from_raw_fd(ours.into_raw_fd()) };
    (Netlink::with_socket(socket), kernel)
}

/// An RTM_NEWLINK reply for link `index`.
fn link_reply(sequence: u32, flags: u16, index: u32) -> Vec<u8> {
    let mut link = LinkMessage::default();
    link.header.index = index;
    link.attributes
        .push(LinkAttribute::IfName(format!("eth{index}")));
    encode(RouteNetlinkMessage::NewLink(link), flags, sequence)
}

fn done(sequence: u32, flags: u16, code: i32) -> Vec<u8> {
    message(
        NLMSG_DONE,
        NLM_F_MULTI | flags,
        sequence,
        &code.to_ne_bytes(),
    )
}

/// An NLMSG_ERROR with `code` (0: an ACK) echoing a capped request header.
fn ack(sequence: u32, code: i32) -> Vec<u8> {
    let mut payload = code.to_ne_bytes().to_vec();
    payload.extend(message(RTM_NEWLINK, 5, sequence, &[]));
    message(NLMSG_ERROR, NLM_F_CAPPED, sequence, &payload)
}

fn indexes(links: &[crate::Link]) -> Vec<u32> {
    links.iter().map(|l| l.index).collect()
}

/// A netlink message as the kernel frames it, padded to 4 bytes.
fn message(message_type: u16, flags: u16, sequence: u32, payload: &[u8]) -> Vec<u8> {
    let length = (HEADER_LEN + payload.len()) as u32;
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&length.to_ne_bytes());
    bytes.extend_from_slice(&message_type.to_ne_bytes());
    bytes.extend_from_slice(&flags.to_ne_bytes());
    bytes.extend_from_slice(&sequence.to_ne_bytes());
    bytes.extend_from_slice(&0u32.to_ne_bytes());
    bytes.extend_from_slice(payload);
    bytes.resize(align(bytes.len()), 0);
    bytes
}

fn attribute(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(value);
    bytes.resize(align(bytes.len()), 0);
    bytes
}

#[test]
fn frames_splits_a_datagram_at_the_padded_lengths() {
    let mut datagram = message(16, 2, 7, &[1, 2, 3]);
    datagram.extend(message(NLMSG_DONE, 2, 7, &0i32.to_ne_bytes()));

    let frames: Vec<_> = frames(&datagram).collect::<Result<_, _>>().unwrap();

    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].message_type, 16);
    assert_eq!(frames[0].sequence, 7);
    assert_eq!(frames[0].payload, &[1, 2, 3]);
    assert_eq!(frames[1].message_type, NLMSG_DONE);
}

#[test]
fn frames_rejects_a_length_past_the_end_of_the_datagram() {
    let mut datagram = message(16, 0, 1, &[0; 8]);
    datagram[0] = 200;

    let mut frames = frames(&datagram);

    assert!(frames.next().unwrap().is_err());
    assert!(frames.next().is_none());
}

#[test]
fn frames_rejects_a_length_shorter_than_the_header() {
    let mut datagram = message(16, 0, 1, &[]);
    datagram[0] = 4;

    assert!(frames(&datagram).next().unwrap().is_err());
}

#[test]
fn frames_rejects_trailing_bytes_shorter_than_a_header() {
    let mut datagram = message(16, 0, 1, &[]);
    datagram.extend_from_slice(&[0; 6]);

    let results: Vec<_> = frames(&datagram).collect();

    assert_eq!(results.len(), 2);
    assert!(results[0].is_ok());
    assert!(results[1].is_err());
}

#[test]
fn frames_survives_every_truncation_of_a_datagram() {
    let mut datagram = message(16, 0, 1, &[9; 20]);
    datagram.extend(message(NLMSG_DONE, 0, 1, &0i32.to_ne_bytes()));

    for len in 0..datagram.len() {
        let _ = frames(&datagram[..len]).count();
    }
}

#[test]
fn parse_error_of_an_ack_is_code_zero() {
    let mut payload = 0i32.to_ne_bytes().to_vec();
    payload.extend(message(16, 5, 3, &[]));

    let status = parse_error(NLM_F_CAPPED, &payload).unwrap();

    assert_eq!(
        status,
        Status {
            code: 0,
            message: None
        }
    );
}

#[test]
fn parse_error_reads_the_extended_ack_message_after_a_capped_header() {
    let mut payload = (-libc::EOPNOTSUPP).to_ne_bytes().to_vec();
    payload.extend(message(16, 5, 3, &[]));
    payload.extend(attribute(NLMSGERR_ATTR_MSG, b"Unknown device type\0"));

    let status = parse_error(NLM_F_CAPPED | NLM_F_ACK_TLVS, &payload).unwrap();

    assert_eq!(status.code, -libc::EOPNOTSUPP);
    assert_eq!(status.message.as_deref(), Some("Unknown device type"));
}

#[test]
fn parse_error_skips_a_whole_echoed_request_before_the_attributes() {
    let mut payload = (-libc::EINVAL).to_ne_bytes().to_vec();
    payload.extend(message(16, 5, 3, &[0xaa; 10]));
    payload.extend(attribute(3, &7u32.to_ne_bytes()));
    payload.extend(attribute(NLMSGERR_ATTR_MSG, b"bad\0"));

    let status = parse_error(NLM_F_ACK_TLVS, &payload).unwrap();

    assert_eq!(status.message.as_deref(), Some("bad"));
}

#[test]
fn parse_error_rejects_a_payload_without_a_code() {
    assert!(parse_error(0, &[1, 2]).is_err());
}

#[test]
fn parse_error_survives_every_truncation() {
    let mut payload = (-libc::EINVAL).to_ne_bytes().to_vec();
    payload.extend(message(16, 5, 3, &[]));
    payload.extend(attribute(NLMSGERR_ATTR_MSG, b"some text\0"));

    for len in 0..payload.len() {
        let _ = parse_error(NLM_F_ACK_TLVS, &payload[..len]);
        let _ = parse_error(NLM_F_ACK_TLVS | NLM_F_CAPPED, &payload[..len]);
        let _ = parse_done(NLM_F_ACK_TLVS, &payload[..len]);
    }
}

#[test]
fn parse_done_without_a_payload_is_success() {
    assert_eq!(parse_done(0, &[]).code, 0);
    assert_eq!(
        parse_done(0, &(-libc::EINTR).to_ne_bytes()).code,
        -libc::EINTR
    );
}

#[test]
fn status_becomes_an_error_with_the_positive_errno() {
    let status = Status {
        code: -libc::ENODEV,
        message: None,
    };

    let error = status
        .into_result(&|| "changing link 9".into())
        .unwrap_err();

    assert_eq!(error.errno(), Some(libc::ENODEV));
    assert!(
        error.to_string().starts_with("changing link 9: "),
        "{error}"
    );
}

#[test]
fn encode_sets_the_header_and_decode_reads_it_back() {
    let mut link = LinkMessage::default();
    link.header.index = 3;
    link.attributes.push(LinkAttribute::IfName("eth0".into()));

    let bytes = encode(
        RouteNetlinkMessage::SetLink(link.clone()),
        NLM_F_REQUEST,
        42,
    );

    let frame = frames(&bytes).next().unwrap().unwrap();
    assert_eq!(frame.sequence, 42);
    assert_eq!(frame.flags, NLM_F_REQUEST);
    assert_eq!(u32_at(&bytes, 0), Some(bytes.len() as u32));
    assert_eq!(
        decode(frame.message_type, frame.payload).unwrap(),
        RouteNetlinkMessage::SetLink(link)
    );
}

#[test]
fn decode_returns_an_error_for_every_truncation_of_a_message() {
    let mut link = LinkMessage::default();
    link.header.index = 3;
    link.attributes.push(LinkAttribute::IfName("eth0".into()));
    link.attributes.push(LinkAttribute::Mtu(1500));
    let bytes = encode(RouteNetlinkMessage::NewLink(link), 0, 1);
    let frame = frames(&bytes).next().unwrap().unwrap();

    for len in 0..frame.payload.len() {
        let _ = decode(frame.message_type, &frame.payload[..len]);
    }
    assert!(decode(frame.message_type, &frame.payload[..4]).is_err());
}

#[test]
fn decode_rejects_an_unknown_message_type() {
    assert!(decode(0x7fff, &[0; 16]).is_err());
}

#[test]
fn request_waits_for_its_own_ack_past_stale_replies() {
    let (mut netlink, kernel) = fake_kernel();
    kernel.send(&ack(7, -libc::EEXIST)).unwrap();
    kernel.send(&ack(1, 0)).unwrap();

    let result = netlink.set_link(3, &LinkChange::default());

    assert!(result.is_ok(), "{result:?}");
}

#[test]
fn request_refused_returns_the_errno_and_the_kernels_message() {
    let (mut netlink, kernel) = fake_kernel();
    let mut payload = (-libc::EOPNOTSUPP).to_ne_bytes().to_vec();
    payload.extend(message(RTM_NEWLINK, 5, 1, &[]));
    payload.extend(attribute(NLMSGERR_ATTR_MSG, b"Unknown device type\0"));
    kernel
        .send(&message(
            NLMSG_ERROR,
            NLM_F_CAPPED | NLM_F_ACK_TLVS,
            1,
            &payload,
        ))
        .unwrap();

    let error = netlink.add_dummy("d0").unwrap_err();

    assert_eq!(error.errno(), Some(libc::EOPNOTSUPP));
    let text = error.to_string();
    assert!(text.starts_with("adding the dummy link d0: "), "{text}");
    assert!(text.ends_with(" (Unknown device type)"), "{text}");
}

#[test]
fn dump_collects_replies_across_datagrams_until_done() {
    let (mut netlink, kernel) = fake_kernel();
    kernel
        .send(&[link_reply(1, NLM_F_MULTI, 1), link_reply(1, NLM_F_MULTI, 2)].concat())
        .unwrap();
    kernel
        .send(&[link_reply(1, NLM_F_MULTI, 3), done(1, 0, 0)].concat())
        .unwrap();

    let links = netlink.links().unwrap();

    assert_eq!(indexes(&links), vec![1, 2, 3]);
    assert_eq!(links[1].name, "eth2");
}

#[test]
fn dump_skips_the_replies_of_another_sequence() {
    let (mut netlink, kernel) = fake_kernel();
    kernel
        .send(&[link_reply(99, NLM_F_MULTI, 5), done(99, 0, 0)].concat())
        .unwrap();
    kernel
        .send(&[link_reply(1, NLM_F_MULTI, 1), done(1, 0, 0)].concat())
        .unwrap();

    assert_eq!(indexes(&netlink.links().unwrap()), vec![1]);
}

#[test]
fn dump_reads_to_done_past_an_undecodable_reply_then_fails() {
    let (mut netlink, kernel) = fake_kernel();
    kernel
        .send(&message(RTM_NEWLINK, NLM_F_MULTI, 1, &[1, 2]))
        .unwrap();
    kernel.send(&link_reply(1, NLM_F_MULTI, 2)).unwrap();
    kernel.send(&done(1, 0, 0)).unwrap();

    let error = netlink.links().unwrap_err();

    assert!(matches!(error, NetlinkError::Malformed { .. }), "{error}");
    assert_eq!(error.errno(), None);
    netlink.socket.set_non_blocking(true).unwrap();
    let left = netlink.socket.recv(&mut Vec::with_capacity(64), 0);
    assert_eq!(
        left.unwrap_err().kind(),
        io::ErrorKind::WouldBlock,
        "the dump was not read to its end"
    );
}

#[test]
fn dump_refused_at_the_start_keeps_the_errno() {
    let (mut netlink, kernel) = fake_kernel();
    kernel.send(&ack(1, -libc::ENODEV)).unwrap();

    let error = netlink.redirects(9).unwrap_err();

    assert_eq!(error.errno(), Some(libc::ENODEV));
    assert!(
        error
            .to_string()
            .starts_with("listing the ingress filters of link 9: "),
        "{error}"
    );
}

#[test]
fn dump_that_ends_in_an_error_keeps_the_errno() {
    let (mut netlink, kernel) = fake_kernel();
    kernel
        .send(&[link_reply(1, NLM_F_MULTI, 1), done(1, 0, -libc::EMSGSIZE)].concat())
        .unwrap();

    let error = netlink.links().unwrap_err();

    assert_eq!(error.errno(), Some(libc::EMSGSIZE));
}

#[test]
fn interrupted_dump_is_retried_and_only_the_last_attempt_counts() {
    let (mut netlink, kernel) = fake_kernel();
    let interrupted = NLM_F_MULTI | NLM_F_DUMP_INTR;
    kernel
        .send(&[link_reply(1, interrupted, 1), done(1, NLM_F_DUMP_INTR, 0)].concat())
        .unwrap();
    kernel
        .send(&[link_reply(2, NLM_F_MULTI, 2), done(2, 0, 0)].concat())
        .unwrap();

    assert_eq!(indexes(&netlink.links().unwrap()), vec![2]);
}

#[test]
fn dump_interrupted_every_time_gives_up() {
    let (mut netlink, kernel) = fake_kernel();
    for sequence in 1..=DUMP_ATTEMPTS {
        kernel.send(&done(sequence, NLM_F_DUMP_INTR, 0)).unwrap();
    }

    let error = netlink.links().unwrap_err();

    assert!(
        matches!(
            error,
            NetlinkError::Interrupted {
                attempts: DUMP_ATTEMPTS,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn reply_with_a_bad_length_is_malformed() {
    let (mut netlink, kernel) = fake_kernel();
    let mut reply = link_reply(1, NLM_F_MULTI, 1);
    reply[0..4].copy_from_slice(&4096u32.to_ne_bytes());
    kernel.send(&reply).unwrap();

    let error = netlink.links().unwrap_err();

    assert!(matches!(error, NetlinkError::Malformed { .. }), "{error}");
}

#[test]
fn datagram_bigger_than_the_receive_buffer_is_read_whole() {
    let (mut netlink, kernel) = fake_kernel();
    let mut datagram: Vec<u8> = (1..=3000)
        .flat_map(|i| link_reply(1, NLM_F_MULTI, i))
        .collect();
    datagram.extend(done(1, 0, 0));
    assert!(datagram.len() > RECEIVE_BUFFER_LEN);
    kernel.send(&datagram).unwrap();

    let links = netlink.links().unwrap();

    assert_eq!(links.len(), 3000);
    assert_eq!(links[2999].name, "eth3000");
}
