//! The test images, built by `hack/build-images.sh` as docker-archive
//! tars that every engine loads.

use std::path::PathBuf;

use super::Image;

/// Where `hack/build-images.sh` puts the images unless
/// `$HUSK_TEST_IMAGES` says otherwise.
pub const DEFAULT_DIR: &str = "/var/cache/husk/images";

/// The archive of `image`, or why it is missing.
pub fn archive(image: Image) -> Result<PathBuf, String> {
    let dir = std::env::var_os("HUSK_TEST_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
    let file = match image {
        Image::Busybox => "busybox.tar",
        Image::Debian => "debian.tar",
    };
    let path = dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing (hack/build-images.sh builds it; hack/test.sh runs that)",
            path.display()
        ))
    }
}
