#!/usr/bin/env bash
# Build the base environment image hakuriver/<name>:base from Debian's busybox-static, with no
# image registry: a root filesystem of busybox and its applets, loaded by `docker import`.
# Idempotent: an existing image is kept.
set -euo pipefail
source "$(dirname "$0")/lib/apt.sh"
NAME="${1:-hakuriver-base}"
IMAGE="hakuriver/${NAME}:base"

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    exit 0
fi
BUSYBOX=""
for candidate in /bin/busybox /usr/bin/busybox; do
    if [ -x "$candidate" ] && ! ldd "$candidate" >/dev/null 2>&1; then
        BUSYBOX="$candidate"
    fi
done
if [ -z "$BUSYBOX" ]; then
    apt_install busybox-static
    BUSYBOX=/bin/busybox
fi
echo "==> building $IMAGE from $BUSYBOX"
ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT"/{bin,etc,tmp,root,shared,local_temp}
chmod 1777 "$ROOT/tmp"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list); do
    [ -e "$ROOT/bin/$applet" ] || ln -s busybox "$ROOT/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$ROOT/etc/passwd"
echo "root:x:0:" >"$ROOT/etc/group"
tar -C "$ROOT" -cf - . | docker import \
    --change 'ENV PATH=/bin' \
    --change 'CMD ["/bin/sh"]' \
    --change "LABEL hakuriver.environment=${NAME}" \
    - "$IMAGE" >/dev/null
echo "==> built $IMAGE"
