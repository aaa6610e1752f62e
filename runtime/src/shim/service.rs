//! The Task service containerd calls over ttrpc: each RPC decoded, handed
//! to the [`Pod`], and its answer (or error kind) encoded. Checkpoints are
//! not implemented; everything else the CRI needs is.

use std::sync::Arc;

use containerd_shim::api;
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{EnumOrUnknown, Message, MessageField};
use containerd_shim::protos::types::task::{ProcessInfo, Status as TaskStatus};
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use husk_protocol::Stats;

use super::error::TaskError;
use super::io::StdioPaths;
use super::pod::{CreateTask, Exited, Pod, Status};

/// The Task service of one shim.
pub struct TaskService {
    pod: Arc<Pod>,
    exit: Arc<ExitSignal>,
}

impl TaskService {
    /// A service for `pod`; `exit` ends the shim.
    pub fn new(pod: Arc<Pod>, exit: Arc<ExitSignal>) -> TaskService {
        TaskService { pod, exit }
    }
}

/// The `Any` containerd sends a JSON document in (an OCI process, resources).
fn json_of<T: serde::de::DeserializeOwned>(
    any: &MessageField<Any>,
    what: &str,
) -> Result<T, TaskError> {
    let any = any
        .as_ref()
        .ok_or_else(|| TaskError::InvalidArgument(format!("the request has no {what}")))?;
    serde_json::from_slice(&any.value)
        .map_err(|e| TaskError::InvalidArgument(format!("{what}: {e}")))
}

fn exited_fields(
    exited: &Exited,
) -> (
    u32,
    MessageField<containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp>,
) {
    (exited.status, MessageField::some(exited.at.clone()))
}

/// containerd's cgroup v1 metrics from the guest's counters.
fn metrics(stats: &Stats) -> Metrics {
    Metrics {
        cpu: MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                total: stats.cpu_usage_ns,
                kernel: stats.cpu_system_ns,
                user: stats.cpu_user_ns,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            usage: MessageField::some(MemoryEntry {
                usage: stats.memory_usage,
                limit: stats.memory_limit,
                ..Default::default()
            }),
            hierarchical_memory_limit: stats.memory_limit,
            ..Default::default()
        }),
        pids: MessageField::some(PidsStat {
            current: stats.pids,
            limit: stats.pids_limit,
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let task = CreateTask {
            id: req.id.clone(),
            bundle: req.bundle.clone().into(),
            rootfs: req
                .rootfs
                .iter()
                .map(|m| (m.type_.clone(), m.source.clone(), m.options.clone()))
                .collect(),
            stdio: StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
        };
        let pid = self.pod.create(task)?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = self.pod.start(&req.id, &req.exec_id)?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let state = self.pod.state(&req.id, &req.exec_id)?;
        let status = match state.status {
            Status::Created => TaskStatus::CREATED,
            Status::Running => TaskStatus::RUNNING,
            Status::Paused => TaskStatus::PAUSED,
            Status::Stopped => TaskStatus::STOPPED,
        };
        let mut response = api::StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: state.bundle.to_string_lossy().into_owned(),
            pid: state.pid,
            status: EnumOrUnknown::new(status),
            stdin: state.stdio.stdin,
            stdout: state.stdio.stdout,
            stderr: state.stdio.stderr,
            terminal: state.stdio.terminal,
            ..Default::default()
        };
        if let Some(exited) = &state.exited {
            (response.exit_status, response.exited_at) = exited_fields(exited);
        }
        Ok(response)
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let (pid, exited) = self.pod.delete(&req.id, &req.exec_id)?;
        let (exit_status, exited_at) = exited_fields(&exited);
        Ok(api::DeleteResponse {
            pid,
            exit_status,
            exited_at,
            ..Default::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let processes = self
            .pod
            .pids(&req.id)?
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        self.pod.set_paused(&req.id, true)?;
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        self.pod.set_paused(&req.id, false)?;
        Ok(api::Empty::default())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(TaskError::NotImplemented("husk does not checkpoint VMs".into()).into())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        self.pod.kill(&req.id, &req.exec_id, req.signal, req.all)?;
        Ok(api::Empty::default())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let spec = json_of(&req.spec, "process spec")?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        self.pod.add_exec(&req.id, &req.exec_id, spec, stdio)?;
        Ok(api::Empty::default())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let clamp = |v: u32| v.min(u32::from(u16::MAX)) as u16;
        self.pod
            .resize(&req.id, &req.exec_id, clamp(req.height), clamp(req.width))?;
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        if req.stdin {
            self.pod.close_stdin(&req.id, &req.exec_id)?;
        }
        Ok(api::Empty::default())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let resources = json_of(&req.resources, "resources")?;
        self.pod.update(&req.id, resources)?;
        Ok(api::Empty::default())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let exited = self.pod.wait(&req.id, &req.exec_id)?;
        let (exit_status, exited_at) = exited_fields(&exited);
        Ok(api::WaitResponse {
            exit_status,
            exited_at,
            ..Default::default()
        })
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let stats = self.pod.stats(&req.id)?;
        let metrics = metrics(&stats);
        let value = metrics
            .write_to_bytes()
            .map_err(|e| TaskError::Internal(format!("encoding the metrics: {e}")))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(Any {
                type_url: "io.containerd.cgroups.v1.Metrics".into(),
                value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.pod.task_pid(&req.id).unwrap_or(0),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        // A grouped shim hears this once per task: it ends with the last.
        if self.pod.is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_counters_become_cgroup_v1_metrics() {
        let stats = Stats {
            cpu_usage_ns: 7,
            cpu_user_ns: 4,
            cpu_system_ns: 3,
            memory_usage: 1 << 20,
            memory_limit: 64 << 20,
            pids: 2,
            pids_limit: 0,
        };

        let m = metrics(&stats);

        assert_eq!(m.cpu.usage.total, 7);
        assert_eq!(m.cpu.usage.user, 4);
        assert_eq!(m.memory.usage.usage, 1 << 20);
        assert_eq!(m.memory.usage.limit, 64 << 20);
        assert_eq!(m.pids.current, 2);
    }
}
