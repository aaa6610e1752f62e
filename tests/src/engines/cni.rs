//! CNI networks for `ctr run --cni`, kept in the containerd fixture.
//!
//! ctr 1.6 loads its network with go-cni's defaults, which it cannot be
//! told otherwise: the first config in `/etc/cni/net.d`, plugins from
//! `/opt/cni/bin`, and libcni's result cache in `/var/lib/cni`. So each
//! `ctr run --cni` starts in a mount namespace of its own in which the
//! fixture's directories are bound over those paths (over the nearest
//! existing parent, through a symlink, where a path does not exist on the
//! host): the network's own config directory, Debian's plugins
//! (`containernetworking-plugins`, in `/usr/lib/cni`) and a cache in the
//! fixture. The host's files stay untouched.
//!
//! Each network is a `bridge` plugin config (the bridge is the gateway, no
//! masquerading: nothing leaves the fixture's network namespace) with
//! `host-local` addresses whose leases live in the fixture too. The
//! bridges are made in containerd's network namespace (ctr runs the
//! plugins there) and vanish with it. IPv4 only.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};

use super::NetworkOptions;

/// Where Debian's containernetworking-plugins are.
pub const PLUGIN_DIR: &str = "/usr/lib/cni";

/// The plugins the configs use.
pub const PLUGINS: &[&str] = &["bridge", "host-local"];

/// The name of the network `Network::Default` stands for.
pub const DEFAULT_NETWORK: &str = "husk-ctr-default";

/// go-cni's config directory, plugin directory and libcni's cache.
const CONF_DIR: &str = "/etc/cni/net.d";
const BIN_DIR: &str = "/opt/cni/bin";
const CACHE_DIR: &str = "/var/lib/cni";

/// The CNI networks of one containerd fixture, under `DIR/cni`.
pub struct CniNetworks {
    dir: PathBuf,
    next: AtomicU8,
}

