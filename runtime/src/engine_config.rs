//! Registering husk with the container engines installed on a host, the
//! way `hack/install.sh` does it: each engine's own configuration file is
//! read, husk's entry is added or updated, and everything else in the file
//! is kept (comments and layout too, for the TOML files). Running it again
//! changes nothing.
//!
//! - docker: `/etc/docker/daemon.json`, `runtimes.husk.path`;
//! - podman: `/etc/containers/containers.conf`, `[engine.runtimes] husk`,
//!   and husk in `[engine] runtime_supports_json` (podman then passes
//!   `--log-format=json`; the list replaces podman's default, so the
//!   default runtimes are kept in it);
//! - containerd: `/etc/containerd/config.toml`, a CRI runtime handler
//!   `husk` with `runtime_type = "io.containerd.husk.v2"` (what
//!   Kubernetes' RuntimeClass `handler: husk` names): containerd finds
//!   `containerd-shim-husk-v2` next to husk on its PATH and runs one VM per
//!   pod. An earlier entry through the runc shim (`BinaryName` = husk) is
//!   replaced.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use toml_edit::{value, Array, DocumentMut, Item, Table};

/// podman's default `runtime_supports_json`, kept when husk is added.
const PODMAN_JSON_RUNTIMES: &[&str] = &["crun", "runc", "kata", "runsc", "krun"];

/// One engine configuration file and how husk goes into it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// dockerd's daemon.json.
    Docker,
    /// podman's containers.conf.
    Podman,
    /// containerd's config.toml.
    Containerd,
}

impl Engine {
    /// Every engine.
    pub const ALL: [Engine; 3] = [Engine::Docker, Engine::Podman, Engine::Containerd];

    /// The engine's name.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
            Engine::Containerd => "containerd",
        }
    }

    /// The configuration file under `root` (`/` on a real host).
    pub fn config_path(self, root: &Path) -> PathBuf {
        root.join(match self {
            Engine::Docker => "etc/docker/daemon.json",
            Engine::Podman => "etc/containers/containers.conf",
            Engine::Containerd => "etc/containerd/config.toml",
        })
    }

    /// `text` (the current file, empty if there is none) with husk at
    /// `husk` registered.
    pub fn register(self, text: &str, husk: &Path) -> Result<String> {
        match self {
            Engine::Docker => register_docker(text, husk),
            Engine::Podman => register_podman(text, husk),
            Engine::Containerd => register_containerd(text, husk),
        }
    }
}

/// What [`register_file`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The file was written.
    Updated(PathBuf),
    /// husk was already registered as asked.
    Unchanged(PathBuf),
}

/// Registers husk in `engine`'s file under `root`, writing it (atomically,
/// creating the directory) only when something changes.
pub fn register_file(engine: Engine, root: &Path, husk: &Path) -> Result<Outcome> {
    let path = engine.config_path(root);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let updated = engine
        .register(&text, husk)
        .with_context(|| format!("registering husk in {}", path.display()))?;
    if updated == text {
        return Ok(Outcome::Unchanged(path));
    }
    let dir = path.parent().expect("config paths have a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension("husk-tmp");
    std::fs::write(&tmp, &updated).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(Outcome::Updated(path))
}

fn register_docker(text: &str, husk: &Path) -> Result<String> {
    let mut config: serde_json::Value = if text.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(text).context("daemon.json is not valid JSON")?
    };
    let Some(top) = config.as_object_mut() else {
        bail!("daemon.json is not a JSON object");
    };
    let runtimes = top
        .entry("runtimes")
        .or_insert_with(|| serde_json::json!({}));
    let Some(runtimes) = runtimes.as_object_mut() else {
        bail!("\"runtimes\" in daemon.json is not an object");
    };
    let entry = serde_json::json!({"path": husk.to_string_lossy()});
    if runtimes.get("husk") == Some(&entry) {
        return Ok(text.to_string());
    }
    runtimes.insert("husk".into(), entry);
    Ok(serde_json::to_string_pretty(&config)? + "\n")
}

/// The table at `path` in `doc`, created (implicit, like `[a.b]`) if
/// missing; an error if something else is there.
fn table<'a>(doc: &'a mut Table, path: &[&str], file: &str) -> Result<&'a mut Table> {
    let mut current = doc;
    for (i, key) in path.iter().enumerate() {
        let item = current.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        current = match item.as_table_mut() {
            Some(t) => t,
            None => bail!("{} in {file} is not a table", path[..=i].join(".")),
        };
    }
    Ok(current)
}

fn parse_toml(text: &str, file: &str) -> Result<DocumentMut> {
    text.parse::<DocumentMut>()
        .with_context(|| format!("{file} is not valid TOML"))
}

