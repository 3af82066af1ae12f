"""hakurun's span expansion (running commands, and hakurun inside a task: tests/e2e)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from hakuriver_cli.hakurun import SpanError, array_script, count, expand, expand_arg, main

BAD_SPANS = ["span:{1..}", "span:{1..5..0}", "span:{1..5..-1}", "span:[]", "span:[a,,b]", "span:x"]


@pytest.mark.parametrize(
    ("arg", "values"),
    [
        ("span:{1..4}", ["1", "2", "3", "4"]),
        ("span:{3..1}", ["3", "2", "1"]),
        ("span:{-1..1}", ["-1", "0", "1"]),
        ("span:{0..10..5}", ["0", "5", "10"]),
        ("span:{10..1..-3}", ["10", "7", "4", "1"]),
        ("span:{10..1..-4}", ["10", "6", "2"]),
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


@pytest.mark.parametrize("arg", ["span:{10..1..3}", "span:{1..10..-3}"])
def test_a_step_away_from_the_end_is_refused_in_one_line(
    arg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Python's range would give no values and bash would count the other way: neither is
    what was meant for sure, so the span is refused, naming it (exit 2, nothing run)."""
    with pytest.raises(SystemExit) as refused:
        main(["--dry-run", "echo", arg])
    assert refused.value.code == 2
    start, stop, step = arg[6:-1].split("..")
    assert capsys.readouterr() == (
        "",
        f"error: {arg}: step {step} never reaches {stop} from {start} (see 'hakurun --help')\n",
    )


def test_a_span_the_shell_expanded_says_to_quote_it() -> None:
    # bash turns an unquoted span:{1..4} into span:1 span:2 span:3 span:4.
    says = r"span:1: use .*quoted: .*shell expands.*'span:\{1\.\.4\}'"
    with pytest.raises(SpanError, match=says):
        expand(["train", "--seed", "span:1", "span:2"])


def test_cartesian_product_rightmost_fastest() -> None:
    assert expand(["run", "span:{1..2}", "span:[x,y]"]) == [
        ["run", "1", "x"],
        ["run", "1", "y"],
        ["run", "2", "x"],
        ["run", "2", "y"],
    ]


@pytest.mark.parametrize(
    "argv",
    [["run"], ["run", "span:{1..3}"], ["run", "span:[a,b]", "x", "span:{0..10..5}"]],
)
def test_count_is_the_number_of_combinations(argv: list[str]) -> None:
    assert count(argv) == len(expand(argv))


@pytest.mark.parametrize("step", ["", "..1", "..2", "..3", "..-1", "..-4", "..7"])
@pytest.mark.parametrize(("start", "stop"), [(0, 0), (0, 9), (9, 0), (-5, 6), (3, -3)])
def test_count_of_a_span_is_its_number_of_values(start: int, stop: int, step: str) -> None:
    # Counted without making its values (a huge span: tests/e2e/test_hakurun.py).
    argv = ["run", f"span:{{{start}..{stop}{step}}}"]
    with contextlib.suppress(SpanError):  # a step going the other way
        assert count(argv) == len(expand(argv))


def test_a_span_of_thousands_of_digits_is_refused_as_a_span() -> None:
    with pytest.raises(SpanError, match="more than 100 digits"):
        count(["run", "span:{1.." + "9" * 5000 + "}"])


def test_array_script_grows_with_the_spans_not_their_product() -> None:
    # 1,000 combinations: one line per span, not one per combination.
    script = array_script(["train", "span:{1..10}", "span:{1..10}", "span:{1..10}"])
    assert count(["span:{1..10}"] * 3) == 1000
    assert len(script.splitlines()) == 6  # the name, the index, three spans, exec


def test_array_script_does_not_grow_with_a_ranges_length() -> None:
    """Every task of the array stores the script: a range's values were listed in it, so
    `hakurun --array echo 'span:{1..10000}'` made 10,000 tasks of 250 KB each (2.5 GB in the
    Host's database, and the submitter got 'did not answer in time'). A range's value is
    computed from the index instead (e2e: test_array_script_runs_each_combination_...)."""
    short = array_script(["train", "--seed", "span:{1..10}"])
    long = array_script(["train", "--seed", "span:{1..100000}"])
    assert len(long) - len(short) < 20  # the digits of its numbers only
    assert "hakurun_v2=$((1 + (hakurun_i / 1 % 100000) * (1)))" in long.splitlines()


def test_array_script_without_spans_runs_the_command() -> None:
    assert array_script(["echo", "a b"]).splitlines()[1:] == ["exec echo 'a b'"]


def test_array_script_names_the_sweep_on_one_comment_line() -> None:
    # A newline in an argument must not end the comment: the rest of it would be run.
    lines = array_script(["echo", "x\ntouch pwned", "span:[1,2]"]).split("\n")
    assert lines[0].startswith("# hakurun sweep: echo ") and "touch pwned" in lines[0]
    assert "span:[1,2]" in lines[0]
    assert lines[1] == "hakurun_i=$HAKURIVER_ARRAY_INDEX"


def test_an_array_of_values_that_are_not_utf8_is_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A value the shell gave as bytes that are not UTF-8 cannot be sent: it is named as
    typed (not inside the array's script), where it ended with a traceback."""
    (tmp_path / "config.toml").write_text("")
    monkeypatch.setenv("HAKURIVER_CONFIG", str(tmp_path / "config.toml"))
    assert main(["--array", "echo", "span:[caf\udce9,b]"]) == 2
    assert capsys.readouterr().err == (
        "error: 'span:[caf\\xe9,b]' is not UTF-8 text, which is all a request to the Host carries\n"
    )


def test_a_bad_submit_option_points_at_the_command_that_has_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """hakurun --array passes its task options on to hakuriver.task submit: a bad one is
    explained with that command's usage, not a "hakurun submit" that does not exist."""
    monkeypatch.setenv("HAKURIVER_CONFIG", "/nonexistent/config.toml")
    assert main(["--array", "--cores", "abc", "echo", "x"]) == 2
    err = capsys.readouterr().err
    assert "(see 'hakuriver.task submit --help')" in err
    assert "hakurun submit" not in err and "invalid value for '--cores'" in err
