"""Container environments: prepare on the Host, distribute by tarball, no registry."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from tests.e2e.harness import (
    BASE_ENV,
    ProcessCluster,
    own_default_environment,
    running_cluster,
    wait_for,
)

pytestmark = pytest.mark.docker
BASE_IMAGE = f"hakuriver/{BASE_ENV}:base"


@pytest.fixture
def env_name(cluster: ProcessCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh environment name; its container, images and tarballs are removed afterwards."""
    name = re.sub(r"[^a-z0-9]+", "-", f"e{cluster.tag}-{request.node.name[5:25]}".lower())
    name = name.strip("-")  # an environment name starts and ends with a letter or digit
    yield name
    cluster.cli("docker", "delete-container", name)
    cluster.cli("docker", "delete-tar", name)
    for image in cluster.docker.images.list(name=f"hakuriver/{name}"):
        for tag in image.tags:
            cluster.docker.images.remove(tag, force=True)


def _ok(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 0, result.stdout + result.stderr
    return str(result.stdout)


def _tar_dir(cluster: ProcessCluster) -> Path:
    return cluster.shared_dir / "hakuriver-containers"


def _forget_image(cluster: ProcessCluster, name: str) -> None:
    """Make the shared Docker daemon look like a Runner that never saw the environment."""
    cluster.docker.images.remove(f"hakuriver/{name}:base", force=True)


def _loads_since(cluster: ProcessCluster, since: float, name: str) -> int:
    """Loads of environment ``name``'s image (the daemon is shared: the Runners of an
    earlier test may load theirs within the same second)."""
    events = cluster.docker.events(
        since=int(since),
        until=int(time.time()) + 1,
        filters={"type": "image", "event": "load"},
        decode=True,
    )
    return sum(1 for e in events if e["Actor"]["Attributes"].get("hakuriver.env") == name)


def test_prepare_on_host_then_every_runner_gets_it(cluster: ProcessCluster, env_name: str) -> None:
    _ok(cluster.cli("docker", "create-container", BASE_IMAGE, env_name))
    listed = json.loads(_ok(cluster.cli("docker", "list-containers", "--json")))
    assert [c["status"] for c in listed if c["name"] == env_name] == ["running"]
    shell = cluster.cli(
        "docker-shell", env_name, "--", "sh", "-c", "echo prepared > /marker; echo e >&2; exit 3"
    )
    assert shell.returncode == 3 and shell.stderr == "e\n"
    # Its output cut short (`| head`): no traceback, the session ends.
    tool = " ".join(shlex.quote(a) for a in cluster.cli_argv("docker-shell"))
    piped = subprocess.run(
        ["bash", "-c", f"{tool} {env_name} -- sh -c 'yes | head -c 5000000' | head -c 4"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HAKURIVER_CONFIG": str(cluster.config_path)},
    )
    assert (piped.stdout, piped.stderr) == ("y\ny\n", ""), piped.stderr
    first = json.loads(_ok(cluster.cli("docker", "create-tar", env_name, "--json")))
    first_image = cluster.docker.images.get(f"hakuriver/{env_name}:base").id
    second = json.loads(_ok(cluster.cli("docker", "create-tar", env_name, "--json")))
    assert int(second["timestamp"]) > int(first["timestamp"])
    with pytest.raises(docker.errors.ImageNotFound):  # no nameless image left per create-tar
        cluster.docker.images.get(first_image)
    files = sorted(p.name for p in _tar_dir(cluster).iterdir() if p.name.startswith(env_name))
    assert files == [f"{env_name}-{second['timestamp']}.tar"], (
        "older tarball kept or partial file left"
    )

    _forget_image(cluster, env_name)
    runner = cluster.runner_names[0]
    task = cluster.submit(
        ["cat", "/marker"], container_name=env_name, targets=[task_pb2.Target(hostname=runner)]
    )
    final = cluster.wait_final(task.task_id)
    assert final.status == task_pb2.TASK_STATUS_COMPLETED, final.error_message
    assert cluster.read_log(task.task_id) == b"prepared\n"
    events = cluster.tasks.GetTask(tpb.GetTaskRequest(task_id=task.task_id), timeout=5).events
    assert any(f"loading environment {env_name}" in e.detail for e in events)

    def loaded_on() -> list[str]:
        tars = json.loads(_ok(cluster.cli("docker", "list-tars", "--json")))
        return [r for t in tars if t["name"] == env_name for r in t.get("loaded_on", [])]

    wait_for(lambda: runner in loaded_on(), what="list-tars to show the runner")


def test_two_tasks_at_once_trigger_one_load(cluster: ProcessCluster, env_name: str) -> None:
    _ok(cluster.cli("docker", "create-container", BASE_IMAGE, env_name))
    _ok(cluster.cli("docker", "create-tar", env_name))
    _forget_image(cluster, env_name)
    since = time.time() - 1
    target = [task_pb2.Target(hostname=cluster.runner_names[0])]
    tasks = [cluster.submit(["true"], container_name=env_name, targets=target) for _ in range(2)]
    for task in tasks:
        assert cluster.wait_final(task.task_id).status == task_pb2.TASK_STATUS_COMPLETED
    assert _loads_since(cluster, since, env_name) == 1


def test_truncated_tarball_fails_clearly_and_keeps_the_old_image(
    cluster: ProcessCluster, env_name: str
) -> None:
    _ok(cluster.cli("docker", "create-container", BASE_IMAGE, env_name))
    good = json.loads(_ok(cluster.cli("docker", "create-tar", env_name, "--json")))
    old_image = cluster.docker.images.get(f"hakuriver/{env_name}:base").id
    data = Path(good["path"]).read_bytes()
    broken = _tar_dir(cluster) / f"{env_name}-{int(good['timestamp']) + 10}.tar"
    broken.write_bytes(data[: len(data) // 3])
    target = [task_pb2.Target(hostname=cluster.runner_names[0])]
    failed = cluster.wait_final(
        cluster.submit(["true"], container_name=env_name, targets=target).task_id
    )
    assert failed.status == task_pb2.TASK_STATUS_FAILED
    assert f"environment '{env_name}': cannot load {broken}" in failed.error_message
    assert "previously loaded image is kept" in failed.error_message
    assert cluster.docker.images.get(f"hakuriver/{env_name}:base").id == old_image
    broken.unlink()
    ok = cluster.wait_final(
        cluster.submit(["true"], container_name=env_name, targets=target).task_id
    )
    assert ok.status == task_pb2.TASK_STATUS_COMPLETED


def test_newer_load_removes_the_old_image_unless_a_task_uses_it(
    cluster: ProcessCluster, env_name: str
) -> None:
    runner = [task_pb2.Target(hostname=cluster.runner_names[0])]
    _ok(cluster.cli("docker", "create-container", BASE_IMAGE, env_name))
    _ok(cluster.cli("docker", "create-tar", env_name))
    in_use = cluster.docker.images.get(f"hakuriver/{env_name}:base").id
    holder = cluster.submit(["sleep", "600"], container_name=env_name, targets=runner)
    cluster.wait_status(holder.task_id, {task_pb2.TASK_STATUS_RUNNING})
    _ok(cluster.cli("docker", "create-tar", env_name))
    # Put the older image back under the tag, as on a Runner that has only loaded the first.
    cluster.docker.images.get(in_use).tag(f"hakuriver/{env_name}", "base")
    cluster.wait_final(cluster.submit(["true"], container_name=env_name, targets=runner).task_id)
    cluster.docker.images.get(in_use)  # still there: a running task uses it
    cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=holder.task_id), timeout=30)
    cluster.wait_final(holder.task_id)
    _until_no_container_uses(cluster, in_use)

    unused = cluster.docker.images.get(f"hakuriver/{env_name}:base").id
    # A second name keeps the Host (same daemon here) from removing it on create-tar.
    cluster.docker.images.get(unused).tag(f"held-{env_name}", "test")
    _ok(cluster.cli("docker", "create-tar", env_name))
    cluster.docker.images.get(unused).tag(f"hakuriver/{env_name}", "base")
    cluster.docker.images.remove(f"held-{env_name}:test")
    cluster.wait_final(cluster.submit(["true"], container_name=env_name, targets=runner).task_id)
    with pytest.raises(docker.errors.ImageNotFound):
        cluster.docker.images.get(unused)
    # The image the task held, nameless since, went at the next replacement: it was not
    # left on the disk for good.
    with pytest.raises(docker.errors.ImageNotFound):
        cluster.docker.images.get(in_use)


def _until_no_container_uses(cluster: ProcessCluster, image_id: str) -> None:
    deadline = time.monotonic() + 30
    while cluster.docker.api.containers(all=True, filters={"ancestor": image_id}):
        assert time.monotonic() < deadline, f"a container still uses {image_id}"
        time.sleep(0.2)


def test_import_rootfs_creates_an_environment(
    cluster: ProcessCluster, env_name: str, tmp_path: Path
) -> None:
    exported = cluster.docker.containers.create(BASE_IMAGE, ["true"])
    rootfs = tmp_path / "rootfs.tar"
    try:
        with rootfs.open("wb") as out:
            for chunk in exported.export():
                out.write(chunk)
    finally:
        exported.remove()
    tarball = json.loads(
        _ok(cluster.cli("docker", "import-rootfs", str(rootfs), env_name, "--json"))
    )
    assert Path(tarball["path"]).is_file()
    _forget_image(cluster, env_name)
    task = cluster.submit(["sh", "-c", "echo imported"], container_name=env_name)
    assert cluster.wait_final(task.task_id).status == task_pb2.TASK_STATUS_COMPLETED
    assert cluster.read_log(task.task_id) == b"imported\n"
    bad = tmp_path / "not-a-tar"
    bad.write_bytes(b"garbage" * 100)
    refused = cluster.cli("docker", "import-rootfs", str(bad), env_name)
    assert refused.returncode == 1 and "could not import" in refused.stderr
    # What `docker export gone | hakuriver.docker import-rootfs - NAME` sends: nothing. It
    # replaced the environment with an empty image and removed its good tarball.
    empty = tmp_path / "empty"
    empty.touch()
    refused = cluster.cli("docker", "import-rootfs", str(empty), env_name)
    assert refused.returncode == 1 and "root filesystem is empty" in refused.stderr
    assert Path(tarball["path"]).is_file()


def test_container_lifecycle_and_errors(cluster: ProcessCluster, env_name: str) -> None:
    _ok(cluster.cli("docker", "create-container", BASE_IMAGE, env_name))
    again = cluster.cli("docker", "create-container", BASE_IMAGE, env_name)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert "exited" in _ok(cluster.cli("docker", "stop-container", env_name))
    stopped_shell = cluster.cli("docker-shell", env_name, "--", "true")
    assert stopped_shell.returncode == 1 and "start it first" in stopped_shell.stderr
    assert "running" in _ok(cluster.cli("docker", "start-container", env_name))
    tarball = json.loads(_ok(cluster.cli("docker", "create-tar", env_name, "--json")))
    removed = json.loads(_ok(cluster.cli("docker", "delete-tar", env_name, "--json")))
    assert removed == {"removed": [tarball["path"]]}
    deleted = _ok(cluster.cli("docker", "delete-container", env_name, "--json"))
    assert json.loads(deleted) == {"deleted": env_name}
    cases = [
        (("docker", "create-container", "no/such:image", env_name), "never pulls"),
        (("docker", "create-container", BASE_IMAGE, "bad name!"), "invalid environment name"),
        (("docker", "create-tar", "nothing-here"), "no environment container 'nothing-here'"),
        (("docker", "delete-tar", "nothing-here"), "no tarball of environment 'nothing-here'"),
        (("docker-shell", "nothing-here", "--", "true"), "no environment container"),
    ]
    for args, message in cases:
        result = cluster.cli(*args)
        assert result.returncode == 1, args
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_a_command_stopped_with_ctrl_c_ends_with_its_children(
    cluster: ProcessCluster, env_name: str
) -> None:
    """`docker-shell NAME -- CMD` (no TTY) stopped with Ctrl-C ended CMD but left what it
    started running in the environment's container (an apt-get holding dpkg's lock)."""
    _ok(cluster.cli("docker", "create-container", BASE_IMAGE, env_name))
    container = cluster.docker.containers.get(f"hakuriver-env-{env_name}")
    marker = "sleep 347"
    env = {**os.environ, "HAKURIVER_CONFIG": str(cluster.config_path)}
    command = f"{marker} & echo started; wait"
    with subprocess.Popen(
        [*cluster.cli_argv("docker-shell"), env_name, "--", "sh", "-c", command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,
    ) as shell:
        assert shell.stdout is not None
        assert shell.stdout.readline() == "started\n"
        os.killpg(shell.pid, signal.SIGINT)
        assert shell.wait(timeout=30) == 130

    def sleep_gone() -> bool:
        return not any(marker in " ".join(p) for p in container.top()["Processes"])

    wait_for(sleep_gone, what=f"'{marker}' ended in the environment's container")


def test_an_image_that_exits_at_once_makes_no_environment(
    cluster: ProcessCluster, env_name: str
) -> None:
    """An image whose ENTRYPOINT ends (so the keep-alive command never runs) is refused with
    its exit code, and leaves no container under the environment's name."""
    image = f"hakuriver-test/exits-{cluster.tag}:1"
    base = cluster.docker.containers.create(BASE_IMAGE, "true")
    try:
        base.commit(*image.split(":"), changes=['ENTRYPOINT ["/bin/false"]'])
    finally:
        base.remove(force=True)
    try:
        result = cluster.cli("docker", "create-container", image, env_name)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "exited at once (exit code 1)" in result.stderr, result.stderr
        assert not cluster.docker.containers.list(all=True, filters={"name": env_name})
    finally:
        cluster.docker.images.remove(image, force=True)


def test_delete_tar_refuses_an_environment_in_use(cluster: ProcessCluster, env_name: str) -> None:
    """As ``docker rmi``: refused in one line, nothing removed, while a task waits for the
    environment; deleted once that task is killed."""
    folder = _tar_dir(cluster)
    folder.mkdir(parents=True, exist_ok=True)
    tarball = folder / f"{env_name}-1700000000.tar"
    tarball.write_bytes(b"never loaded: its task waits on a drained node")
    node = cluster.runner_names[0]
    _ok(cluster.cli("client", "drain", node))
    try:
        task = cluster.submit(
            ["true"], container_name=env_name, targets=[task_pb2.Target(hostname=node)]
        )
        refused = cluster.cli("docker", "delete-tar", env_name)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"is used by 1 unfinished task (1 pending: {task.task_id})" in refused.stderr
        assert "hakuriver.client kill ID" in refused.stderr and tarball.exists()
        _ok(cluster.cli("client", "kill", str(task.task_id)))
        deleted = _ok(cluster.cli("docker", "delete-tar", env_name))
        assert deleted.splitlines() == [f"removed {tarball}"] and not tarball.exists()
    finally:
        _ok(cluster.cli("client", "undrain", node))


def test_first_host_start_creates_the_default_environment(
    docker_ready: None, tmp_path: Path
) -> None:
    with (
        own_default_environment() as extra,
        running_cluster(tmp_path, runner_count=1, extra_config=extra) as c,
    ):
        name = c.client_config.docker.default_container_name
        made = wait_for(
            lambda: [p for p in (c.shared_dir / "hakuriver-containers").glob(f"{name}-*.tar")],
            what="the default environment's tarball",
        )
        assert len(made) == 1
        task = c.submit(["echo", "default"])
        assert c.wait_final(task.task_id).status == task_pb2.TASK_STATUS_COMPLETED
