"""A tarball that cannot be written (full shared storage) is a clear FAILED_PRECONDITION
naming the folder and the cause, and leaves no partial file behind (nor does a Host that
stopped mid-write, once it starts again); tarballs of one name are made one at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import docker
import docker.errors
import pytest
import requests
import urllib3

from hakuriver_host.environments import EnvironmentManager, image_for
from hakuriver_host.errors import FailedPrecondition, Unavailable
from tests.unit.local_cluster import LocalCluster, local_config


class _Image:
    id = "sha256:feed"
    attrs: dict[str, Any] = {"Config": {"Cmd": ["/bin/sh"]}}

    def save(self, named: str) -> Iterator[bytes]:
        yield b"x" * 4096
        yield b"y" * 4096


class _Container:
    status = "running"
    image = _Image()

    def commit(self, **_: object) -> _Image:
        return _Image()


def _manager(tmp_path: Path) -> EnvironmentManager:
    manager = EnvironmentManager(local_config(tmp_path))
    manager._client = SimpleNamespace(
        containers=SimpleNamespace(get=lambda name: _Container()),
        images=SimpleNamespace(get=lambda ref: _Image()),
    )
    return manager


def _fill_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes to a partial tarball fail with ENOSPC (they go to /dev/full)."""
    real_open = Path.open

    def full(path: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if path.name.endswith(".partial") and "w" in mode:
            return real_open(Path("/dev/full"), mode, *args, **kwargs)
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full)


def test_a_full_disk_is_a_clear_failed_precondition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = _manager(tmp_path)
    _fill_disk(monkeypatch)
    with pytest.raises(FailedPrecondition) as raised:
        manager.create_tar("myenv", lambda written: None)
    message = raised.value.message
    assert message.startswith("shared storage: cannot write myenv-")
    assert str(manager.directory) in message
    assert "No space left on device" in message and "free space there" in message
    assert list(manager.directory.iterdir()) == []


class _Images:
    """The environment's image before create-tar (``old``, then nameless once a commit takes
    its tag) and what create-tar does to images."""

    def __init__(self) -> None:
        self.old = SimpleNamespace(id="sha256:old", tags=[], tag=self._tag)
        self.tagged: list[tuple[str, str]] = []
        self.removed: list[str] = []

    def _tag(self, repository: str, tag: str) -> None:
        self.tagged.append((repository, tag))

    def get(self, ref: str) -> Any:
        return self.old if ref in (image_for("myenv"), self.old.id) else _Image()

    def remove(self, ref: str) -> None:
        self.removed.append(ref)


