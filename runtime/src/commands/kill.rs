//! `husk kill`: send a signal (name or number, default SIGTERM) to the
//! container's init, or with `--all` to all of its processes.

use anyhow::bail;
use husk::sandbox::control::ControlRequest;

use super::Global;

/// Options of `kill`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The container id.
    pub id: String,
    /// The signal: KILL, SIGKILL or 9.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
    /// Signal every process of the container.
    #[arg(short, long)]
    pub all: bool,
}

/// Parses a signal name or number.
pub fn parse_signal(text: &str) -> anyhow::Result<i32> {
    if let Ok(n) = text.parse::<i32>() {
        if nix::sys::signal::Signal::try_from(n).is_ok() {
            return Ok(n);
        }
        bail!("invalid signal number {n}");
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    match name.parse::<nix::sys::signal::Signal>() {
        Ok(s) => Ok(s as i32),
        Err(_) => bail!("unknown signal {text:?}"),
    }
}

/// Sends it.
pub fn run(global: &Global, args: Args) -> anyhow::Result<i32> {
    let signal = parse_signal(&args.signal)?;
    let container = global.container(&args.id)?;
    if !container.status().can_kill() {
        bail!("container not running");
    }
    container.call(&ControlRequest::Kill {
        signal,
        all: args.all,
    })?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_and_number() {
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert_eq!(parse_signal("KILL").unwrap(), 9);
        assert_eq!(parse_signal("sigterm").unwrap(), 15);
        assert_eq!(parse_signal("SIGHUP").unwrap(), 1);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }
}
