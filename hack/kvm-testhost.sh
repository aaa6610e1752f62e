#!/usr/bin/env bash
# Runs a command inside a nested test host that has a real /dev/kvm.
#
# This machine's /dev/kvm is PVM and boots no stock Linux guest, but QEMU's
# TCG emulates AMD SVM with nested paging: an outer TCG guest (`-cpu max`)
# running Debian's stock kernel loads kvm_amd and offers a real /dev/kvm.
# The outer guest sees the host's root read-only over virtio-9p and runs the
# command chrooted into it, so the host's binaries (husk, QEMU, the guest
# kernel and initramfs) run as they are. Measured recipe and its caveats:
# shared/KVM-TESTHOST.md.
#
# Usage:
#   hack/kvm-testhost.sh [--timeout SECS] [--silence SECS] [--attempts N] [--env NAME=VALUE]...
#                        [--writable DIR]... [--scratch DIR]... -- COMMAND [ARGS...]
#   hack/kvm-testhost.sh --prepare
#
#   --timeout SECS   overall limit, retry included (default 1800); exit 124
#   --silence SECS   the outer guest counts as frozen after this long without
#                    serial output (default 60): it is killed and the run is
#                    retried once. A long silent command should print progress.
#   --attempts N     boots before a freeze is a failure (default 2, the first
#                    and one retry); more suit a short command whose guests
#                    print much on their serial console, which is what
#                    freezes the emulated CPU
#   --env NAME=VALUE set in the command's environment (besides the caller's
#                    PATH, HOME=/root and HUSK_TESTHOST=1)
#   --writable DIR   share the host's DIR read-write at the same path (the rest
#                    of the host is read-only; /tmp, /run and /var/tmp are
#                    empty tmpfs scratch space)
#   --scratch DIR    an empty tmpfs at the host's DIR (which must exist), for
#                    programs that insist on writing there (libcni's cache in
#                    /var/lib/cni)
#   --prepare        only build (or find) the cached outer kernel and
#                    initramfs; prints their directory on the last stdout line
#
# The command runs in the caller's working directory (if the guest sees it,
# else in /), with stdin from /dev/null; its output and the outer guest's
# console stream to stdout. Exit status: the command's own, 124 on the overall
# timeout, 125 when the test host failed (no /dev/kvm, the outer guest froze
# twice or died without reporting the command's status), 130/143 on INT/TERM,
# 2 on a usage error.
#
# The outer kernel and busybox initramfs are cached by kernel package version
# + busybox version + the hash of this script; the command goes in a tiny
# second cpio appended per run.
#
# Environment:
#   HUSK_CACHE   cache directory (default /var/cache/husk)
set -euo pipefail

cache=${HUSK_CACHE:-/var/cache/husk}
timeout=1800
silence=60
attempts=2
envs=()
writable=()
scratch=()
prepare_only=0

