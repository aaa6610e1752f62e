//! Container logs under CRI: files that containerd writes from the
//! container's stdio, one entry per line, `TIMESTAMP STREAM TAG CONTENT`
//! (kubelet's `pkg/kubelet/kuberuntime/logs`; containerd 1.6
//! `pkg/cri/io/logger.go`): an RFC 3339 timestamp with nanoseconds,
//! `stdout` or `stderr`, `F` for a full line or `P` for a part of one cut
//! at `max_container_log_line_size`, and the content without its newline.

use std::path::Path;

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// When containerd read it (RFC 3339).
    pub timestamp: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line ended here (`F`), or goes on in the next entry (`P`).
    pub full: bool,
    /// The content.
    pub content: String,
}

/// Parses one line of a CRI log file.
pub fn parse_line(line: &str) -> Result<LogEntry, String> {
    let mut fields = line.splitn(4, ' ');
    let (Some(timestamp), Some(stream), Some(tag)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(format!("{line:?} has fewer than three fields"));
    };
    let content = fields.next().unwrap_or_default();
    if !is_rfc3339(timestamp) {
        return Err(format!("{line:?}: {timestamp:?} is not an RFC 3339 time"));
    }
    if stream != "stdout" && stream != "stderr" {
        return Err(format!(
            "{line:?}: the stream {stream:?} is neither stdout nor stderr"
        ));
    }
    let full = match tag {
        "F" => true,
        "P" => false,
        other => return Err(format!("{line:?}: the tag {other:?} is neither F nor P")),
    };
    Ok(LogEntry {
        timestamp: timestamp.to_string(),
        stream: stream.to_string(),
        full,
        content: content.to_string(),
    })
}

/// Parses a whole log file's text.
pub fn parse(text: &str) -> Result<Vec<LogEntry>, String> {
    text.lines().map(parse_line).collect()
}

/// Reads and parses the log file at `path`.
pub fn read(path: &Path) -> Result<Vec<LogEntry>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    parse(&text)
}

/// The lines of `stream`, with partial entries joined to their line.
pub fn lines_of(entries: &[LogEntry], stream: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for entry in entries.iter().filter(|e| e.stream == stream) {
        current.push_str(&entry.content);
        if entry.full {
            lines.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, checked by shape.
fn is_rfc3339(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|b| b.iter().all(u8::is_ascii_digit))
    };
    let date_time = digits(0..4)
        && bytes.get(4) == Some(&b'-')
        && digits(5..7)
        && bytes.get(7) == Some(&b'-')
        && digits(8..10)
        && bytes.get(10) == Some(&b'T')
        && digits(11..13)
        && bytes.get(13) == Some(&b':')
        && digits(14..16)
        && bytes.get(16) == Some(&b':')
        && digits(17..19);
    if !date_time {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let end = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if end == 0 {
            return false;
        }
        rest = &fraction[end..];
    }
    rest == "Z"
        || (rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes()[3] == b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_line_reads_the_four_fields() {
        let entry = parse_line("2026-05-01T10:11:12.123456789Z stderr F oh no ").unwrap();

        assert_eq!(entry.timestamp, "2026-05-01T10:11:12.123456789Z");
        assert_eq!(entry.stream, "stderr");
        assert!(entry.full);
        assert_eq!(entry.content, "oh no ");
    }

    #[test]
    fn parse_line_accepts_an_offset_and_an_empty_line() {
        let entry = parse_line("2026-05-01T10:11:12.5+02:00 stdout P").unwrap();

        assert!(!entry.full);
        assert_eq!(entry.content, "");
    }

    #[test]
    fn parse_line_rejects_a_bad_time_stream_or_tag() {
        assert!(parse_line("yesterday stdout F x").is_err());
        assert!(parse_line("2026-05-01T10:11:12Z stdin F x").is_err());
        assert!(parse_line("2026-05-01T10:11:12Z stdout X x").is_err());
        assert!(parse_line("2026-05-01T10:11:12Z").is_err());
    }

    #[test]
    fn lines_of_joins_partial_entries_per_stream() {
        let text = "2026-05-01T10:11:12Z stdout P ab\n\
                    2026-05-01T10:11:12Z stderr F err\n\
                    2026-05-01T10:11:12Z stdout F cd\n\
                    2026-05-01T10:11:13Z stdout F e\n";

        let entries = parse(text).unwrap();

        assert_eq!(lines_of(&entries, "stdout"), ["abcd", "e"]);
        assert_eq!(lines_of(&entries, "stderr"), ["err"]);
    }
}
