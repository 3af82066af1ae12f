"""Races of token creation against other changes of users, each interleaving forced through
the public API of an in-process Host: a user change's write is held (so changes wait their
turn) or a token's own write is, while another call comes in."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import grpc
import pytest

from hakuriver_common import limits
from hakuriver_common.proto.hakuriver.v1 import access_service_pb2 as apb
from hakuriver_common.roles import Role
from hakuriver_host.access import Access
from hakuriver_host.models import ApiTokenRecord, RunnerCredentialRecord, UserRecord
from tests.fake_runner import eventually
from tests.unit.local_cluster import LocalCluster

Record = UserRecord | ApiTokenRecord | RunnerCredentialRecord


class _HeldWrites:
    """Access's writes of the records ``which`` picks wait, on the store's thread, until let
    go: the change writing them holds its turn meanwhile."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, which: Callable[[Record], bool]) -> None:
        self.entered = threading.Event()
        self.go = threading.Event()
        merge = Access._merge

        def held(access: Access, record: Record) -> None:
            if which(record):
                self.entered.set()
                self.go.wait(30)
            merge(access, record)

        monkeypatch.setattr(Access, "_merge", held)

    async def reached(self) -> None:
        await eventually(self.entered.is_set, what="the held write")


@pytest.fixture
async def waiting_turns(local_cluster: LocalCluster) -> Callable[[], int]:
    """How many changes of users wait for their turn."""
    assert local_cluster.server is not None
    turns = local_cluster.server.cluster.access._user_changes
    return lambda: len(turns._waiters or ())


async def _refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value.code(), refused.value.details() or ""


async def test_a_token_made_by_an_admin_demoted_while_it_waited_is_refused(
    local_cluster: LocalCluster,
    monkeypatch: pytest.MonkeyPatch,
    waiting_turns: Callable[[], int],
) -> None:
    """An admin makes a token for another user while their own demotion is being written:
    in its turn they are no admin, and it is refused as their other changes of users are
    (docs/security.md). It was made: a user made a token of somebody else's."""
    root = await local_cluster.add_user("root2", Role.ADMIN)
    await local_cluster.add_user("bob")
    held = _HeldWrites(monkeypatch, lambda r: isinstance(r, UserRecord) and r.name == "root2")
    demoting = asyncio.ensure_future(
        local_cluster.access.SetUserRole(
            apb.SetUserRoleRequest(name="root2", role=Role.USER.pb), timeout=10
        )
    )
    await held.reached()
    making = asyncio.ensure_future(
        root.access.CreateToken(apb.CreateTokenRequest(user="bob"), timeout=10)
    )
    await eventually(lambda: waiting_turns() == 1, what="the token to wait its turn")
    held.go.set()
    await demoting
    assert await _refusal(making) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "root2 is no longer an admin: the change was not made",
    )
    bobs = await local_cluster.access.ListTokens(apb.ListTokensRequest(user="bob"), timeout=5)
    assert len(bobs.tokens) == 1


async def test_a_token_made_with_a_token_revoked_while_it_waited_is_refused(
    local_cluster: LocalCluster,
    monkeypatch: pytest.MonkeyPatch,
    waiting_turns: Callable[[], int],
) -> None:
    """A user makes a token with their token while that token is revoked (stolen, say):
    the new one was made after the revocation was answered, and outlived it."""
    alice = await local_cluster.add_user("alice")
    held = _HeldWrites(monkeypatch, lambda r: isinstance(r, UserRecord) and r.name == "carol")
    adding = asyncio.ensure_future(
        local_cluster.access.CreateUser(
            apb.CreateUserRequest(name="carol", role=Role.USER.pb), timeout=10
        )
    )
    await held.reached()
    making = asyncio.ensure_future(alice.access.CreateToken(apb.CreateTokenRequest(), timeout=10))
    await eventually(lambda: waiting_turns() == 1, what="the token to wait its turn")
    [token] = (await alice.access.ListTokens(apb.ListTokensRequest(), timeout=5)).tokens
    revoking = asyncio.ensure_future(
        local_cluster.access.RevokeToken(apb.RevokeTokenRequest(token_id=token.token_id))
    )

    async def refused() -> bool:
        try:
            await alice.access.WhoAmI(apb.WhoAmIRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code() == grpc.StatusCode.UNAUTHENTICATED
        return False

    await eventually(refused, what="the token refused (its revocation being written)")
    held.go.set()
    await asyncio.gather(adding, revoking)
    assert await _refusal(making) == (
        grpc.StatusCode.UNAUTHENTICATED,
        f"API token {token.token_id} was revoked",
    )
    request = apb.ListTokensRequest(user="alice", include_inactive=True)
    listed = await local_cluster.access.ListTokens(request, timeout=5)
    assert [t.token_id for t in listed.tokens] == [token.token_id]


async def test_two_tokens_made_at_once_stay_within_the_most_a_user_holds(
    local_cluster: LocalCluster,
    monkeypatch: pytest.MonkeyPatch,
    waiting_turns: Callable[[], int],
) -> None:
    """A user one token short of MAX_ACTIVE_TOKENS makes two at once: one is made, the
    other refused. Both were counted before either was written: one more than the most."""
    monkeypatch.setattr(limits, "MAX_ACTIVE_TOKENS", 2)
    bob = await local_cluster.add_user("bob")
    held = _HeldWrites(monkeypatch, lambda r: isinstance(r, ApiTokenRecord) and r.user == "bob")
    first = asyncio.ensure_future(bob.access.CreateToken(apb.CreateTokenRequest(), timeout=10))
    await held.reached()
    second = asyncio.ensure_future(bob.access.CreateToken(apb.CreateTokenRequest(), timeout=10))
    await eventually(lambda: waiting_turns() == 1, what="the second to wait its turn")
    held.go.set()
    await first
    assert await _refusal(second) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "user: bob holds 2 active tokens, the most one may: revoke one first "
        "(hakuriver.admin token list, token revoke)",
    )
    listed = await bob.access.ListTokens(apb.ListTokensRequest(), timeout=5)
    assert len(listed.tokens) == 2