def test_a_tarball_not_written_leaves_the_last_ones_image_named_and_no_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit took the environment's tag from the image of the last tarball: it is
    given back (a Runner on the Host's Docker daemon compares the two), the new commit goes."""
    manager = _manager(tmp_path)
    manager._client.images = images = _Images()
    _fill_disk(monkeypatch)
    with pytest.raises(FailedPrecondition):
        manager.create_tar("myenv", lambda written: None)
    assert images.tagged == [("hakuriver/myenv", "base")]
    assert images.removed == [_Image.id]


def test_a_tarball_written_removes_the_image_its_commit_left_nameless(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    manager._client.images = images = _Images()
    manager.create_tar("myenv", lambda written: None)
    assert images.removed == ["sha256:old"] and images.tagged == []


def test_a_tarball_is_written_when_there_is_room(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    seen: list[int] = []
    made = manager.create_tar("myenv", seen.append)
    assert made.path.read_bytes() == b"x" * 4096 + b"y" * 4096
    assert seen == [4096, 8192]
    assert [p.name for p in manager.directory.iterdir()] == [made.path.name]


class _SlowImage(_Image):
    """An image whose save takes a while, counting the saves under way."""

    saving = 0
    most = 0
    lock = threading.Lock()

    def save(self, named: str) -> Iterator[bytes]:
        with self.lock:
            _SlowImage.saving += 1
            _SlowImage.most = max(_SlowImage.most, _SlowImage.saving)
        try:
            for _ in range(3):
                time.sleep(0.05)
                yield b"z" * 4096
        finally:
            with self.lock:
                _SlowImage.saving -= 1


def test_two_create_tars_of_one_name_make_one_tarball_after_the_other(tmp_path: Path) -> None:
    """Two at once took the same timestamp and wrote into the same partial file, one
    publishing it while the other still wrote (a Runner could load a torn tarball)."""
    manager = _manager(tmp_path)
    manager._client.containers.get = lambda name: SimpleNamespace(
        status="running", image=_Image(), commit=lambda **_: _SlowImage()
    )
    with ThreadPoolExecutor(2) as pool:
        made = list(pool.map(lambda _: manager.create_tar("myenv", lambda n: None), range(2)))
    assert _SlowImage.most == 1
    assert made[0].timestamp != made[1].timestamp
    newest = max(made, key=lambda t: t.timestamp)
    assert sorted(p.name for p in manager.directory.iterdir()) == [newest.path.name]


class _Refusing:
    """An environment container Docker will not start, or a daemon that went away."""

    status = "exited"

    def __init__(self, error: Exception) -> None:
        self.error = error

    def start(self) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "answer", "message"),
    [
        (
            docker.errors.APIError("500", explanation="OCI runtime create failed: no such file"),
            FailedPrecondition,
            "docker: OCI runtime create failed: no such file",
        ),
        (
            requests.exceptions.ConnectionError("Connection refused"),
            Unavailable,
            "Docker is not available on the Host: Connection refused",
        ),
    ],
)
def test_what_docker_refuses_is_a_clear_answer_not_an_internal_error(
    tmp_path: Path, error: Exception, answer: type[Exception], message: str
) -> None:
    manager = _manager(tmp_path)
    manager._client.containers.get = lambda name: _Refusing(error)
    with pytest.raises(answer) as raised:
        manager.start_container("myenv")
    assert raised.value.message == message  # type: ignore[attr-defined]


def _as_docker_py_raises(system_error: OSError) -> Exception:
    """The daemon's socket failing as docker-py reports it: the system's error inside
    urllib3's inside requests', and for a new client a DockerException made from that."""
    try:
        try:
            raise requests.exceptions.ConnectionError(
                urllib3.exceptions.ProtocolError("Connection aborted.", system_error)
            )
        except requests.exceptions.ConnectionError as exc:
            raise docker.errors.DockerException(
                f"Error while fetching server API version: {exc}"
            ) from exc
    except docker.errors.DockerException as made:
        return made


@pytest.mark.parametrize(
    ("system_error", "reason"),
    [
        (FileNotFoundError(2, "No such file or directory"), "No such file or directory"),
        (ConnectionRefusedError(111, "Connection refused"), "Connection refused"),
    ],
)
def test_docker_away_is_said_in_words_not_in_reprs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, system_error: OSError, reason: str
) -> None:
    """With dockerd stopped, the Docker page said "Docker is not available on the Host:
    Error while fetching server API version: ('Connection aborted.',
    FileNotFoundError(2, 'No such file or directory'))"."""
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    said = f"Docker is not available on the Host: unix:///var/run/docker.sock: {reason}"
    made = _as_docker_py_raises(system_error)

    def down(**_: object) -> Any:
        raise made

    monkeypatch.setattr(docker, "from_env", down)
    with pytest.raises(Unavailable) as raised:
        EnvironmentManager(local_config(tmp_path)).start_container("myenv")
    assert raised.value.message == said
    manager = _manager(tmp_path)
    away = made.__cause__
    assert isinstance(away, requests.exceptions.ConnectionError)
    manager._client.containers.get = lambda name: _Refusing(away)
    with pytest.raises(Unavailable) as raised:
        manager.start_container("myenv")
    assert raised.value.message == said


def test_partial_files_left_by_a_host_that_stopped_mid_write_are_swept(tmp_path: Path) -> None:
    manager = _manager(tmp_path)
    manager.directory.mkdir(parents=True)
    left = [".myenv-1700000000.tar.partial", ".import-myenv-12-34.partial"]
    kept = ["myenv-1700000000.tar", "notes.partial"]
    for name in (*left, *kept):
        (manager.directory / name).write_bytes(b"x")
    manager.sweep_partials()
    assert sorted(p.name for p in manager.directory.iterdir()) == sorted(kept)


async def test_a_host_sweeps_them_when_it_starts(local_cluster: LocalCluster) -> None:
    config = local_cluster.config
    folder = config.paths.shared_dir / config.docker.container_dir
    folder.mkdir(parents=True, exist_ok=True)
    stale = folder / ".import-myenv-12-34.partial"
    stale.write_bytes(b"x" * 1024)
    await local_cluster.restart_host(wait_runners=False)
    assert not stale.exists()


def test_an_import_removes_the_image_it_left_nameless(tmp_path: Path) -> None:
    """As create-tar: an import-rootfs of an existing name took its tag; the last image,
    left nameless, went with nothing to show it (one kept per import)."""
    manager = _manager(tmp_path)
    images = _Images()
    imported: list[str] = []

    def get(ref: str) -> Any:
        if ref == image_for("myenv") and imported:
            return _Image()
        return images.get(ref)

    manager._client.images = SimpleNamespace(get=get, remove=images.remove)
    manager._client.api = SimpleNamespace(
        import_image_from_file=lambda path, **kwargs: imported.append(path)
    )
    upload = tmp_path / "rootfs.tar"
    upload.write_bytes(b"rootfs")
    manager.import_rootfs("myenv", upload, lambda written: None)
    assert imported == [str(upload)] and images.removed == ["sha256:old"]
