#!/usr/bin/env bash
# The README's first command: installs everything on a fresh Debian 12 host
# (as root) and proves it works by booting a microVM with `husk check`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/hack/install.sh"
exec /usr/local/bin/husk check
