"""Counts in messages agree with their nouns: the Host's start said "loaded 1 nodes"."""

from __future__ import annotations

from hakuriver_common.wording import counted


def test_one_is_singular_and_every_other_count_plural() -> None:
    assert [counted(n, "node") for n in (0, 1, 2)] == ["0 nodes", "1 node", "2 nodes"]
