//! A podman fixture for engine smoke tests: a private podman installation in
//! a test-owned directory, with the busybox image imported from a local tar
//! (no registry is reachable here).
//!
//! Every piece of podman state lives under `/var/tmp/husk-podman-<pid>-<n>`:
//! `containers.conf` and `storage.conf` written there (found through
//! `$CONTAINERS_CONF` / `$CONTAINERS_STORAGE_CONF`), storage, run and tmp
//! directories, file locks (not the host-wide `/dev/shm/libpod_lock`) and the
//! network config directory. `--root`, `--runroot` and `--tmpdir` are passed
//! on every command as well, so even a podman that ignored a config file
//! would not touch the host's own storage, which the cleanup resets. Several
//! fixtures may run in parallel: each has its own directory. The settings
//! come from the host quirks in `/work/shared/ENGINES.md`: no systemd
//! (`cgroupfs`, file events), no CAP_SYS_RESOURCE (smaller default ulimits).
//!
//! Podman hands the runtime almost none of its own environment (`create`
//! gets `CONTAINERS_CONF`, `HOME`, `PATH` and `XDG_RUNTIME_DIR`; `start`,
//! `kill` and `delete` not even `PATH`), so a runtime that needs variables
//! such as `HUSK_CONFIG` is reached through [`Podman::wrap_runtime`].
//!
//! Dropping the fixture (or [`Podman::cleanup`]) removes every container,
//! resets the storage, unmounts whatever is still mounted under the
//! directory, waits for (and as a last resort kills) the conmon processes
//! that name the directory, and removes it.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::engines::daemon::TestNetns;
use crate::engines::docker_cli::{DockerCli, RuntimeChoice};
use crate::engines::{self, Image, Runtimes};
use crate::rootfs;

/// The busybox image every fixture imports.
pub const IMAGE: &str = "localhost/husk-bb";

/// Fixture directories are `<DIR_PREFIX><pid>-<n>`.
pub const DIR_PREFIX: &str = "/var/tmp/husk-podman-";

/// A private podman; see the module documentation.
pub struct Podman {
    dir: PathBuf,
    image: OnceLock<Result<(), String>>,
    netns: Option<TestNetns>,
    cleaned: bool,
}

