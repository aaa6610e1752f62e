//! The parts of the OCI runtime spec (config.json) that travel to the guest,
//! with the spec's own JSON names, so the host parses config.json straight
//! into them and the agent receives them unchanged.
//!
//! Source: opencontainers/runtime-spec v1.1, `config.md` (process, mounts)
//! and `config-linux.md` (seccomp). Unknown fields are ignored, as the spec
//! asks of runtimes; required fields are required by serde, so a missing one
//! is an error that names it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `process`: what runs in the container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// Whether the process gets a pseudo terminal.
    #[serde(default)]
    pub terminal: bool,
    /// The initial terminal size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_size: Option<ConsoleSize>,
    /// Who the process runs as.
    #[serde(default)]
    pub user: User,
    /// The command and its arguments; `args[0]` is looked up in `PATH`.
    #[serde(default)]
    pub args: Vec<String>,
    /// `KEY=value` pairs.
    #[serde(default)]
    pub env: Vec<String>,
    /// The working directory, absolute inside the container.
    pub cwd: String,
    /// The five capability sets, by name (`CAP_CHOWN`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// Resource limits set before exec.
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    /// Sets `PR_SET_NO_NEW_PRIVS`.
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Written to `/proc/self/oom_score_adj`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
}

/// `process.consoleSize`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSize {
    /// Rows.
    pub height: u16,
    /// Columns.
    pub width: u16,
}

/// `process.user`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// The user id.
    #[serde(default)]
    pub uid: u32,
    /// The group id.
    #[serde(default)]
    pub gid: u32,
    /// The file mode creation mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umask: Option<u32>,
    /// Supplementary groups.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// `process.capabilities`: each set lists capability names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The bounding set.
    #[serde(default)]
    pub bounding: Vec<String>,
    /// The effective set.
    #[serde(default)]
    pub effective: Vec<String>,
    /// The inheritable set.
    #[serde(default)]
    pub inheritable: Vec<String>,
    /// The permitted set.
    #[serde(default)]
    pub permitted: Vec<String>,
    /// The ambient set.
    #[serde(default)]
    pub ambient: Vec<String>,
}

/// One entry of `process.rlimits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The hard limit.
    pub hard: u64,
    /// The soft limit.
    pub soft: u64,
}

/// One entry of `linux.devices`: a node the container's `/dev` gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Where, in the container (`/dev/fuse`).
    pub path: String,
    /// `c` (or `u`), `b` or `p`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The major number (not for `p`).
    #[serde(default)]
    pub major: u32,
    /// The minor number (not for `p`).
    #[serde(default)]
    pub minor: u32,
    /// Permission bits; 0666 without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    /// The owner; root without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// The group; root without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// One entry of `mounts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the container.
    pub destination: String,
    /// The filesystem type (`bind`, `tmpfs`, `proc`, ...). Absent means bind
    /// when `options` say so.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The device, a path for binds, or a placeholder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// fstab-style options (`ro`, `nosuid`, `rbind`, `mode=755`, ...).
    #[serde(default)]
    pub options: Vec<String>,
}

impl Mount {
    /// Whether this is a bind mount: type `bind`, or a `bind`/`rbind` option.
    pub fn is_bind(&self) -> bool {
        self.kind.as_deref() == Some("bind")
            || self.options.iter().any(|o| o == "bind" || o == "rbind")
    }
}

/// `linux.seccomp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seccomp {
    /// The action for syscalls no rule matches (`SCMP_ACT_ERRNO`, ...).
    pub default_action: String,
    /// The errno of `SCMP_ACT_ERRNO`/`SCMP_ACT_TRACE` as default action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// `SCMP_ARCH_X86_64`, ...
    #[serde(default)]
    pub architectures: Vec<String>,
    /// `SECCOMP_FILTER_FLAG_*` names.
    #[serde(default)]
    pub flags: Vec<String>,
    /// The rules, in order.
    #[serde(default)]
    pub syscalls: Vec<SyscallRule>,
}