log() { echo "kvm-testhost: $*" >&2; }
die() { log "error: $*"; exit 125; }
bad_usage() { log "$*"; exit 2; }
usage() { sed -n '/^# Usage:/,/^# The command/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

# Quotes one word for a POSIX shell (busybox ash reads it inside the guest).
shquote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

install_deps() {
    local missing=() tool
    for tool in qemu-system-x86_64:qemu-system-x86 busybox:busybox-static cpio:cpio \
        depmod:kmod dpkg-deb:dpkg xz:xz-utils readelf:binutils; do
        command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
}

# Prints "PACKAGE VERSION" of the linux-image-6.1.*-amd64 that
# linux-image-amd64 depends on now (the generic flavour: the cloud one has no
# 9p). apt-cache takes most of a second here (its pkgcache is off), so the
# answer is remembered until the apt lists change.
kernel_package() {
    local lists fingerprint memo="$cache/testhost/apt-answer" answer
    lists=$(stat -c '%n %s %Y' /var/lib/apt/lists/*_Packages* 2>/dev/null | sha256sum | cut -c1-16)
    if [[ -f $memo ]] && read -r fingerprint answer <"$memo" && [[ $fingerprint == "$lists" ]]; then
        echo "$answer"
        return
    fi
    answer=$(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
        sed -n 's/^Depends: \(linux-image-6\.1\.[^ ]*-amd64\) (= \([^)]*\)).*/\1 \2/p' | head -n 1)
    [[ -n $answer ]] || return 0
    if mkdir -p "${memo%/*}" 2>/dev/null; then
        echo "$lists $answer" >"$memo.$$" && mv "$memo.$$" "$memo"
    fi
    echo "$answer"
}

# Sets mod_order to the kernel modules to load (paths relative to MODDIR), in
# load order, each after its dependencies (from modules.dep): kvm-amd (with
# kvm and ccp), the 9p client and the virtio transport, and the network
# pieces husk uses, where they are modules rather than built in.
resolve_modules() {
    local moddir=$1 path deps name dep
    declare -gA mod_path=() mod_deps=() mod_builtin=() mod_seen=()
    mod_order=()
    while IFS= read -r path; do
        name=${path##*/}
        name=${name%%.ko*}
        mod_builtin[${name//-/_}]=1
    done <"$moddir/modules.builtin"
    while IFS=: read -r path deps; do
        name=${path##*/}
        name=${name%%.ko*}
        name=${name//-/_}
        mod_path[$name]=$path
        mod_deps[$name]=$deps
    done <"$moddir/modules.dep"

    visit() {
        local name=${1//-/_} optional=${2:-} dep
        [[ -z ${mod_seen[$name]:-} ]] || return 0
        mod_seen[$name]=1
        [[ -z ${mod_builtin[$name]:-} ]] || return 0
        if [[ -z ${mod_path[$name]:-} ]]; then
            [[ -n $optional ]] && return 0
            die "module $name is neither built in nor in $moddir/modules.dep"
        fi
        for dep in ${mod_deps[$name]}; do
            dep=${dep##*/}
            visit "${dep%%.ko*}"
        done
        mod_order+=("${mod_path[$name]}")
    }
    for name in kvm ccp kvm_amd virtio_pci 9pnet 9pnet_virtio 9p; do
        visit "$name"
    done
    # What husk's network needs: taps, veth pairs for the tests, the
    # ingress qdisc with a u32 filter and a mirred redirect, a bridge; and
    # overlay for containerd's snapshots (the pod suite).
    for name in tun veth sch_ingress cls_u32 act_mirred bridge overlay; do
        visit "$name"
    done
    visit virtio_rng optional
}

# Unpacks the ELF vmlinux from a bzImage (its payload, compressed with the
# size appended, is located by the setup header: boot protocol 2.08+). QEMU
# boots it through its PVH note, skipping the real-mode setup and the
# decompression, which take about 3 s under TCG.
extract_vmlinux() {
    local bzimage=$1 out=$2 setup_sects offset length
    setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$bzimage" | tr -d ' ')
    ((setup_sects)) || setup_sects=4
    read -r offset length < <(od -An -tu4 -j $((0x248)) -N8 "$bzimage")
    dd if="$bzimage" iflag=skip_bytes,count_bytes skip=$(((setup_sects + 1) * 512 + offset)) \
        count=$((length - 4)) status=none >"$out.payload"
    case $(od -An -tx1 -N6 "$out.payload" | tr -d ' ') in
    fd377a585a00) xz -dc "$out.payload" >"$out" ;;
    28b52ffd*) zstd -qdc "$out.payload" >"$out" ;;
    1f8b*) gzip -dc "$out.payload" >"$out" ;;
    *) return 1 ;;
    esac
    rm -f "$out.payload"
    readelf -n "$out" 2>/dev/null | grep -q Xen
}

# PID 1 of the outer guest. Reads /testhost-run.conf (appended per run), which
# sets nonce, writable_count, writable_<i>, scratch (a list) and defines
# run_command.
write_init() {
    cat >"$1" <<'EOF'
#!/bin/sh
# PID 1 of the kvm-testhost outer guest (written by hack/kvm-testhost.sh).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
. /testhost-run.conf

say() { echo "husk-testhost: $*"; }
power_off() { sync; poweroff -f; sleep 60; }
setup_failed() {
    say "$*"
    dmesg | tail -n 15
    say "setup failed [$nonce]"
    power_off
}

echo
say "outer guest up after $(cut -d' ' -f1 /proc/uptime) s; loading kvm_amd, the 9p and the network modules"
while read -r m; do
    insmod "/lib/modules/$m" || {
        case $m in
        kvm-amd.ko | kvm_amd.ko)
            grep -qw svm /proc/cpuinfo || setup_failed "the outer CPU has no svm flag (is it -cpu max under TCG?)"
            ;;
        esac
        setup_failed "insmod $m failed"
    }
done </etc/testhost/modules
[ -d /sys/module/kvm_amd ] || setup_failed "kvm_amd is not loaded"
[ -c /dev/kvm ] || setup_failed "kvm_amd loaded but /dev/kvm is missing"

mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose host /host ||
    setup_failed "cannot mount the host's root (9p tag host)"
for d in dev proc sys tmp run var/tmp; do
    [ -d "/host/$d" ] || setup_failed "the host has no /$d to mount over"
done
mount -o rbind /dev /host/dev
mount -t proc proc /host/proc
mount -o rbind /sys /host/sys
mount -t tmpfs -o mode=1777 tmpfs /host/tmp
mount -t tmpfs -o mode=0755 tmpfs /host/run
mount -t tmpfs -o mode=1777 tmpfs /host/var/tmp
i=0
while [ "$i" -lt "$writable_count" ]; do
    eval "dir=\$writable_$i"
    mkdir -p "/host$dir" 2>/dev/null
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 "rw$i" "/host$dir" ||
        setup_failed "cannot mount the writable share of $dir (9p tag rw$i)"
    i=$((i + 1))
done
for dir in $scratch; do
    mount -t tmpfs -o mode=0755 tmpfs "/host$dir" || setup_failed "cannot mount a tmpfs at $dir"
done

say "/dev/kvm ready (kvm_amd npt=$(cat /sys/module/kvm_amd/parameters/npt) nested=$(cat /sys/module/kvm_amd/parameters/nested)); command starts after $(cut -d' ' -f1 /proc/uptime) s"
run_command </dev/null
code=$?
sync
say "exit $code [$nonce]"
power_off
EOF
    chmod 0755 "$1"
}

# Builds the outer kernel and initramfs unless cached; sets testhost_dir.
prepare() {
    local pkg= version= kver hash build root moddir m src dst
    install_deps
    read -r pkg version < <(kernel_package) || true
    if [[ -z ${version:-} ]]; then
        log "apt lists lack linux-image-amd64; running apt-get update"
        apt-get update -qq
        read -r pkg version < <(kernel_package) || true
        [[ -n ${version:-} ]] || die "apt-cache finds no linux-image-6.1.*-amd64 behind linux-image-amd64"
    fi
    hash=$( (echo "$pkg $version"; cat "$(command -v busybox)" "$0") | sha256sum | cut -c1-16)
    testhost_dir="$cache/testhost/${pkg#linux-image-}-$hash"
    if [[ -f $testhost_dir/initrd.img && -f $testhost_dir/kernel ]]; then
        log "cached: $testhost_dir"
        return
    fi
    ((EUID == 0)) || die "building the outer initramfs needs root (device nodes, $cache)"

    mkdir -p "$cache/testhost"
    build=$(mktemp -d "$cache/testhost/.build.XXXXXX")
    # shellcheck disable=SC2064 # expand $build now
    trap "rm -rf '$build'" EXIT
    log "downloading $pkg $version"
    (cd "$build" && apt-get download -qq -o APT::Sandbox::User=root "$pkg=$version") >&2
    root="$build/pkg"
    dpkg-deb -x "$build"/*.deb "$root"
    kver=${pkg#linux-image-}
    moddir="$root/lib/modules/$kver"
    [[ -d $moddir && -f $root/boot/vmlinuz-$kver ]] || die "$pkg has no /boot/vmlinuz-$kver or /lib/modules/$kver"
    depmod -b "$root" "$kver"

    local initrd="$build/initrd"
    mkdir -p "$initrd"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,host,etc/testhost,lib/modules}
    cp "$(command -v busybox)" "$initrd/bin/busybox"
    while IFS= read -r m; do
        m=${m#/}
        [[ -e $initrd/$m ]] || ln -s /bin/busybox "$initrd/$m"
    done < <(busybox --list-full)
    mknod -m 0600 "$initrd/dev/console" c 5 1
    mknod -m 0666 "$initrd/dev/null" c 1 3
    : >"$initrd/etc/testhost/modules"
    resolve_modules "$moddir"
    for m in "${mod_order[@]}"; do
        src="$moddir/$m"
        dst=${m##*/}
        case $dst in
        *.ko.xz) xz -dc "$src" >"$initrd/lib/modules/${dst%.xz}" ;;
        *.ko.zst) zstd -qdc "$src" >"$initrd/lib/modules/${dst%.zst}" ;;
        *.ko.gz) gzip -dc "$src" >"$initrd/lib/modules/${dst%.gz}" ;;
        *) cp "$src" "$initrd/lib/modules/$dst" ;;
        esac
        echo "${dst%.ko*}.ko" >>"$initrd/etc/testhost/modules"
    done
    log "modules: $(tr '\n' ' ' <"$initrd/etc/testhost/modules")"
    write_init "$initrd/init"

    mkdir -p "$build/out"
    if extract_vmlinux "$root/boot/vmlinuz-$kver" "$build/out/kernel"; then
        log "booting the ELF vmlinux through PVH"
    else
        log "no PVH vmlinux in the bzImage; booting the bzImage"
        cp "$root/boot/vmlinuz-$kver" "$build/out/kernel"
    fi
    (cd "$initrd" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
        gzip -6 >"$build/out/initrd.img"
    echo "$pkg $version" >"$build/out/version"
    if ! mv -T "$build/out" "$testhost_dir" 2>/dev/null; then
        [[ -f $testhost_dir/initrd.img ]] || die "cannot move the build into $testhost_dir"
        log "another run built $testhost_dir meanwhile; using it"
    fi
    rm -rf "$build"
    trap - EXIT
    log "built $testhost_dir ($(stat -c %s "$testhost_dir/initrd.img") bytes of initramfs)"
}

