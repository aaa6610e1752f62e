use super::*;
use husk_protocol::oci::{
    CpuResources, HugepageLimit, MemoryResources, PidsResources, WeightDevice,
};

const MIB: i64 = 1 << 20;

fn full() -> Resources {
    Resources {
        memory: Some(MemoryResources {
            limit: Some(64 * MIB),
            swap: Some(96 * MIB),
            reservation: Some(32 * MIB),
            swappiness: Some(10),
        }),
        cpu: Some(CpuResources {
            shares: Some(512),
            quota: Some(50_000),
            period: Some(100_000),
            cpus: Some("0".into()),
            mems: Some("0".into()),
        }),
        pids: Some(PidsResources { limit: 40 }),
        block_io: Some(BlockIo {
            weight: Some(300),
            weight_device: vec![WeightDevice {
                major: 8,
                minor: 0,
                weight: Some(200),
            }],
            throttle_read_bps_device: vec![ThrottleDevice {
                major: 8,
                minor: 0,
                rate: 1 << 20,
            }],
            ..Default::default()
        }),
        hugepage_limits: vec![HugepageLimit {
            page_size: "2MB".into(),
            limit: 4 << 20,
        }],
    }
}

fn value<'a>(files: &'a [(String, String)], file: &str) -> Vec<&'a str> {
    files
        .iter()
        .filter(|(f, _)| f == file)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn the_memory_limit_grows_by_the_guest_and_host_overheads() {
    let guest = 64 + i64::from(sizing::MEMORY_OVERHEAD_MIB);
    let envelope =
        (guest.max(i64::from(sizing::MIN_MEMORY_MIB)) + HOST_MEMORY_OVERHEAD_MIB as i64) * MIB;

    assert_eq!(envelope_bytes(64 * MIB), envelope);
    assert_eq!(envelope_bytes(-1), -1);
    let v1 = files(&full(), Version::V1);
    assert_eq!(value(&v1, "memory.limit_in_bytes"), [envelope.to_string()]);
    assert_eq!(
        value(&v1, "memory.memsw.limit_in_bytes"),
        [(96 * MIB + envelope - 64 * MIB).to_string()]
    );
    let v2 = files(&full(), Version::V2);
    assert_eq!(value(&v2, "memory.max"), [envelope.to_string()]);
    assert_eq!(value(&v2, "memory.swap.max"), [(32 * MIB).to_string()]);
}

#[test]
fn v1_files_are_runc_s_with_the_envelope() {
    let v1 = files(&full(), Version::V1);

    assert_eq!(
        value(&v1, "memory.soft_limit_in_bytes"),
        [(32 * MIB).to_string()]
    );
    assert_eq!(value(&v1, "memory.swappiness"), ["10"]);
    assert_eq!(value(&v1, "cpu.shares"), ["512"]);
    assert_eq!(value(&v1, "cpu.cfs_period_us"), ["100000"]);
    assert_eq!(value(&v1, "cpu.cfs_quota_us"), ["50000"]);
    assert_eq!(value(&v1, "cpuset.cpus"), ["0"]);
    assert_eq!(value(&v1, "pids.max"), [(40 + HOST_TASKS).to_string()]);
    assert_eq!(value(&v1, "blkio.weight"), ["300"]);
    assert_eq!(value(&v1, "blkio.weight_device"), ["8:0 200"]);
    assert_eq!(
        value(&v1, "blkio.throttle.read_bps_device"),
        ["8:0 1048576"]
    );
    assert_eq!(value(&v1, "hugetlb.2MB.limit_in_bytes"), ["4194304"]);
}

#[test]
fn v2_files_translate_the_v1_names_as_runc_does() {
    let v2 = files(&full(), Version::V2);

    assert_eq!(value(&v2, "memory.low"), [(32 * MIB).to_string()]);
    assert!(value(&v2, "memory.swappiness").is_empty());
    assert_eq!(value(&v2, "cpu.weight"), ["20"]);
    assert_eq!(value(&v2, "cpu.max"), ["50000 100000"]);
    assert_eq!(value(&v2, "pids.max"), [(40 + HOST_TASKS).to_string()]);
    assert_eq!(value(&v2, "io.weight"), ["default 300", "8:0 200"]);
    assert_eq!(value(&v2, "io.max"), ["8:0 rbps=1048576"]);
    assert_eq!(value(&v2, "hugetlb.2MB.max"), ["4194304"]);
}

#[test]
fn a_period_comes_before_its_quota_and_nodes_before_cpus() {
    let v1 = files(&full(), Version::V1);
    let at = |file: &str| v1.iter().position(|(f, _)| f == file).unwrap();

    assert!(at("cpu.cfs_period_us") < at("cpu.cfs_quota_us"));
    assert!(at("cpuset.mems") < at("cpuset.cpus"));
    assert!(at("memory.limit_in_bytes") < at("memory.memsw.limit_in_bytes"));
}

#[test]
fn zeros_and_absent_limits_write_nothing() {
    let zeros = Resources {
        memory: Some(MemoryResources {
            limit: Some(0),
            swap: Some(0),
            reservation: Some(0),
            swappiness: None,
        }),
        cpu: Some(CpuResources {
            shares: Some(0),
            quota: Some(0),
            period: Some(0),
            cpus: Some(String::new()),
            mems: None,
        }),
        pids: Some(PidsResources { limit: 0 }),
        ..Default::default()
    };

    assert!(files(&zeros, Version::V1).is_empty());
    assert!(files(&zeros, Version::V2).is_empty());
    assert!(files(&Resources::default(), Version::V2).is_empty());
}

#[test]
fn unlimited_values_are_each_version_s_word_for_none() {
    let unlimited = Resources {
        memory: Some(MemoryResources {
            limit: Some(-1),
            swap: Some(-1),
            ..Default::default()
        }),
        cpu: Some(CpuResources {
            quota: Some(-1),
            ..Default::default()
        }),
        pids: Some(PidsResources { limit: -1 }),
        ..Default::default()
    };

    let v1 = files(&unlimited, Version::V1);
    assert_eq!(value(&v1, "memory.limit_in_bytes"), ["-1"]);
    assert_eq!(value(&v1, "memory.memsw.limit_in_bytes"), ["-1"]);
    assert_eq!(value(&v1, "cpu.cfs_quota_us"), ["-1"]);
    assert_eq!(value(&v1, "pids.max"), ["max"]);
    let v2 = files(&unlimited, Version::V2);
    assert_eq!(value(&v2, "memory.max"), ["max"]);
    assert_eq!(value(&v2, "memory.swap.max"), ["max"]);
    assert_eq!(value(&v2, "cpu.max"), ["max"]);
}

#[test]
fn a_hugepage_size_that_is_not_a_plain_name_writes_no_file() {
    let resources = Resources {
        hugepage_limits: vec![HugepageLimit {
            page_size: "../../memory.max".into(),
            limit: 1,
        }],
        ..Default::default()
    };

    assert!(files(&resources, Version::V1).is_empty());
}
