//! The network scenarios of the engine suite: containers on the engines'
//! own networks (podman's netavark bridge, docker's docker0 and
//! user-defined networks, the containerd fixture's CNI bridge), reached
//! from and reaching "the host", which is the engine's own network
//! namespace ([`Engine::host_netns`]): the test's servers and clients run
//! there, so no traffic leaves the namespaces the tests made.
//!
//! What the runtimes may differ in (addresses an engine hands out per
//! run) stays out of the `Seen` lines: each scenario checks its own
//! runtime's side, fails on what is wrong, and reports shapes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use husk_tests::engines::hostnet::{self, HttpServer, Sink};
use husk_tests::engines::{
    run_bounded, Engine, Exec, Image, Network, NetworkOptions, Run, Runtime, Volume,
    COMMAND_TIMEOUT,
};

use super::{name, outcome_lines, run_with, Scenario, Seen};

/// The network scenarios, after the others.
pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("default-network", default_network),
    ("host-network", host_network),
    ("published-port", published_port),
    ("reach-the-host", reach_the_host),
    ("user-network-by-name", user_network_by_name),
    ("network-mtu", network_mtu),
    ("dual-stack", dual_stack),
    ("transfer-100mib", transfer_100mib),
];

/// The port the servers in containers listen on.
const CONTAINER_PORT: u16 = 80;
/// The first host port a scenario publishes or listens on.
const HOST_PORT: u16 = 18080;
/// How long a server in a container may take to answer first.
const SERVER_START: Duration = Duration::from_secs(60);
/// The file the servers in containers serve.
const FILE: &str = "index.txt";
/// What husk says when it refuses `--network host`
/// (runtime/src/oci/lifecycle.rs).
const HOST_REFUSAL: &str = "shares the host's network namespace";
/// The shell line that puts the default gateway in `$gw`.
const GATEWAY: &str = "gw=$(ip route | awk '/^default/ {print $3; exit}')";

/// A text file of `len` bytes (hex of pseudo-random bytes) for servers.
fn text_file(seed: u64, len: usize) -> String {
    hostnet::random_bytes(seed, len / 2)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `dir` holding [`FILE`] with `content`, mounted read-only at `/www`.
fn www_volume(dir: &Path, content: &str) -> Result<Volume, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join(FILE), content).map_err(|e| e.to_string())?;
    Ok(Volume {
        host: dir.to_path_buf(),
        container: "/www".into(),
        read_only: true,
    })
}

/// Runs `run` detached; fails unless the engine started it.
fn start(engine: &dyn Engine, runtime: Runtime, run: &Run) -> Result<(), String> {
    run_bounded(&mut engine.run(runtime, run), None, COMMAND_TIMEOUT)?
        .ok("run --detach")
        .map(drop)
}

/// Runs `body` with the detached container `run`, then force-removes it.
fn with_container<T>(
    engine: &dyn Engine,
    runtime: Runtime,
    run: &Run,
    body: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    start(engine, runtime, run)?;
    let result = body();
    let removed = engine.remove(&run.name, true);
    let value = result?;
    removed?;
    Ok(value)
}

/// Runs `body` with the network `name` made with `options`, then removes
/// it (its containers must be gone by then).
fn with_network<T>(
    engine: &dyn Engine,
    name: &str,
    options: &NetworkOptions,
    body: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    engine.create_network(name, options)?;
    let result = body();
    let removed = engine.remove_network(name);
    let value = result?;
    removed?;
    Ok(value)
}

/// The first IPv4 address in `text` that is not loopback, from `ip -o
/// addr` (`inet A/LEN`) or `hostname -I` (`A`).
fn first_ipv4(text: &str) -> Option<Ipv4Addr> {
    text.split_whitespace()
        .filter_map(|word| word.split('/').next()?.parse::<Ipv4Addr>().ok())
        .find(|address| !address.is_loopback())
}

