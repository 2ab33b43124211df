#!/bin/sh
# Make (or reuse) a small local Debian bookworm image to stand in for the CUDA
# base image when tests/test_docker.py builds the real Dockerfile.
#
#   tests/docker/make_base.sh [IMAGE]      (default IMAGE: localhost/xpgrad-base:bookworm)
#
# Nothing here can pull from a registry, so the base is made with debootstrap:
#   1. if IMAGE already exists in buildah's vfs storage, reuse it (fast path);
#   2. else, if $CACHE/rootfs-bookworm.tgz exists, build IMAGE from it;
#   3. else, debootstrap a minbase rootfs with python3, python3-venv and
#      ca-certificates, pack it
#      as $CACHE/rootfs-bookworm.tgz (kept for when the image is gone), build IMAGE.
#
# CACHE is $XPGRAD_DOCKER_CACHE, or ~/.cache/xpgrad-docker.
# DEBIAN_MIRROR overrides the mirror (default http://deb.debian.org/debian).
# Needs root (debootstrap), buildah and debootstrap. Safe to run concurrently
# with itself only in the sense that the tarball is written atomically.
set -eu

IMAGE=${1:-localhost/xpgrad-base:bookworm}
CACHE=${XPGRAD_DOCKER_CACHE:-${HOME:-/root}/.cache/xpgrad-docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
TARBALL=$CACHE/rootfs-$SUITE.tgz
BUILDAH="buildah --storage-driver vfs"

log() { printf 'make_base: %s\n' "$*" >&2; }

if $BUILDAH inspect --type image "$IMAGE" >/dev/null 2>&1; then
    log "reusing image $IMAGE"
    exit 0
fi

mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/work.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM

if [ ! -s "$TARBALL" ]; then
    log "debootstrap $SUITE (minbase + python3, python3-venv, ca-certificates) from $MIRROR; about 2 minutes"
    # python3-venv brings ensurepip's bundled pip/setuptools wheels, so the
    # Dockerfile's `python3 -m venv` works with no apt step inside the build.
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$work/rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
        tail -n 30 "$work/debootstrap.log" >&2
        log "debootstrap failed (log above)"
        exit 1
    }
    # Trim what an image does not need: apt lists and caches, docs, man pages.
    rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin \
        "$work/rootfs/var/cache/apt/archives/"*.deb \
        "$work/rootfs/usr/share/doc/"* "$work/rootfs/usr/share/man/"* \
        "$work/rootfs/usr/share/info/"* "$work/rootfs/usr/share/locale/"*
    tar --numeric-owner -C "$work/rootfs" -czf "$work/rootfs.tgz" .
    mv -f "$work/rootfs.tgz" "$TARBALL"
    rm -rf "$work/rootfs"
    log "cached $TARBALL"
else
    log "using cached $TARBALL"
fi

ln "$TARBALL" "$work/rootfs.tgz" 2>/dev/null || cp "$TARBALL" "$work/rootfs.tgz"
printf 'FROM scratch\nADD rootfs.tgz /\nCMD ["/bin/bash"]\n' >"$work/Containerfile"
$BUILDAH bud --isolation chroot --quiet -f "$work/Containerfile" -t "$IMAGE" "$work" >/dev/null
log "built $IMAGE"
