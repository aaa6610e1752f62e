//! config.json: the OCI runtime spec of a bundle, read and checked before
//! anything is created, so a bad bundle costs nothing and leaves nothing.
//!
//! Source: opencontainers/runtime-spec v1.1 `config.md`, `config-linux.md`.
//! The types the guest needs live in [`husk_protocol::oci`]; this module
//! adds what only the host reads (root, hooks, namespaces, cgroups path).
//! Every error names the field (by its JSON path) or the path on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use husk_protocol::oci::{Device, IdMapping, Mount, Process, Resources, Seccomp, Sysctl};
use serde::{Deserialize, Serialize};

/// Spec versions this runtime implements (runc 1.1 accepts the same).
pub const SUPPORTED_MAJOR: u64 = 1;

/// Mount types the guest can make.
pub const MOUNT_TYPES: &[&str] = &[
    "bind", "tmpfs", "proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "none", "shm",
    "overlay",
];

/// Namespaces the guest can make (`user` and `time` are not supported).
pub const NAMESPACES: &[&str] = &["pid", "mount", "uts", "ipc", "network", "cgroup"];

/// The values of `linux.rootfsPropagation` (runc's table).
pub const PROPAGATIONS: &[&str] = &[
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
    "unbindable",
    "runbindable",
];

/// A bundle's config.json.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// The spec version the bundle was written for.
    pub oci_version: String,
    /// The root filesystem.
    pub root: Option<Root>,
    /// The container's process.
    pub process: Option<Process>,
    /// The hostname.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The NIS domain name.
    #[serde(default)]
    pub domainname: Option<String>,
    /// Mounts, in order.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Lifecycle hooks.
    #[serde(default)]
    pub hooks: Option<Hooks>,
    /// Free-form metadata.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Linux specifics.
    #[serde(default)]
    pub linux: Option<Linux>,
}

/// `root`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Root {
    /// The rootfs, absolute or relative to the bundle.
    pub path: String,
    /// Whether the rootfs is read-only in the container.
    #[serde(default)]
    pub readonly: bool,
}

/// `hooks`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    /// Deprecated by the spec, still used by docker (libnetwork-setkey).
    #[serde(default)]
    pub prestart: Vec<Hook>,
    /// After the environment is created, before pivot.
    #[serde(default)]
    pub create_runtime: Vec<Hook>,
    /// In the container's namespaces, after create.
    #[serde(default)]
    pub create_container: Vec<Hook>,
    /// Before the user process execs.
    #[serde(default)]
    pub start_container: Vec<Hook>,
    /// After the user process started.
    #[serde(default)]
    pub poststart: Vec<Hook>,
    /// After the container is deleted.
    #[serde(default)]
    pub poststop: Vec<Hook>,
}

/// One hook.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    /// Absolute path of the executable.
    pub path: String,
    /// Its argv, including argv[0].
    #[serde(default)]
    pub args: Vec<String>,
    /// Its environment.
    #[serde(default)]
    pub env: Vec<String>,
    /// Seconds before it is killed.
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// `linux`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    /// Namespaces to create or join.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// Resource limits.
    #[serde(default)]
    pub resources: Option<Resources>,
    /// The cgroup of the container on the host.
    #[serde(default)]
    pub cgroups_path: Option<String>,
    /// Paths masked in the container.
    #[serde(default)]
    pub masked_paths: Vec<String>,
    /// Paths made read-only in the container.
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    /// Kernel parameters.
    #[serde(default)]
    pub sysctl: Sysctl,
    /// The seccomp profile.
    #[serde(default)]
    pub seccomp: Option<Seccomp>,
    /// Device nodes made in the container's `/dev`.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// The propagation of the container's `/`.
    #[serde(default)]
    pub rootfs_propagation: Option<String>,
    /// The user namespace's uid map.
    #[serde(default)]
    pub uid_mappings: Vec<IdMapping>,
    /// The user namespace's gid map.
    #[serde(default)]
    pub gid_mappings: Vec<IdMapping>,
}

/// One entry of `linux.namespaces`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Namespace {
    /// `pid`, `network`, `mount`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// An existing namespace to join (a host path).
    #[serde(default)]
    pub path: Option<String>,
}

