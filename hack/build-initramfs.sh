#!/usr/bin/env bash
# Builds husk-agent as a static binary (glibc with crt-static; the musl target
# is not installable here) and packs it as /init into the guest initramfs.
# Also packs husk-bare-init, the trivial init of the boot benchmark's
# baseline and of the boot-failure tests. The archives are byte-for-byte
# reproducible for the same agent binary.
#
# Usage: hack/build-initramfs.sh [OUTPUT_DIR]   (default target/husk)
# Prints the path of the agent initramfs on its last line of stdout.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/target/husk}
target=x86_64-unknown-linux-gnu
mkdir -p "$out"
cd "$repo"

# --target keeps RUSTFLAGS off build scripts and proc macros, and the static
# artifacts apart from the host build.
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --quiet --release --locked --target "$target" -p husk-agent >&2
cargo build --quiet --release --locked -p husk --bin husk --bin containerd-shim-husk-v2 \
    -p husk-vmm --bin husk-vmm >&2

bin="$repo/target/$target/release"
for b in husk-agent husk-bare-init; do
    if ldd "$bin/$b" 2>&1 | grep -q '=>'; then
        echo "build-initramfs: $bin/$b is dynamically linked" >&2
        exit 1
    fi
done
"$repo/target/release/husk" mkinitramfs --agent "$bin/husk-agent" --output "$out/initramfs.cpio"
"$repo/target/release/husk" mkinitramfs --agent "$bin/husk-bare-init" --output "$out/bare-initramfs.cpio"
echo "build-initramfs: $out/initramfs.cpio ($(stat -c %s "$out/initramfs.cpio") bytes)" >&2
echo "$out/initramfs.cpio"
