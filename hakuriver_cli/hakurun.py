"""``hakurun``: run a command once per combination of its spanning arguments.

``span:{1..4}`` (inclusive integer range, optional step ``{0..10..5}``) and ``span:[a,b,c]``
(a list) expand into their values; the command runs for every element of the Cartesian
product, the rightmost span varying fastest. Standard library only, so the file can be
copied into a task environment that does not have HakuRiver installed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

SPAN = "span:"
_RANGE = re.compile(r"^\{(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?\}$")


class SpanError(ValueError):
    """A span: argument that cannot be expanded."""


def expand_arg(arg: str) -> list[str]:
    """The values one argument stands for: itself, or the values of its span."""
    if not arg.startswith(SPAN):
        return [arg]
    body = arg[len(SPAN) :]
    match = _RANGE.match(body)
    if match:
        start, stop = int(match[1]), int(match[2])
        step = int(match[3]) if match[3] else (1 if stop >= start else -1)
        if step == 0 or (stop - start) * step < 0:
            raise SpanError(f"{arg}: step {step} never reaches {stop} from {start}")
        return [str(v) for v in range(start, stop + (1 if step > 0 else -1), step)]
    if body.startswith("[") and body.endswith("]"):
        values = [v.strip() for v in body[1:-1].split(",")]
        if not body[1:-1].strip() or any(not v for v in values):
            raise SpanError(f"{arg}: empty value in list")
        return values
    raise SpanError(f"{arg}: use span:{{1..5}}, span:{{0..10..2}} or span:[a,b,c]")


def expand(argv: Sequence[str]) -> list[list[str]]:
    """Every command line the arguments stand for, in order."""
    return [list(combo) for combo in itertools.product(*(expand_arg(a) for a in argv))]


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


def _summary(commands: list[list[str]], codes: dict[int, int]) -> int:
    """List the failures on stderr; the exit code of the first, 0 when none failed."""
    failed = [(i, c) for i, c in sorted(codes.items()) if c != 0]
    for index, code in failed:
        print(f"hakurun: {shlex.join(commands[index])}: exit {code}", file=sys.stderr)
    if not failed:
        return 0
    print(f"hakurun: {len(failed)} of {len(commands)} failed", file=sys.stderr)
    first = failed[0][1]
    return first if 0 < first < 256 else 1


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hakurun",
        description="Run CMD once per combination of its span:{A..B} and span:[x,y] arguments.",
    )
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="Run combinations concurrently (at most --jobs at a time).",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="With --parallel: how many at a time (default: the CPUs this process may use).",
    )
    parser.add_argument("--dry-run", action="store_true", help="Print the commands only.")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="CMD ARGS...")
    args = parser.parse_args(argv)
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        parser.error("a command is required")
    if args.jobs < 0:
        parser.error("--jobs must be positive")
    try:
        commands = expand(words)
    except SpanError as exc:
        parser.error(str(exc))
    if args.dry_run:
        for command in commands:
            print(shlex.join(command))
        return 0
    jobs = (args.jobs or _default_jobs()) if args.parallel else 1
    return run_all(commands, jobs)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
