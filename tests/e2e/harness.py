"""A real HakuRiver cluster on loopback for tests: one Host and N Runners as processes.

Processes (not in-process servers) so tests can SIGKILL and restart either side, exactly as
a crash would. Modelled on dask's gen_cluster: start, hand out, tear down cleanly.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import docker
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hakuriver_common.channels import open_channel
from hakuriver_common.config import Config, load_config
from hakuriver_common.credentials import read_secret, write_secret
from hakuriver_common.environments import list_tarballs
from hakuriver_common.proto.hakuriver.v1 import (
    access_service_pb2 as apb,
    access_service_pb2_grpc,
    log_service_pb2 as lpb,
    log_service_pb2_grpc,
    node_pb2,
    node_service_pb2 as npb,
    node_service_pb2_grpc,
    runner_service_pb2 as rpb,
    task_pb2,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from hakuriver_common.roles import Role
from hakuriver_common.statuses import FINAL_TASK_STATUSES
from tests.tls import tls_files

T = TypeVar("T")
BASE_ENV = "hakuriver-base"
SSHD_ENV = "hakuriver-sshd"
FINAL = FINAL_TASK_STATUSES


def command_dispatch(
    argv: list[str], task_id: int, cpus: tuple[int, ...] = ()
) -> rpb.DispatchCommand:
    """What the Host sends a Runner for a one-core command task in the base image, with no
    network: for tests of the Runner's Docker edge alone."""
    return rpb.DispatchCommand(
        task_id=task_id,
        kind=task_pb2.TASK_KIND_COMMAND,
        image=f"hakuriver/{BASE_ENV}:base",
        container_name=BASE_ENV,
        command=argv[0],
        arguments=argv[1:],
        cores=1,
        cpus=cpus,
        network=task_pb2.TASK_NETWORK_NONE,
    )


def required(what: str, problem: str) -> NoReturn:
    """A test's prerequisite is missing: the test fails in CI (scripts/test.sh provides every
    one) and is skipped elsewhere, saying why either way."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI: {problem}")
    pytest.skip(f"{what}: skipped outside CI: {problem}")


# Ports this process handed out: never twice (a cluster asks for several at once).
_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port free now, chosen below the ephemeral range: a port the OS picks for
    us (bind to 0) is also where it puts outgoing connections, so one could take it before
    the process we start binds it (seen as "Address already in use" in CI)."""
    high = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(20000, high) if high > 20100 else 0
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(int(sock.getsockname()[1]))
            return int(sock.getsockname()[1])
    raise RuntimeError("no free loopback port below the ephemeral range")


def without_hakuriver_variables() -> dict[str, str]:
    """This process's environment as a user's shell would have it: none of the HAKURIVER_*
    settings the tests may carry, so only what a command is given configures it."""
    return {k: v for k, v in os.environ.items() if not k.upper().startswith("HAKURIVER_")}


