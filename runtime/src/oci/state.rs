//! Container state: the status machine, the record kept in
//! `ROOT/ID/state.json`, and the runtime-spec state document that
//! `husk state` prints and hooks read on stdin.
//!
//! Source: runtime-spec `runtime.md` ("State", "Lifecycle"); runc's
//! `libcontainer/container.go` for the error texts engines match on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The spec version this runtime reports.
pub const OCI_VERSION: &str = "1.1.0";

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The runtime is setting it up.
    Creating,
    /// Set up, waiting for `start`.
    Created,
    /// The user process runs.
    Running,
    /// Frozen by `pause`.
    Paused,
    /// The user process ended (or the monitor is gone).
    Stopped,
}

impl Status {
    /// `start` is allowed.
    pub fn can_start(self) -> bool {
        self == Status::Created
    }

    /// `kill` is allowed.
    pub fn can_kill(self) -> bool {
        matches!(self, Status::Created | Status::Running | Status::Paused)
    }

    /// `delete` without `--force` is allowed.
    pub fn can_delete(self) -> bool {
        matches!(self, Status::Stopped | Status::Created | Status::Creating)
    }

    /// `pause` is allowed.
    pub fn can_pause(self) -> bool {
        self == Status::Running
    }

    /// `resume` is allowed.
    pub fn can_resume(self) -> bool {
        self == Status::Paused
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `husk` keeps about a container between commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// The container id.
    pub id: String,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The rootfs directory on the host.
    pub rootfs: PathBuf,
    /// The monitor's pid (0 until it runs).
    pub pid: i32,
    /// The monitor's start time in clock ticks since boot (guards against pid reuse).
    pub pid_start: u64,
    /// When it was created (RFC 3339).
    pub created: String,
    /// The spec's annotations.
    pub annotations: BTreeMap<String, String>,
    /// The user who created it.
    pub owner: String,
    /// Poststop hooks, run by `delete`.
    pub poststop: Vec<crate::oci::spec::Hook>,
    /// Host cgroup directories the monitor joined, removed by `delete`.
    #[serde(default)]
    pub host_cgroups: Vec<PathBuf>,
}

/// The runtime-spec state document.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The spec version.
    pub oci_version: String,
    /// The container id.
    pub id: String,
    /// The status.
    pub status: Status,
    /// The monitor's pid while it lives.
    #[serde(default)]
    pub pid: i32,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// The spec's annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Record {
    /// The state document for `status`.
    pub fn state(&self, status: Status) -> State {
        State {
            oci_version: OCI_VERSION.into(),
            id: self.id.clone(),
            status,
            pid: if status == Status::Stopped {
                0
            } else {
                self.pid
            },
            bundle: self.bundle.clone(),
            annotations: self.annotations.clone(),
        }
    }

    /// Reads `dir/state.json`.
    pub fn load(dir: &Path) -> std::io::Result<Record> {
        let text = std::fs::read(dir.join("state.json"))?;
        serde_json::from_slice(&text)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Writes `dir/state.json` atomically (temp file + rename).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join("state.json.tmp");
        let text = serde_json::to_vec_pretty(self)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, dir.join("state.json"))
    }
}

/// A process's start time (field 22 of `/proc/PID/stat`), if it runs.
pub fn process_start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

/// Whether the process that was `pid` with start time `start` still runs
/// (and is not a zombie).
pub fn process_alive(pid: i32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return false;
    };
    let state = after.split(' ').next().unwrap_or("");
    state != "Z" && state != "X" && process_start_time(pid) == Some(start)
}

/// Now, as RFC 3339 with nanoseconds in UTC (what runc prints).
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs() as i64, now.subsec_nanos())
}

/// Formats seconds since the epoch (UTC) as RFC 3339.
pub fn rfc3339(secs: i64, nanos: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The longest container id: its state directory is named by it (NAME_MAX).
pub const MAX_ID_LEN: usize = 255;

/// Checks a container id: runc allows `[\w+-.]+` and refuses path tricks;
/// the id must also fit a directory's name.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("container id must not be empty".into());
    }
    if id == "." || id == ".." || id.contains("..") {
        return Err(format!(
            "invalid container id {id:?}: must not contain \"..\""
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_+-.".contains(*c)))
    {
        return Err(format!(
            "invalid container id {id:?}: {c:?} is not allowed (use letters, digits, _ + - .)"
        ));
    }
    if id.len() > MAX_ID_LEN {
        return Err(format!(
            "invalid container id: {} characters, more than the {MAX_ID_LEN} a state \
             directory's name can hold",
            id.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_rules_follow_runc() {
        assert!(Status::Created.can_start() && !Status::Running.can_start());
        assert!(!Status::Stopped.can_kill());
        assert!(!Status::Running.can_delete() && Status::Stopped.can_delete());
        assert!(Status::Paused.can_resume() && !Status::Running.can_resume());
    }

    #[test]
    fn state_json_has_the_spec_names() {
        let record = Record {
            id: "c1".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            pid: 42,
            pid_start: 1,
            created: String::new(),
            annotations: [("k".to_string(), "v".to_string())].into(),
            owner: "root".into(),
            poststop: vec![],
            host_cgroups: vec![],
        };

        let json = serde_json::to_value(record.state(Status::Running)).unwrap();

        assert_eq!(
            json,
            serde_json::json!({"ociVersion": OCI_VERSION, "id": "c1", "status": "running",
                "pid": 42, "bundle": "/b", "annotations": {"k": "v"}})
        );
        assert_eq!(
            serde_json::to_value(record.state(Status::Stopped)).unwrap()["pid"],
            0
        );
    }

    #[test]
    fn ids_with_slashes_or_dots_are_refused() {
        assert!(check_id("abc-1_2.3+x").is_ok());
        for bad in ["", "a/b", "..", "a..b", "a b", "x\0"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(1_700_000_000, 5), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00.000000000Z");
    }

    #[test]
    fn our_own_process_is_alive() {
        let pid = std::process::id() as i32;
        let start = process_start_time(pid).unwrap();
        assert!(process_alive(pid, start));
        assert!(!process_alive(pid, start + 1));
    }
}
