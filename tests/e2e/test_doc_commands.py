"""Every shell command of README.md and docs/, run as the docs show it against a real
one-machine cluster (a Host, a Runner named after this machine, real containers), as the
cluster's admin with the config in ~/.hakuriver: its exit code and a key part of its output
are checked against tests/e2e/doc_commands.toml. Blocks marked norun are reported skipped
with their reason. See docs/development.md, "Commands in the docs"."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker.errors
import pytest

from hakuriver_common.proto.hakuriver.v1 import task_pb2
from tests.doc_commands import NORUN_REASONS, ROOT, Command, Expectation, fill, pair
from tests.e2e.harness import FINAL, ProcessCluster, without_hakuriver_variables

pytestmark = pytest.mark.docker

RUNNING = {task_pb2.TASK_STATUS_RUNNING}
COMMAND_SECONDS = 120
# A line that only sets a shell variable (VAR=value, no command after it).
ASSIGNMENT = re.compile(r"""^[A-Za-z_][A-Za-z0-9_]*=("[^"]*"|'[^']*'|\$\([^)]*\)|\S)*$""")
PAIRED, _ = pair()


class Reader:
    """The docs' reader: a home with the cluster's config and an SSH key, a folder per page
    where its ``export`` and ``cd`` lines hold for its later commands, and the things its
    placeholders stand for."""

    def __init__(self, cluster: ProcessCluster, root: Path, sshd_env: str) -> None:
        self.cluster = cluster
        self.root = root
        self.sshd_env = sshd_env
        self.home = root / "home"
        (self.home / ".hakuriver").mkdir(parents=True)
        (self.home / ".hakuriver" / "config.toml").symlink_to(cluster.config_path)
        (self.home / ".hakuriver" / "credentials").symlink_to(cluster.credentials)
        (self.home / ".hakuriver" / "tls").mkdir()
        (self.home / ".hakuriver" / "tls" / "ca.pem").symlink_to(cluster.client_config.tls.ca_file)
        (self.home / ".ssh").mkdir(mode=0o700)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.home / ".ssh/id_ed25519"],
            check=True,
        )
        venv_bin = str(Path(sys.executable).parent)
        self.env = without_hakuriver_variables()
        self.env.update(
            HOME=str(self.home),
            PATH=f"{venv_bin}{os.pathsep}{self.env['PATH']}",
            COLUMNS="200",
            LC_ALL="C.UTF-8",
        )
        # The reader's key in an agent: ssh looks for keys in the home of the passwd entry,
        # not in $HOME.
        agent = subprocess.run(
            ["ssh-agent", "-a", str(root / "agent.sock")],
            capture_output=True,
            text=True,
            check=True,
        )
        self.agent_pid = int(re.search(r"SSH_AGENT_PID=(\d+)", agent.stdout).group(1))  # type: ignore[union-attr]
        self.env["SSH_AUTH_SOCK"] = str(root / "agent.sock")
        self.shell("ssh-add -q ~/.ssh/id_ed25519", root)
        self.pages: dict[str, tuple[Path, list[str]]] = {}
        self.kept: dict[str, str] = {}
        self.fresh: list[str] = []

    def page(self, file: str) -> tuple[Path, list[str]]:
        """A page's folder (a checkout's look: .quickstart/config.toml, .venv) and the lines
        of the page that set its shell up."""
        if file not in self.pages:
            folder = self.root / "pages" / file.replace("/", "-")
            (folder / ".quickstart").mkdir(parents=True)
            (folder / ".quickstart" / "config.toml").symlink_to(self.cluster.config_path)
            (folder / ".quickstart" / "credentials").symlink_to(self.cluster.credentials)
            (folder / ".venv").symlink_to(ROOT / ".venv")
            self.pages[file] = (folder, [])
        return self.pages[file]

    def shell(self, line: str, cwd: Path, codes: tuple[int, ...] = (0,)) -> str:
        done = subprocess.run(
            ["bash", "-c", line],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode in codes, f"{line}: {done.stdout}{done.stderr}"
        return done.stdout

    def _submit(self, *args: str, codes: tuple[int, ...] = (0,)) -> dict[str, object]:
        line = f"hakuriver.task submit --json {' '.join(args)}"
        return json.loads(self.shell(line, self.root, codes=codes))

    def value(self, kind: str) -> str:
        """A value of ``kind``; kept for the module, except running tasks and VPS, which
        each command gets fresh (it may kill or pause them)."""
        if kind in self.kept:
            return self.kept[kind]
        if kind == "node":
            made = self.cluster.runner_names[0]
        elif kind == "dashboard":
            made = self.cluster.dashboard_url
        elif kind == "grpc":
            made = f"127.0.0.1:{self.cluster.host_port}"
        elif kind in ("completed", "failed"):
            code = 0 if kind == "completed" else 3
            script = f"'echo output of a docs task; exit {code}'"
            done = self._submit(
                "--wait", "--", "sh", "-c", script, codes=(0,) if code == 0 else (1,)
            )
            made = str(done["tasks"][0]["task_id"])  # type: ignore[index]
        elif kind == "array":
            script = "'echo index $HAKURIVER_ARRAY_INDEX'"
            made = str(
                self._submit("--array", "0-9", "--wait", "--", "sh", "-c", script)["batch_id"]
            )
        elif kind == "running":
            started = self._submit("--", "sleep", "600")
            made = str(started["tasks"][0]["task_id"])  # type: ignore[index]
            self.cluster.wait_status(int(made), RUNNING | FINAL)
        elif kind == "vps":
            started = json.loads(
                self.shell(f"hakuriver.vps submit --json --container {self.sshd_env}", self.root)
            )
            made = str(started["task_id"])
            self.cluster.wait_status(int(made), RUNNING | FINAL, timeout=60)
        else:
            raise AssertionError(f"unknown kind {kind}")
        if kind in ("running", "vps"):
            self.fresh.append(made)
        else:
            self.kept[kind] = made
        return made

    def end_fresh(self) -> None:
        """Kill the running tasks and VPS made for the last command."""
        for task_id in self.fresh:
            if self.cluster.get(int(task_id)).status not in FINAL:
                self.shell(f"hakuriver.client kill {task_id}", self.root)
        self.fresh.clear()

    def run(self, command: Command, expected: Expectation) -> tuple[int, str]:
        folder, setup = self.page(command.file)
        values = {name: self.value(kind) for name, kind in expected.kinds().items()}
        line = fill(command.run, values)
        if expected.before:
            self.shell(fill(expected.before, values), folder)
        script = "\n".join([*setup, line])
        process = subprocess.Popen(
            ["bash", "-c", script],
            cwd=folder,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            if expected.stop_after is not None:
                try:
                    out, _ = process.communicate(expected.stdin, timeout=expected.stop_after)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGINT)
                    out, _ = process.communicate(timeout=COMMAND_SECONDS)
            else:
                out, _ = process.communicate(expected.stdin, timeout=COMMAND_SECONDS)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if line.startswith(("export ", "cd ")) or ASSIGNMENT.match(line):
            setup.append(line)
        if expected.after:
            self.shell(fill(expected.after, values), folder)
        return process.returncode, out


@pytest.fixture(scope="module")
def reader(
    docker_ready: None, sshd_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Reader]:
    if shutil.which("ssh-keygen") is None:
        pytest.fail("ssh-keygen missing: scripts/test.sh installs openssh-client")
    root = tmp_path_factory.mktemp("docs")
    (root / "cluster").mkdir()
    cluster = ProcessCluster(root / "cluster", runner_count=0)
    # Environment containers are named, not labelled, by cluster: remove the docs' own.
    environments = {"label": "hakuriver.env"}
    before = {c.id for c in cluster.docker.containers.list(all=True, filters=environments)}
    try:
        cluster.start()
        cluster.start_runner(socket.gethostname())
        reader = Reader(cluster, root, sshd_image)
        yield reader
        os.kill(reader.agent_pid, signal.SIGTERM)
    finally:
        # Another cluster on the same Docker may remove its own meanwhile.
        found = cluster.docker.containers.list(all=True, filters=environments, ignore_removed=True)
        for container in found:
            if container.id not in before:
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
        cluster.stop()


@pytest.mark.parametrize(
    ("command", "expected"), PAIRED, ids=[command.where for command, _ in PAIRED]
)
def test_documented_command(reader: Reader, command: Command, expected: Expectation | None) -> None:
    if command.norun:
        pytest.skip(f"norun={command.norun} ({NORUN_REASONS[command.norun]}): {command.run}")
    assert expected is not None, f"{command.where}: no entry in doc_commands.toml"
    try:
        code, out = reader.run(command, expected)
    finally:
        reader.end_fresh()
    shown = f"{command.where}: {command.run}\n--- output ---\n{out[-3000:]}"
    if os.environ.get("DOCS_DUMP"):
        with open(os.environ["DOCS_DUMP"], "a") as dump:
            dump.write(f"=== {command.where} exit {code}: {command.run}\n{out[-1500:]}\n")
    assert code == expected.exit, shown
    assert re.search(expected.output, out, re.MULTILINE), f"no /{expected.output}/ in\n{shown}"