/// One entry of `linux.seccomp.syscalls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    /// Syscall names this rule applies to.
    pub names: Vec<String>,
    /// What happens when it matches.
    pub action: String,
    /// The errno of an `SCMP_ACT_ERRNO` action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// Conditions on the arguments; all must hold.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub args: Vec<SyscallArg>,
}

/// One argument condition of a [`SyscallRule`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallArg {
    /// The argument's index, 0 to 5.
    pub index: u32,
    /// The value compared against.
    pub value: u64,
    /// The second value (for `SCMP_CMP_MASKED_EQ`, `value` is the mask and
    /// this the value the masked argument must equal, as in libseccomp).
    #[serde(default)]
    pub value_two: u64,
    /// `SCMP_CMP_EQ`, `SCMP_CMP_NE`, `SCMP_CMP_LT`, `SCMP_CMP_LE`,
    /// `SCMP_CMP_GT`, `SCMP_CMP_GE`, `SCMP_CMP_MASKED_EQ`.
    pub op: String,
}

/// One line of `linux.uidMappings` or `linux.gidMappings`: `size` ids from
/// `container_id` in the container's user namespace are `host_id` on (in
/// the guest: the ids the host's files carry through virtio-fs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    /// The first id inside the user namespace.
    #[serde(rename = "containerID")]
    pub container_id: u32,
    /// The id it is outside.
    #[serde(rename = "hostID")]
    pub host_id: u32,
    /// How many ids.
    pub size: u32,
}

/// `linux.resources`, the parts a VM can honour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// `memory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryResources>,
    /// `cpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuResources>,
    /// `pids`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<PidsResources>,
    /// `blockIO`: applied on the host only (the VM's disk I/O is its
    /// virtio-fs server's).
    #[serde(default, rename = "blockIO", skip_serializing_if = "Option::is_none")]
    pub block_io: Option<BlockIo>,
    /// `hugepageLimits`: applied on the host only.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub hugepage_limits: Vec<HugepageLimit>,
}

/// `linux.resources.blockIO`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockIo {
    /// Relative weight, 10 to 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
    /// Per-device weights.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub weight_device: Vec<WeightDevice>,
    /// Read bytes per second, per device.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub throttle_read_bps_device: Vec<ThrottleDevice>,
    /// Write bytes per second, per device.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub throttle_write_bps_device: Vec<ThrottleDevice>,
    /// Read operations per second, per device.
    #[serde(
        default,
        rename = "throttleReadIOPSDevice",
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub throttle_read_iops_device: Vec<ThrottleDevice>,
    /// Write operations per second, per device.
    #[serde(
        default,
        rename = "throttleWriteIOPSDevice",
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub throttle_write_iops_device: Vec<ThrottleDevice>,
}

/// A `blockIO.weightDevice` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightDevice {
    /// The device's major number.
    pub major: i64,
    /// The device's minor number.
    pub minor: i64,
    /// Its weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
}

/// A `blockIO.throttle*Device` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottleDevice {
    /// The device's major number.
    pub major: i64,
    /// The device's minor number.
    pub minor: i64,
    /// Bytes or operations per second.
    pub rate: u64,
}

/// A `hugepageLimits` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HugepageLimit {
    /// The page size, as the kernel names it (`2MB`, `1GB`).
    pub page_size: String,
    /// Bytes of huge pages.
    pub limit: u64,
}

/// `linux.resources.memory`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryResources {
    /// Bytes; -1 or absent for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Bytes of memory+swap; -1 for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<i64>,
    /// Soft limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<i64>,
    /// Swap tendency, 0 to 100 (cgroup v1 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swappiness: Option<u64>,
}

/// `linux.resources.cpu`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuResources {
    /// Relative weight (cgroup v1 shares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
    /// Microseconds of CPU per period; -1 for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<i64>,
    /// The period in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
    /// CPUs the container may use (`0-3,5`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    /// Memory nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mems: Option<String>,
}

