//! The files the CRI fixture writes for containerd: its `config.toml` (the
//! CRI plugin on, both runtime handlers, every path in the fixture) and the
//! CNI network of its pods.
//!
//! The option names are containerd 1.6's (`pkg/cri/config/config.go`,
//! config version 2). containerd brings each pod's loopback up itself
//! (go-cni's `WithLoNetwork`, the `loopback` plugin from `bin_dir`), so
//! the network's chain is `bridge` then `portmap`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::Handler;

/// The image CRI runs as each pod's sandbox container ([`super::pause`]).
pub const PAUSE_IMAGE: &str = "localhost/husk-pause:latest";

/// The CNI network's name, bridge and subnet. They live in containerd's
/// own network namespace, so every fixture can use the same ones.
pub const NETWORK: &str = "husk-cri";
/// The bridge the `bridge` plugin makes (the pods' gateway).
pub const BRIDGE: &str = "hcri0";
/// The pods' subnet; its first address is the bridge's.
pub const SUBNET: &str = "10.89.0.0/24";
/// The bridge's address: "the host" as the pods see it.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);

/// Debian's containernetworking-plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The plugins the fixture needs.
pub const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "portmap", "loopback"];

/// What `config.toml` names.
#[derive(Debug, Clone)]
pub struct ConfigPaths {
    /// The fixture directory: root, state, sockets, runc's root, CNI.
    pub dir: PathBuf,
    /// The husk shim (`runtime_path` of the `husk` handler).
    pub husk_shim: PathBuf,
}

impl ConfigPaths {
    /// containerd's gRPC socket (CRI included).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The directory of the CNI configs.
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("net.d")
    }

    /// host-local's leases.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("cni-ipam")
    }
}

/// A TOML string (paths in the fixture are plain, but quote them right).
fn quoted(path: &Path) -> String {
    serde_json::to_string(path).expect("a path serializes")
}

/// containerd's `config.toml` for the fixture.
pub fn config_toml(paths: &ConfigPaths) -> String {
    let dir = &paths.dir;
    let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
    format!(
        "# Written by husk-tests; see tests/src/cri/config.rs.\n\
         version = 2\n\
         root = {root}\n\
         state = {state}\n\
         [grpc]\n  address = {grpc}\n\
         [ttrpc]\n  address = {ttrpc}\n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n\
         [{cri}]\n\
         \x20 sandbox_image = \"{PAUSE_IMAGE}\"\n\
         \x20 restrict_oom_score_adj = true\n\
         \x20 stream_server_address = \"127.0.0.1\"\n\
         \x20 stream_server_port = \"0\"\n\
         \x20 max_container_log_line_size = 16384\n\
         [{cri}.containerd]\n\
         \x20 default_runtime_name = \"runc\"\n\
         [{cri}.containerd.runtimes.runc]\n\
         \x20 runtime_type = \"{runc_type}\"\n\
         [{cri}.containerd.runtimes.runc.options]\n\
         \x20 Root = {runc_root}\n\
         [{cri}.containerd.runtimes.husk]\n\
         \x20 runtime_type = \"{husk_type}\"\n\
         \x20 runtime_path = {husk_shim}\n\
         [{cri}.cni]\n\
         \x20 bin_dir = \"{CNI_BIN_DIR}\"\n\
         \x20 conf_dir = {conf_dir}\n\
         \x20 max_conf_num = 1\n",
        root = quoted(&dir.join("root")),
        state = quoted(&dir.join("state")),
        grpc = quoted(&paths.socket()),
        ttrpc = quoted(&dir.join("containerd.sock.ttrpc")),
        opt = quoted(&dir.join("opt")),
        runc_root = quoted(&dir.join("runc")),
        husk_shim = quoted(&paths.husk_shim),
        runc_type = Handler::Runc.runtime_type(),
        husk_type = Handler::Husk.runtime_type(),
        conf_dir = quoted(&paths.cni_conf_dir()),
    )
}

