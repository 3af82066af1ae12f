"""docs/cli.md lists the words `--json` prints for statuses, kinds and networks; they must be
every word hakuriver_common/statuses.py defines (`unknown` was missing for task status)."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

import pytest

from hakuriver_common.statuses import NodeStatus, TaskKind, TaskNetwork, TaskStatus

CLI_DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


@pytest.mark.parametrize(
    ("field", "words"),
    [
        ("task `status`", TaskStatus),
        ("task `kind`", TaskKind),
        ("task `network`", TaskNetwork),
        ("node `status`", NodeStatus),
    ],
)
def test_the_json_words_table_lists_every_word(field: str, words: type[StrEnum]) -> None:
    row = next(line for line in CLI_DOC.read_text().splitlines() if line.startswith(f"| {field}"))
    listed = re.findall(r"`([a-z_]+)`", row.split("|")[2])
    assert sorted(listed) == sorted(word.value for word in words)
