#!/usr/bin/env bash
# Builds husk, the guest kernel and the initramfs, and installs them:
#   /usr/local/bin/{husk,husk-vmm,containerd-shim-husk-v2}  (husk-vmm: the
#       builtin KVM monitor; the shim: containerd's runtime io.containerd.husk.v2)
#   /usr/local/share/husk/{vmlinux,initramfs.cpio}
#   /usr/local/libexec/husk/{virtiofsd,vhost-device-vsock}  (install-deps.sh)
# husk's built-in defaults point at these paths, so no config file is needed.
# Then registers husk with the engines that are installed, keeping the rest
# of their configuration (husk register-engines; running it again changes
# nothing): docker (/etc/docker/daemon.json, runtime "husk"), podman
# (/etc/containers/containers.conf, runtime "husk" with JSON logs) and
# containerd (/etc/containerd/config.toml, CRI runtime handler "husk" with
# runtime_type io.containerd.husk.v2: one VM per pod).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
share=${HUSK_SHARE:-/usr/local/share/husk}
bindir=${HUSK_BINDIR:-/usr/local/bin}

"$repo/hack/install-deps.sh"
kernel=$("$repo/hack/build-kernel.sh" | tail -n1)
initramfs=$("$repo/hack/build-initramfs.sh" | tail -n1)

mkdir -p "$share" "$bindir"
install -m 0644 "$kernel" "$share/vmlinux"
install -m 0644 "$initramfs" "$share/initramfs.cpio"
install -m 0755 "$repo/target/release/husk" "$bindir/husk"
install -m 0755 "$repo/target/release/husk-vmm" "$bindir/husk-vmm"
install -m 0755 "$repo/target/release/containerd-shim-husk-v2" "$bindir/containerd-shim-husk-v2"
echo "install: husk $("$bindir/husk" --version | cut -d' ' -f2) in $bindir, guest in $share" >&2
# An engine whose file husk cannot edit safely keeps it as it is and runs on;
# register-engines names it and what to add by hand.
if ! "$bindir/husk" register-engines --husk "$bindir/husk" >&2; then
    echo "install: husk is installed; the engines named above were left unchanged" >&2
fi
# dockerd rereads its runtimes on SIGHUP; containerd needs a restart.
if pids=$(pidof dockerd); then
    kill -HUP $pids
fi
