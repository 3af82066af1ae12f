"""gRPC servicers: thin adapters from the public and runner-facing APIs to the Cluster."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC

import grpc

from hakuriver_common.proto.hakuriver.v1 import (
    log_service_pb2 as lpb,
    log_service_pb2_grpc,
    node_pb2,
    node_service_pb2 as npb,
    node_service_pb2_grpc,
    runner_service_pb2 as rpb,
    runner_service_pb2_grpc,
    task_pb2,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from hakuriver_host.cluster import Cluster, NodeView
from hakuriver_host.convert import TASK_STATUS_NAME, event_to_pb, node_to_pb, task_to_pb
from hakuriver_host.errors import ApiError, InvalidArgument, NotFound, reports_api_errors
from hakuriver_host.log_store import STDERR, STDOUT
from hakuriver_host.task_machine import TaskStatus

log = logging.getLogger(__name__)
MAX_LIST_LIMIT = 1000


def _require_id(task_id: int) -> int:
    if task_id <= 0:
        raise InvalidArgument(f"task_id: must be a positive integer, got {task_id}")
    return task_id


class TaskService(task_service_pb2_grpc.TaskServiceServicer):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    @reports_api_errors
    async def SubmitTask(
        self, request: tpb.SubmitTaskRequest, context: grpc.aio.ServicerContext
    ) -> tpb.SubmitTaskResponse:
        tasks, batch_id = await self.cluster.submit(request)
        return tpb.SubmitTaskResponse(
            tasks=[task_to_pb(t, self.cluster.queue_position(t)) for t in tasks],
            batch_id=batch_id,
        )

    @reports_api_errors
    async def GetTask(
        self, request: tpb.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> tpb.GetTaskResponse:
        task, events = await self.cluster.get_task_with_events(_require_id(request.task_id))
        position = self.cluster.queue_position(task)
        return tpb.GetTaskResponse(
            task=task_to_pb(task, position), events=[event_to_pb(e) for e in events]
        )

    @reports_api_errors
    async def ListTasks(
        self, request: tpb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> tpb.ListTasksResponse:
        limit = request.limit or 100
        if not 0 < limit <= MAX_LIST_LIMIT:
            raise InvalidArgument(f"limit: must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
        statuses = []
        for status in request.statuses:
            if status not in TASK_STATUS_NAME:
                raise InvalidArgument(f"statuses: unknown status value {status}")
            statuses.append(TASK_STATUS_NAME[status])
        kind = {task_pb2.TASK_KIND_COMMAND: "command", task_pb2.TASK_KIND_VPS: "vps"}.get(
            request.kind, ""
        )
        store = self.cluster.store
        records = await store.run(
            store.list_tasks,
            statuses,
            request.node,
            request.batch_id,
            limit,
            request.before_task_id,
            kind,
            request.submitted_after.ToDatetime(tzinfo=UTC)
            if request.HasField("submitted_after")
            else None,
        )
        live = self.cluster.tasks
        positions = self.cluster.queue_positions()
        return tpb.ListTasksResponse(
            tasks=[task_to_pb(live.get(r.task_id, r), positions.get(r.task_id, 0)) for r in records]
        )

    @reports_api_errors
    async def KillTask(
        self, request: tpb.KillTaskRequest, context: grpc.aio.ServicerContext
    ) -> tpb.KillTaskResponse:
        task = await self.cluster.kill(_require_id(request.task_id))
        return tpb.KillTaskResponse(task=task_to_pb(task))

    @reports_api_errors
    async def PauseTask(
        self, request: tpb.PauseTaskRequest, context: grpc.aio.ServicerContext
    ) -> tpb.PauseTaskResponse:
        task = await self.cluster.pause(_require_id(request.task_id))
        return tpb.PauseTaskResponse(task=task_to_pb(task))

    @reports_api_errors
    async def ResumeTask(
        self, request: tpb.ResumeTaskRequest, context: grpc.aio.ServicerContext
    ) -> tpb.ResumeTaskResponse:
        task = await self.cluster.resume(_require_id(request.task_id))
        return tpb.ResumeTaskResponse(task=task_to_pb(task))

    async def WatchTask(
        self, request: tpb.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tpb.WatchTaskResponse]:
        try:
            async for task in self.cluster.watch(_require_id(request.task_id)):
                yield tpb.WatchTaskResponse(task=task_to_pb(task))
        except ApiError as exc:
            await context.abort(exc.code, exc.message)


class LogService(log_service_pb2_grpc.LogServiceServicer):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def ReadLog(
        self, request: lpb.ReadLogRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[lpb.ReadLogResponse]:
        try:
            task = await self.cluster.get_task(_require_id(request.task_id))
            if request.stream == task_pb2.LOG_STREAM_STDOUT:
                stream = STDOUT
            elif request.stream == task_pb2.LOG_STREAM_STDERR:
                stream = STDERR
            else:
                raise InvalidArgument("stream: must be STDOUT or STDERR")
            if request.offset < 0:
                raise InvalidArgument(f"offset: must not be negative, got {request.offset}")
        except ApiError as exc:
            await context.abort(exc.code, exc.message)
            return
        is_final = TaskStatus(task.status).is_final
        async for offset, data in self.cluster.logs.read(
            task.task_id, stream, request.offset, request.follow, is_final
        ):
            yield lpb.ReadLogResponse(offset=offset, data=data)


def _node_status(node: NodeView) -> node_pb2.NodeStatus.ValueType:
    return node_pb2.NODE_STATUS_ONLINE if node.online else node_pb2.NODE_STATUS_OFFLINE


class NodeService(node_service_pb2_grpc.NodeServiceServicer):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def _active_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for task in self.cluster.tasks.values():
            if task.assigned_node:
                counts[task.assigned_node] = counts.get(task.assigned_node, 0) + 1
        return counts

    @reports_api_errors
    async def ListNodes(
        self, request: npb.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> npb.ListNodesResponse:
        counts = self._active_counts()
        capacity = self.cluster.scheduler.nodes
        return npb.ListNodesResponse(
            nodes=[
                node_to_pb(node, capacity.get(name), counts.get(name, 0))
                for name, node in sorted(self.cluster.nodes.items())
            ]
        )

    def _node_pb(self, hostname: str) -> node_pb2.Node:
        return node_to_pb(
            self.cluster.nodes[hostname],
            self.cluster.scheduler.nodes.get(hostname),
            self._active_counts().get(hostname, 0),
        )

    @reports_api_errors
    async def DrainNode(
        self, request: npb.DrainNodeRequest, context: grpc.aio.ServicerContext
    ) -> npb.DrainNodeResponse:
        node = await self.cluster.set_draining(request.hostname, True)
        return npb.DrainNodeResponse(node=self._node_pb(node.hostname))

    @reports_api_errors
    async def UndrainNode(
        self, request: npb.UndrainNodeRequest, context: grpc.aio.ServicerContext
    ) -> npb.UndrainNodeResponse:
        node = await self.cluster.set_draining(request.hostname, False)
        return npb.UndrainNodeResponse(node=self._node_pb(node.hostname))

    @reports_api_errors
    async def GetHealth(
        self, request: npb.GetHealthRequest, context: grpc.aio.ServicerContext
    ) -> npb.GetHealthResponse:
        nodes = self.cluster.nodes
        if request.hostname and request.hostname not in nodes:
            raise NotFound(f"hostname: unknown node {request.hostname!r}")
        selected = [nodes[request.hostname]] if request.hostname else list(nodes.values())
        response = npb.GetHealthResponse()
        for node in sorted(selected, key=lambda n: n.hostname):
            entry = response.nodes.add(hostname=node.hostname, status=_node_status(node))
            if node.health is not None:
                entry.current.CopyFrom(node.health)
            if request.include_history:
                entry.history.extend(node.history)
        return response

    async def WatchHealth(
        self, request: npb.WatchHealthRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[npb.WatchHealthResponse]:
        if request.hostname and request.hostname not in self.cluster.nodes:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"hostname: unknown node {request.hostname!r}"
            )
        async for hostname, health in self.cluster.watch_health():
            if request.hostname and hostname != request.hostname:
                continue
            node = self.cluster.nodes[hostname]
            yield npb.WatchHealthResponse(
                node=npb.NodeHealth(hostname=hostname, status=_node_status(node), current=health)
            )


class RunnerService(runner_service_pb2_grpc.RunnerServiceServicer):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def Connect(
        self,
        request_iterator: AsyncIterator[rpb.ConnectRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpb.ConnectResponse]:
        requests = request_iterator.__aiter__()
        try:
            first = await anext(requests)
        except StopAsyncIteration:
            return
        if first.WhichOneof("payload") != "register":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "first message must be register")
            return
        try:
            session, ack = await self.cluster.register(first.register)
        except ApiError as exc:
            await context.abort(exc.code, exc.message)
            return
        yield rpb.ConnectResponse(registered=ack)

        async def read_loop() -> None:
            try:
                async for message in requests:
                    await self.cluster.handle_runner_message(session, message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("stream from runner %s failed", session.hostname)
            finally:
                session.close()

        reader = asyncio.create_task(read_loop(), name=f"runner-{session.hostname}")
        try:
            while True:
                message = await session.next()
                if message is None:
                    break
                yield message
        finally:
            reader.cancel()
            self.cluster.runner_gone(session)
