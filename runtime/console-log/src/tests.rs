//! The cap holds whatever is written, and the newest bytes survive.

use std::io::Write;

use super::*;

fn log_in(dir: &tempfile::TempDir, cap: u64) -> (CappedLog, std::path::PathBuf) {
    let path = dir.path().join("console.log");
    (CappedLog::create(&path, cap).unwrap(), path)
}

#[test]
fn below_the_cap_every_byte_is_kept_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, path) = log_in(&dir, 1 << 20);

    log.write_all(b"Linux version 6.1\n").unwrap();
    log.write_all(b"husk-agent: ready\n").unwrap();

    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"Linux version 6.1\nhusk-agent: ready\n"
    );
    assert_eq!(log.len(), 36);
}

#[test]
fn a_flood_one_byte_at_a_time_stays_under_the_cap_and_keeps_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 64 * 1024;
    let (mut log, path) = log_in(&dir, cap);

    let mut written = Vec::new();
    for i in 0..20_000u32 {
        let line = format!("line {i}\n");
        for b in line.bytes() {
            // The UART writes one byte at a time.
            log.write_all(&[b]).unwrap();
            assert!(log.len() <= cap);
        }
        written.extend_from_slice(line.as_bytes());
    }

    let content = std::fs::read(&path).unwrap();
    assert!(content.len() as u64 <= cap, "{} bytes", content.len());
    assert!(content.starts_with(DROPPED));
    let kept = &content[DROPPED.len()..];
    assert!(written.ends_with(kept), "the kept bytes are the newest");
    assert!(kept.len() as u64 >= cap / 4, "{} bytes kept", kept.len());
}

#[test]
fn one_write_larger_than_the_cap_keeps_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 8192;
    let (mut log, path) = log_in(&dir, cap);
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();

    log.write_all(&big).unwrap();
    log.write_all(b"panic: the end\n").unwrap();

    let content = std::fs::read(&path).unwrap();
    assert!(content.len() as u64 <= cap);
    assert!(content.ends_with(b"panic: the end\n"));
}

#[test]
fn an_existing_file_over_the_cap_is_cut_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("console.log");
    std::fs::write(&path, vec![b'x'; 50_000]).unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();

    let log = CappedLog::new(file, 10_000).unwrap();

    assert!(log.len() <= 10_000);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), log.len());
}

#[test]
fn a_tiny_cap_is_raised_to_the_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, path) = log_in(&dir, 10);

    log.write_all(&[b'y'; 3000]).unwrap();

    assert_eq!(std::fs::read(&path).unwrap().len(), 3000);
}
