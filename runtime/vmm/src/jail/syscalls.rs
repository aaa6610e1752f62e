//! What each kind of monitor thread may call once it runs the guest. The
//! lists are the syscalls the code makes (glibc's and std's included),
//! found by running every suite with the filters logging instead of
//! killing, and nothing more; a few take only the arguments listed (the
//! ioctls, `fcntl` commands, signals to this process, Unix sockets).
//!
//! `pid` is the monitor's own, for the calls that may only target it.

use husk_jail::filter::{always, when_arg, Allowed};

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
const KVM_RUN: u64 = 0xae80;

fn ioctl(requests: &[u64]) -> Allowed {
    when_arg(libc::SYS_ioctl, 1, requests)
}

fn fcntl() -> Allowed {
    when_arg(
        libc::SYS_fcntl,
        1,
        &[
            libc::F_GETFD,
            libc::F_SETFD,
            libc::F_GETFL,
            libc::F_SETFL,
            libc::F_DUPFD_CLOEXEC,
        ]
        .map(|c| c as u64),
    )
}

/// What fails with an error rather than killing the monitor. glibc opens
/// files on its own at moments no test can pin down (malloc reads
/// `/proc/sys/vm/overcommit_memory` the first time a thread's heap
/// shrinks, and `/sys/devices/system/cpu/online` when it sizes its
/// arenas) and copes with a failed open; nothing of the monitor's own
/// opens a path once it is jailed. So `open` and `openat` are on every
/// list below and this filter, installed with them, makes them fail.
pub const FAILING: &[i64] = &[libc::SYS_open, libc::SYS_openat];

/// What every thread of a Rust program needs: memory, locks, signals
/// (the vCPU kick, an abort), time, stderr, its own end; and the opens
/// [`FAILING`] refuses.
fn common(pid: u64) -> Vec<Allowed> {
    let mut list: Vec<Allowed> = [
        libc::SYS_open,
        libc::SYS_openat,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_mremap,
        libc::SYS_brk,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_restart_syscall,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_getrandom,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_write,
        libc::SYS_close,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ]
    .map(always)
    .into();
    // Signals to this process's own threads only (the vCPU kick, abort).
    list.push(when_arg(libc::SYS_tgkill, 0, &[pid]));
    list
}

/// The main thread once the VM runs: it waits for the guest's end and the
/// control socket, answers requests (pause, resume, stop), kicks and joins
/// the vCPUs, stops the devices and removes its socket.
pub fn main(pid: u64) -> Vec<Allowed> {
    let mut list = common(pid);
    list.extend(
        [
            libc::SYS_poll,
            libc::SYS_ppoll,
            libc::SYS_accept4,
            libc::SYS_read,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_setsockopt,
            libc::SYS_unlink,
            libc::SYS_unlinkat,
        ]
        .map(always),
    );
    list.push(fcntl());
    list.push(ioctl(&[libc::FIONBIO]));
    list
}

/// A vCPU: `KVM_RUN`, and what its exits do: the console log (positioned
/// writes, and the cut when it reaches its cap), interrupts (eventfd
/// writes), device activation and reset (the tap's header size and
/// offloads, the vhost-user handshake, handing a handler to a worker).
pub fn vcpu(pid: u64) -> Vec<Allowed> {
    let mut list = common(pid);
    list.extend(
        [
            libc::SYS_pread64,
            libc::SYS_pwrite64,
            libc::SYS_ftruncate,
            libc::SYS_read,
            libc::SYS_sendmsg,
            libc::SYS_recvmsg,
            libc::SYS_eventfd2,
        ]
        .map(always),
    );
    list.push(fcntl());
    list.push(ioctl(&[
        KVM_RUN,
        libc::TUNSETVNETHDRSZ,
        libc::TUNSETOFFLOAD,
    ]));
    list
}

/// A device worker: its epoll loop, the queues' eventfds, the tap's
/// frames, vsock's Unix sockets (accepting the runtime's connections,
/// connecting to its listeners), and entropy for virtio-rng.
pub fn worker(pid: u64) -> Vec<Allowed> {
    let mut list = common(pid);
    list.extend(
        [
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_read,
            libc::SYS_readv,
            libc::SYS_writev,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_recvmsg,
            libc::SYS_sendmsg,
            libc::SYS_accept4,
            libc::SYS_connect,
            libc::SYS_shutdown,
            libc::SYS_getsockopt,
            libc::SYS_setsockopt,
        ]
        .map(always),
    );
    list.push(when_arg(libc::SYS_socket, 0, &[libc::AF_UNIX as u64]));
    list.push(fcntl());
    list.push(ioctl(&[libc::FIONBIO]));
    list
}

/// The reset watcher: one blocking read of the reset line's eventfd, then
/// the exit report.
pub fn reset(pid: u64) -> Vec<Allowed> {
    let mut list = common(pid);
    list.push(always(libc::SYS_read));
    list.push(fcntl());
    list
}
