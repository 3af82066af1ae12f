"""Admission of a submission: a SubmitTaskRequest and a view of the cluster give a plan or an
error that names the field and what is allowed.

Pure: the view answers every question about the cluster (nodes, environments, whether a
request could ever fit), so the rules here are tested table-driven without a server.
Nothing is written for a refused request.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hakuriver_common import limits, task_variables
from hakuriver_common.environments import NULL_CONTAINER, check_environment_name, image_for
from hakuriver_common.mounts import LOCAL_TEMP_MOUNT_POINT, SHARED_MOUNT_POINT
from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from hakuriver_common.statuses import TaskKind, TaskNetwork
from hakuriver_common.units import parse_size
from hakuriver_host.errors import InvalidArgument, NotFound, PermissionDenied, at_most, between
from hakuriver_host.scheduler import Request, no_such_gpus

ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SSH_KEY_PREFIXES = ("ssh-", "ecdsa-", "sk-")


@dataclass(frozen=True)
class NodeShape:
    """What admission needs to know of a node: its NUMA and GPU ids."""

    numa_ids: frozenset[int]
    gpu_ids: frozenset[int]


@dataclass(frozen=True)
class Rights:
    """What the submitter may ask for beyond a plain container task."""

    # Operators and admins: host-process and privileged tasks, mounts anywhere.
    elevated: bool
    # Host paths under which a plain user may bind-mount.
    mount_roots: tuple[str, ...] = ()


class ClusterView(Protocol):
    """The questions admission asks of the cluster."""

    default_container: str
    tasks_privileged: bool
    default_network: TaskNetwork

    def node(self, hostname: str) -> NodeShape | None: ...

    def node_names(self) -> list[str]: ...

    def has_environment(self, name: str) -> bool: ...

    def environment_names(self) -> list[str]: ...

    def never_fits(self, request: Request) -> str | None: ...


@dataclass(frozen=True)
class Placement:
    """Where one task of the plan may go: any node (hostname None) or a named one."""

    hostname: str | None = None
    numa_node: int | None = None
    gpu_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Plan:
    """An accepted submission: one task per placement, all alike otherwise."""

    kind: TaskKind
    command: str
    arguments: list[str]
    env: dict[str, str]
    cores: int
    memory_bytes: int
    gpu_count: int
    container: str
    privileged: bool
    mounts: list[dict[str, Any]]
    priority: int
    ssh_public_key: str
    placements: Sequence[Placement]
    network: TaskNetwork = TaskNetwork.HOST
    # A job array's indices (one task each, on ``placements[0]``); empty for other plans.
    array: tuple[int, ...] = ()
    array_max_running: int = 0

    def tasks(self) -> list[tuple[Placement, int | None]]:
        """Each task's placement and array index (None outside an array)."""
        if self.array:
            return [(self.placements[0], index) for index in self.array]
        return [(placement, None) for placement in self.placements]


def _kind(req: tpb.SubmitTaskRequest) -> TaskKind:
    if req.kind == task_pb2.TASK_KIND_UNSPECIFIED:
        return TaskKind.COMMAND
    try:
        return TaskKind.from_pb(req.kind)
    except ValueError:
        raise InvalidArgument(f"kind: unknown task kind {req.kind}") from None


def _ssh_key(req: tpb.SubmitTaskRequest, kind: TaskKind) -> str:
    if kind is not TaskKind.VPS:
        if req.ssh_public_key:  # else a user thinks they can log in to a command task
            raise InvalidArgument(
                "ssh_public_key: only a VPS takes a public key (kind VPS: hakuriver.vps "
                "submit); a command task runs no sshd to log in to"
            )
        return ""
    key = req.ssh_public_key.strip()
    if not key:
        raise InvalidArgument("ssh_public_key: a VPS needs a public key to log in with")
    if "\n" in key or not key.split()[0].startswith(SSH_KEY_PREFIXES):
        raise InvalidArgument(
            "ssh_public_key: expected one OpenSSH public key line, e.g. 'ssh-ed25519 AAAA...'"
        )
    words = key.split()
    if not _blob_names_type(words):
        raise InvalidArgument(
            f"ssh_public_key: the key data after {words[0]!r} is not a {words[0]} "
            "key (cut short or mistyped?); give the whole line of the .pub file"
        )
    return key


