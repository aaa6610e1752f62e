//! `husk-bench net`: TCP throughput each way (iperf3) and TCP round-trip
//! latency between a peer network namespace and a container, the same
//! bundle run by husk and by runc, alternating, in one run.
//!
//! Each run makes two network namespaces of its own (the container's and a
//! peer's) joined by a veth, so the traffic never leaves them; the
//! container runs `iperf3 -s` and a Python TCP echo server; from the peer,
//! `iperf3 -c` measures each direction and a client here sends one byte
//! and waits for it back, many times (TCP_NODELAY), keeping the median.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::Samples;

/// The container's address on the veth.
const CONTAINER: &str = "10.240.0.2";
/// The peer's address.
const PEER: &str = "10.240.0.1";
/// The echo server's port.
const ECHO_PORT: u16 = 7;
/// iperf3's port.
const IPERF_PORT: u16 = 5201;
/// Round trips per latency measurement (after as many for warm-up).
const ROUND_TRIPS: usize = 500;

/// The echo server the container runs.
const ECHO_SERVER: &str = "import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7))
s.listen(4)
while True:
    c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        d = c.recv(64)
        if not d:
            break
        c.sendall(d)
    c.close()
";

/// What `net` is given.
pub struct NetArgs {
    /// Runs of each runtime.
    pub runs: usize,
    /// A rootfs with iperf3 and python3.
    pub rootfs: PathBuf,
    /// The husk binary.
    pub husk: PathBuf,
    /// The runc binary.
    pub runc: PathBuf,
    /// Seconds of each iperf3 test.
    pub seconds: u32,
}

/// What one runtime measured.
#[derive(Default)]
struct NetSamples {
    /// Peer to container, Mbit/s.
    up: Samples<f64>,
    /// Container to peer, Mbit/s.
    down: Samples<f64>,
    /// Median round trip of each run, µs.
    rtt: Samples<f64>,
}

/// Runs the benchmark and prints its table.
pub fn bench_net(args: NetArgs) -> Result<()> {
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    let root = tempfile::Builder::new()
        .prefix("husk-bench-net-")
        .tempdir()?;
    println!(
        "rootfs: {}\nruns: {} of each, alternating; iperf3 -t {}; {ROUND_TRIPS} round trips of 1 byte\n",
        args.rootfs.display(),
        args.runs,
        args.seconds
    );
    let (mut husk, mut runc) = (NetSamples::default(), NetSamples::default());
    for run in 0..args.runs {
        for (name, binary, samples) in [
            ("runc", &args.runc, &mut runc),
            ("husk", &args.husk, &mut husk),
        ] {
            measure(
                &args,
                binary,
                root.path(),
                &format!("{name}-{run}"),
                samples,
            )
            .with_context(|| format!("{name}, run {run}"))?;
        }
        eprint!(".");
    }
    eprintln!();
    println!("{:<34}{:>10}{:>10}{:>10}", "", "min", "median", "max");
    println!("{}", husk.up.row("husk: peer -> container (Mbit/s)"));
    println!("{}", runc.up.row("runc: peer -> container (Mbit/s)"));
    println!("{}", husk.down.row("husk: container -> peer (Mbit/s)"));
    println!("{}", runc.down.row("runc: container -> peer (Mbit/s)"));
    println!("{}", husk.rtt.row("husk: TCP round trip (µs)"));
    println!("{}", runc.rtt.row("runc: TCP round trip (µs)"));
    println!(
        "\nhusk / runc, medians: throughput in {:.3}, out {:.3}; round trip {:.1} x",
        husk.up.median() / runc.up.median(),
        husk.down.median() / runc.down.median(),
        husk.rtt.median() / runc.rtt.median()
    );
    Ok(())
}

/// One container of `binary`: both iperf3 directions and the round trip.
fn measure(
    args: &NetArgs,
    binary: &Path,
    root: &Path,
    id: &str,
    samples: &mut NetSamples,
) -> Result<()> {
    let pair = NetnsPair::create(id)?;
    let bundle = tempfile::Builder::new()
        .prefix("husk-bench-net-bundle-")
        .tempdir()?;
    write_bundle(
        &args.husk,
        bundle.path(),
        &args.rootfs,
        &pair.container_path(),
    )?;
    let container = Container::start(binary, root, bundle.path(), id)?;
    wait_for_port(&pair.peer, ECHO_PORT)?;
    samples.up.0.push(iperf(&pair.peer, false, args.seconds)?);
    samples.down.0.push(iperf(&pair.peer, true, args.seconds)?);
    samples
        .rtt
        .0
        .push(round_trip(&pair.peer)?.as_secs_f64() * 1e6);
    drop(container);
    Ok(())
}

