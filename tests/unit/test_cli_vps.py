"""`hakuriver.vps` on the client side: a key file it cannot use (named or the default) ends
the tool with one line that says why (exit 2), before anything is sent; `status` says what
it lists; `kill` and `command` act on VPS tasks only."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from hakuriver_cli import vps
from hakuriver_cli.grpc_link import GrpcLink
from hakuriver_cli.link import task_stub
from hakuriver_common import commands as cli
from hakuriver_common.channels import open_channel
from hakuriver_common.proto.hakuriver.v1 import task_pb2
from hakuriver_common.statuses import ACTIVE_STATUSES, TaskStatus
from tests.fake_runner import HOLD
from tests.unit.local_cluster import LocalCluster, status_of
from tests.unit.test_ssh_tickets import SSH_KEY


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: p.write_bytes(b"\x7fELF\xd0"), "not a text file (give the .pub file)"),
        (lambda p: p.mkdir(), "Is a directory"),
        (lambda p: None, "no such file"),
    ],
    ids=["binary", "directory", "missing"],
)
def test_an_unusable_key_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], object], why: str
) -> None:
    path = tmp_path / "key.pub"
    make(path)
    with pytest.raises(cli.Exit) as ended:
        vps.public_key("", path)
    assert ended.value.exit_code == 2
    assert capsys.readouterr().err == f"error: --public-key-file {path}: {why}\n"


def test_an_unusable_default_key_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """~/.ssh/id_ed25519.pub, read when no key is named, fails as a named file does."""
    default = tmp_path / "id_ed25519.pub"
    default.write_bytes(b"\x7fELF\xd0")
    monkeypatch.setattr(vps, "DEFAULT_KEYS", (default,))
    with pytest.raises(cli.Exit) as ended:
        vps.public_key("", None)
    assert ended.value.exit_code == 2
    assert capsys.readouterr().err == f"error: {default}: not a text file (give the .pub file)\n"


@pytest.mark.parametrize("how", ["file", "string"])
def test_a_private_key_is_refused_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    """`--public-key-file ~/.ssh/id_ed25519` (the private half, a slip of the tab key) ends
    the tool: the key would otherwise travel to the Host, which refuses it only then."""
    private = (
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n"
        "-----END OPENSSH PRIVATE KEY-----\n"
    )
    path = tmp_path / "id_ed25519"
    path.write_text(private)
    with pytest.raises(cli.Exit) as ended:
        if how == "file":
            vps.public_key("", path)
        else:
            vps.public_key(private, None)
    assert ended.value.exit_code == 2
    name = f"--public-key-file {path}" if how == "file" else "--public-key-string"
    assert capsys.readouterr().err.startswith(f"error: {name}: this is a private key")


def test_a_key_file_is_read_and_stripped(tmp_path: Path) -> None:
    path = tmp_path / "id.pub"
    path.write_text("ssh-ed25519 AAAA me@there\n")
    assert vps.public_key("", path) == "ssh-ed25519 AAAA me@there"


def test_a_key_file_under_home_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shell leaves the ~ of ``--public-key-file=~/.ssh/lab.pub`` as it is: it said
    `no such file`."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "lab.pub").write_text("ssh-ed25519 AAAA me@there\n")
    assert vps.public_key("", Path("~/lab.pub")) == "ssh-ed25519 AAAA me@there"


def test_status_help_names_every_status_it_lists() -> None:
    assert vps.status.__doc__ is not None
    for status in ACTIVE_STATUSES:
        assert status.value in vps.status.__doc__


def test_status_rows_name_the_owner() -> None:
    """An operator's `vps status` lists everybody's VPS tasks: each row says whose."""
    row = vps._vps_row(task_pb2.Task(task_id=7, owner="alice"))
    assert len(row) == len(vps.VPS_COLUMNS)
    assert row[vps.VPS_COLUMNS.index("owner")] == "alice"


async def test_kill_and_pause_refuse_a_command_task_and_leave_it_running(
    local_cluster: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hakuriver.vps kill ID` with a command task's id (a typo, a pasted wrong id) says so and
    does nothing to it; the VPS itself is killed as before."""
    runner = await local_cluster.add_runner("a", cores=4, answer=HOLD)
    [running] = await local_cluster.submit_running()
    command_task = running.task_id
    vps_pb = await local_cluster.submit("", kind=task_pb2.TASK_KIND_VPS, ssh_public_key=SSH_KEY)
    vps_task = vps_pb.task_id
    link = GrpcLink(open_channel(local_cluster.config, local_cluster.admin_token))

    def control(task_id: int, verb: str) -> task_pb2.Task:
        return vps.control_vps(task_stub(link), str(task_id), verb)

    try:
        for verb, again in (("kill", "kill {}"), ("pause", "command {} pause")):
            with pytest.raises(cli.Exit) as ended:
                await asyncio.to_thread(control, command_task, verb)
            assert ended.value.exit_code == 1
            assert capsys.readouterr().err == (
                f"error: task {command_task} is a command task, not a VPS; for any task or batch: "
                f"hakuriver.client {again.format(command_task)} (FAILED_PRECONDITION)\n"
            )
        assert status_of(await local_cluster.get(command_task)) is TaskStatus.RUNNING
        assert not [c for c in runner.commands if c[1] == command_task]
        killed = await asyncio.to_thread(control, vps_task, "kill")
        assert status_of(killed) is TaskStatus.KILLED
        with pytest.raises(cli.Exit):
            await asyncio.to_thread(control, 1 + max(command_task, vps_task) * 2, "kill")
        assert capsys.readouterr().err.endswith("(NOT_FOUND)\n")
    finally:
        link.close()
