//! The VM's size from the container's limits: `linux.resources.memory.limit`
//! plus a fixed overhead for the guest kernel and agent becomes the guest's
//! memory; the CPU quota (rounded up) or the cpuset's size becomes the vCPU
//! count. The same limits are applied again inside the guest's cgroup, so
//! the workload sees exactly its limit (a cpuset there becomes the guest's
//! first CPUs, as many as it names).

use husk_protocol::oci::{cpuset_size, Resources};

/// Guest memory added on top of the container's limit: the kernel, the
/// agent, page tables and the page cache of a small guest (measured
/// footprint of an idle guest is about 30 MiB; the rest is headroom).
pub const MEMORY_OVERHEAD_MIB: u32 = 64;

/// The smallest guest we boot.
pub const MIN_MEMORY_MIB: u32 = 128;

/// The most vCPUs we give one VM.
pub const MAX_VCPUS: u32 = 64;

/// Guest memory for the limit, or `default_mib` without one.
pub fn memory_mib(resources: Option<&Resources>, default_mib: u32) -> u32 {
    let limit = resources
        .and_then(|r| r.memory.as_ref())
        .and_then(|m| m.limit)
        .filter(|l| *l > 0);
    match limit {
        None => default_mib,
        Some(bytes) => memory_mib_for_limit(bytes as u64),
    }
}

/// Guest memory for a container memory limit of `bytes`.
pub fn memory_mib_for_limit(bytes: u64) -> u32 {
    let mib = bytes.div_ceil(1 << 20).min(u32::MAX as u64 / 2) as u32;
    (mib + MEMORY_OVERHEAD_MIB).max(MIN_MEMORY_MIB)
}

/// vCPUs for the quota or cpuset, or `default_vcpus` without either,
/// never more than `host_cpus`.
pub fn vcpus(resources: Option<&Resources>, default_vcpus: u32, host_cpus: u32) -> u32 {
    let cpu = resources.and_then(|r| r.cpu.as_ref());
    let from_quota = cpu.and_then(|c| {
        let quota = c.quota.filter(|q| *q > 0)? as u64;
        let period = c.period.filter(|p| *p > 0).unwrap_or(100_000);
        Some(quota.div_ceil(period) as u32)
    });
    let from_cpuset = cpu.and_then(|c| c.cpus.as_deref()).and_then(cpuset_size);
    let wanted = match (from_quota, from_cpuset) {
        (Some(q), Some(s)) => q.min(s),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => default_vcpus,
    };
    wanted.clamp(1, host_cpus.clamp(1, MAX_VCPUS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::oci::{CpuResources, MemoryResources};

    fn with_memory(limit: i64) -> Resources {
        Resources {
            memory: Some(MemoryResources {
                limit: Some(limit),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with_cpu(quota: Option<i64>, cpus: Option<&str>) -> Resources {
        Resources {
            cpu: Some(CpuResources {
                quota,
                period: Some(100_000),
                cpus: cpus.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn memory_is_the_limit_plus_overhead() {
        assert_eq!(
            memory_mib(Some(&with_memory(512 << 20)), 256),
            512 + MEMORY_OVERHEAD_MIB
        );
        assert_eq!(memory_mib(Some(&with_memory(6 << 20)), 256), MIN_MEMORY_MIB);
        assert_eq!(memory_mib(Some(&with_memory(-1)), 256), 256);
        assert_eq!(memory_mib(None, 256), 256);
    }

    #[test]
    fn vcpus_round_the_quota_up() {
        assert_eq!(vcpus(Some(&with_cpu(Some(150_000), None)), 1, 8), 2);
        assert_eq!(vcpus(Some(&with_cpu(Some(50_000), None)), 1, 8), 1);
        assert_eq!(vcpus(Some(&with_cpu(None, Some("0-3,6"))), 1, 8), 5);
        assert_eq!(vcpus(Some(&with_cpu(Some(800_000), None)), 1, 2), 2);
        assert_eq!(vcpus(None, 1, 8), 1);
    }
}