fn register_podman(text: &str, husk: &Path) -> Result<String> {
    const FILE: &str = "containers.conf";
    let mut doc = parse_toml(text, FILE)?;
    let husk_path = husk.to_string_lossy().into_owned();
    let engine = table(doc.as_table_mut(), &["engine"], FILE)?;
    let json = engine
        .entry("runtime_supports_json")
        .or_insert_with(|| value(Array::from_iter(PODMAN_JSON_RUNTIMES.iter().copied())));
    let Some(list) = json.as_array_mut() else {
        bail!("engine.runtime_supports_json in {FILE} is not an array");
    };
    if !list.iter().any(|v| v.as_str() == Some("husk")) {
        list.push("husk");
    }
    let runtimes = table(engine, &["runtimes"], FILE)?;
    let wanted = Array::from_iter([husk_path.as_str()]);
    let current = runtimes.get("husk").and_then(Item::as_array);
    let same = current.is_some_and(|a| {
        a.iter().map(|v| v.as_str()).collect::<Vec<_>>() == [Some(husk_path.as_str())]
    });
    if !same {
        runtimes.insert("husk", value(wanted));
    }
    Ok(doc.to_string())
}

/// What to do when containerd's file cannot be edited.
const CONTAINERD_BY_HAND: &str = "add the handler by hand: \
    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk] \
    runtime_type = \"io.containerd.husk.v2\"";

