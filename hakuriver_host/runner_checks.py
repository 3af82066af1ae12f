"""What a Runner may claim: its registration, heartbeats and output chunks checked against
the wire bounds (hakuriver_common.limits) before the Host believes or keeps any of it.

A Runner is authenticated, but not trusted with the Host's memory: a claimed core count
becomes a tuple of core ids, advertised environments go into every error message that
lists them, health samples are kept as history. Each check raises InvalidArgument naming
the field and the limit; the Runner's stream then ends with that status.
"""

from __future__ import annotations

import math

from google.protobuf.message import Message

from hakuriver_common import limits
from hakuriver_common.environments import check_environment_name
from hakuriver_common.proto.hakuriver.v1 import node_pb2, runner_service_pb2 as rpb
from hakuriver_common.timestamps import check_timestamp
from hakuriver_host.errors import InvalidArgument, between

MAX_GPU_TEXT = 256


def check_hostname(hostname: str) -> None:
    problem = limits.runner_name_problem(hostname)
    if problem is not None:
        raise InvalidArgument(f"register: hostname {problem}")


def _count(field: str, count: int, limit: int) -> None:
    if count > limit:
        raise InvalidArgument(f"{field}: at most {limit} allowed, got {count}")


def _gpus(field: str, gpus: list[node_pb2.Gpu]) -> None:
    _count(field, len(gpus), limits.MAX_RUNNER_GPUS)
    for gpu in gpus:
        between(f"{field}.index", gpu.index, 0, limits.MAX_RUNNER_GPUS - 1)
        if len(gpu.name) > MAX_GPU_TEXT or len(gpu.uuid) > MAX_GPU_TEXT:
            raise InvalidArgument(f"{field}: name and uuid of at most {MAX_GPU_TEXT} characters")


def _environments(field: str, names: list[str]) -> None:
    _count(field, len(names), limits.MAX_ENVIRONMENTS)
    for name in names:
        problem = check_environment_name(name)
        if problem:
            raise InvalidArgument(f"{field}: {problem[:200]}")


def check_register(reg: rpb.RegisterRunner) -> None:
    check_hostname(reg.hostname)
    between("register.total_cores", reg.total_cores, 1, limits.MAX_RUNNER_CORES)
    between(
        "register.total_memory_bytes", reg.total_memory_bytes, 0, limits.MAX_RUNNER_MEMORY_BYTES
    )
    _count("register.numa_nodes", len(reg.numa_nodes), limits.MAX_NUMA_NODES)
    cpus: set[int] = set()
    for numa in reg.numa_nodes:
        between("register.numa_nodes.id", numa.id, 0, limits.MAX_NUMA_NODES - 1)
        between(
            "register.numa_nodes.memory_bytes",
            numa.memory_bytes,
            0,
            limits.MAX_RUNNER_MEMORY_BYTES,
        )
        _count("register.numa_nodes.cpus", len(cpus) + len(numa.cpus), limits.MAX_RUNNER_CORES)
        for cpu in numa.cpus:
            between("register.numa_nodes.cpus", cpu, 0, limits.MAX_CPU_ID)
        cpus.update(numa.cpus)
    _gpus("register.gpus", list(reg.gpus))
    _environments("register.environments", list(reg.environments))
    _count("register.known_task_ids", len(reg.known_task_ids), limits.MAX_KNOWN_TASK_IDS)
    if len(reg.instance_id) > limits.MAX_INSTANCE_ID_CHARS:
        raise InvalidArgument(
            f"register.instance_id: at most {limits.MAX_INSTANCE_ID_CHARS} characters, "
            f"got {len(reg.instance_id)}"
        )


def _doubles(message_type: type[Message]) -> tuple[str, ...]:
    return tuple(f.name for f in message_type.DESCRIPTOR.fields if f.type == f.TYPE_DOUBLE)


# A reading's numbers, by name: every heartbeat checks them (ListFields is slower).
_HEALTH_DOUBLES = _doubles(node_pb2.Health)
_GPU_DOUBLES = _doubles(node_pb2.Gpu)


def _finite(field: str, reading: Message, names: tuple[str, ...]) -> None:
    """Every number of a reading is finite: a NaN or infinite one, kept in the history, made
    every `hakuriver.client health` end in a traceback drawing its trend."""
    for name in names:
        value = getattr(reading, name)
        if not math.isfinite(value):
            raise InvalidArgument(f"{field}.{name}: must be a number, got {value}")


def check_heartbeat(beat: rpb.Heartbeat) -> None:
    """What every heartbeat is checked for; done at each one, so done cheaply: a part the
    sample lacks (GPUs, environments) costs nothing."""
    health = beat.health
    size = health.ByteSize()
    if size > limits.MAX_HEALTH_BYTES:
        raise InvalidArgument(
            f"heartbeat.health: at most {limits.MAX_HEALTH_BYTES} bytes, got {size}"
        )
    gpus = list(health.gpus)
    if gpus:
        _gpus("heartbeat.health.gpus", gpus)
    _finite("heartbeat.health", health, _HEALTH_DOUBLES)
    for gpu in gpus:
        _finite("heartbeat.health.gpus", gpu, _GPU_DOUBLES)
    try:  # a time past year 9999, kept, made every `health --json` end in a traceback
        check_timestamp(health, "sampled_at")
    except ValueError as exc:
        raise InvalidArgument(f"heartbeat.health.{exc}") from None
    if beat.environments:
        _environments("heartbeat.environments", list(beat.environments))
    _count("heartbeat.loaded", len(beat.loaded), limits.MAX_ENVIRONMENTS)


def check_batch(batch: rpb.TaskStateBatch) -> None:
    _count("task_states.reports", len(batch.reports), limits.MAX_BATCH_MESSAGES)


def check_chunk(chunk: rpb.LogChunk) -> None:
    _count("log_chunk.data", len(chunk.data), limits.MAX_LOG_CHUNK_BYTES)
    between("log_chunk.offset", chunk.offset, 0, limits.MAX_LOG_OFFSET - len(chunk.data))
