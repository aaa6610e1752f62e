//! The end of a pod, and requests CRI must refuse: StopPodSandbox and
//! RemovePodSandbox leave no process, mount, socket, network namespace or
//! state behind; a missing sandbox, a reserved pod name, a missing image
//! and an unknown handler are refused naming what is wrong, and leave
//! nothing either.

use std::path::PathBuf;
use std::time::Duration;

use husk_tests::cri::fixture::CriFixture;
use husk_tests::cri::leftovers::{
    cgroup_dirs_under, descendants_of, mounts_naming, paths_naming, processes_naming, shim_socket,
    shims_of,
};
use husk_tests::cri::pod::{container_config, pod_config, TestPod};
use husk_tests::cri::Handler;
use k8s_cri::v1::{ContainerState, ImageSpec, PodSandboxState};
use tonic::Code;

use super::support::{ensure, expect_eq, settle};

/// Where libcni caches each attachment's result (`<network>-<id>-<if>`).
const CNI_RESULTS: &str = "/var/lib/cni/results";

/// Everything that names one pod.
struct Traces {
    handler: Handler,
    ids: Vec<String>,
    /// What the pod's shim ran (runc's containers, husk's VMM and helpers).
    shim_tree: Vec<u32>,
    netns: Option<PathBuf>,
    sandbox_pid: u64,
    /// The shim sockets the pod's ids would name (the pod's exists).
    shim_sockets: Vec<PathBuf>,
    cgroup_parent: String,
}

/// What names the pod, by kind (`processes`, `mounts`...).
type Found = Vec<(&'static str, String)>;

impl Traces {
    /// What is left of them; the fixture's `pods` (our logs) is ours.
    fn left(&self, fixture: &CriFixture) -> Found {
        let ids: Vec<&str> = self.ids.iter().map(String::as_str).collect();
        let mut found = Found::new();
        let mut note = |kind, what: String| found.push((kind, what));
        let processes = processes_naming(&ids);
        if !processes.is_empty() {
            note("processes", format!("{processes:?}"));
        }
        if husk_tests::process_exists(self.sandbox_pid as u32) {
            note("sandbox process", self.sandbox_pid.to_string());
        }
        let tree: Vec<u32> = self
            .shim_tree
            .iter()
            .copied()
            .filter(|&pid| husk_tests::process_exists(pid))
            .collect();
        if !tree.is_empty() {
            note("shim's processes", format!("{tree:?}"));
        }
        let mut needles = ids.clone();
        let netns_text = self
            .netns
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned());
        needles.extend(netns_text.as_deref());
        let mounts = mounts_naming(&needles);
        if !mounts.is_empty() {
            note("mounts", format!("{mounts:?}"));
        }
        if let Some(netns) = self.netns.as_ref().filter(|p| p.exists()) {
            note("network namespace", netns.display().to_string());
        }
        let sockets: Vec<&PathBuf> = self.shim_sockets.iter().filter(|s| s.exists()).collect();
        if !sockets.is_empty() {
            note("shim socket", format!("{sockets:?}"));
        }
        let pods = fixture.dir().join("pods");
        let state = paths_naming(fixture.dir(), &ids, &[pods.as_path()]);
        if !state.is_empty() {
            note("state", format!("{state:?}"));
        }
        for root in self.handler.state_roots() {
            let state = paths_naming(std::path::Path::new(root), &ids, &[]);
            if !state.is_empty() {
                note("handler state", format!("{state:?}"));
            }
        }
        let cni = paths_naming(std::path::Path::new(CNI_RESULTS), &ids, &[]);
        if !cni.is_empty() {
            note("libcni results", format!("{cni:?}"));
        }
        let cgroups: Vec<PathBuf> = cgroup_dirs_under(&self.cgroup_parent)
            .into_iter()
            .filter(|d| ids.iter().any(|id| d.to_string_lossy().contains(id)))
            .collect();
        if !cgroups.is_empty() {
            note("cgroups", format!("{cgroups:?}"));
        }
        found
    }
}

/// The kinds of trace every running pod has, whatever its handler: what
/// containerd itself makes. Seeing them first shows the probes work.
const TRACES_OF_A_RUNNING_POD: &[&str] = &[
    "processes",
    "sandbox process",
    "shim's processes",
    "mounts",
    "network namespace",
    "shim socket",
    "state",
    "libcni results",
];

fn describe(found: &Found) -> String {
    let parts: Vec<String> = found
        .iter()
        .map(|(kind, what)| format!("{kind}: {what}"))
        .collect();
    parts.join("; ")
}

