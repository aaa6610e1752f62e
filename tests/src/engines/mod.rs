//! Real container engines driving a runtime: podman, docker and
//! containerd (through `ctr`), each a private installation in a test-owned
//! directory, speaking one small vocabulary ([`Engine`]) so that the same
//! scenario runs on all three, once with runc and once with husk.
//!
//! Every engine command is bounded by a timeout ([`run_bounded`]): a hung
//! engine or runtime fails its scenario instead of the whole suite.

pub mod cni;
pub mod containerd;
pub mod daemon;
pub mod docker_cli;
pub mod dockerd;
pub mod hostnet;
pub mod images;
pub mod pty;

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long one engine command may take before it counts as hung.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// The runtime an engine is told to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// The baseline.
    Runc,
    /// The runtime under test.
    Husk,
}

impl Runtime {
    /// `runc` or `husk`.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Husk => "husk",
        }
    }
}

/// The images every engine has (see `hack/build-images.sh`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Image {
    /// busybox-static, `localhost/husk-bb:latest`.
    Busybox,
    /// Debian bookworm minbase with python3, `localhost/husk-debian:latest`.
    Debian,
}

impl Image {
    /// The image reference.
    pub fn reference(self) -> &'static str {
        match self {
            Image::Busybox => "localhost/husk-bb:latest",
            Image::Debian => "localhost/husk-debian:latest",
        }
    }
}

/// A bind mount from the host.
#[derive(Debug, Clone)]
pub struct Volume {
    /// The host directory.
    pub host: PathBuf,
    /// Where it appears in the container.
    pub container: String,
    /// `:ro`.
    pub read_only: bool,
}

/// The network a container joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// `--network=none`: loopback only (what most scenarios use).
    None,
    /// The engine's default network: podman's and docker's bridge, the
    /// containerd fixture's CNI bridge.
    Default,
    /// A network a scenario created ([`Engine::create_network`]).
    Named(String),
    /// `--network=host`: the engine's own namespace.
    Host,
}

/// How [`Engine::create_network`] makes a network.
#[derive(Debug, Clone, Default)]
pub struct NetworkOptions {
    /// The MTU of its bridge and interfaces (the engine's default if None).
    pub mtu: Option<u32>,
    /// The subnets (an IPv6 one makes it dual-stack); the engine picks one
    /// if empty.
    pub subnets: Vec<String>,
}

/// What `run` is asked to do: the docker CLI's options that the scenarios
/// use. The network is `none` unless `network` says otherwise.
#[derive(Debug, Clone)]
pub struct Run {
    /// The container's name (and id, for ctr).
    pub name: String,
    /// The image.
    pub image: Image,
    /// The command.
    pub args: Vec<String>,
    /// `--rm`.
    pub remove: bool,
    /// `-d`.
    pub detach: bool,
    /// `-i`.
    pub interactive: bool,
    /// `-t`.
    pub tty: bool,
    /// `-e NAME=VALUE`.
    pub env: Vec<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u UID:GID`.
    pub user: Option<String>,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--read-only`.
    pub read_only: bool,
    /// `--ulimit nofile=SOFT:HARD`.
    pub nofile: Option<(u64, u64)>,
    /// `-v`.
    pub volumes: Vec<Volume>,
    /// `--memory` in MiB.
    pub memory_mib: Option<u64>,
    /// `--cpus`.
    pub cpus: Option<u32>,
    /// `--network`.
    pub network: Network,
    /// `--publish HOST:CONTAINER` (TCP; engines without it ignore it).
    pub publish: Vec<(u16, u16)>,
}

impl Run {
    /// A foreground `run --rm` of `args` in `image`.
    pub fn new(name: &str, image: Image, args: &[&str]) -> Run {
        Run {
            name: name.to_string(),
            image,
            args: args.iter().map(|a| a.to_string()).collect(),
            remove: true,
            detach: false,
            interactive: false,
            tty: false,
            env: Vec::new(),
            workdir: None,
            user: None,
            hostname: None,
            read_only: false,
            nofile: None,
            volumes: Vec::new(),
            memory_mib: None,
            cpus: None,
            network: Network::None,
            publish: Vec::new(),
        }
    }

    /// The same, detached and kept.
    pub fn detached(name: &str, image: Image, args: &[&str]) -> Run {
        Run {
            remove: false,
            detach: true,
            ..Run::new(name, image, args)
        }
    }
}

