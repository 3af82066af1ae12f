"""`hakuriver.ssh` puts the options given after the task id before ssh's destination and the
rest after it, reading them as ssh's getopt does."""

from __future__ import annotations

import pytest

from hakuriver_cli.ssh import split_ssh_args


@pytest.mark.parametrize(
    ("args", "options", "remote"),
    [
        (["--", "uname", "-a"], [], ["uname", "-a"]),
        (
            ["-i", "k", "-L", "8888:localhost:8888", "nvidia-smi"],
            ["-i", "k", "-L", "8888:localhost:8888"],
            ["nvidia-smi"],
        ),
        (["-oBatchMode=yes", "-ik", "true"], ["-oBatchMode=yes", "-ik"], ["true"]),
        (["-NL", "8888:localhost:8888"], ["-NL", "8888:localhost:8888"], []),
        (["-qi", "k", "echo", "hi"], ["-qi", "k"], ["echo", "hi"]),
        (["-vt", "top"], ["-vt"], ["top"]),
        (["-v", "--", "-x"], ["-v"], ["-x"]),
    ],
    ids=[
        "command",
        "separate",
        "attached",
        "grouped-forward",
        "grouped-identity",
        "flags",
        "dashdash",
    ],
)
def test_ssh_arguments_split_as_getopt_reads_them(
    args: list[str], options: list[str], remote: list[str]
) -> None:
    assert split_ssh_args(args) == (options, remote)
