//! Pods and containers as kubelet asks for them: the configs
//! ([`pod_config`], [`container_config`]) and a running pod that removes
//! itself when dropped ([`TestPod`]), so a failed scenario leaves nothing
//! for the next one.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ImageSpec,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxState, PodSandboxStatusResponse,
};

use super::client::{CriClient, CriResult};
use super::fixture::{CriFixture, BUSYBOX};
use super::leftovers::netns_of_spec;
use super::Handler;

/// The Kubernetes namespace of every test pod.
pub const POD_NAMESPACE: &str = "husk-cri";

/// How long a container may take to start or stop.
pub const CONTAINER_TIMEOUT: Duration = Duration::from_secs(90);

/// The namespaces kubelet asks for: the pod's network and IPC, a PID
/// namespace per container.
fn namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The config of the pod `name` (uid `<name>-uid`, attempt 0) with its log
/// directory and cgroup parent in the fixture.
pub fn pod_config(fixture: &CriFixture, name: &str) -> Result<PodSandboxConfig, String> {
    let uid = format!("{name}-uid");
    Ok(PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.clone(),
            namespace: POD_NAMESPACE.to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: fixture.pod_log_dir(name)?.to_string_lossy().into_owned(),
        labels: HashMap::from([("husk-test".to_string(), "cri".to_string())]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: fixture.cgroup_parent(&uid),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A busybox container `name` (attempt 0) running `command`, logging to
/// `<name>-0.log` in the pod's log directory.
pub fn container_config(name: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|a| a.to_string()).collect(),
        log_path: format!("{name}-0.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The JSON in the `info` of a verbose status (containerd's
/// `SandboxInfo`/`ContainerInfo`).
pub fn verbose_info(info: &HashMap<String, String>) -> Result<serde_json::Value, String> {
    let text = info
        .get("info")
        .ok_or_else(|| format!("no \"info\" in the verbose status: {info:?}"))?;
    serde_json::from_str(text).map_err(|e| format!("the verbose info is not JSON ({e}): {text}"))
}

/// Waits until the container `id` is in `state`; its status then.
pub fn wait_container_state(
    client: &CriClient,
    id: &str,
    state: ContainerState,
    timeout: Duration,
) -> Result<ContainerStatus, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = client
            .container_status(id, false)?
            .status
            .ok_or_else(|| format!("no status for the container {id}"))?;
        if status.state == state as i32 {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the container {id} is not {state:?} after {timeout:?}: {status:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pod this test runs; stopped and removed on drop.
pub struct TestPod<'f> {
    fixture: &'f CriFixture,
    /// The sandbox id.
    pub id: String,
    /// Its config (CreateContainer needs it again).
    pub config: PodSandboxConfig,
    /// Its runtime handler.
    pub handler: Handler,
    /// Its network namespace (from the sandbox's spec).
    pub netns: Option<PathBuf>,
    removed: bool,
}

impl<'f> TestPod<'f> {
    /// `RunPodSandbox` of `config` with `handler`.
    pub fn run(
        fixture: &'f CriFixture,
        handler: Handler,
        config: PodSandboxConfig,
    ) -> Result<TestPod<'f>, String> {
        let id = fixture.client().run_pod_sandbox(&config, handler.name())?;
        let mut pod = TestPod {
            fixture,
            id,
            config,
            handler,
            netns: None,
            removed: false,
        };
        let info = pod.info()?;
        pod.netns = netns_of_spec(&info["runtimeSpec"]);
        fixture.remember_pod(&pod.id, pod.netns.clone());
        Ok(pod)
    }

    /// The fixture's client.
    pub fn client(&self) -> &'f CriClient {
        self.fixture.client()
    }

    /// `PodSandboxStatus`, verbose.
    pub fn status(&self) -> Result<PodSandboxStatusResponse, String> {
        Ok(self.client().pod_sandbox_status(&self.id, true)?)
    }

    /// containerd's verbose info on the sandbox (`SandboxInfo`).
    pub fn info(&self) -> Result<serde_json::Value, String> {
        verbose_info(&self.status()?.info)
    }

    /// True while the sandbox is ready.
    pub fn is_ready(&self) -> Result<bool, String> {
        let status = self.status()?.status.ok_or("no sandbox status")?;
        Ok(status.state == PodSandboxState::SandboxReady as i32)
    }

    /// The pod's IPv4 address from its status.
    pub fn ip(&self) -> Result<Ipv4Addr, String> {
        let status = self.status()?.status.ok_or("no sandbox status")?;
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        ip.parse()
            .map_err(|e| format!("the pod's IP {ip:?} is not IPv4: {e}"))
    }

    /// `CreateContainer` of `config` in this pod.
    pub fn create(&self, config: &ContainerConfig) -> CriResult<String> {
        let id = self
            .client()
            .create_container(&self.id, config, &self.config)?;
        self.fixture.remember_container(&self.id, &id);
        Ok(id)
    }

    /// Creates and starts `config`, waiting until it runs; its id.
    pub fn start(&self, config: &ContainerConfig) -> Result<String, String> {
        let id = self.create(config)?;
        self.client().start_container(&id)?;
        wait_container_state(
            self.client(),
            &id,
            ContainerState::ContainerRunning,
            CONTAINER_TIMEOUT,
        )?;
        Ok(id)
    }

    /// Creates and starts `config` and waits until it exited; its status.
    pub fn run_to_exit(&self, config: &ContainerConfig) -> Result<ContainerStatus, String> {
        let id = self.create(config)?;
        self.client().start_container(&id)?;
        wait_container_state(
            self.client(),
            &id,
            ContainerState::ContainerExited,
            CONTAINER_TIMEOUT,
        )
    }

    /// `StopPodSandbox` then `RemovePodSandbox`.
    pub fn remove(mut self) -> Result<(), String> {
        self.removed = true;
        self.client().stop_pod_sandbox(&self.id)?;
        self.client().remove_pod_sandbox(&self.id)?;
        Ok(())
    }
}

impl Drop for TestPod<'_> {
    fn drop(&mut self) {
        if !self.removed {
            let client = self.client();
            if let Err(e) = client
                .stop_pod_sandbox(&self.id)
                .and_then(|()| client.remove_pod_sandbox(&self.id))
            {
                eprintln!("removing the pod {}: {e}", self.id);
            }
        }
    }
}
