"""Who is calling: the principal the interceptor authenticated, for the call's duration.

The interceptor sets it in a context variable (each RPC runs in its own task); servicers
read it with ``caller()`` and hand it to the core explicitly, so the core never looks at
gRPC metadata.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from contextvars import ContextVar, copy_context
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from hakuriver_common.roles import ANONYMOUS_NAME, JOINING_NAME, Role

log = logging.getLogger(__name__)


class Kind(StrEnum):
    ANONYMOUS = "anonymous"
    USER = "user"
    # A Runner holding its credential (hostname known) or the join token (not yet).
    RUNNER = "runner"
    JOINING = "joining"


@dataclass(frozen=True)
class Principal:
    kind: Kind
    name: str
    role: Role | None = None
    token_id: str = ""

    @property
    def actor(self) -> str:
        """How the audit log names it."""
        if self.kind is Kind.RUNNER:
            return f"runner:{self.name}"
        return self.name

    def has(self, role: Role) -> bool:
        return self.kind is Kind.USER and self.role is not None and self.role.includes(role)

    @property
    def sees_all_tasks(self) -> bool:
        """Operators and admins act on every user's tasks; users on their own only."""
        return self.has(Role.OPERATOR)

    def owns(self, owner: str) -> bool:
        return self.sees_all_tasks or (self.kind is Kind.USER and owner == self.name)


ANONYMOUS = Principal(Kind.ANONYMOUS, ANONYMOUS_NAME)
JOINING = Principal(Kind.JOINING, JOINING_NAME)


def role_changed(now: Principal, then: Principal) -> str:
    """Why a stream or session authorised as ``then`` ends: its user has another role."""
    old = then.role.value if then.role else "none"
    new = now.role.value if now.role else "none"
    return f"the role of {now.name} changed from {old} to {new}: call again"


_caller: ContextVar[Principal] = ContextVar("hakuriver_caller", default=ANONYMOUS)
# The call's servicer context, asked for the peer address only when something is audited.
_context: ContextVar[Any] = ContextVar("hakuriver_call_context", default=None)


def caller() -> Principal:
    """The principal of the RPC being served."""
    return _caller.get()


def peer_name(host: str, port: int | str | None = None) -> str:
    """An address as gRPC names its peers (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``; without a
    port, ``ipv4:1.2.3.4``): the audit log writes one address alike for every port."""
    name = f"ipv6:[{host}]" if ":" in host else f"ipv4:{host}"
    return name if port is None else f"{name}:{port}"


def caller_peer() -> str:
    """The address the RPC being served came from ("" outside an RPC)."""
    context = _context.get()
    return str(context.peer()) if context is not None else ""


def set_caller(principal: Principal, context: Any) -> None:
    _caller.set(principal)
    _context.set(context)


T = TypeVar("T")


class _Peer:
    """A call's peer address, read while the call was on."""

    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


def outliving(work: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
    """Run ``work`` as a task that may outlive the call being served: it sees the call's
    principal and its peer (read now, in the call), never the call's servicer context,
    which must not be touched once the call is over (grpc's Cython then crashes)."""
    context = copy_context()
    context.run(_context.set, _Peer(caller_peer()))
    return asyncio.create_task(work, name=name, context=context)


async def carried(work: Coroutine[Any, Any, T], what: str) -> T:
    """``work``, carried through if its caller goes first (a deadline, Ctrl-C): a write
    asked for is done (``Store.run``), so what follows it (the change made in memory, its
    audit row) must be too. A failure then is logged, as nobody else hears of it."""
    task = outliving(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:

        def failed(done: asyncio.Task[T]) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.error("%s whose caller left failed: %s", what, done.exception())

        task.add_done_callback(failed)
        raise
