#!/usr/bin/env bash
# Makes an OCI bundle with a busybox rootfs (from Debian's busybox-static)
# that runs the given command: hack/make-bundle.sh DIR CMD [ARGS...]
# Uses `husk spec` for config.json: $HUSK, else target/release/husk, else PATH.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dir=$1
shift
husk=${HUSK:-$repo/target/release/husk}
[[ -x $husk ]] || husk=$(command -v husk)
mkdir -p "$dir/rootfs"/{bin,etc,proc,sys,dev,tmp,root,run}
chmod 1777 "$dir/rootfs/tmp"
cp /bin/busybox "$dir/rootfs/bin/busybox"
for applet in $(/bin/busybox --list | grep -vx busybox); do
    ln -sf busybox "$dir/rootfs/bin/$applet"
done
echo 'root:x:0:0:root:/root:/bin/sh' >"$dir/rootfs/etc/passwd"
echo 'root:x:0:' >"$dir/rootfs/etc/group"
rm -f "$dir/config.json"
"$husk" spec --bundle "$dir"
python3 - "$dir/config.json" "$@" <<'PY'
import json, sys
path, args = sys.argv[1], sys.argv[2:]
spec = json.load(open(path))
spec["process"]["terminal"] = False
spec["process"]["args"] = args
json.dump(spec, open(path, "w"), indent=2)
PY
echo "$dir"