def _blob_names_type(words: list[str]) -> bool:
    """Whether the base64 after the type is, as sshd reads it, that type and then
    length-prefixed fields to its end (a certificate's other fields are not all strings): a
    key cut short or mistyped would make a VPS nobody can log in to."""
    try:
        blob = base64.b64decode(words[1], validate=True) if len(words) > 1 else b""
    except binascii.Error:
        return False
    cert = "-cert-" in words[0]
    fields: list[bytes] = []
    while len(blob) >= 4 and not (cert and fields):
        size = int.from_bytes(blob[:4], "big")
        if len(blob) < 4 + size:
            return False
        fields.append(blob[4 : 4 + size])
        blob = blob[4 + size :]
    complete = cert or (not blob and len(fields) >= 2)
    return complete and fields[:1] == [words[0].encode()]


def _cores(req: tpb.SubmitTaskRequest, kind: TaskKind) -> int:
    vps = kind is TaskKind.VPS
    low = 0 if vps else 1
    cores = req.cores if req.HasField("cores") else low
    which = " for a VPS (0: no reservation or limit)" if vps else ""
    between("cores", cores, low, limits.MAX_TASK_CORES, which)
    return cores


def _memory(req: tpb.SubmitTaskRequest) -> int:
    if not req.memory:
        return 0
    try:
        memory = parse_size(req.memory)
    except ValueError as exc:
        raise InvalidArgument(f"memory: {exc}") from None
    if memory <= 0:
        raise InvalidArgument(f"memory: must be positive, got {req.memory!r}")
    at_most("memory", memory, limits.MAX_MEMORY_BYTES, " bytes")
    return memory


def _size(text: str) -> int:
    return len(text.encode())


def _env_bytes(env: Mapping[str, str]) -> int:
    """The bytes of an environment's names and values."""
    return sum(_size(k) + _size(v) for k, v in env.items())


def _no_nul(field: str, text: str) -> None:
    if "\x00" in text:
        raise InvalidArgument(f"{field}: must not contain NUL bytes")


def _check_bounds(req: tpb.SubmitTaskRequest) -> None:
    """Sizes and counts within docs/api.md's limits, and no NUL byte in anything that
    becomes a process's argv, environment or a path (Docker would refuse it later)."""
    at_most("command", _size(req.command), limits.MAX_COMMAND_BYTES, " bytes")
    _no_nul("command", req.command)
    at_most("arguments", len(req.arguments), limits.MAX_ARGUMENTS)
    total = sum(_size(a) for a in req.arguments)
    at_most("arguments", total, limits.MAX_ARGUMENTS_BYTES, " bytes")
    for argument in req.arguments:
        _no_nul("arguments", argument)
    at_most("env", len(req.env), limits.MAX_ENV_VARS, " variables")
    at_most("env", _env_bytes(req.env), limits.MAX_ENV_BYTES, " bytes")
    for key, value in req.env.items():
        _no_nul(f"env {key[:64]!r}", value)
    at_most("mounts", len(req.mounts), limits.MAX_MOUNTS)
    for mount in req.mounts:
        for path in (mount.host_path, mount.container_path):
            at_most("mounts", _size(path), limits.MAX_PATH_BYTES, " bytes per path")
            _no_nul("mounts", path)
    at_most("targets", len(req.targets), limits.MAX_TARGETS)
    for target in req.targets:
        at_most("target", _size(target.hostname), limits.MAX_NAME_BYTES, " bytes of host name")
        at_most("target", len(target.gpu_ids), limits.MAX_TASK_GPUS, " GPU ids")
    at_most("container_name", _size(req.container_name), limits.MAX_NAME_BYTES, " bytes")
    _no_nul("container_name", req.container_name)
    at_most("ssh_public_key", _size(req.ssh_public_key), limits.MAX_SSH_KEY_BYTES, " bytes")
    at_most("memory", _size(req.memory), 64, " characters")
    at_most("gpus", req.gpus, limits.MAX_TASK_GPUS)
    at_most("array.indices", len(req.array.indices), limits.MAX_ARRAY_TASKS, " tasks")


