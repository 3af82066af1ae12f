"""gRPC servicers for environments and the host-side shell: adapters to EnvironmentManager."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from hakuriver_common.environments import TarballFile
from hakuriver_common.proto.hakuriver.v1 import (
    environment_service_pb2 as epb,
    environment_service_pb2_grpc,
    shell_service_pb2 as spb,
    shell_service_pb2_grpc,
)
from hakuriver_host.audit import AuditLog
from hakuriver_host.cluster import Cluster
from hakuriver_host.environment_shell import ShellProcess
from hakuriver_host.environments import EnvironmentManager
from hakuriver_host.errors import ApiError, FailedPrecondition, InvalidArgument
from hakuriver_host.identity import caller

log = logging.getLogger(__name__)
PROGRESS_EVERY_SECONDS = 0.2


def _container_pb(fields: dict[str, str]) -> epb.EnvironmentContainer:
    return epb.EnvironmentContainer(**fields)


def _size(path: Path) -> int:
    """A file's size; blocking (the shared folder may be slow): call off the event loop."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


async def _receive(requests: AsyncIterator[epb.ImportRootfsRequest], upload: Path) -> None:
    """An uploaded root filesystem's chunks, written to ``upload`` as they come."""
    try:
        with await asyncio.to_thread(upload.open, "wb") as out:
            async for message in requests:
                await asyncio.to_thread(out.write, message.chunk)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise FailedPrecondition(
            f"shared storage: cannot write the upload to {upload.parent}: "
            f"{exc.strerror or exc}; free space there and try again"
        ) from None


