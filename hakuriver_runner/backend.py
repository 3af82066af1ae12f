"""What the supervisor needs from a way of running tasks: Docker containers or host processes.

All methods block; the supervisor calls them on the runner's thread pool, off the event loop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_common.task_variables import (
    CPUS_VAR,
    CUDA_DEVICES_VAR,
    CUDA_ORDER_VAR,
    GPU_IDS_VAR,
    TASK_ID_VAR,
)

log = logging.getLogger(__name__)

Emit = Callable[[int, bytes], None]


class StartError(Exception):
    """The task could not be started; the message says why."""


class Gone(Exception):
    """Nothing of the task is left where the backend keeps it (its container was removed
    behind the Runner's back); the message says what was seen."""


@dataclass(frozen=True)
class ExitInfo:
    exit_code: int | None
    oom_killed: bool
    started_at: datetime | None
    finished_at: datetime | None
    error: str


class LogFollow:
    """Cancellation handle of one task's output-following thread."""

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._closer: Callable[[], None] | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def on_cancel(self, closer: Callable[[], None]) -> None:
        self._closer = closer

    def cancel(self) -> None:
        self._cancelled.set()
        if self._closer is not None:
            try:
                self._closer()
            except Exception:
                log.debug("closing an output stream failed", exc_info=True)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if cancelled meanwhile."""
        return self._cancelled.wait(seconds)


def emit_past(
    blocks: Iterable[tuple[int, bytes]],
    skips: tuple[int, int],
    emits: tuple[Emit, Emit],
    follow: LogFollow,
) -> tuple[int, int]:
    """Emit (offset, data) of every byte of each output past its skip; ``blocks`` are
    (output index, data) in the order written. Returns each output's total size."""
    offsets = [0, 0]
    for index, data in blocks:
        if follow.cancelled:
            break
        offset, skip = offsets[index], skips[index]
        end = offset + len(data)
        if end > skip:
            start = max(skip - offset, 0)
            emits[index](offset + start, data[start:])
        offsets[index] = end
    return offsets[0], offsets[1]


def id_list(ids: Iterable[int]) -> str:
    """CPU or GPU ids the way cpusets, tools and variables take them: "0,2,3"."""
    return ",".join(str(i) for i in ids)


def task_variables(dispatch: rpb.DispatchCommand, cuda_devices: Iterable[int]) -> dict[str, str]:
    """Variables every task sees, set over its own environment.

    ``cuda_devices``: its GPUs as CUDA numbers them where it runs (in a container given only
    them, from 0; where every GPU of the node is seen, their node ids). CUDA numbers the GPUs
    it sees fastest first unless told to follow the PCI bus, as NVML's (the node's) ids do.
    A task without GPUs gets the variable empty, which CUDA documents as "no GPU": unset, it
    means every GPU, and a host process (or a privileged container) can open them all.
    """
    env = {TASK_ID_VAR: str(dispatch.task_id), CUDA_DEVICES_VAR: id_list(cuda_devices)}
    if dispatch.gpu_ids:
        env[GPU_IDS_VAR] = id_list(dispatch.gpu_ids)
        env[CUDA_ORDER_VAR] = "PCI_BUS_ID"
    if dispatch.cpus:
        env[CPUS_VAR] = id_list(dispatch.cpus)
    return env


class TaskBackend(Protocol):
    def start(self, dispatch: rpb.DispatchCommand) -> Any: ...

    def tasks(self) -> dict[int, Any]:
        """This runner's tasks of this backend that still exist, by task id."""
        ...

    def task_states(self) -> dict[int, str]:
        """Each of ``tasks()`` and its state as ``state`` names it (or Docker's, such as
        "created"), cheaply (one listing); OSError-like errors propagate."""
        ...

    def state(self, handle: Any) -> tuple[str, datetime | None]:
        """("running" | "paused" | "exited", started_at)."""
        ...

    def follow(
        self, handle: Any, skips: tuple[int, int], emits: tuple[Emit, Emit], follow: LogFollow
    ) -> tuple[int, int]:
        """Emit stdout and stderr past their skips (in that order, as in ``emits``) until
        the task ends or ``follow`` is cancelled, from one thread."""
        ...

    def wait(self, handle: Any) -> ExitInfo: ...

    def stop(self, handle: Any, grace: float) -> None:
        """Stop the task; Gone if nothing of it is left."""
        ...

    def pause(self, handle: Any) -> None: ...

    def resume(self, handle: Any) -> None: ...

    def remove(self, task_id: int) -> None: ...