def _check_array_size(req: tpb.SubmitTaskRequest) -> None:
    """Every task of an array stores the command, arguments, environment and mounts: within
    each task's limits, 100,000 of them would write tens of gigabytes from one request."""
    tasks = len(req.array.indices)
    each = _size(req.command) + sum(_size(a) for a in req.arguments)
    each += _env_bytes(req.env)
    each += sum(_size(m.host_path) + _size(m.container_path) for m in req.mounts)
    if tasks * each > limits.MAX_ARRAY_BYTES:
        raise InvalidArgument(
            f"array: {tasks:,} tasks of {each:,} bytes each (command, arguments, environment "
            f"and mounts) make {tasks * each:,} bytes; at most {limits.MAX_ARRAY_BYTES:,} in "
            "all: put large inputs in a file on shared storage"
        )


def _array(req: tpb.SubmitTaskRequest, kind: TaskKind) -> tuple[int, ...]:
    if not req.HasField("array"):
        return ()
    _check_array_size(req)
    indices = tuple(req.array.indices)
    if kind is TaskKind.VPS:
        raise InvalidArgument("array: a VPS cannot be a job array")
    if not indices:
        raise InvalidArgument("array.indices: a job array needs at least one index")
    if len(req.targets) > 1:
        raise InvalidArgument("targets: a job array takes at most one target")
    if any(not 0 <= i <= limits.MAX_ARRAY_INDEX for i in indices):
        raise InvalidArgument(f"array.indices: each must be 0..{limits.MAX_ARRAY_INDEX:,}")
    if len(set(indices)) != len(indices):
        raise InvalidArgument("array.indices: an index is given twice")
    if req.array.max_running < 0:
        raise InvalidArgument(
            f"array.max_running: must not be negative, got {req.array.max_running}"
        )
    return tuple(sorted(indices))  # queued, and numbered, in index order


def _check_vps_shape(req: tpb.SubmitTaskRequest) -> None:
    if len(req.targets) > 1:
        raise InvalidArgument("targets: a VPS takes at most one target")
    if req.arguments:  # else stored, shown, and never run
        raise InvalidArgument(
            "arguments: a VPS runs sshd, not a command of yours: leave arguments empty"
        )
    _check_vps_env(req.env)


def _check_vps_env(env: Mapping[str, str]) -> None:
    """A VPS's sessions get its variables from ~/.ssh/environment, one NAME=VALUE a line
    read as is: a newline would cut a value short and start another variable."""
    count, total = len(env), _env_bytes(env)
    if count > limits.MAX_VPS_ENV_VARS or total > limits.MAX_VPS_ENV_BYTES:
        raise InvalidArgument(
            f"env: a VPS takes at most {limits.MAX_VPS_ENV_VARS} variables of "
            f"{limits.MAX_VPS_ENV_BYTES:,} bytes in all, got {count} of {total:,} bytes"
        )
    for key, value in env.items():
        if "\n" in value:
            raise InvalidArgument(
                f"env: {key[:64]!r}: a VPS's SSH sessions read their variables one a line: "
                "a value must not contain a newline (put it in a file instead)"
            )


