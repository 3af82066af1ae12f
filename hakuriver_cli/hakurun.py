"""``hakurun``: run a command once per combination of its spanning arguments.

``span:{1..4}`` (inclusive integer range, optional step ``{0..10..5}``) and ``span:[a,b,c]``
(a list) expand into their values; the command runs for every element of the Cartesian
product, the rightmost span varying fastest. Standard library only, so the file can be
copied into a task environment that does not have HakuRiver installed.

``--array`` submits the sweep to the cluster as one job array instead (this needs HakuRiver,
imported only then): index ``i`` runs combination ``i`` (counting from 0, in ``--dry-run``
order). Each task runs a short ``sh`` script that picks its combination's values by the
index and ``exec``s the command, so the task environment needs a POSIX ``sh`` only.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from hakuriver_common import __version__

SPAN = "span:"
_RANGE = re.compile(r"^\{(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?\}$")


class SpanError(ValueError):
    """A span: argument that cannot be expanded."""


# The most --max-running may be: a job array's cap is an int32 (hakuriver_common.arrays).
_MAX_CAP = 2**31 - 1
# The most digits a span's number may have (Python converts at most 4,300).
_MAX_DIGITS = 100
# The largest number any POSIX sh computes with (its arithmetic is at least 32-bit signed).
_SH_INT = 2**31 - 1


def _span_range(arg: str) -> range | None:
    """The integers of a ``span:{A..B[..STEP]}`` argument (None if it is not one), as a
    range: its size is known without making its values, so that a span too large for a
    job array is refused at once rather than built in memory."""
    match = _RANGE.match(arg[len(SPAN) :])
    if not match:
        return None
    if any(len(part or "") > _MAX_DIGITS for part in match.groups()):
        raise SpanError(f"{arg[:40]}...: a number of more than {_MAX_DIGITS} digits")
    start, stop = int(match[1]), int(match[2])
    step = int(match[3]) if match[3] else (1 if stop >= start else -1)
    if step == 0 or (stop - start) * step < 0:
        raise SpanError(f"{arg}: step {step} never reaches {stop} from {start}")
    return range(start, stop + (1 if step > 0 else -1), step)


def _span_size(arg: str) -> int:
    """How many values one argument stands for (``len`` of a range fails above 2**63)."""
    if arg.startswith(SPAN) and (values := _span_range(arg)) is not None:
        return (values.stop - values.start - (1 if values.step > 0 else -1)) // values.step + 1
    return len(expand_arg(arg))


def expand_arg(arg: str) -> list[str]:
    """The values one argument stands for: itself, or the values of its span."""
    if not arg.startswith(SPAN):
        return [arg]
    body = arg[len(SPAN) :]
    numbers = _span_range(arg)
    if numbers is not None:
        return [str(v) for v in numbers]
    if body.startswith("[") and body.endswith("]"):
        values = [v.strip() for v in body[1:-1].split(",")]
        if not body[1:-1].strip() or any(not v for v in values):
            raise SpanError(f"{arg}: empty value in list")
        return values
    usage = f"{arg}: use span:{{1..5}}, span:{{0..10..2}} or span:[a,b,c]"
    if body and body[0] not in "{[":
        # What bash leaves of an unquoted span:{1..4} (span:1 span:2 ...) or span:{a,b}.
        raise SpanError(
            f"{usage}, quoted: unquoted, the shell expands span:{{1..4}} into span:1 span:2 "
            "... before hakurun sees it ('span:{1..4}')"
        )
    raise SpanError(usage)


def expand(argv: Sequence[str]) -> list[list[str]]:
    """Every command line the arguments stand for, in order."""
    return [list(combo) for combo in itertools.product(*(expand_arg(a) for a in argv))]


def count(argv: Sequence[str]) -> int:
    """How many command lines the arguments stand for (without making them)."""
    return math.prod(_span_size(a) for a in argv)


def _sh_computes(numbers: range) -> bool:
    """Whether sh computes every value of the range, and every sum on the way, exactly."""
    first, last = numbers[0], numbers[-1]
    return all(abs(n) <= _SH_INT for n in (first, last, last - first))


def array_script(argv: Sequence[str]) -> str:
    """A POSIX sh script that runs combination ``$HAKURIVER_ARRAY_INDEX`` of ``argv``
    (counting from 0, rightmost span fastest, as ``expand``): each span's value is picked
    by its digit of the index, so the script grows with the lists' lengths, not with their
    product (a range's value is computed). Values are single-quoted: the shell expands
    nothing in them."""
    values = [expand_arg(a) for a in argv]
    # The first line names the sweep (task lists show it); newlines would end the comment.
    lines = ["# hakurun sweep: " + " ".join(shlex.join(argv).splitlines())]
    if any(arg.startswith(SPAN) for arg in argv):
        lines.append("hakurun_i=$HAKURIVER_ARRAY_INDEX")
    words: list[str] = []
    stride = 1
    for position in reversed(range(len(argv))):
        if not argv[position].startswith(SPAN):
            words.append(shlex.quote(argv[position]))
            continue
        name, span = f"hakurun_v{position}", values[position]
        digit = f"hakurun_i / {stride} % {len(span)}"
        numbers = _span_range(argv[position])
        if numbers is not None and _sh_computes(numbers):
            # Computed, not listed: every task of the array stores this script, so a list
            # of a range's values made the array's size grow with the square of the range.
            lines.append(f"{name}=$(({numbers.start} + ({digit}) * ({numbers.step})))")
        else:
            choices = " ".join(f"{d}) {name}={shlex.quote(v)};;" for d, v in enumerate(span))
            lines.append(f"case $(({digit})) in {choices} esac")
        words.append(f'"${name}"')
        stride *= len(span)
    lines.append("exec " + " ".join(reversed(words)))
    return "\n".join(lines) + "\n"


def _option_value(args: argparse.Namespace, option: str) -> str | bool | list[str] | None:
    value: str | bool | list[str] | None = getattr(args, option[2:].replace("-", "_"))
    return value


def _too_many(total: int) -> bool:
    """More combinations than a job array takes: said on stderr, before any is made."""
    from hakuriver_common.limits import MAX_ARRAY_TASKS  # HakuRiver itself: --array only

    if total <= MAX_ARRAY_TASKS:
        return False
    shown = f"{total:,}" if total < 10**18 else "over 10^18"
    print(
        f"hakurun: {shown} combinations; a job array takes at most {MAX_ARRAY_TASKS:,}",
        file=sys.stderr,
    )
    return True


def _submit_array(args: argparse.Namespace, words: list[str], total: int) -> int:
    """Submit the sweep as one job array through ``hakuriver.task submit``; its exit code."""
    from hakuriver_cli import task  # HakuRiver itself only here: the rest is stdlib only
    from hakuriver_cli.connection import utf8_or_fail

    spec = f"0-{total - 1}" + (f"%{args.max_running}" if args.max_running else "")
    submit = ["submit", "--array", spec]
    for option in SUBMIT_OPTIONS:
        value = _option_value(args, option)
        if isinstance(value, list):
            submit += [part for item in value for part in (option, item)]
        elif value is True:
            submit.append(option)
        elif isinstance(value, str):
            submit += [option, value]
    try:
        utf8_or_fail([*submit, *words])  # as typed, not inside the script
        submit += ["--", "sh", "-c", array_script(words), "hakurun"]
        # The options are hakuriver.task submit's: its usage and help are where a bad one is
        # explained ("hakurun submit" is no command).
        task.app(args=submit, prog_name="hakuriver.task")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


# hakuriver.task submit's options that hakurun --array passes on, as given.
SUBMIT_OPTIONS = (
    "--target",
    "--cores",
    "--memory",
    "--gpus",
    "--env",
    "--container",
    "--mount",
    "--privileged",
    "--network",
    "--priority",
    "--wait",
    "--poll-interval",
    "--request-id",
    "--config",
    "--json",
)
_SUBMIT_FLAGS = ("--privileged", "--wait", "--json")
_SUBMIT_REPEATED = ("--env", "--mount")


def _default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _announce(index: int, total: int, command: list[str]) -> None:
    print(f"hakurun: [{index + 1}/{total}] {shlex.join(command)}", file=sys.stderr, flush=True)


def _start(command: list[str]) -> subprocess.Popen[bytes] | int:
    """The started process, or 127 when the program cannot be started."""
    try:
        return subprocess.Popen(command)
    except OSError as exc:
        print(f"hakurun: {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127


def _reap(running: dict[int, subprocess.Popen[bytes]], codes: dict[int, int], block: bool) -> None:
    """Move the exit codes of finished processes from ``running`` to ``codes``."""
    for index, proc in list(running.items()):
        code = proc.wait() if block else proc.poll()
        if code is not None:
            codes[index] = code
            del running[index]


def _ended(code: int) -> str:
    """How a run ended: ``exit N``, or the signal that killed it (Popen's code -N)."""
    if code >= 0:
        return f"exit {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _summary(commands: list[list[str]], codes: dict[int, int]) -> int:
    """List the failures on stderr; the exit code of the first, 0 when none failed (128+N
    for one killed by signal N, as a shell says)."""
    failed = [(i, c) for i, c in sorted(codes.items()) if c != 0]
    for index, code in failed:
        print(f"hakurun: {shlex.join(commands[index])}: {_ended(code)}", file=sys.stderr)
    if not failed:
        return 0
    print(f"hakurun: {len(failed)} of {len(commands)} failed", file=sys.stderr)
    first = failed[0][1]
    if first < 0:
        return 128 - first
    return first if first < 256 else 1


def run_all(commands: list[list[str]], jobs: int) -> int:
    """Run the commands, at most ``jobs`` at a time; 0 if all succeeded, else the exit
    code of the first (in order) that failed."""
    codes: dict[int, int] = {}
    running: dict[int, subprocess.Popen[bytes]] = {}
    pending = list(enumerate(commands))

    def stop_children(signum: int, _frame: FrameType | None) -> None:
        for proc in running.values():
            proc.terminate()
        for proc in running.values():
            proc.wait()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop_children)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                index, command = pending.pop(0)
                _announce(index, len(commands), command)
                started = _start(command)
                if isinstance(started, int):
                    codes[index] = started
                else:
                    running[index] = started
            _reap(running, codes, block=jobs == 1)
            if running:
                time.sleep(0.02)
    except KeyboardInterrupt:
        stop_children(signal.SIGINT, None)
    return _summary(commands, codes)


class _Parser(argparse.ArgumentParser):
    """A usage error in one line, as the other tools say theirs (argparse prints the whole
    usage before it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hakurun",
        description="Run CMD once per combination of its span:{A..B} and span:[x,y] arguments.",
    )
    parser.add_argument("--version", action="version", version=f"hakuriver {__version__}")
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="Run combinations concurrently (at most --jobs at a time).",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="With --parallel: how many at a time (default: the CPUs this process may use).",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Print the commands only (with --array: each with its array index).",
    )
    cluster = parser.add_argument_group(
        "job array",
        "--array submits the sweep as one job array: index i runs combination i (from 0, in "
        "--dry-run order). With it, " + ", ".join(SUBMIT_OPTIONS) + " go to "
        "hakuriver.task submit as given.",
    )
    cluster.add_argument(
        "--array", action="store_true", help="Submit one job array instead of running here."
    )
    cluster.add_argument(
        "--max-running",
        type=int,
        default=None,
        metavar="N",
        help="With --array: at most N of its tasks at once.",
    )
    for option in SUBMIT_OPTIONS:
        if option in _SUBMIT_FLAGS:
            cluster.add_argument(option, action="store_true", help=argparse.SUPPRESS)
        elif option in _SUBMIT_REPEATED:
            cluster.add_argument(option, action="append", help=argparse.SUPPRESS)
        else:
            cluster.add_argument(option, help=argparse.SUPPRESS)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="CMD ARGS...")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options that do not go together end the program (exit 2)."""
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be positive")
    if args.array and args.parallel:
        parser.error("--parallel runs combinations here; an --array's tasks run on the cluster")
    if args.jobs is not None and not args.parallel:
        array = " (an --array caps its tasks with --max-running)" if args.array else ""
        parser.error(f"--jobs applies only with --parallel{array}")
    if args.max_running is not None and (not 1 <= args.max_running <= _MAX_CAP or not args.array):
        parser.error(f"--max-running takes a positive number up to {_MAX_CAP:,}, with --array")
    given = [o for o in SUBMIT_OPTIONS if _option_value(args, o) not in (None, False)]
    if given and not args.array:
        parser.error(f"{given[0]} applies only with --array")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        parser.error("a command is required")
    _check(parser, args)
    try:
        total = count(words)  # refuses a malformed span before anything runs
    except SpanError as exc:
        parser.error(str(exc))
    if args.array and _too_many(total):
        return 2
    if args.dry_run:
        for index, command in enumerate(expand(words)):
            print(f"{index}: {shlex.join(command)}" if args.array else shlex.join(command))
        return 0
    if args.array:
        return _submit_array(args, words, total)
    jobs = (args.jobs or _default_jobs()) if args.parallel else 1  # None: the default
    return run_all(expand(words), jobs)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
