//! `husk features`: what this runtime implements, in the runtime-spec
//! `features.md` format (as `runc features` prints it).

use husk::oci::spec::{MOUNT_TYPES, NAMESPACES};

use super::Global;

/// No options.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// The features document.
pub fn features() -> serde_json::Value {
    let caps: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": husk::oci::state::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer",
                  "poststart", "poststop"],
        "mountOptions": ["async", "atime", "bind", "defaults", "dev", "diratime", "dirsync",
            "exec", "mand", "noatime", "nodev", "nodiratime", "noexec", "nomand",
            "norelatime", "nostrictatime", "nosuid", "private", "rbind", "relatime",
            "remount", "ro", "rprivate", "rshared", "rslave", "runbindable", "rw", "shared",
            "slave", "strictatime", "suid", "sync", "tmpcopyup", "unbindable"],
        "linux": {
            "namespaces": NAMESPACES,
            "capabilities": caps,
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG",
                    "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE",
                    "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86_64"]
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false}
        },
        "annotations": {
            "io.github.husk.version": env!("CARGO_PKG_VERSION"),
            "io.github.husk.mount-types": MOUNT_TYPES.join(",")
        }
    })
}

/// Prints it.
pub fn run(_global: &Global, _args: Args) -> anyhow::Result<i32> {
    println!("{}", serde_json::to_string_pretty(&features())?);
    Ok(0)
}