# ---- one run ---------------------------------------------------------------

qemu_pid=
run_dir=

stop_qemu() {
    [[ -n $qemu_pid ]] || return 0
    if kill -0 "$qemu_pid" 2>/dev/null; then
        kill -TERM "$qemu_pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$qemu_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$qemu_pid" 2>/dev/null || true
    fi
    wait "$qemu_pid" 2>/dev/null || true
    qemu_pid=
}

cleanup() {
    stop_qemu
    [[ -z $run_dir ]] || rm -rf "$run_dir"
}

# Console text without CRs and without the terminal resets SeaBIOS sends.
clean_console() { tr -d '\r' | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc/\n/g'; }

# Writes the per-run initrd: the cached one + a cpio with /testhost-run.conf.
write_run_initrd() {
    local conf="$run_dir/conf/testhost-run.conf" i arg cwd=$PWD
    mkdir -p "$run_dir/conf"
    {
        echo "nonce=$nonce"
        echo "writable_count=${#writable[@]}"
        for i in "${!writable[@]}"; do
            echo "writable_$i=$(shquote "${writable[$i]}")"
        done
        echo "scratch=$(shquote "${scratch[*]}")"
        echo "run_command() {"
        printf '    chroot /host /usr/bin/env -i %s %s HUSK_TESTHOST=1' \
            "$(shquote "PATH=$PATH")" "HOME=/root"
        for arg in "${envs[@]}"; do printf ' %s' "$(shquote "$arg")"; done
        # shellcheck disable=SC2016 # expanded by the guest's shell
        printf ' /bin/sh -c %s sh %s' "$(shquote 'cd "$1" 2>/dev/null || cd /; shift; exec "$@"')" \
            "$(shquote "$cwd")"
        for arg in "${command[@]}"; do printf ' %s' "$(shquote "$arg")"; done
        printf '\n}\n'
    } >"$conf"
    (cd "$run_dir/conf" && echo testhost-run.conf | cpio -o -H newc -R 0:0 --quiet) | gzip -1 >"$run_dir/run.cpio.gz"
    cat "$testhost_dir/initrd.img" "$run_dir/run.cpio.gz" >"$run_dir/initrd.img"
}

# Runs the outer guest once, streaming its console to stdout. Returns 0 when
# QEMU exited by itself, 1 after a silence of $silence s, 2 at the deadline.
boot_once() {
    local serial="$run_dir/serial.log" offset=0 size last_output=$SECONDS i
    # 4 GiB: the scratch tmpfs and every nested guest live in it; with 2 GiB
    # the outer guest had touched all of it a few minutes into the suites.
    local qemu=(qemu-system-x86_64 -accel tcg -cpu max -m 4096 -smp 1 -M pc
        -nographic -no-reboot -nodefaults -serial stdio
        -kernel "$testhost_dir/kernel" -initrd "$run_dir/initrd.img"
        -append "console=ttyS0 panic=-1 quiet"
        -device virtio-rng-pci
        -virtfs local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap)
    for i in "${!writable[@]}"; do
        qemu+=(-virtfs "local,path=${writable[$i]//,/,,},mount_tag=rw$i,security_model=none,multidevs=remap")
    done
    : >"$serial"
    "${qemu[@]}" </dev/null >>"$serial" 2>&1 &
    qemu_pid=$!
    while :; do
        size=$(stat -c %s "$serial")
        if ((size > offset)); then
            dd if="$serial" iflag=skip_bytes,count_bytes skip=$offset count=$((size - offset)) \
                status=none | clean_console
            offset=$size
            last_output=$SECONDS
        fi
        if ! kill -0 "$qemu_pid" 2>/dev/null; then
            wait "$qemu_pid" 2>/dev/null || true
            qemu_pid=
            dd if="$serial" iflag=skip_bytes skip=$offset status=none | clean_console
            return 0
        fi
        if ((SECONDS >= deadline)); then
            stop_qemu
            return 2
        fi
        if ((SECONDS - last_output >= silence)); then
            stop_qemu
            return 1
        fi
        sleep 0.5
    done
}

run() {
    local attempt status code
    run_dir=$(mktemp -d "${TMPDIR:-/tmp}/kvm-testhost.XXXXXX")
    trap cleanup EXIT
    trap 'cleanup; exit 130' INT
    trap 'cleanup; exit 143' TERM
    nonce=$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
    write_run_initrd
    deadline=$((SECONDS + timeout))
    for ((attempt = 1; attempt <= attempts; attempt++)); do
        status=0
        boot_once || status=$?
        case $status in
        1)
            echo
            if ((attempt < attempts)); then
                log "no output for $silence s, the outer guest froze (boot $attempt of $attempts); retrying"
                continue
            fi
            log "no output for $silence s, the outer guest froze in each of $attempts boots; giving up"
            exit 125
            ;;
        2)
            echo
            log "overall timeout of $timeout s reached; outer guest killed"
            exit 124
            ;;
        esac
        break
    done
    local serial="$run_dir/serial.log"
    [[ $(tail -c 1 "$serial" | wc -l) == 1 ]] || echo
    code=$(tr -d '\r' <"$serial" | sed -n "s/.*husk-testhost: exit \([0-9]\{1,3\}\) \[$nonce\]\$/\1/p" | tail -n 1)
    if [[ -n $code ]]; then
        exit "$code"
    fi
    if tr -d '\r' <"$serial" | grep -q "husk-testhost: setup failed \[$nonce\]"; then
        log "the test host could not be set up (above); the command did not run"
        exit 125
    fi
    log "the outer guest stopped without reporting the command's exit status; its last lines:"
    clean_console <"$serial" | tail -n 20 >&2
    exit 125
}