fn register_containerd(text: &str, husk: &Path) -> Result<String> {
    const FILE: &str = "config.toml";
    let mut doc = parse_toml(text, FILE)?;
    match doc.get("version").and_then(Item::as_integer) {
        Some(2) => {}
        None if text.trim().is_empty() => {
            doc.insert("version", value(2));
        }
        None => bail!(
            "{FILE} has no `version = 2` (the version 1 format, which names plugins \
             differently): husk registers only in the version 2 format; {CONTAINERD_BY_HAND}"
        ),
        Some(v) => bail!(
            "{FILE} is version {v}: husk registers only in the version 2 format; \
             {CONTAINERD_BY_HAND}"
        ),
    }
    let cri_disabled = doc
        .get("disabled_plugins")
        .and_then(Item::as_array)
        .is_some_and(|list| {
            list.iter()
                .any(|p| matches!(p.as_str(), Some("cri" | "io.containerd.grpc.v1.cri")))
        });
    if cri_disabled {
        bail!(
            "{FILE} disables the CRI plugin (`disabled_plugins`), so a CRI handler would \
             never run; enable CRI first, then {CONTAINERD_BY_HAND}"
        );
    }
    let husk_path = husk.to_string_lossy().into_owned();
    let path = [
        "plugins",
        "io.containerd.grpc.v1.cri",
        "containerd",
        "runtimes",
        "husk",
    ];
    let runtime = table(doc.as_table_mut(), &path, FILE)?;
    runtime.set_implicit(false);
    if runtime.get("runtime_type").and_then(Item::as_str) != Some(crate::shim::RUNTIME_ID) {
        runtime.insert("runtime_type", value(crate::shim::RUNTIME_ID));
    }
    // The runc shim's way to name husk, from an earlier install.
    let runc_entry = runtime
        .get("options")
        .and_then(Item::as_table)
        .and_then(|o| o.get("BinaryName"))
        .and_then(Item::as_str)
        == Some(husk_path.as_str());
    if runc_entry {
        if let Some(options) = runtime.get_mut("options").and_then(Item::as_table_mut) {
            options.remove("BinaryName");
            if options.is_empty() {
                runtime.remove("options");
            }
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUSK: &str = "/usr/local/bin/husk";

    fn register_twice(engine: Engine, text: &str) -> String {
        let once = engine.register(text, Path::new(HUSK)).unwrap();
        let twice = engine.register(&once, Path::new(HUSK)).unwrap();
        assert_eq!(
            once,
            twice,
            "{} registration is not idempotent",
            engine.name()
        );
        once
    }

    #[test]
    fn docker_keeps_other_settings_and_runtimes() {
        let text = r#"{"log-level": "warn", "runtimes": {"kata": {"path": "/k"}}}"#;

        let out = register_twice(Engine::Docker, text);

        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["log-level"], "warn");
        assert_eq!(json["runtimes"]["kata"]["path"], "/k");
        assert_eq!(json["runtimes"]["husk"]["path"], HUSK);
    }

    #[test]
    fn docker_starts_a_missing_file_and_refuses_broken_json() {
        let out = register_twice(Engine::Docker, "");
        let json: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(json["runtimes"]["husk"]["path"], HUSK);

        let err = Engine::Docker
            .register("{nope", Path::new(HUSK))
            .unwrap_err();
        assert!(err.to_string().contains("daemon.json"), "{err}");
        let err = Engine::Docker
            .register(r#"{"runtimes": []}"#, Path::new(HUSK))
            .unwrap_err();
        assert!(err.to_string().contains("runtimes"), "{err}");
    }

    #[test]
    fn podman_adds_the_runtime_and_json_support_keeping_comments() {
        let text = "# site settings\n[containers]\nlog_driver = \"k8s-file\"\n\n\
                    [engine]\ncgroup_manager = \"cgroupfs\" # no systemd\n";

        let out = register_twice(Engine::Podman, text);

        assert!(out.contains("# site settings"), "{out}");
        assert!(
            out.contains("cgroup_manager = \"cgroupfs\" # no systemd"),
            "{out}"
        );
        let doc: toml::Value = toml::from_str(&out).unwrap();
        assert_eq!(doc["containers"]["log_driver"].as_str(), Some("k8s-file"));
        assert_eq!(
            doc["engine"]["runtimes"]["husk"].as_array().unwrap()[0].as_str(),
            Some(HUSK)
        );
        let json: Vec<&str> = doc["engine"]["runtime_supports_json"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(json, ["crun", "runc", "kata", "runsc", "krun", "husk"]);
    }

    #[test]
    fn podman_extends_an_existing_json_list_once() {
        let text = "[engine]\nruntime_supports_json = [\"crun\"]\n";

        let out = register_twice(Engine::Podman, text);

        let doc: toml::Value = toml::from_str(&out).unwrap();
        let json = doc["engine"]["runtime_supports_json"].as_array().unwrap();
        assert_eq!(json.len(), 2, "{out}");
    }

    #[test]
    fn containerd_adds_a_cri_handler_for_the_husk_shim() {
        let text = "version = 2\n# mine\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  \
                    restrict_oom_score_adj = true\n";

        let out = register_twice(Engine::Containerd, text);

        assert!(out.contains("# mine"), "{out}");
        let doc: toml::Value = toml::from_str(&out).unwrap();
        let cri = &doc["plugins"]["io.containerd.grpc.v1.cri"];
        assert_eq!(cri["restrict_oom_score_adj"].as_bool(), Some(true));
        let husk = &cri["containerd"]["runtimes"]["husk"];
        assert_eq!(husk["runtime_type"].as_str(), Some("io.containerd.husk.v2"));
        assert!(husk.get("options").is_none(), "{out}");
    }

    #[test]
    fn containerd_replaces_the_runc_shim_entry_of_an_earlier_install() {
        let text = format!(
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk]\n\
             runtime_type = \"io.containerd.runc.v2\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.husk.options]\n\
             BinaryName = \"{HUSK}\"\n"
        );

        let out = register_twice(Engine::Containerd, &text);

        let doc: toml::Value = toml::from_str(&out).unwrap();
        let husk = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["husk"];
        assert_eq!(husk["runtime_type"].as_str(), Some("io.containerd.husk.v2"));
        assert!(husk.get("options").is_none(), "{out}");
    }

    #[test]
    fn containerd_starts_a_missing_file_and_refuses_version_1() {
        let out = register_twice(Engine::Containerd, "");
        let doc: toml::Value = toml::from_str(&out).unwrap();
        assert_eq!(doc["version"].as_integer(), Some(2));

        let err = Engine::Containerd
            .register("[plugins.cri]\n", Path::new(HUSK))
            .unwrap_err();
        assert!(err.to_string().contains("version = 2"), "{err}");
    }

    /// The file Docker's containerd.io package installs: version 1, CRI
    /// disabled.
    const CONTAINERD_IO_CONFIG: &str =
        "#   Copyright 2018-2022 Docker Inc.\n\ndisabled_plugins = [\"cri\"]\n\n#root = \"/var/lib/containerd\"\n";

    #[test]
    fn containerd_io_s_stock_file_is_left_alone_with_what_to_do() {
        let root = tempfile::tempdir().unwrap();
        let path = Engine::Containerd.config_path(root.path());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, CONTAINERD_IO_CONFIG).unwrap();

        let err = register_file(Engine::Containerd, root.path(), Path::new(HUSK)).unwrap_err();

        let message = format!("{err:#}");
        assert!(message.contains("version = 2"), "{message}");
        assert!(message.contains("io.containerd.husk.v2"), "{message}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            CONTAINERD_IO_CONFIG
        );
        let files: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(files.len(), 1, "no temporary file is left");
    }

    #[test]
    fn containerd_with_cri_disabled_is_refused_naming_it() {
        let text = "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n";

        let err = Engine::Containerd
            .register(text, Path::new(HUSK))
            .unwrap_err();

        assert!(err.to_string().contains("disables the CRI plugin"), "{err}");
    }

    #[test]
    fn a_non_table_in_the_way_is_named() {
        let err = Engine::Podman
            .register("engine = 3\n", Path::new(HUSK))
            .unwrap_err();

        assert!(
            err.to_string().contains("engine in containers.conf"),
            "{err}"
        );
    }

    #[test]
    fn register_file_writes_once_then_leaves_the_file_alone() {
        let root = tempfile::tempdir().unwrap();

        for engine in Engine::ALL {
            let first = register_file(engine, root.path(), Path::new(HUSK)).unwrap();
            let second = register_file(engine, root.path(), Path::new(HUSK)).unwrap();

            assert!(matches!(first, Outcome::Updated(_)), "{first:?}");
            assert!(matches!(second, Outcome::Unchanged(_)), "{second:?}");
        }
    }
}