/// The traces of the running pod `pod` with containers `containers`,
/// after checking it shows every kind a running pod has.
fn traces_of(
    fixture: &CriFixture,
    handler: Handler,
    pod: &TestPod<'_>,
    containers: Vec<String>,
    cgroup_parent: String,
) -> Result<Traces, String> {
    let mut ids = vec![pod.id.clone()];
    ids.extend(containers);
    let shim_sockets = ids
        .iter()
        .map(|id| shim_socket(&fixture.socket(), id))
        .collect::<Result<Vec<_>, _>>()?;
    ensure(shim_sockets[0].exists(), || {
        format!(
            "the pod's shim socket is not at {} (shim.SocketAddress of the sandbox id)",
            shim_sockets[0].display()
        )
    })?;
    let shim_tree = shims_of(handler, &pod.id)
        .iter()
        .flat_map(|shim| descendants_of(shim.pid))
        .map(|p| p.pid)
        .collect();
    let traces = Traces {
        handler,
        ids,
        shim_tree,
        netns: pod.netns.clone(),
        sandbox_pid: pod.info()?["pid"].as_u64().ok_or("no sandbox pid")?,
        shim_sockets,
        cgroup_parent,
    };
    let running = traces.left(fixture);
    for kind in TRACES_OF_A_RUNNING_POD {
        ensure(running.iter().any(|(k, _)| k == kind), || {
            format!(
                "the running pod shows no {kind}; it shows {}",
                describe(&running)
            )
        })?;
    }
    Ok(traces)
}

/// The pod's shim is killed (SIGKILL) while its container runs: CRI then
/// stops and removes the pod (containerd runs `SHIM delete` for what the
/// dead shim served), and nothing names it any more. runc's shim leaves
/// its socket (containerd 1.6 removes it only when a shim exits by
/// itself); husk's `delete` removes it, so only the baseline is excused.
pub fn a_killed_shim_is_cleaned_up(fixture: &CriFixture, handler: Handler) -> Result<(), String> {
    let config = pod_config(fixture, "killed-shim")?;
    let cgroup_parent = config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();
    let pod = TestPod::run(fixture, handler, config)?;
    let container = pod.start(&container_config("victim", &["sleep", "3600"]))?;
    let traces = traces_of(fixture, handler, &pod, vec![container], cgroup_parent)?;
    let shims = shims_of(handler, &pod.id);
    ensure(!shims.is_empty(), || "the pod has no shim to kill".into())?;
    for shim in &shims {
        // SAFETY: kill takes no pointers; the pid is the pod's shim.
        unsafe { libc::kill(shim.pid as i32, libc::SIGKILL) };
    }

    let id = pod.id.clone();
    pod.remove()?;
    let excused = |(kind, _): &(&str, String)| handler == Handler::Runc && *kind == "shim socket";
    let left = settle(Duration::from_secs(20), || {
        let mut left = traces.left(fixture);
        left.retain(|trace| !excused(trace));
        left
    });
    ensure(left.is_empty(), || {
        format!("the pod of the killed shim left {}", describe(&left))
    })?;
    if handler == Handler::Runc {
        for socket in traces.shim_sockets.iter().filter(|s| s.exists()) {
            eprintln!("cri: runc's killed shim left {}; removed", socket.display());
            std::fs::remove_file(socket)
                .map_err(|e| format!("removing {}: {e}", socket.display()))?;
        }
    }
    match fixture.client().pod_sandbox_status(&id, false) {
        Err(e) if e.code() == Code::NotFound => Ok(()),
        other => Err(format!("PodSandboxStatus of the removed pod: {other:?}")),
    }
}