/// A bundle that cannot be run, and why.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// config.json could not be read.
    #[error("reading {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// config.json is larger than [`MAX_SPEC_BYTES`].
    #[error("{path}: larger than the {} MiB a spec may have", MAX_SPEC_BYTES >> 20)]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// config.json is not valid JSON or a field has the wrong type or is missing.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde's message with the field path in front.
        message: String,
    },
    /// A field holds a value this runtime cannot honour.
    #[error("{path}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The JSON path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// A checked bundle: the spec plus resolved paths.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The bundle directory, absolute.
    pub dir: PathBuf,
    /// The rootfs directory, absolute.
    pub rootfs: PathBuf,
    /// The spec.
    pub spec: Spec,
}

/// Where `path` really is, when it names a place in the bundle `dir` but a
/// symlink on the way leads out of it: a bundle's own paths stay in the
/// bundle (a path given outside it, such as podman's rootfs or a volume,
/// is the engine's to choose).
fn escapes_through_symlink(dir: &Path, path: &Path) -> Option<PathBuf> {
    let lexical: PathBuf = path.components().fold(PathBuf::new(), |mut p, c| {
        match c {
            std::path::Component::ParentDir => {
                p.pop();
            }
            std::path::Component::CurDir => {}
            other => p.push(other),
        }
        p
    });
    if !lexical.starts_with(dir) {
        return None;
    }
    let real_dir = dir.canonicalize().ok()?;
    let real = path.canonicalize().ok()?;
    (!real.starts_with(&real_dir)).then_some(real)
}

/// The spec a container captured at create, in its state directory: what
/// the monitor, `start` and `exec` read, as runc reads its state's copy, so
/// a config.json rewritten after create changes nothing.
pub const CAPTURED_SPEC: &str = "config.json";

impl Bundle {
    /// Reads `dir/config.json` and checks everything the runtime relies on,
    /// the rootfs and bind sources on the host included.
    pub fn load(dir: &Path) -> Result<Bundle, SpecError> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let path = dir.join("config.json");
        let bundle = Bundle::read(&dir, &path)?;
        let invalid = |field: String, message: String| SpecError::Invalid {
            path: path.clone(),
            field,
            message,
        };
        if !bundle.rootfs.is_dir() {
            return Err(invalid(
                "root.path".into(),
                format!(
                    "rootfs {} does not exist or is not a directory",
                    bundle.rootfs.display()
                ),
            ));
        }
        if let Some(target) = escapes_through_symlink(&dir, &bundle.rootfs) {
            return Err(invalid(
                "root.path".into(),
                format!(
                    "rootfs {} is in the bundle but a symlink takes it outside, to {}",
                    bundle.rootfs.display(),
                    target.display()
                ),
            ));
        }
        for (i, m) in bundle.spec.mounts.iter().enumerate() {
            if m.is_bind() {
                let source = dir.join(m.source.as_deref().unwrap_or_default());
                if std::fs::metadata(&source).is_err() {
                    return Err(invalid(
                        format!("mounts[{i}].source"),
                        format!("bind source {} does not exist", source.display()),
                    ));
                }
                if let Some(target) = escapes_through_symlink(&dir, &source) {
                    return Err(invalid(
                        format!("mounts[{i}].source"),
                        format!(
                            "bind source {} is in the bundle but a symlink takes it outside, to {}",
                            source.display(),
                            target.display()
                        ),
                    ));
                }
            }
        }
        Ok(bundle)
    }

    /// The bundle in `dir` with the spec a container captured at create in
    /// its state directory `state_dir`. The host paths are not looked at
    /// again: they are in the VM's share since create.
    pub fn load_captured(dir: &Path, state_dir: &Path) -> Result<Bundle, SpecError> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        Bundle::read(&dir, &state_dir.join(CAPTURED_SPEC))
    }

    /// Reads and checks the spec at `path` for the bundle directory `dir`
    /// (absolute; the spec's relative paths resolve there).
    fn read(dir: &Path, path: &Path) -> Result<Bundle, SpecError> {
        let text = read_bounded(path)?;
        let spec = parse(&text).map_err(|message| SpecError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        check(&spec).map_err(|(field, message)| SpecError::Invalid {
            path: path.to_path_buf(),
            field,
            message,
        })?;
        let rootfs = dir.join(&spec.root.as_ref().expect("checked").path);
        Ok(Bundle {
            dir: dir.to_path_buf(),
            rootfs,
            spec,
        })
    }

    /// Writes the spec into the state directory `state_dir` as the
    /// container's [`CAPTURED_SPEC`].
    pub fn capture(&self, state_dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_vec(&self.spec).map_err(std::io::Error::other)?;
        std::fs::write(state_dir.join(CAPTURED_SPEC), text)
    }

    /// The process (checked to be there).
    pub fn process(&self) -> &Process {
        self.spec.process.as_ref().expect("checked by load")
    }

    /// `linux`, or an empty one.
    pub fn linux(&self) -> Linux {
        self.spec.linux.clone().unwrap_or_default()
    }
}

