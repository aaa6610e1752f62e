//! Who the container process is and what it may do: rlimits, the OOM score,
//! user and groups, the five capability sets, no_new_privs, and the
//! executable it becomes.
//!
//! Order follows runc's `standard_init_linux.go` / `finalizeNamespace`:
//! bounding set first (it needs CAP_SETPCAP), then the user switch with
//! keep-caps, then the other sets. Names come from capabilities(7),
//! getrlimit(2) and the runtime spec's `process` section.

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use caps::{CapSet, Capability, CapsHashSet};
use husk_protocol::oci::{env_get, Capabilities, Process, Rlimit};
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};

/// `PATH` when the spec's environment has none (runc's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Maps an OCI rlimit name to the resource.
pub fn rlimit_resource(name: &str) -> Option<Resource> {
    Some(match name {
        "RLIMIT_AS" => Resource::RLIMIT_AS,
        "RLIMIT_CORE" => Resource::RLIMIT_CORE,
        "RLIMIT_CPU" => Resource::RLIMIT_CPU,
        "RLIMIT_DATA" => Resource::RLIMIT_DATA,
        "RLIMIT_FSIZE" => Resource::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => Resource::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => Resource::RLIMIT_NICE,
        "RLIMIT_NOFILE" => Resource::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => Resource::RLIMIT_NPROC,
        "RLIMIT_RSS" => Resource::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => Resource::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => Resource::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => Resource::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => Resource::RLIMIT_STACK,
        _ => return None,
    })
}

/// Applies `process.rlimits`.
pub fn apply_rlimits(rlimits: &[Rlimit]) -> Result<()> {
    for (i, limit) in rlimits.iter().enumerate() {
        let Some(resource) = rlimit_resource(&limit.kind) else {
            bail!("process.rlimits[{i}]: unknown type {:?}", limit.kind);
        };
        setrlimit(resource, limit.soft, limit.hard)
            .with_context(|| format!("process.rlimits[{i}]: setting {}", limit.kind))?;
    }
    Ok(())
}

/// Writes `process.oomScoreAdj`.
pub fn apply_oom_score_adj(process: &Process) -> Result<()> {
    if let Some(adj) = process.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .context("writing /proc/self/oom_score_adj")?;
    }
    Ok(())
}

/// Parses one capability set, naming the set and entry that is wrong.
pub fn parse_caps(set: &str, names: &[String]) -> Result<CapsHashSet> {
    names
        .iter()
        .map(|name| {
            Capability::from_str(name).map_err(|_| {
                anyhow::anyhow!("process.capabilities.{set}: unknown capability {name:?}")
            })
        })
        .collect()
}

