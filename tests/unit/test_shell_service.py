"""ShellService bridges a process in an environment container to one stream. A caller that
goes while the process still prints (a closed page, `docker-shell ... | head`) leaves no
thread behind: the thread reading the process stopped waiting for room in a queue nobody
read, and held one of the few threads every `asyncio.to_thread` of the Host shares."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

from hakuriver_common.proto.hakuriver.v1 import shell_service_pb2 as spb
from hakuriver_host.audit import AuditLog
from hakuriver_host.environment_services import ShellService
from hakuriver_host.environments import EnvironmentManager


class _EndlessShell:
    """A process that prints for ever; ``ended`` once its output is no longer read."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.stopped = threading.Event()

    def output(self) -> Iterator[tuple[bool, bytes]]:
        try:
            while True:
                yield False, b"y\n"
        finally:
            self.ended.set()

    def resize(self, rows: int, cols: int) -> None:
        pass

    def close(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped.set()


class _Manager:
    def __init__(self, shell: _EndlessShell) -> None:
        self.shell = shell

    def open_shell(self, *args: Any) -> _EndlessShell:
        return self.shell


class _Audit:
    def record(self, *args: Any, **kwargs: Any) -> None:
        pass


async def _requests() -> AsyncIterator[spb.ShellRequest]:
    yield spb.ShellRequest(start=spb.ShellStart(name="base", command=["yes"]))
    await asyncio.Event().wait()  # the caller types nothing


async def test_a_caller_gone_while_the_process_prints_leaves_no_thread_behind() -> None:
    shell = _EndlessShell()
    manager, audit = cast(EnvironmentManager, _Manager(shell)), cast(AuditLog, _Audit())
    replies = ShellService(manager, audit).Shell(_requests(), cast(Any, None))
    assert isinstance(replies, AsyncIterator)
    for _ in range(3):
        assert (await anext(replies)).output.data == b"y\n"
    await asyncio.sleep(0.2)  # the queue between the thread and the stream fills up
    await cast(Any, replies).aclose()  # the caller goes
    assert await asyncio.to_thread(shell.ended.wait, 5), "the reading thread still waits"
    assert shell.stopped.is_set()
