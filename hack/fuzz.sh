#!/usr/bin/env bash
# Runs a libFuzzer target on the stable toolchain (cargo fuzz needs nightly,
# which cannot be installed here): the same sanitizer-coverage passes cargo
# fuzz uses, without ASan. Targets: frame_decoder (agent/protocol/fuzz),
# mmio_registers, vsock_packets and net_frames (runtime/vmm/fuzz),
# bundle_spec (runtime/fuzz). Options after the seconds go to libFuzzer
# (e.g. -close_fd_mask=2 to silence the device's messages).
# Usage: hack/fuzz.sh [TARGET] [SECONDS] [LIBFUZZER OPTION...]
#        (default frame_decoder 60)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${1:-frame_decoder}
seconds=${2:-60}
shift $(($# < 2 ? $# : 2))
dir=
for candidate in agent/protocol/fuzz runtime/vmm/fuzz runtime/fuzz; do
    if [[ -f $repo/$candidate/fuzz_targets/$target.rs ]]; then
        dir=$repo/$candidate
    fi
done
if [[ -z $dir ]]; then
    echo "fuzz.sh: no fuzz target $target" >&2
    exit 2
fi
cd "$dir"
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing" \
    cargo build --quiet --release --target x86_64-unknown-linux-gnu --bin "$target"
mkdir -p corpus/"$target"
"./target/x86_64-unknown-linux-gnu/release/$target" -max_total_time="$seconds" "$@" corpus/"$target"
