//! What a task's bundle says to the shim: whether it is a pod's sandbox
//! (the pause container, which is the VM itself), a container of a pod, or
//! a container of its own; which of its namespaces are the pod's; and how
//! big the pod's VM is (shared/PODS.md: the CRI annotations).

use std::collections::BTreeMap;

use crate::config::Config;
use crate::oci::spec::Bundle;
use crate::sandbox::sizing;

/// CRI's annotation of a container's role.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI's annotation naming the pod's sandbox.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The pod's CPU quota (µs per period), CRI.
pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// The pod's CPU period (µs), CRI.
pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// The pod's memory limit (bytes), CRI.
pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

/// What a task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskKind {
    /// A pod's sandbox: the VM of the pod, no process of its own.
    PodSandbox,
    /// A container of the pod whose sandbox has this id.
    PodContainer {
        /// The sandbox's task id.
        sandbox: String,
    },
    /// A container with a VM of its own (`ctr run --runtime ...`).
    Standalone,
}

impl TaskKind {
    /// The kind the annotations name.
    pub fn of(annotations: &BTreeMap<String, String>) -> Result<TaskKind, String> {
        match annotations.get(CONTAINER_TYPE).map(String::as_str) {
            Some("sandbox") => Ok(TaskKind::PodSandbox),
            Some("container") => match annotations.get(SANDBOX_ID) {
                Some(sandbox) if !sandbox.is_empty() => Ok(TaskKind::PodContainer {
                    sandbox: sandbox.clone(),
                }),
                _ => Err(format!(
                    "annotation {CONTAINER_TYPE}=container without {SANDBOX_ID}"
                )),
            },
            Some(other) => Err(format!("annotation {CONTAINER_TYPE}={other:?} is unknown")),
            None => Ok(TaskKind::Standalone),
        }
    }

    /// The shim a task belongs to: its pod's sandbox id, or its own id.
    pub fn grouping(&self, id: &str) -> String {
        match self {
            TaskKind::PodContainer { sandbox } => sandbox.clone(),
            TaskKind::PodSandbox | TaskKind::Standalone => id.to_string(),
        }
    }
}

/// The namespaces of a pod container: the pod's it joins (uts, ipc and,
/// with `shareProcessNamespace`, pid: entries with a path), and its own
/// (the rest; the network is always the VM's).
pub fn pod_namespaces(bundle: &Bundle) -> (Vec<String>, Vec<String>) {
    let mut joined = Vec::new();
    let mut own = Vec::new();
    for ns in &bundle.linux().namespaces {
        let has_path = ns.path.as_deref().is_some_and(|p| !p.is_empty());
        match ns.kind.as_str() {
            "network" => {}
            "uts" | "ipc" | "pid" if has_path => joined.push(ns.kind.clone()),
            kind => own.push(kind.to_string()),
        }
    }
    (joined, own)
}

/// The namespaces a pod's sandbox makes for its containers.
pub const POD_NAMESPACES: [&str; 3] = ["uts", "ipc", "pid"];

/// The VM of a pod: memory from the pod's limit (plus
/// [`sizing::MEMORY_OVERHEAD_MIB`]), vCPUs from its quota; the config's
/// defaults without them.
pub fn pod_size(
    annotations: &BTreeMap<String, String>,
    config: &Config,
    host_cpus: u32,
) -> (u32, u32) {
    let number = |key: &str| {
        annotations
            .get(key)
            .and_then(|v| v.trim().parse::<i64>().ok())
    };
    let memory = match number(SANDBOX_MEMORY).filter(|m| *m > 0) {
        Some(bytes) => {
            let mib = (bytes as u64)
                .div_ceil(1 << 20)
                .min(u64::from(u32::MAX / 2)) as u32;
            (mib + sizing::MEMORY_OVERHEAD_MIB).max(sizing::MIN_MEMORY_MIB)
        }
        None => config.memory_mib,
    };
    let vcpus = match (number(SANDBOX_CPU_QUOTA), number(SANDBOX_CPU_PERIOD)) {
        (Some(quota), Some(period)) if quota > 0 && period > 0 => (quota as u64)
            .div_ceil(period as u64)
            .clamp(1, u64::from(host_cpus.max(1)))
            as u32,
        _ => config.vcpus,
    };
    (memory, vcpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cri_annotations_name_the_kind_and_the_grouping() {
        assert_eq!(
            TaskKind::of(&annotations(&[(CONTAINER_TYPE, "sandbox")])).unwrap(),
            TaskKind::PodSandbox
        );
        let container = TaskKind::of(&annotations(&[
            (CONTAINER_TYPE, "container"),
            (SANDBOX_ID, "pod1"),
        ]))
        .unwrap();
        assert_eq!(container.grouping("c1"), "pod1");
        assert_eq!(
            TaskKind::of(&annotations(&[])).unwrap(),
            TaskKind::Standalone
        );
        assert_eq!(TaskKind::Standalone.grouping("c1"), "c1");
        let err = TaskKind::of(&annotations(&[(CONTAINER_TYPE, "container")])).unwrap_err();
        assert!(err.contains(SANDBOX_ID), "{err}");
    }

    #[test]
    fn a_pod_is_sized_from_its_annotations() {
        let config = Config::default();
        let pod = annotations(&[
            (SANDBOX_MEMORY, "268435456"),
            (SANDBOX_CPU_QUOTA, "150000"),
            (SANDBOX_CPU_PERIOD, "100000"),
        ]);

        assert_eq!(
            pod_size(&pod, &config, 8),
            (256 + sizing::MEMORY_OVERHEAD_MIB, 2)
        );
        assert_eq!(
            pod_size(&pod, &config, 1).1,
            1,
            "no more vCPUs than the host has"
        );
        assert_eq!(
            pod_size(&annotations(&[]), &config, 8),
            (config.memory_mib, config.vcpus)
        );
    }
}
