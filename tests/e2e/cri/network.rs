//! Pod networking: two containers sharing the pod's loopback, hostname
//! and CNI address; `PortForward` over both transports; a hostPort
//! through portmap, reached from containerd's namespace (the node).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use husk_tests::cri::config::GATEWAY;
use husk_tests::cri::fixture::CriFixture;
use husk_tests::cri::pod::{container_config, pod_config, TestPod};
use husk_tests::cri::stream::{spdy, websocket};
use husk_tests::cri::Handler;
use husk_tests::engines::hostnet::{http_body, http_get_eventually};
use k8s_cri::v1::{PortMapping, Protocol};

use super::support::{check_pod_processes, container_info, ensure, exec_ok, exec_until, expect_eq};

/// The port the pods' web servers listen on.
const WEB_PORT: u16 = 8080;
/// The hostPort mapped to it.
const HOST_PORT: u16 = 18080;
/// How long a server in a pod may take to answer the first time.
const SERVER_START: Duration = Duration::from_secs(60);

/// A busybox httpd on `listen` serving `marker` as `/index.html`.
fn web_server(listen: &str, marker: &str) -> Vec<String> {
    let script = format!(
        "mkdir -p /www && echo {marker} > /www/index.html && exec httpd -f -p {listen} -h /www"
    );
    ["sh", "-c", &script].map(String::from).to_vec()
}

