//! Running an engine client on a terminal, as a user typing `docker run
//! -it` would: the client gets a pty as its controlling terminal, the test
//! types into the master side, resizes it, and reads everything written.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::pty::{openpty, Winsize};

/// A client running on a pty.
pub struct PtySession {
    master: File,
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl PtySession {
    /// Starts `command` on a new pty of `rows` x `cols`, as the leader of
    /// a new session with the pty as its controlling terminal.
    pub fn spawn(mut command: Command, rows: u16, cols: u16) -> Result<PtySession, String> {
        let pty = openpty(Some(&winsize(rows, cols)), None).map_err(|e| format!("openpty: {e}"))?;
        let slave: OwnedFd = pty.slave;
        let stdio = |fd: &OwnedFd| -> Result<Stdio, String> {
            Ok(Stdio::from(fd.try_clone().map_err(|e| e.to_string())?))
        };
        command
            .stdin(stdio(&slave)?)
            .stdout(stdio(&slave)?)
            .stderr(stdio(&slave)?);
        // SAFETY: setsid and ioctl are async-signal-safe; fd 0 is the pty.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("starting {command:?}: {e}"))?;
        drop(command);
        drop(slave);
        let master = File::from(pty.master);
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut source = master.try_clone().map_err(|e| e.to_string())?;
        let sink = Arc::clone(&output);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once every slave fd is closed.
            while let Ok(n @ 1..) = source.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Ok(PtySession {
            master,
            child,
            output,
            reader: Some(reader),
        })
    }

    /// Types `text`.
    pub fn type_text(&mut self, text: &str) -> Result<(), String> {
        self.master
            .write_all(text.as_bytes())
            .map_err(|e| format!("writing to the pty: {e}"))
    }

    /// Resizes the terminal (the kernel sends SIGWINCH to the client).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), String> {
        let size = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one Winsize from the pointer, which is
        // valid for the call.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if rc < 0 {
            return Err(format!("TIOCSWINSZ: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Everything written so far, without carriage returns.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).replace('\r', "")
    }

    /// Waits until the output contains `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<(), String> {
        if super::eventually(timeout, || self.output().contains(needle)) {
            Ok(())
        } else {
            Err(format!(
                "{needle:?} did not appear within {timeout:?}; the terminal shows {:?}",
                super::tail(&self.output())
            ))
        }
    }

    /// Waits for the client to exit; its exit code and all output.
    pub fn finish(mut self, timeout: Duration) -> Result<(Option<i32>, String), String> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!(
                    "the client did not exit within {timeout:?}; the terminal shows {:?}",
                    super::tail(&self.output())
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Grandchildren may hold the slave; do not wait for them forever.
        let reader = self.reader.take();
        let _ = super::eventually(Duration::from_secs(2), || {
            reader.as_ref().is_none_or(|r| r.is_finished())
        });
        Ok((status.code(), self.output()))
    }
}

impl Drop for PtySession {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_on_the_pty_sees_a_terminal_its_size_and_a_resize() {
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg("test -t 0 && echo tty; stty size; read x; stty size; exit 4");
        let mut session = PtySession::spawn(sh, 30, 100).unwrap();
        session.wait_for("30 100", Duration::from_secs(10)).unwrap();

        session.resize(40, 120).unwrap();
        session.type_text("go\n").unwrap();
        let (code, output) = session.finish(Duration::from_secs(10)).unwrap();

        assert_eq!(code, Some(4));
        assert!(output.contains("tty\n30 100\n"), "{output:?}");
        assert!(output.contains("40 120"), "{output:?}");
    }
}
