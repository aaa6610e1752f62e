//! A private containerd 1.6 with its CRI plugin on, as a node's would be
//! for kubelet: Debian's `/usr/bin/containerd` in a network namespace of
//! its own (where the CNI bridge, the pods' veths, portmap's iptables
//! rules and the stream server live, and vanish with it), with root,
//! state, sockets, runc's root, the CNI config and leases under
//! `/var/tmp/husk-cri-<pid>-<n>` ([`super::config`]), the sandbox image
//! built here ([`super::pause`]) and the busybox test image imported into
//! CRI's `k8s.io` namespace with `ctr`.
//!
//! containerd runs with `target/debug` first on its `PATH` (where the husk
//! shim and the binaries it runs are built) and `HUSK_CONFIG` set to the
//! test config, which the shims it starts inherit.
//!
//! Outside the directory containerd still uses, by its design: each pod's
//! network namespace (`/var/run/netns/cni-<uuid>`), shim sockets
//! (`/run/containerd/s/<sha256>`), libcni's result cache (`/var/lib/cni`)
//! and the pods' cgroups (under `/<fixture name>` here, through each pod's
//! `cgroup_parent`), and what a handler keeps of its own
//! ([`super::Handler::state_roots`]). A pod's removal removes them;
//! [`CriFixture::cleanup`] removes what is left and says so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use super::client::CriClient;
use super::config::{self, ConfigPaths, PAUSE_IMAGE};
use super::leftovers;
use crate::engines::daemon::{Daemon, TestNetns};
use crate::engines::{
    cleanup_result, create_fixture_dir, eventually, images, remove_fixture_dir, require_root_and,
    run_ok, Image,
};

/// Fixture directories are `<DIR_PREFIX><pid>-<n>`.
pub const DIR_PREFIX: &str = "/var/tmp/husk-cri-";
/// Debian's containerd.
pub const CONTAINERD: &str = "/usr/bin/containerd";
/// Its client, for importing images.
pub const CTR: &str = "/usr/bin/ctr";
/// The containerd namespace of everything CRI makes.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// The busybox test image the scenarios' containers run.
pub const BUSYBOX: &str = "localhost/husk-bb:latest";

/// A private CRI containerd; see the module documentation.
pub struct CriFixture {
    dir: PathBuf,
    paths: ConfigPaths,
    netns: Option<TestNetns>,
    daemon: Option<Daemon>,
    client: Option<CriClient>,
    pods: Mutex<Vec<PodRecord>>,
    cleaned: bool,
}

/// A pod the fixture ran, for cleanup to remove what its removal did not.
struct PodRecord {
    id: String,
    netns: Option<PathBuf>,
    containers: Vec<String>,
}

impl CriFixture {
    /// Starts containerd with CRI, imports the images and waits until CRI
    /// reports the runtime and the network ready; or says why CRI tests
    /// cannot run here.
    pub fn setup() -> Result<CriFixture, String> {
        require_root_and(CONTAINERD)?;
        require_root_and(CTR)?;
        config::check_cni_plugins()?;
        let busybox = images::archive(Image::Busybox)?;
        let dir = create_fixture_dir(DIR_PREFIX)?;
        let paths = ConfigPaths {
            dir: dir.clone(),
            husk_shim: super::husk_shim_path(),
        };
        let mut fixture = CriFixture {
            dir,
            paths,
            netns: None,
            daemon: None,
            client: None,
            pods: Mutex::new(Vec::new()),
            cleaned: false,
        };
        fixture.write_configs()?;
        let pause = fixture.dir.join("pause.tar");
        super::pause::build_archive(&fixture.dir.join("pause-build"), &pause)?;
        fixture.start_containerd()?;
        for archive in [&pause, &busybox] {
            run_ok(
                fixture.ctr().args(["image", "import"]).arg(archive),
                "ctr image import",
            )?;
        }
        let client = fixture
            .client
            .insert(CriClient::connect(&fixture.paths.socket())?);
        let ready = eventually(Duration::from_secs(60), || {
            client.ready().unwrap_or(false)
                && client.has_image(PAUSE_IMAGE).unwrap_or(false)
                && client.has_image(BUSYBOX).unwrap_or(false)
        });
        if !ready {
            return Err(format!(
                "CRI did not report ready with both images within 60 s: {:?}; containerd's log ends:\n{}",
                client.ready(),
                fixture.log_tail()
            ));
        }
        Ok(fixture)
    }

