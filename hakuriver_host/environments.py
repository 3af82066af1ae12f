"""Container environments on the Host: persistent containers and their tarballs.

Blocking docker-py and file work; the servicer runs it off the event loop. Tarballs are
written to a hidden temporary file in the same folder, fsynced and renamed, so a Runner
never sees a half-written one; only then are older tarballs of the environment removed.
docker-py (with requests, ~8 MB) is imported by the calls that use Docker, not with this
module: a Host whose default environment has its tarball may never need it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hakuriver_common.config import Config
from hakuriver_common.docker_errors import unreachable
from hakuriver_common.environments import (
    IMAGE_PREFIX,
    IMAGE_TAG,
    TIMESTAMP_LABEL,
    ReplacedImages,
    TarballFile,
    check_environment_name,
    image_for,
    list_tarballs,
    tarball_path,
)
from hakuriver_host.environment_shell import ShellProcess
from hakuriver_host.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

log = logging.getLogger(__name__)

ENV_LABEL = "hakuriver.env"
# An environment container's image, as asked for at its creation.
IMAGE_LABEL = "hakuriver.env_image"
KEEP_ALIVE = ["tail", "-f", "/dev/null"]
# How long a started environment container is watched for an exit at once (an image whose
# ENTRYPOINT ends, or cannot run KEEP_ALIVE), and how often.
STAYS_UP_SECONDS = 0.5
STAYS_UP_POLL = 0.05


_R = TypeVar("_R")


def _docker_answers(method: Callable[..., _R]) -> Callable[..., _R]:
    """What Docker refuses, or Docker being away, reaches the caller as one clear line, not
    as an internal error: FAILED_PRECONDITION with Docker's own explanation, UNAVAILABLE
    when the daemon does not answer (it restarted since the Host first used it)."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> _R:
        import docker.errors
        import requests

        try:
            return method(*args, **kwargs)
        except docker.errors.APIError as exc:
            raise FailedPrecondition(f"docker: {exc.explanation or exc}") from None
        except requests.exceptions.ConnectionError as exc:
            raise Unavailable(f"Docker is not available on the Host: {unreachable(exc)}") from None

    return call


def _stays_up(container: Any, image: str) -> None:
    """Watch a started container for STAYS_UP_SECONDS: one that exits at once (an image
    whose ENTRYPOINT ends or replaces the keep-alive command) is FAILED_PRECONDITION with
    its exit code and last output line, not reported "exited" as a success."""
    deadline = time.monotonic() + STAYS_UP_SECONDS
    while True:
        container.reload()
        if container.status in ("exited", "dead"):
            code = container.attrs.get("State", {}).get("ExitCode")
            lines = container.logs(tail=1).decode(errors="replace").strip()
            said = f": {lines[-300:]}" if lines else ""
            raise FailedPrecondition(
                f"{image} exited at once (exit code {code}){said}; an environment's image "
                f"must keep running {' '.join(KEEP_ALIVE)!r} (no ENTRYPOINT that ends)"
            )
        if time.monotonic() >= deadline:
            return
        time.sleep(STAYS_UP_POLL)