/// What `exec` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Exec {
    /// `-i`.
    pub interactive: bool,
    /// `-t`.
    pub tty: bool,
    /// The command.
    pub args: Vec<String>,
}

/// A finished command: exit code (None if killed) and both streams.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The exit code.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Outcome {
    /// Succeeded, or an error naming what failed and its stderr.
    pub fn ok(self, what: &str) -> Result<Outcome, String> {
        if self.code == Some(0) {
            Ok(self)
        } else {
            Err(format!(
                "{what} exited with {:?}: {}",
                self.code,
                self.stderr.trim()
            ))
        }
    }
}

/// The vocabulary scenarios use; each engine spells it its own way.
pub trait Engine {
    /// `podman`, `docker` or `containerd`.
    fn name(&self) -> &'static str;
    /// The `run` command line (add stdin/pty handling and run it).
    fn run(&self, runtime: Runtime, run: &Run) -> Command;
    /// The `exec` command line for a running container.
    fn exec(&self, name: &str, exec: &Exec) -> Command;
    /// The logs of a detached container, both streams.
    fn logs(&self, name: &str) -> Result<Outcome, String>;
    /// `stop` with a timeout before SIGKILL.
    fn stop(&self, name: &str, timeout_secs: u32) -> Result<Outcome, String>;
    /// `kill -s SIGNAL`.
    fn kill(&self, name: &str, signal: &str) -> Result<Outcome, String>;
    /// True once the container's process runs (started, not exited).
    fn is_running(&self, name: &str) -> bool;
    /// Waits for a container to end; its exit code.
    fn wait(&self, name: &str) -> Result<i32, String>;
    /// `rm` (`-f` with `force`).
    fn remove(&self, name: &str, force: bool) -> Result<Outcome, String>;
    /// Every container the engine knows, running or not.
    fn containers(&self) -> Result<Vec<String>, String>;
    /// The docker CLI, for the commands only docker-like engines have.
    fn docker_cli(&self) -> Option<&docker_cli::DockerCli>;
    /// The network namespace the engine and its networks live in: "the
    /// host" of its containers, where the scenarios' own servers and
    /// clients run. An error if the engine shares the test's namespace.
    fn host_netns(&self) -> Result<PathBuf, String>;
    /// Creates the network `name`.
    fn create_network(&self, name: &str, options: &NetworkOptions) -> Result<(), String>;
    /// Removes the network `name`.
    fn remove_network(&self, name: &str) -> Result<(), String>;
    /// The networks the engine knows, besides its own defaults.
    fn networks(&self) -> Result<Vec<String>, String>;
    /// The host's addresses on `network`'s bridge (its gateways), IPv4
    /// first.
    fn gateways(&self, network: &Network) -> Result<Vec<IpAddr>, String>;
    /// True if `run` publishes ports (`Run::publish`); ctr cannot.
    fn publishes_ports(&self) -> bool;
}

/// Runs `command` with `stdin` (or /dev/null), killing it after `timeout`.
pub fn run_bounded(
    command: &mut Command,
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Result<Outcome, String> {
    run_bounded_input_after(command, stdin, Duration::ZERO, timeout)
}

/// [`run_bounded`], writing `stdin` (and closing it) only after `delay`.
pub fn run_bounded_input_after(
    command: &mut Command,
    stdin: Option<&[u8]>,
    delay: Duration,
    timeout: Duration,
) -> Result<Outcome, String> {
    let shown = format!("{command:?}");
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| format!("starting {shown}: {e}"))?;
    let input = stdin.map(<[u8]>::to_vec);
    let mut pipe_in = child.stdin.take();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(delay);
        if let (Some(pipe), Some(bytes)) = (pipe_in.as_mut(), input) {
            let _ = pipe.write_all(&bytes);
        }
        drop(pipe_in);
    });
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for {shown}: {e}")),
        }
    };
    let _ = writer.join();
    let outcome = Outcome {
        code: status.and_then(|s| s.code()),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    match status {
        Some(_) => Ok(outcome),
        None => Err(format!(
            "{shown} did not finish within {timeout:?}; stdout ends {:?}; stderr ends {:?}",
            tail(&outcome.stdout),
            tail(&outcome.stderr)
        )),
    }
}

/// The last 400 bytes of `text` (whole characters), for messages.
pub fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(400);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Runs `command` bounded by [`COMMAND_TIMEOUT`]; fails unless it exits 0.
pub fn run_ok(command: &mut Command, what: &str) -> Result<Outcome, String> {
    run_bounded(command, None, COMMAND_TIMEOUT)?.ok(what)
}