def wait_for(check: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except grpc.RpcError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class ProcessCluster:
    """Host and Runners over TLS with the test CA; the Host's first start writes the admin's
    token to ``credentials`` beside the config, which the CLI tools then use."""

    def __init__(
        self,
        root: Path,
        runner_count: int = 1,
        heartbeat_interval: float = 0.5,
        heartbeat_timeout_factor: float = 20,
        extra_config: str = "",
        extra_sections: dict[str, str] | None = None,
    ) -> None:
        """``extra_config``: lines for [docker]; ``extra_sections``: lines for other sections
        by name, e.g. ``{"auth": 'default_task_network = "none"'}`` (added if missing)."""
        self.root = root
        self.tag = uuid.uuid4().hex[:6]
        self.runner_names = [f"r{self.tag}-{i}" for i in range(runner_count)]
        self.host_port = free_port()
        self.metrics_port = free_port()
        self.ssh_proxy_port = free_port()
        self.dashboard_port = free_port()
        # The dashboard as the quickstart serves it: plain HTTP on loopback (a browser under
        # test would not trust the test CA); HTTPS is covered in the unit tier.
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.shared_dir = root / "shared"
        self.config_path = root / "config.toml"
        self.credentials = root / "credentials"
        self.join_token = "hkrj_" + uuid.uuid4().hex
        tls = tls_files()
        text = f"""
[network]
host_bind_ip = "127.0.0.1"
host_reachable_address = "127.0.0.1"
host_port = {self.host_port}
metrics_port = {self.metrics_port}
host_ssh_proxy_port = {self.ssh_proxy_port}

[dashboard]
port = {self.dashboard_port}
plaintext = true

[paths]
shared_dir = "{self.shared_dir}"
local_temp_dir = "{root / "local_temp"}"

[database]
db_file = "{root / "host.db"}"

[timing]
heartbeat_interval = {heartbeat_interval}
heartbeat_timeout_factor = {heartbeat_timeout_factor}
cleanup_check_interval = {heartbeat_interval}
kill_grace_seconds = 1

[runner]
reconnect_max_seconds = 1.0

[tls]
ca_file = "{tls.ca_cert}"
cert_file = "{tls.host_cert}"
key_file = "{tls.host_key}"

[auth]
credentials_file = "{self.credentials}"
join_token = "{self.join_token}"

[docker]
{"" if "default_container_name" in extra_config else f'default_container_name = "{BASE_ENV}"'}
{extra_config}
"""
        for section, lines in (extra_sections or {}).items():
            header = f"\n[{section}]\n"
            if header in text:
                text = text.replace(header, header + lines + "\n", 1)
            else:
                text += header + lines + "\n"
        # 0600, as hakuriver.init writes it: it holds the join token, and the tools warn of
        # a config with a secret that others can read.
        write_secret(self.config_path, text)
        self.host: subprocess.Popen[bytes] | None = None
        self.runners: dict[str, subprocess.Popen[bytes]] = {}
        self.client_config: Config = load_config(self.config_path)
        self.admin_token = ""
        self.channel: grpc.Channel | None = None
        self._user_channels: list[grpc.Channel] = []
        self.docker = docker.from_env()

    def _open_admin_channel(self) -> None:
        """(Re)open the admin's channel with the token in the credentials file."""
        if self.channel is not None:
            self.channel.close()
        self.admin_token = read_secret(self.credentials)
        self.channel = open_channel(self.client_config, self.admin_token)
        self.tasks = task_service_pb2_grpc.TaskServiceStub(self.channel)
        self.nodes = node_service_pb2_grpc.NodeServiceStub(self.channel)
        self.logs = log_service_pb2_grpc.LogServiceStub(self.channel)
        self.access = access_service_pb2_grpc.AccessServiceStub(self.channel)

    def add_user(self, name: str, role: Role = Role.USER) -> str:
        """Create a user with a fresh API token; returns the token."""
        self.access.CreateUser(apb.CreateUserRequest(name=name, role=role.pb), timeout=10)
        return self.access.CreateToken(apb.CreateTokenRequest(user=name), timeout=10).secret

    def user_channel(self, token: str) -> grpc.Channel:
        """A channel calling with ``token`` (closed with the cluster)."""
        channel = open_channel(self.client_config, token)
        self._user_channels.append(channel)
        return channel

    # ----- processes --------------------------------------------------------------------

    def _spawn(
        self,
        module: str,
        log_name: str,
        extra_env: dict[str, str],
        python_args: Sequence[str] = (),
    ) -> subprocess.Popen[bytes]:
        """``python_args``: what the interpreter runs instead of ``-m module`` (a wrapper
        that observes the process, e.g. ``-c`` with a script)."""
        env = {**os.environ, **extra_env}
        log_file = (self.root / log_name).open("ab")
        return subprocess.Popen(
            [sys.executable, *(python_args or ("-m", module)), "--config", str(self.config_path)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def spawn_host(
        self, env: dict[str, str] | None = None, python_args: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """A Host process, not waited for (``env``: its own settings, over the config)."""
        return self._spawn("hakuriver_host", "host.log", env or {}, python_args)

    def start_host(
        self, env: dict[str, str] | None = None, python_args: Sequence[str] = ()
    ) -> None:
        self.host = self.spawn_host(env, python_args)
        with open_channel(self.client_config, "") as probe:
            health = health_pb2_grpc.HealthStub(probe)

            def serving() -> bool:
                assert self.host is not None and self.host.poll() is None, self.log("host.log")
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                return reply.status == health_pb2.HealthCheckResponse.SERVING

            wait_for(serving, what="host to serve")
        self._open_admin_channel()

    def runner_state_dir(self, name: str) -> Path:
        """Where runner ``name`` keeps its credential."""
        return self.root / "runner-state" / name

    def start_runner(
        self, name: str | None = None, wait: bool = True, env: dict[str, str] | None = None
    ) -> str:
        name = name or self.runner_names[0]
        if name not in self.runner_names:
            self.runner_names.append(name)
        self.runners[name] = self._spawn(
            "hakuriver_runner",
            f"runner-{name}.log",
            {
                "HAKURIVER_RUNNER__NAME": name,
                "HAKURIVER_RUNNER__STATE_DIR": str(self.runner_state_dir(name)),
                **(env or {}),
            },
        )
        if wait:
            wait_for(lambda: self.runner_ready(name), what=f"runner {name} online")
        return name

    def start(self) -> ProcessCluster:
        self.start_host()
        for name in self.runner_names:
            self.start_runner(name, wait=False)
        for name in self.runner_names:
            wait_for(lambda n=name: self.runner_ready(n), what=f"runner {name} online")  # type: ignore[misc]
        return self

    @staticmethod
    def _end(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill_host(self, sig: int = signal.SIGKILL) -> None:
        self._end(self.host, sig)

    def kill_runner(self, name: str | None = None, sig: int = signal.SIGKILL) -> None:
        self._end(self.runners.get(name or self.runner_names[0]), sig)

    def stop(self) -> None:
        for proc in self.runners.values():
            self._end(proc, signal.SIGTERM)
        self._end(self.host, signal.SIGTERM)
        for channel in [self.channel, *self._user_channels]:
            if channel is not None:
                channel.close()
        ours = {
            (name, path.read_text().strip())
            for name in self.runner_names
            if (path := self.runner_state_dir(name) / "cluster_id").exists()
        }
        for container in self.docker.containers.list(
            all=True, ignore_removed=True, filters={"label": "hakuriver.runner"}
        ):
            labels = container.labels
            if (labels.get("hakuriver.runner"), labels.get("hakuriver.cluster")) in ours:
                container.remove(force=True)
        self.docker.close()

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    # ----- API helpers ------------------------------------------------------------------

    def runner_ready(self, name: str) -> bool:
        """Online, and its credential kept (the Host lists a node before the Runner has
        written it; a Runner killed in between could not come back)."""
        return self.node_online(name) and (self.runner_state_dir(name) / "credential").exists()

    def node_online(self, name: str) -> bool:
        """Online with its Runner connected (a restarted Host loads a node that was online
        as online but disconnected until its Runner registers again)."""
        nodes = self.nodes.ListNodes(npb.ListNodesRequest(), timeout=2).nodes
        return any(
            n.hostname == name and n.status == node_pb2.NODE_STATUS_ONLINE and not n.disconnected
            for n in nodes
        )

    def submit(self, argv: list[str], **fields: Any) -> task_pb2.Task:
        request = tpb.SubmitTaskRequest(command=argv[0], arguments=argv[1:], **fields)
        return self.tasks.SubmitTask(request, timeout=10).tasks[0]

    def get(self, task_id: int) -> task_pb2.Task:
        return self.tasks.GetTask(tpb.GetTaskRequest(task_id=task_id), timeout=10).task

    def wait_status(self, task_id: int, statuses: set[int], timeout: float = 30) -> task_pb2.Task:
        def reached() -> task_pb2.Task | None:
            task = self.get(task_id)
            return task if task.status in statuses else None

        return wait_for(reached, timeout, what=f"task {task_id} to reach {statuses}")

    def wait_final(self, task_id: int, timeout: float = 60) -> task_pb2.Task:
        return self.wait_status(task_id, FINAL, timeout)

    def gated_task(self, gate: str) -> tuple[task_pb2.Task, Path]:
        """A task that prints "before", waits for /shared/``gate``, then prints "after" and
        exits 0: returned once "before" is stored, with the path that opens the gate."""
        gates = self.shared_dir / "shared_data"
        gates.mkdir(parents=True, exist_ok=True)
        script = f"echo before; while [ ! -e /shared/{gate} ]; do sleep 0.05; done; echo after"
        task = self.submit(["sh", "-c", script])
        wait_for(lambda: self.read_log(task.task_id) == b"before\n", what="its first line")
        return task, gates / gate

    def read_log(self, task_id: int, stream: int = task_pb2.LOG_STREAM_STDOUT) -> bytes:
        request = lpb.ReadLogRequest(task_id=task_id, stream=stream)  # type: ignore[arg-type]
        return b"".join(chunk.data for chunk in self.logs.ReadLog(request, timeout=10))

    @staticmethod
    def cli_argv(tool: str) -> list[str]:
        return [sys.executable, "-m", f"hakuriver_cli.{tool.replace('-', '_')}"]

    def cli(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a CLI tool (client, task, init) as a user would, against this cluster."""
        return subprocess.run(
            [*self.cli_argv(tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "HAKURIVER_CONFIG": str(self.config_path), "COLUMNS": "200"},
        )


@contextmanager
def own_default_environment() -> Iterator[str]:
    """[docker] lines (``extra_config``) giving a cluster a default environment of its own,
    which its Host's first start makes from the test image, as a new Host makes one from
    busybox:latest; the environment's container and image are removed afterwards."""
    name = f"own-{uuid.uuid4().hex[:8]}"
    try:
        yield f'initial_base_image = "hakuriver/{BASE_ENV}:base"\ndefault_container_name = "{name}"'
    finally:
        client = docker.from_env()
        with contextlib.suppress(docker.errors.NotFound):
            client.containers.get(f"hakuriver-env-{name}").remove(force=True)
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(f"hakuriver/{name}:base", force=True)
        client.close()


def default_environment_made(cluster: ProcessCluster) -> None:
    """Wait until the Host has saved its default environment's tarball."""
    tarballs = cluster.shared_dir / cluster.client_config.docker.container_dir
    name = cluster.client_config.docker.default_container_name
    wait_for(
        lambda: [t for t in list_tarballs(tarballs) if t.name == name],
        what="the default environment's tarball",
    )


@contextmanager
def running_cluster(root: Path, **kwargs: Any) -> Iterator[ProcessCluster]:
    cluster = ProcessCluster(root, **kwargs)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
