//! The VM that husk-vmm runs, described as one typed value: what the husk
//! runtime writes (as JSON, `husk-vmm --config FILE`) and the monitor reads,
//! so neither depends on the other. Plain data and its checks, no I/O but
//! reading and writing the file; the control socket's line protocol lives
//! in [`control`].
//!
//! Devices are a list: each becomes one virtio-mmio device, in order, with
//! the next MMIO window and interrupt. File descriptors (a tap) are
//! inherited by the monitor under the number the description names.

pub mod control;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u8 = 64;
/// Smallest guest memory, in MiB.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest guest memory, in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// The largest MTU a NIC may be given (a frame plus its virtio-net header
/// must fit the device's 64 KiB buffers).
pub const MAX_MTU: u16 = 65_535 - 14 - 4;
/// The smallest MTU the guest kernel accepts for IPv4 (RFC 791).
pub const MIN_MTU: u16 = 68;

/// One microVM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// Uncompressed `vmlinux` with a PVH entry note.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// The kernel command line (the monitor appends one
    /// `virtio_mmio.device=` entry per device).
    pub cmdline: String,
    /// Number of vCPUs, 1 to [`MAX_VCPUS`].
    pub vcpus: u8,
    /// Guest RAM in MiB, [`MIN_MEMORY_MIB`] to [`MAX_MEMORY_MIB`].
    pub memory_mib: u64,
    /// File the serial console is written to.
    pub console_log: PathBuf,
    /// The control socket ([`control`]), if any.
    pub control_socket: Option<PathBuf>,
    /// The virtio devices, in bus order.
    pub devices: Vec<Device>,
    /// Whether the monitor jails itself once it has read this: a private
    /// mount namespace holding only the VM's files, no capabilities,
    /// no_new_privs, and a seccomp filter on every thread. On unless the
    /// runtime's configuration turns it off (to debug the monitor).
    #[serde(default = "jailed")]
    pub jail: bool,
    /// The most bytes the console log holds: past it the oldest output is
    /// dropped (see husk-console-log).
    #[serde(default = "console_log_max")]
    pub console_log_max: u64,
}

fn jailed() -> bool {
    true
}

/// The console log's cap unless the runtime says otherwise: 4 MiB.
pub const DEFAULT_CONSOLE_LOG_MAX: u64 = 4 << 20;

fn console_log_max() -> u64 {
    DEFAULT_CONSOLE_LOG_MAX
}

/// A virtio device of the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Device {
    /// virtio-vsock in the monitor, host side on Unix sockets (hybrid
    /// vsock: `uds` for host-initiated connections, `<uds>_<port>` for the
    /// guest's).
    Vsock {
        /// The guest's context id (3 or more).
        cid: u64,
        /// The base Unix socket.
        uds: PathBuf,
    },
    /// virtio-fs served by a vhost-user backend (virtiofsd).
    Fs {
        /// The backend's socket.
        socket: PathBuf,
        /// The tag the guest mounts.
        tag: String,
    },
    /// virtio-rng fed from the host's getrandom.
    Rng,
    /// virtio-net on a tap device.
    Net(NetDevice),
}

/// A NIC backed by a tap the monitor inherits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetDevice {
    /// The inherited tap fd, opened with `IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR` (the monitor sets its header size and offloads).
    pub tap_fd: i32,
    /// The guest NIC's MAC address.
    pub mac: [u8; 6],
    /// The NIC's MTU, offered to the guest with `VIRTIO_NET_F_MTU`.
    pub mtu: Option<u16>,
}

