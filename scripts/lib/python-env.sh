# Sourced by the scripts: make sure $PY is a Python with HakuRiver and its dev tools installed.
# $HAKURIVER_PYTHON names one that already has everything (nothing is installed then);
# otherwise the active virtualenv, else .venv in the checkout, created on first use
# (Debian's own python3 refuses system-wide pip installs).
if [ -n "${HAKURIVER_PYTHON:-}" ]; then
    PY="$HAKURIVER_PYTHON"
else
    if [ -n "${VIRTUAL_ENV:-}" ]; then
        PY="$VIRTUAL_ENV/bin/python"
    else
        if [ ! -x .venv/bin/python ]; then
            if ! python3 -m venv .venv 2>/dev/null; then
                if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                    echo "==> installing python3-venv"
                    apt-get update -qq
                    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
                    rm -rf .venv && python3 -m venv .venv
                else
                    echo "error: cannot create a virtualenv (install python3-venv)" >&2
                    exit 1
                fi
            fi
        fi
        PY="$PWD/.venv/bin/python"
    fi
    MARKER="$("$PY" -c 'import sys; print(sys.prefix)')/.hakuriver-installed"
    if [ ! -f "$MARKER" ] || [ pyproject.toml -nt "$MARKER" ] || [ constraints.txt -nt "$MARKER" ]; then
        echo "==> installing Python packages (log: .pip-install.log)"
        if ! { "$PY" -m pip install --disable-pip-version-check -q --upgrade pip \
            && "$PY" -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev]'; } \
            >.pip-install.log 2>&1; then
            tail -40 .pip-install.log >&2
            echo "error: installing Python packages failed (see .pip-install.log)" >&2
            exit 1
        fi
        touch "$MARKER"
    fi
fi
export PATH="$(dirname "$PY"):$PATH"
