"""The API token a command-line tool sends, and the files secrets are kept in.

A token comes from ``$HAKURIVER_TOKEN``, else the config's ``auth.token``, else the
credentials file, which is refused when others may read it (as ssh refuses such a key).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hakuriver_common.client_config import ClientConfig

TOKEN_ENV = "HAKURIVER_TOKEN"


class CredentialsError(Exception):
    """No usable token, or a secret file others can read."""


def check_private(path: Path) -> None:
    """Refuse a secret file that anybody but its owner may read or write."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CredentialsError(
            f"{path} is accessible by others (mode {stat.S_IMODE(mode):04o}): run chmod 600 {path}"
        )


def read_secret(path: Path) -> str:
    """The first line of a private secret file."""
    check_private(path)
    try:
        secret = path.read_text().strip().splitlines()
    except UnicodeDecodeError:
        raise CredentialsError(f"{path} is not a text file holding a secret") from None
    if not secret or not secret[0].strip():
        raise CredentialsError(f"{path} is empty")
    return secret[0].strip()


def _usable(token: str, source: str) -> str:
    """``token``, if it can be sent as one; otherwise CredentialsError naming where it came
    from (never the token). Secrets are visible ASCII: a space, a line break or another
    character (pasted from a chat or an e-mail) cannot go in a header, and the call failed
    with a traceback over Connect and 'Invalid metadata' over gRPC."""
    if token.isascii() and token.isprintable() and " " not in token:
        return token
    raise CredentialsError(
        f"the API token in {source} holds a space, a line break or a non-ASCII character, "
        "which no token has: copy it again"
    )


def write_secret(path: Path, secret: str) -> None:
    """Write a secret file created 0600 (never readable by others, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secret + "\n")
        tmp.replace(path)
    except BaseException:  # no copy of the secret left beside a file that was not written
        tmp.unlink(missing_ok=True)
        raise


def api_token(config: ClientConfig) -> str:
    """The token to send, or CredentialsError saying where one was looked for."""
    if token := os.environ.get(TOKEN_ENV, "").strip():
        return _usable(token, f"${TOKEN_ENV}")
    if token := config.auth.token.strip():
        return _usable(token, "auth.token")
    path = config.auth.credentials_file.expanduser()
    if path.is_file():
        return _usable(read_secret(path), str(path))
    raise CredentialsError(
        f"no API token: set {TOKEN_ENV}, auth.token in the config, or put one in {path} "
        "(an admin creates one: hakuriver.admin token create --user NAME)"
    )


def without_secrets(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` minus the variables that carry HakuRiver secrets (for a task's process)."""
    return {
        key: value
        for key, value in environ.items()
        if key != TOKEN_ENV and not key.startswith("HAKURIVER_AUTH__")
    }
