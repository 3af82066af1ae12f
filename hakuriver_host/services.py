"""gRPC servicers: thin adapters from the public and runner-facing APIs to the core.

They convert messages and call the core's public methods; errors are raised as ApiError and
turned into status codes by the interceptor (interceptors.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from hakuriver_common.limits import MAX_LIST_REPLY_BYTES, MAX_SUBMIT_REPLY_TASKS
from hakuriver_common.proto.hakuriver.v1 import (
    log_service_pb2 as lpb,
    log_service_pb2_grpc,
    node_pb2,
    node_service_pb2 as npb,
    node_service_pb2_grpc,
    runner_service_pb2 as rpb,
    runner_service_pb2_grpc,
    ssh_service_pb2 as spb,
    ssh_service_pb2_grpc,
    task_pb2,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from hakuriver_common.statuses import NodeStatus, TaskStatus
from hakuriver_common.timestamps import to_timestamp
from hakuriver_host.batches import Batches, BatchView
from hakuriver_host.cluster import Cluster
from hakuriver_host.convert import event_to_pb, node_to_pb, task_to_pb
from hakuriver_host.errors import ApiError, InvalidArgument
from hakuriver_host.identity import Principal, caller, outliving
from hakuriver_host.models import Task
from hakuriver_host.nodes import Forgotten, NodeView

log = logging.getLogger(__name__)
# A job array's reply is built this many tasks at a time (~1 ms of the loop each), the loop
# serving other work between two slices. Not in the bulk lane (bulk_lane): the array's
# submitter waits for it, behind a hundred nodes' dispatches taking turns there.
REPLY_SLICE = 128


def _batch_to_pb(batch: BatchView) -> tpb.BatchSummary:
    return tpb.BatchSummary(
        batch_id=batch.batch_id,
        size=batch.size,
        counts=[tpb.StatusCount(status=s.pb, count=n) for s, n in batch.counts.items()],
        array=batch.array,
        max_running=batch.max_running,
        held=batch.held,
        owner=batch.owner,
    )


class TaskService(task_service_pb2_grpc.TaskServiceServicer):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.batches = Batches(cluster)

    async def SubmitTask(
        self, request: tpb.SubmitTaskRequest, context: grpc.aio.ServicerContext
    ) -> tpb.SubmitTaskResponse:
        submitted = await self.cluster.submit(request, caller())
        shown = submitted.tasks[:MAX_SUBMIT_REPLY_TASKS]
        # One task's position is counted; many read the ranked queue once.
        ranked = self.cluster.book.queue_positions() if len(shown) > 1 else None

        def position(task: Task) -> int:
            if ranked is None:
                return self.cluster.queue_position(task)
            # Placed or killed while the reply was being built: no longer queued.
            return ranked.get(task.task_id, 0) if task.status == TaskStatus.PENDING else 0

        reply = tpb.SubmitTaskResponse(batch_id=submitted.batch_id, created=submitted.created)
        size = 0
        for start in range(0, len(shown), REPLY_SLICE):
            if start:
                await asyncio.sleep(0)
            for task in shown[start : start + REPLY_SLICE]:
                message = self._pb(task, position(task))
                size += message.ByteSize() + 8  # the field's tag and length
                if reply.tasks and size > MAX_LIST_REPLY_BYTES:
                    # Large tasks: cut short as a list page is (``created`` counts them all),
                    # or the answer would exceed the message limit with every task made.
                    return reply
                reply.tasks.append(message)
        return reply

    def _pb(self, task: Task, position: int) -> task_pb2.Task:
        """A task as answered, a queued one with why it waits."""
        pending = task.status == TaskStatus.PENDING
        waiting = self.cluster.waiting_reason(task, position) if pending else ""
        return task_to_pb(task, position, waiting)

    async def GetTask(
        self, request: tpb.GetTaskRequest, context: grpc.aio.ServicerContext
    ) -> tpb.GetTaskResponse:
        task, position, events = await self.cluster.get_task_with_events(request.task_id, caller())
        return tpb.GetTaskResponse(
            task=self._pb(task, position), events=[event_to_pb(e) for e in events]
        )

    async def ListTasks(
        self, request: tpb.ListTasksRequest, context: grpc.aio.ServicerContext
    ) -> tpb.ListTasksResponse:
        found, read_on = await self.cluster.list_tasks(request, caller())
        reply = tpb.ListTasksResponse(next_before_task_id=read_on)
        size = 0
        for task, position in found:
            message = self._pb(task, position)
            size += message.ByteSize() + 8  # the field's tag and length
            if reply.tasks and size > MAX_LIST_REPLY_BYTES:
                # Cut short to stay well under the message limit, whatever tasks hold.
                reply.next_before_task_id = reply.tasks[-1].task_id
                return reply
            reply.tasks.append(message)
        return reply

    async def CountTasks(
        self, request: tpb.CountTasksRequest, context: grpc.aio.ServicerContext
    ) -> tpb.CountTasksResponse:
        counts = await self.cluster.count_tasks(request, caller())
        return tpb.CountTasksResponse(
            counts=[tpb.StatusCount(status=s.pb, count=n) for s, n in counts.items()]
        )

    async def _act(
        self, action: Callable[[int, Principal], Awaitable[Task]], task_id: int
    ) -> task_pb2.Task:
        return task_to_pb(await action(task_id, caller()))

    async def KillTask(
        self, request: tpb.KillTaskRequest, context: grpc.aio.ServicerContext
    ) -> tpb.KillTaskResponse:
        return tpb.KillTaskResponse(task=await self._act(self.cluster.kill, request.task_id))

    async def PauseTask(
        self, request: tpb.PauseTaskRequest, context: grpc.aio.ServicerContext
    ) -> tpb.PauseTaskResponse:
        return tpb.PauseTaskResponse(task=await self._act(self.cluster.pause, request.task_id))

    async def ResumeTask(
        self, request: tpb.ResumeTaskRequest, context: grpc.aio.ServicerContext
    ) -> tpb.ResumeTaskResponse:
        return tpb.ResumeTaskResponse(task=await self._act(self.cluster.resume, request.task_id))

    async def WatchTask(
        self, request: tpb.WatchTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tpb.WatchTaskResponse]:
        async for task in self.cluster.watch(request.task_id, caller()):
            waiting = self.cluster.waiting_reason(task) if task.status == TaskStatus.PENDING else ""
            yield tpb.WatchTaskResponse(task=task_to_pb(task, 0, waiting))

    async def WatchTasks(
        self, request: tpb.WatchTasksRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tpb.WatchTasksResponse]:
        async for task in self.cluster.watch_all(request.owner, caller(), request.send_watching):
            if task is None:
                yield tpb.WatchTasksResponse(watching=True)
            else:
                yield tpb.WatchTasksResponse(task=task_to_pb(task))

    async def GetBatch(
        self, request: tpb.GetBatchRequest, context: grpc.aio.ServicerContext
    ) -> tpb.GetBatchResponse:
        batch = await self.batches.summary(request.batch_id, caller())
        return tpb.GetBatchResponse(batch=_batch_to_pb(batch))

    async def KillBatch(
        self, request: tpb.KillBatchRequest, context: grpc.aio.ServicerContext
    ) -> tpb.KillBatchResponse:
        batch, affected = await self.batches.kill(request.batch_id, caller())
        return tpb.KillBatchResponse(batch=_batch_to_pb(batch), affected=affected)

    async def PauseBatch(
        self, request: tpb.PauseBatchRequest, context: grpc.aio.ServicerContext
    ) -> tpb.PauseBatchResponse:
        batch, affected = await self.batches.pause(request.batch_id, caller())
        return tpb.PauseBatchResponse(batch=_batch_to_pb(batch), affected=affected)

    async def ResumeBatch(
        self, request: tpb.ResumeBatchRequest, context: grpc.aio.ServicerContext
    ) -> tpb.ResumeBatchResponse:
        batch, affected = await self.batches.resume(request.batch_id, caller())
        return tpb.ResumeBatchResponse(batch=_batch_to_pb(batch), affected=affected)

    async def PruneTasks(
        self, request: tpb.PruneTasksRequest, context: grpc.aio.ServicerContext
    ) -> tpb.PruneTasksResponse:
        pruned = await self.cluster.prune_tasks(request.older_than_days, request.dry_run, caller())
        return tpb.PruneTasksResponse(
            tasks=pruned.tasks,
            batches=pruned.batches,
            events=pruned.events,
            output_files=pruned.output_files,
            output_bytes=pruned.output_bytes,
        )


class LogService(log_service_pb2_grpc.LogServiceServicer):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def ReadLog(
        self, request: lpb.ReadLogRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[lpb.ReadLogResponse]:
        async for offset, data in self.cluster.read_log(
            request.task_id,
            request.stream,
            request.offset,
            request.follow,
            caller(),
            request.max_lag_bytes,
        ):
            yield lpb.ReadLogResponse(offset=offset, data=data)


def _node_health(
    cluster: Cluster, node: NodeView, health: node_pb2.Health | None
) -> npb.NodeHealth:
    entry = npb.NodeHealth(
        hostname=node.hostname,
        status=NodeStatus.of(node.online).pb,
        output_problem=node.output_problem,
        disconnected=node.disconnected,
        draining=node.draining,
        unread_gpus=cluster.unread_gpus(node.hostname),
    )
    if health is not None:
        entry.current.CopyFrom(health)
    return entry


class NodeService(node_service_pb2_grpc.NodeServiceServicer):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def ListNodes(
        self, request: npb.ListNodesRequest, context: grpc.aio.ServicerContext
    ) -> npb.ListNodesResponse:
        return npb.ListNodesResponse(
            nodes=[node_to_pb(*summary) for summary in self.cluster.node_summaries()]
        )

    async def _drain(self, hostname: str, draining: bool) -> node_pb2.Node:
        node = await self.cluster.set_draining(hostname, draining, caller())
        (summary,) = self.cluster.node_summaries(node.hostname)
        return node_to_pb(*summary)

    async def DrainNode(
        self, request: npb.DrainNodeRequest, context: grpc.aio.ServicerContext
    ) -> npb.DrainNodeResponse:
        return npb.DrainNodeResponse(node=await self._drain(request.hostname, True))

    async def UndrainNode(
        self, request: npb.UndrainNodeRequest, context: grpc.aio.ServicerContext
    ) -> npb.UndrainNodeResponse:
        return npb.UndrainNodeResponse(node=await self._drain(request.hostname, False))

    async def GetHealth(
        self, request: npb.GetHealthRequest, context: grpc.aio.ServicerContext
    ) -> npb.GetHealthResponse:
        response = npb.GetHealthResponse()
        for node in self.cluster.health(request.hostname):
            entry = _node_health(self.cluster, node, node.health)
            if request.include_history:
                for sample in node.history:
                    entry.history.add().MergeFromString(sample)
            response.nodes.append(entry)
        return response

    async def WatchHealth(
        self, request: npb.WatchHealthRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[npb.WatchHealthResponse]:
        async for change in self.cluster.watch_health(request.hostname, request.send_watching):
            if change is None:
                yield npb.WatchHealthResponse(watching=True)
            elif isinstance(change, Forgotten):
                offline = npb.NodeHealth(hostname=change.hostname, status=NodeStatus.of(False).pb)
                yield npb.WatchHealthResponse(node=offline, forgotten=True)
            else:
                yield npb.WatchHealthResponse(node=_node_health(self.cluster, *change))


class RunnerService(runner_service_pb2_grpc.RunnerServiceServicer):
    def __init__(self, cluster: Cluster) -> None:
        self.runners = cluster.runners

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
            raise InvalidArgument("register: the first message must be register")
        link, ack = await self.runners.connect(first.register, caller(), context.peer())
        yield rpb.ConnectResponse(registered=ack)

        refused: list[ApiError] = []
        left: list[bool] = []

        async def read_loop() -> None:
            try:
                async for message in requests:
                    await link.pace.take()
                    await self.runners.on_message(link, message)
                left.append(True)  # a Runner never ends its side of the stream: it went away
            except asyncio.CancelledError:
                raise
            except ApiError as exc:  # a message out of bounds: the stream ends with it
                log.warning("runner %s: %s", link.hostname, exc.message)
                refused.append(exc)
            except Exception:
                log.exception("stream from runner %s failed", link.hostname)
            finally:
                link.close()

        # Its audits (a report on a foreign task) may come after the call is over.
        reader = outliving(read_loop(), name=f"runner-{link.hostname}")
        try:
            while (message := await link.next()) is not None:
                yield message
        finally:
            reader.cancel()
            self.runners.gone(link)
        if refused:
            raise refused[0]
        if left:
            # Counted as what it is, however grpc saw the Runner go (its cancellation, or
            # the end of its requests, first).
            context.set_code(grpc.StatusCode.CANCELLED)


class SshService(ssh_service_pb2_grpc.SshServiceServicer):
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def CreateSshTicket(
        self, request: spb.CreateSshTicketRequest, context: grpc.aio.ServicerContext
    ) -> spb.CreateSshTicketResponse:
        ticket, expires = await self.cluster.create_ssh_ticket(request.task_id, caller())
        return spb.CreateSshTicketResponse(ticket=ticket, expires_at=to_timestamp(expires))
