"""SubmitTask's request_id, an idempotency key: a submission sent again with the same
request_id by the same user (a retry after a lost answer) is answered with the tasks the
first one created, never given new ones.

The key is stored in the transaction that inserts the tasks (``SubmitRequestRecord``), so a
Host that stopped after the commit answers a retry with them. Calls with the same key take
turns (``RequestIds``): a duplicate sent while the first is still being stored waits for
it, then finds its tasks; the turn lasts until the first one's write ends, also when its
caller went first (a deadline), which is when a retry comes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from hakuriver_common.limits import MAX_REQUEST_ID_CHARS
from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb
from hakuriver_host.errors import FailedPrecondition, InvalidArgument
from hakuriver_host.models import REQUEST_ID_HOURS, SubmitRequestRecord, Task, utcnow

log = logging.getLogger(__name__)

Key = tuple[str, str]


class Submitted(NamedTuple):
    """A submission's answer: its first tasks (up to what a reply holds), its batch id and
    how many tasks it created."""

    tasks: list[Task]
    batch_id: int
    created: int


def request_key(req: tpb.SubmitTaskRequest, owner: str) -> Key:
    """The key of a submission with a request_id: its owner's and the id."""
    if len(req.request_id) > MAX_REQUEST_ID_CHARS:
        raise InvalidArgument(
            f"request_id: at most {MAX_REQUEST_ID_CHARS} characters, got {len(req.request_id)}"
        )
    return owner, req.request_id


def request_digest(req: tpb.SubmitTaskRequest) -> str:
    """What the request asks for, less its request_id."""
    asked = tpb.SubmitTaskRequest()
    asked.CopyFrom(req)
    asked.ClearField("request_id")
    return hashlib.sha256(asked.SerializeToString(deterministic=True)).hexdigest()


def _made(stored: SubmitRequestRecord) -> str:
    return f"batch {stored.batch_id}" if stored.batch_id else f"task {stored.task_id}"


def same_request(stored: SubmitRequestRecord, digest: str) -> None:
    """A stored submission's key sent with another request is refused."""
    if stored.digest != digest:
        what = _made(stored)
        raise FailedPrecondition(
            f"request_id: {stored.request_id!r} was used within {REQUEST_ID_HOURS} h for "
            f"another submission ({what}); use a new request_id for a new submission"
        )


def still_kept(stored: SubmitRequestRecord, found: Sequence[Task]) -> None:
    """A submission whose tasks were all forgotten since (pruned) cannot be answered with
    them: refused, not answered with none (a client reading one task would find none)."""
    if not found:
        raise FailedPrecondition(
            f"request_id: {stored.request_id!r} created {_made(stored)}, forgotten since "
            "(pruned); use a new request_id to submit again"
        )


def replayed(stored: SubmitRequestRecord, actor: str) -> tuple[str, str]:
    """Say in the Host's log that a submission sent again created nothing; the target and
    detail of its audit event (``task.submit``, as the first, whose tasks it names)."""
    made_at = f"{stored.created_at:%Y-%m-%d %H:%M:%S}"
    log.info(
        "submission of %s with request_id %r sent again: answered with %s, made at %s UTC; "
        "nothing created",
        actor,
        stored.request_id,
        _made(stored),
        made_at,
    )
    target = f"batch {stored.batch_id}" if stored.batch_id else str(stored.task_id)
    detail = (
        f"replayed: request_id {stored.request_id!r} sent again, answered with the "
        f"{_made(stored)} it made at {made_at} UTC; nothing created"
    )
    return target, detail


class Turn:
    """A submission's hold on its key: released when it ends, or, once its write began
    (``hand_to``), when that write ends. ``digest``: its request's (``request_digest``)."""

    def __init__(self, busy: dict[Key, asyncio.Future[None]], key: Key, digest: str) -> None:
        self._busy = busy
        self._key = key
        self.digest = digest
        self._done = asyncio.get_running_loop().create_future()
        self.handed = False
        busy[key] = self._done

    def rows(self, batch_id: int, task_ids: list[int]) -> tuple[dict[str, Any], ...]:
        """The SubmitRequestRecord of the submission, to be stored with its tasks."""
        owner, request_id = self._key
        row = {
            "owner": owner,
            "request_id": request_id,
            "digest": self.digest,
            "batch_id": batch_id,
            "task_id": task_ids[0],
            "created": len(task_ids),
            "created_at": utcnow(),
        }
        return (row,)

    def hand_to(self, writing: asyncio.Future[Any]) -> None:
        self.handed = True
        writing.add_done_callback(lambda _: self.release())

    def release(self) -> None:
        if self._busy.get(self._key) is self._done:
            del self._busy[self._key]
        if not self._done.done():
            self._done.set_result(None)


class RequestIds:
    """Submissions under way, by key."""

    def __init__(self) -> None:
        self._busy: dict[Key, asyncio.Future[None]] = {}

    async def turn(self, key: Key, digest: str) -> Turn:
        """The key's turn, once no other submission with it is under way."""
        while (busy := self._busy.get(key)) is not None:
            await asyncio.wait([busy])  # a caller gone meanwhile leaves the other be
        return Turn(self._busy, key, digest)