def _check_shape(req: tpb.SubmitTaskRequest, kind: TaskKind) -> None:
    if kind is TaskKind.VPS:
        _check_vps_shape(req)
    if req.gpus < 0:
        raise InvalidArgument(f"gpus: must not be negative, got {req.gpus}")
    if req.gpus and any(t.gpu_ids for t in req.targets):
        raise InvalidArgument("gpus: give a GPU count or GPU ids in targets, not both")
    for target in req.targets:
        if len(set(target.gpu_ids)) != len(target.gpu_ids):
            # One GPU twice would be counted as two: placed only where two are free, its
            # task's CUDA_VISIBLE_DEVICES naming a device its container does not have.
            raise InvalidArgument(
                f"target {target.hostname}: GPU ids repeat: {list(target.gpu_ids)}"
            )
    if kind is TaskKind.COMMAND and not req.command.strip():
        raise InvalidArgument("command: must not be empty")
    for key in req.env:
        if not ENV_KEY_RE.match(key):
            raise InvalidArgument(f"env: invalid variable name {key!r}")
        if key in task_variables.RESERVED:
            raise InvalidArgument(f"env: {key} is set by HakuRiver for every task it applies to")
    for mount in req.mounts:
        if not mount.host_path.startswith("/") or not mount.container_path.startswith("/"):
            raise InvalidArgument(
                f"mounts: paths must be absolute, got {mount.host_path}:{mount.container_path}"
            )
    _check_mount_points(req.mounts)


def _check_mount_points(mounts: Iterable[task_pb2.Mount]) -> None:
    """Refuse a container path Docker refuses on the node (the task would fail there):
    the root, one of HakuRiver's own mount points, or one of the task's mounts twice;
    compared normalised (``/x/`` is ``/x``)."""
    seen: set[str] = set()
    for mount in mounts:
        point = posixpath.normpath(mount.container_path)
        if point == "/":
            raise InvalidArgument(
                f"mounts: {mount.container_path!r} is the container's root: mount into a "
                "folder of it"
            )
        if point in (SHARED_MOUNT_POINT, LOCAL_TEMP_MOUNT_POINT):
            raise InvalidArgument(
                f"mounts: {point} is HakuRiver's own mount in every task (docs/tasks.md): "
                "mount elsewhere"
            )
        if point in seen:
            raise InvalidArgument(f"mounts: {point} is the container path of two mounts")
        seen.add(point)


def _container(req: tpb.SubmitTaskRequest, kind: TaskKind, view: ClusterView) -> str:
    container = req.container_name or view.default_container
    if container != NULL_CONTAINER:
        return container
    if kind is TaskKind.VPS:
        raise InvalidArgument("container_name: a VPS needs a container environment with sshd")
    if req.mounts or req.privileged:
        raise InvalidArgument(
            "container_name: NULL tasks run on the runner host: --mount and --privileged "
            "do not apply"
        )
    return container


def _within(path: str, roots: tuple[str, ...]) -> bool:
    path = posixpath.normpath(path)
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _check_rights(req: tpb.SubmitTaskRequest, container: str, rights: Rights) -> None:
    """Refuse what only operators may ask for, naming it (PermissionDenied)."""
    if rights.elevated:
        return
    if container == NULL_CONTAINER:
        raise PermissionDenied(
            "container_name: host-process (NULL) tasks run as the runner's user on the node "
            "and need the operator role"
        )
    if req.privileged:
        raise PermissionDenied("privileged: privileged containers need the operator role")
    if req.priority > 0:  # ahead of every user's queued work, as Slurm lets only admins
        raise PermissionDenied(
            f"priority: {req.priority} would put the task ahead of other users' queued tasks; "
            "a user's tasks take priority 0 or lower, raising it needs the operator role"
        )
    roots = tuple(posixpath.normpath(r) for r in rights.mount_roots)
    for mount in req.mounts:
        if not _within(mount.host_path, roots):
            allowed = ", ".join(roots) or "none (auth.user_mount_roots is empty)"
            raise PermissionDenied(
                f"mounts: {mount.host_path} is outside the paths users may mount "
                f"(allowed: {allowed}); operators may mount anywhere"
            )