impl Podman {
    /// A fresh fixture, or why podman tests cannot run here (not root,
    /// podman or busybox-static not installed).
    pub fn setup() -> Result<Podman, String> {
        let uid = engines::effective_uid()?;
        if uid != 0 {
            return Err(format!("podman tests need root (running as uid {uid})"));
        }
        match Command::new("podman").arg("--version").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                return Err(format!(
                    "podman --version failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "podman is not installed ({e}; hack/install-deps.sh installs it)"
                ))
            }
        }
        if !Path::new(rootfs::HOST_BUSYBOX).is_file() {
            return Err(format!(
                "{} is missing (hack/install-deps.sh installs busybox-static)",
                rootfs::HOST_BUSYBOX
            ));
        }
        let dir = engines::create_fixture_dir(DIR_PREFIX)?;
        let podman = Podman {
            dir,
            image: OnceLock::new(),
            netns: None,
            cleaned: false,
        };
        let driver = storage_driver();
        let files = [
            ("containers.conf", containers_conf(&podman.dir)),
            ("storage.conf", storage_conf(&podman.dir, driver)),
        ];
        for (name, contents) in files {
            let path = podman.dir.join(name);
            fs::write(&path, contents).map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok(podman)
    }

    /// The fixture's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `podman` with this fixture's configuration, storage and tmp dir.
    pub fn podman(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            // Either would make podman talk to a remote service instead.
            .env_remove("CONTAINER_HOST")
            .env_remove("CONTAINER_CONNECTION")
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"));
        if let Some(netns) = &self.netns {
            if let Err(e) = netns.enter(&mut command) {
                panic!("entering the fixture's network namespace: {e}");
            }
        }
        command
    }

    /// Runs every later podman command (and so conmon, netavark and the
    /// runtime) in a network namespace of the fixture's own, so the
    /// default network's bridge and firewall rules vanish with it.
    pub fn isolate_network(&mut self) -> Result<(), String> {
        self.netns = Some(TestNetns::for_fixture(&self.dir)?);
        Ok(())
    }

    /// Loads both test images (`hack/build-images.sh`).
    pub fn load_images(&self) -> Result<(), String> {
        for image in [Image::Busybox, Image::Debian] {
            let archive = engines::images::archive(image)?;
            let mut load = self.podman();
            load.args(["load", "--quiet", "--input"]).arg(&archive);
            engines::run_ok(&mut load, "podman load")?;
        }
        Ok(())
    }

    /// The engine view of this fixture, choosing between `runtimes`.
    pub fn engine(&self, runtimes: Runtimes) -> DockerCli {
        let mut global_args = Vec::new();
        for (flag, sub) in [
            ("--root", "root"),
            ("--runroot", "run"),
            ("--tmpdir", "tmp"),
        ] {
            global_args.push(flag.into());
            global_args.push(self.dir.join(sub).into());
        }
        DockerCli {
            name: "podman",
            program: "podman".into(),
            env: vec![
                (
                    "CONTAINERS_CONF".into(),
                    self.dir.join("containers.conf").into(),
                ),
                (
                    "CONTAINERS_STORAGE_CONF".into(),
                    self.dir.join("storage.conf").into(),
                ),
            ],
            env_remove: vec!["CONTAINER_HOST", "CONTAINER_CONNECTION"],
            global_args,
            netns: self.netns.as_ref().map(TestNetns::path),
            host_netns: self.netns.as_ref().map(TestNetns::path),
            runtime: RuntimeChoice::GlobalPath(runtimes),
        }
    }

    /// `podman --runtime RUNTIME` with this fixture's settings: add the
    /// subcommand and its arguments.
    pub fn command(&self, runtime: &Path) -> Command {
        let mut command = self.podman();
        command.arg("--runtime").arg(runtime);
        command
    }

    /// The busybox image name, importing it into this fixture's storage on
    /// first use. Panics (failing the test) if the import fails.
    pub fn image(&self) -> &'static str {
        if let Err(why) = self.image.get_or_init(|| self.import_busybox()) {
            panic!("importing {IMAGE}: {why}");
        }
        IMAGE
    }

    fn import_busybox(&self) -> Result<(), String> {
        let tree = self.dir.join("rootfs");
        let tar = self.dir.join("rootfs.tar");
        rootfs::busybox_rootfs(&tree).map_err(|e| format!("building {}: {e}", tree.display()))?;
        rootfs::tar_dir(&tree, &tar).map_err(|e| e.to_string())?;
        let mut import = self.podman();
        import.arg("import").arg("--quiet").arg(&tar).arg(IMAGE);
        run(&mut import).map(drop)
    }

    /// Writes an executable script named like `binary` (podman decides by
    /// the runtime's file name whether it takes `--log-format=json`) that
    /// sets `env` and execs `binary` with its arguments; returns its path,
    /// for [`Podman::command`].
    pub fn wrap_runtime(&self, binary: &Path, env: &[(&str, &OsStr)]) -> io::Result<PathBuf> {
        write_runtime_wrapper(&self.dir, binary, env)
    }

    /// The ids of all containers podman knows, running or not.
    pub fn containers(&self) -> Result<Vec<String>, String> {
        let mut ps = self.podman();
        ps.args(["ps", "--all", "--quiet", "--no-trunc"]);
        let out = run(&mut ps)?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    }

    /// Removes everything the fixture created; says what could not be
    /// removed or was left behind.
    pub fn cleanup(mut self) -> Result<(), String> {
        self.cleaned = true;
        self.clean()
    }

    fn clean(&mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        // The stop timeout of 0 kills at once instead of waiting 10 s per
        // container; `system reset` would wait the full default.
        let mut rm = self.podman();
        rm.args(["rm", "--all", "--force", "--time", "0"]);
        if let Err(e) = run(&mut rm) {
            problems.push(e);
        }
        let mut reset = self.podman();
        reset.args(["system", "reset", "--force"]);
        if let Err(e) = run(&mut reset) {
            problems.push(e);
        }
        // conmon outlives `podman rm` by a moment.
        engines::remove_fixture_dir(&self.dir, &mut problems);
        self.netns = None;
        engines::cleanup_result("podman", &self.dir, problems)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if !self.cleaned {
            if let Err(e) = self.clean() {
                eprintln!("{e}");
            }
        }
    }
}

