//! The malformed-bundle corpus: config.json files that are wrong in every
//! way an engine, a user or an attacker can make them (each field of the
//! wrong type, numbers out of range, deep nesting, invalid UTF-8, a huge
//! file, destinations that climb out). Every one gives one error naming the
//! field or the file, never a panic or an unbounded read. The CLI suite runs
//! a sample of them through `husk create` for the exit code and the state
//! left (none).

use serde_json::{json, Value};

use super::spec::{Bundle, SpecError, MAX_SPEC_BYTES};

/// A spec that uses every field husk reads.
fn full_spec() -> Value {
    json!({
        "ociVersion": "1.1.0",
        "process": {
            "terminal": false,
            "user": {"uid": 1, "gid": 2, "umask": 18, "additionalGids": [3]},
            "args": ["sh", "-c", "true"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                "permitted": ["CAP_KILL"], "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
            "oomScoreAdj": 5,
            "consoleSize": {"height": 24, "width": 80}
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "h",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "rootfs", "options": ["rbind", "ro"]}
        ],
        "hooks": {
            "prestart": [{"path": "/bin/true", "args": ["true"], "env": ["A=1"], "timeout": 3}],
            "poststop": [{"path": "/bin/true"}]
        },
        "annotations": {"a": "b"},
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}, {"type": "user"}],
            "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 10}],
            "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 10}],
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": {"limit": 1_048_576_000_i64, "reservation": 1024, "swap": 2_097_152_000_i64,
                           "swappiness": 10},
                "cpu": {"shares": 1024, "quota": 50000, "period": 100_000, "cpus": "0", "mems": "0"},
                "pids": {"limit": 100},
                "blockIO": {"weight": 10, "weightDevice": [{"major": 8, "minor": 0, "weight": 20}],
                            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1}]},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 2_097_152}]
            },
            "cgroupsPath": "/husk/corpus",
            "rootfsPropagation": "rslave",
            "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                         "fileMode": 438, "uid": 0, "gid": 0}],
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"],
            "sysctl": {"net.ipv4.ip_forward": "1"},
            "seccomp": {
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["reboot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                              "args": [{"index": 0, "value": 1, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]}]
            }
        }
    })
}

/// A bundle directory with a rootfs and `config.json` holding `text`.
fn bundle_with(text: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rootfs")).unwrap();
    std::fs::write(dir.path().join("config.json"), text).unwrap();
    dir
}

fn load(text: &[u8]) -> Result<Bundle, SpecError> {
    Bundle::load(bundle_with(text).path())
}

/// One node of a spec: its JSON path as serde_path_to_error writes it
/// (`process.args[0]`), its JSON pointer (`/process/args/0`), its value.
#[derive(Debug, Clone)]
struct Node {
    path: String,
    pointer: String,
    value: Value,
}

/// Every node under `parent` (the root: `None`).
fn nodes(value: &Value, parent: Option<&Node>, out: &mut Vec<Node>) {
    let (path, pointer) = parent.map_or(("", ""), |p| (p.path.as_str(), p.pointer.as_str()));
    let children: Vec<(String, String, &Value)> = match value {
        Value::Object(map) => map
            .iter()
            .map(|(key, child)| {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                (child_path, format!("{pointer}/{key}"), child)
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, child)| (format!("{path}[{i}]"), format!("{pointer}/{i}"), child))
            .collect(),
        _ => Vec::new(),
    };
    for (path, pointer, child) in children {
        let node = Node {
            path,
            pointer,
            value: child.clone(),
        };
        nodes(child, Some(&node), out);
        out.push(node);
    }
}

/// A value of another JSON type than `value`.
fn wrong_type(value: &Value) -> Value {
    match value {
        Value::String(_) => json!(7),
        Value::Number(_) => json!("seven"),
        Value::Bool(_) => json!("yes"),
        Value::Array(_) => json!({"x": 1}),
        Value::Object(_) => json!([1]),
        Value::Null => json!(true),
    }
}

/// The JSON pointer of a path (`process.args[0]` is `/process/args/0`).
fn pointer(path: &str) -> String {
    if path.is_empty() {
        return String::new();
    }
    path.replace('[', ".")
        .replace(']', "")
        .split('.')
        .fold(String::new(), |acc, part| acc + "/" + part)
}

/// `spec` with the node at `path` replaced by `with`.
fn replaced(spec: &Value, path: &str, with: Value) -> Value {
    let mut spec = spec.clone();
    *spec
        .pointer_mut(&pointer(path))
        .expect("a node of the spec") = with;
    spec
}

