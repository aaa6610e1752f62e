#!/usr/bin/env bash
# The README's second command (and CI's): installs and builds everything the
# tests need on a fresh Debian 12 host (as root), then runs the whole suite:
# formatting, clippy, unit tests, and end-to-end tests that boot real guests.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

step() { echo "=== $*" >&2; }

step "dependencies"
hack/install-deps.sh --tests
step "what an interrupted earlier run left"
hack/remove-stale-fixtures.sh
step "guest kernel"
kernel=$(hack/build-kernel.sh | tail -n1)
step "agent and initramfs"
initramfs=$(hack/build-initramfs.sh | tail -n1)
step "test images"
HUSK_TEST_IMAGES=$(hack/build-images.sh | tail -n1)
export HUSK_TEST_IMAGES

libexec=${HUSK_LIBEXEC:-/usr/local/libexec/husk}
export HUSK_TEST_CONFIG=$repo/target/husk/test-config.toml
cat >"$HUSK_TEST_CONFIG" <<CONF
kernel = "$kernel"
initramfs = "$initramfs"
virtiofsd = "$libexec/virtiofsd"
vsock_backend = "$libexec/vhost-device-vsock"
vmm = "$repo/target/debug/husk-vmm"
CONF
builtin_config=$repo/target/husk/builtin-config.toml
{ echo 'backend = "builtin"'; cat "$HUSK_TEST_CONFIG"; } >"$builtin_config"

# A test that would skip fails instead (tests/src/lib.rs, `skip`).
export HUSK_TEST_NO_SKIP=1
summary=$repo/target/husk/suites.txt
: >"$summary"

# Runs one test binary (or cargo test command), showing its output, and
# records how many tests it ran; fails when the suite fails or ran none.
suite() {
    local name=$1
    shift
    local log=$repo/target/husk/suite-$name.log
    step "suite $name"
    set +e
    "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    set -e
    local ran
    ran=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) if ($i ~ /^(passed|failed);?$/) n += $(i - 1) }
        END { print n + 0 }' "$log")
    echo "suite $name: $ran tests ran, exit $rc" | tee -a "$summary" >&2
    if ((rc != 0)); then
        echo "test.sh: suite $name failed" >&2
        exit 1
    fi
    if ((ran == 0)); then
        echo "test.sh: suite $name ran no test" >&2
        exit 1
    fi
}

step "rustfmt"
cargo fmt --all --check
step "clippy"
cargo clippy --quiet --locked --workspace --all-targets -- -D warnings
step "build"
cargo build --quiet --locked --workspace
suite unit cargo test --locked --workspace --lib --bins -- --test-threads=2
suite netlink cargo test --locked -p husk-netlink --test kernel -- --test-threads=2
for e2e in boot cli faults network podman engines cri; do
    suite "$e2e" cargo test --locked -p husk-tests --test "$e2e" -- --test-threads=2
done
# One load at a time, so each measures only itself; the figures are printed.
suite load cargo test --locked -p husk-tests --test load -- --test-threads=1 --nocapture

step "builtin backend: boot, cli, faults, network, builtin and pod suites with real KVM"
declare -A binary=()
while read -r name path; do
    binary[$name]=$path
done < <(cargo test --quiet --locked -p husk-tests --test boot --test cli --test faults \
    --test network --test builtin --test cri --no-run --message-format=json |
    sed -n 's/.*"target":{[^}]*"name":"\([a-z_]*\)".*"executable":"\([^"]*\)".*/\1 \2/p')
for name in boot cli faults network builtin cri; do
    if [[ -z ${binary[$name]:-} ]]; then
        echo "test.sh: the $name test binary was not built (got: ${!binary[*]})" >&2
        exit 1
    fi
done
# Test-host boots, each short enough (at most about 10 minutes) for its
# watchdog's retries to fit in its timeout: the console flood, the boot and
# CLI suites, the fault matrix, then the network, device and pod suites.
# Each fails on a seccomp kill of a VM process in its own dmesg.
write_builtin_suites() {
    local script=$1 pods=$2
    shift 2
    {
        echo 'set -e'
        echo "kills_before=\$(dmesg | grep 'type=1326' | grep -cE 'exe=\"[^\"]*/(husk-vmm|qemu-system-x86_64|vhost-device-vsock|virtiofsd)\"' || true)"
        for suite in "$@"; do
            printf 'echo "=== %s"\n%s --test-threads=1\n' "$suite" "$suite"
        done
        if [[ $pods == pods ]]; then
            cat <<SUITES
echo "=== ${binary[cri]} cri_with_husk (pods)"
HUSK_CRI_NETWORK=bridge \\
    HUSK_CRI_SCENARIOS=pod-with-two-containers,exec-sync-and-streaming-exec,stop-and-remove-leave-nothing \\
    ${binary[cri]} cri_with_husk --test-threads=1
SUITES
        fi
        cat <<'SUITES'
# A jailed monitor killed by its filter (at shutdown, say) can go unseen by
# the tests; the kernel logs every such kill.
echo "=== seccomp kills of VM processes during the suites"
kills=$(dmesg | grep 'type=1326' | grep -E 'exe="[^"]*/(husk-vmm|qemu-system-x86_64|vhost-device-vsock|virtiofsd)"' || true)
if [ "$(printf '%s' "$kills" | grep -c .)" -gt "$kills_before" ]; then
    printf '%s\n' "$kills" >&2
    echo "test.sh: a seccomp filter killed a VM process (above)" >&2
    exit 1
fi
echo "none"
SUITES
    } >"$script"
}
# A pod of two containers (start, exec, stop) through CRI on the builtin
# backend: the test host's stock modules have no netfilter NAT, so the pod
# network is a bridge alone.
# The console flood boots alone: a long run of serial exits freezes the
# test host's emulated CPU now and then (shared/KVM-TESTHOST.md), and a
# short boot can be retried more often than a long one.
flood=a_guest_flooding_its_console_stays_under_the_cap
write_builtin_suites "$repo/target/husk/builtin-suites-0.sh" no-pods \
    "${binary[cli]} --exact $flood"
