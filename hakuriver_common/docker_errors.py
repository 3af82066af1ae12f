"""Why the Docker daemon did not answer, in words.

docker-py and requests wrap the socket's error in their own, and their messages are the
wrappers' reprs: ``('Connection aborted.', FileNotFoundError(2, 'No such file or
directory'))``. What a user needs is the daemon's address and the system's reason.
"""

from __future__ import annotations

import os

DEFAULT_ADDRESS = "unix:///var/run/docker.sock"


def daemon_address() -> str:
    """The address docker-py dials: ``DOCKER_HOST``, else the default socket."""
    return os.environ.get("DOCKER_HOST") or DEFAULT_ADDRESS


def _system_reason(exc: BaseException) -> str | None:
    """The reason of the innermost operating-system error in ``exc``'s causes and
    arguments, e.g. "Connection refused"."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked += list(current.args)
        pending.extend(e for e in reversed(linked) if isinstance(e, BaseException))
    return None


def unreachable(exc: BaseException) -> str:
    """``exc`` (the daemon not answering) as "ADDRESS: REASON", or its own text when it
    holds no system error."""
    reason = _system_reason(exc)
    if reason is None:
        return str(exc) or type(exc).__name__
    return f"{daemon_address()}: {reason}"
