//! `husk events`: runc's JSON events; `--stats` prints one stats event,
//! otherwise one every `--interval` until the container stops.

use std::time::Duration;

use anyhow::bail;
use husk::sandbox::control::{ControlReply, ControlRequest};
use husk_protocol::Stats;
use serde_json::json;

use super::Global;

/// Options of `events`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The container id.
    pub id: String,
    /// Print the stats once and exit.
    #[arg(long)]
    pub stats: bool,
    /// Seconds between stats events.
    #[arg(long, default_value = "5s")]
    pub interval: String,
}

/// runc's `types.Event` with `types.Stats` data, from our counters.
pub fn stats_event(id: &str, s: &Stats) -> serde_json::Value {
    json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": {
                "usage": {"total": s.cpu_usage_ns, "user": s.cpu_user_ns, "kernel": s.cpu_system_ns},
                "throttling": {}
            },
            "memory": {
                "usage": {"usage": s.memory_usage, "limit": s.memory_limit},
                "swap": {}, "kernel": {}, "kernelTCP": {}, "raw": {}
            },
            "pids": {"current": s.pids, "limit": s.pids_limit},
            "blkio": {},
            "hugetlb": {}
        }
    })
}

fn parse_interval(text: &str) -> anyhow::Result<Duration> {
    let digits = text.trim_end_matches('s');
    match digits.parse::<f64>() {
        Ok(secs) if secs > 0.0 => Ok(Duration::from_secs_f64(secs)),
        _ => bail!("invalid --interval {text:?}: use seconds like 5s"),
    }
}

/// Prints the events.
pub fn run(global: &Global, args: Args) -> anyhow::Result<i32> {
    let interval = parse_interval(&args.interval)?;
    let container = global.container(&args.id)?;
    loop {
        if !container.status().can_kill() {
            bail!("container not running");
        }
        let ControlReply::Stats(stats) = container.call(&ControlRequest::Stats)? else {
            bail!("unexpected answer from the monitor");
        };
        println!("{}", stats_event(&args.id, &stats));
        if args.stats {
            return Ok(0);
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_event_has_runc_field_names() {
        let s = Stats {
            cpu_usage_ns: 10,
            memory_usage: 20,
            pids: 3,
            ..Default::default()
        };
        let v = stats_event("c1", &s);
        assert_eq!(v["data"]["cpu"]["usage"]["total"], 10);
        assert_eq!(v["data"]["memory"]["usage"]["usage"], 20);
        assert_eq!(v["data"]["pids"]["current"], 3);
    }

    #[test]
    fn intervals_parse() {
        assert_eq!(parse_interval("5s").unwrap(), Duration::from_secs(5));
        assert!(parse_interval("soon").is_err());
    }
}