class EnvironmentService(environment_service_pb2_grpc.EnvironmentServiceServicer):
    def __init__(self, manager: EnvironmentManager, cluster: Cluster) -> None:
        self.manager = manager
        self.cluster = cluster

    def _audit(self, action: str, target: str) -> None:
        self.cluster.audit.record(caller(), f"environment.{action}", target)

    async def _tarball_pb(self, tarball: TarballFile) -> epb.Tarball:
        loaded_on = self.cluster.environment_loaded_on(tarball.name, tarball.timestamp)
        size = await asyncio.to_thread(_size, tarball.path)
        return epb.Tarball(
            name=tarball.name,
            timestamp=tarball.timestamp,
            size_bytes=size,
            path=str(tarball.path),
            loaded_on=loaded_on,
        )

    async def CreateContainer(
        self, request: epb.CreateContainerRequest, context: grpc.aio.ServicerContext
    ) -> epb.CreateContainerResponse:
        if not request.image:
            raise InvalidArgument("image: must not be empty")
        self._audit("create", f"{request.name or request.image} from {request.image}")
        fields = await asyncio.to_thread(self.manager.create_container, request.image, request.name)
        return epb.CreateContainerResponse(container=_container_pb(fields))

    async def ListContainers(
        self, request: epb.ListContainersRequest, context: grpc.aio.ServicerContext
    ) -> epb.ListContainersResponse:
        found = await asyncio.to_thread(self.manager.list_containers)
        return epb.ListContainersResponse(containers=[_container_pb(f) for f in found])

    async def StartContainer(
        self, request: epb.StartContainerRequest, context: grpc.aio.ServicerContext
    ) -> epb.StartContainerResponse:
        self._audit("start", request.name)
        fields = await asyncio.to_thread(self.manager.start_container, request.name)
        return epb.StartContainerResponse(container=_container_pb(fields))

    async def StopContainer(
        self, request: epb.StopContainerRequest, context: grpc.aio.ServicerContext
    ) -> epb.StopContainerResponse:
        self._audit("stop", request.name)
        fields = await asyncio.to_thread(self.manager.stop_container, request.name)
        return epb.StopContainerResponse(container=_container_pb(fields))

    async def DeleteContainer(
        self, request: epb.DeleteContainerRequest, context: grpc.aio.ServicerContext
    ) -> epb.DeleteContainerResponse:
        self._audit("delete", request.name)
        await asyncio.to_thread(self.manager.delete_container, request.name)
        return epb.DeleteContainerResponse()

    async def _with_progress(self, work: Any, *args: Any) -> AsyncIterator[Any]:
        """Run blocking ``work(*args, progress)``; yield byte counts, then its result."""
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue[int] = asyncio.Queue()
        last = [0.0]

        def progress(written: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY_SECONDS:
                last[0] = now
                loop.call_soon_threadsafe(updates.put_nowait, written)

        job = loop.run_in_executor(None, functools.partial(work, *args, progress))
        getter: asyncio.Future[int] | None = None
        try:
            while not job.done():
                getter = asyncio.ensure_future(updates.get())
                await asyncio.wait({job, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
            yield job.result()
        finally:
            # The caller went (or failed): no waiting task left behind, and the work's
            # outcome, when it comes, is taken (else asyncio logs "never retrieved").
            if getter is not None:
                getter.cancel()
            job.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def CreateTar(
        self, request: epb.CreateTarRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[epb.CreateTarResponse]:
        self._audit("create_tar", request.name)
        async for item in self._with_progress(self.manager.create_tar, request.name):
            if isinstance(item, int):
                yield epb.CreateTarResponse(bytes_written=item)
            else:
                yield epb.CreateTarResponse(done=await self._tarball_pb(item))

    async def ListTars(
        self, request: epb.ListTarsRequest, context: grpc.aio.ServicerContext
    ) -> epb.ListTarsResponse:
        tarballs = await asyncio.to_thread(self.manager.tarballs)
        return epb.ListTarsResponse(tarballs=[await self._tarball_pb(t) for t in tarballs])

    async def DeleteTar(
        self, request: epb.DeleteTarRequest, context: grpc.aio.ServicerContext
    ) -> epb.DeleteTarResponse:
        self._audit("delete_tar", request.name)
        await asyncio.to_thread(self.manager.tarballs_of, request.name)  # NotFound first
        # As ``docker rmi``: refused while unfinished tasks use it (docs/environments.md).
        self.cluster.refuse_environment_in_use(request.name)
        removed = await asyncio.to_thread(self.manager.delete_tar, request.name)
        # A new name is read when first asked for; a removed one must go from the index now.
        await asyncio.to_thread(self.cluster.tarballs.refresh)
        return epb.DeleteTarResponse(removed=removed)

    async def ImportRootfs(
        self,
        request_iterator: AsyncIterator[epb.ImportRootfsRequest],
        context: grpc.aio.ServicerContext,
    ) -> epb.ImportRootfsResponse:
        requests = request_iterator.__aiter__()
        first = await anext(requests, None)
        if first is None or first.WhichOneof("payload") != "name":
            raise InvalidArgument("name: the first message must name the environment")
        self._audit("import_rootfs", first.name)
        upload = await asyncio.to_thread(self.manager.upload_path, first.name)
        try:
            await _receive(requests, upload)
        except BaseException:  # the caller went, or the disk is full: nothing is kept
            await asyncio.shield(asyncio.to_thread(upload.unlink, True))
            raise
        async for item in self._with_progress(self.manager.import_rootfs, first.name, upload):
            if isinstance(item, TarballFile):
                return epb.ImportRootfsResponse(tarball=await self._tarball_pb(item))
        raise ApiError("import ended without a tarball")


class _OutputPump:
    """A shell's output, read on a thread into a bounded queue the stream drains."""

    def __init__(self, shell: ShellProcess) -> None:
        self.shell = shell
        self.outputs: asyncio.Queue[spb.ShellOutput | None] = asyncio.Queue(256)
        # Set when the caller is gone: the thread stops at its next message rather than
        # wait for ever for room in a queue nobody reads.
        self._gone = threading.Event()

    def run(self, loop: asyncio.AbstractEventLoop) -> None:
        """On a thread: every output message, then None at the end."""
        try:
            for is_stderr, data in self.shell.output():
                if self._gone.is_set():
                    return
                stream = spb.OUTPUT_STREAM_STDERR if is_stderr else spb.OUTPUT_STREAM_STDOUT
                message = spb.ShellOutput(stream=stream, data=data)
                asyncio.run_coroutine_threadsafe(self.outputs.put(message), loop).result()
        finally:
            if not self._gone.is_set():
                asyncio.run_coroutine_threadsafe(self.outputs.put(None), loop).result()

    def stop(self) -> None:
        """The caller is gone: let the thread's waiting put complete, and it stop."""
        self._gone.set()
        while not self.outputs.empty():
            self.outputs.get_nowait()


class ShellService(shell_service_pb2_grpc.ShellServiceServicer):
    """A process in a Host environment container, bridged to one bidirectional stream."""

    def __init__(self, manager: EnvironmentManager, audit: AuditLog) -> None:
        self.manager = manager
        self.audit = audit

    async def Shell(
        self,
        request_iterator: AsyncIterator[spb.ShellRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[spb.ShellResponse]:
        requests = request_iterator.__aiter__()
        first = await anext(requests, None)
        if first is None or first.WhichOneof("payload") != "start":
            raise InvalidArgument("start: the first message must be start")
        start = first.start
        self.audit.record(caller(), "environment.shell", start.name)
        shell = await asyncio.to_thread(
            self.manager.open_shell,
            start.name,
            list(start.command),
            start.tty,
            dict(start.env),
            start.size.rows,
            start.size.cols,
        )
        pump = _OutputPump(shell)

        async def feed() -> None:
            async for message in requests:
                kind = message.WhichOneof("payload")
                if kind == "stdin":
                    await asyncio.to_thread(shell.write, message.stdin)
                elif kind == "resize":
                    await asyncio.to_thread(shell.resize, message.resize.rows, message.resize.cols)
                elif kind == "close_stdin":
                    shell.close_stdin()

        reader = asyncio.ensure_future(asyncio.to_thread(pump.run, asyncio.get_running_loop()))
        feeder = asyncio.create_task(feed())
        try:
            while (output := await pump.outputs.get()) is not None:
                yield spb.ShellResponse(output=output)
            await reader
            yield spb.ShellResponse(exit_code=await asyncio.to_thread(shell.exit_code))
        finally:
            pump.stop()
            feeder.cancel()
            shell.close()
            # The caller went (a closed page, a cancelled call) or the process ended.
            await asyncio.shield(asyncio.to_thread(shell.stop))
