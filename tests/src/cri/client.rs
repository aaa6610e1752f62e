//! A synchronous CRI v1 client for containerd's socket: the generated
//! `k8s-cri` clients (tonic) over a unix socket, driven by a small tokio
//! runtime of its own, every call bounded by [`CALL_TIMEOUT`]. Each method
//! is one CRI call, named as kubelet's `RuntimeService` names it; a failed
//! call keeps its gRPC status ([`CriError`]) so tests can check its code.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    AttachRequest, ContainerConfig, ContainerFilter, ContainerStats, ContainerStatsFilter,
    ContainerStatusResponse, CreateContainerRequest, ExecRequest, ExecSyncRequest,
    ExecSyncResponse, ImageSpec, ImageStatusRequest, ListContainerStatsRequest,
    ListContainersRequest, ListPodSandboxRequest, PodSandbox, PodSandboxConfig, PodSandboxFilter,
    PodSandboxStatusRequest, PodSandboxStatusResponse, PortForwardRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StatusRequest,
    StopContainerRequest, StopPodSandboxRequest, VersionRequest, VersionResponse,
};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

/// How long one CRI call may take (RunPodSandbox boots a VM under husk).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A failed CRI call: which, and the status containerd answered.
#[derive(Debug, Clone)]
pub struct CriError {
    /// The call (`RunPodSandbox`, ...).
    pub call: &'static str,
    /// containerd's answer.
    pub status: Status,
}

impl CriError {
    /// The gRPC code.
    pub fn code(&self) -> Code {
        self.status.code()
    }

    /// containerd's message.
    pub fn message(&self) -> &str {
        self.status.message()
    }
}

impl std::fmt::Display for CriError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} failed with {:?}: {}",
            self.call,
            self.status.code(),
            self.status.message()
        )
    }
}

impl From<CriError> for String {
    fn from(e: CriError) -> String {
        e.to_string()
    }
}

/// The result of one CRI call.
pub type CriResult<T> = Result<T, CriError>;

/// A connection to a CRI socket; see the module documentation.
pub struct CriClient {
    runtime: tokio::runtime::Runtime,
    channel: Channel,
}