/// Runs `command`, returning its output if it succeeded and an error with
/// the command line and its stderr otherwise.
pub fn run(command: &mut Command) -> Result<Output, String> {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .map_err(|e| format!("running {shown}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{shown}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The `containers.conf` of a fixture in `dir`.
pub fn containers_conf(dir: &Path) -> String {
    let path = |sub: &str| toml_string(&dir.join(sub));
    format!(
        r#"# Written by husk-tests; see tests/src/podman.rs.
[containers]
# root lacks CAP_SYS_RESOURCE here: podman's default nofile of 1048576 fails.
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[network]
network_config_dir = {networks}

[engine]
# No systemd on these hosts.
cgroup_manager = "cgroupfs"
events_logger = "file"
# File locks under tmp_dir instead of the host-wide /dev/shm/libpod_lock.
lock_type = "file"
runtime_supports_json = ["crun", "runc", "kata", "runsc", "krun", "husk"]
image_copy_tmp_dir = {tmp}
static_dir = {static_dir}
tmp_dir = {tmp}
volume_path = {volumes}
"#,
        networks = path("networks"),
        tmp = path("tmp"),
        static_dir = path("root/libpod"),
        volumes = path("root/volumes"),
    )
}

/// The `storage.conf` of a fixture in `dir`.
pub fn storage_conf(dir: &Path, driver: &str) -> String {
    format!(
        "# Written by husk-tests; see tests/src/podman.rs.\n\
         [storage]\n\
         driver = {}\n\
         graphroot = {}\n\
         runroot = {}\n",
        toml_string(Path::new(driver)),
        toml_string(&dir.join("root")),
        toml_string(&dir.join("run")),
    )
}

/// overlay where the kernel has it, else vfs (slow, but works anywhere).
fn storage_driver() -> &'static str {
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if filesystems
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"))
    {
        "overlay"
    } else {
        "vfs"
    }
}

/// A TOML basic string: JSON's string escapes are a subset of TOML's.
fn toml_string(path: &Path) -> String {
    serde_json::to_string(&path.to_string_lossy()).expect("a string serializes")
}

/// Writes `DIR/runtimes/<binary's file name>`: [`runtime_wrapper_script`]
/// made executable; returns its path.
pub fn write_runtime_wrapper(
    dir: &Path,
    binary: &Path,
    env: &[(&str, &OsStr)],
) -> io::Result<PathBuf> {
    let name = binary.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("runtime {} has no file name", binary.display()),
        )
    })?;
    let dir = dir.join("runtimes");
    fs::create_dir_all(&dir)?;
    let path = dir.join(name);
    fs::write(&path, runtime_wrapper_script(binary, env)?)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// A `/bin/sh` script that exports `env` and execs `binary` with its
/// arguments. Variable names must be shell identifiers.
pub fn runtime_wrapper_script(binary: &Path, env: &[(&str, &OsStr)]) -> io::Result<Vec<u8>> {
    let mut script =
        b"#!/bin/sh\n# Written by husk-tests: podman passes runtimes no environment.\n".to_vec();
    for (name, value) in env {
        let identifier = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not an environment variable name"),
            ));
        }
        script.extend_from_slice(format!("export {name}=").as_bytes());
        script.extend(shell_quote(value.as_bytes()));
        script.push(b'\n');
    }
    script.extend_from_slice(b"exec ");
    script.extend(shell_quote(binary.as_os_str().as_bytes()));
    script.extend_from_slice(b" \"$@\"\n");
    Ok(script)
}

/// `value` in single quotes, each `'` written as `'\''`.
fn shell_quote(value: &[u8]) -> Vec<u8> {
    let mut quoted = vec![b'\''];
    for &byte in value {
        if byte == b'\'' {
            quoted.extend_from_slice(b"'\\''");
        } else {
            quoted.push(byte);
        }
    }
    quoted.push(b'\'');
    quoted
}

/// The mount points in `mounts` (the format of `/proc/mounts`, which lists
/// mounts in the order they were made) at or below `dir`, latest first, so
/// that unmounting them in turn never meets a busy parent. A mount point
/// with mounts stacked on it appears once per mount.
pub fn mounts_under(mounts: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(1))
        .map(|field| PathBuf::from(unescape_mount_field(field)))
        .filter(|mountpoint| mountpoint.starts_with(dir))
        .collect();
    found.reverse();
    found
}