class EnvironmentManager:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.directory = config.paths.path("shared_dir") / config.docker.container_dir
        self._client: Any = None
        # One tarball of a name made at a time (create-tar, import-rootfs): two at once took
        # the same timestamp and wrote into the same partial file, one publishing it while
        # the other still wrote.
        self._making: dict[str, threading.Lock] = {}
        self._making_lock = threading.Lock()
        self._replaced = ReplacedImages()

    @property
    def client(self) -> Any:
        if self._client is None:
            import docker.errors

            try:
                self._client = docker.from_env(timeout=300)
            except docker.errors.DockerException as exc:
                raise Unavailable(
                    f"Docker is not available on the Host: {unreachable(exc)}"
                ) from None
        return self._client

    @staticmethod
    def container_name(name: str) -> str:
        return f"hakuriver-env-{name}"

    @staticmethod
    def _valid(name: str) -> str:
        problem = check_environment_name(name)
        if problem:
            raise InvalidArgument(f"name: {problem}")
        return name

    def _container(self, name: str) -> Any:
        import docker.errors

        try:
            return self.client.containers.get(self.container_name(self._valid(name)))
        except docker.errors.NotFound:
            raise NotFound(
                f"name: no environment container {name!r} (create it: "
                f"hakuriver.docker create-container IMAGE {name})"
            ) from None

    def describe(self, container: Any) -> dict[str, str]:
        return {
            "name": container.labels.get(ENV_LABEL, ""),
            "container_name": container.name,
            "image": container.labels.get(IMAGE_LABEL, ""),
            "status": container.status,
        }

    @staticmethod
    def _not_local(image: str) -> NotFound:
        return NotFound(
            f"image: {image!r} is not a local image, and HakuRiver never pulls; load or "
            "import it first (docker load, docker import, or hakuriver.docker import-rootfs)"
        )

    def _local_image(self, image: str) -> Any:
        import docker.errors

        try:
            return self.client.images.get(image)
        except docker.errors.ImageNotFound:
            raise self._not_local(image) from None

    # ----- containers -------------------------------------------------------------------

    @_docker_answers
    def create_container(self, image: str, name: str) -> dict[str, str]:
        import docker.errors

        self._valid(name)
        self._local_image(image)
        try:
            self.client.containers.get(self.container_name(name))
        except docker.errors.NotFound:
            pass
        else:
            raise FailedPrecondition(f"name: environment container {name!r} already exists")
        # create, not run: docker-py's run pulls an image create did not find (gone since
        # it was looked up), and keeps a container that would not start under this name.
        try:
            container = self.client.containers.create(
                image,
                KEEP_ALIVE,
                name=self.container_name(name),
                init=True,
                network_mode="host",
                labels={ENV_LABEL: name, IMAGE_LABEL: image},
            )
        except docker.errors.ImageNotFound:
            raise self._not_local(image) from None
        try:  # a container that does not start, or stay up, is not kept under this name
            try:
                container.start()
            except docker.errors.APIError as exc:
                raise FailedPrecondition(
                    f"docker could not start {image}: {exc.explanation}"
                ) from None
            _stays_up(container, image)
        except FailedPrecondition:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
            raise
        return self.describe(container)

    @_docker_answers
    def list_containers(self) -> list[dict[str, str]]:
        found = self.client.containers.list(
            all=True, ignore_removed=True, filters={"label": ENV_LABEL}
        )
        # A tarball keeps its container's labels, so task containers started from it carry
        # ENV_LABEL too (seen where a Runner shares the Host's Docker): only ours by name.
        ours = [c for c in found if c.name == self.container_name(c.labels.get(ENV_LABEL, ""))]
        return sorted((self.describe(c) for c in ours), key=lambda c: c["name"])

    @_docker_answers
    def start_container(self, name: str) -> dict[str, str]:
        container = self._container(name)
        container.start()
        _stays_up(container, container.labels.get(IMAGE_LABEL, name))
        return self.describe(container)

    @_docker_answers
    def stop_container(self, name: str) -> dict[str, str]:
        container = self._container(name)
        container.stop(timeout=5)
        container.reload()
        return self.describe(container)

    @_docker_answers
    def delete_container(self, name: str) -> None:
        self._container(name).remove(force=True)

    @_docker_answers
    def open_shell(
        self, name: str, command: list[str], tty: bool, env: dict[str, str], rows: int, cols: int
    ) -> ShellProcess:
        """A process in the running environment container, attached for a session."""
        container = self._container(name)
        if container.status != "running":
            raise FailedPrecondition(
                f"name: environment container {name!r} is {container.status}; start it first"
            )
        shell = ShellProcess(self.client.api, container.id, command or ["/bin/sh"], tty, env)
        shell.resize(rows, cols)
        return shell

    # ----- tarballs ---------------------------------------------------------------------

    def _next_timestamp(self, name: str) -> int:
        """Now, but strictly after any existing tarball of ``name`` (newer always wins)."""
        existing = [t.timestamp for t in list_tarballs(self.directory) if t.name == name]
        return max([int(time.time()), *(t + 1 for t in existing)])

    def _save(
        self, image: Any, name: str, timestamp: int, progress: Callable[[int], None]
    ) -> TarballFile:
        self.directory.mkdir(parents=True, exist_ok=True)
        final = tarball_path(self.directory, name, timestamp)
        partial = self.directory / f".{final.name}.partial"
        written = 0
        try:
            with partial.open("wb") as out:
                for chunk in image.save(named=image_for(name)):
                    out.write(chunk)
                    written += len(chunk)
                    progress(written)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, final)
        except OSError as exc:
            if exc.errno is None:  # requests' errors are OSErrors too: Docker's side
                raise
            # Full or failing shared storage: the admin's to fix, not a Host bug.
            raise FailedPrecondition(
                f"shared storage: cannot write {final.name} to {self.directory} after "
                f"{written} bytes: {exc.strerror or exc}; free space there and try again"
            ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        for older in list_tarballs(self.directory):
            if older.name == name and older.timestamp < timestamp:
                older.path.unlink(missing_ok=True)
        log.info("saved environment %s as %s (%d bytes)", name, final, written)
        return TarballFile(name, timestamp, final)

    def _one_at_a_time(self, name: str) -> threading.Lock:
        with self._making_lock:
            return self._making.setdefault(name, threading.Lock())

    @_docker_answers
    def create_tar(self, name: str, progress: Callable[[int], None]) -> TarballFile:
        with self._one_at_a_time(self._valid(name)):
            return self._create_tar(name, progress)

    def _create_tar(self, name: str, progress: Callable[[int], None]) -> TarballFile:
        import docker.errors

        container = self._container(name)
        timestamp = self._next_timestamp(name)
        source = self.client.images.get(container.image.id)
        changes = [f"LABEL {TIMESTAMP_LABEL}={timestamp}"]
        cmd = (source.attrs.get("Config") or {}).get("Cmd")
        if cmd:
            changes.append(f"CMD {json.dumps(cmd)}")
        previous = self._previous_image(name)
        image = container.commit(
            repository=IMAGE_PREFIX + name, tag=IMAGE_TAG, changes=changes, pause=True
        )
        if previous in (None, image.id):
            return self._save(image, name, timestamp, progress)
        try:
            saved = self._save(image, name, timestamp, progress)
        except BaseException:
            # Not saved: the tag goes back to the image of the last tarball (a Runner on
            # this Docker daemon compares the two), and the new commit, nameless, goes.
            with contextlib.suppress(docker.errors.APIError):
                self.client.images.get(previous).tag(IMAGE_PREFIX + name, IMAGE_TAG)
                self.client.images.remove(image.id)
            raise
        self._replaced.drop(self.client, previous)
        return saved

    def _previous_image(self, name: str) -> str | None:
        import docker.errors

        try:
            return str(self.client.images.get(image_for(name)).id)
        except docker.errors.ImageNotFound:
            return None

    def tarballs(self) -> list[TarballFile]:
        return list_tarballs(self.directory)

    def tarballs_of(self, name: str) -> list[TarballFile]:
        """The tarballs of environment ``name``; NotFound when it has none."""
        self._valid(name)
        mine = [tarball for tarball in list_tarballs(self.directory) if tarball.name == name]
        if not mine:
            raise NotFound(f"name: no tarball of environment {name!r}")
        return mine

    def delete_tar(self, name: str) -> list[str]:
        """Remove every tarball of ``name``; their paths (NotFound when it has none). Files
        only: Docker is not asked (nor docker-py loaded)."""
        removed = []
        for tarball in self.tarballs_of(name):
            tarball.path.unlink(missing_ok=True)
            removed.append(str(tarball.path))
        return removed

    def upload_path(self, name: str) -> Path:
        """Where an uploaded root filesystem is kept until imported (hidden, same folder)."""
        self._valid(name)
        self.directory.mkdir(parents=True, exist_ok=True)
        return self.directory / f".import-{name}-{os.getpid()}-{time.time_ns()}.partial"

    def sweep_partials(self) -> None:
        """Remove the hidden partial files (tarballs being saved, root filesystems being
        uploaded) a Host that stopped mid-write left behind; call before serving."""
        if not self.directory.is_dir():
            return
        for stale in self.directory.glob(".*.partial"):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
                log.info("removed %s, left by an unfinished write", stale)

    @_docker_answers
    def import_rootfs(
        self, name: str, upload: Path, progress: Callable[[int], None]
    ) -> TarballFile:
        """A root filesystem tarball becomes image hakuriver/NAME:base and its tarball."""
        with self._one_at_a_time(self._valid(name)):
            return self._import_rootfs(name, upload, progress)

    def _import_rootfs(
        self, name: str, upload: Path, progress: Callable[[int], None]
    ) -> TarballFile:
        import docker.errors

        try:
            if upload.stat().st_size == 0:
                # What a failed `docker export ... |` sends: Docker would import it as an
                # empty image, replacing the environment and removing its good tarballs.
                raise InvalidArgument(
                    f"rootfs: the root filesystem is empty (did the command writing it fail?); "
                    f"environment {name!r} is unchanged"
                )
            timestamp = self._next_timestamp(name)
            previous = self._previous_image(name)
            try:
                self.client.api.import_image_from_file(
                    str(upload),
                    repository=IMAGE_PREFIX + name,
                    tag=IMAGE_TAG,
                    changes=[f"LABEL {TIMESTAMP_LABEL}={timestamp}", 'CMD ["/bin/sh"]'],
                )
            except docker.errors.APIError as exc:
                raise InvalidArgument(
                    f"rootfs: docker could not import it as a root filesystem: {exc.explanation}"
                ) from None
        finally:
            upload.unlink(missing_ok=True)
        saved = self._save(self.client.images.get(image_for(name)), name, timestamp, progress)
        self._replaced.drop(self.client, previous)
        return saved

    def ensure_default(self) -> None:
        """On first start: give the default environment a tarball if it has none."""
        name = self.config.docker.default_container_name
        if any(t.name == name for t in list_tarballs(self.directory)):
            return
        import docker.errors

        base = self.config.docker.initial_base_image
        try:
            self._local_image(base)
            self.client.containers.get(self.container_name(name))
        except docker.errors.NotFound:
            self.create_container(base, name)
        except Unavailable as exc:
            log.warning(
                "default environment %r has no tarball, and it cannot be made from %r now: "
                "%s; once Docker answers, restart the Host to make it",
                name,
                base,
                exc.message,
            )
            return
        except NotFound:
            self._say_default_has_no_tarball(name, base)
            return
        tarball = self.create_tar(name, lambda _: None)
        log.info("created default environment %r from %r: %s", name, base, tarball.path)

    def _say_default_has_no_tarball(self, name: str, base: str) -> None:
        """What to do about a default environment without a tarball or a base image to make
        one from. A local hakuriver/NAME:base (scripts/build-base-image.sh makes one) runs the
        tasks of a Runner that has it as it is: a quickstart's Host warned at every start
        that the environment its tasks ran in had to be made."""
        try:
            self._local_image(image_for(name))
        except NotFound:
            log.warning(
                "default environment %r has no tarball and %r is not a local image; create "
                "one with: hakuriver.docker import-rootfs ROOTFS.tar %s  (or: docker "
                "load/import an image, then hakuriver.docker create-container IMAGE %s && "
                "hakuriver.docker create-tar %s)",
                name,
                base,
                name,
                name,
                name,
            )
            return
        log.info(
            "default environment %r has no tarball: Runners run its tasks in their local "
            "image %s, and fail them where it is missing; to send it to every Runner: "
            "hakuriver.docker create-container %s %s && hakuriver.docker create-tar %s",
            name,
            image_for(name),
            image_for(name),
            name,
            name,
        )
