# Sourced by the scripts: apt_install PACKAGE... installs Debian packages as root, running
# `apt-get update` at most once per process tree.
apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "error: need root and apt-get to install: $*" >&2
        return 1
    fi
    if [ -z "${HAKURIVER_APT_UPDATED:-}" ]; then
        apt-get update -qq
        export HAKURIVER_APT_UPDATED=1
    fi
    echo "==> installing $*" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