write_builtin_suites "$repo/target/husk/builtin-suites-1.sh" no-pods \
    "${binary[boot]}" "${binary[cli]} --skip $flood"
write_builtin_suites "$repo/target/husk/builtin-suites-2.sh" no-pods "${binary[faults]}"
write_builtin_suites "$repo/target/husk/builtin-suites-3.sh" pods \
    "${binary[network]}" "${binary[builtin]}"
declare -A watchdog=([0]="--attempts 4 --silence 90" [1]="--silence 180" [2]="--silence 180"
    [3]="--silence 180")
for part in 0 1 2 3; do
    builtin_suites=$repo/target/husk/builtin-suites-$part.sh
    if [[ -e /dev/kvm && ! -e /sys/module/kvm_pvm ]] && grep -qw -e vmx -e svm /proc/cpuinfo; then
        suite "builtin-$part" env HUSK_TEST_CONFIG="$builtin_config" sh "$builtin_suites"
    else
        echo "test.sh: /dev/kvm here is not hardware KVM; running the suites in the KVM test host" >&2
        # The test host sees the host's / read-only but has its own empty
        # /tmp, /run and /var/tmp: a checkout there is shared explicitly.
        share=()
        case $repo/ in /tmp/* | /run/* | /var/tmp/*) share=(--writable "$repo") ;; esac
        # libcni writes its cache in /var/lib/cni, whatever containerd's config.
        mkdir -p /var/lib/cni
        # shellcheck disable=SC2086 # the watchdog's options are words
        suite "builtin-$part" hack/kvm-testhost.sh ${watchdog[$part]} "${share[@]}" --scratch /var/lib/cni \
            --env "HUSK_TEST_CONFIG=$builtin_config" --env "HUSK_TEST_NO_SKIP=1" \
            --env "HUSK_TEST_IMAGES=$HUSK_TEST_IMAGES" -- sh "$builtin_suites"
    fi
done

step "leftovers"
leftover=$(pgrep -a -f 'husk-(check|bench)-|/tmp/\.tmp[^ ]*/(virtiofsd|vhost-vsock|vsock)\.sock|sandbox-monitor|/tmp/husk-root-|husk-(podman|docker|containerd|cri)-|/run/husk-sockets/' || true)
if [[ -n $leftover ]]; then
    echo "processes left behind by the tests:" >&2
    echo "$leftover" >&2
    exit 1
fi
mounts=$(grep -E 'husk-root-|husk-(podman|docker|containerd|cri)-|husk-bundle-|husk-engine-scratch-' /proc/mounts || true)
if [[ -n $mounts ]]; then
    echo "mounts left behind by the tests:" >&2
    echo "$mounts" >&2
    exit 1
fi
dirs=$(ls -d /tmp/husk-root-* /tmp/husk-bundle-* /var/tmp/husk-{podman,docker,containerd,cri}-* \
    /var/tmp/husk-engine-scratch-* /run/husk-sockets/* 2>/dev/null || true)
# cni-<uuid>: the pods' namespaces of the CRI suite's containerd.
dirs+=$(ip netns list 2>/dev/null | grep -E '^(husk|cni)-' || true)
# Taps, veths and ingress qdiscs in the host's namespace (the tests' own
# namespaces are listed above).
dirs+=$(ip -o link show 2>/dev/null | grep -E 'husk-tap|: hv[0-9]+[ab][0-9]+' || true)
dirs+=$(tc qdisc show 2>/dev/null | grep -E 'ingress' || true)
# The engines' firewall rules live in their own namespaces.
for table in filter nat; do
    dirs+=$(iptables -t "$table" -S 2>/dev/null | grep -E 'DOCKER|NETAVARK|CNI-' || true)
done
if [[ -n $dirs ]]; then
    echo "state directories, namespaces, links or qdiscs left behind by the tests:" >&2
    echo "$dirs" >&2
    exit 1
fi
cat "$summary" >&2
echo "test.sh: all tests passed" >&2
