//! A private docker: dockerd (which starts its own containerd) in a network
//! namespace of its own, with data-root, exec-root, pid file, socket and
//! client config under `/var/tmp/husk-docker-<pid>-<n>`, and the runtimes
//! `runc` (built in) and `husk` (daemon.json) to choose from. The images
//! come from `hack/build-images.sh` through `docker load`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::daemon::{Daemon, TestNetns};
use super::docker_cli::{DockerCli, RuntimeChoice};
use super::{
    cleanup_result, create_fixture_dir, images, remove_fixture_dir, require_root_and, Image,
    Runtimes,
};

/// Fixture directories are `<DIR_PREFIX><pid>-<n>`.
pub const DIR_PREFIX: &str = "/var/tmp/husk-docker-";

/// The daemon, from Debian's docker.io.
pub const DOCKERD: &str = "/usr/sbin/dockerd";

/// The client from the same package (the one on $PATH may be newer).
pub const DOCKER: &str = "/usr/bin/docker";

/// A private docker; see the module documentation.
pub struct Docker {
    dir: PathBuf,
    cli: DockerCli,
    daemon: Option<Daemon>,
    netns: Option<TestNetns>,
    cleaned: bool,
}

impl Docker {
    /// Starts dockerd with the husk wrapper in `runtimes` registered as
    /// `husk`, and loads both images; or says why docker tests cannot run.
    pub fn setup(
        runtimes: impl FnOnce(&Path) -> Result<Runtimes, String>,
    ) -> Result<Docker, String> {
        require_root_and(DOCKERD)?;
        require_root_and(DOCKER)?;
        let busybox = images::archive(Image::Busybox)?;
        let debian = images::archive(Image::Debian)?;
        let dir = create_fixture_dir(DIR_PREFIX)?;
        let socket = dir.join("docker.sock");
        let cli = DockerCli {
            name: "docker",
            program: DOCKER.into(),
            env: vec![(
                "DOCKER_HOST".into(),
                format!("unix://{}", socket.display()).into(),
            )],
            env_remove: vec!["DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"],
            global_args: vec!["--config".into(), dir.join("client").into()],
            netns: None,
            host_netns: None,
            runtime: RuntimeChoice::RunName,
        };
        let mut docker = Docker {
            dir,
            cli,
            daemon: None,
            netns: None,
            cleaned: false,
        };
        let runtimes = runtimes(&docker.dir)?;
        let config = docker.dir.join("daemon.json");
        std::fs::write(&config, daemon_json(&docker.dir, &runtimes.husk))
            .map_err(|e| format!("writing {}: {e}", config.display()))?;
        let netns = docker.netns.insert(TestNetns::for_fixture(&docker.dir)?);
        docker.cli.host_netns = Some(netns.path());
        let mut command = Command::new(DOCKERD);
        command.arg("--config-file").arg(&config);
        netns.enter(&mut command)?;
        docker.daemon = Some(Daemon::start(
            "dockerd",
            command,
            &docker.dir.join("dockerd.log"),
            &socket,
        )?);
        for archive in [busybox, debian] {
            docker
                .cli
                .ok(&["load", "--quiet", "--input", &archive.to_string_lossy()])?;
        }
        Ok(docker)
    }

    /// The client.
    pub fn cli(&self) -> &DockerCli {
        &self.cli
    }

    /// Removes every container, stops the daemon, removes everything the
    /// fixture created; says what had to be forced.
    pub fn cleanup(mut self) -> Result<(), String> {
        self.cleaned = true;
        self.clean()
    }

    fn clean(&mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.daemon.is_some() {
            match self.cli.ok(&["ps", "--all", "--quiet"]) {
                Ok(out) => {
                    let ids: Vec<&str> = out.stdout.split_whitespace().collect();
                    if !ids.is_empty() {
                        let mut args = vec!["rm", "--force"];
                        args.extend(&ids);
                        if let Err(e) = self.cli.ok(&args) {
                            problems.push(e);
                        }
                    }
                }
                Err(e) => problems.push(e),
            }
            if let Err(e) = self.cli.ok(&["network", "prune", "--force"]) {
                problems.push(e);
            }
        }
        if let Some(mut daemon) = self.daemon.take() {
            if !daemon.stop() {
                problems.push(format!("dockerd needed SIGKILL:\n{}", daemon.log_tail()));
            }
        }
        // dockerd binds its own network namespace here for host-network
        // containers and leaves the mount when it stops.
        let host_sandbox = self.dir.join("exec/netns/default");
        if host_sandbox.exists() {
            let _ = Command::new("umount").arg(&host_sandbox).output();
        }
        remove_fixture_dir(&self.dir, &mut problems);
        self.netns = None;
        cleanup_result("docker", &self.dir, problems)
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if !self.cleaned {
            if let Err(e) = self.clean() {
                eprintln!("{e}");
            }
        }
    }
}

/// The daemon.json of a fixture in `dir` with husk at `husk`.
pub fn daemon_json(dir: &Path, husk: &Path) -> String {
    let path = |sub: &str| dir.join(sub).to_string_lossy().into_owned();
    let config = serde_json::json!({
        "data-root": path("data"),
        "exec-root": path("exec"),
        "pidfile": path("docker.pid"),
        "hosts": [format!("unix://{}", path("docker.sock"))],
        "runtimes": {"husk": {"path": husk.to_string_lossy()}},
        "log-level": "warn",
    });
    serde_json::to_string_pretty(&config).expect("JSON serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_json_keeps_all_state_in_the_dir_and_names_husk() {
        let text = daemon_json(Path::new("/d"), Path::new("/d/runtimes/husk"));

        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["data-root"], "/d/data");
        assert_eq!(json["exec-root"], "/d/exec");
        assert_eq!(json["pidfile"], "/d/docker.pid");
        assert_eq!(json["hosts"][0], "unix:///d/docker.sock");
        assert_eq!(json["runtimes"]["husk"]["path"], "/d/runtimes/husk");
    }
}
