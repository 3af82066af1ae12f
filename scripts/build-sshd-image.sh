#!/usr/bin/env bash
# Build hakuriver/<name>:base, a minimal Debian with openssh-server for VPS tasks, without
# any image registry: debootstrap --variant=minbase into a folder, then `docker import`.
# The root filesystem is cached (HAKURIVER_CACHE_DIR, default /var/cache/hakuriver), so
# later runs take seconds. The Debian mirror is read from this machine's apt sources.
# Idempotent: an existing image is kept.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"
NAME="${1:-hakuriver-sshd}"
IMAGE="hakuriver/${NAME}:base"
CACHE="${HAKURIVER_CACHE_DIR:-/var/cache/hakuriver}"
ROOTFS_TAR="$CACHE/debian-minbase-sshd.tar"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    exit 0
fi

apt_mirror() {
    local uri=""
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources)
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)
    fi
    echo "$uri"
}

mkdir -p "$CACHE"
if [ ! -s "$ROOTFS_TAR" ]; then
    command -v debootstrap >/dev/null || apt_install debootstrap
    MIRROR="$(apt_mirror)"
    if [ -z "$MIRROR" ]; then
        echo "error: no Debian mirror found in /etc/apt/sources.list(.d)" >&2
        exit 1
    fi
    SUITE="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
    ROOT="$(mktemp -d)"
    trap 'rm -rf "$ROOT"' EXIT
    echo "==> debootstrap $SUITE (minbase + openssh-server); takes a few minutes once"
    debootstrap --variant=minbase --include=openssh-server "$SUITE" "$ROOT" "$MIRROR" \
        >"$CACHE.debootstrap.log" 2>&1 || {
        tail -20 "$CACHE.debootstrap.log" >&2
        exit 1
    }
    rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
    tar -C "$ROOT" -cf "$ROOTFS_TAR.partial" . && mv "$ROOTFS_TAR.partial" "$ROOTFS_TAR"
fi
echo "==> importing $IMAGE from $ROOTFS_TAR"
docker import \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL hakuriver.environment=${NAME}" \
    "$ROOTFS_TAR" "$IMAGE" >/dev/null
echo "==> built $IMAGE"