/// The IPv4 address of the running container `name` on its network, as
/// it sees it (busybox has `ip`, Debian `hostname -I`).
fn container_ipv4(engine: &dyn Engine, name: &str) -> Result<Ipv4Addr, String> {
    let exec = Exec {
        args: ["sh", "-c", "ip -4 -o addr show dev eth0 || hostname -I"]
            .map(String::from)
            .to_vec(),
        ..Exec::default()
    };
    let out = run_bounded(&mut engine.exec(name, &exec), None, COMMAND_TIMEOUT)?;
    first_ipv4(&out.stdout).ok_or_else(|| format!("{name} shows no IPv4 address: {out:?}"))
}

/// The IPv4 gateway of `network`.
fn ipv4_gateway(engine: &dyn Engine, network: &Network) -> Result<IpAddr, String> {
    engine
        .gateways(network)?
        .into_iter()
        .find(IpAddr::is_ipv4)
        .ok_or_else(|| format!("{network:?} has no IPv4 gateway"))
}

/// Fails unless `got` is `expected`, naming `what`.
fn same_bytes(what: &str, got: &[u8], expected: &[u8]) -> Result<(), String> {
    if got == expected {
        Ok(())
    } else {
        Err(format!(
            "{what}: got {} bytes starting {:?}, expected {} bytes",
            got.len(),
            String::from_utf8_lossy(&got[..got.len().min(80)]),
            expected.len()
        ))
    }
}

/// The engine's default network: an `eth0` with an IPv4 address.
fn default_network(engine: &dyn Engine, runtime: Runtime, _: &Path) -> Result<Seen, String> {
    let mut run = Run::new(
        &name("network", runtime),
        Image::Busybox,
        &["ip", "-4", "-o", "addr", "show", "dev", "eth0"],
    );
    run.network = Network::Default;
    let out = run_with(engine, runtime, &run, None)?.ok("ip addr on the default network")?;
    let inet = out.stdout.contains(" eth0 ") && first_ipv4(&out.stdout).is_some();
    if !inet {
        return Err(format!("no IPv4 address on eth0: {:?}", out.stdout));
    }
    Ok(vec![
        format!("code={:?}", out.code),
        format!("has eth0 with inet: {inet}"),
    ])
}

/// `--network host`: runc runs it; husk refuses it at create, saying why,
/// and leaves nothing behind.
fn host_network(engine: &dyn Engine, runtime: Runtime, _: &Path) -> Result<Seen, String> {
    let name = name("host-network", runtime);
    let mut run = Run::new(&name, Image::Busybox, &["echo", "ran"]);
    run.network = Network::Host;
    let out = run_with(engine, runtime, &run, None)?;
    match runtime {
        Runtime::Runc => {
            out.clone().ok("run --network host")?;
            same_bytes("its output", out.stdout.as_bytes(), b"ran\n")?;
        }
        Runtime::Husk => {
            let refused = out.code.is_some_and(|c| c != 0) && out.stderr.contains(HOST_REFUSAL);
            if !refused {
                return Err(format!(
                    "husk must refuse --network host at create saying it {HOST_REFUSAL}: \
                     {out:?}"
                ));
            }
            if engine.containers()?.contains(&name) {
                return Err(format!("the refused {name} is left in the engine"));
            }
            let monitors = monitors_running();
            if !monitors.is_empty() {
                return Err(format!("husk monitors left running: {monitors:?}"));
            }
        }
    }
    Ok(vec!["runc runs it, husk refuses it clearly".into()])
}

