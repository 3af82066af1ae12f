"""gRPC servicers for identities and the audit log: adapters to Access and AuditLog.

Who may call each RPC is in authorization.RIGHTS; what depends on the object (a user's own
tokens, an admin's everybody's) is decided here with the caller's role.
"""

from __future__ import annotations

from datetime import UTC, datetime

import grpc

from hakuriver_common.proto.hakuriver.v1 import (
    access_pb2,
    access_service_pb2 as apb,
    access_service_pb2_grpc,
    audit_service_pb2 as aupb,
    audit_service_pb2_grpc,
)
from hakuriver_common.roles import AuditOutcome, Role
from hakuriver_common.timestamps import from_timestamp, to_timestamp
from hakuriver_host.audit import ACTIONS, MAX_LIST, AuditLog, AuditQuery
from hakuriver_host.cluster import Cluster
from hakuriver_host.errors import Hidden, InvalidArgument, PermissionDenied
from hakuriver_host.identity import Principal, caller, carried
from hakuriver_host.models import ApiTokenRecord, AuditRecord, RunnerCredentialRecord, UserRecord


def user_to_pb(user: UserRecord) -> access_pb2.User:
    return access_pb2.User(
        name=user.name, role=Role(user.role).pb, created_at=to_timestamp(user.created_at)
    )


def token_to_pb(token: ApiTokenRecord) -> access_pb2.ApiToken:
    return access_pb2.ApiToken(
        token_id=token.token_id,
        user=token.user,
        description=token.description,
        created_at=to_timestamp(token.created_at),
        expires_at=to_timestamp(token.expires_at),
        revoked_at=to_timestamp(token.revoked_at),
    )


def credential_to_pb(credential: RunnerCredentialRecord) -> access_pb2.RunnerCredential:
    return access_pb2.RunnerCredential(
        hostname=credential.hostname,
        issued_at=to_timestamp(credential.issued_at),
        revoked_at=to_timestamp(credential.revoked_at),
    )


def _role(value: int) -> Role:
    try:
        return Role.from_pb(value)
    except ValueError:
        raise InvalidArgument("role: must be user, operator or admin") from None