/// A pod with two containers (one that stops on SIGTERM, one deaf to it)
/// is stopped: NOTREADY, its containers EXITED; then removed: gone from
/// CRI, and nothing on the host names it any more. RemovePodSandbox again
/// succeeds (it is idempotent).
pub fn stop_and_remove_leave_nothing(fixture: &CriFixture, handler: Handler) -> Result<(), String> {
    let config = pod_config(fixture, "teardown")?;
    let cgroup_parent = config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();
    let pod = TestPod::run(fixture, handler, config)?;
    let polite = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"];
    let first = pod.start(&container_config("polite", &polite))?;
    let second = pod.start(&container_config("deaf", &["sleep", "3600"]))?;
    let traces = traces_of(fixture, handler, &pod, vec![first, second], cgroup_parent)?;

    let client = fixture.client();
    client.stop_pod_sandbox(&pod.id)?;
    let status = client
        .pod_sandbox_status(&pod.id, false)?
        .status
        .ok_or("no status")?;
    expect_eq(
        "the stopped pod's state",
        status.state,
        PodSandboxState::SandboxNotready as i32,
    )?;
    for container in client.list_containers(&pod.id)? {
        expect_eq(
            &format!("the state of {} in the stopped pod", container.id),
            container.state,
            ContainerState::ContainerExited as i32,
        )?;
    }
    let id = pod.id.clone();
    pod.remove()?;
    match client.pod_sandbox_status(&id, false) {
        Err(e) if e.code() == Code::NotFound => {}
        other => return Err(format!("PodSandboxStatus of the removed pod: {other:?}")),
    }
    ensure(client.list_containers(&id)?.is_empty(), || {
        "the removed pod still lists containers".into()
    })?;
    let left = settle(Duration::from_secs(10), || traces.left(fixture));
    ensure(left.is_empty(), || {
        format!("the removed pod left {}", describe(&left))
    })?;
    client
        .remove_pod_sandbox(&id)
        .map_err(|e| format!("RemovePodSandbox of a removed pod: {e}"))
}

/// CreateContainer in a sandbox that does not exist (NotFound), a second
/// RunPodSandbox with a running pod's metadata (its name is reserved),
/// CreateContainer of an image that does not exist (the error names it),
/// RunPodSandbox with an unknown handler: each refused, and nothing is
/// left (the names are free again).
pub fn bad_input_is_refused_cleanly(fixture: &CriFixture, handler: Handler) -> Result<(), String> {
    let client = fixture.client();
    let orphan = container_config("orphan", &["true"]);
    let nowhere = pod_config(fixture, "no-such-pod")?;
    match client.create_container(
        "0000000000000000000000000000000000000000000000000000000000000000",
        &orphan,
        &nowhere,
    ) {
        Err(e) if e.code() == Code::NotFound => eprintln!("cri bad input refused: {e}"),
        other => {
            return Err(format!(
                "CreateContainer in a missing sandbox: {other:?}, want NotFound"
            ))
        }
    }

    let pod = TestPod::run(fixture, handler, pod_config(fixture, "bad-input")?)?;
    match client.run_pod_sandbox(&pod.config, handler.name()) {
        Err(e) if e.code() == Code::AlreadyExists || e.message().contains("reserve") => {
            eprintln!("cri bad input refused: {e}")
        }
        other => {
            return Err(format!(
                "RunPodSandbox of a running pod's metadata: {other:?}"
            ))
        }
    }
    let same_name = client
        .list_pod_sandbox(None)?
        .into_iter()
        .filter(|p| p.metadata.as_ref().is_some_and(|m| m.name == "bad-input"))
        .count();
    expect_eq("pods named bad-input", same_name, 1)?;
    ensure(pod.is_ready()?, || {
        "the first pod is no longer ready".into()
    })?;

    let missing_image = "localhost/husk-no-such-image:latest";
    let mut ghost = container_config("ghost", &["true"]);
    ghost.image = Some(ImageSpec {
        image: missing_image.into(),
        ..Default::default()
    });
    match pod.create(&ghost) {
        Err(e) if e.message().contains(missing_image) => eprintln!("cri bad input refused: {e}"),
        other => {
            return Err(format!(
                "CreateContainer of a missing image: {other:?}, want an error naming it"
            ))
        }
    }
    ensure(client.list_containers(&pod.id)?.is_empty(), || {
        "the refused container is listed".into()
    })?;
    let ghost = pod
        .create(&container_config("ghost", &["true"]))
        .map_err(|e| format!("the name ghost is still reserved: {e}"))?;
    client.remove_container(&ghost)?;

    let elsewhere = pod_config(fixture, "bad-handler")?;
    match client.run_pod_sandbox(&elsewhere, "no-such-handler") {
        Err(e) if e.message().contains("no-such-handler") => {
            eprintln!("cri bad input refused: {e}")
        }
        other => return Err(format!("RunPodSandbox with an unknown handler: {other:?}")),
    }
    let stray = client
        .list_pod_sandbox(None)?
        .into_iter()
        .filter(|p| p.metadata.as_ref().is_some_and(|m| m.name == "bad-handler"))
        .count();
    expect_eq("pods named bad-handler", stray, 0)?;
    pod.remove()
}