/// Drops the bounding set to `caps.bounding` (needs CAP_SETPCAP: call first).
pub fn apply_bounding(caps: &Capabilities) -> Result<()> {
    let keep = parse_caps("bounding", &caps.bounding)?;
    for cap in caps::all() {
        if !keep.contains(&cap) {
            // Capabilities newer than the guest kernel do not exist there.
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    Ok(())
}

/// Switches to the spec's user and groups, keeping the permitted set for
/// [`apply_capabilities`].
pub fn switch_user(process: &Process) -> Result<()> {
    let user = &process.user;
    let groups: Vec<Gid> = user
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    setgroups(&groups).context("setting process.user.additionalGids")?;
    nix::sys::prctl::set_keepcaps(true).context("prctl(PR_SET_KEEPCAPS)")?;
    setgid(Gid::from_raw(user.gid)).with_context(|| format!("setgid({})", user.gid))?;
    setuid(Uid::from_raw(user.uid)).with_context(|| format!("setuid({})", user.uid))?;
    nix::sys::prctl::set_keepcaps(false).context("prctl(PR_SET_KEEPCAPS, 0)")?;
    if let Some(mask) = user.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    Ok(())
}

/// Sets the effective, inheritable, permitted and ambient sets.
pub fn apply_capabilities(caps: &Capabilities) -> Result<()> {
    let effective = parse_caps("effective", &caps.effective)?;
    let inheritable = parse_caps("inheritable", &caps.inheritable)?;
    let permitted = parse_caps("permitted", &caps.permitted)?;
    let ambient = parse_caps("ambient", &caps.ambient)?;
    caps::set(None, CapSet::Effective, &effective).context("setting the effective capabilities")?;
    caps::set(None, CapSet::Inheritable, &inheritable)
        .context("setting the inheritable capabilities")?;
    caps::set(None, CapSet::Permitted, &permitted).context("setting the permitted capabilities")?;
    caps::clear(None, CapSet::Ambient).context("clearing the ambient capabilities")?;
    for cap in ambient {
        // The kernel refuses ambient caps not in permitted and inheritable;
        // runc ignores those too.
        let _ = caps::raise(None, CapSet::Ambient, cap);
    }
    Ok(())
}

/// Finds `args[0]` like execvp would, in the container's root (call after
/// the pivot and chdir). Fails like runc: `exec: "x": executable file not found in $PATH`.
pub fn find_executable(process: &Process) -> Result<PathBuf> {
    let Some(program) = process.args.first() else {
        bail!("process.args must not be empty");
    };
    if program.contains('/') {
        let path = Path::new(program);
        check_executable(path).with_context(|| format!("exec: {program:?}"))?;
        return Ok(path.to_path_buf());
    }
    let search = env_get(&process.env, "PATH").unwrap_or(DEFAULT_PATH);
    for dir in search.split(':') {
        let candidate = Path::new(if dir.is_empty() { "." } else { dir }).join(program);
        if check_executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    bail!("exec: {program:?}: executable file not found in $PATH")
}

fn check_executable(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).context("stat")?;
    if meta.is_dir() {
        bail!("is a directory");
    }
    if meta.permissions().mode() & 0o111 == 0 {
        bail!("permission denied");
    }
    Ok(())
}

/// Replaces the process image. Returns only on failure.
pub fn exec(path: &Path, process: &Process) -> anyhow::Error {
    let to_c = |s: &str| CString::new(s).unwrap_or_default();
    let path_c = to_c(&path.to_string_lossy());
    let args: Vec<CString> = process.args.iter().map(|a| to_c(a)).collect();
    let env: Vec<CString> = process.env.iter().map(|e| to_c(e)).collect();
    match nix::unistd::execve(&path_c, &args, &env) {
        Err(e) => anyhow::anyhow!("exec {}: {e}", path.display()),
        Ok(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_follow_the_spec() {
        let set = parse_caps("bounding", &["CAP_CHOWN".into(), "CAP_NET_RAW".into()]).unwrap();
        assert!(set.contains(&Capability::CAP_CHOWN) && set.len() == 2);
    }

    #[test]
    fn an_unknown_capability_names_its_set() {
        let err = parse_caps("ambient", &["CAP_FLY".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "process.capabilities.ambient: unknown capability \"CAP_FLY\""
        );
    }

    #[test]
    fn every_spec_rlimit_is_known() {
        for name in [
            "RLIMIT_NOFILE",
            "RLIMIT_NPROC",
            "RLIMIT_CORE",
            "RLIMIT_RTTIME",
        ] {
            assert!(rlimit_resource(name).is_some(), "{name}");
        }
        assert!(rlimit_resource("RLIMIT_FOO").is_none());
    }

    #[test]
    fn executable_lookup_uses_the_spec_path() {
        let process = Process {
            args: vec!["sh".into()],
            env: vec!["PATH=/nonexistent:/bin".into()],
            cwd: "/".into(),
            ..Default::default()
        };
        assert_eq!(find_executable(&process).unwrap(), Path::new("/bin/sh"));
    }

    #[test]
    fn a_missing_executable_reads_like_runc() {
        let process = Process {
            args: vec!["no-such-tool".into()],
            cwd: "/".into(),
            ..Default::default()
        };
        let err = find_executable(&process).unwrap_err();
        assert_eq!(
            err.to_string(),
            "exec: \"no-such-tool\": executable file not found in $PATH"
        );
    }
}