def _network(
    req: tpb.SubmitTaskRequest, kind: TaskKind, container: str, view: ClusterView
) -> TaskNetwork:
    if req.network == task_pb2.TASK_NETWORK_UNSPECIFIED:
        network = view.default_network
        # A VPS's sshd is reached through the node's loopback; a host process has no
        # container network to choose.
        if kind is TaskKind.VPS or container == NULL_CONTAINER:
            return TaskNetwork.HOST
        return network
    try:
        network = TaskNetwork.from_pb(req.network)
    except ValueError:
        raise InvalidArgument(f"network: unknown network {req.network}") from None
    if network is TaskNetwork.NONE and kind is TaskKind.VPS:
        raise InvalidArgument("network: a VPS needs the host network (sshd is reached through it)")
    if network is TaskNetwork.NONE and container == NULL_CONTAINER:
        raise InvalidArgument("network: a host-process (NULL) task always has the node's network")
    return network


def _check_environment(container: str, view: ClusterView) -> None:
    if container == NULL_CONTAINER or view.has_environment(container):
        return
    # No image can bear it: the rule, not "no runner has image hakuriver/Bad Name:base".
    problem = check_environment_name(container)
    if problem:
        raise InvalidArgument(f"container_name: {problem}")
    available = limits.name_list(sorted(view.environment_names())) or "none"
    raise NotFound(
        f"container_name: environment {container!r} not found: no runner has image "
        f"{image_for(container)} and no tarball exists (available: {available})"
    )


def _placement(target: task_pb2.Target, view: ClusterView) -> Placement:
    node = view.node(target.hostname)
    if node is None:
        known = limits.name_list(sorted(view.node_names())) or "none registered"
        raise NotFound(f"target: unknown host {target.hostname!r} (known: {known})")
    numa = target.numa_node_id if target.HasField("numa_node_id") else None
    if numa is not None and numa not in node.numa_ids:
        raise NotFound(
            f"target: {target.hostname} has no NUMA node {numa} "
            f"(NUMA ids: {sorted(node.numa_ids) or 'none'})"
        )
    missing = no_such_gpus(target.hostname, target.gpu_ids, node.gpu_ids)
    if missing:
        raise NotFound(f"target: {missing}")
    return Placement(target.hostname, numa, tuple(target.gpu_ids))


def admit(req: tpb.SubmitTaskRequest, view: ClusterView, rights: Rights) -> Plan:
    """Check a submission against the rules, the submitter's rights and the cluster; the
    plan, or ApiError."""
    _check_bounds(req)
    kind = _kind(req)
    ssh_key = _ssh_key(req, kind)
    _check_shape(req, kind)
    array = _array(req, kind)
    cores = _cores(req, kind)
    memory = _memory(req)
    container = _container(req, kind, view)
    if container != NULL_CONTAINER and 0 < memory < limits.MIN_MEMORY_BYTES:
        raise InvalidArgument(
            f"memory: at least 6Mi ({limits.MIN_MEMORY_BYTES} bytes; Docker refuses a smaller "
            f"limit), got {req.memory!r} ({memory} bytes)"
        )
    _check_rights(req, container, rights)
    network = _network(req, kind, container, view)
    placements = [_placement(t, view) for t in req.targets] or [Placement()]
    _check_environment(container, view)
    for placement in placements:
        request = Request(
            0,
            cores,
            memory,
            target=placement.hostname,
            numa_node=placement.numa_node,
            gpu_ids=placement.gpu_ids,
            gpu_count=req.gpus,
        )
        problem = view.never_fits(request)
        if problem:
            raise InvalidArgument(problem)
    return Plan(
        kind=kind,
        command="" if kind is TaskKind.VPS else req.command,
        arguments=list(req.arguments),
        env=dict(req.env),
        cores=cores,
        memory_bytes=memory,
        gpu_count=req.gpus,
        container=container,
        privileged=container != NULL_CONTAINER and (req.privileged or view.tasks_privileged),
        mounts=[
            {"host_path": m.host_path, "container_path": m.container_path, "read_only": m.read_only}
            for m in req.mounts
        ],
        priority=req.priority,
        ssh_public_key=ssh_key,
        placements=placements,
        network=network,
        array=array,
        array_max_running=req.array.max_running,
    )