command=()
while (($#)); do
    case $1 in
    --timeout | --silence)
        [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || bad_usage "$1 needs a whole number of seconds"
        if [[ $1 == --timeout ]]; then timeout=$2; else silence=$2; fi
        shift 2
        ;;
    --attempts)
        [[ ${2:-} =~ ^[1-9][0-9]?$ ]] || bad_usage "--attempts needs a number of boots from 1 to 99"
        attempts=$2
        shift 2
        ;;
    --env)
        [[ ${2:-} =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || bad_usage "--env needs NAME=VALUE, got '${2:-}'"
        envs+=("$2")
        shift 2
        ;;
    --writable)
        [[ -d ${2:-} ]] || bad_usage "--writable needs an existing directory, got '${2:-}'"
        writable+=("$(realpath "$2")")
        shift 2
        ;;
    --scratch)
        [[ -d ${2:-} && $(realpath "$2") != *[[:space:]]* ]] ||
            bad_usage "--scratch needs an existing directory without spaces, got '${2:-}'"
        scratch+=("$(realpath "$2")")
        shift 2
        ;;
    --prepare)
        prepare_only=1
        shift
        ;;
    --)
        shift
        command=("$@")
        break
        ;;
    -h | --help) usage ;;
    *) usage ;;
    esac
done

if ((prepare_only)); then
    prepare
    echo "$testhost_dir"
    exit 0
fi
((${#command[@]})) || usage
prepare
run
