"""The lint step's ``buf breaking`` against the released API image (protos-released/): the
protos as they are pass, and a change that would break a client of that release (a field
removed, a field's type changed, an RPC removed) fails it, naming what broke."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).with_name("buf")
TASK_PROTO = Path("protos/hakuriver/v1/task.proto")
SERVICE_PROTO = Path("protos/hakuriver/v1/task_service.proto")


def released() -> Path:
    images = sorted(
        (ROOT / "protos-released").glob("hakuriver-*.binpb"),
        key=lambda p: tuple(int(x) for x in p.name[len("hakuriver-") : -len(".binpb")].split(".")),
    )
    assert images, "no released API image"
    return images[-1]


def breaking(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(released())],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """The protos and buf's config, to change without touching the checkout."""
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    for name in ("buf.yaml", "buf.gen.yaml"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def test_the_protos_as_they_are_keep_the_released_api(tree: Path) -> None:
    done = breaking(tree)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("path", "old", "new", "named"),
    [
        (TASK_PROTO, "string command = ", "reserved 999;\n  string command_line = ", "command"),
        (TASK_PROTO, "int32 required_cores = ", "string required_cores = ", "required_cores"),
        (
            SERVICE_PROTO,
            "rpc KillTask(KillTaskRequest) returns (KillTaskResponse);",
            "",
            "KillTask",
        ),
    ],
)
def test_a_change_that_breaks_clients_fails(
    tree: Path, path: Path, old: str, new: str, named: str
) -> None:
    proto = tree / path
    text = proto.read_text()
    assert old in text, old
    proto.write_text(text.replace(old, new, 1))
    done = breaking(tree)
    assert done.returncode != 0
    assert named in done.stdout + done.stderr
