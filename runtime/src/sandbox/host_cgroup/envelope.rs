//! The container's limits as the VM's envelope in the host cgroup: the
//! guest enforces `linux.resources` on the workload, and the host enforces
//! them again on the processes that are the VM (the monitor, the VMM or
//! QEMU, virtiofsd, the vsock backend), with room for what the VM itself
//! costs, so a guest cannot take more of the host than its container was
//! given, and the engines' accounting reads the limits where runc puts them.
//!
//! - memory: the guest's memory (the limit plus
//!   [`sizing::MEMORY_OVERHEAD_MIB`]) plus [`HOST_MEMORY_OVERHEAD_MIB`] for
//!   the VM's host side; the reservation and swappiness as given; swap
//!   (memory+swap in v1) grows by the same overhead.
//! - cpu: shares (v2: weight, runc's conversion), quota and period, cpuset
//!   cpus and mems as given: they name host CPUs and nodes.
//! - pids: the limit plus [`HOST_TASKS`], the VM's own threads.
//! - blkio (v2: io) and hugetlb as given: the VM's disk I/O is virtiofsd's.
//!
//! As in runc's `update`, a zero leaves a limit alone.

use husk_protocol::oci::{shares_to_weight, v2_cpu_max, BlockIo, Resources, ThrottleDevice};

use crate::sandbox::sizing;

/// Host memory one VM holds beyond its guest memory: QEMU's translation
/// cache under TCG (the largest part), virtiofsd, the vsock backend and
/// the monitor. Added to the memory limit in the host cgroup.
pub const HOST_MEMORY_OVERHEAD_MIB: u64 = 256;

/// Host tasks one VM runs beyond the container's own: the monitor's, the
/// VMM's (a thread per vCPU and device) and its helpers' threads. Added to
/// the pids limit in the host cgroup.
pub const HOST_TASKS: i64 = 128;

/// The cgroup layout a hierarchy has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// cgroup v1: one hierarchy per controller (or a few).
    V1,
    /// cgroup v2: the unified hierarchy.
    V2,
}

/// The files to write in the VM's host cgroup and their values, in the
/// order they must be written (a v1 memory+swap limit after the memory
/// limit, a quota after its period). Files a hierarchy lacks belong to
/// controllers it does not have.
pub fn files(resources: &Resources, version: Version) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut put = |file: &str, value: String| files.push((file.to_string(), value));
    if let Some(memory) = &resources.memory {
        let limit = memory.limit.filter(|l| *l != 0);
        let v1 = version == Version::V1;
        // v1 says "no limit" with -1, v2 with "max".
        let unlimited = if v1 { "-1" } else { "max" };
        let bytes = |v: i64| {
            if v < 0 {
                unlimited.to_string()
            } else {
                v.to_string()
            }
        };
        if let Some(limit) = limit {
            let file = if v1 {
                "memory.limit_in_bytes"
            } else {
                "memory.max"
            };
            put(file, bytes(envelope_bytes(limit)));
        }
        if let Some(reservation) = memory.reservation.filter(|r| *r != 0) {
            let file = if v1 {
                "memory.soft_limit_in_bytes"
            } else {
                "memory.low"
            };
            put(file, bytes(reservation));
        }
        if let (Some(swap), Some(limit)) = (memory.swap.filter(|s| *s != 0), limit) {
            if swap < 0 || limit < 0 {
                let file = if v1 {
                    "memory.memsw.limit_in_bytes"
                } else {
                    "memory.swap.max"
                };
                put(file, unlimited.to_string());
            } else if v1 {
                // Memory+swap, grown by the same overhead as the memory.
                let overhead = envelope_bytes(limit) - limit;
                put(
                    "memory.memsw.limit_in_bytes",
                    swap.saturating_add(overhead).to_string(),
                );
            } else {
                // v2 counts swap alone.
                put("memory.swap.max", swap.saturating_sub(limit).to_string());
            }
        }
        if let (Some(swappiness), true) = (memory.swappiness, v1) {
            put("memory.swappiness", swappiness.min(100).to_string());
        }
    }
    if let Some(cpu) = &resources.cpu {
        let quota = cpu.quota.filter(|q| *q != 0);
        let period = cpu.period.filter(|p| *p != 0);
        match version {
            Version::V1 => {
                if let Some(shares) = cpu.shares.filter(|s| *s > 0) {
                    put("cpu.shares", shares.to_string());
                }
                if let Some(period) = period {
                    put("cpu.cfs_period_us", period.to_string());
                }
                if let Some(quota) = quota {
                    put("cpu.cfs_quota_us", quota.max(-1).to_string());
                }
            }
            Version::V2 => {
                if let Some(shares) = cpu.shares.filter(|s| *s > 0) {
                    put("cpu.weight", shares_to_weight(shares).to_string());
                }
                if let Some(value) = v2_cpu_max(quota, period) {
                    put("cpu.max", value);
                }
            }
        }
        // Nodes before CPUs: a v1 cpuset takes neither until both are set,
        // and the nearest ancestor's are copied down first.
        if let Some(mems) = cpu.mems.as_ref().filter(|m| !m.trim().is_empty()) {
            put("cpuset.mems", mems.trim().to_string());
        }
        if let Some(cpus) = cpu.cpus.as_ref().filter(|c| !c.trim().is_empty()) {
            put("cpuset.cpus", cpus.trim().to_string());
        }
    }
    if let Some(pids) = resources.pids.as_ref().filter(|p| p.limit != 0) {
        let value = if pids.limit < 0 {
            "max".to_string()
        } else {
            pids.limit.saturating_add(HOST_TASKS).to_string()
        };
        put("pids.max", value);
    }
    if let Some(block_io) = &resources.block_io {
        for (file, value) in block_io_files(block_io, version) {
            put(&file, value);
        }
    }
    for huge in &resources.hugepage_limits {
        let size = huge.page_size.trim();
        // The size names a file: nothing but its digits and unit.
        if size.is_empty() || !size.chars().all(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        let file = match version {
            Version::V1 => format!("hugetlb.{size}.limit_in_bytes"),
            Version::V2 => format!("hugetlb.{size}.max"),
        };
        put(&file, huge.limit.to_string());
    }
    files
}

