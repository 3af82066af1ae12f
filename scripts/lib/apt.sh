# Sourced by the scripts: apt_install PACKAGE... installs Debian packages as root;
# apt_download PACKAGE DIR fetches a package's .deb into DIR without installing it. Either
# runs `apt-get update` at most once per process tree.
apt_update_once() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "error: need root and apt-get to fetch Debian packages" >&2
        return 1
    fi
    if [ -z "${HAKURIVER_APT_UPDATED:-}" ]; then
        apt-get update -qq
        export HAKURIVER_APT_UPDATED=1
    fi
}

apt_install() {
    apt_update_once
    echo "==> installing $*" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

apt_download() {
    apt_update_once
    echo "==> downloading $1" >&2
    # apt's _apt user may not write to DIR; as root the download then runs unsandboxed.
    (cd "$2" && apt-get download -qq "$1" 2>/dev/null)
}