/// The variable that picks the network's plugins: `full` (the default) or
/// `bridge`, a bridge alone, for a host without netfilter NAT (the KVM
/// test host's stock kernel modules lack it): no masquerading, no hostPort.
pub const NETWORK_ENV: &str = "HUSK_CRI_NETWORK";

/// Whether [`NETWORK_ENV`] asks for the bridge alone.
pub fn bridge_only() -> bool {
    std::env::var(NETWORK_ENV).is_ok_and(|v| v == "bridge")
}

/// The pods' CNI network: a `bridge` that is their gateway and
/// masquerades (nothing leaves containerd's namespace, which has no other
/// link), `host-local` addresses from [`SUBNET`] with leases in
/// `ipam_dir`, and `portmap` for `PortMapping`s (hostPort); without NAT
/// ([`bridge_only`]) the bridge alone.
pub fn conflist(ipam_dir: &Path) -> serde_json::Value {
    let mut list = full_conflist(ipam_dir);
    if bridge_only() {
        let plugins = list["plugins"].as_array_mut().expect("a plugin list");
        plugins.retain(|p| p["type"] != "portmap");
        plugins[0]["ipMasq"] = false.into();
    }
    list
}

fn full_conflist(ipam_dir: &Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY.to_string()}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// Fails naming the first CNI plugin the fixture needs that is missing.
pub fn check_cni_plugins() -> Result<(), String> {
    for plugin in CNI_PLUGINS {
        let path = Path::new(CNI_BIN_DIR).join(plugin);
        if !path.is_file() {
            return Err(format!(
                "{} is not installed (hack/install-deps.sh installs containernetworking-plugins)",
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> ConfigPaths {
        ConfigPaths {
            dir: PathBuf::from("/d"),
            husk_shim: PathBuf::from("/t/containerd-shim-husk-v2"),
        }
    }

    #[test]
    fn config_toml_enables_cri_with_both_handlers_and_state_in_the_dir() {
        let text = config_toml(&paths());

        for line in [
            "root = \"/d/root\"",
            "state = \"/d/state\"",
            "  address = \"/d/containerd.sock\"",
            "[plugins.\"io.containerd.grpc.v1.cri\"]",
            "  sandbox_image = \"localhost/husk-pause:latest\"",
            "  restrict_oom_score_adj = true",
            "  runtime_type = \"io.containerd.runc.v2\"",
            "  Root = \"/d/runc\"",
            "  runtime_type = \"io.containerd.husk.v2\"",
            "  runtime_path = \"/t/containerd-shim-husk-v2\"",
            "  bin_dir = \"/usr/lib/cni\"",
            "  conf_dir = \"/d/net.d\"",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(!text.contains("disabled_plugins"), "{text}");
    }

    #[test]
    fn config_toml_parses_as_toml_with_the_handlers_as_tables() {
        let config: toml::Value = toml::from_str(&config_toml(&paths())).unwrap();

        let runtimes = &config["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        assert_eq!(
            runtimes["runc"]["runtime_type"].as_str(),
            Some("io.containerd.runc.v2")
        );
        assert_eq!(
            runtimes["husk"]["runtime_type"].as_str(),
            Some("io.containerd.husk.v2")
        );
    }

    #[test]
    fn conflist_chains_a_masquerading_gateway_bridge_and_portmap() {
        let list = conflist(Path::new("/d/cni-ipam"));

        let bridge = &list["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["isGateway"], true);
        assert_eq!(bridge["ipMasq"], true);
        assert_eq!(bridge["ipam"]["type"], "host-local");
        assert_eq!(bridge["ipam"]["dataDir"], "/d/cni-ipam");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], SUBNET);
        let portmap = &list["plugins"][1];
        assert_eq!(portmap["type"], "portmap");
        assert_eq!(portmap["capabilities"]["portMappings"], true);
    }
}