/// The husk monitors running (`husk ... sandbox-monitor ...`); the suite
/// runs one container at a time, so none outlives its scenario.
fn monitors_running() -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.contains(&b"sandbox-monitor".as_slice()) && husk_tests::process_exists(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Servers in containers on the default network, fetched from the host:
/// at the container's address, and where the engine publishes ports, at
/// the published port on 127.0.0.1 and on the bridge's gateway.
fn published_port(engine: &dyn Engine, runtime: Runtime, scratch: &Path) -> Result<Seen, String> {
    let netns = engine.host_netns()?;
    let content = text_file(1, 64 << 10);
    let www = www_volume(&scratch.join("www"), &content)?;
    let servers: [(Image, &str, &[&str]); 2] = [
        (
            Image::Busybox,
            "busybox httpd",
            &["httpd", "-f", "-p", "80", "-h", "/www"],
        ),
        (
            Image::Debian,
            "python3 http.server",
            &["python3", "-m", "http.server", "80", "--directory", "/www"],
        ),
    ];
    let mut seen = Vec::new();
    for (i, (image, server, args)) in servers.into_iter().enumerate() {
        let host_port = HOST_PORT + i as u16;
        let mut run = Run::detached(&name(&format!("publish{i}"), runtime), image, args);
        run.network = Network::Default;
        run.publish = vec![(host_port, CONTAINER_PORT)];
        run.volumes = vec![www.clone()];
        seen.extend(with_container(engine, runtime, &run, || {
            let address = container_ipv4(engine, &run.name)?;
            let mut targets = vec![(
                "the container's address".to_string(),
                SocketAddr::from((address, CONTAINER_PORT)),
            )];
            if engine.publishes_ports() {
                let gateway = ipv4_gateway(engine, &Network::Default)?;
                targets.push((
                    "127.0.0.1 at the published port".into(),
                    SocketAddr::from(([127, 0, 0, 1], host_port)),
                ));
                targets.push((
                    "the bridge's gateway at the published port".into(),
                    SocketAddr::new(gateway, host_port),
                ));
            }
            let mut seen = Vec::new();
            for (what, addr) in targets {
                let path = format!("/{FILE}");
                let body = hostnet::http_get_eventually(&netns, addr, &path, SERVER_START)
                    .map_err(|e| format!("{server} via {what}: {e}"))?;
                same_bytes(&format!("{server} via {what}"), &body, content.as_bytes())?;
                seen.push(format!("{server} via {what}: the file"));
            }
            Ok(seen)
        })?);
    }
    Ok(seen)
}

/// A container on the default network fetches a file from a server the
/// test runs on the host, at the container's default gateway, which is
/// the bridge's address.
fn reach_the_host(engine: &dyn Engine, runtime: Runtime, _: &Path) -> Result<Seen, String> {
    let netns = engine.host_netns()?;
    let gateway = ipv4_gateway(engine, &Network::Default)?;
    let content = text_file(2, 16 << 10);
    let port = HOST_PORT + 10;
    let server = HttpServer::start(
        &netns,
        SocketAddr::from(([0, 0, 0, 0], port)),
        Arc::new(content.clone().into_bytes()),
    )?;
    let script = format!("{GATEWAY}; echo $gw; wget -q -O - http://$gw:{port}/{FILE}");
    let mut run = Run::new(
        &name("reach-host", runtime),
        Image::Busybox,
        &["sh", "-c", &script],
    );
    run.network = Network::Default;
    let out = run_with(engine, runtime, &run, None);
    let visits = server.stop()?;
    let out = out?.ok("the client")?;
    let (route, body) = out.stdout.split_once('\n').unwrap_or_default();
    if route != gateway.to_string() {
        return Err(format!("the default route is via {route:?}, not {gateway}"));
    }
    same_bytes("the fetched file", body.as_bytes(), content.as_bytes())?;
    if visits.len() != 1 || visits[0].local.ip() != gateway {
        return Err(format!(
            "the server saw {visits:?}; expected one visit to {gateway}"
        ));
    }
    Ok(vec![
        format!("code={:?}", out.code),
        "the default route is via the bridge's gateway".into(),
        "fetched the host's file from it".into(),
    ])
}

/// On a user-defined network, one container fetches a file from another
/// by its name: aardvark-dns (podman), docker's embedded DNS at
/// 127.0.0.11, which husk relays from inside the namespace (docker).
fn user_network_by_name(
    engine: &dyn Engine,
    runtime: Runtime,
    scratch: &Path,
) -> Result<Seen, String> {
    if engine.name() == "containerd" {
        // ctr resolves no container names: nothing to compare.
        return Ok(vec!["podman and docker only".into()]);
    }
    let netns = engine.host_netns()?;
    let network = name("net", runtime);
    let content = text_file(3, 8 << 10);
    let www = www_volume(&scratch.join("www"), &content)?;
    let mut server = Run::detached(
        &name("named-server", runtime),
        Image::Busybox,
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    );
    server.network = Network::Named(network.clone());
    server.volumes = vec![www];
    let url = format!("http://{}:{CONTAINER_PORT}/{FILE}", server.name);
    let mut client = Run::new(
        &name("named-client", runtime),
        Image::Busybox,
        &["wget", "-q", "-O", "-", &url],
    );
    client.network = Network::Named(network.clone());
    with_network(engine, &network, &NetworkOptions::default(), || {
        with_container(engine, runtime, &server, || {
            // The server answers before the client asks.
            let address = container_ipv4(engine, &server.name)?;
            let addr = SocketAddr::from((address, CONTAINER_PORT));
            hostnet::http_get_eventually(&netns, addr, &format!("/{FILE}"), SERVER_START)?;
            let out = run_with(engine, runtime, &client, None)?.ok(&format!("wget {url}"))?;
            same_bytes(
                &format!("wget {url}"),
                out.stdout.as_bytes(),
                content.as_bytes(),
            )?;
            Ok(vec![
                format!("code={:?}", out.code),
                "fetched the file by the server's name".into(),
                format!("stderr={:?}", out.stderr),
            ])
        })
    })
}

/// A network with an MTU of 1400: the container's eth0 has it.
fn network_mtu(engine: &dyn Engine, runtime: Runtime, _: &Path) -> Result<Seen, String> {
    let network = name("mtu", runtime);
    let options = NetworkOptions {
        mtu: Some(1400),
        ..NetworkOptions::default()
    };
    let mut run = Run::new(
        &name("mtu", runtime),
        Image::Busybox,
        &["cat", "/sys/class/net/eth0/mtu"],
    );
    run.network = Network::Named(network.clone());
    let out = with_network(engine, &network, &options, || {
        run_with(engine, runtime, &run, None)
    })?;
    if out.stdout.trim() != "1400" {
        return Err(format!("eth0's MTU on a 1400-byte network: {out:?}"));
    }
    Ok(outcome_lines(&out))
}

/// The dual-stack network's subnets.
const DUAL_STACK: [&str; 2] = ["10.90.0.0/24", "fd00:4855:534b::/64"];

/// podman: a dual-stack network; the container has a global IPv6 address
/// in its subnet and fetches from a server on the host at the bridge's
/// IPv6 gateway.
fn dual_stack(engine: &dyn Engine, runtime: Runtime, _: &Path) -> Result<Seen, String> {
    if engine.name() != "podman" {
        return Ok(vec!["podman only".into()]);
    }
    let netns = engine.host_netns()?;
    let network = name("dual", runtime);
    let options = NetworkOptions {
        subnets: DUAL_STACK.map(String::from).to_vec(),
        ..NetworkOptions::default()
    };
    let prefix = "fd00:4855:534b:";
    let content = text_file(4, 8 << 10);
    let port = HOST_PORT + 20;
    // Addresses are tentative until their duplicate detection ends: ask
    // for a few seconds.
    let script = format!(
        "ip -6 -o addr show dev eth0 scope global; \
         gw=$(ip -6 route | awk '/^default/ {{print $3; exit}}'); echo gateway $gw; \
         for i in $(seq 20); do wget -q -O /tmp/f http://[$gw]:{port}/{FILE} && break; \
         sleep 0.5; done; echo; cat /tmp/f"
    );
    let mut run = Run::new(
        &name("dual", runtime),
        Image::Busybox,
        &["sh", "-c", &script],
    );
    run.network = Network::Named(network.clone());
    with_network(engine, &network, &options, || {
        let gateway = engine
            .gateways(&run.network)?
            .into_iter()
            .find(IpAddr::is_ipv6)
            .ok_or_else(|| format!("{network} has no IPv6 gateway"))?;
        let server = HttpServer::start(
            &netns,
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            Arc::new(content.clone().into_bytes()),
        )?;
        let out = run_with(engine, runtime, &run, None);
        let visits = server.stop()?;
        let out = out?.ok("the IPv6 client")?;
        let (head, body) = out.stdout.split_once("\n\n").unwrap_or_default();
        let global = head
            .lines()
            .any(|l| l.contains(&format!(" inet6 {prefix}")) && l.contains("scope global"));
        let route = head.lines().any(|l| l == format!("gateway {gateway}"));
        let fetched = body == content;
        let peer = visits
            .iter()
            .any(|v| v.local.ip() == gateway && v.peer.ip().to_string().starts_with(prefix));
        if !(global && route && fetched && peer) {
            return Err(format!(
                "global address in {}: {global}, default route via {gateway}: {route}, \
                 fetched: {fetched}, the server saw {visits:?}; the container printed {:?}",
                DUAL_STACK[1], out.stdout
            ));
        }
        Ok(vec![
            format!("code={:?}", out.code),
            format!("a global address in {}", DUAL_STACK[1]),
            "the default IPv6 route is via the bridge's gateway".into(),
            "fetched the host's file over IPv6 from the subnet".into(),
        ])
    })
}

/// 100 MiB each way between the host and a container on the default
/// network, byte for byte: the container fetches a file the test serves
/// and hashes it; it sends a file from a volume with `nc` to a listener
/// the test runs, which hashes what came.
fn transfer_100mib(engine: &dyn Engine, runtime: Runtime, scratch: &Path) -> Result<Seen, String> {
    const SIZE: usize = 100 << 20;
    let netns = engine.host_netns()?;
    let down = Arc::new(hostnet::random_bytes(5, SIZE));
    let down_sha = hostnet::sha256_hex(&down)?;
    let volume = scratch.join("up");
    std::fs::create_dir_all(&volume).map_err(|e| e.to_string())?;
    let up = volume.join("up.bin");
    std::fs::write(&up, hostnet::random_bytes(6, SIZE)).map_err(|e| e.to_string())?;
    let up_sha = hostnet::sha256_file(&up)?;
    let (http_port, sink_port) = (HOST_PORT + 30, HOST_PORT + 31);
    let received: PathBuf = scratch.join("received.bin");
    let server = HttpServer::start(&netns, SocketAddr::from(([0, 0, 0, 0], http_port)), down)?;
    let sink = Sink::start(
        &netns,
        SocketAddr::from(([0, 0, 0, 0], sink_port)),
        received.clone(),
    );
    let script = format!(
        "{GATEWAY}; wget -q -O - http://$gw:{http_port}/big | sha256sum; \
         nc $gw {sink_port} < /data/up.bin; echo nc exited $?"
    );
    let mut run = Run::new(
        &name("transfer", runtime),
        Image::Busybox,
        &["sh", "-c", &script],
    );
    run.network = Network::Default;
    run.volumes = vec![Volume {
        host: volume,
        container: "/data".into(),
        read_only: true,
    }];
    let out = match &sink {
        Ok(_) => run_with(engine, runtime, &run, None),
        Err(e) => Err(e.clone()),
    };
    server.stop()?;
    let bytes = sink.and_then(Sink::finish);
    let out = out?.ok("the transfer")?;
    let bytes = bytes?;
    let got_sha = hostnet::sha256_file(&received)?;
    for file in [&received, &up] {
        let _ = std::fs::remove_file(file);
    }
    let downloaded = out.stdout.split_whitespace().next() == Some(down_sha.as_str());
    let uploaded = got_sha == up_sha && bytes == SIZE as u64;
    if !downloaded || !uploaded {
        return Err(format!(
            "download sha256 {down_sha} in the container: {downloaded} ({:?}); \
             upload: {bytes} bytes, sha256 {got_sha}, expected {up_sha}",
            out.stdout
        ));
    }
    Ok(vec![
        format!("code={:?}", out.code),
        "100 MiB down, same sha256".into(),
        "100 MiB up, same sha256".into(),
        format!("{:?}", out.stdout.lines().last().unwrap_or_default()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_ipv4_reads_ip_addr_and_hostname_output() {
        let ip = "2: eth0    inet 10.88.0.5/16 brd 10.88.255.255 scope global eth0";

        assert_eq!(first_ipv4(ip), Some(Ipv4Addr::new(10, 88, 0, 5)));
        assert_eq!(
            first_ipv4("127.0.0.1 172.17.0.2 "),
            Some(Ipv4Addr::new(172, 17, 0, 2))
        );
        assert_eq!(first_ipv4("fd00::2"), None);
    }
}
