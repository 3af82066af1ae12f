"""The authorisation table: every RPC the Host serves, and who may call it.

One table, read by the one interceptor (interceptors.py) before any servicer runs; a
method missing from it is refused to everybody. What the table cannot say (whose task it
is, whether a mount is allowed) the core decides with the caller's principal and the same
roles; docs/security.md shows both.
"""

from __future__ import annotations

from enum import StrEnum

from hakuriver_common.roles import Role
from hakuriver_host.identity import Kind, Principal


class Right(StrEnum):
    # Anybody, without a credential: health checks for load balancers and monitors.
    PUBLIC = "public"
    # A Runner: its credential, or the join token on its first join.
    RUNNER = "runner"
    USER = "user"
    OPERATOR = "operator"
    ADMIN = "admin"


_TASK = "/hakuriver.v1.TaskService/"
_LOG = "/hakuriver.v1.LogService/"
_NODE = "/hakuriver.v1.NodeService/"
_ENV = "/hakuriver.v1.EnvironmentService/"
_SHELL = "/hakuriver.v1.ShellService/"
_ACCESS = "/hakuriver.v1.AccessService/"
_AUDIT = "/hakuriver.v1.AuditService/"
_SSH = "/hakuriver.v1.SshService/"

RIGHTS: dict[str, Right] = {
    # Tasks: users act on their own (others' answer NOT_FOUND), operators on all.
    _TASK + "SubmitTask": Right.USER,
    _TASK + "GetTask": Right.USER,
    _TASK + "ListTasks": Right.USER,
    _TASK + "CountTasks": Right.USER,
    _TASK + "WatchTasks": Right.USER,
    _TASK + "KillTask": Right.USER,
    _TASK + "PauseTask": Right.USER,
    _TASK + "ResumeTask": Right.USER,
    _TASK + "WatchTask": Right.USER,
    _TASK + "GetBatch": Right.USER,
    _TASK + "KillBatch": Right.USER,
    _TASK + "PauseBatch": Right.USER,
    _TASK + "ResumeBatch": Right.USER,
    # Forgetting ended tasks of everybody, their output with them: admins only.
    _TASK + "PruneTasks": Right.ADMIN,
    _LOG + "ReadLog": Right.USER,
    _SSH + "CreateSshTicket": Right.USER,
    # Nodes: everybody reads; operators drain.
    _NODE + "ListNodes": Right.USER,
    _NODE + "GetHealth": Right.USER,
    _NODE + "WatchHealth": Right.USER,
    _NODE + "DrainNode": Right.OPERATOR,
    _NODE + "UndrainNode": Right.OPERATOR,
    # Environments: everybody lists what they can run in; operators manage them.
    _ENV + "ListContainers": Right.USER,
    _ENV + "ListTars": Right.USER,
    _ENV + "CreateContainer": Right.OPERATOR,
    _ENV + "StartContainer": Right.OPERATOR,
    _ENV + "StopContainer": Right.OPERATOR,
    _ENV + "DeleteContainer": Right.OPERATOR,
    _ENV + "CreateTar": Right.OPERATOR,
    _ENV + "DeleteTar": Right.OPERATOR,
    _ENV + "ImportRootfs": Right.OPERATOR,
    _SHELL + "Shell": Right.OPERATOR,
    # Identities: everybody asks who they are and manages their own tokens.
    _ACCESS + "WhoAmI": Right.USER,
    _ACCESS + "CreateToken": Right.USER,
    _ACCESS + "ListTokens": Right.USER,
    _ACCESS + "RevokeToken": Right.USER,
    _ACCESS + "CreateUser": Right.ADMIN,
    _ACCESS + "ListUsers": Right.ADMIN,
    _ACCESS + "DeleteUser": Right.ADMIN,
    _ACCESS + "SetUserRole": Right.ADMIN,
    _ACCESS + "ListRunnerCredentials": Right.ADMIN,
    _ACCESS + "RevokeRunnerCredential": Right.ADMIN,
    _AUDIT + "ListAuditEvents": Right.ADMIN,
    "/hakuriver.v1.RunnerService/Connect": Right.RUNNER,
    "/grpc.health.v1.Health/Check": Right.PUBLIC,
    "/grpc.health.v1.Health/Watch": Right.PUBLIC,
    # Registered with the health service (grpcio-health-checking >= 1.70 has List in its
    # proto); the asyncio servicer may not implement it and then answers UNIMPLEMENTED.
    "/grpc.health.v1.Health/List": Right.PUBLIC,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": Right.USER,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Right.USER,
}

# The dashboard port serves the table's methods over the Connect protocol, through the same
# checks (web_app.py, connect_bridge.py); these are its paths that are not RPCs. The app's
# files hold no data (every datum comes through the API), so anybody may load them; the
# terminal WebSocket is ShellService.Shell and needs its right.
DASHBOARD_PAGES = "/ and the app's pages, /assets/*"
DASHBOARD_PATHS: dict[str, Right] = {
    DASHBOARD_PAGES: Right.PUBLIC,
    "/ws/shell": RIGHTS[_SHELL + "Shell"],
}

# Every port the Host listens on, by the config key that sets it, and what a caller must
# present there. The RPC ports defer to the tables above; the other two have a guard of
# their own. HostServer.listening names its ports by these keys, and a unit test checks that
# the Host listens on nothing else and that each port refuses a caller without its right.
PORTS: dict[str, str] = {
    "network.host_port": "the gRPC API: each RPC's right (the table above)",
    "dashboard.port": "the API over Connect: each RPC's right; its pages and /ws/shell: "
    "the dashboard's paths",
    "network.host_ssh_proxy_port": "a one-time ticket from SshService.CreateSshTicket "
    "(the VPS's owner or an operator), redeemed only while its token is valid; a Runner's "
    "connection for a tunnel's bytes: the proof of that tunnel's one-time secret",
    "network.metrics_port": "auth.metrics_token as a bearer token when it is set; anybody "
    "otherwise (the Host warns when /metrics is then open off loopback)",
}

_ROLE_OF = {Right.USER: Role.USER, Right.OPERATOR: Role.OPERATOR, Right.ADMIN: Role.ADMIN}


def refusal(method: str, who: Principal) -> str | None:
    """Why ``who`` may not call ``method`` (None: they may)."""
    right = RIGHTS.get(method)
    if right is None:
        return f"{method} is not in the authorisation table"
    if right is Right.PUBLIC:
        return None
    if right is Right.RUNNER:
        if who.kind in (Kind.RUNNER, Kind.JOINING):
            return None
        return f"{method} is for Runners: present a runner credential or the join token"
    role = _ROLE_OF[right]
    if who.has(role):
        return None
    if who.kind is not Kind.USER:
        return (
            f"{method} needs an API token; a runner credential or the join token opens only "
            "the runner stream"
        )
    return f"{method} needs the {role} role; {who.name} is {who.role}"
