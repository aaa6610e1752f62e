//! husk-netlink against the real kernel. Each test runs in a thread of
//! its own, in a network namespace that thread made (`unshare`), so tests
//! run in parallel and leave nothing behind: the namespace, and every
//! link made in it, goes when the thread ends. Traffic is only ever sent
//! between links of that namespace.
//!
//! They need root (CAP_SYS_ADMIN, CAP_NET_ADMIN); without it each prints
//! `SKIPPED <test>: <why>` and returns, or fails under
//! `HUSK_TEST_NO_SKIP=1`. Kernel features: veth, the ingress qdisc,
//! cls_u32 and act_mirred (a dummy driver is optional); IPv6 parts skip themselves when the
//! namespace has IPv6 off.

mod address;
mod common;
mod link;
mod neighbour;
mod route;
mod tc;
