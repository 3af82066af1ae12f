"""A real Host server inside the test's event loop, with FakeRunners: the unit tier's cluster.

Modelled on dask's ``gen_cluster``: the real scheduler (here the Host, ``HostServer``) runs
in-process on loopback ports with its database and shared folder in a temporary directory;
the workers are FakeRunners speaking the real runner protocol. Tests reach it only through
the public gRPC API and the runner protocol, so Host internals may change freely.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import tempfile
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from hakuriver_common.channels import open_aio_channel
from hakuriver_common.config import Config
from hakuriver_common.credentials import read_secret
from hakuriver_common.proto.hakuriver.v1 import (
    access_service_pb2 as apb,
    access_service_pb2_grpc,
    audit_service_pb2_grpc,
    environment_service_pb2_grpc,
    log_service_pb2 as lpb,
    log_service_pb2_grpc,
    node_pb2,
    node_service_pb2 as npb,
    node_service_pb2_grpc,
    ssh_service_pb2_grpc,
    task_pb2,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from hakuriver_common.roles import Role
from hakuriver_common.statuses import FINAL_STATUSES, NodeStatus, TaskStatus
from hakuriver_host.server import HostServer
from hakuriver_host.store import Store
from tests.fake_runner import FakeRunner, eventually
from tests.tls import tls_section

DEFAULT_ENV = "hakuriver-base"
# Fast enough for unit speed, slow enough that a busy test machine does not miss heartbeats:
# a runner is silent (offline, its tasks lost) after 0.2 s x 5 = 1 s.
TIMING = {
    "heartbeat_interval": 0.2,
    "heartbeat_timeout_factor": 5,
    "cleanup_check_interval": 0.1,
    "kill_grace_seconds": 0.2,
}
# The [database] section of a Host whose writes wait 0.2 s, not SQLite's 5, for a lock a
# test holds (a sqlite3 shell's transaction): for tests that wait for that refusal.
BRIEF_LOCK_WAIT = {"busy_timeout_seconds": 0.2}


def local_config(root: Path, **sections: dict[str, Any]) -> Config:
    """A Host config on 127.0.0.1 with OS-chosen ports and all its state under ``root``.

    ``sections`` update the defaults per TOML section, e.g. ``timing={"kill_grace_seconds": 1}``.
    Every key that could reach outside ``root`` is given, so no HAKURIVER_* variable does.
    """
    defaults: dict[str, dict[str, Any]] = {
        "network": {
            "host_bind_ip": "127.0.0.1",
            "host_reachable_address": "127.0.0.1",
            "host_port": 0,
            "metrics_bind_ip": "127.0.0.1",
            "metrics_port": 0,
            "host_ssh_proxy_port": 0,
        },
        "paths": {"shared_dir": root / "shared", "local_temp_dir": root / "local_temp"},
        "runner": {"state_dir": root / "runner"},
        "database": {"db_file": root / "host.db", "url": ""},
        "timing": dict(TIMING),
        "docker": {"default_container_name": DEFAULT_ENV},
        "tls": tls_section(),
        "dashboard": {"port": 0},
        "auth": {
            "token": "",
            "credentials_file": root / "credentials",
            "join_token": "hkrj_" + secrets.token_urlsafe(16),
        },
    }
    for name, values in sections.items():
        defaults.setdefault(name, {}).update(values)
    return Config(webhooks=[], **defaults)


@functools.cache
def _migrated_database() -> bytes:
    """A new SQLite database brought to the newest revision, once per test process."""
    with tempfile.TemporaryDirectory(prefix="hakuriver-test-db-") as folder:
        path = Path(folder) / "host.db"
        store = Store(f"sqlite:///{path}")
        try:
            store.migrate()
        finally:
            store.close()  # its last connection gone, the write-ahead log is in the file
        return path.read_bytes()


def place_migrated_database(config: Config) -> None:
    """Put a copy of a migrated new database where ``config``'s Host will find it (0600, as
    the Host makes it), unless one is there or the config names a database server: a Host
    that creates and migrates its database spends ~50 ms of CPU on it, at every test."""
    path = config.database.db_file
    if config.database.url or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
        file.write(_migrated_database())


def status_of(task: task_pb2.Task) -> TaskStatus:
    return TaskStatus.from_pb(task.status)


@dataclass
class Client:
    """Stubs of the public services on a channel that sends one user's token."""

    name: str
    token: str
    channel: grpc.aio.Channel

    def __post_init__(self) -> None:
        self.tasks = task_service_pb2_grpc.TaskServiceStub(self.channel)
        self.nodes = node_service_pb2_grpc.NodeServiceStub(self.channel)
        self.logs = log_service_pb2_grpc.LogServiceStub(self.channel)
        self.access = access_service_pb2_grpc.AccessServiceStub(self.channel)
        self.audit = audit_service_pb2_grpc.AuditServiceStub(self.channel)
        self.ssh = ssh_service_pb2_grpc.SshServiceStub(self.channel)
        self.environments = environment_service_pb2_grpc.EnvironmentServiceStub(self.channel)


