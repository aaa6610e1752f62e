//! husk's own configuration: a TOML file at [`DEFAULT_CONFIG_PATH`] (or the
//! path in `$HUSK_CONFIG`) saying where the guest kernel, initramfs and
//! helper binaries are, which backend to use and the default VM size.
//!
//! Every key is optional; a missing file at the default path means all
//! defaults. An unknown key is an error that names it and the file, so a
//! typo never silently falls back to a default.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where husk looks for its configuration.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/husk/config.toml";
/// The environment variable that overrides [`DEFAULT_CONFIG_PATH`].
pub const CONFIG_ENV: &str = "HUSK_CONFIG";
/// Where the installer puts the kernel and initramfs.
pub const DEFAULT_SHARE_DIR: &str = "/usr/local/share/husk";
/// Where the installer puts virtiofsd and the vsock backend.
pub const DEFAULT_LIBEXEC_DIR: &str = "/usr/local/libexec/husk";

/// Errors loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a bad key or value.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message, which names the key and line.
        message: String,
    },
    /// A value is out of range.
    #[error("config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which key and why.
        message: String,
    },
}

/// Which hypervisor backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// builtin where the host has hardware virtualization, qemu elsewhere.
    Auto,
    /// QEMU's microvm machine.
    Qemu,
    /// husk's own KVM monitor.
    Builtin,
}

/// How QEMU executes the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when the CPU has vmx/svm and /dev/kvm can run a stock kernel, else TCG.
    Auto,
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// The configuration, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Hypervisor backend.
    pub backend: BackendChoice,
    /// QEMU accelerator.
    pub accel: Accel,
    /// Uncompressed guest kernel (vmlinux with the PVH entry).
    pub kernel: PathBuf,
    /// Initramfs holding husk-agent as /init.
    pub initramfs: PathBuf,
    /// qemu-system-x86_64: a path, or a name looked up in $PATH.
    pub qemu: PathBuf,
    /// virtiofsd: a path, or a name looked up in $PATH.
    pub virtiofsd: PathBuf,
    /// The vhost-user vsock backend (vhost-device-vsock).
    pub vsock_backend: PathBuf,
    /// The builtin monitor: a path, or `husk-vmm` (looked up next to the
    /// husk binary, then in $PATH).
    pub vmm: PathBuf,
    /// Default vCPUs per VM.
    pub vcpus: u32,
    /// Default guest memory in MiB.
    pub memory_mib: u32,
    /// How long a boot may take until the agent says hello.
    pub boot_timeout_ms: u64,
    /// Extra kernel command-line arguments.
    pub kernel_cmdline: String,
    /// Whether the VM's host processes are jailed: the builtin monitor in a
    /// mount namespace of its own files, without capabilities, under
    /// per-thread seccomp filters; QEMU under its `-sandbox` filter and
    /// without capabilities; the vsock backend without capabilities and
    /// under a deny-list filter. Off only to debug them.
    pub jail: bool,
    /// The most the guest console log (`console.log` in the VM's
    /// directory) holds, in KiB: past it the oldest output is dropped, so
    /// a guest cannot fill the host's disk through its console.
    pub console_log_max_kib: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: BackendChoice::Auto,
            accel: Accel::Auto,
            kernel: Path::new(DEFAULT_SHARE_DIR).join("vmlinux"),
            initramfs: Path::new(DEFAULT_SHARE_DIR).join("initramfs.cpio"),
            qemu: "qemu-system-x86_64".into(),
            virtiofsd: Path::new(DEFAULT_LIBEXEC_DIR).join("virtiofsd"),
            vsock_backend: Path::new(DEFAULT_LIBEXEC_DIR).join("vhost-device-vsock"),
            vmm: "husk-vmm".into(),
            vcpus: 1,
            memory_mib: 256,
            boot_timeout_ms: 30_000,
            kernel_cmdline: String::new(),
            jail: true,
            console_log_max_kib: husk_vm_spec::DEFAULT_CONSOLE_LOG_MAX / 1024,
        }
    }
}

impl Config {
    /// Loads from `$HUSK_CONFIG` if set (the file must exist), else from
    /// [`DEFAULT_CONFIG_PATH`] if it exists, else the defaults. Returns the
    /// path it read, if any.
    pub fn load() -> Result<(Config, Option<PathBuf>), ConfigError> {
        match std::env::var_os(CONFIG_ENV) {
            Some(path) => {
                let path = PathBuf::from(path);
                Ok((Self::from_file(&path)?, Some(path)))
            }
            None => {
                let path = PathBuf::from(DEFAULT_CONFIG_PATH);
                if path.exists() {
                    Ok((Self::from_file(&path)?, Some(path)))
                } else {
                    Ok((Config::default(), None))
                }
            }
        }
    }

    /// Reads and validates one file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates TOML text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.into(),
            message,
        };
        if !(1..=64).contains(&config.vcpus) {
            return Err(invalid(format!(
                "vcpus = {} is outside 1..=64",
                config.vcpus
            )));
        }
        if config.memory_mib < 64 {
            return Err(invalid(format!(
                "memory_mib = {} is below the minimum of 64",
                config.memory_mib
            )));
        }
        if config.boot_timeout_ms == 0 {
            return Err(invalid("boot_timeout_ms must be above 0".into()));
        }
        Ok(config)
    }
}

/// Resolves a helper binary: a path with a `/` must exist, a bare name is
/// looked up in `$PATH`.
pub fn resolve_binary(what: &str, path: &Path) -> Result<PathBuf, String> {
    if path.components().count() > 1 || path.is_absolute() {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(format!("{what} not found at {}", path.display()))
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&search)
        .map(|dir| dir.join(path))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| format!("{what} ({}) not found in $PATH", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/husk/config.toml"))
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn values_override_defaults() {
        let config =
            parse("backend = \"qemu\"\naccel = \"tcg\"\nvcpus = 2\nkernel = \"/k\"\n").unwrap();
        assert_eq!(config.backend, BackendChoice::Qemu);
        assert_eq!(config.accel, Accel::Tcg);
        assert_eq!(config.vcpus, 2);
        assert_eq!(config.kernel, PathBuf::from("/k"));
        assert_eq!(config.memory_mib, Config::default().memory_mib);
    }

    #[test]
    fn unknown_key_is_named_with_the_file() {
        let err = parse("kernal = \"/k\"").unwrap_err().to_string();
        assert!(err.contains("/etc/husk/config.toml"), "{err}");
        assert!(err.contains("kernal"), "{err}");
    }

    #[test]
    fn bad_backend_is_refused() {
        let err = parse("backend = \"xen\"").unwrap_err().to_string();
        assert!(err.contains("xen"), "{err}");
    }

    #[test]
    fn out_of_range_vcpus_is_refused() {
        let err = parse("vcpus = 0").unwrap_err().to_string();
        assert!(err.contains("vcpus = 0"), "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error_naming_it() {
        let err = Config::from_file(Path::new("/nonexistent/husk.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/husk.toml"), "{err}");
    }

    #[test]
    fn binary_by_name_is_found_in_path() {
        assert!(resolve_binary("shell", Path::new("sh")).is_ok());
        let err = resolve_binary("qemu", Path::new("no-such-binary-husk")).unwrap_err();
        assert!(err.contains("not found in $PATH"), "{err}");
        let err = resolve_binary("qemu", Path::new("/no/such/qemu")).unwrap_err();
        assert!(err.contains("/no/such/qemu"), "{err}");
    }
}
