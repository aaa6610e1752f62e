#!/usr/bin/env bash
# The README's first command: installs everything on a fresh Debian 12 host
# (as root), proves the host works with `husk check`, then runs a real
# container from an OCI bundle (busybox) in a microVM with `husk run`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/hack/install.sh"
/usr/local/bin/husk check
bundle=$("$repo/hack/make-bundle.sh" /var/tmp/husk-quickstart-bundle \
    sh -c 'echo "hello from a husk microVM: kernel $(uname -r), pid $$"')
echo "=== husk run --bundle $bundle quickstart" >&2
/usr/local/bin/husk delete --force quickstart 2>/dev/null || true
exec /usr/local/bin/husk run --bundle "$bundle" quickstart