/// The largest config.json husk reads. Engines write a few KiB; a bigger
/// file is a mistake (or an attack on the runtime's memory), refused before
/// it is read.
pub const MAX_SPEC_BYTES: u64 = 8 << 20;

/// Reads the spec at `path`, at most [`MAX_SPEC_BYTES`] of it.
fn read_bounded(path: &Path) -> Result<Vec<u8>, SpecError> {
    use std::io::Read;
    let read_error = |source| SpecError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut text = Vec::new();
    file.take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_SPEC_BYTES {
        return Err(SpecError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(text)
}

/// Parses config.json text; errors carry the JSON path of the bad field.
pub fn parse(text: &[u8]) -> Result<Spec, String> {
    let spec = parse_fields(text)?;
    // serde reads a struct from an array of its fields in order, which
    // would make `"memory": [1]` a limit of one byte; the spec's objects
    // must be objects.
    let raw: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("invalid JSON: {e}"))?;
    let read = serde_json::to_value(&spec).map_err(|e| e.to_string())?;
    match array_for_object(&raw, &read, String::new()) {
        Some(field) => Err(format!(
            "{field}: invalid type: sequence, expected an object"
        )),
        None => Ok(spec),
    }
}

/// The first path where `raw` has an array and the spec read from it an
/// object.
fn array_for_object(
    raw: &serde_json::Value,
    read: &serde_json::Value,
    path: String,
) -> Option<String> {
    use serde_json::Value;
    let child = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match (raw, read) {
        (Value::Array(_), Value::Object(_)) => {
            Some(if path.is_empty() { ".".into() } else { path })
        }
        (Value::Object(raw), Value::Object(read)) => read
            .iter()
            .filter_map(|(key, value)| Some((key, raw.get(key)?, value)))
            .find_map(|(key, raw, read)| array_for_object(raw, read, child(key))),
        (Value::Array(raw), Value::Array(read)) => raw
            .iter()
            .zip(read)
            .enumerate()
            .find_map(|(i, (raw, read))| array_for_object(raw, read, format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Deserializes the spec's fields, naming the path of a bad one.
fn parse_fields(text: &[u8]) -> Result<Spec, String> {
    let de = &mut serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let syntax = matches!(
            inner.classify(),
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
        );
        if field == "." || syntax {
            format!("invalid JSON: {inner}")
        } else {
            format!("{field}: {inner}")
        }
    })
}

/// Checks the fields a runtime must refuse; returns (field, message).
pub fn check(spec: &Spec) -> Result<(), (String, String)> {
    let version_major = spec
        .oci_version
        .split('.')
        .next()
        .and_then(|m| m.parse::<u64>().ok());
    if version_major != Some(SUPPORTED_MAJOR) {
        return Err((
            "ociVersion".into(),
            format!(
                "unsupported version {:?} (this runtime implements {SUPPORTED_MAJOR}.x)",
                spec.oci_version
            ),
        ));
    }
    let Some(root) = &spec.root else {
        return Err(("root".into(), "missing (the rootfs is required)".into()));
    };
    if root.path.is_empty() {
        return Err(("root.path".into(), "must not be empty".into()));
    }
    let Some(process) = &spec.process else {
        return Err((
            "process".into(),
            "missing (required to create a container)".into(),
        ));
    };
    if process.args.is_empty() {
        return Err(("process.args".into(), "must not be empty".into()));
    }
    if !process.cwd.starts_with('/') {
        return Err((
            "process.cwd".into(),
            format!("{:?} must be an absolute path", process.cwd),
        ));
    }
    for (i, m) in spec.mounts.iter().enumerate() {
        if !m.destination.starts_with('/') {
            return Err((
                format!("mounts[{i}].destination"),
                format!("{:?} must be an absolute path", m.destination),
            ));
        }
        if Path::new(&m.destination)
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err((
                format!("mounts[{i}].destination"),
                format!(
                    "{:?} has a \"..\" component: a destination names a path in the \
                     container without leaving it",
                    m.destination
                ),
            ));
        }
        let kind = m
            .kind
            .as_deref()
            .unwrap_or(if m.is_bind() { "bind" } else { "" });
        if !m.is_bind() && !MOUNT_TYPES.contains(&kind) {
            return Err((
                format!("mounts[{i}].type"),
                format!(
                    "unknown mount type {kind:?} (supported: {})",
                    MOUNT_TYPES.join(", ")
                ),
            ));
        }
    }
    if let Some(linux) = &spec.linux {
        for (i, device) in linux.devices.iter().enumerate() {
            check_device(device)
                .map_err(|(field, message)| (format!("linux.devices[{i}].{field}"), message))?;
        }
        if let Some(propagation) = &linux.rootfs_propagation {
            if !PROPAGATIONS.contains(&propagation.as_str()) {
                return Err((
                    "linux.rootfsPropagation".into(),
                    format!(
                        "unknown propagation {propagation:?} (one of {})",
                        PROPAGATIONS.join(", ")
                    ),
                ));
            }
        }
        for (i, ns) in linux.namespaces.iter().enumerate() {
            if !NAMESPACES.contains(&ns.kind.as_str()) && ns.kind != "user" && ns.kind != "time" {
                return Err((
                    format!("linux.namespaces[{i}].type"),
                    format!("unknown namespace type {:?}", ns.kind),
                ));
            }
            if ns.kind == "time" {
                return Err((
                    format!("linux.namespaces[{i}].type"),
                    "time namespaces are not supported by husk yet".into(),
                ));
            }
        }
        check_id_mappings(linux)?;
    }
    Ok(())
}

/// The most lines a user namespace's uid or gid map takes (the kernel's).
pub const MAX_ID_MAPPINGS: usize = 340;

/// A user namespace needs both maps, and maps need a user namespace (as
/// runc says); each line maps at least one id and stays within 32 bits,
/// and no two lines overlap inside the namespace.
fn check_id_mappings(linux: &Linux) -> Result<(), (String, String)> {
    let user = linux.namespaces.iter().any(|ns| ns.kind == "user");
    for (field, maps) in [
        ("linux.uidMappings", &linux.uid_mappings),
        ("linux.gidMappings", &linux.gid_mappings),
    ] {
        if user && maps.is_empty() {
            return Err((
                field.into(),
                "a user namespace needs a mapping (none given)".into(),
            ));
        }
        if !user && !maps.is_empty() {
            return Err((
                field.into(),
                "mappings are given but linux.namespaces has no user namespace".into(),
            ));
        }
        if maps.len() > MAX_ID_MAPPINGS {
            return Err((
                field.into(),
                format!(
                    "{} lines, more than the kernel's {MAX_ID_MAPPINGS}",
                    maps.len()
                ),
            ));
        }
        for (i, map) in maps.iter().enumerate() {
            let end = |start: u32| u64::from(start) + u64::from(map.size);
            if map.size == 0 {
                return Err((format!("{field}[{i}].size"), "must be at least 1".into()));
            }
            if end(map.container_id) > 1 << 32 || end(map.host_id) > 1 << 32 {
                return Err((
                    format!("{field}[{i}]"),
                    "the range passes the largest id (4294967295)".into(),
                ));
            }
            // The kernel refuses lines that overlap inside or outside.
            let overlap = |a: u32, b: u32, b_size: u32| {
                u64::from(a) < u64::from(b) + u64::from(b_size) && u64::from(b) < end(a)
            };
            let earlier = &maps[..i];
            let inside = earlier
                .iter()
                .any(|o| overlap(map.container_id, o.container_id, o.size));
            let outside = earlier
                .iter()
                .any(|o| overlap(map.host_id, o.host_id, o.size));
            for (key, hit) in [("containerID", inside), ("hostID", outside)] {
                if hit {
                    return Err((
                        format!("{field}[{i}].{key}"),
                        "overlaps an earlier line".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks one `linux.devices` entry; returns (field, message).
fn check_device(device: &Device) -> Result<(), (String, String)> {
    let path = Path::new(&device.path);
    if !path.is_absolute()
        || path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err((
            "path".into(),
            format!("{:?} must be an absolute path without \"..\"", device.path),
        ));
    }
    if !["c", "u", "b", "p"].contains(&device.kind.as_str()) {
        return Err((
            "type".into(),
            format!("{:?} is not a device type (c, u, b or p)", device.kind),
        ));
    }
    if device.file_mode.is_some_and(|mode| mode > 0o7777) {
        return Err((
            "fileMode".into(),
            format!(
                "{:o} has bits beyond the permission bits",
                device.file_mode.unwrap()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},
        "process":{"args":["sh"],"cwd":"/"}}"#;

    fn with(patch: impl FnOnce(&mut serde_json::Value)) -> Result<(), (String, String)> {
        let mut v: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
        patch(&mut v);
        check(&parse(v.to_string().as_bytes()).map_err(|e| ("parse".to_string(), e))?)
    }

    #[test]
    fn a_minimal_spec_passes() {
        assert_eq!(with(|_| {}), Ok(()));
    }

    #[test]
    fn invalid_json_says_so() {
        let err = parse(b"{\"ociVersion\": ").unwrap_err();
        assert!(err.starts_with("invalid JSON"), "{err}");
    }

    #[test]
    fn a_wrong_type_names_the_field_path() {
        let err =
            parse(br#"{"ociVersion":"1.0.0","process":{"args":"sh","cwd":"/"}}"#).unwrap_err();
        assert!(err.starts_with("process.args:"), "{err}");
    }

    #[test]
    fn a_missing_required_field_is_named() {
        let err = parse(br#"{"ociVersion":"1.0.0","process":{"args":["sh"]}}"#).unwrap_err();
        assert!(err.contains("missing field `cwd`"), "{err}");
    }

    #[test]
    fn an_unsupported_version_is_refused() {
        let err = with(|v| v["ociVersion"] = "2.0.0".into()).unwrap_err();
        assert_eq!(err.0, "ociVersion");
    }

    #[test]
    fn an_unknown_mount_type_names_the_mount() {
        let err = with(|v| {
            v["mounts"] = serde_json::json!([{"destination":"/x","type":"ext9","source":"/dev/x"}])
        })
        .unwrap_err();
        assert_eq!(err.0, "mounts[0].type");
        assert!(err.1.contains("ext9"));
    }

    #[test]
    fn a_user_namespace_needs_its_mappings_and_mappings_a_user_namespace() {
        let user = |maps: serde_json::Value| {
            with(|v| {
                v["linux"] = serde_json::json!({"namespaces": [{"type": "user"}]});
                for (key, value) in maps.as_object().unwrap() {
                    v["linux"][key] = value.clone();
                }
            })
        };
        let map = |c: u32, h: u32, n: u32| serde_json::json!([{"containerID": c, "hostID": h, "size": n}]);

        assert_eq!(
            user(serde_json::json!({})).unwrap_err().0,
            "linux.uidMappings"
        );
        assert_eq!(
            user(serde_json::json!({"uidMappings": map(0, 1000, 10)}))
                .unwrap_err()
                .0,
            "linux.gidMappings"
        );
        user(serde_json::json!({"uidMappings": map(0, 1000, 10), "gidMappings": map(0, 1000, 10)}))
            .unwrap();
        let err =
            with(|v| v["linux"] = serde_json::json!({"uidMappings": map(0, 1, 1)})).unwrap_err();
        assert_eq!(err.0, "linux.uidMappings");
        assert!(err.1.contains("no user namespace"), "{}", err.1);
        let err =
            user(serde_json::json!({"uidMappings": map(0, 1, 0), "gidMappings": map(0, 1, 1)}))
                .unwrap_err();
        assert_eq!(err.0, "linux.uidMappings[0].size");
        let err = user(serde_json::json!({
            "uidMappings": map(0, u32::MAX, 2), "gidMappings": map(0, 1, 1)}))
        .unwrap_err();
        assert_eq!(err.0, "linux.uidMappings[0]");
        let two = serde_json::json!([
            {"containerID": 0, "hostID": 1000, "size": 10},
            {"containerID": 20, "hostID": 1005, "size": 10}
        ]);
        let err =
            user(serde_json::json!({"uidMappings": map(0, 1, 1), "gidMappings": two})).unwrap_err();
        assert_eq!(err.0, "linux.gidMappings[1].hostID");
    }

    #[test]
    fn a_time_namespace_is_refused_clearly() {
        let err =
            with(|v| v["linux"] = serde_json::json!({"namespaces":[{"type":"time"}]})).unwrap_err();
        assert_eq!(err.0, "linux.namespaces[0].type");
    }

    #[test]
    fn a_relative_cwd_is_refused() {
        let err = with(|v| v["process"]["cwd"] = "tmp".into()).unwrap_err();
        assert_eq!(err.0, "process.cwd");
    }

    #[test]
    fn a_captured_spec_loads_as_the_bundle_did_whatever_the_bundle_becomes() {
        let bundle_dir = tempfile::tempdir().unwrap();
        let state_dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(bundle_dir.path().join("rootfs")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
        v["hostname"] = "h".into();
        v["hooks"] = serde_json::json!({"poststart": [{"path": "/bin/true", "timeout": 3}]});
        v["linux"] = serde_json::json!({
            "namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}],
            "resources": {"memory": {"limit": 1048576}, "cpu": {"cpus": "0-1"}},
            "maskedPaths": ["/proc/kcore"], "sysctl": {"net.ipv4.ip_forward": "1"}
        });
        std::fs::write(bundle_dir.path().join("config.json"), v.to_string()).unwrap();
        let bundle = Bundle::load(bundle_dir.path()).unwrap();

        bundle.capture(state_dir.path()).unwrap();
        std::fs::write(bundle_dir.path().join("config.json"), "not json").unwrap();
        std::fs::remove_dir(bundle_dir.path().join("rootfs")).unwrap();
        let captured = Bundle::load_captured(bundle_dir.path(), state_dir.path()).unwrap();

        assert_eq!(
            serde_json::to_value(&captured.spec).unwrap(),
            serde_json::to_value(&bundle.spec).unwrap()
        );
        assert_eq!(captured.rootfs, bundle.rootfs);
    }

    #[test]
    fn a_missing_rootfs_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), MINIMAL).unwrap();

        let err = Bundle::load(dir.path()).unwrap_err().to_string();

        assert!(err.contains("root.path") && err.contains("rootfs"), "{err}");
    }

    #[test]
    fn a_rootfs_or_bind_source_that_a_symlink_takes_out_of_the_bundle_is_named() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("rootfs")).unwrap();
        std::fs::write(dir.path().join("config.json"), MINIMAL).unwrap();

        let err = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("root.path") && err.contains("symlink"),
            "{err}"
        );
        assert!(err.contains(&outside.path().display().to_string()), "{err}");

        // A symlink that stays in the bundle is fine; one in a bind source
        // that leaves it is named.
        std::fs::remove_file(dir.path().join("rootfs")).unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", dir.path().join("rootfs")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("data")).unwrap();
        let mut spec: serde_json::Value = serde_json::from_str(MINIMAL).unwrap();
        spec["mounts"] = serde_json::json!([
            {"destination": "/etc", "type": "bind", "source": "real", "options": ["rbind"]},
            {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind"]}
        ]);
        std::fs::write(dir.path().join("config.json"), spec.to_string()).unwrap();

        let err = Bundle::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("mounts[1].source") && err.contains("symlink"),
            "{err}"
        );
        // An absolute source outside the bundle (a volume) is the engine's.
        spec["mounts"][1]["source"] = outside.path().display().to_string().into();
        std::fs::write(dir.path().join("config.json"), spec.to_string()).unwrap();
        Bundle::load(dir.path()).unwrap();
    }
}
