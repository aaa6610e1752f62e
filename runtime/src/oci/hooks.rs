//! Lifecycle hooks, run on the host with the state document on stdin
//! (runtime-spec `config.md` "POSIX-platform Hooks"). A hook that fails
//! or outlives its timeout fails the operation it belongs to, except
//! poststart and poststop, whose failures are only reported (as runc does).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::oci::spec::Hook;
use crate::oci::state::State;

/// Timeout for hooks that set none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `hooks` (of the named kind) in order; the first failure ends it.
pub fn run(kind: &str, hooks: &[Hook], state: &State) -> Result<(), String> {
    let input = serde_json::to_vec(state).map_err(|e| e.to_string())?;
    for (i, hook) in hooks.iter().enumerate() {
        run_one(hook, &input).map_err(|e| format!("hooks.{kind}[{i}] ({}): {e}", hook.path))?;
    }
    Ok(())
}

fn run_one(hook: &Hook, input: &[u8]) -> Result<(), String> {
    let mut command = Command::new(&hook.path);
    if let Some((argv0, rest)) = hook.args.split_first() {
        use std::os::unix::process::CommandExt;
        command.arg0(argv0).args(rest);
    }
    command
        .env_clear()
        .envs(hook.env.iter().filter_map(|kv| kv.split_once('=')))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("cannot run: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin must not fail us.
        let _ = stdin.write_all(input);
    }
    let timeout = hook.timeout.map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => {
                let mut stderr = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut stderr);
                }
                return Err(format!("{status}: {}", stderr.trim()));
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {timeout:?}"));
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::state::Status;

    fn state() -> State {
        State {
            oci_version: "1.1.0".into(),
            id: "c".into(),
            status: Status::Created,
            pid: 1,
            bundle: "/b".into(),
            annotations: Default::default(),
        }
    }

    fn sh(script: &str) -> Hook {
        Hook {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), script.into()],
            env: vec!["X=1".into()],
            timeout: Some(5),
        }
    }

    #[test]
    fn a_hook_reads_the_state_on_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let hook = sh(&format!(
            "cat > {}; echo $X >> {}",
            out.display(),
            out.display()
        ));

        run("prestart", &[hook], &state()).unwrap();

        let text = std::fs::read_to_string(out).unwrap();
        assert!(text.starts_with("{\"ociVersion\""), "{text}");
        assert!(text.ends_with("}1\n"), "{text}");
    }

    #[test]
    fn a_failing_hook_names_its_kind_and_index() {
        let err = run(
            "createRuntime",
            &[sh("exit 0"), sh("echo bad >&2; exit 2")],
            &state(),
        )
        .unwrap_err();
        assert!(err.starts_with("hooks.createRuntime[1] (/bin/sh)"), "{err}");
        assert!(err.contains("bad"), "{err}");
    }

    #[test]
    fn a_slow_hook_times_out() {
        let mut hook = sh("sleep 5");
        hook.timeout = Some(0);
        let err = run("poststart", &[hook], &state()).unwrap_err();
        assert!(err.contains("timed out"), "{err}");
    }
}
