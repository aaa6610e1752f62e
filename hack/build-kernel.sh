#!/usr/bin/env bash
# Builds the guest kernel: Debian's linux-source-6.1 on top of `tinyconfig`
# plus the fragments in guest-kernel-config/, as an uncompressed vmlinux with
# the PVH entry.
#
# The result is cached by kernel source version + the hash of the fragments
# and of this script, so a second run takes seconds. Prints the path of the
# vmlinux on its last line of stdout.
#
# Environment:
#   HUSK_CACHE   cache directory (default /var/cache/husk)
#   JOBS         parallel make jobs (default: number of CPUs)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${HUSK_CACHE:-/var/cache/husk}
jobs=${JOBS:-$(nproc)}
fragments=("$repo"/guest-kernel-config/*.config)

log() { echo "build-kernel: $*" >&2; }
die() { log "error: $*"; exit 1; }

install_deps() {
    local missing=()
    dpkg -s linux-source-6.1 >/dev/null 2>&1 || missing+=(linux-source-6.1)
    for tool in gcc:build-essential make:build-essential flex:flex bison:bison bc:bc \
        xz:xz-utils; do
        command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
    done
    dpkg -s libelf-dev >/dev/null 2>&1 || missing+=(libelf-dev)
    dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    fi
}

# Every option a fragment asks for must be in the final .config exactly:
# olddefconfig silently drops options whose dependencies are missing.
check_config() {
    local config=$1 dropped=0 line name
    while IFS= read -r line; do
        case "$line" in
        CONFIG_*=*)
            grep -qxF -- "$line" "$config" || {
                log "option dropped by olddefconfig: $line (have: $(grep -E "^(# )?${line%%=*}[= ]" "$config" || echo unset))"
                dropped=1
            }
            ;;
        "# CONFIG_"*" is not set")
            name=${line#\# }
            name=${name%% *}
            if grep -qE "^${name}=" "$config"; then
                log "option forced on despite '$line'"
                dropped=1
            fi
            ;;
        esac
    done < <(cat "${fragments[@]}")
    return $dropped
}

install_deps
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
hash=$( (echo "$src_version"; cat "${fragments[@]}" "$0") | sha256sum | cut -c1-16)
out="$cache/kernel/$src_version-$hash"
if [[ -f $out/vmlinux ]]; then
    log "cached: $out/vmlinux"
    echo "$out/vmlinux"
    exit 0
fi

src="$cache/src/linux-source-6.1-$src_version"
if [[ ! -f $src/Makefile ]]; then
    log "unpacking linux-source-6.1 $src_version"
    rm -rf "$src.tmp" && mkdir -p "$src.tmp"
    tar -xf /usr/src/linux-source-6.1.tar.xz -C "$src.tmp" --strip-components=1
    rm -rf "$src" && mv "$src.tmp" "$src"
fi

build="$out.build"
rm -rf "$build" && mkdir -p "$build"
log "configuring in $build"
make -s -C "$src" O="$build" tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "${fragments[@]}" >/dev/null
make -s -C "$src" O="$build" olddefconfig >/dev/null
check_config "$build/.config" || die "the fragments in guest-kernel-config/ ask for options the kernel dropped (above)"

log "building vmlinux with $jobs jobs (6-10 minutes on 2 cores); log: $build/make.log"
make -C "$src" O="$build" -j"$jobs" vmlinux >"$build/make.log" 2>&1 &
make_pid=$!
while kill -0 $make_pid 2>/dev/null; do
    sleep 20
    kill -0 $make_pid 2>/dev/null && log "... $(grep -c ' CC ' "$build/make.log" || true) files compiled"
done
wait $make_pid || { tail -n 30 "$build/make.log" >&2; die "kernel build failed (log: $build/make.log)"; }

grep -q 'Xen' <(readelf -n "$build/vmlinux" 2>/dev/null) || die "vmlinux has no PVH (Xen ELF) note"
mkdir -p "$out"
cp "$build/vmlinux" "$build/.config" "$out/"
rm -rf "$build"
log "built $out/vmlinux"
echo "$out/vmlinux"