/// A description that cannot be run, and why.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a VM description.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde's message.
        #[source]
        source: serde_json::Error,
    },
    /// A value is out of range; names the field.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, e.g. `devices[2].mtu`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl VmSpec {
    /// Reads and checks a description written by [`VmSpec::write`].
    pub fn read(path: &Path) -> Result<VmSpec, SpecError> {
        let text = std::fs::read(path).map_err(|source| SpecError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let spec: VmSpec = serde_json::from_slice(&text).map_err(|source| SpecError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        spec.check()?;
        Ok(spec)
    }

    /// Writes the description to `path` (mode 0600).
    pub fn write(&self, path: &Path) -> Result<(), SpecError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| SpecError::Io {
            path: path.to_path_buf(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| f.write_all(&json))
            .map_err(io)
    }

    /// Checks every value the monitor relies on.
    pub fn check(&self) -> Result<(), SpecError> {
        let invalid = |field: String, message: String| Err(SpecError::Invalid { field, message });
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return invalid(
                "vcpus".into(),
                format!("{} is outside 1..={MAX_VCPUS}", self.vcpus),
            );
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return invalid(
                "memory_mib".into(),
                format!(
                    "{} MiB is outside {MIN_MEMORY_MIB} MiB..{MAX_MEMORY_MIB} MiB",
                    self.memory_mib
                ),
            );
        }
        let mut macs = Vec::new();
        for (index, device) in self.devices.iter().enumerate() {
            match device {
                Device::Vsock { cid, .. } if *cid < 3 || *cid > u64::from(u32::MAX) => {
                    return invalid(
                        format!("devices[{index}].cid"),
                        format!("{cid} is reserved or out of range (3..=u32::MAX)"),
                    );
                }
                Device::Net(net) => {
                    if net.tap_fd < 0 {
                        return invalid(
                            format!("devices[{index}].tap_fd"),
                            format!("{} is not a file descriptor", net.tap_fd),
                        );
                    }
                    if let Some(mtu) = net.mtu.filter(|m| !(MIN_MTU..=MAX_MTU).contains(m)) {
                        return invalid(
                            format!("devices[{index}].mtu"),
                            format!("{mtu} is outside {MIN_MTU}..={MAX_MTU}"),
                        );
                    }
                    if net.mac[0] & 1 != 0 {
                        return invalid(
                            format!("devices[{index}].mac"),
                            format!("{:02x?} is a multicast address", net.mac),
                        );
                    }
                    if macs.contains(&net.mac) {
                        return invalid(
                            format!("devices[{index}].mac"),
                            format!("{:02x?} is given to two NICs", net.mac),
                        );
                    }
                    macs.push(net.mac);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/initramfs.cpio".into(),
            cmdline: "console=ttyS0".into(),
            vcpus: 1,
            memory_mib: 256,
            console_log: "/run/husk/x/console.log".into(),
            control_socket: Some("/run/husk/x/vmm-control.sock".into()),
            devices: vec![
                Device::Vsock {
                    cid: 3,
                    uds: "/run/husk/x/vsock.sock".into(),
                },
                Device::Fs {
                    socket: "/run/husk/x/virtiofsd.sock".into(),
                    tag: "husk".into(),
                },
                Device::Rng,
                Device::Net(NetDevice {
                    tap_fd: 5,
                    mac: [0x02, 0x42, 0xac, 0x11, 0, 2],
                    mtu: Some(1500),
                }),
            ],
            jail: true,
            console_log_max: 1 << 20,
        }
    }

    #[test]
    fn a_spec_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.json");

        spec().write(&path).unwrap();

        assert_eq!(VmSpec::read(&path).unwrap(), spec());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"kind\": \"net\""), "{text}");
    }

    #[test]
    fn out_of_range_values_name_their_field() {
        type Change = Box<dyn Fn(&mut VmSpec)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.vcpus = 0), "vcpus"),
            (Box::new(|s| s.vcpus = 65), "vcpus"),
            (Box::new(|s| s.memory_mib = 16), "memory_mib"),
            (
                Box::new(|s| {
                    s.devices[0] = Device::Vsock {
                        cid: 2,
                        uds: "/x".into(),
                    }
                }),
                "devices[0].cid",
            ),
            (
                Box::new(|s| {
                    if let Device::Net(n) = &mut s.devices[3] {
                        n.mtu = Some(65_535);
                    }
                }),
                "devices[3].mtu",
            ),
            (
                Box::new(|s| {
                    if let Device::Net(n) = &mut s.devices[3] {
                        n.mac = [1, 0, 0, 0, 0, 1];
                    }
                }),
                "devices[3].mac",
            ),
            (
                Box::new(|s| {
                    let nic = s.devices[3].clone();
                    s.devices.push(nic);
                }),
                "devices[4].mac",
            ),
        ];
        for (change, field) in cases {
            let mut spec = spec();
            change(&mut spec);

            let err = spec.check().unwrap_err();

            assert!(err.to_string().starts_with(&format!("{field}: ")), "{err}");
        }
    }

    #[test]
    fn unknown_fields_and_devices_are_refused() {
        let mut json = serde_json::to_value(spec()).unwrap();
        json["devices"][2] = serde_json::json!({"kind": "gpu"});
        assert!(serde_json::from_value::<VmSpec>(json).is_err());
        let mut json = serde_json::to_value(spec()).unwrap();
        json["extra"] = serde_json::json!(1);
        assert!(serde_json::from_value::<VmSpec>(json).is_err());
    }
}
