//! A private containerd driven by `ctr`: the daemon in a network namespace
//! of its own with root, state, sockets and the opt directory under
//! `/var/tmp/husk-containerd-<pid>-<n>`, the CRI plugin off, and a
//! namespace of our own. Containers run through the runc shim; husk is
//! chosen with `--runc-binary`, and each runtime keeps its state in the
//! fixture (`--runc-root`).
//!
//! ctr 1.6 has no flags for the user, the hostname or rlimits: a run that
//! needs them goes through `--config` with a full spec (ctr's default
//! spec, changed) whose root is a busybox tree in the fixture.
//!
//! Networks are CNI configs in the fixture ([`super::cni`]): a run on one
//! is a `ctr run --cni` started in containerd's network namespace (where
//! the plugins then make the bridge) with that network's config. ctr has
//! no port publishing and no name resolution between containers.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::cni::{CniNetworks, DEFAULT_NETWORK};
use super::daemon::{Daemon, TestNetns};
use super::{
    cleanup_result, create_fixture_dir, eventually, images, remove_fixture_dir, require_root_and,
    run_bounded, run_ok, Engine, Exec, Image, Network, NetworkOptions, Outcome, Run, Runtime,
    Runtimes, COMMAND_TIMEOUT,
};

/// Fixture directories are `<DIR_PREFIX><pid>-<n>`.
pub const DIR_PREFIX: &str = "/var/tmp/husk-containerd-";

/// The daemon and its client, from Debian's containerd.
pub const CONTAINERD: &str = "/usr/bin/containerd";
/// The client.
pub const CTR: &str = "/usr/bin/ctr";

/// The containerd namespace the tests use.
pub const NAMESPACE: &str = "husk-test";

/// A private containerd; see the module documentation.
pub struct Containerd {
    dir: PathBuf,
    runtimes: Runtimes,
    daemon: Option<Daemon>,
    netns: Option<TestNetns>,
    cni: Option<CniNetworks>,
    next_exec: AtomicUsize,
    cleaned: bool,
}

