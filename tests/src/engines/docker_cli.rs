//! The docker command line, which podman speaks too: one [`Engine`] for
//! both, differing only in how the runtime is chosen (podman: a global
//! `--runtime PATH`; docker: `run --runtime NAME` from daemon.json) and in
//! the environment and global flags that point the client at the
//! fixture's state.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use super::{
    run_bounded, run_ok, Engine, Exec, Network, NetworkOptions, Outcome, Run, Runtime, Runtimes,
    COMMAND_TIMEOUT,
};

/// How `run` picks the runtime.
pub enum RuntimeChoice {
    /// `podman --runtime PATH run ...`.
    GlobalPath(Runtimes),
    /// `docker run --runtime NAME ...` (`runc` or `husk`, from daemon.json).
    RunName,
}

/// A docker-compatible client.
pub struct DockerCli {
    /// `podman` or `docker`.
    pub name: &'static str,
    /// The client binary.
    pub program: PathBuf,
    /// Variables set on every command.
    pub env: Vec<(OsString, OsString)>,
    /// Variables removed from every command.
    pub env_remove: Vec<&'static str>,
    /// Flags before the subcommand.
    pub global_args: Vec<OsString>,
    /// A network namespace every command starts in.
    pub netns: Option<PathBuf>,
    /// The network namespace the engine's networks live in.
    pub host_netns: Option<PathBuf>,
    /// How `run` picks the runtime.
    pub runtime: RuntimeChoice,
}

impl DockerCli {
    /// The client with the fixture's environment and global flags.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        for name in &self.env_remove {
            command.env_remove(name);
        }
        command.args(&self.global_args);
        if let Some(path) = &self.netns {
            if let Err(e) = super::daemon::enter_netns(&mut command, path) {
                panic!("{e}");
            }
        }
        command
    }

    /// Runs `client ARGS`, bounded; any exit code.
    pub fn output(&self, args: &[&str]) -> Result<Outcome, String> {
        run_bounded(self.command().args(args), None, COMMAND_TIMEOUT)
    }

    /// Runs `client ARGS`, bounded; fails unless it exits 0.
    pub fn ok(&self, args: &[&str]) -> Result<Outcome, String> {
        run_ok(
            self.command().args(args),
            &format!("{} {}", self.name, args.join(" ")),
        )
    }

    /// How this client spells the network commands.
    fn dialect(&self) -> NetworkDialect {
        if self.name == "podman" {
            NetworkDialect::PODMAN
        } else {
            NetworkDialect::DOCKER
        }
    }

    /// `inspect --format FORMAT NAME`, trimmed.
    pub fn inspect(&self, name: &str, format: &str) -> Result<String, String> {
        Ok(self
            .ok(&["inspect", "--format", format, name])?
            .stdout
            .trim()
            .to_string())
    }
}

/// Where podman and docker differ in the network commands.
struct NetworkDialect {
    /// The network a container joins without `--network`.
    default_network: &'static str,
    /// Networks every installation has.
    builtin: &'static [&'static str],
    /// `network create --opt KEY=MTU`.
    mtu_option: &'static str,
    /// The `network inspect` template listing the gateways.
    gateways: &'static str,
    /// The template naming the bridge, whose addresses are the gateways
    /// where the first template shows none (docker's default bridge).
    bridge: &'static str,
}

impl NetworkDialect {
    const PODMAN: NetworkDialect = NetworkDialect {
        default_network: "podman",
        builtin: &["podman"],
        mtu_option: "mtu",
        gateways: "{{range .Subnets}}{{.Gateway}} {{end}}",
        bridge: "{{.NetworkInterface}}",
    };
    const DOCKER: NetworkDialect = NetworkDialect {
        default_network: "bridge",
        builtin: &["bridge", "host", "none"],
        mtu_option: "com.docker.network.driver.mtu",
        gateways: "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
        bridge: "{{index .Options \"com.docker.network.bridge.name\"}}",
    };
}

/// The arguments of `network create` for `name` with `options`, in the
/// spelling of `mtu_option`.
fn network_create_args(name: &str, options: &NetworkOptions, mtu_option: &str) -> Vec<String> {
    let mut args = vec!["network".to_string(), "create".to_string()];
    if let Some(mtu) = options.mtu {
        args.push(format!("--opt={mtu_option}={mtu}"));
    }
    if options.subnets.iter().any(|s| s.contains(':')) {
        args.push("--ipv6".into());
    }
    for subnet in &options.subnets {
        args.push(format!("--subnet={subnet}"));
    }
    args.push(name.to_string());
    args
}

