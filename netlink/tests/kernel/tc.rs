//! tc: ingress qdiscs, u32 redirects listed in both directions and gone
//! with their qdisc, a packet that really takes the redirect, and the
//! errnos.

use std::mem;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::common::{in_private_netns, veth_up};

#[test]
fn redirects_both_ways_are_listed_and_go_with_their_qdisc() {
    in_private_netns(|netlink| {
        let (a, b) = veth_up(netlink, "husk-ta", "husk-tb");
        netlink.add_ingress_qdisc(a.index).unwrap();
        netlink.add_ingress_qdisc(b.index).unwrap();

        netlink.add_redirect(a.index, b.index).unwrap();
        netlink.add_redirect(b.index, a.index).unwrap();

        assert_eq!(netlink.redirects(a.index).unwrap(), vec![b.index]);
        assert_eq!(netlink.redirects(b.index).unwrap(), vec![a.index]);
        netlink.delete_ingress_qdisc(a.index).unwrap();
        assert_eq!(netlink.redirects(a.index).unwrap(), Vec::<u32>::new());
        assert_eq!(netlink.redirects(b.index).unwrap(), vec![a.index]);
    });
}

#[test]
fn two_redirects_on_one_link_are_both_listed() {
    in_private_netns(|netlink| {
        let (a, b) = veth_up(netlink, "husk-ta", "husk-tb");
        let (c, _) = veth_up(netlink, "husk-tc", "husk-td");
        netlink.add_ingress_qdisc(a.index).unwrap();

        netlink.add_redirect(a.index, b.index).unwrap();
        netlink.add_redirect(a.index, c.index).unwrap();

        let mut targets = netlink.redirects(a.index).unwrap();
        targets.sort_unstable();
        let mut expected = vec![b.index, c.index];
        expected.sort_unstable();
        assert_eq!(targets, expected);
    });
}

#[test]
fn a_link_without_an_ingress_qdisc_has_no_redirects() {
    in_private_netns(|netlink| {
        let (a, _) = veth_up(netlink, "husk-ta", "husk-tb");

        assert_eq!(netlink.redirects(a.index).unwrap(), Vec::<u32>::new());
    });
}

#[test]
fn adding_the_ingress_qdisc_twice_keeps_eexist() {
    in_private_netns(|netlink| {
        let (a, _) = veth_up(netlink, "husk-ta", "husk-tb");
        netlink.add_ingress_qdisc(a.index).unwrap();

        let error = netlink.add_ingress_qdisc(a.index).unwrap_err();

        assert_eq!(error.errno(), Some(libc::EEXIST), "{error}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("adding the ingress qdisc to link {}: ", a.index)),
            "{error}"
        );
    });
}

#[test]
fn a_redirect_or_a_delete_without_an_ingress_qdisc_keeps_the_kernels_errno() {
    in_private_netns(|netlink| {
        let (a, b) = veth_up(netlink, "husk-ta", "husk-tb");

        let redirect = netlink.add_redirect(a.index, b.index).unwrap_err();
        let delete = netlink.delete_ingress_qdisc(a.index).unwrap_err();

        assert!(redirect.errno().is_some(), "{redirect}");
        assert!(delete.errno().is_some(), "{delete}");
    });
}

/// p0 sends to a (permanent, made-up) neighbour; the packet arrives on
/// p1, whose ingress redirects it out of q1, so it arrives on q0.
#[test]
fn a_redirected_packet_leaves_through_the_target_link() {
    in_private_netns(|netlink| {
        let (p0, p1) = veth_up(netlink, "husk-p0", "husk-p1");
        let (q0, q1) = veth_up(netlink, "husk-q0", "husk-q1");
        netlink
            .add_address(p0.index, "10.1.0.1".parse().unwrap(), 24, false)
            .unwrap();
        netlink
            .add_neighbour(p0.index, "10.1.0.2".parse().unwrap(), [2, 0, 0, 0, 0, 2])
            .unwrap();
        let capture = Capture::on(q0.index);
        let sender = UdpSocket::bind("10.1.0.1:0").unwrap();
        let send = |payload: &[u8]| {
            sender.send_to(payload, "10.1.0.2:9").unwrap();
        };
        assert!(
            !capture.sees(b"husk-before", 3, &send),
            "q0 got traffic before the redirect"
        );

        netlink.add_ingress_qdisc(p1.index).unwrap();
        netlink.add_redirect(p1.index, q1.index).unwrap();
        assert!(
            capture.sees(b"husk-redirected", 10, &send),
            "the packet never reached q0"
        );

        netlink.delete_ingress_qdisc(p1.index).unwrap();
        assert!(
            !capture.sees(b"husk-after", 3, &send),
            "q0 got traffic after the delete"
        );
    });
}

/// A packet socket receiving the IPv4 packets that arrive on one link.
struct Capture {
    socket: OwnedFd,
}

impl Capture {
    const WAIT: Duration = Duration::from_millis(200);

    fn on(index: u32) -> Capture {
        let protocol = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: socket takes no pointers; the fd it returns is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(protocol),
            )
        };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd is a new socket that nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data, for which zeroes are valid.
        let mut address: libc::sockaddr_ll = unsafe { mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = index as i32;
        // SAFETY: the pointer and length describe `address`, which lives
        // through the call.
        let bound = unsafe {
            libc::bind(
                socket.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(
            bound,
            0,
            "binding the packet socket: {}",
            std::io::Error::last_os_error()
        );
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: Self::WAIT.as_micros() as libc::suseconds_t,
        };
        // SAFETY: the pointer and length describe `timeout`, which lives
        // through the call.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        Capture { socket }
    }

    /// Sends `payload` up to `attempts` times and says whether a packet
    /// carrying it arrived.
    fn sees(&self, payload: &[u8], attempts: u32, send: &dyn Fn(&[u8])) -> bool {
        let mut buffer = [0u8; 2048];
        for _ in 0..attempts {
            send(payload);
            let deadline = Instant::now() + Self::WAIT;
            while Instant::now() < deadline {
                // SAFETY: the pointer and length describe `buffer`, which
                // lives through the call.
                let received = unsafe {
                    libc::recv(
                        self.socket.as_raw_fd(),
                        buffer.as_mut_ptr().cast(),
                        buffer.len(),
                        0,
                    )
                };
                let Ok(len) = usize::try_from(received) else {
                    break; // the timeout
                };
                if buffer[..len].windows(payload.len()).any(|w| w == payload) {
                    return true;
                }
            }
        }
        false
    }
}
