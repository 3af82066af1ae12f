"""Config loading, the Host channel and error reporting shared by the CLI tools.

Every failure ends as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import grpc
import typer

from hakuriver_common.config import Config
from hakuriver_common.ids import parse_task_id
from hakuriver_common.service import config_or_exit

T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
TaskIdArgument = Annotated[str, typer.Argument(help="Task id (decimal).", show_default=False)]

RPC_TIMEOUT_SECONDS = 30.0


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def config_or_fail(path: Path | None) -> Config:
    return config_or_exit(path)


def task_id_or_fail(text: str) -> int:
    try:
        return parse_task_id(text)
    except ValueError as exc:
        fail(str(exc), code=2)


def describe_rpc_error(exc: grpc.RpcError, target: str) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE and (
        "connect" in (details or "").lower() or not details
    ):
        return f"cannot reach the host at {target} (is hakuriver.host running?)"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"the host at {target} did not answer in time"
    return f"{details} ({code.name if code else 'UNKNOWN'})"


@contextmanager
def host_channel(config: Config) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(config.host_target) as channel:
        try:
            yield channel
        except grpc.RpcError as exc:
            fail(describe_rpc_error(exc, config.host_target))


def unary(fn: Callable[..., T], request: object, timeout: float = RPC_TIMEOUT_SECONDS) -> T:
    """Call a unary RPC with a deadline; errors propagate to ``host_channel``."""
    return fn(request, timeout=timeout)
