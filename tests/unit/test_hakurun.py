"""hakurun's span expansion (running commands, and hakurun inside a task: tests/e2e)."""

from __future__ import annotations

import pytest

from hakuriver_cli.hakurun import SpanError, expand, expand_arg

BAD_SPANS = ["span:{1..}", "span:{1..5..0}", "span:{1..5..-1}", "span:[]", "span:[a,,b]", "span:x"]


@pytest.mark.parametrize(
    ("arg", "values"),
    [
        ("span:{1..4}", ["1", "2", "3", "4"]),
        ("span:{3..1}", ["3", "2", "1"]),
        ("span:{-1..1}", ["-1", "0", "1"]),
        ("span:{0..10..5}", ["0", "5", "10"]),
        ("span:[a,b, c]", ["a", "b", "c"]),
        ("span:[0.1]", ["0.1"]),
        ("plain", ["plain"]),
        ("--lr=span:[1,2]", ["--lr=span:[1,2]"]),
    ],
)
def test_span_values(arg: str, values: list[str]) -> None:
    assert expand_arg(arg) == values


@pytest.mark.parametrize("arg", BAD_SPANS)
def test_bad_spans_are_refused(arg: str) -> None:
    with pytest.raises(SpanError):
        expand_arg(arg)


def test_cartesian_product_rightmost_fastest() -> None:
    assert expand(["run", "span:{1..2}", "span:[x,y]"]) == [
        ["run", "1", "x"],
        ["run", "1", "y"],
        ["run", "2", "x"],
        ["run", "2", "y"],
    ]
