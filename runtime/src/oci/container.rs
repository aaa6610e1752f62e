//! One container as the short-lived commands see it: its state directory
//! `ROOT/ID`, the record in it, and its status (asked of the monitor while
//! the monitor lives, `stopped` after).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::oci::spec::{Bundle, SpecError, CAPTURED_SPEC};
use crate::oci::state::{check_id, process_alive, Record, Status};
use crate::sandbox::control::{ControlClient, ControlReply, ControlRequest};

/// The default `--root`.
pub const DEFAULT_ROOT: &str = "/run/husk";

/// A container that exists (its state directory does).
pub struct Container {
    /// `ROOT/ID`.
    pub dir: PathBuf,
    /// The record.
    pub record: Record,
}

impl Container {
    /// Loads container `id` under `root`; fails like runc when it does not exist.
    pub fn load(root: &Path, id: &str) -> Result<Container> {
        check_id(id).map_err(anyhow::Error::msg)?;
        let dir = root.join(id);
        match Record::load(&dir) {
            Ok(record) => Ok(Container { dir, record }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("container {id} does not exist")
            }
            Err(e) => bail!("reading the state of container {id}: {e}"),
        }
    }

    /// Every container under `root`, sorted by id.
    pub fn list(root: &Path) -> Vec<Container> {
        let Ok(entries) = std::fs::read_dir(root) else {
            return Vec::new();
        };
        let mut all: Vec<Container> = entries
            .flatten()
            .filter_map(|e| {
                let dir = e.path();
                let record = Record::load(&dir).ok()?;
                Some(Container { dir, record })
            })
            .collect();
        all.sort_by(|a, b| a.record.id.cmp(&b.record.id));
        all
    }

    /// Whether the monitor process still runs.
    pub fn monitor_alive(&self) -> bool {
        self.record.pid > 0 && process_alive(self.record.pid, self.record.pid_start)
    }

    /// The current status.
    pub fn status(&self) -> Status {
        if self.record.pid == 0 {
            return Status::Creating;
        }
        if !self.monitor_alive() {
            return Status::Stopped;
        }
        if !crate::sandbox::control::socket_path(&self.dir).exists() {
            // Alive without a control socket: still setting up.
            return Status::Creating;
        }
        match self.call(&ControlRequest::Status) {
            Ok(ControlReply::Status(s)) => s,
            // The monitor is on its way out.
            _ => Status::Stopped,
        }
    }

    /// The bundle with the spec captured at create (a container created
    /// before husk captured it reads the bundle's config.json).
    pub fn bundle(&self) -> Result<Bundle, SpecError> {
        if !self.dir.join(CAPTURED_SPEC).exists() {
            return Bundle::load(&self.record.bundle);
        }
        Bundle::load_captured(&self.record.bundle, &self.dir)
    }

    /// Sends one request to the monitor.
    pub fn call(&self, request: &ControlRequest) -> Result<ControlReply> {
        ControlClient::connect(&self.dir)?.call(request, &[])
    }
}
