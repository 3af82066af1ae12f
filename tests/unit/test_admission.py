"""Admission, table-driven: every bad input the docs list is refused with the error class
(its gRPC code) and a message naming the field; good input gives the plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from hakuriver_common.statuses import TaskKind, TaskNetwork
from hakuriver_host.admission import NodeShape, Placement, Rights, admit
from hakuriver_host.errors import ApiError, InvalidArgument, NotFound, PermissionDenied
from hakuriver_host.scheduler import Scheduler

OPERATOR = Rights(elevated=True)
USER = Rights(elevated=False, mount_roots=("/data", "/scratch/"))
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1KjKdQFMK2E8kVmbb3r2Dk5c6bwSvpZ0ZyYy2sQkVx user@lab"


def _scheduler() -> Scheduler:
    scheduler = Scheduler(starvation_seconds=600)
    scheduler.upsert_node(
        "a", tuple(range(8)), 16 * 10**9, {0: (0, 1, 2, 3), 1: (4, 5, 6, 7)}, (0, 1)
    )
    scheduler.upsert_node("b", (0, 1), 2 * 10**9, {0: (0, 1)}, ())
    return scheduler


@dataclass
class View:
    """A cluster of two nodes: a (8 CPUs on NUMA 0 and 1, 16 GB, GPUs 0-1), b (2 CPUs)."""

    default_container: str = "base"
    tasks_privileged: bool = False
    default_network: TaskNetwork = TaskNetwork.HOST
    environments: set[str] = field(default_factory=lambda: {"base", "sshd"})
    scheduler: Scheduler = field(default_factory=_scheduler)

    def node(self, hostname: str) -> NodeShape | None:
        return {
            "a": NodeShape(frozenset({0, 1}), frozenset({0, 1})),
            "b": NodeShape(frozenset({0}), frozenset()),
        }.get(hostname)

    def node_names(self) -> list[str]:
        return ["a", "b"]

    def has_environment(self, name: str) -> bool:
        return name in self.environments

    def environment_names(self) -> list[str]:
        return sorted(self.environments)

    def never_fits(self, request: Any) -> str | None:
        return self.scheduler.never_fits(request)


def target(hostname: str, numa: int | None = None, gpus: tuple[int, ...] = ()) -> task_pb2.Target:
    return task_pb2.Target(hostname=hostname, numa_node_id=numa, gpu_ids=gpus)


def cmd(**fields: Any) -> tpb.SubmitTaskRequest:
    fields.setdefault("command", "echo")
    return tpb.SubmitTaskRequest(kind=task_pb2.TASK_KIND_COMMAND, **fields)


def vps(**fields: Any) -> tpb.SubmitTaskRequest:
    fields.setdefault("ssh_public_key", KEY)
    fields.setdefault("container_name", "sshd")
    return tpb.SubmitTaskRequest(kind=task_pb2.TASK_KIND_VPS, **fields)


def mount(host: str, container: str) -> task_pb2.Mount:
    return task_pb2.Mount(host_path=host, container_path=container)


REFUSED = [
    (tpb.SubmitTaskRequest(kind=7, command="x"), InvalidArgument, "kind: unknown task kind 7"),
    (cmd(command=""), InvalidArgument, "command: must not be empty"),
    (cmd(command="   "), InvalidArgument, "command: must not be empty"),
    (cmd(cores=0), InvalidArgument, "cores: must be between 1 and 4096, got 0"),
    (cmd(cores=-3), InvalidArgument, "cores: must be between 1 and 4096, got -3"),
    (vps(cores=-1), InvalidArgument,
     "cores: must be between 0 and 4096 for a VPS (0: no reservation or limit), got -1"),
    (cmd(memory="lots"), InvalidArgument, "memory: "),
    (cmd(memory="0"), InvalidArgument, "memory: must be positive"),
    (cmd(memory="6M"), InvalidArgument, "memory: at least 6Mi (6291456 bytes; Docker refuses"),
    (cmd(memory="1K"), InvalidArgument, "memory: at least 6Mi"),
    (cmd(env={"1BAD": "x"}), InvalidArgument, "env: invalid variable name '1BAD'"),
    (cmd(env={"A-B": "x"}), InvalidArgument, "env: invalid variable name 'A-B'"),
    (cmd(env={"HAKURIVER_TASK_ID": "7"}), InvalidArgument, "env: HAKURIVER_TASK_ID is set by"),
    (cmd(env={"HAKURIVER_ARRAY_INDEX": "9"}), InvalidArgument, "env: HAKURIVER_ARRAY_INDEX"),
    (cmd(env={"CUDA_VISIBLE_DEVICES": "0"}), InvalidArgument, "env: CUDA_VISIBLE_DEVICES is set"),
    (cmd(env={"CUDA_DEVICE_ORDER": "FASTEST_FIRST"}), InvalidArgument, "env: CUDA_DEVICE_ORDER"),
    (cmd(mounts=[mount("rel", "/c")]), InvalidArgument, "mounts: paths must be absolute"),
    (cmd(mounts=[mount("/h", "c")]), InvalidArgument, "mounts: paths must be absolute"),
    # Docker refuses these on the node: the task failed there instead.
    (cmd(mounts=[mount("/h", "/")]), InvalidArgument, "mounts: '/' is the container's root"),
    (cmd(mounts=[mount("/h", "/x/..")]), InvalidArgument, "mounts: '/x/..' is the container's"),
    (cmd(mounts=[mount("/h", "/shared/")]), InvalidArgument,
     "mounts: /shared is HakuRiver's own mount in every task (docs/tasks.md): mount elsewhere"),
    (vps(mounts=[mount("/h", "/local_temp")]), InvalidArgument, "mounts: /local_temp is"),
    (cmd(mounts=[mount("/h", "/x"), mount("/g", "/x/")]), InvalidArgument,
     "mounts: /x is the container path of two mounts"),
    (cmd(gpus=-1), InvalidArgument, "gpus: must not be negative, got -1"),
    (cmd(gpus=1, targets=[target("a", gpus=(0,))]), InvalidArgument, "gpus: give a GPU count"),
    (vps(ssh_public_key=""), InvalidArgument, "ssh_public_key: a VPS needs a public key"),
    (cmd(ssh_public_key=KEY), InvalidArgument,
     "ssh_public_key: only a VPS takes a public key (kind VPS: hakuriver.vps submit)"),
    (vps(ssh_public_key="hello"), InvalidArgument, "ssh_public_key: expected one OpenSSH"),
    (vps(ssh_public_key=KEY + "\n" + KEY), InvalidArgument, "ssh_public_key: expected one"),
    (vps(ssh_public_key="ssh-ed25519"), InvalidArgument, "ssh_public_key: the key data after"),
    (vps(ssh_public_key=KEY[:40]), InvalidArgument, "ssh_public_key: the key data after"),
    (vps(ssh_public_key="ssh-rsa" + KEY[11:]), InvalidArgument,
     "ssh_public_key: the key data after 'ssh-rsa' is not a ssh-rsa key (cut short or mistyped?)"),
    (vps(ssh_public_key="ssh-ed25519 AAAA!C3Nza"), InvalidArgument, "ssh_public_key: the key"),
    (vps(targets=[target("a"), target("b")]), InvalidArgument, "targets: a VPS takes at most"),
    (vps(container_name="NULL"), InvalidArgument, "container_name: a VPS needs a container"),
    (cmd(container_name="NULL", privileged=True), InvalidArgument, "container_name: NULL tasks"),
    (cmd(container_name="NULL", mounts=[mount("/h", "/c")]), InvalidArgument,
     "container_name: NULL tasks run on the runner host"),
    (cmd(container_name="nope"), NotFound,
     "container_name: environment 'nope' not found: no runner has image hakuriver/nope:base "
     "and no tarball exists (available: base, sshd)"),
    (cmd(container_name="Bad Name"), InvalidArgument,
     "container_name: invalid environment name 'Bad Name': use up to 64 lowercase letters"),
    (cmd(targets=[target("zz")]), NotFound, "target: unknown host 'zz' (known: a, b)"),
    (cmd(targets=[target("a", numa=5)]), NotFound,
     "target: a has no NUMA node 5 (NUMA ids: [0, 1])"),
    (cmd(targets=[target("b", gpus=(0,))]), NotFound, "target: b has no GPU 0 (GPU ids: none)"),
    (cmd(targets=[target("a", gpus=(2,))]), NotFound, "target: a has no GPU 2 (GPU ids: [0, 1])"),
    (cmd(cores=9), InvalidArgument, "cores: 9 requested but any node has at most 8"),
    (cmd(cores=3, targets=[target("b")]), InvalidArgument,
     "cores: 3 requested but b has at most 2"),
    (cmd(cores=5, targets=[target("a", numa=0)]), InvalidArgument,
     "cores: 5 requested but NUMA node 0 of a has 4 CPUs"),
    (cmd(memory="17G"), InvalidArgument, "memory: 17000000000 bytes (17.0G) requested but"),
    (cmd(gpus=3), InvalidArgument, "gpus"),
]  # fmt: skip


@pytest.mark.parametrize(("request_", "error", "message"), REFUSED)
def test_bad_input_is_refused_naming_the_field(
    request_: tpb.SubmitTaskRequest, error: type[ApiError], message: str
) -> None:
    with pytest.raises(error) as raised:
        admit(request_, View(), OPERATOR)
    assert type(raised.value) is error
    assert raised.value.message.startswith(message)


def test_command_plan_has_the_defaults() -> None:
    plan = admit(cmd(arguments=["hi"], env={"N": "3"}, priority=5), View(), OPERATOR)
    assert plan.kind is TaskKind.COMMAND
    assert (plan.command, plan.arguments, plan.env) == ("echo", ["hi"], {"N": "3"})
    assert (plan.cores, plan.memory_bytes, plan.gpu_count, plan.priority) == (1, 0, 0, 5)
    assert plan.container == "base"
    assert plan.placements == [Placement()]
    assert not plan.privileged


def test_unspecified_kind_is_a_command_and_memory_is_parsed() -> None:
    plan = admit(tpb.SubmitTaskRequest(command="true", memory="512M", cores=2), View(), OPERATOR)
    assert plan.kind is TaskKind.COMMAND
    assert (plan.cores, plan.memory_bytes) == (2, 512 * 10**6)


def test_one_placement_per_target() -> None:
    plan = admit(cmd(targets=[target("a", numa=1, gpus=(1,)), target("b")]), View(), OPERATOR)
    assert plan.placements == [Placement("a", 1, (1,)), Placement("b", None, ())]


def test_vps_plan_keeps_the_key_and_drops_the_command() -> None:
    plan = admit(vps(command="ignored", ssh_public_key=f"  {KEY}  "), View(), OPERATOR)
    assert plan.kind is TaskKind.VPS
    assert (plan.command, plan.cores, plan.ssh_public_key) == ("", 0, KEY)


def test_null_container_runs_unprivileged_even_when_the_config_says_privileged() -> None:
    view = View(tasks_privileged=True)
    assert not admit(cmd(container_name="NULL"), view, OPERATOR).privileged
    assert admit(cmd(), view, OPERATOR).privileged
    assert admit(cmd(privileged=True), View(), OPERATOR).privileged


def test_mounts_are_kept_with_their_mode() -> None:
    request = cmd(mounts=[task_pb2.Mount(host_path="/d", container_path="/data", read_only=True)])
    assert admit(request, View(), OPERATOR).mounts == [
        {"host_path": "/d", "container_path": "/data", "read_only": True}
    ]


def test_with_no_runner_every_submission_is_refused() -> None:
    view = View(scheduler=Scheduler(starvation_seconds=600))
    with pytest.raises(InvalidArgument, match="no runner has registered yet"):
        admit(cmd(), view, OPERATOR)


def mount(host_path: str) -> task_pb2.Mount:
    """At /m under the host path (a task's mounts each have their own container path)."""
    return task_pb2.Mount(host_path=host_path, container_path="/m" + host_path)


USER_REFUSED = [
    (cmd(container_name="NULL"), "container_name: host-process (NULL) tasks run as the runner's "
     "user on the node and need the operator role"),
    (cmd(privileged=True), "privileged: privileged containers need the operator role"),
    (cmd(mounts=[mount("/etc")]), "mounts: /etc is outside the paths users may mount "
     "(allowed: /data, /scratch); operators may mount anywhere"),
    (cmd(mounts=[mount("/data/../etc")]), "mounts: /data/../etc is outside"),
    (cmd(mounts=[mount("/database")]), "mounts: /database is outside"),
    (cmd(mounts=[mount("/data/x"), mount("/")]), "mounts: / is outside"),
    (cmd(priority=1), "priority: 1 would put the task ahead of other users' queued tasks"),
]  # fmt: skip


@pytest.mark.parametrize(("request_", "message"), USER_REFUSED)
def test_plain_users_are_refused_what_needs_an_operator(
    request_: tpb.SubmitTaskRequest, message: str
) -> None:
    with pytest.raises(PermissionDenied) as raised:
        admit(request_, View(), USER)
    assert raised.value.message.startswith(message)
    admit(request_, View(), OPERATOR)


def test_plain_users_mount_under_the_allowed_roots_only() -> None:
    plan = admit(cmd(mounts=[mount("/data"), mount("/scratch/a/b")]), View(), USER)
    assert [m["host_path"] for m in plan.mounts] == ["/data", "/scratch/a/b"]
    with pytest.raises(PermissionDenied, match="allowed: none"):
        admit(cmd(mounts=[mount("/data")]), View(), Rights(elevated=False))


def test_the_network_is_chosen_per_task_with_the_admins_default() -> None:
    none = task_pb2.TASK_NETWORK_NONE
    assert admit(cmd(), View(), USER).network is TaskNetwork.HOST
    isolated = View(default_network=TaskNetwork.NONE)
    assert admit(cmd(), isolated, USER).network is TaskNetwork.NONE
    assert (
        admit(cmd(network=task_pb2.TASK_NETWORK_HOST), isolated, USER).network is TaskNetwork.HOST
    )
    assert admit(cmd(network=none), View(), USER).network is TaskNetwork.NONE
    # A VPS is reached through the node's network; a host process has no other.
    assert admit(vps(), isolated, USER).network is TaskNetwork.HOST
    assert admit(cmd(container_name="NULL"), isolated, OPERATOR).network is TaskNetwork.HOST
    with pytest.raises(InvalidArgument, match="network: a VPS needs the host network"):
        admit(vps(network=none), View(), USER)
    with pytest.raises(InvalidArgument, match="network: a host-process"):
        admit(cmd(container_name="NULL", network=none), View(), OPERATOR)