impl CriClient {
    /// Connects to the CRI socket at `socket`.
    pub fn connect(socket: &Path) -> Result<CriClient, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| format!("starting the CRI client's runtime: {e}"))?;
        let path = socket.to_path_buf();
        let channel = runtime
            .block_on(async move {
                // The URI is a placeholder: the connector dials the socket.
                Endpoint::from_static("http://[::]:0")
                    .connect_timeout(Duration::from_secs(10))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path: PathBuf = path.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    }))
                    .await
            })
            .map_err(|e| format!("connecting to the CRI socket {}: {e}", socket.display()))?;
        Ok(CriClient { runtime, channel })
    }

    fn runtime_call<T, F>(
        &self,
        call: &'static str,
        body: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> CriResult<T>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let client = RuntimeServiceClient::new(self.channel.clone());
        self.bounded(call, body(client))
    }

    fn image_call<T, F>(
        &self,
        call: &'static str,
        body: impl FnOnce(ImageServiceClient<Channel>) -> F,
    ) -> CriResult<T>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let client = ImageServiceClient::new(self.channel.clone());
        self.bounded(call, body(client))
    }

    fn bounded<T>(
        &self,
        call: &'static str,
        future: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> CriResult<T> {
        let outcome = self
            .runtime
            .block_on(async { tokio::time::timeout(CALL_TIMEOUT, future).await });
        match outcome {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(CriError { call, status }),
            Err(_) => Err(CriError {
                call,
                status: Status::deadline_exceeded(format!("no answer within {CALL_TIMEOUT:?}")),
            }),
        }
    }

    /// `Version`.
    pub fn version(&self) -> CriResult<VersionResponse> {
        self.runtime_call("Version", |mut c| async move {
            c.version(VersionRequest {
                version: "v1".into(),
            })
            .await
        })
    }

    /// `Status`: true when the runtime and the network are ready.
    pub fn ready(&self) -> CriResult<bool> {
        let status = self.runtime_call("Status", |mut c| async move {
            c.status(StatusRequest { verbose: false }).await
        })?;
        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        Ok(!conditions.is_empty() && conditions.iter().all(|c| c.status))
    }

    /// `ImageStatus`: true if the image is known.
    pub fn has_image(&self, reference: &str) -> CriResult<bool> {
        let image = ImageSpec {
            image: reference.to_string(),
            ..Default::default()
        };
        let status = self.image_call("ImageStatus", |mut c| async move {
            c.image_status(ImageStatusRequest {
                image: Some(image),
                verbose: false,
            })
            .await
        })?;
        Ok(status.image.is_some())
    }

    /// `RunPodSandbox` with `handler`; the sandbox id.
    pub fn run_pod_sandbox(&self, config: &PodSandboxConfig, handler: &str) -> CriResult<String> {
        let request = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        let response = self.runtime_call("RunPodSandbox", |mut c| async move {
            c.run_pod_sandbox(request).await
        })?;
        Ok(response.pod_sandbox_id)
    }

    /// `StopPodSandbox`.
    pub fn stop_pod_sandbox(&self, id: &str) -> CriResult<()> {
        let pod_sandbox_id = id.to_string();
        self.runtime_call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id })
                .await
        })
        .map(drop)
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod_sandbox(&self, id: &str) -> CriResult<()> {
        let pod_sandbox_id = id.to_string();
        self.runtime_call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id })
                .await
        })
        .map(drop)
    }

    /// `PodSandboxStatus`, with containerd's info map if `verbose`.
    pub fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> CriResult<PodSandboxStatusResponse> {
        let pod_sandbox_id = id.to_string();
        self.runtime_call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id,
                verbose,
            })
            .await
        })
    }

    /// `ListPodSandbox`, all of them or those of `filter`.
    pub fn list_pod_sandbox(&self, filter: Option<PodSandboxFilter>) -> CriResult<Vec<PodSandbox>> {
        let response = self.runtime_call("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(ListPodSandboxRequest { filter }).await
        })?;
        Ok(response.items)
    }

    /// `CreateContainer` in the pod `pod_id` made from `pod_config`; the id.
    pub fn create_container(
        &self,
        pod_id: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> CriResult<String> {
        let request = CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        let response = self.runtime_call("CreateContainer", |mut c| async move {
            c.create_container(request).await
        })?;
        Ok(response.container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&self, id: &str) -> CriResult<()> {
        let container_id = id.to_string();
        self.runtime_call("StartContainer", |mut c| async move {
            c.start_container(StartContainerRequest { container_id })
                .await
        })
        .map(drop)
    }

    /// `StopContainer`, SIGKILL after `timeout_secs`.
    pub fn stop_container(&self, id: &str, timeout_secs: i64) -> CriResult<()> {
        let container_id = id.to_string();
        self.runtime_call("StopContainer", |mut c| async move {
            c.stop_container(StopContainerRequest {
                container_id,
                timeout: timeout_secs,
            })
            .await
        })
        .map(drop)
    }

    /// `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> CriResult<()> {
        let container_id = id.to_string();
        self.runtime_call("RemoveContainer", |mut c| async move {
            c.remove_container(RemoveContainerRequest { container_id })
                .await
        })
        .map(drop)
    }

    /// `ContainerStatus`, with containerd's info map if `verbose`.
    pub fn container_status(&self, id: &str, verbose: bool) -> CriResult<ContainerStatusResponse> {
        let container_id = id.to_string();
        self.runtime_call("ContainerStatus", |mut c| async move {
            c.container_status(k8s_cri::v1::ContainerStatusRequest {
                container_id,
                verbose,
            })
            .await
        })
    }

    /// `ListContainers` of the pod `pod_id` (all pods if empty).
    pub fn list_containers(&self, pod_id: &str) -> CriResult<Vec<k8s_cri::v1::Container>> {
        let filter = ContainerFilter {
            pod_sandbox_id: pod_id.to_string(),
            ..Default::default()
        };
        let response = self.runtime_call("ListContainers", |mut c| async move {
            c.list_containers(ListContainersRequest {
                filter: Some(filter),
            })
            .await
        })?;
        Ok(response.containers)
    }

    /// `ExecSync` of `cmd` in the container `id`, bounded by
    /// `timeout_secs` (0: none) on containerd's side.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> CriResult<ExecSyncResponse> {
        let request = ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|a| a.to_string()).collect(),
            timeout: timeout_secs,
        };
        self.runtime_call(
            "ExecSync",
            |mut c| async move { c.exec_sync(request).await },
        )
    }

    /// `Exec`: the stream server's URL for the session.
    pub fn exec(&self, request: &ExecRequest) -> CriResult<String> {
        let request = request.clone();
        let response = self.runtime_call("Exec", |mut c| async move { c.exec(request).await })?;
        Ok(response.url)
    }

    /// `Attach`: the stream server's URL for the session.
    pub fn attach(&self, request: &AttachRequest) -> CriResult<String> {
        let request = request.clone();
        let response =
            self.runtime_call("Attach", |mut c| async move { c.attach(request).await })?;
        Ok(response.url)
    }

    /// `PortForward` to `ports` of the pod `pod_id`: the stream server's URL.
    pub fn port_forward(&self, pod_id: &str, ports: &[i32]) -> CriResult<String> {
        let request = PortForwardRequest {
            pod_sandbox_id: pod_id.to_string(),
            port: ports.to_vec(),
        };
        let response = self.runtime_call("PortForward", |mut c| async move {
            c.port_forward(request).await
        })?;
        Ok(response.url)
    }

    /// `ContainerStats` of the container `id`.
    pub fn container_stats(&self, id: &str) -> CriResult<ContainerStats> {
        let container_id = id.to_string();
        let response = self.runtime_call("ContainerStats", |mut c| async move {
            c.container_stats(k8s_cri::v1::ContainerStatsRequest { container_id })
                .await
        })?;
        response.stats.ok_or_else(|| CriError {
            call: "ContainerStats",
            status: Status::internal(format!("no stats for {id}")),
        })
    }

    /// `ListContainerStats` of the pod `pod_id`.
    pub fn list_container_stats(&self, pod_id: &str) -> CriResult<Vec<ContainerStats>> {
        let filter = ContainerStatsFilter {
            pod_sandbox_id: pod_id.to_string(),
            ..Default::default()
        };
        let response = self.runtime_call("ListContainerStats", |mut c| async move {
            c.list_container_stats(ListContainerStatsRequest {
                filter: Some(filter),
            })
            .await
        })?;
        Ok(response.stats)
    }
}
