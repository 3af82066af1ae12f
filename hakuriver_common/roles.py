"""Who may do what: the three user roles, in order, and how an audited action ended, each
with its proto enum beside it.

Each role includes the rights of the ones before it: a user < an operator < an admin.
docs/security.md has the table of what each may call.
"""

from __future__ import annotations

import re
import secrets
from enum import StrEnum
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from hakuriver_common.proto.hakuriver.v1 import access_pb2, audit_service_pb2


class Role(StrEnum):
    USER = "user"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def includes(self, other: Role) -> bool:
        """True when this role has every right of ``other``."""
        return self.rank >= other.rank

    @property
    def pb(self) -> access_pb2.Role.ValueType:
        return _PB[self]

    @classmethod
    def from_pb(cls, value: int) -> Role:
        """The role of a proto enum value; ValueError for UNSPECIFIED or unknown values."""
        for role, pb in _PB.items():
            if pb == value:
                return role
        raise ValueError(f"unknown role value {value}")


class AuditOutcome(StrEnum):
    """How an audited action ended."""

    ALLOWED = "allowed"
    REFUSED = "refused"

    @property
    def pb(self) -> audit_service_pb2.AuditOutcome.ValueType:
        return _OUTCOME_PB[self]

    @classmethod
    def from_pb(cls, value: int) -> AuditOutcome:
        """The outcome of a proto enum value; ValueError for UNSPECIFIED or unknown values."""
        for outcome, pb in _OUTCOME_PB.items():
            if pb == value:
                return outcome
        raise ValueError(f"unknown audit outcome value {value}")


_RANK = {Role.USER: 1, Role.OPERATOR: 2, Role.ADMIN: 3}
# The proto enums' numbers (protos/hakuriver/v1/access.proto, audit_service.proto), written
# out as in statuses.py, so hakuriver.admin --help loads no protobuf; tests/unit/
# test_statuses.py checks them against the generated code.
_PB = cast("dict[Role, access_pb2.Role.ValueType]", {Role.USER: 1, Role.OPERATOR: 2, Role.ADMIN: 3})
_OUTCOME_PB = cast(
    "dict[AuditOutcome, audit_service_pb2.AuditOutcome.ValueType]",
    {AuditOutcome.ALLOWED: 1, AuditOutcome.REFUSED: 2},
)

# Prefixes of the secrets the Host issues: which kind a leaked string is shows at a glance
# (and to secret scanners), and the Host tells them apart before looking anything up.
API_TOKEN_PREFIX = "hkrt_"
RUNNER_CREDENTIAL_PREFIX = "hkrr_"
JOIN_TOKEN_PREFIX = "hkrj_"


def new_secret(prefix: str) -> str:
    """A new secret of the kind ``prefix`` names: 256 random bits, URL-safe."""
    return prefix + secrets.token_urlsafe(32)


USER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# How the audit log names callers that are nobody's token: no user may bear these names, or
# their actions would read as (and filter with) refusals of unknown callers or new Runners.
ANONYMOUS_NAME = "anonymous"
JOINING_NAME = "joining"
RESERVED_USER_NAMES = (ANONYMOUS_NAME, JOINING_NAME)


def user_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a user's name (it is not repeated: the caller names it or its
    config key); None when it can."""
    if not USER_NAME_RE.match(name):
        return "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    if name in RESERVED_USER_NAMES:
        return (
            f"must not be {ANONYMOUS_NAME!r} or {JOINING_NAME!r} (the audit log's names for "
            "callers with no token and for Runners joining)"
        )
    return None
