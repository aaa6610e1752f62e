//! The guest console log, capped: whatever the guest prints, the file
//! never holds more than its cap. When a write would pass the cap, the
//! oldest bytes go: the newest half of the cap is moved to the front
//! behind a line saying so, and the file is cut there. The end of the log,
//! which is what tells why a guest died, is always kept; the cost is one
//! extra copy of half the cap per half cap written.
//!
//! It uses positioned reads and writes and `ftruncate` only (no path is
//! opened or renamed once the file is open), which a jailed monitor's
//! filter allows.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The line that replaces what was dropped.
pub const DROPPED: &[u8] = b"[husk: earlier console output dropped: the log is capped]\n";

/// The smallest cap: room for the marker and some output.
pub const MIN_CAP: u64 = 4096;

/// A console log file of at most `cap` bytes.
#[derive(Debug)]
pub struct CappedLog {
    file: File,
    len: u64,
    cap: u64,
}

impl CappedLog {
    /// Creates (or empties) the log at `path`, capped at `cap` bytes.
    pub fn create(path: &Path, cap: u64) -> io::Result<CappedLog> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        CappedLog::new(file, cap)
    }

    /// Writes into `file`, open for reading and writing (its current
    /// content is kept, within the cap), never past `cap` bytes (at least
    /// [`MIN_CAP`]).
    pub fn new(file: File, cap: u64) -> io::Result<CappedLog> {
        let len = file.metadata()?.len();
        let mut log = CappedLog {
            file,
            len,
            cap: cap.max(MIN_CAP),
        };
        if log.len > log.cap {
            log.drop_oldest(0)?;
        }
        Ok(log)
    }

    /// The file's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps the newest bytes so that `incoming` more fit: at most half
    /// the cap, behind [`DROPPED`].
    fn drop_oldest(&mut self, incoming: u64) -> io::Result<()> {
        let marker = DROPPED.len() as u64;
        let room = self.cap / 2;
        let keep = room
            .saturating_sub(marker)
            .saturating_sub(incoming)
            .min(self.len);
        let mut tail = vec![0; keep as usize];
        self.file.read_exact_at(&mut tail, self.len - keep)?;
        self.file.write_all_at(DROPPED, 0)?;
        self.file.write_all_at(&tail, marker)?;
        self.len = marker + keep;
        self.file.set_len(self.len)
    }
}

impl Write for CappedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // More than half the cap at once: only its end can be kept.
        let limit = (self.cap / 2) as usize - DROPPED.len();
        let buf = &buf[buf.len().saturating_sub(limit)..];
        let incoming = buf.len() as u64;
        if self.len + incoming > self.cap {
            self.drop_oldest(incoming)?;
        }
        self.file.write_all_at(buf, self.len)?;
        self.len += incoming;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