    fn write_configs(&self) -> Result<(), String> {
        let write = |path: &Path, text: String| {
            std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
        };
        write(
            &self.dir.join("config.toml"),
            config::config_toml(&self.paths),
        )?;
        let conf_dir = self.paths.cni_conf_dir();
        std::fs::create_dir_all(&conf_dir).map_err(|e| e.to_string())?;
        let conflist = config::conflist(&self.paths.ipam_dir());
        write(
            &conf_dir.join(format!("10-{}.conflist", config::NETWORK)),
            serde_json::to_string_pretty(&conflist).expect("JSON"),
        )?;
        std::fs::create_dir_all(self.dir.join("pods")).map_err(|e| e.to_string())
    }

    fn start_containerd(&mut self) -> Result<(), String> {
        let netns = self.netns.insert(TestNetns::for_fixture(&self.dir)?);
        let mut command = Command::new(CONTAINERD);
        command.arg("--config").arg(self.dir.join("config.toml"));
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut search = vec![crate::debug_dir()];
        search.extend(std::env::split_paths(&path));
        command.env(
            "PATH",
            std::env::join_paths(search).map_err(|e| e.to_string())?,
        );
        if let Some(config) = std::env::var_os(crate::TEST_CONFIG_ENV) {
            command.env("HUSK_CONFIG", config);
        }
        netns.enter(&mut command)?;
        self.daemon = Some(Daemon::start(
            "containerd",
            command,
            &self.log_path(),
            &self.paths.socket(),
        )?);
        Ok(())
    }

    /// `ctr` on this containerd in CRI's namespace.
    pub fn ctr(&self) -> Command {
        let mut command = Command::new(CTR);
        command
            .arg("--address")
            .arg(self.paths.socket())
            .arg("--namespace")
            .arg(K8S_NAMESPACE);
        command
    }

    /// The CRI client.
    pub fn client(&self) -> &CriClient {
        self.client.as_ref().expect("set up with a client")
    }

    /// The fixture directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's gRPC socket, which its shims' command lines name.
    pub fn socket(&self) -> PathBuf {
        self.paths.socket()
    }

    /// containerd's network namespace: "the host" of the pods.
    pub fn netns(&self) -> PathBuf {
        self.netns
            .as_ref()
            .map(TestNetns::path)
            .expect("set up with a network namespace")
    }

