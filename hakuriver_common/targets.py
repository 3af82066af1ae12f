"""The ``HOST[:NUMA_ID][::GPU_ID,GPU_ID...]`` target syntax, parsed in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from hakuriver_common.proto.hakuriver.v1 import task_pb2

SYNTAX = "HOST[:NUMA_ID][::GPU_ID,GPU_ID...]"


@dataclass(frozen=True)
class TargetSpec:
    hostname: str
    numa_node_id: int | None = None
    gpu_ids: tuple[int, ...] = field(default_factory=tuple)

    def pb(self) -> task_pb2.Target:
        return task_pb2.Target(
            hostname=self.hostname, numa_node_id=self.numa_node_id, gpu_ids=self.gpu_ids
        )


# The API's ids are int32: a larger one could not even be put in a request.
MAX_ID = 2**31 - 1


def _non_negative_int(text: str, what: str, whole: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"target {whole!r}: {what} must be a non-negative integer, got {text!r}")
    value = int(text)
    if value > MAX_ID:
        raise ValueError(f"target {whole!r}: {what} must be at most {MAX_ID}, got {text}")
    return value


def parse_target(text: str) -> TargetSpec:
    """Parse one --target value; ValueError names what is malformed."""
    whole = text
    host_part, sep, gpu_part = text.partition("::")
    gpu_ids: tuple[int, ...] = ()
    if sep:
        items = gpu_part.split(",")
        if not gpu_part or any(not item for item in items):
            raise ValueError(f"target {whole!r}: expected GPU ids after '::', e.g. node1::0,1")
        gpu_ids = tuple(_non_negative_int(item, "GPU id", whole) for item in items)
        if len(set(gpu_ids)) != len(gpu_ids):
            raise ValueError(f"target {whole!r}: GPU ids repeat")
    hostname, colon, numa_part = host_part.partition(":")
    if not hostname:
        raise ValueError(f"target {whole!r}: missing host name (syntax {SYNTAX})")
    numa: int | None = None
    if colon:
        numa = _non_negative_int(numa_part, "NUMA id", whole)
    return TargetSpec(hostname=hostname, numa_node_id=numa, gpu_ids=gpu_ids)


def format_target(spec: TargetSpec) -> str:
    text = spec.hostname
    if spec.numa_node_id is not None:
        text += f":{spec.numa_node_id}"
    if spec.gpu_ids:
        text += "::" + ",".join(str(g) for g in spec.gpu_ids)
    return text
