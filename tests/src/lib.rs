//! Fixtures for husk's end-to-end tests: they boot real guests.
//!
//! The environment comes from `$HUSK_TEST_CONFIG`, a husk config file that
//! `hack/test.sh` writes after building the kernel and initramfs. Without it
//! (or when a file it names is missing) every test here skips itself and says
//! why; it never passes silently. Every skip goes through [`skip`] (the
//! [`skip!`] macro): under `HUSK_TEST_NO_SKIP=1`, which `hack/test.sh` sets,
//! a test that would skip fails instead, naming why.

pub mod cli;
pub mod cri;
pub mod engines;
pub mod jail;
pub mod net;
pub mod podman;
pub mod rootfs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use husk::config::{resolve_binary, Config};
use husk::host::Virtualization;
use husk::hypervisor::{self, Hypervisor, VmConfig};

/// The variable naming the test config.
pub const TEST_CONFIG_ENV: &str = "HUSK_TEST_CONFIG";

/// Boot timeout used by tests: generous, since CI machines are busy.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything a test needs to boot a guest.
pub struct TestEnv {
    /// The husk configuration under test.
    pub config: Config,
    /// The config file (for the CLI).
    pub config_path: PathBuf,
    /// The chosen backend.
    pub hypervisor: Box<dyn Hypervisor>,
    /// An initramfs whose /init is husk-bare-init, not the agent.
    pub bare_initramfs: PathBuf,
}

impl TestEnv {
    /// The environment, or why there is none.
    pub fn load() -> Result<TestEnv, String> {
        let path = std::env::var_os(TEST_CONFIG_ENV)
            .map(PathBuf::from)
            .ok_or_else(|| {
                format!(
                    "${TEST_CONFIG_ENV} is not set (hack/test.sh sets it after building the guest)"
                )
            })?;
        let config = Config::from_file(&path).map_err(|e| e.to_string())?;
        for file in [&config.kernel, &config.initramfs] {
            if !file.is_file() {
                return Err(format!(
                    "{} does not exist (run hack/test.sh)",
                    file.display()
                ));
            }
        }
        for (what, binary) in [
            ("qemu", &config.qemu),
            ("virtiofsd", &config.virtiofsd),
            ("vsock", &config.vsock_backend),
        ] {
            resolve_binary(what, binary)?;
        }
        let bare_initramfs = config.initramfs.with_file_name("bare-initramfs.cpio");
        let selection =
            hypervisor::select(&config, &Virtualization::probe()).map_err(|e| e.to_string())?;
        Ok(TestEnv {
            config,
            config_path: path,
            hypervisor: selection.hypervisor,
            bare_initramfs,
        })
    }

    /// A VM config for a guest whose state lives in `state_dir`, sharing
    /// `state_dir/shared` (created here).
    pub fn vm_config(&self, state_dir: &Path) -> VmConfig {
        let shared = state_dir.join("shared");
        std::fs::create_dir_all(&shared).expect("creating the shared directory");
        VmConfig::from_config(&self.config, state_dir, &shared)
    }

    /// Boots `config`, which the test expects to fail, and returns the error.
    pub fn boot_error(&self, config: &VmConfig, timeout: Duration) -> husk::guest::GuestError {
        match husk::guest::Guest::boot(self.hypervisor.as_ref(), config, timeout) {
            Ok(_) => panic!("the boot was expected to fail but the agent said hello"),
            Err(e) => e,
        }
    }

    /// Boots a guest with [`TestEnv::vm_config`] and waits for its agent.
    pub fn boot(&self, state_dir: &Path) -> husk::guest::Guest {
        husk::guest::Guest::boot(
            self.hypervisor.as_ref(),
            &self.vm_config(state_dir),
            BOOT_TIMEOUT,
        )
        .expect("booting a test guest")
    }
}

/// The variable under which a test that would skip fails instead.
pub const NO_SKIP_ENV: &str = "HUSK_TEST_NO_SKIP";

/// What every skip of every suite goes through: prints `SKIPPED <test>:
/// <why>`, or, under `HUSK_TEST_NO_SKIP=1` (CI), panics with the reason, so
/// a test that cannot run fails instead of passing. The test is named by
/// its thread (libtest names it after the test).
pub fn skip(why: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    if std::env::var_os(NO_SKIP_ENV).is_some_and(|v| v == "1") {
        panic!("{test} cannot run here and ${NO_SKIP_ENV}=1 makes a skip a failure: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// Returns from the test after [`skip`] with a formatted reason.
#[macro_export]
macro_rules! skip {
    ($($why:tt)+) => {{
        $crate::skip(&format!($($why)+));
        return;
    }};
}

/// `Ok`'s value, or returns from the test after [`skip`] with the error.
#[macro_export]
macro_rules! or_skip {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(why) => $crate::skip!("{why}"),
        }
    };
}

/// Loads the [`TestEnv`] or returns from the test after saying why it skips.
#[macro_export]
macro_rules! env_or_skip {
    () => {
        $crate::or_skip!($crate::TestEnv::load())
    };
}

/// `target/debug` of the workspace (or of `$CARGO_TARGET_DIR`), where the
/// binaries the tests drive are built.
pub fn debug_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("debug")
}

/// The `husk` binary built alongside the tests.
pub fn husk_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("HUSK_BIN") {
        return Ok(path.into());
    }
    let path = debug_dir().join("husk");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} not built (cargo build --workspace first; hack/test.sh does)",
            path.display()
        ))
    }
}

/// True while process `pid` exists (and is not a zombie of ours).
pub fn process_exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// The sockets left in `dir` (a clean shutdown leaves none).
pub fn sockets_in(dir: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_socket()).unwrap_or(false))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits up to 2 s for every helper of `dir` to be gone; returns those left.
/// (A killed process disappears a moment after kill(2) returns.)
pub fn helpers_left(dir: &Path) -> Vec<u32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        let left = helpers_of(dir);
        if left.is_empty() || std::time::Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pids of the helper processes a VM with state in `dir` started (matched by
/// the state directory on their command line).
pub fn helpers_of(dir: &Path) -> Vec<u32> {
    let needle = dir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) && process_exists(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Asserts that no helper process runs and no socket remains for the VM whose
/// state is in `dir`.
pub fn assert_nothing_left(dir: &Path) {
    assert_eq!(
        helpers_left(dir),
        Vec::<u32>::new(),
        "helper processes left running"
    );
    assert_eq!(
        sockets_in(dir),
        Vec::<PathBuf>::new(),
        "sockets left behind"
    );
}