class AccessService(access_service_pb2_grpc.AccessServiceServicer):
    def __init__(self, cluster: Cluster) -> None:
        self.access = cluster.access
        self.audit = cluster.audit
        self.links = cluster.nodes

    def _whose(self, who: Principal, user: str) -> str:
        """The user whose tokens ``who`` asks about; a user asking about another's gets the
        same answer as for a user that does not exist. An operator, who sees every user's
        tasks and so their names, is told what they lack rather than that the user does not
        exist."""
        name = user or who.name
        if name == who.name or who.has(Role.ADMIN):
            return name
        if who.has(Role.OPERATOR) and name in self.access.users:
            raise PermissionDenied(
                f"user: another user's tokens need the admin role; {who.name} is {who.role}"
            )
        raise Hidden(f"user: user {name!r} not found")

    def _lifetime(self, who: Principal, expires: datetime | None) -> datetime | None:
        """When a token ``who`` makes expires: no later than the token they make it with
        (that token's expiry when they name none), else an expiring token would make a
        lasting one. Admins, who make users and their tokens anyway, are not held to it."""
        if who.has(Role.ADMIN) or not who.token_id:
            return expires
        own = self.access.token(who.token_id).expires_at
        if own is None or (expires is not None and expires <= own):
            return expires
        if expires is None:
            return own
        raise PermissionDenied(
            f"expires_at: a token made with token {who.token_id} cannot outlive it: "
            f"it expires at {own.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
        )

    async def WhoAmI(
        self, request: apb.WhoAmIRequest, context: grpc.aio.ServicerContext
    ) -> apb.WhoAmIResponse:
        who = caller()
        role = who.role.pb if who.role is not None else access_pb2.ROLE_UNSPECIFIED
        return apb.WhoAmIResponse(user=who.name, role=role, token_id=who.token_id)

    async def CreateUser(
        self, request: apb.CreateUserRequest, context: grpc.aio.ServicerContext
    ) -> apb.CreateUserResponse:
        role = _role(request.role)
        user = await carried(self._create_user(request.name, role, request.reclaim), "a new user")
        return apb.CreateUserResponse(user=user_to_pb(user))

    async def _create_user(self, name: str, role: Role, reclaim: bool) -> UserRecord:
        user = await self.access.create_user(name, role, reclaim, by=caller())
        detail = f"role {user.role}" + (", reclaimed" if reclaim else "")
        self.audit.record(caller(), "user.create", user.name, detail=detail)
        return user

    async def ListUsers(
        self, request: apb.ListUsersRequest, context: grpc.aio.ServicerContext
    ) -> apb.ListUsersResponse:
        users = sorted(self.access.users.values(), key=lambda u: u.name)
        return apb.ListUsersResponse(users=[user_to_pb(u) for u in users])

    async def DeleteUser(
        self, request: apb.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> apb.DeleteUserResponse:
        revoked = await carried(self._delete_user(request.name), "a user's removal")
        return apb.DeleteUserResponse(revoked_tokens=revoked)

    async def _delete_user(self, name: str) -> int:
        revoked = await self.access.delete_user(name, by=caller())
        self.audit.record(caller(), "user.delete", name, detail=f"{revoked} tokens revoked")
        return revoked

    async def SetUserRole(
        self, request: apb.SetUserRoleRequest, context: grpc.aio.ServicerContext
    ) -> apb.SetUserRoleResponse:
        role = _role(request.role)
        before, user = await carried(self._set_role(request.name, role), "a role change")
        return apb.SetUserRoleResponse(user=user_to_pb(user), previous_role=before.pb)

    async def _set_role(self, name: str, role: Role) -> tuple[Role, UserRecord]:
        before, user = await self.access.set_role(name, role, by=caller())
        if before != user.role:  # the role they had already: nothing changed to audit
            self.audit.record(caller(), "user.role", user.name, detail=f"{before} -> {user.role}")
        return before, user

    async def CreateToken(
        self, request: apb.CreateTokenRequest, context: grpc.aio.ServicerContext
    ) -> apb.CreateTokenResponse:
        who = caller()
        user = self._whose(who, request.user)
        expires = self._lifetime(who, from_timestamp(request, "expires_at", InvalidArgument))
        issued = await self.access.create_token(user, request.description, expires, by=who)
        self.audit.record(who, "token.create", issued.record.token_id, detail=f"for {user}")
        return apb.CreateTokenResponse(token=token_to_pb(issued.record), secret=issued.secret)

    async def ListTokens(
        self, request: apb.ListTokensRequest, context: grpc.aio.ServicerContext
    ) -> apb.ListTokensResponse:
        who = caller()
        everybody = request.user == "*"
        if everybody and not who.has(Role.ADMIN):
            raise PermissionDenied(
                f"user: everybody's tokens ('*') need the admin role; {who.name} is {who.role}"
            )
        user = None if everybody else self._whose(who, request.user)
        tokens = self.access.tokens(user, request.include_inactive)
        return apb.ListTokensResponse(tokens=[token_to_pb(t) for t in tokens])

    async def RevokeToken(
        self, request: apb.RevokeTokenRequest, context: grpc.aio.ServicerContext
    ) -> apb.RevokeTokenResponse:
        who = caller()
        token = self.access.token(request.token_id)
        if token.user != who.name and not who.has(Role.ADMIN):
            raise Hidden(f"token_id: token {request.token_id!r} not found")
        revoked = await self.access.revoke_token(token)
        if revoked:  # one revoked already: no change to audit
            self.audit.record(who, "token.revoke", token.token_id, detail=f"of {token.user}")
        return apb.RevokeTokenResponse(token=token_to_pb(token), already_revoked=not revoked)

    async def ListRunnerCredentials(
        self, request: apb.ListRunnerCredentialsRequest, context: grpc.aio.ServicerContext
    ) -> apb.ListRunnerCredentialsResponse:
        return apb.ListRunnerCredentialsResponse(
            credentials=[credential_to_pb(c) for c in self.access.runner_credentials()]
        )

    async def RevokeRunnerCredential(
        self, request: apb.RevokeRunnerCredentialRequest, context: grpc.aio.ServicerContext
    ) -> apb.RevokeRunnerCredentialResponse:
        credential, revoked = await self.access.revoke_runner(request.hostname)
        link = self.links.link_of(request.hostname)
        if link is not None:
            link.close()
        if revoked:  # one revoked already: no change to audit
            self.audit.record(caller(), "runner.revoke", request.hostname)
        return apb.RevokeRunnerCredentialResponse(
            credential=credential_to_pb(credential), already_revoked=not revoked
        )


def audit_to_pb(event: AuditRecord) -> aupb.AuditEvent:
    role = Role(event.role).pb if event.role in Role.__members__.values() else 0
    return aupb.AuditEvent(
        id=event.id or 0,
        at=to_timestamp(event.at),
        actor=event.actor,
        role=role,  # type: ignore[arg-type]
        action=event.action,
        target=event.target,
        outcome=AuditOutcome(event.outcome).pb,
        detail=event.detail,
        peer=event.peer,
    )


class AuditService(audit_service_pb2_grpc.AuditServiceServicer):
    def __init__(self, audit: AuditLog) -> None:
        self.audit = audit

    async def ListAuditEvents(
        self, request: aupb.ListAuditEventsRequest, context: grpc.aio.ServicerContext
    ) -> aupb.ListAuditEventsResponse:
        limit = request.limit or 100
        if not 0 < limit <= MAX_LIST:
            raise InvalidArgument(f"limit: must be between 1 and {MAX_LIST}, got {limit}")
        if request.before_id < 0:
            raise InvalidArgument(f"before_id: must be an event id (> 0), got {request.before_id}")
        outcome: AuditOutcome | None = None  # unspecified: every outcome
        if request.outcome:
            try:
                outcome = AuditOutcome.from_pb(request.outcome)
            except ValueError:  # an unknown one answered every outcome, as if none was asked
                raise InvalidArgument(
                    f"outcome: {request.outcome} is no audit outcome (1: allowed, 2: refused)"
                ) from None
        if request.action and request.action not in ACTIONS:
            raise InvalidArgument(
                f"action: {request.action!r} is no audited action (one of "
                f"{', '.join(sorted(ACTIONS))})"
            )
        query = AuditQuery(limit, request.before_id, request.actor, request.action, outcome)
        events = await self.audit.query(query)
        return aupb.ListAuditEventsResponse(events=[audit_to_pb(e) for e in events])