/// The host memory limit for a container memory limit of `limit` bytes
/// (negative: none, returned as it is).
pub fn envelope_bytes(limit: i64) -> i64 {
    if limit <= 0 {
        return limit;
    }
    let guest_mib = u64::from(sizing::memory_mib_for_limit(limit as u64));
    let bytes = (guest_mib + HOST_MEMORY_OVERHEAD_MIB) << 20;
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

fn block_io_files(block_io: &BlockIo, version: Version) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let device = |d: &ThrottleDevice| format!("{}:{}", d.major, d.minor);
    match version {
        Version::V1 => {
            if let Some(weight) = block_io.weight.filter(|w| *w > 0) {
                files.push(("blkio.weight".to_string(), weight.to_string()));
            }
            for d in &block_io.weight_device {
                if let Some(weight) = d.weight.filter(|w| *w > 0) {
                    let value = format!("{}:{} {weight}", d.major, d.minor);
                    files.push(("blkio.weight_device".to_string(), value));
                }
            }
            let throttles = [
                (
                    "blkio.throttle.read_bps_device",
                    &block_io.throttle_read_bps_device,
                ),
                (
                    "blkio.throttle.write_bps_device",
                    &block_io.throttle_write_bps_device,
                ),
                (
                    "blkio.throttle.read_iops_device",
                    &block_io.throttle_read_iops_device,
                ),
                (
                    "blkio.throttle.write_iops_device",
                    &block_io.throttle_write_iops_device,
                ),
            ];
            for (file, list) in throttles {
                for d in list {
                    files.push((file.to_string(), format!("{} {}", device(d), d.rate)));
                }
            }
        }
        Version::V2 => {
            if let Some(weight) = block_io.weight.filter(|w| *w > 0) {
                files.push(("io.weight".to_string(), format!("default {weight}")));
            }
            for d in &block_io.weight_device {
                if let Some(weight) = d.weight.filter(|w| *w > 0) {
                    let value = format!("{}:{} {weight}", d.major, d.minor);
                    files.push(("io.weight".to_string(), value));
                }
            }
            let throttles = [
                ("rbps", &block_io.throttle_read_bps_device),
                ("wbps", &block_io.throttle_write_bps_device),
                ("riops", &block_io.throttle_read_iops_device),
                ("wiops", &block_io.throttle_write_iops_device),
            ];
            for (key, list) in throttles {
                for d in list {
                    let value = format!("{} {key}={}", device(d), d.rate);
                    files.push(("io.max".to_string(), value));
                }
            }
        }
    }
    files
}

#[cfg(test)]
mod tests;