impl CniNetworks {
    /// Lays out `dir/cni` with the default network; fails naming what is
    /// missing (the plugins, or `/etc/cni/net.d`, which podman's package
    /// creates).
    pub fn setup(dir: &Path) -> Result<CniNetworks, String> {
        for plugin in PLUGINS {
            let path = Path::new(PLUGIN_DIR).join(plugin);
            if !path.is_file() {
                return Err(format!(
                    "{} is not installed (hack/install-deps.sh installs \
                     containernetworking-plugins)",
                    path.display()
                ));
            }
        }
        let networks = CniNetworks {
            dir: dir.join("cni"),
            next: AtomicU8::new(0),
        };
        for sub in ["networks", "ipam", "cache", "mounts"] {
            let path = networks.dir.join(sub);
            std::fs::create_dir_all(&path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
        }
        networks.create(DEFAULT_NETWORK, &NetworkOptions::default())?;
        Ok(networks)
    }

    fn conf_dir(&self, name: &str) -> PathBuf {
        self.dir.join("networks").join(name)
    }

    fn conf_file(&self, name: &str) -> PathBuf {
        self.conf_dir(name).join(format!("{name}.conflist"))
    }

    /// Writes the config of the network `name`: the next free bridge
    /// (`hcniN`) and, unless `options` names an IPv4 subnet, `10.77.N.0/24`.
    pub fn create(&self, name: &str, options: &NetworkOptions) -> Result<(), String> {
        if self.conf_dir(name).exists() {
            return Err(format!("the CNI network {name} exists"));
        }
        if options.subnets.iter().any(|s| s.contains(':')) {
            return Err(format!("the CNI network {name}: the fixture is IPv4 only"));
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let subnet = match options.subnets.first() {
            Some(subnet) => subnet.clone(),
            None => format!("10.77.{n}.0/24"),
        };
        let gateway = first_host(&subnet)?;
        let config = conflist(
            name,
            &format!("hcni{n}"),
            &subnet,
            gateway,
            options.mtu,
            &self.dir.join("ipam"),
        );
        std::fs::create_dir_all(self.conf_dir(name)).map_err(|e| e.to_string())?;
        let path = self.conf_file(name);
        std::fs::write(&path, serde_json::to_string_pretty(&config).expect("JSON"))
            .map_err(|e| format!("writing {}: {e}", path.display()))
    }

    fn config(&self, name: &str) -> Result<serde_json::Value, String> {
        let path = self.conf_file(name);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("the CNI network {name}: reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The bridge's address on the network `name`.
    pub fn gateway(&self, name: &str) -> Result<IpAddr, String> {
        let config = self.config(name)?;
        config["plugins"][0]["ipam"]["ranges"][0][0]["gateway"]
            .as_str()
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| format!("the CNI network {name} has no gateway: {config}"))
    }

    /// Removes the network `name`: its config, its leases and its bridge
    /// (in the namespace at `netns`, if the plugin made it already).
    pub fn remove(&self, name: &str, netns: &Path) -> Result<(), String> {
        let config = self.config(name)?;
        if let Some(bridge) = config["plugins"][0]["bridge"].as_str() {
            let mut del = Command::new("ip");
            del.args(["link", "del", bridge]);
            super::daemon::enter_netns(&mut del, netns)?;
            // Absent until a container joined the network.
            let _ = del.output();
        }
        let _ = std::fs::remove_dir_all(self.dir.join("ipam").join(name));
        std::fs::remove_dir_all(self.conf_dir(name))
            .map_err(|e| format!("removing the CNI network {name}: {e}"))
    }

    /// The networks besides the default one.
    pub fn list(&self) -> Result<Vec<String>, String> {
        let entries = std::fs::read_dir(self.dir.join("networks")).map_err(|e| e.to_string())?;
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != DEFAULT_NETWORK)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Makes `command` (a `ctr run --cni`) start in a mount namespace
    /// where go-cni's directories are the network `name`'s config, the
    /// plugins and the fixture's cache (see the module documentation).
    pub fn enter(&self, command: &mut Command, name: &str) -> Result<(), String> {
        if !self.conf_file(name).is_file() {
            return Err(format!("no CNI network {name}"));
        }
        let binds = [
            (CONF_DIR, self.conf_dir(name)),
            (BIN_DIR, PathBuf::from(PLUGIN_DIR)),
            (CACHE_DIR, self.dir.join("cache")),
        ];
        let mut mounts = Vec::new();
        for (i, (target, content)) in binds.iter().enumerate() {
            let mirror = self.dir.join("mounts").join(i.to_string());
            let (over, source) = bind_for(Path::new(target), content, &mirror)?;
            mounts.push((c_path(&source)?, c_path(&over)?));
        }
        // SAFETY: unshare and mount are async-signal-safe and only read
        // the C strings, which the closure owns.
        unsafe {
            command.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNS) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let root = c"/";
                let flags = libc::MS_REC | libc::MS_PRIVATE;
                let rc = libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                );
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for (source, target) in &mounts {
                    let rc = libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    );
                    if rc < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Ok(())
    }
}

/// How `content` is made to appear at `target`: the directory to bind
/// over and what to bind there. An existing `target` is covered by
/// `content` itself; otherwise its nearest existing parent is covered by
/// `mirror`, a directory in which the rest of the path is a symlink to
/// `content` (and which hides the rest of that parent).
pub fn bind_for(
    target: &Path,
    content: &Path,
    mirror: &Path,
) -> Result<(PathBuf, PathBuf), String> {
    if target.is_dir() {
        return Ok((target.to_path_buf(), content.to_path_buf()));
    }
    let mut over = target.to_path_buf();
    while !over.is_dir() {
        over = over
            .parent()
            .ok_or_else(|| format!("{} has no existing parent", target.display()))?
            .to_path_buf();
    }
    if over.components().all(|c| c == Component::RootDir) {
        return Err(format!(
            "{}: no parent of it but / exists; refusing to cover /",
            target.display()
        ));
    }
    let rest = target.strip_prefix(&over).map_err(|e| e.to_string())?;
    let link = mirror.join(rest);
    let parent = link.parent().expect("the link is below the mirror");
    std::fs::create_dir_all(parent).map_err(|e| format!("creating {}: {e}", parent.display()))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(content, &link)
        .map_err(|e| format!("linking {} to {}: {e}", link.display(), content.display()))?;
    Ok((over, mirror.to_path_buf()))
}

fn c_path(path: &Path) -> Result<CString, String> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| format!("{}: {e}", path.display()))
}

