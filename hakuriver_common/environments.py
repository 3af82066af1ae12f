"""Container environment names and the local images they resolve to."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The environment name that runs a command directly on the runner host, without Docker.
NULL_CONTAINER = "NULL"
IMAGE_PREFIX = "hakuriver/"
IMAGE_TAG = "base"


def image_for(name: str) -> str:
    """The local image an environment resolves to, e.g. hakuriver/base:base."""
    return f"{IMAGE_PREFIX}{name}:{IMAGE_TAG}"


def environment_of(image_tag: str) -> str | None:
    """The environment an image tag belongs to, or None for other images."""
    if image_tag.startswith(IMAGE_PREFIX) and image_tag.endswith(f":{IMAGE_TAG}"):
        return image_tag[len(IMAGE_PREFIX) : -len(IMAGE_TAG) - 1]
    return None


# Label on an environment image: the Unix timestamp of the tarball it was saved as.
TIMESTAMP_LABEL = "hakuriver.tarball_timestamp"
# A name is the path component of its image's repository (hakuriver/NAME), in Docker's grammar:
# lowercase letters and digits, separated by '.', '_', '__' or dashes, at both ends a letter
# or digit; anything else Docker refuses when the environment is committed or loaded.
_NAME_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
NAME_MAX = 64
_TARBALL_RE = re.compile(r"^(?P<name>.+)-(?P<ts>\d+)\.tar$")


@dataclass(frozen=True)
class TarballFile:
    name: str
    timestamp: int
    path: Path


def check_environment_name(name: str) -> str | None:
    """Why ``name`` is not a valid environment name, or None."""
    if name == NULL_CONTAINER:
        return f"{NULL_CONTAINER!r} is reserved for tasks without a container"
    if len(name) > NAME_MAX or not _NAME_RE.match(name):
        return (
            f"invalid environment name {name!r}: use up to {NAME_MAX} lowercase letters and "
            "digits, with '.', '_' or '-' only between them (it names a Docker image)"
        )
    return None


def tarball_path(directory: Path, name: str, timestamp: int) -> Path:
    return directory / f"{name}-{timestamp}.tar"


def list_tarballs(directory: Path) -> list[TarballFile]:
    """Complete tarballs in ``directory`` (temporary files are hidden), oldest first."""
    found: list[TarballFile] = []
    if not directory.is_dir():
        return found
    for path in directory.iterdir():
        match = _TARBALL_RE.match(path.name)
        if match and path.is_file():
            found.append(TarballFile(match["name"], int(match["ts"]), path))
    return sorted(found, key=lambda t: (t.name, t.timestamp))


def newest_tarball(directory: Path, name: str) -> TarballFile | None:
    mine = [t for t in list_tarballs(directory) if t.name == name]
    return mine[-1] if mine else None


class ReplacedImages:
    """An environment's images whose tag moved to a newer one: each removed once it is nameless
    and no container uses it. One that a task still ran from was kept, and stayed on the disk
    for good; it is tried again at the next replacement (of any environment)."""

    def __init__(self) -> None:
        self._kept: set[str] = set()
        self._lock = threading.Lock()

    def drop(self, client: Any, image_id: str | None) -> None:
        """Remove ``image_id`` (None: none) and those kept before, when they can go. Docker
        going away meanwhile keeps them for the next time: the load or commit before this
        succeeded, and must not be reported failed for its clean-up."""
        import docker
        import requests

        with self._lock:
            candidates = self._kept | ({image_id} if image_id else set())
            for candidate in sorted(candidates):
                try:
                    if not client.images.get(candidate).tags:
                        client.images.remove(candidate)
                except docker.errors.ImageNotFound:
                    pass
                except (docker.errors.APIError, requests.exceptions.ConnectionError) as exc:
                    why = getattr(exc, "explanation", None) or exc
                    log.info("kept replaced image %s: %s", candidate, why)
                    self._kept.add(candidate)
                    continue
                self._kept.discard(candidate)