fn reader<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Polls `condition` every 100 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The runtimes a suite compares: runc and a husk wrapper that carries the
/// test config (engines start runtimes with an environment of their own).
pub struct Runtimes {
    /// runc's path.
    pub runc: PathBuf,
    /// The husk wrapper's path (its file name is `husk`).
    pub husk: PathBuf,
}

impl Runtimes {
    /// The path of `runtime`.
    pub fn path(&self, runtime: Runtime) -> &Path {
        match runtime {
            Runtime::Runc => &self.runc,
            Runtime::Husk => &self.husk,
        }
    }
}

/// This process's effective uid, from `/proc/self/status`.
pub fn effective_uid() -> Result<u32, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| "no effective uid in /proc/self/status".to_string())
}

/// Fails unless running as root with `program` installed.
pub fn require_root_and(program: &str) -> Result<(), String> {
    let uid = effective_uid()?;
    if uid != 0 {
        return Err(format!("engine tests need root (running as uid {uid})"));
    }
    if !Path::new(program).is_file() {
        return Err(format!(
            "{program} is not installed (hack/install-deps.sh installs it)"
        ));
    }
    Ok(())
}

/// Distinguishes the fixtures of one test process.
static NEXT_FIXTURE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Creates `<prefix><pid>-<n>` (mode 0700) for the next free `n`.
pub fn create_fixture_dir(prefix: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let pid = std::process::id();
    loop {
        let n = NEXT_FIXTURE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = PathBuf::from(format!("{prefix}{pid}-{n}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| format!("chmod {}: {e}", dir.display()))?;
                return Ok(dir);
            }
            // A directory left by an earlier process with our pid.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("creating {}: {e}", dir.display())),
        }
    }
}

/// Removes a fixture directory for good: kills the processes that still
/// name it, detaches the mounts under it, deletes it. Appends to
/// `problems` what had to be forced.
pub fn remove_fixture_dir(dir: &Path, problems: &mut Vec<String>) {
    let killed = daemon::kill_processes_naming(dir);
    if !killed.is_empty() {
        problems.push(format!("processes left running, killed: {killed:?}"));
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = crate::podman::mounts_under(&mounts, dir);
    if !mounted.is_empty() {
        problems.push(format!("mounts left, detached: {mounted:?}"));
        for mountpoint in &mounted {
            let _ = Command::new("umount").arg("-l").arg(mountpoint).status();
        }
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            problems.push(format!("removing {}: {e}", dir.display()));
        }
    }
}

/// Writes the husk wrapper (`DIR/runtimes/husk`) that sets `HUSK_CONFIG`
/// for the husk binary; returns both runtimes.
pub fn runtimes(dir: &Path, husk: &Path, config: &Path, runc: &Path) -> Result<Runtimes, String> {
    let wrapper =
        crate::podman::write_runtime_wrapper(dir, husk, &[("HUSK_CONFIG", config.as_os_str())])
            .map_err(|e| format!("writing the husk wrapper in {}: {e}", dir.display()))?;
    Ok(Runtimes {
        runc: runc.to_path_buf(),
        husk: wrapper,
    })
}

/// `Ok` without problems, else one error naming the fixture.
pub fn cleanup_result(engine: &str, dir: &Path, problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "cleaning up {engine} in {}: {}",
            dir.display(),
            problems.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn effective_uid_reads_this_process() {
        let uid = effective_uid().unwrap();

        let meta = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
        assert_eq!(uid, meta);
    }

    #[test]
    fn run_bounded_feeds_stdin_and_keeps_the_streams_apart() {
        let mut cat = Command::new("sh");
        cat.args(["-c", "cat; echo err >&2; exit 3"]);

        let out = run_bounded(&mut cat, Some(b"in\n"), Duration::from_secs(10)).unwrap();

        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "in\n");
        assert_eq!(out.stderr, "err\n");
    }

    #[test]
    fn run_bounded_kills_a_command_that_hangs() {
        let started = Instant::now();

        let err = run_bounded(
            Command::new("sleep").arg("100"),
            None,
            Duration::from_millis(200),
        )
        .unwrap_err();

        assert!(err.contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn eventually_gives_up_after_the_timeout() {
        assert!(!eventually(Duration::from_millis(150), || false));
        let mut calls = 0;
        assert!(eventually(Duration::from_secs(5), || {
            calls += 1;
            calls == 3
        }));
    }
}