/// The bundle: `husk spec` with the rootfs, both servers, a writable /tmp
/// and the container's namespace.
fn write_bundle(husk: &Path, dir: &Path, rootfs: &Path, netns: &Path) -> Result<()> {
    let status = Command::new(husk)
        .args(["spec", "--bundle"])
        .arg(dir)
        .status()?;
    anyhow::ensure!(status.success(), "husk spec: {status}");
    let path = dir.join("config.json");
    let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["root"]["path"] = rootfs.to_string_lossy().into_owned().into();
    spec["process"]["terminal"] = false.into();
    let script = format!("iperf3 -s -D -p {IPERF_PORT} && exec python3 -c \"$ECHO\"");
    spec["process"]["args"] = serde_json::json!(["sh", "-c", script]);
    spec["process"]["env"]
        .as_array_mut()
        .context("process.env")?
        .push(format!("ECHO={ECHO_SERVER}").into());
    spec["mounts"]
        .as_array_mut()
        .context("mounts")?
        .push(serde_json::json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}));
    let namespaces = spec["linux"]["namespaces"]
        .as_array_mut()
        .context("linux.namespaces")?;
    namespaces.retain(|ns| ns["type"] != "network");
    namespaces.push(serde_json::json!({"type": "network", "path": netns}));
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

/// `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The container's namespace and the peer's, joined by a veth.
struct NetnsPair {
    container: String,
    peer: String,
}

impl NetnsPair {
    fn create(id: &str) -> Result<NetnsPair> {
        let base = format!("husk-bench-{}-{id}", std::process::id());
        let pair = NetnsPair {
            container: format!("{base}-c"),
            peer: format!("{base}-p"),
        };
        for ns in [&pair.container, &pair.peer] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let (c, p) = (pair.container.as_str(), pair.peer.as_str());
        ip(&[
            "link", "add", "hb-c", "netns", c, "type", "veth", "peer", "name", "hb-p", "netns", p,
        ])?;
        ip(&["-n", c, "link", "set", "hb-c", "name", "eth0"])?;
        ip(&[
            "-n",
            c,
            "addr",
            "add",
            &format!("{CONTAINER}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", c, "link", "set", "eth0", "up"])?;
        ip(&["-n", p, "addr", "add", &format!("{PEER}/24"), "dev", "hb-p"])?;
        ip(&["-n", p, "link", "set", "hb-p", "up"])?;
        Ok(pair)
    }

    fn container_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.container)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.container, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A created and started container, killed and deleted on drop.
struct Container {
    binary: PathBuf,
    root: PathBuf,
    id: String,
}

impl Container {
    fn start(binary: &Path, root: &Path, bundle: &Path, id: &str) -> Result<Container> {
        let container = Container {
            binary: binary.to_path_buf(),
            root: root.to_path_buf(),
            id: id.to_string(),
        };
        let bundle = bundle.to_string_lossy();
        for args in [vec!["create", "--bundle", &bundle, id], vec!["start", id]] {
            let status = container
                .command(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .status()?;
            anyhow::ensure!(
                status.success(),
                "{} {}: {status}",
                binary.display(),
                args[0]
            );
        }
        Ok(container)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.binary);
        command.arg("--root").arg(&self.root).args(args);
        command
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.command(&["kill", &self.id, "KILL"]).output();
        let _ = self.command(&["delete", "--force", &self.id]).output();
    }
}

/// Runs `f` on a thread that joins the namespace `netns`.
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = std::fs::File::open(Path::new("/run/netns").join(netns))?;
    std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in {netns} panicked"))?
}

/// Waits up to a minute for the container to listen on `port`.
fn wait_for_port(peer: &str, port: u16) -> Result<()> {
    in_netns(peer, move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if TcpStream::connect((CONTAINER, port)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("nothing listens on {CONTAINER}:{port} after a minute");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })?
}

/// One iperf3 test from the peer, Mbit/s received; `reverse` measures the
/// container sending. `iperf3 -D` returns before its daemon listens, and a
/// probe of its port would count as a failed test there: a client that
/// finds no server yet tries again, for up to a minute.
fn iperf(peer: &str, reverse: bool, seconds: u32) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match iperf_once(peer, reverse, seconds) {
            Err(e) if Instant::now() < deadline && not_listening_yet(&e) => {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// Whether an iperf3 failure means its server was not serving yet.
fn not_listening_yet(e: &anyhow::Error) -> bool {
    let text = e.to_string();
    [
        "unable to connect",
        "Connection refused",
        "Connection reset",
        "control message",
        "server is busy",
    ]
    .iter()
    .any(|m| text.contains(m))
}

fn iperf_once(peer: &str, reverse: bool, seconds: u32) -> Result<f64> {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", peer, "iperf3", "-J", "-c", CONTAINER]);
    command.args(["-p", &IPERF_PORT.to_string(), "-t", &seconds.to_string()]);
    if reverse {
        command.arg("-R");
    }
    let out = command.output().context("running iperf3")?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 printed no JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if let Some(error) = report["error"].as_str() {
        bail!("iperf3: {error}");
    }
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e6)
        .context("iperf3's report has no end.sum_received.bits_per_second")
}

/// The median round trip of one byte to the echo server.
fn round_trip(peer: &str) -> Result<Duration> {
    in_netns(peer, || -> Result<Duration> {
        let mut conn = TcpStream::connect((CONTAINER, ECHO_PORT))?;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut times = Samples::<Duration>::default();
        let mut byte = [0u8; 1];
        for i in 0..2 * ROUND_TRIPS {
            let t0 = Instant::now();
            conn.write_all(b"x")?;
            conn.read_exact(&mut byte)?;
            if i >= ROUND_TRIPS {
                times.0.push(t0.elapsed());
            }
        }
        Ok(times.median())
    })?
}