/// Undoes the kernel's octal escapes (`\040` for a space) in a
/// `/proc/mounts` field.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_conf_keeps_state_in_the_dir_and_sets_the_host_quirks() {
        let conf = containers_conf(Path::new("/var/tmp/husk-podman-1-0"));

        for line in [
            r#"default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]"#,
            r#"cgroup_manager = "cgroupfs""#,
            r#"events_logger = "file""#,
            r#"lock_type = "file""#,
            r#"network_config_dir = "/var/tmp/husk-podman-1-0/networks""#,
            r#"static_dir = "/var/tmp/husk-podman-1-0/root/libpod""#,
            r#"tmp_dir = "/var/tmp/husk-podman-1-0/tmp""#,
            r#"volume_path = "/var/tmp/husk-podman-1-0/root/volumes""#,
        ] {
            assert!(
                conf.lines().any(|l| l == line),
                "{line} missing from\n{conf}"
            );
        }
        let json = conf
            .lines()
            .find_map(|l| l.strip_prefix("runtime_supports_json = "))
            .unwrap();
        let runtimes: Vec<String> = serde_json::from_str(json).unwrap();
        assert!(runtimes.iter().any(|r| r == "husk"), "{runtimes:?}");
        assert!(runtimes.iter().any(|r| r == "runc"), "{runtimes:?}");
    }

    #[test]
    fn storage_conf_puts_graphroot_and_runroot_in_the_dir() {
        let conf = storage_conf(Path::new("/d"), "overlay");

        assert!(conf.contains("[storage]\n"), "{conf}");
        assert!(conf.contains("driver = \"overlay\"\n"), "{conf}");
        assert!(conf.contains("graphroot = \"/d/root\"\n"), "{conf}");
        assert!(conf.contains("runroot = \"/d/run\"\n"), "{conf}");
    }

    #[test]
    fn toml_string_escapes_quotes_and_backslashes() {
        assert_eq!(toml_string(Path::new(r#"/a"b\c"#)), r#""/a\"b\\c""#);
    }

    #[test]
    fn mounts_under_lists_mounts_in_the_dir_latest_first_and_unescapes() {
        let mounts = "\
/dev/vda / ext4 rw 0 0
/dev/vda /var/tmp/husk-podman-7-0/root/overlay ext4 rw 0 0
overlay /var/tmp/husk-podman-7-0/root/overlay/abc/merged overlay rw 0 0
shm /var/tmp/husk-podman-7-0/with\\040space/shm tmpfs rw 0 0
tmpfs /var/tmp/husk-podman-7-00/other tmpfs rw 0 0
tmpfs /var/tmp/husk-podman-7-0/with\\040space/shm tmpfs rw 0 0
";

        let found = mounts_under(mounts, Path::new("/var/tmp/husk-podman-7-0"));

        assert_eq!(
            found,
            [
                PathBuf::from("/var/tmp/husk-podman-7-0/with space/shm"),
                PathBuf::from("/var/tmp/husk-podman-7-0/with space/shm"),
                PathBuf::from("/var/tmp/husk-podman-7-0/root/overlay/abc/merged"),
                PathBuf::from("/var/tmp/husk-podman-7-0/root/overlay"),
            ]
        );
    }

    #[test]
    fn unescape_mount_field_leaves_plain_and_short_escapes_alone() {
        assert_eq!(unescape_mount_field(r"/a\134b\011c"), "/a\\b\tc");
        assert_eq!(unescape_mount_field(r"/a\9"), r"/a\9");
        assert_eq!(unescape_mount_field(r"/plain"), "/plain");
    }

    #[test]
    fn runtime_wrapper_script_exports_quoted_values_and_execs_the_binary() {
        let tmp = tempfile::tempdir().unwrap();
        let value = OsStr::new("it's \"quoted\" $HOME `x`");
        let script = runtime_wrapper_script(Path::new("/usr/bin/env"), &[("HUSK_X", value)]);
        let path = tmp.path().join("env");
        fs::write(&path, script.unwrap()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();

        let out = Command::new(&path).env_clear().arg("-0").output().unwrap();

        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            stdout
                .split('\0')
                .any(|v| v == "HUSK_X=it's \"quoted\" $HOME `x`"),
            "{stdout:?}"
        );
    }

    #[test]
    fn runtime_wrapper_script_rejects_a_bad_variable_name() {
        for name in ["", "1X", "A-B", "A=B", "A B"] {
            let script = runtime_wrapper_script(Path::new("/bin/true"), &[(name, OsStr::new(""))]);

            assert!(script.is_err(), "{name:?}");
        }
    }

    #[test]
    fn shell_quote_escapes_single_quotes() {
        assert_eq!(shell_quote(b"a'b"), b"'a'\\''b'");
        assert_eq!(shell_quote(b""), b"''");
    }
}
