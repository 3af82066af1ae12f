"""Bounds on every size and count that crosses the wire, in one place.

The Host checks each at the edge and refuses what exceeds it with INVALID_ARGUMENT naming
the field and the limit, so nothing a client or a Runner claims makes the Host's memory or
its replies grow without bound. docs/api.md lists them for users.
"""

from __future__ import annotations

import re

KIB = 1024
MIB = 1024 * KIB

# ----- submissions -------------------------------------------------------------------------
MAX_COMMAND_BYTES = 64 * KIB
MAX_ARGUMENTS = 4096
MAX_ARGUMENTS_BYTES = 256 * KIB
MAX_ENV_VARS = 1024
MAX_ENV_BYTES = 256 * KIB
# A VPS's variables: sshd ends a session whose environment (its own variables, PAM's and
# these) passes 1,000; the Runner hands them to the container in one variable, which Linux
# takes up to 128 KiB.
MAX_VPS_ENV_VARS = 512
MAX_VPS_ENV_BYTES = 64 * KIB
MAX_MOUNTS = 64
MAX_PATH_BYTES = 4096
MAX_TARGETS = 256
MAX_TASK_CORES = 4096
MAX_TASK_GPUS = 256
MAX_MEMORY_BYTES = 1 << 50  # 1 PiB
# The least memory limit a container task may ask for: Docker refuses one under 6 MiB (the
# task would fail on its node, every element of an array alike).
MIN_MEMORY_BYTES = 6 * MIB
MAX_SSH_KEY_BYTES = 16 * KIB
MAX_NAME_BYTES = 128  # environment, node and user names in requests
# What an API token is for (CreateTokenRequest.description): every token list carries it.
MAX_TOKEN_DESCRIPTION_BYTES = 1 * KIB
# Tokens one user may hold at once (not revoked, not expired): every token list carries them.
MAX_ACTIVE_TOKENS = 100
# Streams open at once from one address without a token (grpc.health.v1.Health/Watch).
MAX_ANONYMOUS_STREAMS = 32
# Connections to the SSH proxy port from one address (without its port) that have not sent
# their request line yet (a Runner's: nor its proof): each holds a buffer for up to 10 s.
MAX_SSH_PROXY_WAITING = 32
MAX_ARRAY_TASKS = 100_000  # tasks of one job array
MAX_ARRAY_INDEX = 10_000_000
# An array's tasks times the bytes each stores (command, arguments, environment, mounts).
MAX_ARRAY_BYTES = 256 * MIB
# Tasks a SubmitTaskResponse carries (an array's first ones; the rest are listed by batch).
MAX_SUBMIT_REPLY_TASKS = 1000
MAX_REQUEST_ID_CHARS = 128  # SubmitTaskRequest.request_id (kept for 24 h)

# ----- runners -----------------------------------------------------------------------------
# A safe host name: letters, digits, dot, dash, underscore; no path, control or bidi
# characters (it names files, containers, metrics labels and log lines).
HOSTNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # Linux allows 64


def runner_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a Runner's (the Host's rule, also checked when a Runner reads
    runner.name); None when it can."""
    if HOSTNAME_RE.fullmatch(name):
        return None
    return (
        f"{name[:80]!r} is not a valid runner name: up to 64 letters, digits, '.', '_' or '-', "
        "starting with a letter or digit"
    )


MAX_RUNNER_CORES = 4096
MAX_CPU_ID = 65535
MAX_RUNNER_MEMORY_BYTES = 1 << 50
MAX_NUMA_NODES = 64
MAX_RUNNER_GPUS = 256
MAX_ENVIRONMENTS = 1000  # advertised by one runner
MAX_KNOWN_TASK_IDS = 100_000  # containers one runner may report holding
MAX_INSTANCE_ID_CHARS = 64  # RegisterRunner.instance_id (the node's row keeps it)
MAX_HEALTH_BYTES = 64 * KIB  # one encoded health sample (the Host keeps a history of them)
MAX_LOG_CHUNK_BYTES = 4 * MIB
MAX_LOG_OFFSET = 1 << 44  # 16 TiB of output for one task stream
MAX_BATCH_MESSAGES = 1024  # reports in one TaskStateBatch; dispatches, releases in one batch
# Messages one runner may send per second (sustained; twice that as a burst): above it the
# Host reads its stream more slowly, which backs up into the Runner.
RUNNER_MESSAGES_PER_SECOND = 20_000

# ----- replies -----------------------------------------------------------------------------
MAX_ERROR_MESSAGE_CHARS = 2000
# A list reply is cut (and says where to read on) before it reaches this size.
MAX_LIST_REPLY_BYTES = 3 * MIB  # under the 4 MiB a default gRPC client accepts
# Names listed in one error message (e.g. the available environments).
MAX_NAMES_IN_MESSAGE = 20


def name_list(names: list[str]) -> str:
    """A comma list of at most MAX_NAMES_IN_MESSAGE names, saying how many more exist."""
    shown = ", ".join(names[:MAX_NAMES_IN_MESSAGE])
    more = len(names) - MAX_NAMES_IN_MESSAGE
    return f"{shown} and {more} more" if more > 0 else shown


def truncated(text: str, limit: int = MAX_ERROR_MESSAGE_CHARS) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 30] + f"... ({len(text) - limit + 30} more characters)"
