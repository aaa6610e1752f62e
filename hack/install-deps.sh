#!/usr/bin/env bash
# Installs what husk needs on a Debian 12 host, idempotently:
#   - Debian packages: QEMU, the kernel source and its build tools, the
#     libraries virtiofsd links against, busybox-static (the quickstart's
#     bundle), iptables (the shim's port-forward redirect);
#   - virtiofsd and vhost-device-vsock from crates.io, pinned, into
#     /usr/local/libexec/husk (husk's default helper paths).
# With --tests (hack/test.sh, the engine benchmarks), also what the tests
# drive and build: the engines (podman with netavark, docker.io,
# containerd) and runc (the baseline), CNI plugins, debootstrap for the
# test images, protoc for the CRI suite's k8s-cri crate (the KVM test host
# installs its own tools). Without it no engine is installed: Debian's
# docker.io and containerd conflict with Docker's own docker-ce and
# containerd.io, and installing them would replace a user's Docker.
# A second run with everything in place takes about a second.
set -euo pipefail

libexec=${HUSK_LIBEXEC:-/usr/local/libexec/husk}
cache=${HUSK_CACHE:-/var/cache/husk}
VIRTIOFSD_VERSION=1.14.0
VSOCK_VERSION=0.3.0

log() { echo "install-deps: $*" >&2; }

tests=0
case ${1:-} in
--tests) tests=1 ;;
"") ;;
*)
    echo "usage: hack/install-deps.sh [--tests]" >&2
    exit 2
    ;;
esac

packages=(qemu-system-x86 linux-source-6.1 build-essential flex bison bc xz-utils
    libelf-dev libssl-dev libcap-ng-dev libseccomp-dev pkg-config busybox-static iptables)
if ((tests)); then
    packages+=(podman conmon catatonit runc uidmap golang-github-containers-common
        netavark aardvark-dns containernetworking-plugins docker.io containerd
        debootstrap protobuf-compiler)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    # No daemon starts here: engines are started by the tests (policy-rc.d
    # or the lack of systemd keeps docker.io's service down).
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

# cargo install <crate> <version> <binary>
install_crate() {
    local crate=$1 version=$2 binary=$3
    if [[ -x $libexec/$binary ]] && "$libexec/$binary" --version 2>/dev/null | grep -qF "$version"; then
        return
    fi
    log "building $crate $version from crates.io (a few minutes)"
    cargo install --quiet --locked --root "$cache/cargo" --version "=$version" "$crate" >&2
    mkdir -p "$libexec"
    install -m 0755 "$cache/cargo/bin/$binary" "$libexec/$binary"
}
install_crate virtiofsd "$VIRTIOFSD_VERSION" virtiofsd
install_crate vhost-device-vsock "$VSOCK_VERSION" vhost-device-vsock
log "ok"