/// The first host address of the IPv4 `subnet` (`a.b.c.d/len`).
pub fn first_host(subnet: &str) -> Result<IpAddr, String> {
    let (address, len) = subnet
        .split_once('/')
        .ok_or_else(|| format!("{subnet} is not a.b.c.d/len"))?;
    let address: Ipv4Addr = address.parse().map_err(|e| format!("{subnet}: {e}"))?;
    let len: u32 = len
        .parse()
        .ok()
        .filter(|len| *len <= 30)
        .ok_or_else(|| format!("{subnet}: bad prefix length"))?;
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    Ok(IpAddr::V4(Ipv4Addr::from((u32::from(address) & mask) + 1)))
}

/// The config list of a bridge network: `bridge` on `bridge_name` as the
/// gateway, with `host-local` addresses from `subnet` (leases in
/// `ipam_dir`) and a default route.
pub fn conflist(
    name: &str,
    bridge_name: &str,
    subnet: &str,
    gateway: IpAddr,
    mtu: Option<u32>,
    ipam_dir: &Path,
) -> serde_json::Value {
    let mut bridge = serde_json::json!({
        "type": "bridge",
        "bridge": bridge_name,
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": subnet, "gateway": gateway.to_string()}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": ipam_dir,
        },
    });
    if let Some(mtu) = mtu {
        bridge["mtu"] = serde_json::json!(mtu);
    }
    serde_json::json!({"cniVersion": "1.0.0", "name": name, "plugins": [bridge]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_host_is_one_past_the_network_address() {
        assert_eq!(first_host("10.77.3.0/24").unwrap().to_string(), "10.77.3.1");
        assert_eq!(first_host("10.9.8.7/16").unwrap().to_string(), "10.9.0.1");
        assert!(first_host("10.0.0.0").is_err());
        assert!(first_host("10.0.0.0/31").is_err());
    }

    #[test]
    fn conflist_is_a_gateway_bridge_with_host_local_leases_in_the_fixture() {
        let config = conflist(
            "n1",
            "hcni1",
            "10.77.1.0/24",
            "10.77.1.1".parse().unwrap(),
            Some(1400),
            Path::new("/d/ipam"),
        );

        let bridge = &config["plugins"][0];
        assert_eq!(config["name"], "n1");
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["bridge"], "hcni1");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["mtu"], 1400);
        assert_eq!(bridge["ipam"]["dataDir"], "/d/ipam");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["gateway"], "10.77.1.1");
    }

    #[test]
    fn bind_for_covers_an_existing_target_with_the_content_itself() {
        let tmp = tempfile::tempdir().unwrap();

        let (over, source) = bind_for(tmp.path(), Path::new("/c"), &tmp.path().join("m")).unwrap();

        assert_eq!(
            (over.as_path(), source.as_path()),
            (tmp.path(), Path::new("/c"))
        );
    }

    #[test]
    fn bind_for_covers_the_nearest_parent_with_a_mirror_linking_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("opt/cni/bin");
        std::fs::create_dir(tmp.path().join("opt")).unwrap();
        let mirror = tmp.path().join("mirror");

        let (over, source) = bind_for(&target, Path::new("/usr/lib/cni"), &mirror).unwrap();

        assert_eq!(over, tmp.path().join("opt"));
        assert_eq!(source, mirror);
        assert_eq!(
            std::fs::read_link(mirror.join("cni/bin")).unwrap(),
            Path::new("/usr/lib/cni")
        );
    }
}