impl Containerd {
    /// Starts containerd, imports both images, builds the busybox tree for
    /// `--config` runs; or says why containerd tests cannot run.
    pub fn setup(
        runtimes: impl FnOnce(&Path) -> Result<Runtimes, String>,
    ) -> Result<Containerd, String> {
        require_root_and(CONTAINERD)?;
        require_root_and(CTR)?;
        let busybox = images::archive(Image::Busybox)?;
        let debian = images::archive(Image::Debian)?;
        let dir = create_fixture_dir(DIR_PREFIX)?;
        let mut fixture = Containerd {
            runtimes: Runtimes {
                runc: PathBuf::new(),
                husk: PathBuf::new(),
            },
            dir,
            daemon: None,
            netns: None,
            cni: None,
            next_exec: AtomicUsize::new(0),
            cleaned: false,
        };
        fixture.runtimes = runtimes(&fixture.dir)?;
        fixture.cni = Some(CniNetworks::setup(&fixture.dir)?);
        let config = fixture.dir.join("config.toml");
        std::fs::write(&config, config_toml(&fixture.dir))
            .map_err(|e| format!("writing {}: {e}", config.display()))?;
        let netns = fixture.netns.insert(TestNetns::for_fixture(&fixture.dir)?);
        let mut command = Command::new(CONTAINERD);
        command.arg("--config").arg(&config);
        netns.enter(&mut command)?;
        fixture.daemon = Some(Daemon::start(
            "containerd",
            command,
            &fixture.dir.join("containerd.log"),
            &fixture.socket(),
        )?);
        for archive in [busybox, debian] {
            run_ok(
                fixture.ctr().args(["image", "import"]).arg(&archive),
                "ctr image import",
            )?;
        }
        crate::rootfs::busybox_rootfs(&fixture.rootfs())
            .map_err(|e| format!("building {}: {e}", fixture.rootfs().display()))?;
        let spec = run_ok(fixture.ctr().args(["oci", "spec"]), "ctr oci spec")?;
        std::fs::write(fixture.dir.join("default-spec.json"), spec.stdout)
            .map_err(|e| e.to_string())?;
        std::fs::create_dir_all(fixture.dir.join("logs")).map_err(|e| e.to_string())?;
        Ok(fixture)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("busybox-rootfs")
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// `ctr` talking to this containerd in the test namespace.
    pub fn ctr(&self) -> Command {
        let mut command = Command::new(CTR);
        command
            .arg("--address")
            .arg(self.socket())
            .arg("--namespace")
            .arg(NAMESPACE);
        command
    }

    /// The fixture's CNI networks.
    fn cni(&self) -> Result<&CniNetworks, String> {
        self.cni
            .as_ref()
            .ok_or_else(|| "the containerd fixture has no CNI networks".to_string())
    }

    /// Makes `command` (a `ctr run`) join `network`: `--cni` with its
    /// config, in containerd's network namespace.
    fn join_network(&self, command: &mut Command, network: &Network) -> Result<(), String> {
        let name = match network {
            Network::None => return Ok(()),
            Network::Host => {
                command.arg("--net-host");
                return Ok(());
            }
            Network::Default => DEFAULT_NETWORK,
            Network::Named(name) => name,
        };
        self.cni()?.enter(command, name)?;
        super::daemon::enter_netns(command, &self.host_netns()?)?;
        command.arg("--cni");
        Ok(())
    }

    fn ctr_ok(&self, args: &[&str]) -> Result<Outcome, String> {
        run_ok(self.ctr().args(args), &format!("ctr {}", args.join(" ")))
    }

    /// The task's status (`RUNNING`, `STOPPED`, ...), None without a task.
    pub fn task_status(&self, name: &str) -> Option<String> {
        let out = self.ctr_ok(&["task", "ls"]).ok()?;
        out.stdout.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.first() == Some(&name)).then(|| fields.last().unwrap_or(&"").to_string())
        })
    }

    /// Writes the `--config` spec for `run` and returns its path.
    fn config_spec(&self, run: &Run) -> Result<PathBuf, String> {
        let text = std::fs::read_to_string(self.dir.join("default-spec.json"))
            .map_err(|e| e.to_string())?;
        let mut spec: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        apply_run(&mut spec, run, &self.rootfs());
        let path = self.dir.join(format!("{}.spec.json", run.name));
        std::fs::write(&path, spec.to_string()).map_err(|e| e.to_string())?;
        Ok(path)
    }

    /// Removes every task and container, stops the daemon, removes what
    /// the fixture created; says what had to be forced.
    pub fn cleanup(mut self) -> Result<(), String> {
        self.cleaned = true;
        self.clean()
    }

    fn clean(&mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.daemon.is_some() {
            match self.containers() {
                Ok(names) => {
                    for name in names {
                        if let Err(e) = self.remove(&name, true) {
                            problems.push(e);
                        }
                    }
                }
                Err(e) => problems.push(e),
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            if !daemon.stop() {
                problems.push(format!("containerd needed SIGKILL:\n{}", daemon.log_tail()));
            }
        }
        remove_fixture_dir(&self.dir, &mut problems);
        self.netns = None;
        // runc removes each container's cgroup, not ctr's namespace parent.
        for hierarchy in husk::sandbox::host_cgroup::hierarchies() {
            let _ = std::fs::remove_dir(hierarchy.join(NAMESPACE));
        }
        cleanup_result("containerd", &self.dir, problems)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if !self.cleaned {
            if let Err(e) = self.clean() {
                eprintln!("{e}");
            }
        }
    }
}

/// Changes ctr's default spec to what `run` asks for, rooted at `rootfs`.
pub fn apply_run(spec: &mut serde_json::Value, run: &Run, rootfs: &Path) {
    let mut env =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    env.extend(run.env.iter().cloned());
    let process = &mut spec["process"];
    process["args"] = serde_json::json!(run.args);
    process["env"] = serde_json::json!(env);
    process["terminal"] = serde_json::json!(run.tty);
    if let Some(dir) = &run.workdir {
        process["cwd"] = serde_json::json!(dir);
    }
    if let Some((uid, gid)) = run.user.as_deref().and_then(|u| u.split_once(':')) {
        let id = |s: &str| s.parse::<u32>().unwrap_or(0);
        process["user"] = serde_json::json!({"uid": id(uid), "gid": id(gid)});
    }
    if let Some((soft, hard)) = run.nofile {
        process["rlimits"] =
            serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": soft, "hard": hard}]);
    }
    if let Some(hostname) = &run.hostname {
        spec["hostname"] = serde_json::json!(hostname);
    }
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": run.read_only});
    // ctr's default is the namespace's own cgroup, which has children.
    spec["linux"]["cgroupsPath"] = serde_json::json!(format!("/{NAMESPACE}/{}", run.name));
}