    /// The fixture's name, `husk-cri-<pid>-<n>`.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The log directory of the pod `pod_name` (created).
    pub fn pod_log_dir(&self, pod_name: &str) -> Result<PathBuf, String> {
        let dir = self.dir.join("pods").join(pod_name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// The cgroup parent of the pod with `uid`, as kubelet's cgroupfs
    /// driver makes one (`/kubepods/pod<uid>`), under the fixture's name.
    pub fn cgroup_parent(&self, uid: &str) -> String {
        format!("/{}/pod{uid}", self.name())
    }

    /// Remembers a pod (its sandbox id and network namespace), so that
    /// cleanup can remove what the pod's removal did not.
    pub fn remember_pod(&self, id: &str, netns: Option<PathBuf>) {
        self.pods.lock().expect("the pod list").push(PodRecord {
            id: id.to_string(),
            netns,
            containers: Vec::new(),
        });
    }

    /// Remembers a container of the pod `pod_id` (a shim may name a socket
    /// or state after it, not after its pod).
    pub fn remember_container(&self, pod_id: &str, id: &str) {
        let mut pods = self.pods.lock().expect("the pod list");
        if let Some(pod) = pods.iter_mut().find(|p| p.id == pod_id) {
            pod.containers.push(id.to_string());
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// The end of containerd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        match &self.daemon {
            Some(daemon) => daemon.log_tail(),
            None => String::new(),
        }
    }

    /// Removes every pod, stops containerd, removes what the fixture made;
    /// an error says what had to be forced.
    pub fn cleanup(mut self) -> Result<(), String> {
        self.cleaned = true;
        self.clean()
    }

    fn clean(&mut self) -> Result<(), String> {
        let mut problems = Vec::new();
        if let Some(client) = &self.client {
            self.remove_all_pods(client, &mut problems);
        }
        self.client = None;
        if let Some(mut daemon) = self.daemon.take() {
            if !daemon.stop() {
                problems.push(format!("containerd needed SIGKILL:\n{}", daemon.log_tail()));
            }
        }
        let cgroups = leftovers::cgroup_dirs_under(&format!("/{}", self.name()));
        let killed = leftovers::kill_cgroup_processes(&cgroups);
        if !killed.is_empty() {
            problems.push(format!(
                "container processes left running, killed: {killed:?}"
            ));
        }
        self.kill_what_shims_left_running(&mut problems);
        remove_fixture_dir(&self.dir, &mut problems);
        let pods: Vec<PodRecord> = self.pods.lock().expect("the pod list").drain(..).collect();
        for pod in pods {
            self.remove_pod_traces(&pod, &mut problems);
        }
        self.netns = None;
        for dir in cgroups.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
        cleanup_result("the CRI containerd", &self.dir, problems)
    }

    /// Kills what the shims still alive run (husk's VMMs and helpers do
    /// not name the fixture; SIGKILLing their shim would orphan them).
    fn kill_what_shims_left_running(&self, problems: &mut Vec<String>) {
        let dir = self.dir.to_string_lossy().into_owned();
        for shim in leftovers::processes_naming(&[&dir]) {
            let below: Vec<u32> = leftovers::descendants_of(shim.pid)
                .iter()
                .map(|p| p.pid)
                .collect();
            for &pid in &below {
                // SAFETY: kill takes no pointers.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            if !below.is_empty() {
                problems.push(format!(
                    "the processes of {:?} left running, killed: {below:?}",
                    shim.args
                ));
            }
        }
    }

    /// Removes a pod's network namespace, shim socket and handler state
    /// where its removal left them.
    fn remove_pod_traces(&self, pod: &PodRecord, problems: &mut Vec<String>) {
        if let Some(netns) = pod.netns.as_ref().filter(|n| n.exists()) {
            problems.push(format!("pod network namespace {} left", netns.display()));
            let _ = Command::new("umount").arg("-l").arg(netns).status();
            let _ = std::fs::remove_file(netns);
        }
        for id in std::iter::once(&pod.id).chain(&pod.containers) {
            if let Ok(socket) = leftovers::shim_socket(&self.paths.socket(), id) {
                if std::fs::remove_file(&socket).is_ok() {
                    problems.push(format!("shim socket {} left", socket.display()));
                }
            }
            for handler in [super::Handler::Runc, super::Handler::Husk] {
                for root in handler.state_roots() {
                    let state = Path::new(root).join(id);
                    if state.exists() {
                        problems.push(format!("{} left", state.display()));
                        let _ = std::fs::remove_dir_all(&state);
                    }
                }
            }
        }
    }

    fn remove_all_pods(&self, client: &CriClient, problems: &mut Vec<String>) {
        match client.list_pod_sandbox(None) {
            Ok(pods) if pods.is_empty() => {}
            Ok(pods) => {
                let ids: Vec<String> = pods.into_iter().map(|p| p.id).collect();
                problems.push(format!("pods left, removed: {ids:?}"));
                for id in ids {
                    if let Err(e) = client
                        .stop_pod_sandbox(&id)
                        .and_then(|()| client.remove_pod_sandbox(&id))
                    {
                        problems.push(e.to_string());
                    }
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
}

impl Drop for CriFixture {
    fn drop(&mut self) {
        if !self.cleaned {
            if let Err(e) = self.clean() {
                eprintln!("{e}");
            }
        }
    }
}