class LocalCluster:
    """One in-process Host and the FakeRunners a test starts against it.

    ``tasks``, ``nodes``, ``logs``, ``access``, ``audit``, ``ssh``, ``environments``:
    grpc.aio stubs of the public services, calling as the bootstrap admin (replaced by
    ``restart_host``, so always reach them through this object).
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.server: HostServer | None = None
        self.runners: list[FakeRunner] = []
        self._channel: grpc.aio.Channel | None = None
        self._clients: list[Client] = []
        self._channels: list[grpc.aio.Channel] = []
        self.admin_token = ""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.config.network.host_port}"

    # ----- the Host ---------------------------------------------------------------------

    async def start_host(self) -> None:
        """Start a Host on the config; the first start fixes the port later starts reuse."""
        server = HostServer(self.config, prepare_default_environment=False)
        await server.start()
        self.server = server
        self.config.network.host_port = server.port
        if not self.admin_token and self.config.auth.authentication:
            self.admin_token = read_secret(self.config.auth.credentials_file)
        self._channel = open_aio_channel(self.config, self.admin_token)
        self.tasks = task_service_pb2_grpc.TaskServiceStub(self._channel)
        self.nodes = node_service_pb2_grpc.NodeServiceStub(self._channel)
        self.logs = log_service_pb2_grpc.LogServiceStub(self._channel)
        self.access = access_service_pb2_grpc.AccessServiceStub(self._channel)
        self.audit = audit_service_pb2_grpc.AuditServiceStub(self._channel)
        self.ssh = ssh_service_pb2_grpc.SshServiceStub(self._channel)
        self.environments = environment_service_pb2_grpc.EnvironmentServiceStub(self._channel)

    async def stop_host(self) -> None:
        """Stop the Host as SIGTERM would; Runners keep trying to reconnect."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        for client in self._clients:
            await client.channel.close()
        self._clients.clear()
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        server, self.server = self.server, None
        if server is not None:
            await server.stop()

    async def restart_host(self, wait_runners: bool = True) -> None:
        """A new Host on the same config, database and shared folder. ``wait_runners``:
        return once every Runner connected before has registered with the new Host."""
        back = {r: r.registrations for r in self.runners if r.connected.is_set() and r.reconnect}
        await self.stop_host()
        await self.start_host()
        if wait_runners:
            await eventually(
                lambda: all(r.registrations > n for r, n in back.items()),
                what="runners to register with the restarted Host",
            )

    async def close(self) -> None:
        """Stop every Runner, then the Host (even if a Runner fails to stop: it raises)."""
        try:
            stopped = await asyncio.gather(
                *(runner.stop() for runner in self.runners), return_exceptions=True
            )
        finally:
            await self.stop_host()
        for outcome in stopped:
            if isinstance(outcome, BaseException):
                raise outcome

    # ----- runners ----------------------------------------------------------------------

    async def add_runner(self, hostname: str | None = None, **options: Any) -> FakeRunner:
        """Start a FakeRunner (see its options) and wait until it has registered."""
        name = hostname or f"node-{len(self.runners)}"
        runner = FakeRunner(self.config, name, **options)
        self.runners.append(runner)
        await runner.start()
        return runner

    # ----- identities -------------------------------------------------------------------

    def client(self, token: str, name: str = "") -> Client:
        """Stubs that call with ``token`` (closed with the Host)."""
        client = Client(name, token, open_aio_channel(self.config, token))
        self._clients.append(client)
        return client

    def channel(self, secret: str | None = None) -> grpc.aio.Channel:
        """A TLS channel to the Host that sends ``secret`` with every call (None: sends no
        credential; the caller may pass ``metadata`` per call); closed with the Host."""
        channel = open_aio_channel(self.config, secret)
        self._channels.append(channel)
        return channel

    def cli_config(self, path: Path, over_connect: bool = False) -> Path:
        """A config file at ``path`` for the command-line tools, as the admin, over gRPC
        (no dashboard port: no Connect), or over Connect on the dashboard's port."""
        config = self.config
        dashboard = "enabled = false"
        if over_connect:
            assert self.server is not None
            dashboard = f"port = {self.server.dashboard_port}"
        path.write_text(
            f'[network]\nhost_reachable_address = "127.0.0.1"\n'
            f"host_port = {config.network.host_port}\n"
            f'[tls]\nca_file = "{config.tls.ca_file}"\n'
            f'[auth]\ncredentials_file = "{config.auth.credentials_file}"\n'
            f"[dashboard]\n{dashboard}\n"
        )
        return path

    async def add_user(self, name: str, role: Role = Role.USER) -> Client:
        """A new user with a fresh token, and stubs that call as them."""
        await self.access.CreateUser(apb.CreateUserRequest(name=name, role=role.pb), timeout=5)
        reply = await self.access.CreateToken(apb.CreateTokenRequest(user=name), timeout=5)
        return self.client(reply.secret, name)

    # ----- the public API ---------------------------------------------------------------

    async def submit(self, command: str = "job", *arguments: str, **fields: Any) -> task_pb2.Task:
        """Submit one task (``fields`` as in SubmitTaskRequest); returns it as stored."""
        request = tpb.SubmitTaskRequest(command=command, arguments=arguments, **fields)
        reply = await self.tasks.SubmitTask(request, timeout=5)
        return reply.tasks[0]

    async def submit_running(
        self, count: int = 1, command: str = "long", **fields: Any
    ) -> list[task_pb2.Task]:
        """Submit ``count`` tasks and wait until each is running (as a HOLD runner keeps
        them), and stored so: a Runner's running is shown before it is stored, and what
        follows stored changes (the metrics, a lock another program takes) would race it."""
        submitted = [await self.submit(command, **fields) for _ in range(count)]
        running = [await self.wait_status(t.task_id, TaskStatus.RUNNING) for t in submitted]
        for task in running:

            async def stored(task_id: int = task.task_id) -> bool:
                return TaskStatus.RUNNING in [s for s, _ in await self.events(task_id)]

            await eventually(stored, what=f"task {task.task_id}'s running stored")
        return running

    async def get(self, task_id: int) -> task_pb2.Task:
        return (await self.tasks.GetTask(tpb.GetTaskRequest(task_id=task_id), timeout=5)).task

    async def events(self, task_id: int) -> list[tuple[TaskStatus, str]]:
        """The task's timeline: (status, detail) per change."""
        reply = await self.tasks.GetTask(tpb.GetTaskRequest(task_id=task_id), timeout=5)
        return [(TaskStatus.from_pb(e.status), e.detail) for e in reply.events]

    async def wait_status(
        self, task_id: int, *statuses: TaskStatus, within: float = 5.0
    ) -> task_pb2.Task:
        """Poll GetTask until the task reaches one of ``statuses`` (default: any final
        status); fail after ``within`` seconds."""
        wanted = {s.pb for s in (statuses or FINAL_STATUSES)}

        async def reached() -> task_pb2.Task | None:
            task = await self.get(task_id)
            return task if task.status in wanted else None

        names = sorted(str(s) for s in statuses) or "a final status"
        return await eventually(reached, within, what=f"task {task_id} to reach {names}")

    async def kill(self, task_id: int) -> task_pb2.Task:
        return (await self.tasks.KillTask(tpb.KillTaskRequest(task_id=task_id), timeout=5)).task

    async def read_log(self, task_id: int, stream: int = task_pb2.LOG_STREAM_STDOUT) -> bytes:
        request = lpb.ReadLogRequest(task_id=task_id, stream=stream)  # type: ignore[arg-type]
        return b"".join([chunk.data async for chunk in self.logs.ReadLog(request, timeout=5)])

    async def node(self, hostname: str) -> node_pb2.Node:
        nodes = (await self.nodes.ListNodes(npb.ListNodesRequest(), timeout=5)).nodes
        for node in nodes:
            if node.hostname == hostname:
                return node
        raise AssertionError(f"no node {hostname!r} in {[n.hostname for n in nodes]}")

    async def wait_node(
        self, hostname: str, status: NodeStatus, within: float = 5.0
    ) -> node_pb2.Node:
        async def reached() -> node_pb2.Node | None:
            node = await self.node(hostname)
            return node if node.status == status.pb else None

        return await eventually(reached, within, what=f"node {hostname} {status}")

    async def queue_positions(self, task_ids: Iterable[int]) -> list[int]:
        return [(await self.get(task_id)).queue_position for task_id in task_ids]

    async def request_counts(self) -> dict[tuple[str, str], float]:
        """``hakuriver_grpc_requests_total`` from /metrics, by (method, code)."""
        assert self.server is not None
        url = f"http://127.0.0.1:{self.server.metrics_port}/metrics"
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(url, timeout=5).read().decode()
        )
        counts = {}
        for family in text_string_to_metric_families(text):
            if family.name == "hakuriver_grpc_requests":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        counts[(sample.labels["method"], sample.labels["code"])] = sample.value
        return counts
