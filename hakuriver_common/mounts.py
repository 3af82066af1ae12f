"""The ``HOST_PATH:CONTAINER_PATH[:ro]`` mount syntax of --mount and additional_mounts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the parser is read with the config, at every tool's start: no protobuf
    from hakuriver_common.proto.hakuriver.v1 import task_pb2


# Where every task container has HakuRiver's own mounts (shared_dir/shared_data, and
# local_temp_dir): a task's mount there would be Docker's "Duplicate mount point".
SHARED_MOUNT_POINT = "/shared"
LOCAL_TEMP_MOUNT_POINT = "/local_temp"


@dataclass(frozen=True)
class MountSpec:
    host_path: str
    container_path: str
    read_only: bool = False

    def pb(self) -> task_pb2.Mount:
        from hakuriver_common.proto.hakuriver.v1 import task_pb2

        return task_pb2.Mount(
            host_path=self.host_path, container_path=self.container_path, read_only=self.read_only
        )

    @classmethod
    def from_pb(cls, mount: task_pb2.Mount) -> MountSpec:
        return cls(mount.host_path, mount.container_path, mount.read_only)


def parse_mount(text: str) -> MountSpec:
    parts = text.split(":")
    read_only = False
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        read_only = parts[2] == "ro"
        parts = parts[:2]
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ValueError(f"mount {text!r}: expected HOST_PATH:CONTAINER_PATH[:ro]")
    host_path, container_path = parts
    for label, path in (("host path", host_path), ("container path", container_path)):
        if not path.startswith("/"):
            raise ValueError(f"mount {text!r}: {label} must be absolute")
    return MountSpec(host_path, container_path, read_only)


def mounts_ok(texts: list[str]) -> bool:
    """Whether every text is a mount parse_mount takes (the config's check)."""
    try:
        for text in texts:
            parse_mount(text)
    except ValueError:
        return False
    return True


def format_mount(spec: MountSpec) -> str:
    return f"{spec.host_path}:{spec.container_path}{':ro' if spec.read_only else ''}"