/// The addresses in `text` (separated by white space), IPv4 first.
pub fn addresses(text: &str) -> Vec<IpAddr> {
    let mut found: Vec<IpAddr> = text
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    found.sort_by_key(IpAddr::is_ipv6);
    found
}

/// The `run` flags for `run` (after the subcommand, before the image).
pub fn run_flags(run: &Run) -> Vec<String> {
    let mut flags = vec![format!("--name={}", run.name)];
    let mut flag = |on: bool, name: &str| {
        if on {
            flags.push(name.to_string());
        }
    };
    flag(run.remove, "--rm");
    flag(run.detach, "--detach");
    flag(run.interactive, "--interactive");
    flag(run.tty, "--tty");
    flag(run.read_only, "--read-only");
    match &run.network {
        Network::None => flags.push("--network=none".into()),
        Network::Default => {}
        Network::Named(name) => flags.push(format!("--network={name}")),
        Network::Host => flags.push("--network=host".into()),
    }
    for (host, container) in &run.publish {
        flags.push(format!("--publish={host}:{container}"));
    }
    for env in &run.env {
        flags.push(format!("--env={env}"));
    }
    let options = [
        ("--workdir", run.workdir.clone()),
        ("--user", run.user.clone()),
        ("--hostname", run.hostname.clone()),
        (
            "--ulimit",
            run.nofile.map(|(s, h)| format!("nofile={s}:{h}")),
        ),
        ("--memory", run.memory_mib.map(|m| format!("{m}m"))),
        ("--cpus", run.cpus.map(|c| c.to_string())),
    ];
    for (name, value) in options {
        if let Some(value) = value {
            flags.push(format!("{name}={value}"));
        }
    }
    if run.nofile.is_some() {
        // With any --ulimit, podman fills in nproc=1048576, which root
        // without CAP_SYS_RESOURCE (these hosts) may not set.
        flags.push("--ulimit=nproc=32768:32768".into());
    }
    for v in &run.volumes {
        let mode = if v.read_only { ":ro" } else { "" };
        flags.push(format!(
            "--volume={}:{}{mode}",
            v.host.display(),
            v.container
        ));
    }
    flags
}

