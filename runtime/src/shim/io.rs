//! A task's stdio as containerd passes it: paths of fifos it made (the
//! reading or writing end is its own), or `file://` URIs for logs, turned
//! into a [`ProcessIo`] for the sandbox. Every fifo is opened read-write,
//! which never blocks for want of the other end and never reads EOF: the
//! end of stdin comes from containerd's `CloseIO`.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::sandbox::instance::ProcessIo;
use crate::sandbox::stdio::OutputSink;

/// The stdio paths of a process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    /// Its stdin (empty: none).
    pub stdin: String,
    /// Its stdout (empty: discarded).
    pub stdout: String,
    /// Its stderr (empty: discarded).
    pub stderr: String,
    /// Whether it has a terminal (stdout carries it; no stderr).
    pub terminal: bool,
}

impl StdioPaths {
    /// The process's stdio on the host.
    pub fn open(&self) -> Result<ProcessIo> {
        let stdin = match self.stdin.as_str() {
            "" => None,
            path => Some(open_fifo(path, "stdin")?),
        };
        let stdout = output(&self.stdout, "stdout")?;
        if self.terminal {
            return Ok(ProcessIo::Terminal {
                input: stdin,
                output: stdout,
            });
        }
        Ok(ProcessIo::Pipes {
            stdin,
            stdout,
            stderr: output(&self.stderr, "stderr")?,
        })
    }
}

/// Where an output stream goes: a fifo, a `file://` log, or nowhere.
fn output(uri: &str, what: &str) -> Result<OutputSink> {
    if uri.is_empty() {
        return Ok(OutputSink::new(open_write("/dev/null", what)?));
    }
    if let Some(path) = uri.strip_prefix("file://") {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the {what} log {path}"))?;
        return Ok(OutputSink::new(file.into()));
    }
    if uri.contains("://") {
        bail!("{what} {uri:?}: only fifos and file:// URIs are supported");
    }
    Ok(OutputSink::new(open_fifo(uri, what)?))
}

fn open_fifo(path: &str, what: &str) -> Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(Path::new(path))
        .with_context(|| format!("opening the {what} fifo {path}"))?;
    Ok(file.into())
}

fn open_write(path: &str, what: &str) -> Result<OwnedFd> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {path} for {what}"))?;
    Ok(file.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifos_open_without_their_other_end_and_terminals_have_one_output() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = |name: &str| {
            let path = dir.path().join(name);
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            path.to_string_lossy().into_owned()
        };
        let paths = StdioPaths {
            stdin: fifo("in"),
            stdout: fifo("out"),
            stderr: String::new(),
            terminal: true,
        };

        let io = paths.open().unwrap();

        assert!(matches!(io, ProcessIo::Terminal { input: Some(_), .. }));
        let pipes = StdioPaths {
            terminal: false,
            ..paths
        };
        assert!(matches!(pipes.open().unwrap(), ProcessIo::Pipes { .. }));
    }

    #[test]
    fn unsupported_uris_are_named() {
        let err = output("binary:///usr/bin/logger", "stdout").unwrap_err();
        assert!(
            err.to_string().contains("binary:///usr/bin/logger"),
            "{err}"
        );
    }
}
