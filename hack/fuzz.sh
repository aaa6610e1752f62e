#!/usr/bin/env bash
# Runs a libFuzzer target of agent/protocol/fuzz on the stable toolchain
# (cargo fuzz needs nightly, which cannot be installed here): the same
# sanitizer-coverage passes cargo fuzz uses, without ASan.
# Usage: hack/fuzz.sh [TARGET] [SECONDS]   (default frame_decoder 60)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${1:-frame_decoder}
seconds=${2:-60}
cd "$repo/agent/protocol/fuzz"
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing" \
    cargo build --quiet --release --target x86_64-unknown-linux-gnu --bin "$target"
mkdir -p corpus/"$target"
"./target/x86_64-unknown-linux-gnu/release/$target" -max_total_time="$seconds" corpus/"$target"