impl Engine for DockerCli {
    fn name(&self) -> &'static str {
        self.name
    }

    fn run(&self, runtime: Runtime, run: &Run) -> Command {
        let mut command = self.command();
        match &self.runtime {
            RuntimeChoice::GlobalPath(paths) => {
                command.arg("--runtime").arg(paths.path(runtime)).arg("run");
            }
            RuntimeChoice::RunName => {
                command
                    .arg("run")
                    .arg(format!("--runtime={}", runtime.name()));
            }
        }
        command
            .args(run_flags(run))
            .arg(run.image.reference())
            .args(&run.args);
        command
    }

    fn exec(&self, name: &str, exec: &Exec) -> Command {
        let mut command = self.command();
        command.arg("exec");
        if exec.interactive {
            command.arg("--interactive");
        }
        if exec.tty {
            command.arg("--tty");
        }
        command.arg(name).args(&exec.args);
        command
    }

    fn logs(&self, name: &str) -> Result<Outcome, String> {
        self.ok(&["logs", name])
    }

    fn stop(&self, name: &str, timeout_secs: u32) -> Result<Outcome, String> {
        self.ok(&["stop", "--time", &timeout_secs.to_string(), name])
    }

    fn kill(&self, name: &str, signal: &str) -> Result<Outcome, String> {
        self.ok(&["kill", "--signal", signal, name])
    }

    fn is_running(&self, name: &str) -> bool {
        self.inspect(name, "{{.State.Running}}")
            .is_ok_and(|r| r == "true")
    }

    fn wait(&self, name: &str) -> Result<i32, String> {
        let out = self.ok(&["wait", name])?;
        out.stdout
            .trim()
            .parse()
            .map_err(|_| format!("{} wait printed {:?}", self.name, out.stdout))
    }

    fn remove(&self, name: &str, force: bool) -> Result<Outcome, String> {
        if force && self.name == "podman" {
            // Like docker's: kill at once, not after the stop timeout.
            self.ok(&["rm", "--force", "--time=0", name])
        } else if force {
            self.ok(&["rm", "--force", name])
        } else {
            self.ok(&["rm", name])
        }
    }

    fn containers(&self) -> Result<Vec<String>, String> {
        let out = self.ok(&["ps", "--all", "--format", "{{.Names}}"])?;
        Ok(out.stdout.split_whitespace().map(str::to_owned).collect())
    }

    fn docker_cli(&self) -> Option<&DockerCli> {
        Some(self)
    }

    fn host_netns(&self) -> Result<PathBuf, String> {
        self.host_netns
            .clone()
            .ok_or_else(|| format!("{} runs in the test's own network namespace", self.name))
    }

    fn create_network(&self, name: &str, options: &NetworkOptions) -> Result<(), String> {
        let args = network_create_args(name, options, self.dialect().mtu_option);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&args).map(drop)
    }

    fn remove_network(&self, name: &str) -> Result<(), String> {
        self.ok(&["network", "rm", name]).map(drop)
    }

    fn networks(&self) -> Result<Vec<String>, String> {
        let out = self.ok(&["network", "ls", "--format", "{{.Name}}"])?;
        let builtin = self.dialect().builtin;
        Ok(out
            .stdout
            .split_whitespace()
            .filter(|name| !builtin.contains(name))
            .map(str::to_owned)
            .collect())
    }

    fn gateways(&self, network: &Network) -> Result<Vec<IpAddr>, String> {
        let dialect = self.dialect();
        let name = match network {
            Network::Default => dialect.default_network,
            Network::Named(name) => name,
            other => return Err(format!("{other:?} has no gateway")),
        };
        let out = self.ok(&["network", "inspect", "--format", dialect.gateways, name])?;
        let found = addresses(&out.stdout);
        if !found.is_empty() {
            return Ok(found);
        }
        let bridge = self.ok(&["network", "inspect", "--format", dialect.bridge, name])?;
        let bridge = bridge.stdout.trim();
        let found = super::hostnet::interface_addresses(&self.host_netns()?, bridge)?;
        if found.is_empty() {
            return Err(format!(
                "{} network {name} shows no gateway ({:?}) and its bridge {bridge:?} no address",
                self.name, out.stdout
            ));
        }
        Ok(found)
    }

    fn publishes_ports(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::{Image, Volume};

    #[test]
    fn run_flags_spell_every_option_and_default_to_no_network() {
        let mut run = Run::new("c1", Image::Busybox, &["true"]);
        run.interactive = true;
        run.env = vec!["A=b".into()];
        run.user = Some("65534:65534".into());
        run.nofile = Some((100, 200));
        run.memory_mib = Some(256);
        run.cpus = Some(1);
        run.volumes = vec![Volume {
            host: "/h".into(),
            container: "/data".into(),
            read_only: true,
        }];

        let flags = run_flags(&run);

        for expected in [
            "--name=c1",
            "--rm",
            "--interactive",
            "--network=none",
            "--env=A=b",
            "--user=65534:65534",
            "--ulimit=nofile=100:200",
            "--memory=256m",
            "--cpus=1",
            "--volume=/h:/data:ro",
        ] {
            assert!(
                flags.iter().any(|f| f == expected),
                "{expected} in {flags:?}"
            );
        }
        assert!(!flags.iter().any(|f| f == "--tty" || f == "--detach"));
    }

    #[test]
    fn the_default_network_leaves_out_the_network_flag() {
        let mut run = Run::new("c1", Image::Busybox, &["true"]);
        run.network = Network::Default;

        assert!(!run_flags(&run).iter().any(|f| f.starts_with("--network")));
    }

    #[test]
    fn run_flags_name_the_network_and_the_published_ports() {
        let mut run = Run::new("c1", Image::Busybox, &["true"]);
        run.network = Network::Named("n1".into());
        run.publish = vec![(18080, 80)];

        let flags = run_flags(&run);

        assert!(flags.iter().any(|f| f == "--network=n1"), "{flags:?}");
        assert!(flags.iter().any(|f| f == "--publish=18080:80"), "{flags:?}");
        run.network = Network::Host;
        assert!(run_flags(&run).iter().any(|f| f == "--network=host"));
    }

    #[test]
    fn network_create_args_spell_the_mtu_and_a_dual_stack() {
        let options = NetworkOptions {
            mtu: Some(1400),
            subnets: vec!["10.1.0.0/24".into(), "fd00:1::/64".into()],
        };

        let args = network_create_args("n1", &options, "mtu");

        assert_eq!(
            args,
            [
                "network",
                "create",
                "--opt=mtu=1400",
                "--ipv6",
                "--subnet=10.1.0.0/24",
                "--subnet=fd00:1::/64",
                "n1"
            ]
        );
    }

    #[test]
    fn addresses_put_ipv4_first_and_skip_the_rest() {
        assert_eq!(
            addresses("fd00::1 10.88.0.1 <no value>\n"),
            [
                "10.88.0.1".parse::<IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
    }
}
