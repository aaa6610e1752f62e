#!/usr/bin/env bash
# Builds the two container images the engine tests use, without a registry,
# as docker-archive tars that `podman load`, `docker load` and
# `ctr image import` all read:
#   $cache/images/busybox.tar  localhost/husk-bb:latest      (busybox-static)
#   $cache/images/debian.tar   localhost/husk-debian:latest  (debootstrap
#                               minbase bookworm + python3)
# Each is rebuilt only when this script changes (the cache key); the Debian
# one takes a few minutes the first time. Prints the images directory.
set -euo pipefail

cache=${HUSK_CACHE:-/var/cache/husk}
images=$cache/images
mirror=${HUSK_DEBIAN_MIRROR:-http://deb.debian.org/debian}
key=$(sha256sum "$0" | cut -c1-16)

log() { echo "build-images: $*" >&2; }

# docker_archive ROOTFS_DIR TAG OUT: a one-layer docker-archive of the tree.
docker_archive() {
    local rootfs=$1 tag=$2 out=$3
    local work
    work=$(mktemp -d "$images/.build-XXXXXX")
    tar -C "$rootfs" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        -cf "$work/layer.tar" .
    local layer
    layer=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
    mkdir "$work/$layer"
    mv "$work/layer.tar" "$work/$layer/layer.tar"
    printf '{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",%s%s}' \
        '"config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["/bin/sh"]},' \
        "\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$layer\"]}" >"$work/config.json"
    local config
    config=$(sha256sum "$work/config.json" | cut -d' ' -f1)
    mv "$work/config.json" "$work/$config.json"
    printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
        "$config" "$tag" "$layer" >"$work/manifest.json"
    tar -C "$work" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        -cf "$out.tmp" manifest.json "$config.json" "$layer"
    mv "$out.tmp" "$out"
    rm -rf "$work"
}

# identity ROOTFS: the passwd and group files the tests' -u checks read.
identity() {
    local rootfs=$1
    mkdir -p "$rootfs/etc"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' \
        >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
}

build_busybox() {
    local tree
    tree=$(mktemp -d "$images/.busybox-XXXXXX")
    mkdir -p "$tree"/{bin,dev,proc,sys,tmp,root,data}
    chmod 1777 "$tree/tmp"
    install -m 0755 /bin/busybox "$tree/bin/busybox"
    for applet in $("$tree/bin/busybox" --list); do
        [[ $applet == busybox ]] || ln -s busybox "$tree/bin/$applet"
    done
    identity "$tree"
    docker_archive "$tree" localhost/husk-bb:latest "$images/busybox.tar"
    rm -rf "$tree"
}

build_debian() {
    local tree
    tree=$(mktemp -d "$images/.debian-XXXXXX")
    log "debootstrap bookworm minbase + python3 from $mirror (a few minutes)"
    debootstrap --variant=minbase --include=python3 bookworm "$tree" "$mirror" >&2
    rm -rf "$tree"/var/cache/apt/archives/*.deb "$tree"/var/lib/apt/lists/*
    docker_archive "$tree" localhost/husk-debian:latest "$images/debian.tar"
    rm -rf "$tree"
}

mkdir -p "$images"
rm -rf "$images"/.build-* "$images"/.busybox-* "$images"/.debian-*
for name in busybox debian; do
    if [[ -f $images/$name.tar && $(cat "$images/$name.key" 2>/dev/null) == "$key" ]]; then
        continue
    fi
    log "building $name"
    "build_$name"
    echo "$key" >"$images/$name.key"
done
echo "$images"
