#!/usr/bin/env bash
# Removes what an interrupted earlier test run left behind: the engine
# fixtures /var/tmp/husk-{podman,docker,containerd,cri}-<pid>-<n> whose test
# process <pid> is gone (their mounts, their processes, their network
# namespace of the same name) and scratch directories no process names.
# test.sh runs it first, so its final leftover check judges only its own run.
# Prints what it removed.
set -euo pipefail

alive() { [[ -d /proc/$1 ]]; }

unmount_under() {
    local dir=$1
    # Deepest first; the kernel escapes spaces as \040.
    awk -v dir="$dir" '$2 == dir || index($2, dir "/") == 1 { print $2 }' /proc/mounts |
        sort -r | while read -r mountpoint; do
            umount -l "$(printf '%b' "$mountpoint")" 2>/dev/null || true
        done
}

kill_naming() {
    local pids
    pids=$(pgrep -f -- "$1" || true)
    [[ -n $pids ]] && kill -9 $pids 2>/dev/null || true
}

shopt -s nullglob
for dir in /var/tmp/husk-{podman,docker,containerd,cri}-*; do
    name=${dir##*/}
    pid=${name%-*}
    pid=${pid##*-}
    [[ $pid =~ ^[0-9]+$ ]] || continue
    alive "$pid" && continue
    echo "remove-stale-fixtures: $dir (test process $pid is gone)"
    kill_naming "$dir"
    unmount_under "$dir"
    ip netns del "$name" 2>/dev/null || true
    rm -rf --one-file-system "$dir"
done
for dir in /var/tmp/husk-engine-scratch-*; do
    pgrep -f -- "$dir" >/dev/null && continue
    echo "remove-stale-fixtures: $dir"
    unmount_under "$dir"
    rm -rf --one-file-system "$dir"
done
# Namespaces of fixtures whose directory is already gone.
for netns in $(ip netns list 2>/dev/null | awk '{ print $1 }' | grep -E '^husk-(podman|docker|containerd|cri)-[0-9]+-[0-9]+$' || true); do
    pid=${netns%-*}
    pid=${pid##*-}
    alive "$pid" && continue
    echo "remove-stale-fixtures: network namespace $netns"
    ip netns del "$netns" 2>/dev/null || true
done
