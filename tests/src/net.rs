//! Network fixtures of the CLI network tests: a pair of network namespaces
//! the test makes itself (`husk-t<pid>-<n>-ctr` for the container, `...-peer`
//! for the other end) joined by a veth, with addresses, a route and a
//! permanent neighbour, so that a container's traffic stays between them.
//! Both go away on drop. [`in_netns`] runs code inside one of them (a
//! thread that joins it), for servers and clients written in the test.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The container side's address.
pub const CONTAINER_V4: &str = "10.231.0.2";
/// The peer's address (the container's gateway).
pub const PEER_V4: &str = "10.231.0.1";
/// The container side's IPv6 address.
pub const CONTAINER_V6: &str = "fd00:231::2";
/// The peer's IPv6 address.
pub const PEER_V6: &str = "fd00:231::1";
/// The link's MTU (not the default, so a copy of it shows).
pub const MTU: u32 = 1400;
/// A route with an MTU of its own.
pub const MTU_ROUTE: &str = "10.232.0.0/16";
/// That route's MTU.
pub const ROUTE_MTU: u32 = 1300;
/// An address of the peer inside [`MTU_ROUTE`].
pub const PEER_BEHIND_ROUTE: &str = "10.232.0.1";
/// The permanent neighbour's address and MAC.
pub const NEIGHBOUR: (&str, &str) = ("10.231.0.9", "02:00:00:00:02:09");

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Runs `ip ARGS`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ip ARGS` output (stdout), panicking on failure.
pub fn ip_output(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates `name` with `lo` up.
    pub fn create(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        Netns { name: name.into() }
    }

    /// Its path, as a spec's `linux.namespaces` names it.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// `ip -n NAME ARGS` output.
    pub fn ip_output(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip_output(&all)
    }

    /// `tc -n NAME qdisc show` output.
    pub fn qdiscs(&self) -> String {
        let out = Command::new("tc")
            .args(["-n", &self.name, "qdisc", "show"])
            .output()
            .expect("running tc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Two namespaces and the veth between them.
pub struct VethPair {
    /// Where the container's interface (`eth0`) is.
    pub container: Netns,
    /// The other end (`peer0`), with [`PEER_V4`] and [`PEER_V6`].
    pub peer: Netns,
}

impl VethPair {
    /// Empty namespaces, no veth yet ([`VethPair::connect`] adds it).
    pub fn empty() -> VethPair {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("husk-t{}-{n}", std::process::id());
        VethPair {
            container: Netns::create(&format!("{base}-ctr")),
            peer: Netns::create(&format!("{base}-peer")),
        }
    }

    /// Both namespaces, connected and configured: `eth0` in the container's
    /// (MTU [`MTU`], [`CONTAINER_V4`]/24, [`CONTAINER_V6`]/64, default route
    /// via the peer, [`MTU_ROUTE`] with MTU [`ROUTE_MTU`], the permanent
    /// [`NEIGHBOUR`]), `peer0` in the peer's.
    pub fn connected() -> VethPair {
        let pair = VethPair::empty();
        pair.connect();
        pair
    }

    /// Adds and configures the veth (see [`VethPair::connected`]).
    pub fn connect(&self) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (a, b) = (
            format!("hv{}a{n}", std::process::id()),
            format!("hv{}b{n}", std::process::id()),
        );
        ip(&[
            "link",
            "add",
            &a,
            "mtu",
            &MTU.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "mtu",
            &MTU.to_string(),
        ]);
        ip(&["link", "set", &a, "netns", &self.container.name]);
        ip(&["link", "set", &b, "netns", &self.peer.name]);
        let c = &self.container;
        c.ip(&["link", "set", &a, "name", "eth0"]);
        c.ip(&["addr", "add", &format!("{CONTAINER_V4}/24"), "dev", "eth0"]);
        c.ip(&[
            "addr",
            "add",
            &format!("{CONTAINER_V6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        c.ip(&["link", "set", "eth0", "up"]);
        c.ip(&["route", "add", "default", "via", PEER_V4]);
        c.ip(&[
            "route",
            "add",
            MTU_ROUTE,
            "via",
            PEER_V4,
            "mtu",
            &ROUTE_MTU.to_string(),
        ]);
        c.ip(&[
            "neigh",
            "add",
            NEIGHBOUR.0,
            "lladdr",
            NEIGHBOUR.1,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        let p = &self.peer;
        p.ip(&["link", "set", &b, "name", "peer0"]);
        p.ip(&["addr", "add", &format!("{PEER_V4}/24"), "dev", "peer0"]);
        p.ip(&[
            "addr",
            "add",
            &format!("{PEER_V6}/64"),
            "dev",
            "peer0",
            "nodad",
        ]);
        p.ip(&[
            "addr",
            "add",
            &format!("{PEER_BEHIND_ROUTE}/32"),
            "dev",
            "peer0",
        ]);
        p.ip(&["link", "set", "peer0", "up"]);
    }

    /// What husk must not leave in the container's namespace: its taps and
    /// ingress qdiscs.
    pub fn husk_leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .container
            .ip_output(&["-o", "link"])
            .lines()
            .filter(|l| l.contains("husk-tap"))
            .map(str::to_owned)
            .collect();
        left.extend(
            self.container
                .qdiscs()
                .lines()
                .filter(|l| l.contains("ingress"))
                .map(str::to_owned),
        );
        left
    }
}

/// Runs `f` on a thread inside the network namespace at `path`; panics
/// if it cannot enter it.
pub fn in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    try_in_netns(path, move || Ok(f())).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `f` on a thread inside the network namespace at `path`; an error
/// names the namespace.
pub fn try_in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, String> {
    let shown = path.display().to_string();
    let namespace = File::open(path).map_err(|e| format!("opening {shown}: {e}"))?;
    std::thread::spawn(move || {
        nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("entering {shown}: {e}"))?;
        f().map_err(|e| format!("in {shown}: {e}"))
    })
    .join()
    .map_err(|_| format!("the thread in {} panicked", path.display()))?
}

/// Points the bundle `config` (config.json as JSON) at the network
/// namespace `path`.
pub fn join_netns(config: &mut serde_json::Value, path: &Path) {
    let namespaces = config["linux"]["namespaces"]
        .as_array_mut()
        .expect("linux.namespaces");
    namespaces.retain(|ns| ns["type"] != "network");
    namespaces.push(serde_json::json!({"type": "network", "path": path}));
}