/// The nodes of `spec` husk reads (those its parsed spec writes back).
fn read_nodes(spec: &Value) -> Vec<Node> {
    let parsed = load(spec.to_string().as_bytes()).expect("the full spec loads");
    let written = serde_json::to_value(&parsed.spec).unwrap();
    let mut read = Vec::new();
    nodes(&written, None, &mut read);
    let mut all = Vec::new();
    nodes(spec, None, &mut all);
    all.into_iter()
        .filter(|node| read.iter().any(|r| r.pointer == node.pointer))
        .collect()
}

#[test]
fn a_field_of_the_wrong_type_is_named_at_every_level() {
    let spec = full_spec();
    let read = read_nodes(&spec);
    assert!(read.len() > 80, "only {} fields read", read.len());
    let mut unnamed = Vec::new();

    for node in &read {
        let mut bad = spec.clone();
        *bad.pointer_mut(&node.pointer).unwrap() = wrong_type(&node.value);
        let path = &node.path;
        match load(bad.to_string().as_bytes()) {
            // An object given an array names the field inside it it fails.
            Err(SpecError::Parse { message, .. })
                if message.starts_with(&format!("{path}: "))
                    || message.starts_with(&format!("{path}[")) => {}
            Err(SpecError::Invalid { field, .. }) if field == *path => {}
            other => unnamed.push(format!("{path}: {other:?}")),
        }
    }

    assert!(unnamed.is_empty(), "{unnamed:#?}");
}

#[test]
fn numbers_out_of_range_are_named() {
    let spec = full_spec();
    for (path, value) in [
        ("process.user.uid", json!(1_u64 << 40)),
        ("process.user.gid", json!(-1)),
        ("process.rlimits[0].hard", json!(1e300)),
        ("linux.resources.pids.limit", json!(1e300)),
        ("linux.resources.memory.limit", json!(u64::MAX as f64 * 4.0)),
        ("hooks.prestart[0].timeout", json!(-5)),
    ] {
        let err = load(replaced(&spec, path, value).to_string().as_bytes()).unwrap_err();

        assert!(err.to_string().contains(path), "{path}: {err}");
    }
}

#[test]
fn deep_nesting_is_an_error_naming_where_not_a_stack_overflow() {
    let depth = 100_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let spec = full_spec().to_string();
    let args = r#""args":["sh","-c","true"]"#;
    assert!(spec.contains(args));

    let in_args = spec.replacen(args, &format!(r#""args":{nested}"#), 1);
    let err = load(in_args.as_bytes()).unwrap_err().to_string();
    assert!(err.contains("process.args[0]"), "{err}");

    // A field the spec does not define, past serde_json's depth limit.
    let unknown = spec.replacen('{', &format!(r#"{{"x":{nested},"#), 1);
    let err = load(unknown.as_bytes()).unwrap_err().to_string();
    assert!(
        err.contains("config.json: invalid JSON: recursion limit exceeded at line 1 column"),
        "{err}"
    );
}

#[test]
fn invalid_utf8_names_the_file_and_the_place() {
    let mut text = full_spec().to_string().into_bytes();
    let at = text.windows(3).position(|w| w == b"\"h\"").unwrap() + 1;
    text[at] = 0xff;

    let err = load(&text).unwrap_err().to_string();

    assert!(
        err.contains("config.json") && err.contains("line 1 column"),
        "{err}"
    );
}

#[test]
fn a_huge_config_json_is_refused_without_reading_it_all() {
    let mut spec = full_spec();
    spec["annotations"]["big"] = "x".repeat(100 << 20).into();

    let err = load(spec.to_string().as_bytes()).unwrap_err();

    assert!(matches!(err, SpecError::TooLarge { .. }), "{err}");
    assert!(err
        .to_string()
        .contains(&format!("{} MiB", MAX_SPEC_BYTES >> 20)));
}

#[test]
fn a_destination_that_climbs_out_is_named() {
    for destination in ["/../etc", "/data/../../x", "/a/.."] {
        let spec = replaced(&full_spec(), "mounts[1].destination", json!(destination));

        let err = load(spec.to_string().as_bytes()).unwrap_err().to_string();

        assert!(
            err.contains("mounts[1].destination") && err.contains(".."),
            "{err}"
        );
    }
}

#[test]
fn missing_required_fields_are_named() {
    for (path, field) in [
        ("", "ociVersion"),
        ("process", "cwd"),
        ("root", "path"),
        ("mounts[0]", "destination"),
        ("linux.namespaces[0]", "type"),
    ] {
        let mut spec = full_spec();
        spec.pointer_mut(&pointer(path))
            .and_then(Value::as_object_mut)
            .unwrap()
            .remove(field);

        let err = load(spec.to_string().as_bytes()).unwrap_err().to_string();

        assert!(err.contains(field), "{path}.{field}: {err}");
    }
}
