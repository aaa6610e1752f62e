//! The CLI fixture: a private `--root`, the husk binary with the test
//! config, and bundles with a busybox rootfs. Dropping it force-deletes any
//! container a failed test left and checks that the root is empty.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::rootfs::busybox_rootfs;
use crate::{husk_binary, TestEnv};

/// A private husk root and the binary to drive it.
pub struct Cli {
    /// The `--root` directory.
    pub root: tempfile::TempDir,
    /// The husk binary.
    pub bin: PathBuf,
    /// The test config.
    pub config: PathBuf,
}

/// Loads the [`Cli`] or returns from the test after saying why it skips.
#[macro_export]
macro_rules! cli_or_skip {
    () => {
        $crate::or_skip!($crate::cli::Cli::new())
    };
}

impl Cli {
    /// The fixture, or why the CLI tests cannot run here.
    pub fn new() -> Result<Cli, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root (bind mounts, namespaces, KVM)".into());
        }
        let env = TestEnv::load()?;
        if !Path::new("/bin/busybox").is_file() {
            return Err("/bin/busybox is missing (apt-get install busybox-static)".into());
        }
        Ok(Cli {
            root: tempfile::Builder::new()
                .prefix("husk-root-")
                .tempdir()
                .map_err(|e| e.to_string())?,
            bin: husk_binary()?,
            config: env.config_path,
        })
    }

    /// `husk --root ROOT ARGS...` with the test config.
    pub fn husk<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new(&self.bin);
        c.env("HUSK_CONFIG", &self.config)
            .arg("--root")
            .arg(self.root.path())
            .args(args);
        c
    }

    /// Runs husk with stdin from /dev/null and returns its output.
    pub fn output<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.husk(args)
            .stdin(Stdio::null())
            .output()
            .expect("running husk")
    }

    /// Runs husk with all stdio on /dev/null (a detached container keeps
    /// the stdio it was given, so pipes would never see EOF); true on success.
    pub fn detached<I, S>(&self, args: I) -> bool
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.husk(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("running husk")
            .success()
    }

    /// A new bundle running `args` (busybox rootfs, `husk spec` defaults
    /// without a terminal).
    pub fn bundle(&self, args: &[&str]) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("husk-bundle-")
            .tempdir()
            .unwrap();
        busybox_rootfs(&dir.path().join("rootfs")).unwrap();
        let out = self.output(["spec", "--bundle", &dir.path().to_string_lossy()]);
        assert!(
            out.status.success(),
            "husk spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read(dir.path().join("config.json")).unwrap();
        let mut config: Value = serde_json::from_slice(&text).unwrap();
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = args.iter().map(|a| Value::from(*a)).collect();
        config["root"]["readonly"] = false.into();
        let bundle = Bundle { dir, config };
        bundle.write();
        bundle
    }

    /// The ids of the containers under the root.
    pub fn ids(&self) -> Vec<String> {
        let out = self.output(["list", "--quiet"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect()
    }

    /// The `state` of a container as JSON.
    pub fn state(&self, id: &str) -> Value {
        let out = self.output(["state", id]);
        assert!(
            out.status.success(),
            "state {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        for id in self.ids() {
            let _ = self.output(["delete", "--force", &id]);
        }
        let left: Vec<_> = std::fs::read_dir(self.root.path())
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if !std::thread::panicking() {
            assert!(left.is_empty(), "state left under the root: {left:?}");
        }
    }
}

/// A bundle directory whose config.json tests may change.
pub struct Bundle {
    /// The directory.
    pub dir: tempfile::TempDir,
    /// config.json, written by [`Bundle::write`].
    pub config: Value,
}

impl Bundle {
    /// The bundle path as a string argument.
    pub fn path(&self) -> String {
        self.dir.path().to_string_lossy().into_owned()
    }

    /// Writes config.json.
    pub fn write(&self) {
        let text = serde_json::to_vec_pretty(&self.config).unwrap();
        std::fs::write(self.dir.path().join("config.json"), text).unwrap();
    }
}