fn strings(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// RunPodSandbox on the CNI network, two busybox containers: one serves on
/// 127.0.0.1:8080, the other fetches from localhost:8080. The pod has an
/// address of the network, both containers its hostname and address,
/// containerd's specs name the sandbox (annotations, namespace paths),
/// and the host runs what the handler should.
pub fn pod_with_two_containers(fixture: &CriFixture, handler: Handler) -> Result<(), String> {
    let pod = TestPod::run(fixture, handler, pod_config(fixture, "two-containers")?)?;
    ensure(pod.is_ready()?, || "the pod is not ready".into())?;
    let ip = pod.ip()?;
    ensure(
        ip.octets()[..3] == GATEWAY.octets()[..3] && ip != GATEWAY,
        || format!("the pod's IP {ip} is not a pod address of the CNI network"),
    )?;

    let server_cmd = web_server(&format!("127.0.0.1:{WEB_PORT}"), "served-on-localhost");
    let server = pod.start(&container_config("server", &strings(&server_cmd)))?;
    let client = pod.start(&container_config("client", &["sleep", "3600"]))?;
    let url = format!("http://localhost:{WEB_PORT}/");
    exec_until(
        pod.client(),
        &client,
        &["wget", "-q", "-O", "-", &url],
        "served-on-localhost\n",
        SERVER_START,
    )?;
    let hostname = exec_ok(pod.client(), &client, &["hostname"])?;
    expect_eq("the client's hostname", hostname.trim(), "two-containers")?;
    let addresses = exec_ok(
        pod.client(),
        &client,
        &["ip", "-4", "-o", "addr", "show", "eth0"],
    )?;
    ensure(addresses.contains(&format!("inet {ip}/")), || {
        format!("eth0 in the client does not have the pod's IP {ip}: {addresses:?}")
    })?;

    check_specs_name_the_sandbox(&pod, &[&server, &client])?;
    check_pod_processes(&pod, &[server, client])?;
    pod.remove()
}

/// The specs containerd generated: the sandbox is `sandbox`, each container
/// `container` with the sandbox id (what a shim groups by), and joins the
/// sandbox's network, IPC and UTS namespaces by `/proc/<sandbox pid>/ns/*`.
fn check_specs_name_the_sandbox(pod: &TestPod, containers: &[&str]) -> Result<(), String> {
    let info = pod.info()?;
    let annotations = &info["runtimeSpec"]["annotations"];
    expect_eq(
        "the sandbox's container-type",
        annotations["io.kubernetes.cri.container-type"].as_str(),
        Some("sandbox"),
    )?;
    let sandbox_pid = info["pid"].as_u64().ok_or("no sandbox pid")?;
    for id in containers {
        let spec = &container_info(pod.client(), id)?["runtimeSpec"];
        let annotations = &spec["annotations"];
        expect_eq(
            &format!("{id}'s container-type"),
            annotations["io.kubernetes.cri.container-type"].as_str(),
            Some("container"),
        )?;
        expect_eq(
            &format!("{id}'s sandbox-id"),
            annotations["io.kubernetes.cri.sandbox-id"].as_str(),
            Some(pod.id.as_str()),
        )?;
        for kind in ["network", "ipc", "uts"] {
            let path = spec["linux"]["namespaces"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|ns| ns["type"] == kind)
                .and_then(|ns| ns["path"].as_str());
            let want = match kind {
                "network" => "net",
                other => other,
            };
            expect_eq(
                &format!("{id}'s {kind} namespace"),
                path,
                Some(format!("/proc/{sandbox_pid}/ns/{want}").as_str()),
            )?;
        }
    }
    Ok(())
}

/// PortForward to a server in the pod over WebSocket and SPDY, an error
/// for a port nobody listens on, and the same server through a hostPort
/// (portmap) from containerd's namespace, at the bridge's address and at
/// 127.0.0.1.
pub fn port_forward_and_host_port(fixture: &CriFixture, handler: Handler) -> Result<(), String> {
    let mut config = pod_config(fixture, "port-forward")?;
    config.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: i32::from(WEB_PORT),
        host_port: i32::from(HOST_PORT),
        host_ip: String::new(),
    }];
    let pod = TestPod::run(fixture, handler, config)?;
    let web_cmd = web_server(&WEB_PORT.to_string(), "forwarded-to-the-pod");
    let web = pod.start(&container_config("web", &strings(&web_cmd)))?;
    let local = format!("http://127.0.0.1:{WEB_PORT}/");
    exec_until(
        pod.client(),
        &web,
        &["wget", "-q", "-O", "-", &local],
        "forwarded-to-the-pod\n",
        SERVER_START,
    )?;

    let request = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n";
    let netns = fixture.netns();
    let timeout = Duration::from_secs(30);
    let ports = [i32::from(WEB_PORT)];
    let url = pod.client().port_forward(&pod.id, &ports)?;
    let (answer, error) = websocket::port_forward(&netns, &url, WEB_PORT, request, timeout)?;
    check_forwarded("WebSocket", &answer, &error)?;
    let url = pod.client().port_forward(&pod.id, &ports)?;
    let (answer, error) = spdy::port_forward(&netns, &url, WEB_PORT, request, timeout)?;
    check_forwarded("SPDY", &answer, &error)?;

    let closed_port = WEB_PORT + 1;
    let url = pod
        .client()
        .port_forward(&pod.id, &[i32::from(closed_port)])?;
    let (answer, error) = websocket::port_forward(&netns, &url, closed_port, request, timeout)?;
    ensure(
        answer.is_empty() && error.contains(&closed_port.to_string()),
        || {
            format!(
            "forwarding to {closed_port}, where nothing listens, gave data {:?} and error {error:?}",
            String::from_utf8_lossy(&answer)
        )
        },
    )?;

    for host in [IpAddr::V4(GATEWAY), IpAddr::from([127, 0, 0, 1])] {
        let addr = SocketAddr::new(host, HOST_PORT);
        let body = http_get_eventually(&netns, addr, "/", SERVER_START)
            .map_err(|e| format!("the hostPort at {addr}: {e}"))?;
        expect_eq(
            &format!("the hostPort's answer at {addr}"),
            String::from_utf8_lossy(&body).as_ref(),
            "forwarded-to-the-pod\n",
        )?;
    }
    pod.remove()
}

fn check_forwarded(transport: &str, answer: &[u8], error: &str) -> Result<(), String> {
    ensure(error.is_empty(), || {
        format!("port-forward over {transport} reported {error:?}")
    })?;
    let body = http_body(answer).map_err(|e| format!("port-forward over {transport}: {e}"))?;
    expect_eq(
        &format!("the page forwarded over {transport}"),
        String::from_utf8_lossy(&body).as_ref(),
        "forwarded-to-the-pod\n",
    )
}
