# Sourced by the scripts: make sure $PY is a Python with HakuRiver and its dev tools installed.
# Uses the active virtualenv if there is one, else creates .venv in the checkout (Debian's own
# python3 refuses system-wide pip installs).
if [ -n "${VIRTUAL_ENV:-}" ]; then
    PY="$VIRTUAL_ENV/bin/python"
else
    if [ ! -x .venv/bin/python ]; then
        if ! python3 -m venv .venv 2>/dev/null; then
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                echo "==> installing python3-venv"
                apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
                rm -rf .venv && python3 -m venv .venv
            else
                echo "error: cannot create a virtualenv (install python3-venv)" >&2
                exit 1
            fi
        fi
    fi
    PY="$PWD/.venv/bin/python"
fi
if ! "$PY" -c "import hakuriver_host, pytest, grpc_tools, mypy" 2>/dev/null \
    || [ pyproject.toml -nt "$("$PY" -c 'import sys; print(sys.prefix)')/.hakuriver-installed" ]; then
    echo "==> installing Python packages"
    "$PY" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
    "$PY" -m pip install -q --disable-pip-version-check -e '.[dev]'
    touch "$("$PY" -c 'import sys; print(sys.prefix)')/.hakuriver-installed"
fi
export PATH="$(dirname "$PY"):$PATH"
