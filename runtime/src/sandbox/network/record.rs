//! What the monitor did to the engine's namespace, kept in the state
//! directory (`network.json`) so that `delete` can undo it when the
//! monitor was killed before its own teardown: the namespace (a path that
//! outlives the monitor: the engine's, or a bind mount of it) and the
//! interfaces that carry husk's ingress qdisc.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use husk_netlink::Netlink;
use serde::{Deserialize, Serialize};

/// The file in the state directory.
pub const FILE: &str = "network.json";

/// The redirects of one sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// A path of the network namespace that outlives the monitor, if any.
    pub netns: Option<PathBuf>,
    /// The engine's interfaces with husk's ingress qdisc: (index, name).
    pub redirected: Vec<(u32, String)>,
}

impl Record {
    /// Writes the record into `dir`.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join(FILE), json)
    }

    /// The record in `dir`, if the monitor wrote one.
    pub fn load(dir: &Path) -> Option<Record> {
        let text = std::fs::read(dir.join(FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Deletes husk's ingress qdiscs from the recorded interfaces (only
    /// those with the same index and name still), from a thread that enters
    /// the recorded namespace. Nothing to do without a namespace path (the
    /// namespace died with the monitor).
    pub fn undo(&self) -> Result<(), String> {
        let Some(path) = &self.netns else {
            return Ok(());
        };
        if self.redirected.is_empty() {
            return Ok(());
        }
        let namespace = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("opening {}: {e}", path.display())),
        };
        let redirected = self.redirected.clone();
        std::thread::spawn(move || -> Result<(), String> {
            nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering the network namespace: {e}"))?;
            let mut netlink = Netlink::open().map_err(|e| e.to_string())?;
            let links = netlink.links().map_err(|e| e.to_string())?;
            for (index, name) in &redirected {
                if links.iter().any(|l| l.index == *index && &l.name == name) {
                    let _ = netlink.delete_ingress_qdisc(*index);
                }
            }
            Ok(())
        })
        .join()
        .map_err(|_| "the network cleanup thread panicked".to_string())?
    }
}

/// A path of the calling thread's network namespace that outlives this
/// process: `joined` (the spec's path) if given, else a bind mount of the
/// namespace (docker's setkey hook makes one) found in the mount table.
pub fn lasting_path(joined: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = joined {
        return Some(path.to_path_buf());
    }
    let ours = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    crate::sandbox::share::mount_table()
        .into_iter()
        .filter(|(_, fstype)| fstype == "nsfs")
        .map(|(point, _)| point)
        .find(|point| {
            std::fs::metadata(point).is_ok_and(|m| m.ino() == ours.ino() && m.dev() == ours.dev())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_through_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let record = Record {
            netns: Some("/run/netns/x".into()),
            redirected: vec![(2, "eth0".into())],
        };

        record.save(dir.path()).unwrap();

        assert_eq!(Record::load(dir.path()), Some(record));
        assert_eq!(Record::load(&dir.path().join("missing")), None);
    }

    #[test]
    fn undo_without_a_namespace_or_a_gone_one_is_nothing_to_do() {
        assert_eq!(Record::default().undo(), Ok(()));
        let gone = Record {
            netns: Some("/nonexistent/netns".into()),
            redirected: vec![(2, "eth0".into())],
        };
        assert_eq!(gone.undo(), Ok(()));
    }

    #[test]
    fn a_joined_path_is_the_lasting_one() {
        assert_eq!(
            lasting_path(Some(Path::new("/run/netns/x"))),
            Some(PathBuf::from("/run/netns/x"))
        );
    }
}