/// `type=bind,...` for `ctr run --mount`.
fn mount_flag(volume: &super::Volume) -> String {
    let mode = if volume.read_only { "ro" } else { "rw" };
    format!(
        "type=bind,src={},dst={},options=rbind:{mode}",
        volume.host.display(),
        volume.container
    )
}

/// The exit code in `ctr task rm`'s "exit with non-zero exit code N".
pub fn exit_code_of_delete(stderr: &str) -> i32 {
    stderr
        .split("exit code ")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// `SIGHUP` for `HUP` or `SIGHUP`.
fn signal_name(signal: &str) -> String {
    if signal.starts_with("SIG") {
        signal.to_string()
    } else {
        format!("SIG{signal}")
    }
}

/// The config.toml of a fixture in `dir`.
pub fn config_toml(dir: &Path) -> String {
    let path = |sub: &str| serde_json::to_string(&dir.join(sub)).expect("a path serializes");
    format!(
        "# Written by husk-tests; see tests/src/engines/containerd.rs.\n\
         version = 2\n\
         root = {root}\n\
         state = {state}\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         [grpc]\n  address = {grpc}\n\
         [ttrpc]\n  address = {ttrpc}\n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
        root = path("root"),
        state = path("state"),
        grpc = path("containerd.sock"),
        ttrpc = path("containerd.sock.ttrpc"),
        opt = path("opt"),
    )
}

impl Engine for Containerd {
    fn name(&self) -> &'static str {
        "containerd"
    }

    fn run(&self, runtime: Runtime, run: &Run) -> Command {
        let mut command = self.ctr();
        command.arg("run");
        if run.remove {
            command.arg("--rm");
        }
        if run.detach {
            command.arg("--detach").arg(format!(
                "--log-uri=file://{}",
                self.log(&run.name).display()
            ));
        }
        if runtime == Runtime::Husk {
            command.arg("--runc-binary").arg(&self.runtimes.husk);
        }
        command
            .arg("--runc-root")
            .arg(self.dir.join(format!("{}-state", runtime.name())));
        if let Err(e) = self.join_network(&mut command, &run.network) {
            // run() cannot fail: a flag ctr refuses carries the error.
            command.arg(format!("--network-failed:{e}"));
        }
        if run.user.is_some() || run.hostname.is_some() || run.nofile.is_some() {
            // Only the spec can say these; ctr takes nothing else then.
            match self.config_spec(run) {
                Ok(spec) => command.arg("--config").arg(spec).arg(&run.name),
                Err(e) => command.arg(format!("--config-failed:{e}")),
            };
            return command;
        }
        if run.tty {
            command.arg("--tty");
        }
        if run.read_only {
            command.arg("--read-only");
        }
        for env in &run.env {
            command.arg(format!("--env={env}"));
        }
        if let Some(dir) = &run.workdir {
            command.arg(format!("--cwd={dir}"));
        }
        for volume in &run.volumes {
            command.arg(format!("--mount={}", mount_flag(volume)));
        }
        if let Some(mib) = run.memory_mib {
            command.arg(format!("--memory-limit={}", mib << 20));
        }
        if let Some(cpus) = run.cpus {
            command.arg(format!("--cpus={cpus}"));
        }
        command
            .arg(run.image.reference())
            .arg(&run.name)
            .args(&run.args);
        command
    }

    fn exec(&self, name: &str, exec: &Exec) -> Command {
        let n = self.next_exec.fetch_add(1, Ordering::Relaxed);
        let mut command = self.ctr();
        command
            .args(["task", "exec"])
            .arg(format!("--exec-id=exec{n}"));
        if exec.tty {
            command.arg("--tty");
        }
        command.arg(name).args(&exec.args);
        command
    }

    fn logs(&self, name: &str) -> Result<Outcome, String> {
        let text = std::fs::read_to_string(self.log(name)).unwrap_or_default();
        Ok(Outcome {
            code: Some(0),
            stdout: text,
            stderr: String::new(),
        })
    }

    fn stop(&self, name: &str, timeout_secs: u32) -> Result<Outcome, String> {
        let stopped = || self.task_status(name).as_deref() != Some("RUNNING");
        self.ctr_ok(&["task", "kill", "--signal", "SIGTERM", name])?;
        if !eventually(Duration::from_secs(timeout_secs.into()), stopped) {
            self.ctr_ok(&["task", "kill", "--signal", "SIGKILL", name])?;
            if !eventually(COMMAND_TIMEOUT, stopped) {
                return Err(format!("{name} still runs after SIGKILL"));
            }
        }
        Ok(Outcome {
            code: Some(0),
            stdout: String::new(),
            stderr: String::new(),
        })
    }

    fn kill(&self, name: &str, signal: &str) -> Result<Outcome, String> {
        self.ctr_ok(&["task", "kill", "--signal", &signal_name(signal), name])
    }

    fn is_running(&self, name: &str) -> bool {
        self.task_status(name).as_deref() == Some("RUNNING")
    }

    fn wait(&self, name: &str) -> Result<i32, String> {
        if !eventually(COMMAND_TIMEOUT, || {
            self.task_status(name).as_deref() == Some("STOPPED")
        }) {
            return Err(format!("{name} did not stop within {COMMAND_TIMEOUT:?}"));
        }
        let out = self.ctr_ok(&["task", "rm", name])?;
        Ok(exit_code_of_delete(&out.stderr))
    }

    fn remove(&self, name: &str, force: bool) -> Result<Outcome, String> {
        if self.task_status(name).is_some() {
            let mut rm = self.ctr();
            rm.args(["task", "rm"]);
            if force {
                rm.arg("--force");
            }
            run_bounded(rm.arg(name), None, COMMAND_TIMEOUT)?.ok("ctr task rm")?;
        }
        self.ctr_ok(&["containers", "rm", name])
    }

    fn containers(&self) -> Result<Vec<String>, String> {
        let out = self.ctr_ok(&["containers", "ls", "--quiet"])?;
        Ok(out.stdout.split_whitespace().map(str::to_owned).collect())
    }

    fn docker_cli(&self) -> Option<&super::docker_cli::DockerCli> {
        None
    }

    fn host_netns(&self) -> Result<PathBuf, String> {
        self.netns
            .as_ref()
            .map(TestNetns::path)
            .ok_or_else(|| "containerd has no network namespace".to_string())
    }

    fn create_network(&self, name: &str, options: &NetworkOptions) -> Result<(), String> {
        self.cni()?.create(name, options)
    }

    fn remove_network(&self, name: &str) -> Result<(), String> {
        self.cni()?.remove(name, &self.host_netns()?)
    }

    fn networks(&self) -> Result<Vec<String>, String> {
        self.cni()?.list()
    }

    fn gateways(&self, network: &Network) -> Result<Vec<IpAddr>, String> {
        let name = match network {
            Network::Default => DEFAULT_NETWORK,
            Network::Named(name) => name,
            other => return Err(format!("{other:?} has no gateway")),
        };
        Ok(vec![self.cni()?.gateway(name)?])
    }

    fn publishes_ports(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_code_of_delete_reads_ctr_s_warning() {
        let warning = "time=\"x\" level=warning msg=\"task t4 exit with non-zero exit code 137\"";

        assert_eq!(exit_code_of_delete(warning), 137);
        assert_eq!(exit_code_of_delete(""), 0);
    }

    #[test]
    fn apply_run_sets_the_user_hostname_rlimit_and_root() {
        let mut spec = serde_json::json!({"process": {"cwd": "/"}, "root": {"path": "rootfs"}});
        let mut run = Run::new("c", Image::Busybox, &["id"]);
        run.user = Some("65534:65533".into());
        run.hostname = Some("h".into());
        run.nofile = Some((10, 20));
        run.read_only = true;
        run.env = vec!["A=b".into()];

        apply_run(&mut spec, &run, Path::new("/r"));

        assert_eq!(spec["process"]["user"]["uid"], 65534);
        assert_eq!(spec["process"]["user"]["gid"], 65533);
        assert_eq!(spec["process"]["rlimits"][0]["hard"], 20);
        assert_eq!(spec["process"]["env"][1], "A=b");
        assert_eq!(spec["hostname"], "h");
        assert_eq!(spec["root"]["path"], "/r");
        assert_eq!(spec["root"]["readonly"], true);
    }

    #[test]
    fn config_toml_keeps_state_in_the_dir_without_cri() {
        let text = config_toml(Path::new("/d"));

        for line in [
            "root = \"/d/root\"",
            "state = \"/d/state\"",
            "  address = \"/d/containerd.sock\"",
            "  path = \"/d/opt\"",
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn signal_names_get_the_sig_prefix_once() {
        assert_eq!(signal_name("HUP"), "SIGHUP");
        assert_eq!(signal_name("SIGKILL"), "SIGKILL");
    }
}