/// A cgroup v2 limit value: the number, or `max` for none (zero or less).
pub fn v2_limit(v: i64) -> String {
    if v <= 0 {
        "max".into()
    } else {
        v.to_string()
    }
}

/// runc's conversion of v1 cpu shares [2, 262144] to a v2 weight [1, 10000].
pub fn shares_to_weight(shares: u64) -> u64 {
    1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142
}

/// The v2 `cpu.max` value for a quota and period (zero: leave it), or
/// none when neither is given.
pub fn v2_cpu_max(quota: Option<i64>, period: Option<u64>) -> Option<String> {
    let quota = quota.filter(|q| *q != 0);
    let period = period.filter(|p| *p != 0);
    if quota.is_none() && period.is_none() {
        return None;
    }
    let mut value = quota.map_or("max".to_string(), v2_limit);
    if let Some(period) = period {
        value.push_str(&format!(" {period}"));
    }
    Some(value)
}

/// The number of CPUs in a cpuset list like `0-3,5`.
pub fn cpuset_size(list: &str) -> Option<u32> {
    if list.trim().is_empty() {
        return None;
    }
    let mut count = 0u32;
    for part in list.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                count = count.checked_add(b.checked_sub(a)?.checked_add(1)?)?;
            }
            None => {
                part.trim().parse::<u32>().ok()?;
                count = count.checked_add(1)?;
            }
        }
    }
    Some(count)
}

/// `linux.resources.pids`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsResources {
    /// The most tasks; 0 or -1 for no limit.
    pub limit: i64,
}

/// Reads `null` as an empty list (Go marshals nil slices as `null`).
fn null_as_empty<'de, D, T>(de: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(de)?.unwrap_or_default())
}

/// `KEY=value` environment list lookup.
pub fn env_get<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter().rev().find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// The `linux.sysctl` map type.
pub type Sysctl = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpuset_lists_are_counted() {
        assert_eq!(cpuset_size("0"), Some(1));
        assert_eq!(cpuset_size("0-1,3-4"), Some(4));
        assert_eq!(cpuset_size("3-1"), None);
        assert_eq!(cpuset_size("x"), None);
        assert_eq!(cpuset_size("0-4294967295"), None);
    }

    #[test]
    fn process_parses_spec_names() {
        let json = r#"{"terminal":true,"user":{"uid":1,"gid":2,"additionalGids":[3]},
            "args":["sh"],"cwd":"/","noNewPrivileges":true,"oomScoreAdj":5,
            "rlimits":[{"type":"RLIMIT_NOFILE","hard":10,"soft":5}],
            "apparmorProfile":"ignored"}"#;
        let p: Process = serde_json::from_str(json).unwrap();
        assert!(p.terminal && p.no_new_privileges);
        assert_eq!(p.user.additional_gids, [3]);
        assert_eq!(p.rlimits[0].kind, "RLIMIT_NOFILE");
        assert_eq!(p.oom_score_adj, Some(5));
    }

    #[test]
    fn process_without_cwd_names_the_field() {
        let err = serde_json::from_str::<Process>(r#"{"args":["sh"]}"#).unwrap_err();
        assert!(err.to_string().contains("cwd"), "{err}");
    }

    #[test]
    fn seccomp_parses_docker_style_rules() {
        let json = r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
            "architectures":["SCMP_ARCH_X86_64"],
            "syscalls":[{"names":["personality"],"action":"SCMP_ACT_ALLOW",
            "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}]}"#;
        let s: Seccomp = serde_json::from_str(json).unwrap();
        assert_eq!(s.syscalls[0].args[0].value, 8);
        assert_eq!(s.default_errno_ret, Some(1));
    }

    #[test]
    fn env_get_takes_the_last_definition() {
        let env = vec!["PATH=/a".to_string(), "X=1".into(), "PATH=/b".into()];
        assert_eq!(env_get(&env, "PATH"), Some("/b"));
        assert_eq!(env_get(&env, "Y"), None);
    }
}
