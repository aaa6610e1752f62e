//! The pods' sandbox ("pause") image, built without a registry: the
//! busybox tree of [`crate::rootfs`] with `/pause`, a shell script that
//! sleeps until SIGTERM or SIGINT, as a one-layer docker-archive that
//! `ctr image import` reads (the layout `hack/build-images.sh` writes:
//! `manifest.json`, the config named by its digest, `<digest>/layer.tar`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::config::PAUSE_IMAGE;

/// The sandbox's process. As PID 1 it gets no signal it has no handler
/// for, so it traps the two a runtime stops it with; `sleep` runs in the
/// background so that `wait` returns as soon as a signal comes.
pub const PAUSE_SCRIPT: &str = "#!/bin/sh\n\
    # The pod sandbox of husk's CRI tests: sleeps until SIGTERM or SIGINT.\n\
    trap 'exit 0' TERM INT\n\
    while :; do sleep 3600 & wait $!; done\n";

/// Builds the pause image's archive at `out` from a tree made in `work`.
pub fn build_archive(work: &Path, out: &Path) -> Result<(), String> {
    let rootfs = work.join("rootfs");
    crate::rootfs::busybox_rootfs(&rootfs)
        .map_err(|e| format!("building {}: {e}", rootfs.display()))?;
    let script = rootfs.join("pause");
    fs::write(&script, PAUSE_SCRIPT).map_err(|e| format!("{}: {e}", script.display()))?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", script.display()))?;

    let archive = work.join("archive");
    fs::create_dir_all(&archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let layer_tar = work.join("layer.tar");
    crate::rootfs::tar_dir(&rootfs, &layer_tar).map_err(|e| e.to_string())?;
    let layer = sha256_of_file(&layer_tar)?;
    let layer_dir = archive.join(&layer);
    fs::create_dir_all(&layer_dir).map_err(|e| e.to_string())?;
    fs::rename(&layer_tar, layer_dir.join("layer.tar")).map_err(|e| e.to_string())?;

    let config = image_config(&layer).to_string();
    let config_digest = sha256_of_bytes(config.as_bytes())?;
    let config_file = format!("{config_digest}.json");
    fs::write(archive.join(&config_file), &config).map_err(|e| e.to_string())?;
    let manifest = manifest(&config_file, &layer).to_string();
    fs::write(archive.join("manifest.json"), manifest).map_err(|e| e.to_string())?;

    crate::rootfs::tar_dir(&archive, out).map_err(|e| e.to_string())
}

/// The image config: amd64 Linux, `/pause` as the entrypoint.
pub fn image_config(layer_digest: &str) -> serde_json::Value {
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": ["/pause"],
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    })
}

/// docker-archive's `manifest.json`, tagging the image [`PAUSE_IMAGE`].
pub fn manifest(config_file: &str, layer_digest: &str) -> serde_json::Value {
    serde_json::json!([{
        "Config": config_file,
        "RepoTags": [PAUSE_IMAGE],
        "Layers": [format!("{layer_digest}/layer.tar")],
    }])
}

fn sha256_of_file(path: &Path) -> Result<String, String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .map_err(|e| format!("sha256sum {}: {e}", path.display()))?;
    first_hex_word(&out.stdout).ok_or_else(|| format!("sha256sum {} failed", path.display()))
}

/// The SHA-256 of `bytes` in hex, by `sha256sum` (no hash crate needed).
pub fn sha256_of_bytes(bytes: &[u8]) -> Result<String, String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting sha256sum: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(bytes)
        .map_err(|e| format!("writing to sha256sum: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("sha256sum: {e}"))?;
    first_hex_word(&out.stdout).ok_or_else(|| "sha256sum failed".to_string())
}

fn first_hex_word(output: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(output);
    let word = text.split_whitespace().next()?;
    (word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit())).then(|| word.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_bytes_matches_the_known_digest_of_abc() {
        assert_eq!(
            sha256_of_bytes(b"abc").unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn manifest_tags_the_pause_image_and_names_the_layer() {
        let manifest = manifest("c.json", "ab");

        assert_eq!(manifest[0]["RepoTags"][0], PAUSE_IMAGE);
        assert_eq!(manifest[0]["Layers"][0], "ab/layer.tar");
        assert_eq!(image_config("ab")["config"]["Entrypoint"][0], "/pause");
    }

    #[test]
    fn pause_script_ends_on_sigterm() {
        let tmp = tempfile::tempdir().unwrap();
        let script = tmp.path().join("pause");
        fs::write(&script, PAUSE_SCRIPT).unwrap();
        let mut child =
            std::os::unix::process::CommandExt::process_group(&mut Command::new("sh"), 0)
                .arg(&script)
                .spawn()
                .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));

        // SAFETY: kill takes no pointers; the pid is our unreaped child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        // SAFETY: as above; the group is the script's, its `sleep` is left.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };

        assert_eq!(status.code(), Some(0));
    }
}
